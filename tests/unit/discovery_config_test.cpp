// The discovery block, mx: entries and on_dns_failure, MTA-STS settings
// (mta_sts, prefer) and the per-rule override: every error with file and
// line, the warnings for settings without effect, and what a good
// configuration compiles to.
#include "catch.hpp"

#include "testing.hpp"

namespace {
struct Case {
  std::string conf;
  std::map<std::string, std::string> files;
  std::string want;  // a substring of "file:line: error: ..." (temp dir stripped)
};

std::string errors_of(const tlspolicy::LoadResult& r, const std::string& dir) {
  std::string got;
  for (auto& e : r.errors) {
    auto t = e.text();
    for (size_t p; (p = t.find(dir + "/")) != std::string::npos;) t.erase(p, dir.size() + 1);
    got += t + "\n";
  }
  return got;
}

// A readable trust anchor for the cases that need one (its content is the
// resolver's business; the loader only checks that it can be read).
std::string anchor() {
  static std::string path = [] {
    std::string p = testing::temp_dir() + "/root.key";
    std::ofstream(p) << ". IN DS 20326 8 2 e06d44b80b8f1d39a95c0b0d7c65d08458e880409bbc683457104237c7f8ec8d\n";
    return p;
  }();
  return path;
}
}  // namespace

TEST_CASE("discovery configuration errors name file, line and the fix") {
  const std::string ta = "trust_anchor_file = \"" + anchor() + "\"; ";
  const Case cases[] = {
      {"discovery = {\n forwarders = [ \"127.0.0.1@5353\",\n \"localhost\" ]; };\ndefault = \"may\";", {},
       "tlspolicy.conf:3: error: forwarder \"localhost\" is not IP[@PORT]"},
      {"discovery = { forwarders = \"127.0.0.1@70000\"; }; default = \"may\";", {}, "is not IP[@PORT]"},
      {"discovery = { forwarders = \"127.0.0.1@\"; }; default = \"may\";", {}, "is not IP[@PORT]"},
      {"discovery = { forwarders = \"192.0.2.0/24\"; }; default = \"may\";", {}, "is not IP[@PORT]"},
      {"default = \"may\";\ndiscovery = {\n dane = \"yes\"; };", {},
       "tlspolicy.conf:3: error: dane = \"yes\": use \"off\""},
      {"default = \"may\";\ndiscovery = {\n colour = 1; };", {},
       "tlspolicy.conf:3: error: unknown setting \"colour\" in discovery"},
      {"default = \"may\"; discovery = { deadline = \"5s\"; };", {},
       "tlspolicy.conf:1: error: setting \"deadline\" must be a number"},
      {"default = \"may\"; discovery = { query_timeout = 0; };", {}, "query_timeout = 0 must be 50..60000"},
      {"default = \"may\"; discovery = { deadline = 600000; };", {}, "deadline = 600000 must be 50..60000"},
      {"default = \"may\"; discovery = { max_outstanding = 0; };", {}, "max_outstanding = 0 must be"},
      {"default = \"may\"; discovery = { cache_entries = 0; };", {}, "cache_entries = 0 must be"},
      {"default = \"may\"; discovery = { negative_ttl_max = -1; };", {}, "negative_ttl_max = -1 must be"},
      {"default = \"may\"; discovery = { failure_ttl = 86400; };", {}, "failure_ttl = 86400 must be"},
      {"default = \"may\"; discovery = { on_dns_failure = \"retry\"; };", {},
       "on_dns_failure = \"retry\": use \"defer\""},
      {"default = \"may\"; discovery = { trust_forwarder_ad = true; };", {},
       "trust_forwarder_ad = true is not supported"},
      // tlspolicyd refuses it (libunbound drops the forwarder's AD bit):
      // check must not call OK a configuration the daemon will not start with.
      {"default = \"may\";\ndiscovery = { forwarders = \"127.0.0.1@5353\";\n trust_forwarder_ad = true; };", {},
       "tlspolicy.conf:3: error: trust_forwarder_ad = true is not supported"},
      {"default = \"may\"; discovery = { dane = \"dane\"; trust_anchor_file = \"\"; };", {},
       "dane = \"dane\" needs DNSSEC"},
      {"default = \"may\";\ndiscovery = { dane = \"dane-only\";\n trust_anchor_file = \"/nonexistent/root.key\"; };",
       {}, "tlspolicy.conf:3: error: trust_anchor_file \"/nonexistent/root.key\": No such file or directory"},
      {"default = \"may\"; discovery = { trust_anchor_file = \"root.key\"; };", {}, "must be an absolute path"},
      {"discovery = { " + ta + "};\noutbound = ( { level = \"encrypt\";\n to = \"mx:bad..name\"; } );", {},
       "tlspolicy.conf:3: error: empty label in \"bad..name\": perhaps you meant \"bad.name\" (in \"mx:bad..name\")"},
      {"discovery = { };\noutbound = ( { level = \"encrypt\"; to = \"mx:\"; } );", {}, "names no host"},
      {"discovery = { };\noutbound = ( { level = \"encrypt\"; to = \"mx:192.0.2.1\"; } );", {},
       "tlspolicy.conf:2: error: \"mx:192.0.2.1\": IP addresses and ranges match MX hosts' addresses as they are: "
       "write \"192.0.2.1\" without mx:"},
      {"discovery = { };\noutbound = ( { level = \"encrypt\"; to = \"mx:*.outlook.com\"; } );", {},
       "is not an MX host name"},
      {"discovery = { };\noutbound = ( { level = \"encrypt\"; to = \"mx:bücher-.test\"; } );", {},
       "not a valid internationalised domain name"},
      {"discovery = { };\noutbound = ( { level = \"encrypt\"; to = \"x.test\"; from = \"mx:a.test\"; } );", {},
       "MX host names belong in an outbound rule's to list"},
      {"outbound = ( { level = \"encrypt\";\n to = \"mx:a.test\"; } );", {},
       "tlspolicy.conf:2: error: \"mx:a.test\": an mx: entry needs DNS, which is off: add a discovery block"},
      {"discovery = { };\noutbound = ( { level = \"encrypt\"; to_lists = \"l\"; } );",
       {{"l", "mx:.mail.protection.outlook.com\n# c\nmx:a..b\n"}}, "l:3: error: empty label in \"a..b\""},
      {"discovery = { };\noutbound = ( { level = \"encrypt\"; to = \"192.0.2.0/24\";\n on_dns_failure = \"never\"; } );",
       {}, "tlspolicy.conf:3: error: on_dns_failure = \"never\": use \"defer\""},
      {"discovery = { };\noutbound = (\n { name = \"a\"; level = \"encrypt\"; to = \"mx:mx.x.test\"; },\n"
       " { name = \"b\"; level = \"may\"; to = \"MX:MX.X.TEST\"; } );",
       {}, "tlspolicy.conf:4: error: \"MX:MX.X.TEST\" (destination list of rule \"b\": may) conflicts with "
           "\"mx:mx.x.test\""},
  };
  for (auto& c : cases) {
    std::string dir;
    auto r = testing::load_text(c.conf, c.files, &dir);
    std::string got = errors_of(r, dir);
    INFO("config:\n" << c.conf << "\ngot:\n" << got << "want (substring):\n" << c.want);
    CHECK(r.snapshot == nullptr);
    CHECK(got.find(c.want) != std::string::npos);
  }
}

