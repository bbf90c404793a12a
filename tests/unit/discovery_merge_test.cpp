// The merge of the admin's rules with discovered DNS facts (policy/maps.cpp):
// query() driven with hand-built DestinationFacts for every branch, no
// network. Each case: snapshot, key, facts, the answer wanted, and words
// --explain must say.
#include "catch.hpp"

#include "policy/maps.hpp"
#include "testing.hpp"

using namespace tlspolicy;

namespace {

std::string anchor() {
  static std::string path = [] {
    std::string p = testing::temp_dir() + "/root.key";
    std::ofstream(p) << ". IN DS 20326 8 2 e06d44b80b8f1d39a95c0b0d7c65d08458e880409bbc683457104237c7f8ec8d\n";
    return p;
  }();
  return path;
}

std::shared_ptr<const Snapshot> load(const std::string& discovery_extra, const std::string& rules_extra = "",
                                     const std::string& default_level = "may") {
  std::string conf = "discovery = { trust_anchor_file = \"" + anchor() + "\"; " + discovery_extra +
                     " };\n"
                     "default = \"" + default_level + "\";\n"
                     "outbound = (\n"
                     " { name = \"force-encrypt\"; level = \"encrypt\"; to_lists = \"force.list\"; },\n"
                     " { name = \"bank\"; level = \"verify\"; to = [ \"bank.test\", \"198.51.100.0/24\" ]; },\n"
                     " { name = \"exempt\"; level = \"may\"; to = \"exempt.test\"; }\n" +
                     rules_extra + ");\n";
  std::string dir;
  auto r = testing::load_text(conf,
                              {{"force.list", "207.219.44.0/24\n204.10.243.26\nmx:.mail.protection.outlook.com\n"
                                              "mx:aspmx.l.google.com\n"}},
                              &dir);
  std::string errs;
  for (auto& e : r.errors) errs += e.text() + "\n";
  INFO(errs);
  REQUIRE(r.snapshot);
  return r.snapshot;
}

MxHost host(std::string name, std::vector<std::string> ips, TlsaState tlsa = TlsaState::none, int pref = 10) {
  MxHost h;
  h.name = std::move(name);
  h.preference = pref;
  for (auto& ip : ips) h.addrs.push_back(*parse_ip(ip));
  h.tlsa = tlsa;
  return h;
}

DestinationFacts mx(std::string dest, std::vector<MxHost> hosts, DnsSecurity sec = DnsSecurity::insecure) {
  DestinationFacts f;
  f.destination = std::move(dest);
  f.mx = std::move(hosts);
  f.mx_security = sec;
  for (auto& h : f.mx) {
    DnsRecordSet r{f.destination, "MX", DnsStatus::ok, sec, 300, {std::to_string(h.preference) + " " + h.name}, {}};
    f.answers.push_back(r);
  }
  return f;
}

DestinationFacts failed(std::string dest, std::string why) {
  DestinationFacts f;
  f.destination = std::move(dest);
  f.failed = true;
  f.error = why;
  f.answers.push_back({f.destination, "MX", DnsStatus::failed, DnsSecurity::insecure, 0, {}, why});
  return f;
}

struct Case {
  const char* what;
  std::shared_ptr<const Snapshot> snap;
  std::string key;
  std::optional<DestinationFacts> facts;
  std::string want;  // the answer's value ("NOTFOUND" when not found)
  bool temp = false;
  std::vector<std::string> explain;  // substrings of explain_text()
};

}  // namespace

