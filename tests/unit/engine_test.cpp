// The engine through query(): one policy, a table of (map, key, want) cases
// covering precedence, case, trailing dots, IPv4/IPv6 ranges, .parent keys,
// the subdomain switch, aliases, sender and inbound rules.
#include "catch.hpp"

#include <fstream>

#include "policy/maps.hpp"
#include "testing.hpp"

using namespace tlspolicy;

namespace {

const char* kConf = R"(
default = "may";
outbound = (
  { name = "list"; level = "require"; to_lists = "force.list"; },
  { name = "parent"; level = "encrypt"; to = [ "partner.test" ]; },
  { name = "child"; level = "verify"; to = [ "secure.partner.test" ]; },
  { name = "exact-only"; level = "encrypt"; subdomains = false; to = [ "exact.test" ]; },
  { name = "subs-only"; level = "encrypt"; to = [ ".subs.test" ]; },
  { name = "star-domain"; level = "encrypt"; to = [ "*@star.test" ]; },
  { name = "auditor"; level = "encrypt"; to = [ "auditor@bigbank.test", "vip@partner.test" ]; },
  { name = "upgrade"; level = "verify"; to = [ "legacy@partner.test" ]; },
  { name = "wide"; level = "may"; to = [ "10.0.0.0/8" ]; },
  { name = "narrow"; level = "encrypt"; to = [ "10.1.0.0/16" ]; },
  { name = "host"; level = "secure"; to = [ "10.1.2.3" ]; },
  { name = "v6"; level = "encrypt"; to = [ "2001:db8::/32" ]; },
  { name = "relay"; level = "encrypt"; transport = "smtp-enc:[relay.test]:587"; to = [ "boss@relayed.test" ]; },
  { name = "finance"; level = "encrypt"; from = [ "finance@ourcorp.test", "*@payroll.test" ]; },
  { name = "newsletter"; level = "may"; from = [ "news@ourcorp.test" ]; }
);
inbound = (
  { name = "partner"; from = [ "*@partner.test" ]; min_cipher_bits = 112; },
  { name = "ceo-exempt"; from = [ "ceo@partner.test" ]; require = "none"; },
  { name = "legal"; to = [ "legal" ]; action = "tempfail"; },
  { name = "everyone"; to = [ "*" ]; action = "monitor"; },
  { name = "nets"; clients = [ "192.0.2.0/24" ]; min_protocol = "TLSv1.2"; },
  { name = "custom"; to = [ "hr@ours.test" ]; min_cipher_bits = 128;
    reply = "503 5.7.0 encryption too weak {bits} less than {min_bits}"; }
);
)";

const char* kList = "# force encrypt\nTheir_Domain.com\n204.10.243.26   # one host\n207.219.44.0/24\n\n";

struct Case {
  MapName map;
  std::string key;
  std::string want;  // "" = NOTFOUND
};

}  // namespace

