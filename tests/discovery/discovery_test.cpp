// discovery/ against the real DNS fixture (tests/dns/fixture.py: unbound on
// loopback serving signed, unsigned, bogus, SERVFAIL and slow zones). Run by
// t_discovery.py, which starts the fixture and passes its fixture.env
// variables (DNS_FORWARDER, DNS_ANCHOR, ...) in the environment.
#include "catch.hpp"

#include <poll.h>

#include <chrono>
#include <cstdlib>
#include <string>

#include "discovery/destination.hpp"
#include "discovery/resolver.hpp"

using namespace tlspolicy;
using Clock = std::chrono::steady_clock;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) FAIL(std::string(name) + " is not set: run this through t_discovery.py (it starts the fixture)");
  return v;
}

DiscoverySettings fixture_settings() {
  DiscoverySettings s;
  s.forwarders = {env("DNS_FORWARDER")};
  s.trust_anchor_file = env("DNS_ANCHOR");
  s.dane = DaneMode::dane;
  s.deadline_ms = 3000;
  s.query_timeout_ms = 2500;
  return s;
}

std::unique_ptr<Discoverer> make(const DiscoverySettings& s) {
  std::string err;
  auto d = Discoverer::create(s, &err);
  INFO(err);
  REQUIRE(d);
  return d;
}

// Runs the discoverer's loop until pred() or `ms` pass.
template <class Pred>
void run_until(Discoverer& d, Pred pred, int ms = 5000) {
  auto end = Clock::now() + std::chrono::milliseconds(ms);
  while (!pred() && Clock::now() < end) {
    pollfd p{d.fd(), POLLIN, 0};
    poll(&p, 1, 50);
    d.process();
  }
}

std::string sec(DnsSecurity s) { return s == DnsSecurity::secure ? "secure" : s == DnsSecurity::bogus ? "bogus" : "insecure"; }
std::string tlsa(TlsaState t) {
  switch (t) {
    case TlsaState::none: return "none";
    case TlsaState::usable: return "usable";
    case TlsaState::unusable: return "unusable";
    case TlsaState::failed: return "failed";
  }
  return "?";
}

// One line per fact that the cases compare: easy to read on failure.
std::string summary(const DestinationFacts& f) {
  std::string out = f.failed ? "failed" : "ok";
  if (f.implicit_mx) out += " implicit";
  if (f.null_mx) out += " nullmx";
  // Appended piece by piece: GCC 12 -O3 reports a false -Wrestrict on " x" + string.
  out += " mx:";
  out += sec(f.mx_security);
  for (auto& h : f.mx) {
    out += " [";
    out += std::to_string(h.preference);
    out += ' ';
    out += h.name;
    for (auto& a : h.addrs) {
      out += ' ';
      out += format_ip(a);
    }
    out += " addr:";
    out += sec(h.addr_security);
    if (h.addr_failed) out += " addrfailed";
    out += " tlsa:";
    out += tlsa(h.tlsa);
    out += ']';
  }
  return out;
}

}  // namespace