TEST_CASE("MX-aware rules and DANE: query() with discovered facts") {
  auto plain = load("");                                             // dane off, defer on DNS failure
  auto ignore = load("on_dns_failure = \"ignore\";");                // every MX-aware rule ignores DNS failures
  auto dane_only = load("dane = \"dane-only\";");
  auto dane = load("dane = \"dane\";");
  using S = DnsSecurity;
  using T = TlsaState;

  auto implicit = mx("partner2.example", {host("partner2.example", {"207.219.44.20"})});
  implicit.implicit_mx = true;
  auto literal = mx("[relay.example]", {host("relay.example", {"204.10.243.26"})});
  literal.literal = true;
  auto addr_failed = mx("p3.example", {host("mx.p3.example", {})});
  addr_failed.mx[0].addr_failed = true;
  // The A lookup failed (SERVFAIL, timeout) but the AAAA answer came: the
  // host's IPv4 address, which a CIDR entry may cover, is unknown, and
  // Postfix (which asks again) may well deliver to it.
  auto v4_failed = mx("p4.example", {host("mx.p4.example", {"2001:db8::25"})});
  v4_failed.mx[0].addr_failed = true;
  auto bogus = mx("bogus.example", {host("mx.bogus.example", {"207.219.44.1"})}, S::bogus);
  auto null_mx = mx("nomail.example", {}, S::secure);
  null_mx.null_mx = true;

  const Case cases[] = {
      {"CIDR entry matches an MX host's address", plain, "partner.example",
       mx("partner.example", {host("mx1.partner.example", {"207.219.44.9"})}), "encrypt", false,
       {"decided by rule \"force-encrypt\"", "MX mx1.partner.example [207.219.44.9] in 207.219.44.0/24 at ",
        "force.list:1", "dns: MX partner.example: 10 mx1.partner.example (insecure, ttl 300)",
        "lost to it: the default"}},
      {"any matching MX host is enough (the second one here)", plain, "Partner.Example.",
       mx("partner.example", {host("mx0.elsewhere.example", {"192.0.2.7"}),
                              host("mx1.partner.example", {"2001:db8::1", "207.219.44.9"}, T::none, 20)}),
       "encrypt", false, {"MX mx1.partner.example [207.219.44.9] in 207.219.44.0/24"}},
      {"IP entry matches an MX host's address", plain, "other.example",
       mx("other.example", {host("mx.other.example", {"204.10.243.26"})}), "encrypt", false,
       {"MX mx.other.example [204.10.243.26] at ", "force.list:2"}},
      {"no MX: the domain's own address (implicit MX)", plain, "partner2.example", implicit, "encrypt", false,
       {"host partner2.example [207.219.44.20] in 207.219.44.0/24"}},
      {"[host] literal: the host's address", plain, "[relay.example]:25", literal, "encrypt", false,
       {"[204.10.243.26]"}},
      {"mx: exact host name", plain, "gmail-user.example",
       mx("gmail-user.example", {host("aspmx.l.google.com", {"192.0.2.30"})}), "encrypt", false,
       {"MX aspmx.l.google.com is mx:aspmx.l.google.com at ", "force.list:4"}},
      {"mx:.suffix matches hosts below it", plain, "contoso.example",
       mx("contoso.example", {host("contoso-example.mail.protection.outlook.com", {"192.0.2.40"})}), "encrypt",
       false, {"is mx:.mail.protection.outlook.com at "}},
      {"mx:.suffix does not match the suffix itself", plain, "x.example",
       mx("x.example", {host("mail.protection.outlook.com", {"192.0.2.41"})}), "may", false,
       {"MX-aware rules: no entry matches the MX hosts"}},
      {"mx: exact does not match a subdomain", plain, "y.example",
       mx("y.example", {host("alt1.aspmx.l.google.com", {"192.0.2.42"})}), "may", false, {}},
      {"no match: the default", plain, "elsewhere.example",
       mx("elsewhere.example", {host("mx.elsewhere.example", {"192.0.2.1"})}), "may", false,
       {"decided by the default"}},
      {"a rule for the name comes before MX-aware rules", plain, "bank.test",
       mx("bank.test", {host("mx.bank.test", {"207.219.44.5"})}), "verify", false,
       {"decided by rule \"bank\"", "MX-aware rules: rule \"force-encrypt\" (encrypt): MX mx.bank.test",
        "(the rule for the name comes first)", "lost to it: rule \"force-encrypt\"",
        "no discovered policy (DANE, MTA-STS) applies: the rule for the name decides"}},
      {"the strictest of several MX-aware rules wins", plain, "two.example",
       mx("two.example", {host("mx1.two.example", {"207.219.44.9"}), host("mx2.two.example", {"198.51.100.9"})}),
       "verify", false,
       {"decided by rule \"bank\"", "MX mx2.two.example [198.51.100.9] in 198.51.100.0/24",
        "lost to it: rule \"force-encrypt\""}},
      {"DNS failure: TEMP", plain, "down.example", failed("down.example", "SERVFAIL"), "", true,
       {"tls-policy down.example: TEMP DNS lookup for down.example failed (SERVFAIL)", "dns: MX down.example: failed: SERVFAIL",
        "on_dns_failure = \"defer\""}},
      {"DNS failure with on_dns_failure = ignore: the static answer", ignore, "down.example",
       failed("down.example", "timeout"), "may", false, {"on_dns_failure = \"ignore\""}},
      {"DNS failure for a name with its own rule: the rule", plain, "bank.test", failed("bank.test", "SERVFAIL"),
       "verify", false, {"MX-aware rules: unknown (DNS failed: SERVFAIL)", "the rule for the name stands"}},
      {"an MX host's addresses unknown: TEMP", plain, "p3.example", addr_failed, "", true,
       {"address lookup for an MX host of p3.example failed"}},
      {"one address family failed, the other answered: still unknown, TEMP", plain, "p4.example", v4_failed, "",
       true, {"address lookup for an MX host of p4.example failed"}},
      {"bogus MX answer: treated as a failure", plain, "bogus.example", bogus, "", true,
       {"failed DNSSEC validation (bogus)"}},
      {"DANE: secure, every MX host with usable TLSA: dane-only", dane_only, "d.example",
       mx("d.example", {host("mx1.d.example", {"192.0.2.50"}, T::usable), host("mx2.d.example", {"192.0.2.51"}, T::usable)},
          S::secure),
       "dane-only", false, {"2 of 2 hosts with usable TLSA", "Postfix validates the TLSA records"}},
      {"DANE mode dane: dane", dane, "d.example",
       mx("d.example", {host("mx1.d.example", {"192.0.2.50"}, T::usable)}, S::secure), "dane", false, {}},
      {"DANE partial coverage: dane, not dane-only", dane_only, "d.example",
       mx("d.example", {host("mx1.d.example", {"192.0.2.50"}, T::usable), host("mx2.d.example", {"192.0.2.51"}, T::none)},
          S::secure),
       "dane", false, {"1 of 2 hosts", "not dane-only: it would refuse the hosts without usable TLSA"}},
      {"DANE: a failed TLSA lookup on one host: dane (Postfix defers that host)", dane_only, "d.example",
       mx("d.example", {host("mx1.d.example", {"192.0.2.50"}, T::usable), host("mx2.d.example", {"192.0.2.51"}, T::failed)},
          S::secure),
       "dane", false, {"mx2.d.example TLSA lookup failed"}},
      {"DANE: only failed/unusable TLSA: dane", dane_only, "d.example",
       mx("d.example", {host("mx1.d.example", {"192.0.2.50"}, T::unusable), host("mx2.d.example", {"192.0.2.51"}, T::failed)},
          S::secure),
       "dane", false, {"0 of 2 hosts"}},
      {"DANE: insecure MX set never gives DANE", dane_only, "d.example",
       mx("d.example", {host("mx1.d.example", {"192.0.2.50"}, T::usable)}, S::insecure), "may", false,
       {"the MX set is insecure: no DANE answer"}},
      {"DANE: bogus MX set never gives DANE (a failure: TEMP)", dane_only, "d.example",
       mx("d.example", {host("mx1.d.example", {"192.0.2.50"}, T::usable)}, S::bogus), "", true, {}},
      {"DANE: secure without TLSA: the default", dane_only, "d.example",
       mx("d.example", {host("mx1.d.example", {"192.0.2.50"})}, S::secure), "may", false,
       {"no host publishes TLSA"}},
      {"null MX: no DANE, no rule", dane_only, "nomail.example", null_mx, "may", false, {"null MX"}},
      // Changed with issue #14: the stricter wins; before, any rule for the
      // name overrode discovery. An exception now needs override = true.
      {"DANE is stricter than a may rule for the name without override: DANE", dane_only, "exempt.test",
       mx("exempt.test", {host("mx.exempt.test", {"192.0.2.60"}, T::usable)}, S::secure), "dane-only", false,
       {"lost to it: rule \"exempt\"", "rule for the name: rule \"exempt\"",
        "the stricter wins: DANE's dane-only over rule \"exempt\" (may)"}},
      {"dane-only is stricter than an MX-aware encrypt rule", dane_only, "both.example",
       mx("both.example", {host("mx.both.example", {"207.219.44.70"}, T::usable)}, S::secure), "dane-only", false,
       {"the stricter wins: DANE's dane-only over MX-aware rule \"force-encrypt\" (encrypt)",
        "lost to it: rule \"force-encrypt\""}},
      {"opportunistic dane never replaces an enforcing MX-aware rule", dane, "both.example",
       mx("both.example", {host("mx.both.example", {"207.219.44.70"}, T::usable)}, S::secure), "encrypt", false,
       {"the stricter wins: MX-aware rule \"force-encrypt\" (encrypt) over DANE's dane"}},
      {"partial DANE coverage does not replace an MX-aware rule", dane_only, "both.example",
       mx("both.example", {host("mx.both.example", {"207.219.44.70"}, T::usable), host("mx2.both.example", {"192.0.2.9"})},
          S::secure),
       "encrypt", false, {}},
      {"DANE for a [host] literal", dane_only, "[relay.d.example]",
       [] {
         auto f = mx("[relay.d.example]", {host("relay.d.example", {"192.0.2.80"}, TlsaState::usable)}, DnsSecurity::secure);
         f.literal = true;
         return f;
       }(),
       "dane-only", false, {"the host is secure"}},
      {"no facts: the static answer", plain, "partner.example", std::nullopt, "may", false, {}},
  };
  for (auto& c : cases) {
    const DestinationFacts* f = c.facts ? &*c.facts : nullptr;
    Answer a = query(*c.snap, MapName::tls_policy, c.key, false, f);
    Answer e = query(*c.snap, MapName::tls_policy, c.key, true, f);
    std::string text = explain_text(*c.snap, MapName::tls_policy, c.key, e);
    std::string got = a.found ? a.value : "NOTFOUND";
    INFO(c.what << "\nkey " << c.key << "\ngot: " << got << (a.temp ? " (TEMP)" : "") << "\nwant: "
                << (c.temp ? "TEMP ..." : c.want) << "\nexplain:\n"
                << text);
    CHECK(a.temp == c.temp);
    // A TEMP or DANE answer carries its one-line reason for the log.
    if (a.temp || a.value.starts_with("dane")) CHECK_FALSE(a.via.empty());
    if (!c.temp) CHECK(got == c.want);
    if (c.temp) CHECK(a.found);
    // Explaining never changes the answer.
    CHECK(e.found == a.found);
    CHECK(e.temp == a.temp);
    CHECK(e.value == a.value);
    for (auto& w : c.explain) {
      INFO("explain lacks: " << w);
      CHECK(text.find(w) != std::string::npos);
    }
  }
}