TEST_CASE("the discovery block compiles to DiscoverySettings and flags") {
  using namespace tlspolicy;
  std::string dir;
  auto r = testing::load_text(
      "discovery = {\n"
      "  forwarders = [ \"127.0.0.1@5353\", \"::1\" ];\n"
      "  trust_anchor_file = \"" + anchor() + "\";\n"
      "  trust_forwarder_ad = false;\n"
      "  query_timeout = 1500; deadline = 4000; max_outstanding = 10; cache_entries = 500;\n"
      "  negative_ttl_max = 60; failure_ttl = 5; dane = \"dane-only\"; on_dns_failure = \"ignore\";\n"
      "};\n"
      "outbound = ( { name = \"force-encrypt\"; level = \"encrypt\";\n"
      "  to = [ \"207.219.44.0/24\", \"204.10.243.26\", \"mx:.mail.protection.outlook.com\", \"mx:aspmx.l.google.com\" ];\n"
      "  on_dns_failure = \"defer\"; },\n"
      " { name = \"lax\"; level = \"encrypt\"; to_lists = \"l\"; },\n"
      " { name = \"names\"; level = \"verify\"; to = \"bank.test\"; } );\n",
      {{"l", "mx:.lax.test\n"}}, &dir);
  INFO(errors_of(r, dir));
  REQUIRE(r.snapshot);
  const Snapshot& s = *r.snapshot;
  const auto& d = s.settings.discovery;
  CHECK(d.configured);
  CHECK(d.forwarders == std::vector<std::string>{"127.0.0.1@5353", "::1"});
  CHECK(d.trust_anchor_file == anchor());
  CHECK(d.query_timeout_ms == 1500);
  CHECK(d.deadline_ms == 4000);
  CHECK(d.max_outstanding == 10);
  CHECK(d.cache_entries == 500);
  CHECK(d.negative_ttl_max == 60);
  CHECK(d.failure_ttl == 5);
  CHECK(d.dane == DaneMode::dane_only);
  CHECK_FALSE(d.dns_failure_defers);
  CHECK(s.needs_dns);
  CHECK(s.mx_aware_defers);
  CHECK(s.rules[0].mx_aware);
  CHECK(s.rules[0].dns_failure_defers);         // its own on_dns_failure
  CHECK(s.rules[1].mx_aware);
  CHECK_FALSE(s.rules[1].dns_failure_defers);   // the block's "ignore"
  CHECK_FALSE(s.rules[2].mx_aware);
  CHECK(s.mx_names.size() == 3);
  CHECK(s.summary().find("discovery on: 2 MX-aware rules (3 mx: entries), dane dane-only") != std::string::npos);
}

