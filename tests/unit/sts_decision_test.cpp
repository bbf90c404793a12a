// RFC 8461's refresh rules as tables: TXT id changes, failed lookups and
// fetches with and without an unexpired cached policy, mode none.
#include "catch.hpp"

#include "discovery/sts_decision.hpp"

using namespace tlspolicy::sts;

namespace {

const char* name(Step::Action a) {
  switch (a) {
    case Step::Action::no_policy: return "no_policy";
    case Step::Action::use_cached: return "use_cached";
    case Step::Action::fetch: return "fetch";
  }
  return "?";
}
const char* name(FetchOutcome::CacheChange c) {
  switch (c) {
    case FetchOutcome::CacheChange::keep: return "keep";
    case FetchOutcome::CacheChange::store: return "store";
    case FetchOutcome::CacheChange::erase: return "erase";
  }
  return "?";
}

const std::string enforce_text = "version: STSv1\nmode: enforce\nmx: mx.a.example\nmax_age: 3600\n";
const std::string testing_text = "version: STSv1\nmode: testing\nmx: mx.a.example\nmax_age: 600\n";
const std::string none_text = "version: STSv1\nmode: none\nmax_age: 600\n";

std::optional<CachedPolicy> cached(const std::string& id, int64_t expires) {
  CachedPolicy c;
  c.domain = "a.example";
  c.id = id;
  c.text = enforce_text;
  c.fetched = 0;
  c.expires = expires;
  return c;
}

TxtRecord txt(const std::string& id) {
  TxtRecord t;
  t.status = TxtRecord::Status::found;
  t.id = id;
  return t;
}

}  // namespace

TEST_CASE("after the TXT lookup: use the cache, fetch, or no policy") {
  const int64_t now = 1000;
  TxtRecord invalid;
  invalid.status = TxtRecord::Status::invalid;
  invalid.error = "2 TXT records start with \"v=STSv1\"";
  struct Case {
    std::string what;
    std::optional<CachedPolicy> cache;
    TxtLookup lookup;
    TxtRecord record;
    std::string want;
  };
  const Case cases[] = {
      {"same id, unexpired", cached("1", 2000), TxtLookup::found, txt("1"), "use_cached"},
      {"new id", cached("1", 2000), TxtLookup::found, txt("2"), "fetch"},
      {"same id, expired", cached("1", 1000), TxtLookup::found, txt("1"), "fetch"},
      {"nothing cached", std::nullopt, TxtLookup::found, txt("1"), "fetch"},
      {"TXT gone, unexpired cache", cached("1", 2000), TxtLookup::none, {}, "use_cached"},
      {"TXT gone, expired cache", cached("1", 999), TxtLookup::none, {}, "no_policy"},
      {"TXT gone, nothing cached", std::nullopt, TxtLookup::none, {}, "no_policy"},
      {"lookup failed, unexpired cache", cached("1", 2000), TxtLookup::failed, {}, "use_cached"},
      {"lookup failed, nothing cached", std::nullopt, TxtLookup::failed, {}, "no_policy"},
      {"two records, unexpired cache", cached("1", 2000), TxtLookup::found, invalid, "use_cached"},
      {"two records, nothing cached", std::nullopt, TxtLookup::found, invalid, "no_policy"},
  };
  for (const auto& c : cases) {
    auto s = after_txt(c.cache, c.lookup, c.record, now);
    INFO(c.what << ": " << name(s.action) << " (" << s.reason << ")");
    CHECK(name(s.action) == c.want);
    CHECK_FALSE(s.reason.empty());
  }
}

TEST_CASE("after the fetch: store, drop, or keep the unexpired cached policy") {
  const int64_t now = 1000;
  struct Case {
    std::string what;
    std::optional<CachedPolicy> cache;
    bool ok;
    std::string body;
    std::string want_action, want_change;
    std::string want_mode;  // of the policy in force, "" for none
  };
  const Case cases[] = {
      {"new enforce policy", std::nullopt, true, enforce_text, "use_cached", "store", "enforce"},
      {"id change to testing", cached("1", 2000), true, testing_text, "use_cached", "store", "testing"},
      {"mode none drops the cache", cached("1", 2000), true, none_text, "no_policy", "erase", ""},
      {"mode none, nothing cached", std::nullopt, true, none_text, "no_policy", "keep", ""},
      {"failed refetch keeps the unexpired policy", cached("1", 2000), false, "timed out", "use_cached", "keep",
       "enforce"},
      {"failed refetch, expired policy", cached("1", 1000), false, "HTTP 404", "no_policy", "keep", ""},
      {"failed fetch, nothing cached", std::nullopt, false, "HTTP 301", "no_policy", "keep", ""},
      {"invalid new policy keeps the old", cached("1", 2000), true, "version: STSv1\nmode: enforce\n", "use_cached",
       "keep", "enforce"},
      {"invalid policy, nothing cached", std::nullopt, true, "<html>", "no_policy", "keep", ""},
  };
  for (const auto& c : cases) {
    auto o = after_fetch("a.example", c.cache, "2", c.ok, c.body, now);
    INFO(c.what << ": " << name(o.action) << " " << name(o.change) << " (" << o.reason << ")");
    CHECK(name(o.action) == c.want_action);
    CHECK(name(o.change) == c.want_change);
    CHECK(std::string(o.policy ? mode_name(o.policy->mode) : "") == c.want_mode);
    if (o.change == FetchOutcome::CacheChange::store) {
      REQUIRE(o.entry);
      CHECK(o.entry->id == "2");
      CHECK(o.entry->fetched == now);
      CHECK(o.entry->expires == now + int64_t(o.policy->max_age));
      CHECK(o.entry->text == c.body);
    }
  }
}

TEST_CASE("answers: enforce enforces, testing would, none and nothing do not") {
  auto e = answer_for(parse_policy(enforce_text).policy);
  REQUIRE(e.answer);
  CHECK(*e.answer == "secure match=mx.a.example servername=hostname");
  CHECK_FALSE(e.would_enforce);
  auto t = answer_for(parse_policy(testing_text).policy);
  CHECK_FALSE(t.answer);
  CHECK(t.would_enforce);
  auto n = answer_for(parse_policy(none_text).policy);
  CHECK_FALSE(n.answer);
  CHECK_FALSE(n.would_enforce);
  auto nothing = answer_for(std::nullopt);
  CHECK_FALSE(nothing.answer);
  CHECK_FALSE(nothing.would_enforce);
}
