// Entry parsing and key normalisation, as a table of cases.
#include "catch.hpp"

#include <openssl/ssl.h>

#include "policy/ciphers.hpp"
#include "policy/maps.hpp"
#include "testing.hpp"

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
      // Postfix's valid_hostname() refuses all-numeric names; policy_ttl is an int.
      {"secure servername=192.0.2.1", "!neither"},
      {"secure policy_type=sts policy_domain=12345", "!is not a domain name"},
      {"secure policy_type=sts policy_ttl=99999999999", "!policy_ttl=99999999999"},
      {"secure policy_type=sts policy_ttl=86400", "secure policy_type=sts policy_ttl=86400"},
      // Fingerprint colons are optional between byte pairs.
      {"fingerprint match=3D9534512466333B9D24099C0C1170BD1", "!not a certificate fingerprint"},
      {"fingerprint match=3D95345124663" "33B9D24099C0C1170B", "!not a certificate fingerprint"},  // 31 digits
      {"fingerprint match=3D9534512466" "33B9D24099C0C1170BD1", "fingerprint match=3D953451246633B9D24099C0C1170BD1"},
      {"fingerprint match=3D:95345124663" "3B9D24099C0C1170BD1", "fingerprint match=3D:953451246633B9D24099C0C1170BD1"},
      {"fingerprint match=3D:95:", "!not a certificate fingerprint"},
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

TEST_CASE("min_cipher_bits: the grade and exclusions, checked against OpenSSL's own tables") {
  // 112 and 128: a grade whose TLS 1.2 ciphers all have that many bits.
  for (int bits : {112, 128}) {
    auto f = cipher_floor(bits);
    INFO(bits << ": " << f.attributes << " " << f.error);
    CHECK(f.error.empty());
    CHECK((f.attributes == " ciphers=medium" || f.attributes == " ciphers=high"));
    CHECK(f.warning.empty());  // TLS 1.3's weakest suite has 128 bits
  }
  // 256: "high" minus every weaker cipher; re-check with OpenSSL that what
  // Postfix will offer ("HIGH" grade list minus each exclusion) is all >= 256.
  auto f = cipher_floor(256);
  REQUIRE(f.error.empty());
  REQUIRE(f.attributes.starts_with(" ciphers=high exclude="));
  std::string list = "aNULL:-aNULL:HIGH:@STRENGTH";
  std::string ex = f.attributes.substr(std::string(" ciphers=high exclude=").size());
  for (size_t i = 0, j; i <= ex.size(); i = j + 1) {
    j = ex.find(':', i);
    if (j == std::string::npos) j = ex.size();
    list += ":!";
    list.append(ex, i, j - i);
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_method());
  REQUIRE(SSL_CTX_set_cipher_list(ctx, list.c_str()) == 1);
  SSL_CTX_set_security_level(ctx, 0);
  auto* sk = SSL_CTX_get_ciphers(ctx);
  int weakest = 1000, n = 0;
  for (int i = 0; i < sk_SSL_CIPHER_num(sk); ++i) {
    const SSL_CIPHER* c = sk_SSL_CIPHER_value(sk, i);
    if (std::string_view(SSL_CIPHER_get_version(c)) == "TLSv1.3") continue;
    weakest = std::min(weakest, SSL_CIPHER_get_bits(c, nullptr));
    ++n;
  }
  SSL_CTX_free(ctx);
  INFO(f.attributes);
  CHECK(n > 0);
  CHECK(weakest >= 256);
  CHECK(f.warning.find("TLS 1.3") != std::string::npos);  // TLS_AES_128_GCM_SHA256 cannot be excluded
  CHECK(!cipher_floor(0).error.empty());
  CHECK(!cipher_floor(512).error.empty());
  CHECK(known_cipher_name("AES128"));
  CHECK(known_cipher_name("ECDHE-ECDSA-AES128-GCM-SHA256"));
  CHECK(!known_cipher_name("RC4"));  // not in OpenSSL 3's default provider
  CHECK(!known_cipher_name("NOSUCHCIPHER"));
}