TEST_CASE("Answer::via: the one line the daemon logs for an answer discovery decided") {
  auto snap = load("");
  auto f = mx("partner.example", {host("mx1.partner.example", {"207.219.44.9"})});
  Answer a = query(*snap, MapName::tls_policy, "partner.example", false, &f);
  INFO(a.via);
  CHECK(a.via.starts_with("MX mx1.partner.example [207.219.44.9] in 207.219.44.0/24 at "));
  CHECK(a.via.ends_with("force.list:1"));
  auto down = failed("partner.example", "timeout");
  Answer t = query(*snap, MapName::tls_policy, "partner.example", false, &down);
  CHECK(t.temp);
  CHECK(t.via == t.value);
  CHECK(t.via.find("(timeout)") != std::string::npos);
  auto none = mx("elsewhere.example", {host("mx.elsewhere.example", {"192.0.2.1"})});
  CHECK(query(*snap, MapName::tls_policy, "elsewhere.example", false, &none).via.empty());
}

TEST_CASE("discovery_target: which keys need DNS facts") {
  auto snap = load("");
  std::string dir;
  auto static_only = testing::load_text("outbound = ( { level = \"encrypt\"; to = [ \"192.0.2.0/24\", \"x.test\" ]; } );");
  REQUIRE(static_only.snapshot);
  struct T {
    const Snapshot* s;
    MapName map;
    std::string key;
    bool explain;
    std::string want;
  };
  const T cases[] = {
      {static_only.snapshot.get(), MapName::tls_policy, "partner.example", false, ""},
      {snap.get(), MapName::tls_policy, "partner.example", false, "partner.example"},
      {snap.get(), MapName::tls_policy, "Partner.Example.", false, "partner.example"},
      {snap.get(), MapName::tls_policy, "partner.example:2525", false, "partner.example"},
      {snap.get(), MapName::tls_policy, "[Relay.Example]:25", false, "[relay.example]"},
      {snap.get(), MapName::tls_policy, "bücher.test", false, "xn--bcher-kva.test"},
      {snap.get(), MapName::tls_policy, "bank.test", false, ""},      // a rule for the name decides
      {snap.get(), MapName::tls_policy, "sub.bank.test", false, ""},  // a parent domain's rule decides
      {snap.get(), MapName::tls_policy, "bank.test", true, "bank.test"},
      {snap.get(), MapName::tls_policy, "[192.0.2.1]", false, ""},
      {snap.get(), MapName::tls_policy, "192.0.2.1", false, ""},
      {snap.get(), MapName::tls_policy, ".parent.example", false, ""},
      {snap.get(), MapName::tls_policy, "user@partner.example", false, ""},
      {snap.get(), MapName::tls_policy, "a b", false, ""},
      {snap.get(), MapName::tls_policy, "", false, ""},
      {snap.get(), MapName::tls_policy, std::string(300, 'a'), false, ""},
      {snap.get(), MapName::transport, "user@partner.example", false, ""},
      {snap.get(), MapName::sendmail_access, "TLS_Srv:partner.example", false, ""},
  };
  for (auto& c : cases) {
    auto got = discovery_target(*c.s, c.map, c.key, c.explain);
    INFO("key " << c.key << " explain " << c.explain << " got \"" << got << "\" want \"" << c.want << "\"");
    CHECK(got == c.want);
  }
  CHECK(snap->needs_dns);
  CHECK_FALSE(static_only.snapshot->needs_dns);
}

