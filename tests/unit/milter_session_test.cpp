// The milter's decisions without libmilter: Session driven through a fake
// Mta that records replies, header edits and log lines.
#include "catch.hpp"

#include <fmt/format.h>

#include <map>

#include "milter/session.hpp"
#include "testing.hpp"

using namespace tlspolicy;

namespace {

struct FakeMta : Mta {
  std::map<std::string, std::string> macros;
  std::vector<std::string> replies, edits, logs;
  std::optional<std::string> macro(const char* name) override {
    auto it = macros.find(name);
    if (it == macros.end()) return std::nullopt;
    return it->second;
  }
  void set_reply(const std::string& r) override { replies.push_back(r); }
  void insert_header(int i, const std::string& n, const std::string& v) override {
    edits.push_back("insert " + std::to_string(i) + " " + n + ": " + v);
  }
  void delete_header(const std::string& n, int i) override { edits.push_back("delete " + n + " " + std::to_string(i)); }
  void log(int, const std::string& t) override { logs.push_back(t); }
};

const char* kConf = R"(
default = "may";
outbound = (
  { level = "encrypt"; to = [ "partner.test", "auditor@bank.test" ]; },
  { level = "encrypt"; from = [ "finance@ours.test" ]; }
);
inbound = (
  { from = [ "*@partner.test" ]; min_cipher_bits = 112; },
  { to = [ "legal" ]; },
  { to = [ "watch" ]; action = "monitor"; }
);
milter = { outbound_clients = [ "10.0.0.0/8" ]; };
)";

struct Fixture {
  PolicyHolder holder;
  Fixture() {
    auto r = testing::load_text(kConf);
    for (auto& e : r.errors) FAIL(e.text());
    holder.store(r.snapshot);
  }
};

IpAddr ip(const char* s) { return *parse_ip(s); }

}  // namespace

TEST_CASE("outbound: strictest level wins, forged headers removed, one header on top") {
  Fixture f;
  struct Case {
    std::string sender;
    std::vector<std::string> rcpts;
    int forged;
    std::vector<std::string> want;
  };
  const Case cases[] = {
      {"<a@ours.test>", {"<x@other.test>"}, 0, {"insert 0 X-TLSLevel: Try"}},
      {"<a@ours.test>", {"<x@other.test>", "<y@mx.partner.test>"}, 0, {"insert 0 X-TLSLevel: Require"}},
      {"<a@ours.test>", {"<auditor@bank.test>"}, 2,
       {"delete X-TLSLevel 2", "delete X-TLSLevel 1", "insert 0 X-TLSLevel: Require"}},
      {"<a@ours.test>", {"<clerk@bank.test>"}, 1, {"delete X-TLSLevel 1", "insert 0 X-TLSLevel: Try"}},
      {"<finance@ours.test>", {"<x@other.test>"}, 0, {"insert 0 X-TLSLevel: Require"}},
  };
  for (auto& c : cases) {
    FakeMta mta;
    Session s(f.holder);
    s.connect(ip("10.1.2.3"), mta);
    REQUIRE(s.mail(c.sender, mta) == Verdict2::go_on);
    CHECK(s.outbound());
    for (auto& r : c.rcpts) REQUIRE(s.rcpt(r, mta) == Verdict2::go_on);
    for (int i = 0; i < c.forged; ++i) s.header(i % 2 ? "x-tlslevel" : "X-TLSLevel");
    s.header("Subject");
    s.end_of_message(mta);
    std::string got;
    for (auto& e : mta.edits) got += e + "; ";
    std::string want;
    for (auto& e : c.want) want += e + "; ";
    INFO("from " << c.sender << "\n  got  " << got << "\n  want " << want);
    CHECK(got == want);
  }
}

TEST_CASE("direction: authenticated or listed clients are outbound, others inbound") {
  Fixture f;
  FakeMta mta;
  Session in(f.holder);
  in.connect(ip("198.51.100.1"), mta);
  in.mail("<x@else.test>", mta);
  CHECK_FALSE(in.outbound());
  FakeMta auth;
  auth.macros["{auth_authen}"] = "alice";
  Session out(f.holder);
  out.connect(ip("198.51.100.1"), auth);
  out.mail("<alice@ours.test>", auth);
  CHECK(out.outbound());
}

