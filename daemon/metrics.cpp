// See metrics.hpp. Everything is read at scrape time from relaxed atomics;
// nothing here runs on the lookup path.
#include "daemon/metrics.hpp"

#include <fmt/format.h>
#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/metric_family.h>

#include "policy/maps.hpp"
#include "policy/stats.hpp"
#include "discovery/sts_store.hpp"

namespace tlspolicy {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

class Metrics::Collector : public prometheus::Collectable {
 public:
  explicit Collector(const PolicyHolder& holder) : holder_(holder) {}

  void publish(PolicyHolder& holder, std::shared_ptr<const Snapshot> now, const Snapshot& old) {
    std::lock_guard lock(mutex_);
    for (size_t i = 0; i < old.rules.size(); ++i) retired_[old.rules[i].name] += old.rule_hits[i].get();
    holder.store(std::move(now));
  }

  std::vector<MetricFamily> Collect() const override {
    const Stats& st = stats();
    std::vector<MetricFamily> out;
    auto family = [&](std::string name, std::string help, MetricType type) -> MetricFamily& {
      out.push_back({std::move(name), std::move(help), type, {}});
      return out.back();
    };
    auto counter = [](MetricFamily& f, std::vector<ClientMetric::Label> labels, double v) {
      ClientMetric m;
      m.label = std::move(labels);
      m.counter.value = v;
      f.metric.push_back(std::move(m));
    };
    auto gauge = [](MetricFamily& f, std::vector<ClientMetric::Label> labels, double v) {
      ClientMetric m;
      m.label = std::move(labels);
      m.gauge.value = v;
      f.metric.push_back(std::move(m));
    };
    constexpr const char* kReplies[] = {"ok", "notfound", "temp", "perm"};

    auto& lookups = family("tlspolicy_lookups_total", "Socketmap lookups by map and answer", MetricType::Counter);
    for (size_t m = 0; m < kMapCount; ++m)
      for (size_t r = 0; r < kReplyKinds; ++r)
        counter(lookups, {{"map", std::string(map_name(MapName(m)))}, {"answer", kReplies[r]}},
                double(st.lookups[m][r].get()));
    counter(lookups, {{"map", "unknown"}, {"answer", "perm"}}, double(st.unknown_map.get()));

    auto& latency = family("tlspolicy_lookup_duration_seconds", "Time to answer one socketmap lookup",
                           MetricType::Histogram);
    for (size_t m = 0; m < kMapCount; ++m) {
      ClientMetric cm;
      cm.label = {{"map", std::string(map_name(MapName(m)))}};
      uint64_t cum = 0;
      for (size_t b = 0; b < kLatencyBounds.size(); ++b) {
        cum += st.latency[m].buckets[b].get();
        cm.histogram.bucket.push_back({cum, kLatencyBounds[b]});
      }
      cum += st.latency[m].buckets[kLatencyBounds.size()].get();
      cm.histogram.bucket.push_back({cum, std::numeric_limits<double>::infinity()});
      cm.histogram.sample_count = cum;
      cm.histogram.sample_sum = double(st.latency[m].sum_ns.get()) / 1e9;
      latency.metric.push_back(std::move(cm));
    }

    auto& conns = family("tlspolicy_connections_total", "Socketmap connections by what happened to them",
                         MetricType::Counter);
    counter(conns, {{"event", "accepted"}}, double(st.connections_accepted.get()));
    counter(conns, {{"event", "refused"}}, double(st.connections_refused.get()));
    counter(conns, {{"event", "closed"}}, double(st.connections_closed.get()));
    auto& open = family("tlspolicy_connections", "Socketmap connections open now", MetricType::Gauge);
    uint64_t closed = st.connections_closed.get();  // first: a connection is counted accepted before closed
    gauge(open, {}, double(st.connections_accepted.get() - std::min(closed, st.connections_accepted.get())));

    auto& errors = family("tlspolicy_client_errors_total", "Malformed socketmap requests and timed-out clients",
                          MetricType::Counter);
    counter(errors, {{"kind", "malformed"}}, double(st.malformed_requests.get()));
    counter(errors, {{"kind", "timeout"}}, double(st.timeouts.get()));

    auto& milter = family("tlspolicy_milter_decisions_total",
                          "Milter decisions: the header written, inbound refusals, monitor mode's would-rejects",
                          MetricType::Counter);
    counter(milter, {{"decision", "header_require"}}, double(st.milter_require.get()));
    counter(milter, {{"decision", "header_try"}}, double(st.milter_try.get()));
    counter(milter, {{"decision", "reject"}}, double(st.milter_reject.get()));
    counter(milter, {{"decision", "tempfail"}}, double(st.milter_tempfail.get()));
    counter(milter, {{"decision", "would_reject"}}, double(st.milter_would_reject.get()));
    counter(milter, {{"decision", "error"}}, double(st.milter_errors.get()));
    counter(family("tlspolicy_milter_sessions_total", "Milter connections from the MTA", MetricType::Counter), {},
            double(st.milter_sessions.get()));

    auto& dns = family("tlspolicy_dns_questions_total",
                       "DNS questions of discovery: sent to libunbound (cache misses), answered from the cache, failed",
                       MetricType::Counter);
    counter(dns, {{"result", "sent"}}, double(st.dns_queries.get()));
    counter(dns, {{"result", "cached"}}, double(st.dns_cache_hits.get()));
    counter(dns, {{"result", "failed"}}, double(st.dns_failures.get()));
    auto& disc = family("tlspolicy_discovery_requests_total",
                        "Socketmap requests that waited for DNS (parked), and discoveries that hit their deadline",
                        MetricType::Counter);
    counter(disc, {{"event", "parked"}}, double(st.discovery_parked.get()));
    counter(disc, {{"event", "timeout"}}, double(st.discovery_timeouts.get()));
    gauge(family("tlspolicy_discovery_in_flight", "Destinations being discovered now", MetricType::Gauge), {},
          double(st.discovery_in_flight.load(std::memory_order_relaxed)));

    const auto& sts = sts::sts_stats();
    auto& fetches = family("tlspolicy_mta_sts_fetches_total",
                           "MTA-STS policy fetches (HTTPS): started (of which proactive refreshes), gave a valid "
                           "policy, failed (HTTP, TLS, size, timeout, invalid policy, refused)",
                           MetricType::Counter);
    counter(fetches, {{"result", "started"}}, double(sts.fetches_started.get()));
    counter(fetches, {{"result", "refresh"}}, double(sts.refreshes.get()));
    counter(fetches, {{"result", "ok"}}, double(sts.fetches_ok.get()));
    counter(fetches, {{"result", "failed"}}, double(sts.fetches_failed.get()));
    auto& applied = family("tlspolicy_mta_sts_policies_applied_total",
                           "Discoveries where an MTA-STS policy applied: enforce, or testing (would enforce)",
                           MetricType::Counter);
    counter(applied, {{"mode", "enforce"}}, double(sts.enforced.get()));
    counter(applied, {{"mode", "would_enforce"}}, double(sts.would_enforce.get()));
    gauge(family("tlspolicy_mta_sts_policies_cached", "MTA-STS policies in the cache", MetricType::Gauge), {},
          double(sts.policies.load(std::memory_order_relaxed)));
    counter(family("tlspolicy_mta_sts_cache_errors_total",
                   "Persistent MTA-STS cache problems (unreadable or corrupt file, failed writes), each logged",
                   MetricType::Counter),
            {}, double(sts.cache_errors.get()));

    auto& reloads = family("tlspolicy_reloads_total", "Reloads by result", MetricType::Counter);
    counter(reloads, {{"result", "ok"}}, double(st.reloads_ok.get()));
    counter(reloads, {{"result", "failed"}}, double(st.reloads_failed.get()));
    gauge(family("tlspolicy_policy_loaded_timestamp_seconds", "When the policy being served was loaded (Unix time)",
                 MetricType::Gauge),
          {}, double(st.loaded_unix.load(std::memory_order_relaxed)));

    std::shared_ptr<const Snapshot> snap;
    std::map<std::string, uint64_t> hits;
    {
      std::lock_guard lock(mutex_);
      snap = holder_.load();
      hits = retired_;
    }
    if (snap) {
      auto& rules = family("tlspolicy_policy_rules", "Rules in the policy being served", MetricType::Gauge);
      gauge(rules, {{"direction", "outbound"}}, double(snap->rule_count(Direction::outbound)));
      gauge(rules, {{"direction", "inbound"}}, double(snap->rule_count(Direction::inbound)));
      auto& entries = family("tlspolicy_policy_entries", "Entries (domains, addresses, ranges) in the policy",
                             MetricType::Gauge);
      gauge(entries, {{"enforcing", "yes"}}, double(snap->enforcing_entries()));
      gauge(entries, {{"enforcing", "no"}}, double(snap->entries.size() - snap->enforcing_entries()));
      for (size_t i = 0; i < snap->rules.size(); ++i) hits[snap->rules[i].name] += snap->rule_hits[i].get();
      auto& h = family("tlspolicy_rule_hits_total", "Socketmap lookups decided by each rule (by rule name)",
                       MetricType::Counter);
      for (auto& [name, n] : hits) counter(h, {{"rule", name}}, double(n));
    }
    return out;
  }

 private:
  const PolicyHolder& holder_;
  mutable std::mutex mutex_;
  std::map<std::string, uint64_t> retired_;  // hits of replaced snapshots, by rule name
};

Metrics::Metrics(const std::string& endpoint, const PolicyHolder& holder)
    : collector_(std::make_shared<Collector>(holder)) {
  // "inet:127.0.0.1:9464" -> civetweb's "127.0.0.1:9464"; one worker thread
  // is plenty for a scrape every few seconds.
  std::string addr = endpoint.starts_with("inet:") ? endpoint.substr(5) : endpoint;
  exposer_ = std::make_unique<prometheus::Exposer>(addr, 1);
  exposer_->RegisterCollectable(collector_);
}

Metrics::~Metrics() = default;

void Metrics::publish(PolicyHolder& holder, std::shared_ptr<const Snapshot> now, const Snapshot& old) {
  collector_->publish(holder, std::move(now), old);
}

}  // namespace tlspolicy