TEST_CASE("without a discovery block nothing needs DNS: CIDR entries stay static") {
  auto r = testing::load_text("outbound = ( { level = \"encrypt\"; to = [ \"192.0.2.0/24\", \"x.test\" ]; } );");
  REQUIRE(r.snapshot);
  CHECK_FALSE(r.snapshot->needs_dns);
  CHECK_FALSE(r.snapshot->rules[0].mx_aware);
  CHECK_FALSE(r.snapshot->settings.discovery.configured);
}

TEST_CASE("a discovery block nothing uses, and a missing default trust anchor without DANE, are warnings") {
  std::string dir;
  auto r = testing::load_text("discovery = { trust_anchor_file = \"/nonexistent/root.key\"; };\n"
                              "outbound = ( { level = \"encrypt\"; to = \"x.test\"; } );",
                              {}, &dir);
  REQUIRE(r.snapshot);
  CHECK_FALSE(r.snapshot->needs_dns);
  CHECK(r.snapshot->settings.discovery.trust_anchor_file.empty());
  std::string w;
  for (auto& x : r.warnings) w += x.text("warning") + "\n";
  INFO(w);
  CHECK(w.find("nothing uses it") != std::string::npos);
  CHECK(w.find("answers are not validated here") != std::string::npos);
}

// MTA-STS settings and override (issue #14).
using namespace tlspolicy;

namespace {

std::string strip_dir(std::string t, const std::string& dir) {
  for (size_t p; (p = t.find(dir + "/")) != std::string::npos;) t.erase(p, dir.size() + 1);
  return t;
}

std::string diag_texts(const std::vector<Diagnostic>& ds, const char* severity, const std::string& dir) {
  std::string out;
  for (auto& d : ds) out += strip_dir(d.text(severity), dir) + "\n";
  return out;
}

}  // namespace

