// Config traps (issue #12 item 4): what an admin easily gets wrong is an
// error or a warning, never silently something else.
#include "catch.hpp"

#include "policy/maps.hpp"
#include "testing.hpp"

using namespace tlspolicy;

namespace {
// Every warning as "file:line: warning: ..." with the temp dir stripped.
std::string warnings_of(const LoadResult& r, const std::string& dir) {
  std::string got;
  for (auto& w : r.warnings) {
    auto t = w.text("warning");
    for (size_t p; (p = t.find(dir + "/")) != std::string::npos;) t.replace(p, dir.size() + 1, "");
    got += t + "\n";
  }
  return got;
}
}  // namespace

TEST_CASE("a list-file line with several entries is several entries, each with its line") {
  struct Case {
    std::string list;
    std::vector<std::pair<std::string, uint32_t>> want;  // entry text, line
  };
  const Case cases[] = {
      {"a.test, b.test c.test\n", {{"a.test", 1}, {"b.test", 1}, {"c.test", 1}}},
      {"# x\n\td.test,,e.test ,\t f.test # note\n", {{"d.test", 2}, {"e.test", 2}, {"f.test", 2}}},
      {"g.test\r\nh.test,i.test\r\n", {{"g.test", 1}, {"h.test", 2}, {"i.test", 2}}},
  };
  for (auto& c : cases) {
    auto r = testing::load_text("outbound = ( { level = \"encrypt\"; to_lists = \"l\"; } );", {{"l", c.list}});
    INFO("list:\n" << c.list);
    REQUIRE(r.errors.empty());
    std::vector<std::pair<std::string, uint32_t>> got;
    for (uint32_t e = 0; e < r.snapshot->entries.size(); ++e)
      got.emplace_back(std::string(r.snapshot->text(e)), r.snapshot->entries[e].line);
    CHECK(got == c.want);
  }
}

TEST_CASE("an inline config string stays one entry") {
  auto r = testing::load_text("outbound = ( { level = \"encrypt\"; to = \"a.test, b.test\"; } );");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].message.find("holds more than one entry") != std::string::npos);
}

TEST_CASE("a destination without a public suffix is a warning with file, line and intent") {
  struct Case {
    std::string to;  // one inline entry
    std::string want;  // "" = no warning
  };
  const Case cases[] = {
      {"john.smith", "tlspolicy.conf:2: warning: \"john.smith\" has no public suffix (\".smith\" is not a top-level "
                     "domain): a domain? if you meant the local part john.smith@..., write the whole address"},
      {"partner.lan", "tlspolicy.conf:2: warning: \"partner.lan\" has no public suffix (\".lan\" is not a top-level"},
      {"Partner.LAN.", "\"Partner.LAN.\" has no public suffix"},
      {"mailhost", "tlspolicy.conf:2: warning: \"mailhost\" is a bare word, not an Internet domain"},
      {"bob@partner.lan", "\"bob@partner.lan\" has no public suffix (\".lan\" is not a top-level domain): a domain? "
                          "check the domain of this address"},
      {"*@corp.internal", "\"*@corp.internal\" has no public suffix"},
      {".corp.lan", "\".corp.lan\" has no public suffix"},
      {"partner.com", ""},
      {"partner.co.uk", ""},
      {"xn--bcher-kva.de", ""},
      {"bücher.рф", ""},
      {"a.test", ""},
      {"a.example", ""},
      {"x.invalid", ""},
      {"mx.localhost", ""},
      {"example.com", ""},
      {"sub.example.net", ""},
      {"example.org", ""},
      {"192.0.2.1", ""},
      {"192.0.2.0/24", ""},
  };
  for (auto& c : cases) {
    std::string dir;
    auto r = testing::load_text("outbound = ( { level = \"encrypt\";\n to = \"" + c.to + "\"; } );", {}, &dir);
    auto got = warnings_of(r, dir);
    INFO("to = " << c.to << "\ngot:\n" << got << "want:\n" << c.want);
    CHECK(r.errors.empty());
    CHECK(r.snapshot != nullptr);  // a warning, not an error
    if (c.want.empty())
      CHECK(got.empty());
    else
      CHECK(got.find(c.want) != std::string::npos);
  }
}

