#include "discovery/sts_decision.hpp"

#include <fmt/format.h>

namespace tlspolicy::sts {
namespace {

bool usable(const std::optional<CachedPolicy>& c, int64_t now) { return c && c->expires > now; }

std::string cached_note(const std::optional<CachedPolicy>& c, int64_t now) {
  if (!c) return "nothing cached";
  if (c->expires <= now) return fmt::format("the cached policy (id {}) expired", c->id);
  return fmt::format("the cached policy (id {}) is valid for {} s more", c->id, c->expires - now);
}

}  // namespace

Step after_txt(const std::optional<CachedPolicy>& cached, TxtLookup lookup, const TxtRecord& txt, int64_t now) {
  Step s;
  bool have = usable(cached, now);
  auto fallback = [&](std::string why) {
    s.action = have ? Step::Action::use_cached : Step::Action::no_policy;
    s.reason = fmt::format("{}; {}", why, cached_note(cached, now));
    return s;
  };
  switch (lookup) {
    case TxtLookup::failed: return fallback("TXT lookup failed");
    case TxtLookup::none: return fallback("no MTA-STS TXT record");
    case TxtLookup::found: break;
  }
  if (txt.status != TxtRecord::Status::found) return fallback("unusable MTA-STS TXT record: " + txt.error);
  if (have && cached->id == txt.id) {
    s.action = Step::Action::use_cached;
    s.reason = fmt::format("TXT id {} unchanged; {}", txt.id, cached_note(cached, now));
    return s;
  }
  s.action = Step::Action::fetch;
  s.reason = cached ? fmt::format("TXT id {} differs from the cached {}", txt.id, cached->id)
                    : fmt::format("TXT id {}, no cached policy", txt.id);
  return s;
}

FetchOutcome after_fetch(const std::string& domain, const std::optional<CachedPolicy>& cached,
                         const std::string& txt_id, bool fetch_ok, const std::string& body_or_error, int64_t now) {
  FetchOutcome o;
  bool have = usable(cached, now);
  auto keep_old = [&](std::string why) {
    if (have) {
      o.action = Step::Action::use_cached;
      o.policy = parse_policy(cached->text).policy;
      if (!o.policy) o.action = Step::Action::no_policy;  // a cached text that no longer parses
    }
    o.reason = fmt::format("{}; {}", why, cached_note(cached, now));
    return o;
  };
  if (!fetch_ok) return keep_old("policy fetch failed: " + body_or_error);
  auto parsed = parse_policy(body_or_error);
  if (!parsed.policy) return keep_old("invalid policy: " + parsed.error);
  if (parsed.policy->mode == Mode::none) {
    o.action = Step::Action::no_policy;
    o.change = cached ? FetchOutcome::CacheChange::erase : FetchOutcome::CacheChange::keep;
    o.reason = fmt::format("policy id {} has mode none: MTA-STS is off for {}", txt_id, domain);
    return o;
  }
  CachedPolicy e;
  e.domain = domain;
  e.id = txt_id;
  e.text = body_or_error;
  e.fetched = now;
  e.expires = now + int64_t(parsed.policy->max_age);
  e.last_used = now;
  o.action = Step::Action::use_cached;
  o.change = FetchOutcome::CacheChange::store;
  o.entry = std::move(e);
  o.reason = fmt::format("fetched policy id {}: mode {}, max_age {}", txt_id, mode_name(parsed.policy->mode),
                         parsed.policy->max_age);
  o.policy = std::move(parsed.policy);
  return o;
}

StsAnswer answer_for(const std::optional<Policy>& policy, const AnswerOptions& opt) {
  StsAnswer a;
  if (!policy) return a;
  if (policy->mode == Mode::enforce) a.answer = postfix_answer(*policy, opt);
  else if (policy->mode == Mode::testing) a.would_enforce = true;
  return a;
}

}  // namespace tlspolicy::sts