// Known gap: one MX host matches a weaker MX-aware rule while another
// host's addresses are unknown (lookup failed) and might fall under a
// stricter one: the weaker rule decides (encrypt here, where "bank" would
// ask verify). Not plaintext, but less than a rule may require; the
// stricter answer would need TEMP until the addresses are known.
TEST_CASE("known gap: a matched weaker MX-aware rule beside a host with unknown addresses defers", "[!shouldfail]") {
  auto plain = load("");
  auto f = mx("mixed.example", {host("mx1.mixed.example", {"207.219.44.9"}), host("mx2.mixed.example", {}, TlsaState::none, 20)});
  f.mx[1].addr_failed = true;
  Answer a = query(*plain, MapName::tls_policy, "mixed.example", false, &f);
  INFO("got " << a.value << (a.temp ? " (TEMP)" : ""));
  CHECK(a.temp);
}

// Issue #14: MTA-STS beside DANE and the admin's rules, under one
// precedence. The admin's answer (the rule for the name, else the strictest
// MX-aware rule) against the discovered policy (the first of DANE, MTA-STS
// in settings order with an answer): the stricter wins, the admin on a tie,
// a weaker rule only with override = true; the default only when nothing
// else answers.
namespace {

const char* kStsRules =
    ",\n { name = \"partner\"; level = \"encrypt\"; to = \"partner.test\"; },\n"
    " { name = \"broken-partner\"; level = \"may\"; to = \"broken.test\"; override = true; },\n"
    " { name = \"pinned\"; level = \"secure\"; to = \"pinned.test\"; },\n"
    " { name = \"lax-mx\"; level = \"may\"; to = \"mx:mx.lax.test\"; override = true; }\n";

StsFacts sts(StsMode mode, std::vector<std::string> patterns = {"mail.partner.test"}) {
  StsFacts s;
  s.asked = true;
  s.in_force = mode != StsMode::none;
  s.mode = mode;
  s.id = "20260101T000000";
  s.mx = std::move(patterns);
  s.max_age = 604800;
  s.expires = 1798761600;  // 2027-01-01 00:00:00 UTC
  s.source = "fetched https://mta-sts.partner.test/.well-known/mta-sts.txt";
  if (mode == StsMode::enforce) {
    s.answer = "secure match=";
    for (size_t i = 0; i < s.mx.size(); ++i)
    {
      if (i) s.answer += ':';
      s.answer += s.mx[i].starts_with("*.") ? std::string_view(s.mx[i]).substr(1) : std::string_view(s.mx[i]);
    }
    s.answer += " servername=hostname";
  }
  if (mode == StsMode::none) s.note = "no _mta-sts TXT record";
  return s;
}

// MX facts with an MTA-STS part: secure MX set, DANE per host as given.
DestinationFacts with_sts(std::string dest, StsFacts st, TlsaState tlsa = TlsaState::none,
                          std::string mxname = "mail.partner.test", std::string ip = "192.0.2.10") {
  auto f = mx(std::move(dest), {host(std::move(mxname), {std::move(ip)}, tlsa)}, DnsSecurity::secure);
  f.sts = std::move(st);
  return f;
}

struct StsCase {
  const char* what;
  std::shared_ptr<const Snapshot> snap;
  std::string key;
  DestinationFacts facts;
  std::string want;            // the value ("NOTFOUND" when not found; ignored for TEMP)
  std::string_view source;     // Answer::source
  bool temp = false;
  bool would_enforce = false;  // Answer::sts_would_enforce
  std::vector<std::string> explain;
};

}  // namespace