TEST_CASE("inbound: sender at MAIL, recipients at RCPT one by one, STARTTLS facts") {
  Fixture f;
  FakeMta mta;
  Session s(f.holder);
  s.connect(ip("198.51.100.1"), mta);
  s.helo(mta);
  CHECK(s.mail("<p@partner.test>", mta) == Verdict2::reject);
  CHECK(mta.replies.back() == "554 5.7.0 encryption too weak 0 less than 112");
  // STARTTLS: abort, then a HELO with the TLS macros.
  s.abort();
  mta.macros["{tls_version}"] = "TLSv1.3";
  mta.macros["{cipher_bits}"] = "256";
  s.helo(mta);
  CHECK(s.mail("<p@partner.test>", mta) == Verdict2::go_on);
  // Without TLS: one protected recipient rejected, the other goes on.
  FakeMta plain;
  Session t(f.holder);
  t.connect(ip("198.51.100.1"), plain);
  t.helo(plain);
  REQUIRE(t.mail("<x@else.test>", plain) == Verdict2::go_on);
  CHECK(t.rcpt("<legal@ours.test>", plain) == Verdict2::reject);
  CHECK(plain.replies.back() == "550 5.7.1 <legal@ours.test>: TLS required for mail to this recipient");
  CHECK(t.rcpt("<bob@ours.test>", plain) == Verdict2::go_on);
  CHECK(t.rcpt("<watch@ours.test>", plain) == Verdict2::go_on);  // monitor
  bool logged = false;
  for (auto& l : plain.logs) logged |= l.find("would reject") != std::string::npos;
  CHECK(logged);
}

TEST_CASE("inbound: {cipher_bits} that is not a plain number in range counts as 0 bits") {
  Fixture f;
  struct Case {
    std::string bits;
    Verdict2 want;
    std::string reply;  // empty: accepted
  };
  const Case cases[] = {
      {"256", Verdict2::go_on, ""},
      {"112", Verdict2::go_on, ""},
      {"4294967552", Verdict2::reject, "554 5.7.0 encryption too weak 0 less than 112"},  // 2^32 + 256
      {"99999999999999999999", Verdict2::reject, "554 5.7.0 encryption too weak 0 less than 112"},
      {"-200", Verdict2::reject, "554 5.7.0 encryption too weak 0 less than 112"},
      {"128abc", Verdict2::reject, "554 5.7.0 encryption too weak 0 less than 112"},
      {" 128", Verdict2::reject, "554 5.7.0 encryption too weak 0 less than 112"},
      {"", Verdict2::reject, "554 5.7.0 encryption too weak 0 less than 112"},
  };
  for (auto& c : cases) {
    FakeMta mta;
    mta.macros["{tls_version}"] = "TLSv1.3";
    mta.macros["{cipher_bits}"] = c.bits;
    Session s(f.holder);
    s.connect(ip("198.51.100.1"), mta);
    s.helo(mta);
    Verdict2 got = s.mail("<p@partner.test>", mta);
    std::string reply = mta.replies.empty() ? "" : mta.replies.back();
    INFO("{cipher_bits} \"" << c.bits << "\": got reply \"" << reply << "\", want \"" << c.reply << "\"");
    CHECK(got == c.want);
    CHECK(reply == c.reply);
  }
}

