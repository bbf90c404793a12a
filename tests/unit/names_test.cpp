// Entry parsing and key normalisation, as a table of cases.
#include "catch.hpp"

#include "policy/level.hpp"
#include "policy/names.hpp"

using namespace tlspolicy;

TEST_CASE("entries parse into the kind their syntax says") {
  struct Case {
    std::string text;
    Dimension dim;
    bool subdomains;
    EntryKind kind;
    std::string key;
  };
  const Case cases[] = {
      {"Their_Domain.COM", Dimension::destination, true, EntryKind::domain, "their_domain.com"},
      {"their-domain.com.", Dimension::destination, true, EntryKind::domain, "their-domain.com"},
      {"their-domain.com", Dimension::destination, false, EntryKind::exact_domain, "their-domain.com"},
      {".example.com", Dimension::destination, true, EntryKind::subdomains_only, "example.com"},
      {"*@Example.com", Dimension::destination, true, EntryKind::exact_domain, "example.com"},
      {"User@Example.com", Dimension::destination, true, EntryKind::address, "user@example.com"},
      {"204.10.243.26", Dimension::destination, true, EntryKind::cidr, ""},
      {"[204.10.243.26]", Dimension::destination, true, EntryKind::cidr, ""},
      {"207.219.44.0/24", Dimension::destination, true, EntryKind::cidr, ""},
      {"2001:db8::/32", Dimension::destination, true, EntryKind::cidr, ""},
      {"john.smith", Dimension::inbound_recipient, true, EntryKind::local_part, "john.smith"},
      {"*", Dimension::inbound_recipient, true, EntryKind::any, ""},
      {"*@partner.example", Dimension::inbound_sender, true, EntryKind::exact_domain, "partner.example"},
      {"partner.example", Dimension::inbound_sender, true, EntryKind::domain, "partner.example"},
  };
  for (auto& c : cases) {
    std::string err;
    auto e = parse_entry(c.text, c.dim, c.subdomains, &err);
    INFO("entry: " << c.text << "  error: " << err);
    REQUIRE(e.has_value());
    CHECK(int(e->kind) == int(c.kind));
    CHECK(e->key == c.key);
  }
}

TEST_CASE("bad entries are refused with a message that helps") {
  struct Case {
    std::string text;
    Dimension dim;
    std::string want;  // substring of the error
  };
  const Case cases[] = {
      {"207.219.44.7/24", Dimension::destination, "perhaps you meant \"207.219.44.0/24\""},
      {"2001:db8::1/32", Dimension::destination, "perhaps you meant \"2001:db8::/32\""},
      {"10.0.0.0/33", Dimension::destination, "bad prefix length"},
      {"bücher-.example", Dimension::destination, "not a valid internationalised domain name"},
      {"a..b", Dimension::destination, "empty label in \"a..b\": perhaps you meant \"a.b\""},
      {"*", Dimension::destination, "default"},
      {"1.2.3.4", Dimension::sender, "IP addresses"},
      {"a.com b.com", Dimension::destination, "a config string is one entry"},
      {"-bad.com", Dimension::destination, "not a valid domain"},
  };
  for (auto& c : cases) {
    std::string err;
    auto e = parse_entry(c.text, c.dim, true, &err);
    INFO("entry: " << c.text << "  got: " << err << "  want: " << c.want);
    CHECK_FALSE(e.has_value());
    CHECK(err.find(c.want) != std::string::npos);
  }
}

TEST_CASE("addresses lose their extension and case") {
  struct Case {
    std::string in, delims, want;
  };
  const Case cases[] = {
      {"U6+tag@Deep.Sub.TLS.Test", "+", "u6@deep.sub.tls.test"},
      {"a-b+c@x.y", "+-", "a@x.y"},
      {"+foo@x.y", "+", "+foo@x.y"},
      {"plain@x.y", "", "plain@x.y"},
      {"user@x.y.", "+", "user@x.y"},
  };
  for (auto& c : cases) {
    auto got = normalize_address(c.in, c.delims);
    INFO(c.in << ": got " << got << " want " << c.want);
    CHECK(got == c.want);
  }
}