TEST_CASE("MTA-STS, DANE and the admin's rules: one precedence") {
  auto sts_only = load("mta_sts = { };", kStsRules);
  auto sts_ignore = load("mta_sts = { }; on_dns_failure = \"ignore\";", kStsRules);
  auto both = load("dane = \"dane-only\"; mta_sts = { };", kStsRules);
  auto both_sts_first = load("dane = \"dane-only\"; mta_sts = { }; prefer = \"mta-sts\";", kStsRules);
  auto dane_only = load("dane = \"dane-only\";", kStsRules);
  auto dane_opp = load("dane = \"dane\";", kStsRules);
  auto sts_off = load("dane = \"dane-only\"; mta_sts = { enabled = false; };", kStsRules);
  using M = StsMode;
  using T = TlsaState;
  const std::string secure = "secure match=mail.partner.test servername=hostname";
  auto failed_sts = [](std::string dest, StsFacts st) {
    auto f = failed(std::move(dest), "SERVFAIL");
    f.sts = std::move(st);
    return f;
  };
  auto literal = with_sts("[relay.other.test]", StsFacts{}, T::none, "relay.other.test");
  literal.literal = true;

  const StsCase cases[] = {
      // Admin against MTA-STS.
      {"enforce is stricter than an encrypt rule: MTA-STS wins", sts_only, "partner.test",
       with_sts("partner.test", sts(M::enforce)), secure, "mta-sts", false, false,
       {"rule for the name: rule \"partner\"", "MTA-STS: enforce (id 20260101T000000, mx mail.partner.test; "
        "max_age 604800, expires 2027-01-01 00:00:00 UTC); fetched https://mta-sts.partner.test",
        "the stricter wins: MTA-STS's secure over rule \"partner\" (encrypt)", "lost to it: rule \"partner\"",
        "DANE: off", "default: may", "not used, another source answers", "discovered policy: MTA-STS's secure"}},
      {"an encrypt rule against a testing policy: the rule (reported as would enforce)", sts_only, "partner.test",
       with_sts("partner.test", sts(M::testing)), "encrypt", "rule", false, true,
       {"decided by rule \"partner\"", "testing: would enforce secure match=mail.partner.test servername=hostname",
        "it would decide the answer were the policy in enforce mode", "discovered policy: none"}},
      {"no rule, testing: the default, would enforce", sts_only, "other.test",
       with_sts("other.test", sts(M::testing)), "may", "default", false, true,
       {"rule for the name: none", "decided by the default", "no rule for the name or its MX hosts, and no "
        "discovered policy"}},
      {"no rule, enforce: MTA-STS (the default does not apply)", sts_only, "other.test",
       with_sts("other.test", sts(M::enforce)), secure, "mta-sts", false, false,
       {"no rule for the name or its MX hosts: MTA-STS's secure applies", "lost to it: the default"}},
      {"enforce with *.pattern: Postfix's .suffix form", sts_only, "other.test",
       with_sts("other.test", sts(M::enforce, {"mail.other.test", "*.other.test"})),
       "secure match=mail.other.test:.other.test servername=hostname", "mta-sts", false, false,
       {"mx mail.other.test, *.other.test"}},
      {"a secure rule ties with MTA-STS's secure: the admin's rule", sts_only, "pinned.test",
       with_sts("pinned.test", sts(M::enforce)), "secure", "rule", false, false,
       {"rule \"pinned\" (secure) is as strict as MTA-STS's secure: on a tie the admin's rule wins"}},
      {"a may override against enforce: the override", sts_only, "broken.test",
       with_sts("broken.test", sts(M::enforce)), "may", "rule", false, false,
       {"override = true: it wins over DANE and MTA-STS",
        "rule \"broken-partner\" (may) is an override: it wins over MTA-STS's secure"}},
      {"an override against testing: no would-enforce", sts_only, "broken.test",
       with_sts("broken.test", sts(M::testing)), "may", "rule", false, false, {"it would not change the answer"}},
      {"an MX-aware encrypt rule against enforce: MTA-STS", sts_only, "hosted.test",
       with_sts("hosted.test", sts(M::enforce), T::none, "mail.partner.test", "207.219.44.9"), secure, "mta-sts",
       false, false, {"the stricter wins: MTA-STS's secure over MX-aware rule \"force-encrypt\" (encrypt)"}},
      {"an MX-aware may override against enforce: the MX-aware rule", sts_only, "lax.test",
       with_sts("lax.test", sts(M::enforce), T::none, "mx.lax.test"), "may", "mx-rule", false, false,
       {"MX-aware rule \"lax-mx\" (may) is an override: it wins over MTA-STS's secure"}},
      {"policy none: nothing from MTA-STS", sts_only, "other.test", with_sts("other.test", sts(M::none)), "may",
       "default", false, false, {"MTA-STS: no policy in force; fetched https://mta-sts.partner.test/"
                                 ".well-known/mta-sts.txt; no _mta-sts TXT record"}},
      {"enforce without any mx pattern: nothing to enforce", sts_only, "other.test",
       with_sts("other.test", [] {
         auto s = sts(M::enforce, {});
         s.answer.clear();
         return s;
       }()),
       "may", "default", false, false, {"no mx pattern, nothing to enforce"}},
      {"a [host] next hop: MTA-STS not asked", sts_only, "[relay.other.test]", literal, "may", "default", false,
       false, {"MTA-STS: not asked"}},
      // Admin against DANE.
      {"a may rule without override against DANE: DANE", dane_only, "exempt.test",
       with_sts("exempt.test", StsFacts{}, T::usable, "mx.exempt.test"), "dane-only", "dane", false, false,
       {"the stricter wins: DANE's dane-only over rule \"exempt\" (may)", "MTA-STS: off (no mta_sts block)"}},
      {"a may rule with override against DANE: may", dane_only, "broken.test",
       with_sts("broken.test", StsFacts{}, T::usable, "mx.broken.test"), "may", "rule", false, false,
       {"rule \"broken-partner\" (may) is an override: it wins over DANE's dane-only"}},
      {"an encrypt rule against opportunistic dane: the rule (stricter)", dane_opp, "partner.test",
       with_sts("partner.test", StsFacts{}, T::usable), "encrypt", "rule", false, false,
       {"the stricter wins: rule \"partner\" (encrypt) over DANE's dane"}},
      // DANE and MTA-STS both present.
      {"both, prefer dane (the default): DANE", both, "other.test",
       with_sts("other.test", sts(M::enforce), T::usable), "dane-only", "dane", false, false,
       {"discovered policy: DANE's dane-only (asked in order: DANE, then MTA-STS)", "MTA-STS: enforce"}},
      {"both, prefer mta-sts: MTA-STS", both_sts_first, "other.test",
       with_sts("other.test", sts(M::enforce), T::usable), secure, "mta-sts", false, false,
       {"discovered policy: MTA-STS's secure (asked in order: MTA-STS, then DANE)", "DANE: the MX set is secure; 1 of 1"}},
      {"both, DANE answers first: a testing policy would not enforce", both, "other.test",
       with_sts("other.test", sts(M::testing), T::usable), "dane-only", "dane", false, false,
       {"it would not change the answer"}},
      {"prefer mta-sts, testing: DANE is next", both_sts_first, "other.test",
       with_sts("other.test", sts(M::testing), T::usable), "dane-only", "dane", false, true, {}},
      {"both on, no TLSA: MTA-STS", both, "other.test", with_sts("other.test", sts(M::enforce)), secure, "mta-sts",
       false, false, {"no host publishes TLSA"}},
      // A source switched off.
      {"DANE off: TLSA is not looked at", sts_only, "other.test", with_sts("other.test", StsFacts{}, T::usable),
       "may", "default", false, false, {"DANE: off (dane = \"off\")"}},
      {"MTA-STS off (enabled = false): an enforce policy in the facts is ignored", sts_off, "other.test",
       with_sts("other.test", sts(M::enforce)), "may", "default", false, false, {"MTA-STS: off"}},
      {"MTA-STS off (no block)", dane_only, "other.test", with_sts("other.test", sts(M::enforce)), "may", "default",
       false, false, {"MTA-STS: off"}},
      {"nothing at all: the default", both, "other.test", with_sts("other.test", sts(M::none)), "may", "default",
       false, false, {"decided by the default", "discovered policy: none"}},
      // DNS failures: TEMP as before without a rule for the name.
      {"DNS failed, an MX-aware rule defers: TEMP even with an enforce policy", sts_only, "other.test",
       failed_sts("other.test", sts(M::enforce)), "", "temp", true, false, {"on_dns_failure = \"defer\""}},
      {"DNS failed, nothing defers: MTA-STS still answers (it does not need the MX answer)", sts_ignore,
       "other.test", failed_sts("other.test", sts(M::enforce)), secure, "mta-sts", false, false,
       {"MX-aware rules: unknown (DNS failed: SERVFAIL)"}},
      {"DNS failed, a may rule for the name, DANE might be stricter: TEMP", both, "exempt.test",
       failed_sts("exempt.test", sts(M::none)), "", "temp", true, false,
       {"deferred until DANE can be checked (rule \"exempt\" answers may", "DANE: unknown (DNS failed: SERVFAIL)"}},
      {"DNS failed, an enforcing rule for the name: the rule", both, "partner.test",
       failed_sts("partner.test", sts(M::none)), "encrypt", "rule", false, false, {"the rule for the name stands"}},
      {"DNS failed, an enforcing rule for the name, MTA-STS enforce: MTA-STS", both, "partner.test",
       failed_sts("partner.test", sts(M::enforce)), secure, "mta-sts", false, false,
       {"the stricter wins: MTA-STS's secure over rule \"partner\" (encrypt)"}},
      {"DNS failed, a may override: the override", both, "broken.test", failed_sts("broken.test", sts(M::enforce)),
       "may", "rule", false, false, {"is an override"}},
      {"DNS failed, a may rule, only MTA-STS on: the rule against MTA-STS", sts_only, "exempt.test",
       failed_sts("exempt.test", sts(M::enforce)), secure, "mta-sts", false, false, {}},
  };
  for (auto& c : cases) {
    Answer a = query(*c.snap, MapName::tls_policy, c.key, false, &c.facts);
    Answer e = query(*c.snap, MapName::tls_policy, c.key, true, &c.facts);
    std::string text = explain_text(*c.snap, MapName::tls_policy, c.key, e);
    std::string got = a.found ? a.value : "NOTFOUND";
    INFO(c.what << "\nkey " << c.key << "\ngot: " << got << (a.temp ? " (TEMP)" : "") << " source " << a.source
                << " would_enforce " << a.sts_would_enforce << "\nwant: " << (c.temp ? "TEMP ..." : c.want)
                << " source " << c.source << " would_enforce " << c.would_enforce << "\nvia: " << a.via
                << "\nexplain:\n"
                << text);
    CHECK(a.temp == c.temp);
    if (!c.temp) CHECK(got == c.want);
    CHECK(a.source == c.source);
    CHECK(a.sts_would_enforce == c.would_enforce);
    // The log line names the source that decided whenever discovery decided or competed.
    if (a.source == "mta-sts") CHECK(a.via.starts_with("MTA-STS enforce (id 20260101T000000"));
    if (a.source == "dane" || a.source == "temp" || a.source == "mx-rule") CHECK_FALSE(a.via.empty());
    // ... and a testing policy that would have decided.
    CHECK((a.via.find("MTA-STS testing (id 20260101T000000, mx mail.partner.test) would enforce secure "
                      "match=mail.partner.test servername=hostname: not enforced in testing mode") !=
           std::string::npos) == c.would_enforce);
    // Explaining never changes the answer.
    CHECK(e.found == a.found);
    CHECK(e.temp == a.temp);
    CHECK(e.value == a.value);
    CHECK(e.source == a.source);
    CHECK(e.sts_would_enforce == a.sts_would_enforce);
    // Every source has its line.
    for (const char* src : {"rule for the name: ", "MX-aware rules: ", "DANE: ", "MTA-STS: ", "default: ",
                            "discovered policy: ", "why: "}) {
      INFO("explain lacks the line " << src);
      CHECK(text.find(src) != std::string::npos);
    }
    for (auto& w : c.explain) {
      INFO("explain lacks: " << w);
      CHECK(text.find(w) != std::string::npos);
    }
  }
}