TEST_CASE("min_cipher_bits in rules: enforcing levels only, not with ciphers=/exclude=") {
  struct Case {
    std::string rule;
    std::string want;  // the policy, or "!" + error substring
  };
  const Case cases[] = {
      {"level = \"encrypt\"; min_cipher_bits = 128;", "encrypt ciphers=medium"},
      {"level = \"verify match=hostname\"; min_cipher_bits = 112;", "verify match=hostname ciphers=medium"},
      {"level = \"may\"; min_cipher_bits = 128;", "!needs a level that requires TLS"},
      {"level = \"encrypt ciphers=high\"; min_cipher_bits = 128;", "!min_cipher_bits and ciphers=/exclude="},
      {"level = \"encrypt\"; min_cipher_bits = 300;", "!out of range"},
  };
  for (auto& c : cases) {
    auto r = testing::load_text("outbound = ( { to = \"x.test\"; " + c.rule + " } );");
    std::string got = "!";
    if (r.snapshot)
      got = query(*r.snapshot, MapName::tls_policy, "x.test").value;
    else
      got += r.errors.empty() ? std::string("?") : r.errors[0].message;
    INFO(c.rule << "\n  got  " << got << "\n  want " << c.want);
    if (c.want[0] == '!')
      CHECK(got.find(c.want.substr(1)) != std::string::npos);
    else
      CHECK(got == c.want);
  }
}

TEST_CASE("one effective level per recipient: laxer address rules refused, the effective query") {
  auto lax = testing::load_text(
      "outbound = ( { name = \"partner\"; level = \"encrypt\"; to = \"partner.example\"; },\n"
      "  { name = \"noreply\"; level = \"may\"; to = \"noreply@partner.example\"; } );");
  REQUIRE(!lax.snapshot);
  REQUIRE(!lax.errors.empty());
  CHECK(lax.errors[0].message.find("is laxer than its domain's encrypt") != std::string::npos);
  CHECK(lax.errors[0].line == 2);
  // Laxer than the default counts too; stricter or equal is fine.
  auto dflt = testing::load_text("default = \"encrypt\"; outbound = ( { level = \"may\"; to = \"a@b.example\"; } );");
  CHECK(!dflt.snapshot);
  auto ok = testing::load_text(
      "outbound = ( { name = \"partner\"; level = \"may\"; to = \"partner.example\"; },\n"
      "  { name = \"vip\"; level = \"encrypt\"; to = \"vip@partner.example\"; } );");
  REQUIRE(ok.snapshot);
  std::string e = effective_text(*ok.snapshot, "vip@partner.example");
  INFO(e);
  CHECK(e.find("next hop partner.example: tls-policy answers may (rule \"partner\"") != std::string::npos);
  CHECK(e.find("transport: smtp-tls-encrypt: (rule \"vip\"") != std::string::npos);
  CHECK(e.find("X-TLSLevel: Require (level encrypt, rule \"vip\"") != std::string::npos);
  std::string o = effective_text(*ok.snapshot, "other@partner.example");
  CHECK(o.find("transport: NOTFOUND") != std::string::npos);
  CHECK(o.find("X-TLSLevel: Try") != std::string::npos);
  // A verify address rule through the encrypt-only service: a warning.
  auto v = testing::load_text("outbound = ( { level = \"verify\"; to = \"v@x.example\"; } );");
  REQUIRE(v.snapshot);
  bool warned = false;
  for (auto& w : v.warnings) warned |= w.message.find("give the rule its own transport") != std::string::npos;
  CHECK(warned);
}

TEST_CASE("the shrink guard compares names, not spellings") {
  auto a = testing::load_text("outbound = ( { level = \"encrypt\"; to = [ \"xn--bcher-kva.test\", \"vip@Example.test\", \"192.0.2.0/24\" ]; } );");
  auto b = testing::load_text("outbound = ( { level = \"encrypt\"; to = [ \"bücher.test\", \"VIP@example.test\", \"192.0.2.0/24\" ]; } );");
  auto c = testing::load_text("outbound = ( { level = \"encrypt\"; to = [ \"other.test\", \"vip@example.test\", \"192.0.2.0/24\" ]; } );");
  REQUIRE((a.snapshot && b.snapshot && c.snapshot));
  CHECK(enforcing_shrink(*a.snapshot, *b.snapshot, 10).gone == 0);  // the same three names
  Shrink s = enforcing_shrink(*a.snapshot, *c.snapshot, 10);
  CHECK(s.gone == 1);
  REQUIRE(s.examples.size() == 1);
  CHECK(s.examples[0].starts_with("xn--bcher-kva.test ("));
}