TEST_CASE("destinations in the fixture's zones") {
  auto s = fixture_settings();
  auto d = make(s);
  std::string tls = env("DNS_ADDR_TLS"), enc = env("DNS_ADDR_ENC"), open = env("DNS_ADDR_OPEN");
  struct Case {
    std::string dest, want;
  };
  Case cases[] = {
      {"dane.dnssec.test",
       "ok mx:secure [10 mx.dane.dnssec.test " + tls + " 2001:db8::2 addr:secure tlsa:usable]"},
      {"badtlsa.dnssec.test", "ok mx:secure [10 mx.badtlsa.dnssec.test " + tls + " addr:secure tlsa:usable]"},
      {"partial.dnssec.test", "ok mx:secure [10 mx1.partial.dnssec.test " + tls +
                                  " addr:secure tlsa:usable] [20 mx2.partial.dnssec.test " + tls +
                                  " addr:secure tlsa:none]"},
      {"notlsa.dnssec.test", "ok mx:secure [10 mx.notlsa.dnssec.test " + tls + " addr:secure tlsa:none]"},
      {"nomx.dnssec.test", "ok implicit mx:secure [0 nomx.dnssec.test " + tls + " addr:secure tlsa:usable]"},
      {"nullmx.dnssec.test", "ok nullmx mx:secure"},
      {"insecuremx.dnssec.test", "ok mx:secure [10 mx.open.plain.test " + open + " addr:insecure tlsa:none]"},
      {"dangling.dnssec.test", "ok mx:secure [10 missing.dnssec.test addr:secure tlsa:none]"},
      {"enc.plain.test", "ok mx:insecure [10 mx.enc.plain.test " + enc + " addr:insecure tlsa:none]"},
      {"multi.plain.test", "ok mx:insecure [10 mx.open.plain.test " + open +
                               " addr:insecure tlsa:none] [20 mx.enc.plain.test " + enc +
                               " addr:insecure tlsa:none]"},
      {"encnomx.plain.test", "ok implicit mx:insecure [0 encnomx.plain.test " + enc + " addr:insecure tlsa:none]"},
      {"v6.plain.test", "ok mx:insecure [10 mx.v6.plain.test 2001:db8:25::1 addr:insecure tlsa:none]"},
      {"nullmx.plain.test", "ok nullmx mx:insecure"},
      // Bogus: never secure, failed (nothing is known that could be trusted).
      {"bogus.test", "failed mx:bogus"},
      {"x.servfail.test", "failed mx:insecure"},
      {"[mx.dane.dnssec.test]", "ok mx:insecure [0 mx.dane.dnssec.test " + tls + " 2001:db8::2 addr:secure tlsa:usable]"},
      {"[192.0.2.7]", "ok mx:insecure [0 192.0.2.7 192.0.2.7 addr:insecure tlsa:none]"},
      {"[mx.x.servfail.test]", "failed mx:insecure [0 mx.x.servfail.test addr:insecure addrfailed tlsa:none]"},
  };
  for (auto& c : cases) {
    auto f = discover_wait(*d, c.dest);
    REQUIRE(f);
    INFO(c.dest << ": " << f->error);
    CHECK(summary(*f) == c.want);
  }
  SECTION("explain data: every answer with its status and TTL") {
    auto f = discover_wait(*d, "dane.dnssec.test");
    REQUIRE(f->answers.size() == 4);  // MX, A, AAAA, TLSA
    CHECK(f->answers[0].type == "MX");
    CHECK(f->answers[0].data == std::vector<std::string>{"10 mx.dane.dnssec.test"});
    CHECK(f->answers[0].security == DnsSecurity::secure);
    CHECK(f->answers[0].ttl > 0);
    CHECK(f->answers[3].type == "TLSA");
    CHECK(f->answers[3].name == "_25._tcp.mx.dane.dnssec.test");
    CHECK(f->answers[3].data == std::vector<std::string>{"3 1 1 " + env("DNS_TLSA_GOOD")});
  }
  SECTION("bogus answers say why") {
    auto f = discover_wait(*d, "bogus.test");
    CHECK(f->error.find("bogus") != std::string::npos);
  }
}

TEST_CASE("DANE off: no TLSA question") {
  auto s = fixture_settings();
  s.dane = DaneMode::off;
  auto d = make(s);
  auto f = discover_wait(*d, "dane.dnssec.test");
  CHECK(f->answers.size() == 3);
  CHECK(summary(*f) == "ok mx:secure [10 mx.dane.dnssec.test " + env("DNS_ADDR_TLS") +
                           " 2001:db8::2 addr:secure tlsa:none]");
}

TEST_CASE("without a trust anchor nothing is secure, and bogus data is just data") {
  auto s = fixture_settings();
  s.trust_anchor_file = "";
  auto d = make(s);
  auto f = discover_wait(*d, "dane.dnssec.test");
  CHECK(f->mx_security == DnsSecurity::insecure);
  CHECK(f->mx.at(0).tlsa == TlsaState::none);
}

TEST_CASE("an unreadable trust anchor is an error at creation") {
  auto s = fixture_settings();
  s.trust_anchor_file = "/nonexistent/anchor.ds";
  std::string err;
  CHECK(!Discoverer::create(s, &err));
  CHECK(err.find("/nonexistent/anchor.ds") != std::string::npos);
}

TEST_CASE("cache: a second discovery is answered at once with no DNS query") {
  auto d = make(fixture_settings());
  auto first = discover_wait(*d, "multi.plain.test");
  auto q = d->resolver().counts().queries;
  CHECK(q == 5);  // MX, 2 x (A, AAAA); insecure MX: no TLSA
  bool called = false;
  auto again = d->discover("multi.plain.test", [&](auto&) { called = true; });
  REQUIRE(again);  // synchronous: no loop round trip
  CHECK(!called);
  CHECK(summary(*again) == summary(*first));
  CHECK(d->resolver().counts().queries == q);
  CHECK(d->counts().facts_hits == 1);  // the whole destination, one lookup
  CHECK(again == d->discover("multi.plain.test", [&](auto&) { called = true; }));
}

