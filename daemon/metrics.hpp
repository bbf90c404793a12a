// The Prometheus endpoint (daemon.metrics, off by default): the counters of
// policy/stats.hpp and the loaded policy's size and rule hits, served over
// HTTP on their own loopback listener by prometheus-cpp's exposer (Debian's
// prometheus-cpp: its exposition format and HTTP server, our counters).
#pragma once
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "policy/holder.hpp"

namespace prometheus {
class Exposer;
}

namespace tlspolicy {

class Metrics {
 public:
  // Binds "inet:IP:PORT" (before privileges are dropped); throws on failure.
  Metrics(const std::string& endpoint, const PolicyHolder& holder);
  ~Metrics();
  // Serves `now` in place of `old`, keeping old's rule hits, so the counter
  // of a rule that survives a reload keeps counting up; one step for a
  // scrape (no dip between the two).
  void publish(PolicyHolder& holder, std::shared_ptr<const Snapshot> now, const Snapshot& old);

 private:
  class Collector;
  std::shared_ptr<Collector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace tlspolicy