TEST_CASE("client address: IPv4-mapped IPv6 is the IPv4 client for rules and logs") {
  Fixture f;
  struct Case {
    const char* addr;
    bool outbound;  // milter.outbound_clients = 10.0.0.0/8
  };
  const Case cases[] = {
      {"10.1.2.3", true},
      {"::ffff:10.1.2.3", true},
      {"::ffff:11.1.2.3", false},
      {"::10.1.2.3", false},       // IPv4-compatible, not mapped: stays IPv6
      {"::fffe:10.1.2.3", false},  // one bit off the mapped prefix
  };
  for (auto& c : cases) {
    FakeMta mta;
    Session s(f.holder);
    s.connect(ip(c.addr), mta);
    s.mail("<x@else.test>", mta);
    INFO(c.addr);
    CHECK(s.outbound() == c.outbound);
  }
  // The log names the IPv4 address.
  FakeMta mta;
  Session s(f.holder);
  s.connect(ip("::ffff:198.51.100.9"), mta);
  s.helo(mta);
  REQUIRE(s.mail("<p@partner.test>", mta) == Verdict2::reject);
  bool logged = false;
  for (auto& l : mta.logs) logged |= l.find("client=198.51.100.9 from=<p@partner.test>") != std::string::npos;
  INFO("logs: " << (mta.logs.empty() ? "" : mta.logs.back()));
  CHECK(logged);
}

TEST_CASE("IDN addresses and IPv4-mapped clients through the session") {
  PolicyHolder holder;
  auto r = testing::load_text(R"(
outbound = ( { level = "encrypt"; to = [ "bücher.test" ]; } );
inbound = ( { from = [ "*@xn--mller-kva.test" ]; } );
milter = { outbound_clients = [ "10.0.0.0/8" ]; };
)");
  for (auto& e : r.errors) FAIL(e.text());
  REQUIRE(r.snapshot);
  holder.store(r.snapshot);
  // An IPv4 client seen on a dual-stack socket: libmilter hands over a
  // sockaddr_in6 holding ::ffff:10.1.2.3 (built here as the milter does).
  IpAddr mapped;
  mapped.v6 = true;
  mapped.bytes = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3};
  FakeMta mta;
  Session s(holder);
  s.connect(mapped, mta);
  REQUIRE(s.mail("<a@ours.test>", mta) == Verdict2::go_on);
  CHECK(s.outbound());
  REQUIRE(s.rcpt("<user@BÜCHER.test>", mta) == Verdict2::go_on);
  s.end_of_message(mta);
  REQUIRE(mta.edits.size() == 1);
  CHECK(mta.edits[0] == "insert 0 X-TLSLevel: Require");
  // Inbound: a UTF-8 sender at a domain whose rule is written as an A-label.
  FakeMta in;
  Session t(holder);
  t.connect(ip("198.51.100.1"), in);
  CHECK(t.mail("<x@Müller.test>", in) == Verdict2::reject);
}

TEST_CASE("inbound: MAIL FROM:<> only meets a \"<>\" sender entry, never \"*\"") {
  struct Case {
    std::string from;  // the inbound rule's from list
    std::string sender;
    Verdict2 want;
  };
  const Case cases[] = {
      {"[ \"*\" ]", "<>", Verdict2::go_on},
      {"[ \"*\" ]", "<a@else.test>", Verdict2::reject},
      {"[ \"*\", \"<>\" ]", "<>", Verdict2::reject},
      {"[ \"<>\" ]", "<>", Verdict2::reject},
      {"[ \"<>\" ]", "<a@else.test>", Verdict2::go_on},
  };
  for (auto& c : cases) {
    auto r = testing::load_text("inbound = ( { from = " + c.from + "; } );");
    REQUIRE(r.snapshot);
    PolicyHolder holder;
    holder.store(r.snapshot);
    FakeMta mta;
    Session s(holder);
    s.connect(ip("198.51.100.1"), mta);
    s.helo(mta);
    INFO("from = " << c.from << ", MAIL FROM:" << c.sender);
    CHECK(s.mail(c.sender, mta) == c.want);
  }
}