TEST_CASE("engine answers: precedence, keys and maps") {
  auto r = testing::load_text(kConf, {{"force.list", kList}});
  for (auto& e : r.errors) FAIL(e.text());
  REQUIRE(r.snapshot);
  const Snapshot& s = *r.snapshot;
  using M = MapName;
  const Case cases[] = {
      // list entries, case, trailing dot, subdomains on by default
      {M::tls_policy, "their_domain.com", "encrypt"},
      {M::tls_policy, "SALES.Their_Domain.COM.", "encrypt"},
      {M::tls_policy, "[204.10.243.26]", "encrypt"},
      {M::tls_policy, "[204.10.243.27]", "may"},
      {M::tls_policy, "[207.219.44.200]:2525", "encrypt"},
      // nearest parent wins over farther parent; exact child rule wins
      {M::tls_policy, "partner.test", "encrypt"},
      {M::tls_policy, "a.b.partner.test", "encrypt"},
      {M::tls_policy, "secure.partner.test", "verify"},
      {M::tls_policy, "mx.secure.partner.test", "verify"},
      {M::tls_policy, "partner.test:25", "encrypt"},
      {M::tls_policy, "[partner.test]:587", "encrypt"},
      // Postfix's parent keys
      {M::tls_policy, ".partner.test", "encrypt"},
      {M::tls_policy, ".secure.partner.test", "verify"},
      {M::tls_policy, ".test", "may"},
      // subdomain switch, .subdomains-only, *@domain
      {M::tls_policy, "exact.test", "encrypt"},
      {M::tls_policy, "sub.exact.test", "may"},
      {M::tls_policy, ".exact.test", "may"},
      {M::tls_policy, "subs.test", "may"},
      {M::tls_policy, "a.subs.test", "encrypt"},
      {M::tls_policy, ".subs.test", "encrypt"},
      {M::tls_policy, "star.test", "encrypt"},
      {M::tls_policy, "x.star.test", "may"},
      // overlapping CIDRs: longest prefix wins; IPv6
      {M::tls_policy, "[10.9.9.9]", "may"},
      {M::tls_policy, "[10.1.9.9]", "encrypt"},
      {M::tls_policy, "[10.1.2.3]:25", "secure"},
      {M::tls_policy, "10.1.2.3", "secure"},
      {M::tls_policy, "[2001:db8::25]", "encrypt"},
      {M::tls_policy, "[ipv6:2001:DB8:0::25]:25", "encrypt"},
      {M::tls_policy, "[2001:db9::25]", "may"},
      // odd keys match nothing and fall to the default
      {M::tls_policy, "", ""},
      {M::tls_policy, "[unclosed", "may"},
      {M::tls_policy, "unrelated.example", "may"},
      // per-recipient transport: only recipients stricter than their domain
      {M::transport, "auditor@bigbank.test", "smtp-tls-encrypt:"},
      {M::transport, "Auditor+Tag@BigBank.Test", "smtp-tls-encrypt:"},
      {M::transport, "other@bigbank.test", ""},
      {M::transport, "vip@partner.test", ""},  // encrypt is not stricter than the domain's encrypt
      {M::transport, "legacy@partner.test", "smtp-tls-encrypt:"},  // verify is stricter than encrypt
      {M::transport, "boss@relayed.test", "smtp-enc:[relay.test]:587"},
      {M::transport, "*", ""},
      {M::transport, "bigbank.test", ""},
      // sender transport
      {M::sender_transport, "finance@ourcorp.test", "smtp-tls-encrypt:"},
      {M::sender_transport, "FINANCE+q1@OurCorp.Test", "smtp-tls-encrypt:"},
      {M::sender_transport, "anyone@payroll.test", "smtp-tls-encrypt:"},
      {M::sender_transport, "anyone@sub.payroll.test", ""},
      {M::sender_transport, "news@ourcorp.test", ""},
      {M::sender_transport, "other@ourcorp.test", ""},
      // inbound: senders, exemption, recipients, clients, custom reply
      {M::inbound, "from=a@partner.test", "reject 554 5.7.0 encryption too weak 0 less than 112"},
      {M::inbound, "from=a@partner.test version=TLSv1.2 bits=56", "reject 554 5.7.0 encryption too weak 56 less than 112"},
      {M::inbound, "from=a@partner.test version=TLSv1.3 bits=256", "accept"},
      {M::inbound, "from=ceo@partner.test", "accept"},
      {M::inbound, "from=x@mx.partner.test", ""},  // *@domain is that domain only
      {M::inbound, "to=Legal@ours.test", "tempfail 450 4.7.1 <Legal@ours.test>: TLS required for mail to this recipient"},
      {M::inbound, "to=bob@ours.test", "monitor 550 5.7.1 <bob@ours.test>: TLS required for mail to this recipient"},
      {M::inbound, "to=bob@ours.test version=TLSv1.3 bits=128", "accept"},
      {M::inbound, "client=192.0.2.9", "reject 530 5.7.0 Must issue a STARTTLS command first"},
      {M::inbound, "client=192.0.2.9 version=TLSv1.1 bits=256", "reject 554 5.7.0 TLS protocol TLSv1.1 is older than the required TLSv1.2"},
      {M::inbound, "client=198.51.100.1", ""},
      {M::inbound, "to=hr@ours.test version=TLSv1.2 bits=112", "reject 503 5.7.0 encryption too weak 112 less than 128"},
      // the strictest failure wins: reject (sender) over monitor (recipient)
      {M::inbound, "from=a@partner.test to=bob@ours.test", "reject 554 5.7.0 encryption too weak 0 less than 112"},
      {M::inbound, "garbage", ""},
  };
  for (auto& c : cases) {
    Answer a = query(s, c.map, c.key);
    std::string got = a.found ? a.value : "";
    INFO(map_name(c.map) << " \"" << c.key << "\"\n  got  \"" << got << "\"\n  want \"" << c.want << "\"");
    CHECK(got == c.want);
  }
}