TEST_CASE("Answer::via for MTA-STS and an override") {
  auto snap = load("dane = \"dane-only\"; mta_sts = { };", kStsRules);
  auto f = with_sts("exempt.test", sts(StsMode::enforce));
  Answer a = query(*snap, MapName::tls_policy, "exempt.test", false, &f);
  CHECK(a.via == "MTA-STS enforce (id 20260101T000000, mx mail.partner.test), stricter than rule \"exempt\" (may)");
  auto g = with_sts("broken.test", StsFacts{}, TlsaState::usable);
  Answer b = query(*snap, MapName::tls_policy, "broken.test", false, &g);
  INFO(b.via);
  CHECK(b.via.starts_with("rule \"broken-partner\" (may) at "));
  CHECK(b.via.ends_with("is an override: it wins over DANE's dane-only"));
}

TEST_CASE("discovery_target with MTA-STS and override; the static answer computed once") {
  auto sts_snap = load("mta_sts = { };", kStsRules);
  auto dane_snap = load("dane = \"dane\";", kStsRules);
  auto plain = load("", kStsRules);  // MX-aware rules only
  struct T {
    const Snapshot* s;
    std::string key;
    std::string want;
  };
  const T cases[] = {
      {sts_snap.get(), "other.test", "other.test"},     // no rule: MTA-STS could answer
      {sts_snap.get(), "partner.test", "partner.test"}, // encrypt: MTA-STS's secure could be stricter
      {sts_snap.get(), "exempt.test", "exempt.test"},
      {sts_snap.get(), "pinned.test", ""},              // secure: nothing discovered beats it (tie: the rule)
      {sts_snap.get(), "broken.test", ""},              // override: fast path, no DNS
      {sts_snap.get(), "sub.broken.test", ""},          // its parent's override
      {dane_snap.get(), "partner.test", ""},            // encrypt is stricter than opportunistic dane
      {dane_snap.get(), "exempt.test", "exempt.test"},  // may: dane could be stricter
      {plain.get(), "exempt.test", ""},                 // no DANE, no MTA-STS: the name rule decides, as before
      {plain.get(), "other.test", "other.test"},
  };
  for (auto& c : cases) {
    Answer st;
    auto got = discovery_target(*c.s, MapName::tls_policy, c.key, false);
    auto got2 = discovery_target(*c.s, MapName::tls_policy, c.key, false, &st);
    INFO("key " << c.key << " got \"" << got << "\" want \"" << c.want << "\"");
    CHECK(got == c.want);
    CHECK(got2 == c.want);
    // static_out is the static answer.
    Answer q = query(*c.s, MapName::tls_policy, c.key);
    CHECK(st.found == q.found);
    CHECK(st.value == q.value);
    CHECK(st.rule == q.rule);
    CHECK(st.source == q.source);
    // ... and query() with it answers as query() without it.
    auto f = with_sts(c.key, sts(StsMode::enforce), TlsaState::usable);
    Answer with = query(*c.s, MapName::tls_policy, c.key, false, &f, &st);
    Answer without = query(*c.s, MapName::tls_policy, c.key, false, &f);
    CHECK(with.value == without.value);
    CHECK(with.source == without.source);
    CHECK(with.via == without.via);
  }
  CHECK(sts_snap->needs_dns);
  // Other maps: static_out is their answer, and no target.
  Answer st;
  CHECK(discovery_target(*sts_snap, MapName::transport, "u@partner.test", false, &st).empty());
  CHECK(st.found == query(*sts_snap, MapName::transport, "u@partner.test").found);
}