TEST_CASE("negative answers are cached (NXDOMAIN, NODATA)") {
  auto d = make(fixture_settings());
  auto f = discover_wait(*d, "nosuch.plain.test");
  CHECK(!f->failed);
  CHECK(f->answers.at(0).status == DnsStatus::nxdomain);
  CHECK(f->answers.at(0).ttl > 0);
  auto q = d->resolver().counts().queries;
  REQUIRE(d->discover("nosuch.plain.test", [](auto&) {}));
  CHECK(d->resolver().counts().queries == q);
  // NODATA: encnomx has no MX.
  discover_wait(*d, "encnomx.plain.test");
  q = d->resolver().counts().queries;
  auto f2 = d->discover("encnomx.plain.test", [](auto&) {});
  REQUIRE(f2);
  CHECK(f2->answers.at(0).status == DnsStatus::nodata);
  CHECK(d->resolver().counts().queries == q);
}

TEST_CASE("a negative TTL is capped by negative_ttl_max; expired answers are asked again") {
  auto s = fixture_settings();
  s.negative_ttl_max = 1;
  auto d = make(s);
  auto f = discover_wait(*d, "nosuch2.plain.test");
  CHECK(f->answers.at(0).ttl == 1);
  auto q = d->resolver().counts().queries;
  REQUIRE(d->discover("nosuch2.plain.test", [](auto&) {}));
  CHECK(d->resolver().counts().queries == q);
  usleep(1100 * 1000);
  CHECK(!d->resolver().cached("nosuch2.plain.test", RrType::MX));
  discover_wait(*d, "nosuch2.plain.test");
  CHECK(d->resolver().counts().queries == q + 1);
}

TEST_CASE("TTL 0 answers (slow.test) are not cached") {
  auto d = make(fixture_settings());
  discover_wait(*d, "a.slow.test");
  auto q = d->resolver().counts().queries;
  CHECK(!d->resolver().cached("a.slow.test", RrType::MX));
  discover_wait(*d, "a.slow.test");
  CHECK(d->resolver().counts().queries > q);
}

TEST_CASE("SERVFAIL fails fast, and the failure is cached for failure_ttl") {
  auto d = make(fixture_settings());
  auto t0 = Clock::now();
  auto f = discover_wait(*d, "y.servfail.test");
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  CHECK(f->failed);
  CHECK(f->error.find("SERVFAIL") != std::string::npos);
  CHECK(ms < 1500);
  auto q = d->resolver().counts().queries;
  REQUIRE(d->discover("y.servfail.test", [](auto&) {}));
  CHECK(d->resolver().counts().queries == q);
}

TEST_CASE("the deadline: a slow zone beyond it fails (timeout), within it answers") {
  auto s = fixture_settings();
  s.deadline_ms = 300;
  auto d = make(s);
  auto t0 = Clock::now();
  auto f = discover_wait(*d, "1200ms.slow.test");
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  CHECK(f->failed);
  CHECK(f->error.find("timeout after 300 ms") != std::string::npos);
  CHECK(ms >= 290);
  CHECK(ms < 900);
  CHECK(d->counts().timeouts == 1);
  s.deadline_ms = 3000;
  auto d2 = make(s);
  auto f2 = discover_wait(*d2, "200ms.slow.test");
  INFO(f2->error);
  CHECK(!f2->failed);
  CHECK(f2->mx.size() == 1);
}

TEST_CASE("coalescing: identical concurrent discoveries share one set of queries") {
  auto d = make(fixture_settings());
  int done = 0;
  for (int i = 0; i < 50; ++i)
    CHECK(!d->discover("b.slow.test", [&](const Discoverer::Facts& f) { done += !f->failed; }));
  CHECK(d->outstanding() == 1);
  CHECK(d->counts().coalesced == 49);
  run_until(*d, [&] { return done == 50; });
  CHECK(done == 50);
  CHECK(d->resolver().counts().queries == 3);  // MX, A, AAAA of mx.slow.test
  // Different destinations with a common MX host: one A question.
  int done2 = 0;
  d->discover("c.slow.test", [&](auto&) { ++done2; });
  d->discover("d.slow.test", [&](auto&) { ++done2; });
  run_until(*d, [&] { return done2 == 2; });
  CHECK(d->resolver().counts().coalesced >= 2);
}

TEST_CASE("max_outstanding: beyond it, fail at once") {
  auto s = fixture_settings();
  s.max_outstanding = 3;
  auto d = make(s);
  int done = 0;
  for (int i = 0; i < 3; ++i) {
    std::string name = std::to_string(i);  // appended: GCC 12 -O3's false -Wrestrict on "m" + string
    name += ".slow.test";
    name.insert(name.begin(), 'm');
    CHECK(!d->discover(name, [&](auto&) { ++done; }));
  }
  auto f = d->discover("m9.slow.test", [&](auto&) { FAIL("called"); });
  REQUIRE(f);
  CHECK(f->failed);
  CHECK(f->error.find("too many outstanding") != std::string::npos);
  run_until(*d, [&] { return done == 3; });
  CHECK(done == 3);
  CHECK(d->outstanding() == 0);
}