TEST_CASE("policy values: levels, aliases and attribute validation") {
  struct Case {
    std::string in;
    std::string want;  // value, or "!" + error substring
  };
  const Case cases[] = {
      {"encrypt", "encrypt"},
      {"Require", "encrypt"},
      {"enforce", "encrypt"},
      {"try", "may"},
      {"opportunistic", "may"},
      {"DANE-only", "dane-only"},
      {"encrypt protocols=>=TLSv1.2 ciphers=high", "encrypt protocols=>=TLSv1.2 ciphers=high"},
      // Postfix splits a policy at commas too: "!SSLv3" would be a malformed
      // attribute and the whole policy invalid (every mail deferred).
      {"may protocols=!SSLv2,!SSLv3", "!\"!SSLv3\" is not an attribute"},
      {"may protocols=!SSLv2:!SSLv3", "may protocols=!SSLv2:!SSLv3"},
      {"encrypt,protocols=>=TLSv1.2", "encrypt protocols=>=TLSv1.2"},
      {"verify match=hostname:nexthop servername=hostname", "verify match=hostname:nexthop servername=hostname"},
      // A leading dot: any subdomain (tls_client.c); the MTA-STS peers write
      // "*.mx.example.com" patterns so.
      {"secure match=.example.com tafile=/etc/ssl/ta.pem", "secure match=.example.com tafile=/etc/ssl/ta.pem"},
      {"secure match=.mx.example.com:mx1.example.com", "secure match=.mx.example.com:mx1.example.com"},
      {"secure match=mx.example.test servername=hostname", "secure match=mx.example.test servername=hostname"},
      {"verify match=HOSTNAME:Dot-Nexthop", "verify match=HOSTNAME:Dot-Nexthop"},
      {"secure match=a..b", "!is neither hostname"},
      {"secure match=", "!has no value"},
      // Attribute names and keywords are case-insensitive in Postfix.
      {"encrypt CIPHERS=High", "encrypt ciphers=High"},
      {"encrypt Connection_Reuse=YES", "encrypt connection_reuse=YES"},
      {"encrypt protocols=", "encrypt protocols="},
      {"secure servername=nexthop", "secure servername=nexthop"},
      {"verify tafile=/a.pem tafile=/b.pem", "verify tafile=/a.pem tafile=/b.pem"},
      {"encrypt tafile=/a.pem", "!tafile= only applies"},
      // Postfix 3.9: raw public keys.
      {"dane-only enable_rpk=yes", "dane-only enable_rpk=yes"},
      {"encrypt enable_rpk=maybe", "!enable_rpk=maybe must be yes or no"},
      // Postfix 3.10 TLSRPT attributes, as the MTA-STS peers send them.
      {"secure match=mx.example.com:.example.net servername=hostname policy_type=sts policy_domain=example.com "
       "mx_host_pattern=mx.example.com mx_host_pattern=*.example.net { policy_string = version: STSv1 } "
       "{ policy_string = mode: enforce }",
       "secure match=mx.example.com:.example.net servername=hostname policy_type=sts policy_domain=example.com "
       "mx_host_pattern=mx.example.com mx_host_pattern=*.example.net { policy_string = version: STSv1 } "
       "{ policy_string = mode: enforce }"},
      {"may policy_type=no-policy-found policy_domain=example.com",
       "may policy_type=no-policy-found policy_domain=example.com"},
      {"secure policy_type=sts policy_failure=sts-webpki-invalid", "secure policy_type=sts policy_failure=sts-webpki-invalid"},
      {"secure mx_host_pattern=mx.example.com", "!need policy_type="},
      {"secure policy_type=tlsa", "!policy_type=tlsa must be sts or no-policy-found"},
      {"secure policy_type=sts policy_type=sts", "!given twice"},
      {"secure policy_type=sts policy_failure=timeout", "!policy_failure=timeout must be"},
      {"secure policy_type=sts policy_domain=exa_mple..com", "!is not a domain name"},
      {"secure policy_type=sts { policy_string = x", "!without its"},
      {"secure match=example.com tafile=/etc/ssl/ta.pem", "secure match=example.com tafile=/etc/ssl/ta.pem"},
      {"fingerprint match=3D:95:34:51:24:66:33:B9:D2:40:99:C0:C1:17:0B:D1",
       "fingerprint match=3D:95:34:51:24:66:33:B9:D2:40:99:C0:C1:17:0B:D1"},
      {"fingerprint", "!needs at least one match="},
      {"fingerprint match=zz", "!not a certificate fingerprint"},
      {"encrypt cipher=high", "!unknown policy attribute \"cipher=\""},
      {"encrypt ciphers=strong", "!ciphers=strong is not one of"},
      {"encrypt protocols=>=TLSv1.4", "!unknown protocol"},
      {"encrypt match=hostname", "!match= only applies"},
      {"encrypt ciphers=high ciphers=low", "!given twice"},
      {"none ciphers=high", "!takes no attributes"},
      {"maybe", "!unknown TLS level \"maybe\""},
      {"encrypt protocols", "!not an attribute"},
      {"encrypt connection_reuse=maybe", "!yes or no"},
  };
  for (auto& c : cases) {
    std::string err;
    auto p = parse_tls_policy(c.in, &err);
    std::string got = p ? p->value() : "!" + err;
    INFO(c.in << ":\n  got  " << got << "\n  want " << c.want);
    if (c.want[0] == '!')
      CHECK((!p && got.find(c.want.substr(1)) != std::string::npos));
    else
      CHECK(got == c.want);
  }
}