// Partial DANE (an MX host without TLSA: Postfix's dane level sends to it
// opportunistically) never weakens what another source or the default
// requires: MTA-STS enforce after it still applies, and a default that
// enforces TLS stays the floor. Full DANE coverage is unaffected.
TEST_CASE("partial DANE does not weaken MTA-STS or an enforcing default") {
  auto both = load("dane = \"dane\"; mta_sts = { };");
  auto dane_enc_default = load("dane = \"dane\";", "", "encrypt");
  auto dane_only_enc_default = load("dane = \"dane-only\";", "", "encrypt");
  auto partial = [](StsFacts st) {
    auto f = mx("other.test",
                {host("mx1.other.test", {"192.0.2.11"}, TlsaState::usable),
                 host("mx2.other.test", {"192.0.2.12"}, TlsaState::none, 20)},
                DnsSecurity::secure);
    f.sts = std::move(st);
    return f;
  };
  auto full = [](StsFacts st) {
    auto f = mx("other.test",
                {host("mx1.other.test", {"192.0.2.11"}, TlsaState::usable),
                 host("mx2.other.test", {"192.0.2.12"}, TlsaState::unusable, 20)},
                DnsSecurity::secure);
    f.sts = std::move(st);
    return f;
  };
  auto ask = [](const Snapshot& s, const DestinationFacts& f) {
    Answer a = query(s, MapName::tls_policy, "other.test", false, &f);
    Answer e = query(s, MapName::tls_policy, "other.test", true, &f);
    std::string text = explain_text(s, MapName::tls_policy, "other.test", e);
    INFO(text);
    CHECK(e.value == a.value);
    return std::pair{a, text};
  };
  const std::string secure = "secure match=mail.partner.test servername=hostname";
  {
    auto [a, text] = ask(*both, partial(sts(StsMode::enforce)));
    INFO(text);
    CHECK(a.value == secure);
    CHECK(a.source == "mta-sts");
    CHECK(text.find("leaves an MX host without TLSA opportunistic") != std::string::npos);
  }
  {
    // Every host has TLSA (usable or unusable: none is opportunistic): DANE first, as before.
    auto [a, text] = ask(*both, full(sts(StsMode::enforce)));
    INFO(text);
    CHECK(a.value == "dane");
    CHECK(a.source == "dane");
  }
  {
    // Partial DANE, no MTA-STS policy: DANE's dane is still better than nothing.
    auto [a, text] = ask(*both, partial(sts(StsMode::none)));
    INFO(text);
    CHECK(a.value == "dane");
    CHECK(a.source == "dane");
  }
  {
    auto [a, text] = ask(*dane_enc_default, partial(StsFacts{}));
    INFO(text);
    CHECK(a.value == "encrypt");
    CHECK(a.source == "default");
    CHECK(text.find("discovery never makes a destination weaker than the default") != std::string::npos);
    CHECK(a.via.find("the default (encrypt) over DANE's dane") != std::string::npos);
  }
  {
    auto [a, text] = ask(*dane_only_enc_default, partial(StsFacts{}));  // dane-only mode, partial: "dane"
    INFO(text);
    CHECK(a.value == "encrypt");
  }
  {
    auto [a, text] = ask(*dane_only_enc_default, full(StsFacts{}));  // no host opportunistic: DANE
    INFO(text);
    CHECK(a.value == "dane");
    CHECK(a.source == "dane");
  }
}