TEST_CASE("inbound_stops: the stages at which some inbound rule can stop mail") {
  struct Case {
    const char* inbound;
    bool mail, rcpt;
  };
  const Case cases[] = {
      {"", false, false},
      {R"({ from = [ "*@p.test" ]; })", true, false},
      {R"({ clients = [ "192.0.2.0/24" ]; action = "tempfail"; })", true, false},
      {R"({ to = [ "legal" ]; })", false, true},
      {R"({ to = [ "legal" ]; action = "monitor"; })", false, false},
      {R"({ from = [ "*@p.test" ]; to = [ "legal" ]; action = "monitor"; })", false, false},
      {R"({ from = [ "*@p.test" ]; require = "none"; })", false, false},
      {R"({ from = [ "*@p.test" ]; enabled = false; })", false, false},
      {R"({ from = [ "*@p.test" ]; action = "monitor"; }, { to = [ "legal" ]; })", false, true},
  };
  for (auto& c : cases) {
    auto r = testing::load_text(fmt::format("default = \"may\";\ninbound = ( {} );\n", c.inbound));
    for (auto& e : r.errors) FAIL(c.inbound << ": " << e.text());
    INFO(c.inbound);
    CHECK(r.snapshot->inbound_stops.mail == c.mail);
    CHECK(r.snapshot->inbound_stops.rcpt == c.rcpt);
  }
}

TEST_CASE("a stop at a stage negotiated without a reply is held and applied at DATA") {
  Fixture f;
  // The connection was negotiated with no reply at MAIL and RCPT (the
  // snapshot then had no such rule; this one has: a reload in between).
  FakeMta mta;
  Session s(f.holder);
  s.set_replies(false, false);
  s.connect(ip("198.51.100.1"), mta);
  s.helo(mta);
  CHECK(s.mail("<p@partner.test>", mta) == Verdict2::go_on);
  CHECK(s.rcpt("<legal@ours.test>", mta) == Verdict2::go_on);
  CHECK(mta.replies.empty());
  CHECK(s.data(mta) == Verdict2::reject);
  REQUIRE(mta.replies.size() == 1);
  CHECK(mta.replies[0] == "554 5.7.0 encryption too weak 0 less than 112");  // the first stop wins
  CHECK(s.data(mta) == Verdict2::go_on);
  bool logged = false;
  for (auto& l : mta.logs) logged |= l.find("applied at DATA") != std::string::npos;
  CHECK(logged);
  // A new transaction starts clean; replies at MAIL work as before.
  s.abort();
  CHECK(s.mail("<x@else.test>", mta) == Verdict2::go_on);
  CHECK(s.data(mta) == Verdict2::go_on);
  Session t(f.holder);
  t.set_replies(true, false);
  t.connect(ip("198.51.100.1"), mta);
  CHECK(t.mail("<p@partner.test>", mta) == Verdict2::reject);
  CHECK(t.data(mta) == Verdict2::go_on);
}

TEST_CASE("a recipient stop held for DATA does not bounce the transaction's other recipients") {
  // A reload added a recipient rule under a connection negotiated without a
  // reply at RCPT: legal@ cannot be refused alone any more. Refusing the
  // whole message with legal@'s 5xx at DATA makes the client bounce it for
  // bob@ too, who has no rule. A 4xx lets it retry on a new connection,
  // where legal@ is refused at RCPT and bob@ gets his mail.
  Fixture f;
  FakeMta mta;
  Session s(f.holder);
  s.set_replies(true, false);
  s.connect(ip("198.51.100.1"), mta);
  CHECK(s.mail("<x@else.test>", mta) == Verdict2::go_on);
  CHECK(s.rcpt("<bob@ours.test>", mta) == Verdict2::go_on);
  CHECK(s.rcpt("<legal@ours.test>", mta) == Verdict2::go_on);
  CHECK(s.data(mta) == Verdict2::tempfail);
  REQUIRE(mta.replies.size() == 1);
  CHECK(mta.replies[0].starts_with("4"));
  // Only legal@ in the transaction: refusing the message is refusing legal@.
  FakeMta m2;
  CHECK(s.mail("<x@else.test>", m2) == Verdict2::go_on);
  CHECK(s.rcpt("<legal@ours.test>", m2) == Verdict2::go_on);
  CHECK(s.data(m2) == Verdict2::reject);
  REQUIRE(m2.replies.size() == 1);
  CHECK(m2.replies[0].starts_with("550 5.7.1 <legal@ours.test>"));
}