TEST_CASE("LRU bound on the cache") {
  auto s = fixture_settings();
  s.cache_entries = 4;
  auto d = make(s);
  for (auto n : {"enc.plain.test", "open.plain.test", "v6.plain.test"}) discover_wait(*d, n);
  CHECK(d->resolver().cache_size() == 4);
  CHECK(!d->resolver().cached("enc.plain.test", RrType::MX));  // the oldest went first
  CHECK(d->resolver().cached("mx.v6.plain.test", RrType::AAAA));
}

TEST_CASE("destroying the discoverer fails what is in flight, once") {
  auto d = make(fixture_settings());
  int calls = 0;
  std::string why;
  d->discover("e.slow.test", [&](const Discoverer::Facts& f) {
    ++calls;
    why = f->error;
  });
  d.reset();
  CHECK(calls == 1);
  CHECK(why.find("discovery stopped") != std::string::npos);
}

TEST_CASE("trust_forwarder_ad is refused with the reason (libunbound drops the forwarder's AD bit)") {
  // What was tried: no anchor, the fixture's validating unbound as forwarder
  // (it sets AD for dnssec.test): libunbound's answer packet had AD clear,
  // with and without its validator module. So the setting cannot work.
  auto s = fixture_settings();
  s.trust_anchor_file = "";
  s.trust_forwarder_ad = true;
  std::string err;
  CHECK(!Discoverer::create(s, &err));
  CHECK(err.find("trust_forwarder_ad is not supported") != std::string::npos);
}

namespace {
// The answer for (name, type) through the Resolver's loop.
Resolver::Answer resolve_wait(Discoverer& d, const std::string& name, RrType type) {
  Resolver::Answer got;
  d.resolver().resolve(name, type, [&](const Resolver::Answer& a) { got = a; });
  run_until(d, [&] { return bool(got); });
  return got;
}
}  // namespace

TEST_CASE("TXT: each record is its character-strings concatenated (RFC 8461 3.1)") {
  auto d = make(fixture_settings());
  auto one = resolve_wait(*d, "_mta-sts.enforce.sts.test", RrType::TXT);
  REQUIRE(one);
  CHECK(one->type == "TXT");
  CHECK(one->status == DnsStatus::ok);
  CHECK(one->data == std::vector<std::string>{"v=STSv1; id=enforce1"});
  auto split = resolve_wait(*d, "_mta-sts.split.sts.test", RrType::TXT);
  REQUIRE(split);
  CHECK(split->data == std::vector<std::string>{"v=STSv1; id=split1"});
  auto two = resolve_wait(*d, "_mta-sts.twotxt.sts.test", RrType::TXT);
  REQUIRE(two);
  CHECK(two->data.size() == 2);
  auto none = resolve_wait(*d, "_mta-sts.notxt.sts.test", RrType::TXT);
  REQUIRE(none);
  CHECK(none->status == DnsStatus::nxdomain);
}

TEST_CASE("MTA-STS on: the TXT record is asked beside the MX; without a policy server nothing is in force") {
  auto s = fixture_settings();
  s.mta_sts.enabled = true;
  s.mta_sts.cache_file = ":memory:";  // SQLite's in-memory database: nothing on disk
  s.mta_sts.connect_to = {"mta-sts.enforce.sts.test:443:127.0.0.1:9"};  // nothing listens: refused at once
  s.mta_sts.connect_timeout_ms = 1000;
  s.deadline_ms = 3000;
  auto d = make(s);
  Discoverer::Facts got;
  got = d->discover("enforce.sts.test", [&](const Discoverer::Facts& f) { got = f; });
  run_until(*d, [&] { return bool(got); });
  REQUIRE(got);
  CHECK_FALSE(got->failed);
  CHECK(got->sts.asked);
  CHECK_FALSE(got->sts.in_force);  // the fetch failed, nothing cached: as if no MTA-STS (RFC 8461 5)
  INFO(got->sts.note);
  CHECK(got->sts.note.find("policy fetch failed") != std::string::npos);
  bool txt_asked = false;
  for (auto& a : got->answers) txt_asked |= a.type == "TXT" && a.name == "_mta-sts.enforce.sts.test";
  CHECK(txt_asked);
  // A literal next hop is no policy domain: no TXT question.
  Discoverer::Facts lit;
  lit = d->discover("[mx.enforce.sts.test]", [&](const Discoverer::Facts& f) { lit = f; });
  run_until(*d, [&] { return bool(lit); });
  REQUIRE(lit);
  CHECK_FALSE(lit->sts.asked);
  for (auto& a : lit->answers) CHECK(a.type != "TXT");
}