TEST_CASE("on_failure = bounce: every recipient under a bounce rule is routed, Sendmail gets PERM+") {
  auto r = testing::load_text(R"(
default = "may";
bounce_transport = "smtp-bounce:";
outbound = (
  { name = "bank"; level = "encrypt"; on_failure = "bounce"; to = [ "bank.test" ]; },
  { name = "bank-loose"; level = "encrypt"; to = [ "legacy@bank.test" ]; },
  { name = "strict-defer"; level = "encrypt"; to = [ "strict.test" ]; },
  { name = "vip"; level = "encrypt"; on_failure = "bounce"; to = [ "vip@strict.test", "vip@open.test" ]; },
  { name = "own"; level = "verify"; on_failure = "bounce"; transport = "smtp-verify-bounce:"; to = [ "v.test" ]; },
  { name = "open"; level = "may"; on_failure = "bounce"; to = [ "open.test" ]; },
  { name = "sender"; level = "encrypt"; on_failure = "bounce"; from = [ "cfo@ours.test" ]; }
);
)");
  for (auto& e : r.errors) FAIL(e.text());
  REQUIRE(r.snapshot);
  using M = MapName;
  const Case cases[] = {
      {M::transport, "a@bank.test", "smtp-bounce:"},         // a domain rule
      {M::transport, "A+x@Sub.Bank.Test", "smtp-bounce:"},   // its subdomains
      {M::transport, "legacy@bank.test", ""},                 // an address rule that does not bounce
      {M::transport, "a@strict.test", ""},                    // defer: the tls-policy map covers it
      {M::transport, "vip@strict.test", "smtp-bounce:"},      // not stricter, but bounces
      {M::transport, "vip@open.test", "smtp-bounce:"},
      {M::transport, "a@open.test", ""},                      // may never bounces
      {M::transport, "a@v.test", "smtp-verify-bounce:"},      // the rule's own transport
      {M::transport, "a@else.test", ""},
      {M::sender_transport, "cfo@ours.test", "smtp-bounce:"},
      {M::tls_policy, "bank.test", "encrypt"},
      {M::sendmail_access, "TLS_Srv:bank.test", "PERM+ENCR:112"},
      {M::sendmail_access, "TLS_Srv:v.test", "PERM+VERIFY:112"},
      {M::sendmail_access, "TLS_Rcpt:vip@open.test", "PERM+ENCR:112"},
      {M::sendmail_access, "TLS_Srv:strict.test", "TEMP+ENCR:112"},
  };
  for (auto& c : cases) {
    Answer a = query(*r.snapshot, c.map, c.key);
    std::string got = a.found ? a.value : "";
    INFO(map_name(c.map) << " \"" << c.key << "\"\n  got  \"" << got << "\"\n  want \"" << c.want << "\"");
    CHECK(got == c.want);
  }
  // The top-level on_failure covers the default and every rule without its own.
  auto all = testing::load_text("on_failure = \"bounce\";\ndefault = \"encrypt\";\n"
                                "outbound = ( { level = \"encrypt\"; on_failure = \"defer\"; to = \"d.test\"; } );");
  for (auto& e : all.errors) FAIL(e.text());
  REQUIRE(all.snapshot);
  CHECK(query(*all.snapshot, M::transport, "a@any.test").value == "smtp-tls-bounce:");
  CHECK(!query(*all.snapshot, M::transport, "a@d.test").found);
}