// Found by review: DANE before MTA-STS hid an MTA-STS enforce policy
// even when DANE covers only some MX hosts. The answer is then Postfix's
// opportunistic "dane", under which a host without TLSA gets "may": mail to
// it can leave in plaintext (STARTTLS stripped on the path), where the
// domain's MTA-STS enforce policy asked for authenticated TLS to every MX
// host. RFC 8461 section 2 wants DANE per host and MTA-STS for the others;
// one Postfix policy per next hop cannot say both, so the stricter
// (MTA-STS's secure, which the domain itself says its MX hosts support)
// should win when DANE is partial. Left as a precedence decision for the
// maintainers. (Fixed since: partial DANE lets MTA-STS enforce decide.)
TEST_CASE("review: partial DANE beside MTA-STS enforce gives MTA-STS's secure, not opportunistic dane") {
  auto both = load("dane = \"dane-only\"; mta_sts = { };", kStsRules);
  auto f = mx("other.test",
              {host("mail.partner.test", {"192.0.2.10"}, TlsaState::usable),
               host("mx2.partner.test", {"192.0.2.11"}, TlsaState::none, 20)},
              DnsSecurity::secure);
  f.sts = sts(StsMode::enforce, {"mail.partner.test", "mx2.partner.test"});
  Answer a = query(*both, MapName::tls_policy, "other.test", false, &f);
  INFO("got " << a.value << " source " << a.source);
  CHECK(a.value != "dane");
  CHECK(a.value.starts_with("secure match="));
}

// Review: an MX-aware override decided by an MX answer that DNSSEC does
// not protect. MTA-STS exists for the attacker who forges the MX answer
// (RFC 8461 sections 1 and 10); that attacker names the admin's lax MX host
// (mx.lax.test, "may", override = true) as victim.test's MX, and the
// override answered "may" over victim.test's enforce policy: plaintext to
// the attacker. Only a DNSSEC-secure MX set may pick an MX-aware override
// over a discovered policy; an insecure one competes as an ordinary rule
// (the stricter wins). A rule for the name is not chosen by DNS and keeps
// its override.
TEST_CASE("an MX-aware override chosen by an insecure MX answer does not beat MTA-STS enforce") {
  auto sts_only = load("mta_sts = { };", kStsRules);
  const std::string want = "secure match=mail.victim.test servername=hostname";
  auto forged = mx("victim.test", {host("mx.lax.test", {"192.0.2.20"})}, DnsSecurity::insecure);
  forged.sts = sts(StsMode::enforce, {"mail.victim.test"});
  Answer a = query(*sts_only, MapName::tls_policy, "victim.test", false, &forged);
  INFO("insecure MX: got " << a.value << " source " << a.source << " via " << a.via);
  CHECK(a.value == want);
  CHECK(a.source == "mta-sts");
  // The same MX answer, DNSSEC-secure: the override stands (as documented).
  auto signed_mx = forged;
  signed_mx.mx_security = DnsSecurity::secure;
  Answer b = query(*sts_only, MapName::tls_policy, "victim.test", false, &signed_mx);
  INFO("secure MX: got " << b.value << " source " << b.source);
  CHECK(b.value == "may");
  CHECK(b.source == "mx-rule");
  // Without MTA-STS the MX-aware rule answers as before, secure or not.
  auto plain = forged;
  plain.sts = StsFacts{};
  Answer c = query(*sts_only, MapName::tls_policy, "victim.test", false, &plain);
  CHECK(c.value == "may");
}

// Found by review: the default never competed with a discovered policy,
// even when that policy is weaker than the default. With default "encrypt"
// (the admin wants TLS everywhere) and DANE on, a domain whose DNSSEC-signed
// MX set has TLSA on one host only gets Postfix's opportunistic "dane": its
// host without TLSA is then "may", so mail to it can leave in plaintext
// where the default alone would have deferred it. (Fixed since: an
// enforcing default is the floor under partial DANE.)
TEST_CASE("review: opportunistic dane for a partly-TLSA MX set does not beat an encrypt default") {
  std::string conf = "discovery = { trust_anchor_file = \"" + anchor() + "\"; dane = \"dane\"; };\n"
                     "default = \"encrypt\";\n"
                     "outbound = ( { name = \"exempt\"; level = \"may\"; to = \"exempt.test\"; } );\n";
  auto r = testing::load_text(conf, {}, nullptr);
  REQUIRE(r.snapshot);
  auto f = mx("partial.test",
              {host("mx1.partial.test", {"192.0.2.30"}, TlsaState::usable),
               host("mx2.partial.test", {"192.0.2.31"}, TlsaState::none, 20)},
              DnsSecurity::secure);
  Answer a = query(*r.snapshot, MapName::tls_policy, "partial.test", false, &f);
  INFO("got " << a.value << " source " << a.source);
  CHECK(a.value != "dane");
}
