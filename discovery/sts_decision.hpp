// What to do with a domain's MTA-STS state, as pure functions of (what the
// cache holds, what DNS and HTTPS said, now), so the rules of RFC 8461
// sections 3.3, 5 and 5.1 are tested without a network:
// - a TXT id equal to the cached policy's, the policy unexpired: use it, no fetch;
// - a new id, or nothing cached: fetch;
// - no TXT record, or the lookup failed: an unexpired cached policy still
//   applies (removal is announced by a "none" policy, RFC 8461 8.3);
// - a fetched "none" policy drops the cached one;
// - a failed fetch or an invalid policy keeps the unexpired cached policy.
// The daemon (next step) runs the I/O these decisions ask for.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "discovery/mta_sts_policy.hpp"
#include "discovery/sts_cache.hpp"

namespace tlspolicy::sts {

// The state of the _mta-sts TXT lookup.
enum class TxtLookup { found, none, failed };

struct Step {
  enum class Action {
    no_policy,   // behave as if the domain had no MTA-STS
    use_cached,  // apply the cached policy
    fetch,       // fetch https://mta-sts.<domain>/..., then call after_fetch()
  } action = Action::no_policy;
  std::string reason;  // for the log and --explain
};

// After the TXT lookup. txt is meaningful when lookup == found.
Step after_txt(const std::optional<CachedPolicy>& cached, TxtLookup lookup, const TxtRecord& txt, int64_t now);

struct FetchOutcome {
  Step::Action action = Step::Action::no_policy;  // no_policy or use_cached
  // What the cache should become: store (new policy), erase ("none"), keep.
  enum class CacheChange { keep, store, erase } change = CacheChange::keep;
  std::optional<CachedPolicy> entry;  // with change == store
  std::optional<Policy> policy;       // the policy in force, if any
  std::string reason;
};

// After a fetch for the id txt_id: ok with body, or failed with error.
FetchOutcome after_fetch(const std::string& domain, const std::optional<CachedPolicy>& cached,
                         const std::string& txt_id, bool fetch_ok, const std::string& body_or_error, int64_t now);

// What MTA-STS says for Postfix, from the policy in force: an enforce
// policy's answer; testing and none give no answer (other sources decide) and
// testing is reported as "would enforce" for the log and counters.
struct StsAnswer {
  std::optional<std::string> answer;  // "secure match=... servername=hostname"
  bool would_enforce = false;         // testing mode
};
StsAnswer answer_for(const std::optional<Policy>& policy, const AnswerOptions& opt = {});

}  // namespace tlspolicy::sts
