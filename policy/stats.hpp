// What the front ends count, for the daemon's metrics (daemon/metrics.cpp
// exports them in Prometheus' format). Plain relaxed atomics: the event loop
// and the milter threads add, a scrape reads; no counter orders another, and
// an uncontended relaxed add costs about a nanosecond on the lookup path.
#pragma once
#include <array>
#include <atomic>
#include <cstdint>

namespace tlspolicy {

struct Counter {
  std::atomic<uint64_t> v{0};
  void add(uint64_t n = 1) { v.fetch_add(n, std::memory_order_relaxed); }
  uint64_t get() const { return v.load(std::memory_order_relaxed); }
};

// Upper bounds in seconds of the lookup latency buckets (+Inf implied).
constexpr std::array<double, 10> kLatencyBounds = {1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5,
                                                   5e-5, 1e-4, 1e-3, 1e-2, 1e-1};

struct LatencyHistogram {
  std::array<Counter, kLatencyBounds.size() + 1> buckets;  // non-cumulative; last = +Inf
  Counter count, sum_ns;
  void observe(uint64_t ns) {
    size_t i = 0;
    while (i < kLatencyBounds.size() && double(ns) > kLatencyBounds[i] * 1e9) ++i;
    buckets[i].add();
    count.add();
    sum_ns.add(ns);
  }
};

// Socketmap answers by their first word.
enum class ReplyKind { ok, notfound, temp, perm };
constexpr size_t kMapCount = 5;  // MapName's values
constexpr size_t kReplyKinds = 4;

struct Stats {
  // Socketmap: lookups by map and answer ("unknown map" counts as map
  // index kMapCount - 1's neighbour: see unknown_map), their latency.
  Counter lookups[kMapCount][kReplyKinds];
  Counter unknown_map;
  LatencyHistogram latency[kMapCount];
  Counter connections_accepted, connections_refused, connections_closed;
  Counter malformed_requests, timeouts;
  // Milter: one per message (header) or per refused command.
  Counter milter_require, milter_try, milter_reject, milter_tempfail, milter_would_reject, milter_errors;
  Counter milter_sessions;
  // Discovery (DNS): questions sent to libunbound, answered from our cache,
  // failed (SERVFAIL, timeout, bogus); socketmap requests parked while DNS
  // ran; destinations being discovered now.
  Counter dns_queries, dns_cache_hits, dns_failures, discovery_parked, discovery_timeouts;
  std::atomic<int64_t> discovery_in_flight{0};
  // Reloads.
  Counter reloads_ok, reloads_failed;
  std::atomic<int64_t> loaded_unix{0};  // when the policy being served was loaded
};

// The process's counters.
Stats& stats();

}  // namespace tlspolicy
