// One case per configuration error: the message, with file and line.
#include "catch.hpp"

#include "testing.hpp"

namespace {
struct Case {
  std::string conf;
  std::map<std::string, std::string> files;
  std::string want;  // expected "file:line: error: ..." with the temp dir stripped
};
}  // namespace

TEST_CASE("configuration errors name file, line and the fix") {
  const Case cases[] = {
      {"outbound = ( { level = \"encrypt\";\n to = \"a.test\"; } ;", {}, "tlspolicy.conf:2: error: syntax error"},
      {"defualt = \"may\";", {}, "tlspolicy.conf:1: error: unknown setting \"defualt\" in the top level"},
      {"default = \"maybe\";", {}, "tlspolicy.conf:1: error: unknown TLS level \"maybe\""},
      {"default = 3;", {}, "tlspolicy.conf:1: error: setting \"default\" must be a string"},
      {"outbound = (\n { level = \"encrypt\";\n   to = [ \"a.test\",\n \"207.219.44.7/24\" ]; } );", {},
       "tlspolicy.conf:4: error: non-null host address bits in \"207.219.44.7/24\", perhaps you meant "
       "\"207.219.44.0/24\""},
      {"outbound = ( { level = \"encrypt\"; to_lists = \"l\"; } );", {{"l", "ok.test\n\n# c\nbücher-.test\n"}},
       "l:4: error: \"bücher-.test\" is not a valid internationalised domain name (string start/ends with "
       "forbidden hyphen)"},
      {"outbound = ( { level = \"encrypt\"; to_lists = \"missing.list\"; } );", {},
       "tlspolicy.conf:1: error: cannot open list file"},
      {"outbound = (\n { name = \"a\"; level = \"encrypt\"; to = \"x.test\"; },\n { name = \"b\"; level = \"may\"; "
       "to = \"X.test\"; } );",
       {},
       "tlspolicy.conf:3: error: \"X.test\" (destination list of rule \"b\": may) conflicts with \"x.test\" at "
       "TMP/tlspolicy.conf:2 (rule \"a\": encrypt)"},
      {"outbound = ( { level = \"encrypt ciphers=strong\"; to = \"x.test\"; } );", {},
       "tlspolicy.conf:1: error: ciphers=strong is not one of"},
      {"outbound = ( { level = \"encrypt\"; } );", {}, "tlspolicy.conf:1: error: outbound rule \"outbound rule #1\" "
                                                       "matches nothing"},
      {"outbound = ( { to = \"x.test\"; } );", {}, "has no level"},
      {"outbound = ( { level = \"may\"; to = \"x.test\"; colour = 1; } );", {},
       "tlspolicy.conf:1: error: unknown setting \"colour\" in an outbound rule"},
      {"outbound = ( { level = \"encrypt\"; to = \"*\"; } );", {}, "to cover every destination set default"},
      {"inbound = ( { from = \"*@p.test\"; min_cipher_bits = 0; } );", {}, "min_cipher_bits = 0 is out of range"},
      {"inbound = ( { from = \"*@p.test\"; action = \"bounce\"; } );", {}, "use reject, tempfail or monitor"},
      {"inbound = ( { from = \"*@p.test\"; min_protocol = \"TLSv2\"; } );", {}, "min_protocol = \"TLSv2\""},
      {"inbound = ( { from = \"*@p.test\"; reply = \"TLS please\"; } );", {}, "must start with a 4xx or 5xx"},
      {"inbound = ( { from = \"*@p.test\"; reply = \"550 5.7.1 {oops}\"; } );", {}, "unknown placeholder"},
      {"inbound = ( { from = \"*@p.test\"; reply = \"550 4.7.1 x\"; } );", {}, "same class"},
      {"inbound = ( { require = \"tls\"; } );", {}, "matches nothing"},
      {"inbound = ( { from = \"*@p.test\"; reply = \"451 4.7.1 later\"; } );", {}, "use action = \"tempfail\""},
      {"inbound = ( { clients = \"example.com\"; } );", {}, "not an IP address or range"},
      {"daemon = { socketmap = \"inet:localhost:10461\"; };", {}, "is not an endpoint"},
      {"daemon = { socket_mode = \"rw\"; };", {}, "not an octal mode"},
      {"", {}, "tlspolicy.conf: error: no rules and no default: an empty or truncated configuration?"},
      {"# everything commented out\n# default = \"encrypt\";\n", {}, "no rules and no default"},
      {"default = \"may\"; daemon = { reload_guard = 101; };", {}, "tlspolicy.conf:1: error: reload_guard = 101 must be 0..100"},
      {"daemon = { idle_timeout = 5; };", {}, "longer than Postfix's 10 s"},
      {"transport = \"smtp-tls-encrypt\";", {}, "must be service:nexthop"},
      {"milter = { header = \"X-TLS Level\"; };", {}, "must be one printable word"},
      {"on_failure = \"return\"; default = \"may\";", {}, "tlspolicy.conf:1: error: on_failure = \"return\": use \"defer\""},
      {"outbound = ( { level = \"encrypt\"; on_failure = \"bounced\"; to = \"x.test\"; } );", {},
       "tlspolicy.conf:1: error: on_failure = \"bounced\": use \"defer\""},
      {"bounce_transport = \"smtp-tls-bounce\"; default = \"may\";", {}, "must be service:nexthop"},
      {"outbound = (\n { name = \"bank\"; level = \"verify\"; on_failure = \"bounce\"; to = \"x.test\"; } );", {},
       "tlspolicy.conf:2: error: outbound rule \"bank\" has level \"verify\" and on_failure = \"bounce\": "
       "bounce_transport (smtp-tls-bounce:) enforces plain encrypt, which would weaken it"},
      {"on_failure = \"bounce\";\ndefault = \"encrypt protocols=>=TLSv1.2\";", {},
       "tlspolicy.conf:2: error: the default has level \"encrypt protocols=>=TLSv1.2\" and on_failure"},
      {"@include \"nothere.conf\"\n", {}, "error:"},
  };
  for (auto& c : cases) {
    std::string dir;
    auto r = testing::load_text(c.conf, c.files, &dir);
    std::string got;
    for (auto& e : r.errors) {
      auto t = e.text();
      for (size_t p; (p = t.find(dir + "/")) != std::string::npos;) t.replace(p, dir.size() + 1, t.find(dir + "/") == 0 ? "" : "TMP/");
      got += t + "\n";
    }
    INFO("config:\n" << c.conf << "\ngot:\n" << got << "want (substring):\n" << c.want);
    CHECK(r.snapshot == nullptr);
    CHECK(got.find(c.want) != std::string::npos);
  }
}

TEST_CASE("all errors are reported, not just the first") {
  auto r = testing::load_text("default = \"bad\";\noutbound = ( { level = \"encrypt\"; to = [ \"a..b\", \"1.2.3.4/40\" ]; } );");
  CHECK(r.errors.size() == 3);
}

TEST_CASE("same key, same policy in two rules is fine") {
  auto r = testing::load_text(
      "outbound = ( { level = \"encrypt\"; to = \"x.test\"; }, { level = \"require\"; to = \"x.test\"; } );");
  CHECK(r.errors.empty());
}
