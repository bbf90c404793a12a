// MTA-STS text: TXT records, policy files, MX patterns and the Postfix
// answer, as tables of cases.
#include "catch.hpp"

#include "discovery/mta_sts_policy.hpp"

#include <algorithm>

using namespace tlspolicy::sts;

namespace {
const char* status_name(TxtRecord::Status s) {
  switch (s) {
    case TxtRecord::Status::found: return "found";
    case TxtRecord::Status::none: return "none";
    case TxtRecord::Status::invalid: return "invalid";
  }
  return "?";
}
}  // namespace

TEST_CASE("MTA-STS TXT records: one valid STSv1 record gives its id") {
  struct Case {
    std::vector<std::string> records;
    std::string want_status;
    std::string want_id;      // when found
    std::string want_error;   // substring, when not found
  };
  const Case cases[] = {
      {{"v=STSv1; id=20160831085700Z;"}, "found", "20160831085700Z", ""},
      {{"v=STSv1;id=abc"}, "found", "abc", ""},
      {{"v=STSv1; id=abc ;"}, "found", "abc", ""},
      {{"v=STSv1 ; id=abc; "}, "found", "abc", ""},
      {{"v=STSv1;\tid=abc;\t"}, "found", "abc", ""},
      {{"v=STSv1; id=first; id=second;"}, "found", "first", ""},
      {{"v=STSv1; ext_1.x-y=val:ue; id=x1"}, "found", "x1", ""},
      {{"v=spf1 -all", "v=STSv1; id=1;"}, "found", "1", ""},
      {{std::string("v=STSv1; id=") + std::string(32, 'a')}, "found", std::string(32, 'a'), ""},
      // no policy at all
      {{}, "none", "", ""},
      {{"v=spf1 -all"}, "none", "", "none starts with"},
      {{"v=STSv10; id=1"}, "none", "", "none starts with"},
      {{"V=STSv1; id=1"}, "none", "", "none starts with"},
      {{" v=STSv1; id=1"}, "none", "", "none starts with"},
      // present but unusable: treated as no policy, with a reason
      {{"v=STSv1; id=1", "v=STSv1; id=2"}, "invalid", "", "2 TXT records"},
      {{"v=STSv1;"}, "invalid", "", "has no id"},
      {{"v=STSv1"}, "invalid", "", "has no id"},
      {{"v=STSv1; id=ab-c"}, "invalid", "", "letters and digits"},
      {{std::string("v=STSv1; id=") + std::string(33, 'a')}, "invalid", "", "letters and digits"},
      {{"v=STSv1; id="}, "invalid", "", "bad value"},
      {{"v=STSv1; id=1 x=2"}, "invalid", "", "expected \";\""},
      {{"v=STSv1; id"}, "invalid", "", "has no \"=\""},
      {{"v=STSv1; _x=1; id=1"}, "invalid", "", "bad field name"},
      {{"v=STSv1; x=a=b; id=1"}, "invalid", "", "bad value"},
  };
  for (const auto& c : cases) {
    std::string all;
    for (auto& r : c.records) all += "[" + r + "]";
    auto got = parse_txt_records(c.records);
    INFO("records: " << all << "  got: " << status_name(got.status) << " id=" << got.id
                     << " error=" << got.error);
    CHECK(status_name(got.status) == c.want_status);
    if (c.want_status == "found") CHECK(got.id == c.want_id);
    if (!c.want_error.empty()) CHECK(got.error.find(c.want_error) != std::string::npos);
  }
}