TEST_CASE("mta_sts, prefer and override: errors name file, line and the fix") {
  struct Case {
    std::string conf;
    std::string want;  // a substring of "file:line: error: ..." (temp dir stripped)
  };
  const Case cases[] = {
      {"default = \"may\";\ndiscovery = { mta_sts = {\n colour = 1; }; };",
       "tlspolicy.conf:3: error: unknown setting \"colour\" in mta_sts (known: enabled, ca_file, cache,"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n enabled = \"yes\"; }; };",
       "tlspolicy.conf:3: error: setting \"enabled\" must be true or false"},
      {"default = \"may\";\ndiscovery = {\n mta_sts = true; };",
       "tlspolicy.conf:3: error: setting \"mta_sts\" must be a group { ... }"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n connect_timeout = 0; }; };",
       "tlspolicy.conf:3: error: connect_timeout = 0 must be 50..300000 milliseconds"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n fetch_timeout = 3600000; }; };",
       "tlspolicy.conf:3: error: fetch_timeout = 3600000 must be 50..600000 milliseconds"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n fetch_timeout = \"60s\"; }; };",
       "tlspolicy.conf:3: error: setting \"fetch_timeout\" must be a number"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n max_size = 10; }; };",
       "tlspolicy.conf:3: error: max_size = 10 must be 64..16777216 bytes"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n max_fetches = 0; }; };",
       "tlspolicy.conf:3: error: max_fetches = 0 must be 1..1000000"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n cache_entries = 0; }; };",
       "tlspolicy.conf:3: error: cache_entries = 0 must be 1..100000000"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n cache = \"mta-sts.db\"; }; };",
       "tlspolicy.conf:3: error: cache = \"mta-sts.db\" must be an absolute path"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n ca_file = \"ca.pem\"; }; };",
       "tlspolicy.conf:3: error: ca_file = \"ca.pem\" must be an absolute path"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n ca_file = \"/nonexistent/ca.pem\"; }; };",
       "tlspolicy.conf:3: error: ca_file \"/nonexistent/ca.pem\": No such file or directory"},
      {"default = \"may\";\ndiscovery = { mta_sts = { connect_to = [ \"mta-sts.a.test:443:127.0.0.1:4443\",\n"
       " \"mta-sts.b.test:443:127.0.0.1\" ]; }; };",
       "tlspolicy.conf:3: error: connect_to \"mta-sts.b.test:443:127.0.0.1\" is not HOST:PORT:ADDRESS:PORT"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n connect_to = \"mta-sts.a.test:https:127.0.0.1:4443\"; }; };",
       "is not HOST:PORT:ADDRESS:PORT"},
      {"default = \"may\";\ndiscovery = { mta_sts = {\n connect_to = \"mta-sts.a.test:443:[::1:4443\"; }; };",
       "is not HOST:PORT:ADDRESS:PORT"},
      {"default = \"may\";\ndiscovery = { mta_sts = { };\n prefer = \"both\"; };",
       "tlspolicy.conf:3: error: prefer = \"both\": use \"dane\""},
      {"default = \"may\";\ndiscovery = { mta_sts = { }; };\noutbound = ( { level = \"may\"; to = \"x.test\";\n"
       " override = \"yes\"; } );",
       "tlspolicy.conf:4: error: setting \"override\" must be true or false"},
  };
  for (auto& c : cases) {
    std::string dir;
    auto r = testing::load_text(c.conf, {}, &dir);
    std::string got = diag_texts(r.errors, "error", dir);
    INFO("config:\n" << c.conf << "\ngot:\n" << got << "want (substring):\n" << c.want);
    CHECK(r.snapshot == nullptr);
    CHECK(got.find(c.want) != std::string::npos);
  }
}