TEST_CASE("the public-suffix warning names the list file and line") {
  std::string dir;
  auto r = testing::load_text("outbound = ( { level = \"encrypt\"; to_lists = \"l\"; } );",
                              {{"l", "ok.test\npartner.com, john.smith\n"}}, &dir);
  CHECK(warnings_of(r, dir) ==
        "l:2: warning: \"john.smith\" has no public suffix (\".smith\" is not a top-level domain): a domain? if you "
        "meant the local part john.smith@..., write the whole address (john.smith@your-partner.example); if it is "
        "an internal name, ignore this\n");
}

TEST_CASE("enabled = false: entries are checked but never in force") {
  const std::string conf =
      "outbound = (\n"
      " { name = \"on\"; level = \"encrypt\"; to = [ \"a.test\" ]; },\n"
      " { name = \"off\"; enabled = false; level = \"none\"; to = [ \"a.test\", \"b.test\" ]; from = \"x@our.test\"; }\n"
      ");\n"
      "inbound = (\n"
      " { name = \"in-off\"; enabled = false; from = [ \"*@p.test\" ]; to = \"legal\"; clients = \"192.0.2.0/24\"; }\n"
      ");\n";
  auto r = testing::load_text(conf);
  INFO((r.errors.empty() ? std::string() : r.errors[0].text()));
  REQUIRE(r.errors.empty());  // "a.test" in both rules is no conflict: one of them is off
  const Snapshot& s = *r.snapshot;
  struct Case {
    MapName map;
    std::string key;
    bool found;
    std::string value, explain_has;
  };
  const Case cases[] = {
      {MapName::tls_policy, "a.test", true, "encrypt", "rule \"off\" (disabled) would match: entry \"a.test\" at"},
      {MapName::tls_policy, "b.test", false, "", "rule \"off\" (disabled) would match: entry \"b.test\""},
      {MapName::tls_policy, "c.test", false, "", "why: no rule matches"},
      {MapName::sender_transport, "x@our.test", false, "", "rule \"off\" (disabled) would match"},
      {MapName::inbound, "from=u@p.test", false, "", "rule \"in-off\" (disabled) would match: entry \"*@p.test\""},
      {MapName::inbound, "to=legal@our.test", false, "", "rule \"in-off\" (disabled) would match: entry \"legal\""},
      {MapName::inbound, "client=192.0.2.7", false, "", "rule \"in-off\" (disabled) would match"},
  };
  for (auto& c : cases) {
    auto a = query(s, c.map, c.key, true);
    auto text = explain_text(s, c.map, c.key, a);
    INFO(text);
    CHECK(a.found == c.found);
    CHECK(a.value == c.value);
    CHECK(text.find(c.explain_has) != std::string::npos);
  }
  CHECK(s.summary().find("1 outbound rules") == 0);
  CHECK(s.summary().find(", 2 disabled rules (6 entries not in force)") != std::string::npos);
  CHECK(s.enforcing_entries() == 1);
  CHECK(s.entry_count(s.disabled[0]->rule) == 3);
}

TEST_CASE("a disabled rule's bad entries are still errors") {
  auto r = testing::load_text(
      "outbound = ( { name = \"off\"; enabled = false; level = \"encrypt\";\n to = [ \"a..b.test\" ]; } );");
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].text().find("tlspolicy.conf:2: error: empty label in \"a..b.test\"") != std::string::npos);
}

TEST_CASE("enabled = true is the default and changes nothing") {
  auto r = testing::load_text("outbound = ( { enabled = true; level = \"encrypt\"; to = \"a.test\"; } );");
  REQUIRE(r.snapshot);
  CHECK(query(*r.snapshot, MapName::tls_policy, "a.test").value == "encrypt");
  CHECK(r.snapshot->summary().find("disabled") == std::string::npos);
}