TEST_CASE("effective levels for the header: address > domain > default") {
  auto r = testing::load_text(kConf, {{"force.list", kList}});
  REQUIRE(r.snapshot);
  struct LCase {
    std::string rcpt;
    Level want;
  };
  const LCase cases[] = {
      {"legacy@partner.test", Level::verify},  {"x@partner.test", Level::encrypt},
      {"auditor@bigbank.test", Level::encrypt}, {"x@bigbank.test", Level::may},
      {"x@secure.partner.test", Level::verify},
  };
  for (auto& c : cases) {
    uint32_t rule;
    Level got = recipient_level(*r.snapshot, c.rcpt, &rule);
    INFO(c.rcpt << ": got " << level_name(got) << " want " << level_name(c.want));
    CHECK(got == c.want);
  }
  uint32_t rule;
  CHECK(sender_level(*r.snapshot, "finance@ourcorp.test", &rule) == Level::encrypt);
  CHECK(sender_level(*r.snapshot, "nobody@ourcorp.test", &rule) == Level::none);
}

TEST_CASE("no default: unmatched destinations are NOTFOUND so Postfix decides") {
  auto r = testing::load_text(R"(outbound = ( { level = "encrypt"; to = "a.test"; } );)");
  REQUIRE(r.snapshot);
  CHECK(query(*r.snapshot, MapName::tls_policy, "a.test").value == "encrypt");
  CHECK_FALSE(query(*r.snapshot, MapName::tls_policy, "b.test").found);
}

TEST_CASE("explain names the deciding rule and the ones it beat") {
  auto r = testing::load_text(kConf, {{"force.list", kList}});
  REQUIRE(r.snapshot);
  Answer a = query(*r.snapshot, MapName::tls_policy, "mx.secure.partner.test", true);
  std::string text = explain_text(*r.snapshot, MapName::tls_policy, "mx.secure.partner.test", a);
  INFO(text);
  CHECK(text.find("decided by rule \"child\"") != std::string::npos);
  CHECK(text.find("lost to it: rule \"parent\"") != std::string::npos);
  CHECK(text.find("the default") != std::string::npos);
  CHECK(text.find("tlspolicy.conf:6") != std::string::npos);
}

TEST_CASE("a 1M-rule table loads and answers") {
  std::string dir = testing::temp_dir();
  {
    std::ofstream out(dir + "/big.list");
    for (int i = 0; i < 1000000; ++i) out << "d" << i << ".example" << (i % 7) << ".com\n";
  }
  std::ofstream(dir + "/tlspolicy.conf") << "outbound = ( { level = \"encrypt\"; to_lists = \"big.list\"; } );\n";
  auto r = load_policy(dir + "/tlspolicy.conf");
  REQUIRE(r.errors.empty());
  const Snapshot& s = *r.snapshot;
  CHECK(s.destinations.size() == 1000000);
  struct BCase {
    std::string key;
    bool found;
  };
  const BCase cases[] = {{"d0.example0.com", true},        {"d999999.example0.com", true},
                         {"mx.d123456.example4.com", true}, {"d123456.example5.com", false},
                         {"d1000000.example0.com", false},  {"example0.com", false}};
  for (auto& c : cases) {
    INFO(c.key);
    CHECK(query(s, MapName::tls_policy, c.key).found == c.found);
  }
}