TEST_CASE("mta_sts and prefer compile to MtaStsSettings and the discovered order") {
  std::string dir = testing::temp_dir();
  std::string ca = dir + "/ca.pem";
  std::ofstream(ca) << "not parsed by the loader\n";
  auto r = testing::load_text(
      "default = \"may\";\n"
      "discovery = {\n"
      "  mta_sts = { ca_file = \"" + ca + "\"; cache = \"/tmp/x/sts.db\"; cache_entries = 50;\n"
      "    connect_timeout = 500; fetch_timeout = 2000; max_size = 4096; max_fetches = 8; tlsrpt = true;\n"
      "    connect_to = [ \"mta-sts.a.test:443:127.0.0.1:4443\", \"mta-sts.b.test:443:[::1]:4443\" ]; };\n"
      "  prefer = \"mta-sts\";\n"
      "};\n",
      {}, &dir);
  INFO(diag_texts(r.errors, "error", dir) << diag_texts(r.warnings, "warning", dir));
  REQUIRE(r.snapshot);
  const auto& d = r.snapshot->settings.discovery;
  const auto& m = d.mta_sts;
  CHECK(m.enabled);
  CHECK(m.ca_file == ca);
  CHECK(m.cache_file == "/tmp/x/sts.db");
  CHECK(m.cache_entries == 50);
  CHECK(m.connect_timeout_ms == 500);
  CHECK(m.fetch_timeout_ms == 2000);
  CHECK(m.max_size == 4096);
  CHECK(m.max_fetches == 8);
  CHECK(m.tlsrpt);
  CHECK(m.connect_to == std::vector<std::string>{"mta-sts.a.test:443:127.0.0.1:4443", "mta-sts.b.test:443:[::1]:4443"});
  CHECK(d.order == std::vector<DiscoveredSource>{DiscoveredSource::mta_sts, DiscoveredSource::dane});
  // MTA-STS alone (no MX-aware rule, DANE off) needs DNS (the TXT record).
  CHECK(r.snapshot->needs_dns);
  // prefer = "mta-sts" with DANE off: said to have no effect.
  std::string w = diag_texts(r.warnings, "warning", dir);
  CHECK(w.find("tlspolicy.conf:6: warning: prefer = \"mta-sts\" has no effect: DANE (dane = \"off\") is off") !=
        std::string::npos);
}

TEST_CASE("defaults: no mta_sts block is off, an empty one is on with the defaults, enabled = false is off") {
  auto off = testing::load_text("default = \"may\"; discovery = { };");
  REQUIRE(off.snapshot);
  CHECK_FALSE(off.snapshot->settings.discovery.mta_sts.enabled);
  CHECK_FALSE(off.snapshot->needs_dns);
  CHECK(off.snapshot->settings.discovery.order ==
        std::vector<DiscoveredSource>{DiscoveredSource::dane, DiscoveredSource::mta_sts});
  auto on = testing::load_text("default = \"may\"; discovery = { mta_sts = { }; };");
  REQUIRE(on.snapshot);
  const auto& m = on.snapshot->settings.discovery.mta_sts;
  CHECK(m.enabled);
  CHECK(m.cache_file == "/var/lib/tlspolicy/mta-sts.db");
  CHECK(m.ca_file.empty());
  CHECK_FALSE(m.tlsrpt);
  CHECK(on.snapshot->needs_dns);
  auto disabled = testing::load_text("default = \"may\"; discovery = { mta_sts = { enabled = false; }; };");
  REQUIRE(disabled.snapshot);
  CHECK_FALSE(disabled.snapshot->settings.discovery.mta_sts.enabled);
  CHECK_FALSE(disabled.snapshot->needs_dns);
}

TEST_CASE("override = true: set on the rule; a warning with file:line where it has no effect") {
  struct Case {
    std::string discovery;
    std::string want_warning;  // "" = none about override
  };
  const Case cases[] = {
      {"", "tlspolicy.conf:3: warning: rule \"broken\": override = true has no effect without a discovery block"},
      {"discovery = { };",
       "tlspolicy.conf:3: warning: rule \"broken\": override = true has no effect: neither DANE"},
      {"discovery = { mta_sts = { enabled = false; }; };", "override = true has no effect: neither DANE"},
      {"discovery = { mta_sts = { }; };", ""},
  };
  for (auto& c : cases) {
    std::string dir;
    auto r = testing::load_text(c.discovery + "\noutbound = ( { name = \"broken\"; level = \"may\"; to = \"broken.test\";\n"
                                              " override = true; },\n"
                                              " { name = \"plain\"; level = \"encrypt\"; to = \"x.test\"; override = false; } );",
                                {}, &dir);
    std::string w = diag_texts(r.warnings, "warning", dir);
    INFO(c.discovery << "\nwarnings:\n" << w);
    REQUIRE(r.snapshot);
    CHECK(r.snapshot->rules[0].override_discovery);
    CHECK_FALSE(r.snapshot->rules[1].override_discovery);
    if (c.want_warning.empty())
      CHECK(w.find("override") == std::string::npos);
    else
      CHECK(w.find(c.want_warning) != std::string::npos);
  }
}