TEST_CASE("the null sender <>: \"*\" does not cover it, a \"<>\" entry does") {
  struct Case {
    std::string from;       // the inbound rule's from list
    std::string key;        // inbound map key
    std::string want;       // answer, "NOTFOUND" when no rule applies
  };
  const Case cases[] = {
      {"[ \"*\" ]", "from=", "NOTFOUND"},
      {"[ \"*\" ]", "from=<>", "NOTFOUND"},
      {"[ \"*\" ]", "from=a@b.test", "reject 530 5.7.0 Must issue a STARTTLS command first"},
      {"[ \"*\", \"<>\" ]", "from=", "reject 530 5.7.0 Must issue a STARTTLS command first"},
      {"[ \"*\", \"<>\" ]", "from=<>", "reject 530 5.7.0 Must issue a STARTTLS command first"},
      {"[ \"*\", \"<>\" ]", "from=<> version=TLSv1.3 bits=256", "accept"},
      {"[ \"<>\" ]", "from=<>", "reject 530 5.7.0 Must issue a STARTTLS command first"},
      {"[ \"<>\" ]", "from=a@b.test", "NOTFOUND"},
      {"[ \"<>\" ]", "to=x@our.test", "NOTFOUND"},  // no from=: sender unknown, not null
  };
  for (auto& c : cases) {
    auto r = testing::load_text("inbound = ( { from = " + c.from + "; } );");
    REQUIRE(r.snapshot);
    auto a = query(*r.snapshot, MapName::inbound, c.key);
    INFO("from = " << c.from << ", key " << c.key);
    CHECK((a.found ? a.value : "NOTFOUND") == c.want);
  }
  // The milter passes the envelope sender as it came: "<>" or "".
  auto r = testing::load_text("inbound = ( { from = [ \"<>\" ]; } );");
  REQUIRE(r.snapshot);
  CHECK(!check_inbound_sender(*r.snapshot, "", nullptr, {}).pass);
  CHECK(check_inbound_sender(*r.snapshot, "a@b.test", nullptr, {}).pass);
}

TEST_CASE("from = \"*\" without \"<>\" warns how to include the null sender") {
  struct Case {
    std::string rule;
    std::string want;  // "" = no warning
  };
  const Case cases[] = {
      {"from = [\n \"*\" ];", "tlspolicy.conf:2: warning: inbound rule \"r\": from \"*\" does not cover the null "
                              "sender <> (bounces and delivery status notices, often from servers without TLS); "
                              "to require TLS for them too, add \"<>\" to from"},
      {"from = [ \"*\", \"<>\" ];", ""},
      {"from = [ \"*\" ]; }, { from = \"<>\"; action = \"monitor\";", ""},  // another rule covers <>
      {"from = [ \"*\" ]; }, { enabled = false; from = \"<>\";", "does not cover the null sender"},
      {"enabled = false; from = [ \"*\" ];", ""},
      {"from = [ \"*\" ]; require = \"none\";", ""},
      {"from = [ \"*@p.test\" ];", ""},
  };
  for (auto& c : cases) {
    std::string dir;
    auto r = testing::load_text("inbound = ( { name = \"r\"; " + c.rule + " } );", {}, &dir);
    auto got = warnings_of(r, dir);
    INFO(c.rule << "\ngot:\n" << got);
    CHECK(r.snapshot != nullptr);
    if (c.want.empty())
      CHECK(got.find("null sender") == std::string::npos);
    else
      CHECK(got.find(c.want) != std::string::npos);
  }
}

TEST_CASE("\"<>\" is only an inbound sender entry") {
  for (auto conf : {"outbound = ( { level = \"encrypt\"; to = \"<>\"; } );",
                    "inbound = ( { to = \"<>\"; } );"}) {
    auto r = testing::load_text(conf);
    INFO(conf);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].message.find("only allowed in an inbound from list") != std::string::npos);
  }
}

TEST_CASE("a list of internal names draws 20 warnings and a count, not one per line") {
  std::string list;
  for (int i = 0; i < 25; ++i) list += "host" + std::to_string(i) + ".lan\n";
  std::string dir;
  auto r = testing::load_text("outbound = ( { level = \"encrypt\"; to_lists = \"l\"; } );", {{"l", list}}, &dir);
  REQUIRE(r.warnings.size() == 21);
  CHECK(r.warnings[19].text("warning").find("l:20: warning: \"host19.lan\" has no public suffix") != std::string::npos);
  CHECK(warnings_of(r, dir).find("tlspolicy.conf: warning: 5 more destination entries have no public suffix "
                                 "(warnings shown for the first 20)") != std::string::npos);
}

TEST_CASE("every rule disabled and no default: a warning, not an error") {
  std::string dir;
  auto r = testing::load_text("outbound = ( { enabled = false; level = \"encrypt\"; to = \"a.test\"; } );", {}, &dir);
  CHECK(r.snapshot != nullptr);
  CHECK(warnings_of(r, dir) == "tlspolicy.conf: warning: every rule is disabled (enabled = false) and there is no "
                               "default: every lookup answers NOTFOUND; switch a rule on, or set a default\n");
  auto with_default = testing::load_text(
      "default = \"may\";\noutbound = ( { enabled = false; level = \"encrypt\"; to = \"a.test\"; } );");
  CHECK(with_default.warnings.empty());
}