TEST_CASE("MTA-STS policies that parse") {
  struct Case {
    std::string text;
    Mode mode;
    std::vector<std::string> mx;
    uint32_t max_age;
  };
  const Case cases[] = {
      {"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
       "mx: backupmx.example.com\r\nmax_age: 604800\r\n",
       Mode::enforce, {"mail.example.com", "*.example.net", "backupmx.example.com"}, 604800},
      // LF only, no final line end, fields in another order, blanks after ':'
      {"mode:testing\nmx:\tMX.Example.COM\nmax_age: 86400   \nversion: STSv1", Mode::testing,
       {"mx.example.com"}, 86400},
      // none needs no mx
      {"version: STSv1\nmode: none\nmax_age: 0\n", Mode::none, {}, 0},
      // unknown fields ignored, repeated fields keep the first value, mx deduplicated
      {"version: STSv1\nmode: enforce\nmode: none\nfoo: bar baz\nmx: a.example\nmx: A.example\n"
       "max_age: 31557600\nmax_age: 99999999999\n",
       Mode::enforce, {"a.example"}, 31557600},
      // blank lines are skipped
      {"version: STSv1\n\nmode: enforce\r\n\r\nmx: a.example\nmax_age: 1\n\n", Mode::enforce, {"a.example"}, 1},
      // 10 digits with leading zeros
      {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 0000086400\n", Mode::enforce, {"a.example"}, 86400},
      // UTF-8 in an extension value
      {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 5\nnote: gr\xc3\xbc\xc3\x9f\x65\n", Mode::enforce,
       {"a.example"}, 5},
  };
  for (const auto& c : cases) {
    auto got = parse_policy(c.text);
    INFO("policy: " << c.text << "\nerror: " << got.error);
    REQUIRE(got.policy.has_value());
    CHECK(mode_name(got.policy->mode) == mode_name(c.mode));
    CHECK(got.policy->mx == c.mx);
    CHECK(got.policy->max_age == c.max_age);
  }
}

TEST_CASE("MTA-STS policies that are refused, with a reason") {
  struct Case {
    std::string text;
    std::string want;  // substring of the error
  };
  const std::string ok_tail = "mx: a.example\nmax_age: 86400\n";
  const Case cases[] = {
      {"mode: enforce\n" + ok_tail, "no \"version\""},
      {"version: STSv1\n" + ok_tail, "no \"mode\""},
      {"version: STSv1\nmode: enforce\nmx: a.example\n", "no \"max_age\""},
      {"version: STSv2\nmode: enforce\n" + ok_tail, "version \"STSv2\" is not"},
      {"version: stsv1\nmode: enforce\n" + ok_tail, "is not \"STSv1\""},
      {"version: STSv1\nmode: Enforce\n" + ok_tail, "mode \"Enforce\""},
      {"version: STSv1\nmode: report\n" + ok_tail, "mode \"report\""},
      {"Version: STSv1\nmode: enforce\n" + ok_tail, "no \"version\""},
      {"version: STSv1\nmode: enforce\nmax_age: 86400\n", "without any \"mx\""},
      {"version: STSv1\nmode: testing\nmax_age: 86400\n", "without any \"mx\""},
      {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", "over the maximum"},
      {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "at most 10 digits"},
      {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "at most 10 digits"},
      {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1d\n", "at most 10 digits"},
      {"version: STSv1\nmode: enforce\nmx: a.example\nmax_age:\n", "has no value"},
      {"version: STSv1\nmode: enforce\nmx: mail.*.example\nmax_age: 1\n", "mx \"mail.*.example\""},
      {"version: STSv1\nmode: enforce\nmx: *example.com\nmax_age: 1\n", "mx \"*example.com\""},
      {"version: STSv1\nmode: enforce\nmx: *.*.example.com\nmax_age: 1\n", "mx \"*.*.example.com\""},
      {"version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", "mx \"*\""},
      {"version: STSv1\nmode: enforce\nmx: a.example.\nmax_age: 1\n", "mx \"a.example.\""},
      {"version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n", "mx \"a..example\""},
      {"version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 1\n", "mx \"-a.example\""},
      {"version: STSv1\nmode: enforce\nmx: a.example b.example\nmax_age: 1\n", "mx \"a.example b.example\""},
      {"version: STSv1\nmode: enforce\nmx: " + std::string(64, 'a') + ".example\nmax_age: 1\n", "mx \""},
      {"version: STSv1\nmode enforce\n" + ok_tail, "line 2: \"mode enforce\" is not \"key: value\""},
      {"version: STSv1\n mode: enforce\n" + ok_tail, "line 2: bad field name"},
      {"version: STSv1\nmo de: enforce\n" + ok_tail, "bad field name"},
      {"version: STSv1\nmode: enforce\rmx: a.example\nmax_age: 1\n", "control character"},
      {std::string("version: STSv1\nmode: enforce\0\n", 31) + ok_tail, "control character"},
      {"<html><body>Not found</body></html>\n", "not \"key: value\""},
      {"", "no \"version\""},
      {"version: STSv1\nmode: enforce\n" + ok_tail + std::string(70000, '#'), "more than the limit"},
  };
  for (const auto& c : cases) {
    auto got = parse_policy(c.text);
    INFO("policy: " << c.text.substr(0, 200) << "\nerror: " << got.error);
    CHECK_FALSE(got.policy.has_value());
    CHECK(got.error.find(c.want) != std::string::npos);
  }
}

TEST_CASE("MX patterns match as RFC 8461 4.1 says") {
  struct Case {
    std::string pattern, host;
    bool want;
  };
  const Case cases[] = {
      {"mx1.example.com", "mx1.example.com", true},
      {"mx1.example.com", "MX1.Example.COM", true},
      {"mx1.example.com", "mx1.example.com.", true},
      {"mx1.example.com", "mx2.example.com", false},
      {"mx1.example.com", "a.mx1.example.com", false},
      {"*.example.com", "mx1.example.com", true},
      {"*.example.com", "MX1.EXAMPLE.COM.", true},
      {"*.example.com", "example.com", false},
      {"*.example.com", ".example.com", false},
      {"*.example.com", "a.b.example.com", false},
      {"*.example.com", "mx1.example.net", false},
      {"*.example.com", "mx1xexample.com", false},
      {"*.example.com", "", false},
      {"", "mx1.example.com", false},
  };
  for (const auto& c : cases) {
    INFO("pattern " << c.pattern << " host " << c.host);
    CHECK(mx_matches(c.pattern, c.host) == c.want);
  }
  auto p = parse_policy("version: STSv1\nmode: enforce\nmx: mx1.a.example\nmx: *.b.example\nmax_age: 1\n");
  REQUIRE(p.policy);
  CHECK(policy_allows_mx(*p.policy, "mx1.a.example"));
  CHECK(policy_allows_mx(*p.policy, "x.b.example"));
  CHECK_FALSE(policy_allows_mx(*p.policy, "mx2.a.example"));
  CHECK_FALSE(policy_allows_mx(*p.policy, "b.example"));
}

TEST_CASE("the Postfix answer of an enforce policy, as the peers write it") {
  // Plain fields, AnswerOptions built in the loop: GCC 12 -O3 warns falsely
  // (maybe-uninitialized) about a std::string member of an aggregate in an array.
  struct Case {
    std::string policy;
    bool tlsrpt;
    const char* domain;
    long ttl;  // -1: none
    std::string want;
  };
  const std::string head = "version: STSv1\nmode: enforce\n";
  const Case cases[] = {
      {head + "mx: mx.example.test\nmax_age: 86400\n", false, "", -1, "secure match=mx.example.test servername=hostname"},
      {head + "mx: mx1.example\nmx: *.example.net\nmax_age: 86400\n", false, "", -1,
       "secure match=mx1.example:.example.net servername=hostname"},
      // "*.x" and a second "*.x" written once
      {head + "mx: *.example.net\nmx: *.EXAMPLE.net\nmx: a.example\nmax_age: 86400\n", false, "", -1,
       "secure match=.example.net:a.example servername=hostname"},
      {"version: STSv1\r\nmode: enforce\r\nmx: mx1.example\r\nmx: *.example.net\r\nmax_age: 604800\r\n",
       true, "example.org", -1,
       "secure match=mx1.example:.example.net servername=hostname policy_type=sts policy_domain=example.org"
       " mx_host_pattern=mx1.example mx_host_pattern=*.example.net"
       " { policy_string = version: STSv1 } { policy_string = mode: enforce }"
       " { policy_string = mx: mx1.example } { policy_string = mx: *.example.net }"
       " { policy_string = max_age: 604800 }"},
      // policy_ttl, and a line with a brace left out of the report
      {head + "mx: a.example\nmax_age: 60\next: {x}\n", true, "example.org", 60,
       "secure match=a.example servername=hostname policy_type=sts policy_domain=example.org policy_ttl=60"
       " mx_host_pattern=a.example { policy_string = version: STSv1 } { policy_string = mode: enforce }"
       " { policy_string = mx: a.example } { policy_string = max_age: 60 }"},
  };
  for (const auto& c : cases) {
    auto p = parse_policy(c.policy);
    INFO("policy: " << c.policy << "\nerror: " << p.error);
    REQUIRE(p.policy);
    AnswerOptions opt;
    opt.tlsrpt = c.tlsrpt;
    opt.domain = c.domain;
    if (c.ttl >= 0) opt.ttl = uint32_t(c.ttl);
    CHECK(postfix_answer(*p.policy, opt) == c.want);
  }
}

// Review: an extension line is hostile text. Its bytes outside ASCII (UTF-8
// the parser accepts, or any byte >= 0x80) must not reach the TLSRPT
// policy_string attributes: with smtputf8_enable (Postfix's default) a
// table value that is not valid UTF-8 is a lookup error, so the domain's
// mail would be deferred; and the socketmap answer stays plain ASCII.
TEST_CASE("the TLSRPT answer stays printable ASCII whatever an extension line holds") {
  const std::string head = "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 60\n";
  const std::string lines[] = {"note: gr\xc3\xbc\xc3\x9f\x65\n", "x: \xff\xfe\n", "y: a\x80z\n"};
  for (const auto& l : lines) {
    auto p = parse_policy(head + l);
    INFO("line: " << l << "error: " << p.error);
    REQUIRE(p.policy);
    AnswerOptions opt;
    opt.tlsrpt = true;
    opt.domain = "example.org";
    std::string got = postfix_answer(*p.policy, opt);
    INFO("got: " << got);
    CHECK(std::all_of(got.begin(), got.end(), [](char c) {
      auto u = static_cast<unsigned char>(c);
      return u >= 0x20 && u < 0x7f;
    }));
    // The other lines are still reported.
    CHECK(got.find("{ policy_string = mode: enforce }") != std::string::npos);
  }
}
