// Gathers what DNS says about one next-hop destination into
// DestinationFacts (policy/facts.hpp): the MX set (or the implicit MX, or a
// null MX), each host's A/AAAA, and, with DANE on and the MX set secure,
// each host's TLSA records, each with its DNSSEC status. policy/maps.cpp
// merges the facts with the admin's rules; this file only gathers.
//
// Asynchronous on the Resolver: a destination whose answers are all cached
// completes inside discover() (no loop round trip: cache hits answer at
// static-rule speed); else `done` runs later, from process(), exactly once.
// Identical destinations in flight share one discovery; at most
// max_outstanding run at once (beyond, they fail at once), and each has a
// deadline (deadline_ms) after which it fails ("timeout").
#pragma once
#include <chrono>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "discovery/resolver.hpp"
#include "discovery/sts_fetch.hpp"
#include "discovery/sts_store.hpp"
#include "policy/facts.hpp"
#include "policy/snapshot.hpp"

namespace tlspolicy {

class Discoverer {
 public:
  using Clock = std::chrono::steady_clock;
  using Facts = std::shared_ptr<const DestinationFacts>;
  using Done = std::function<void(const Facts&)>;

  struct Counts {
    uint64_t started = 0;      // discoveries that had to wait for DNS
    uint64_t immediate = 0;    // answered inside discover() (cache, IP literal, overload)
    uint64_t coalesced = 0;    // joined a discovery of the same destination in flight
    uint64_t timeouts = 0;     // failed at the deadline
    uint64_t overloaded = 0;   // refused beyond max_outstanding
    uint64_t facts_hits = 0;   // answered from the facts cache
  };

  // With MTA-STS on, `store` is the policy store to use when its path is the
  // settings' cache file (a reload hands the old Discoverer's on); else a new
  // one is opened (read-write; `tlspolicy query` passes a read-only one).
  static std::unique_ptr<Discoverer> create(const DiscoverySettings& s, std::string* error,
                                            std::shared_ptr<sts::PolicyStore> store = nullptr);
  // Fails every discovery still running ("discovery stopped"): their `done`
  // callbacks run from here.
  ~Discoverer();
  Discoverer(const Discoverer&) = delete;
  Discoverer& operator=(const Discoverer&) = delete;

  // The facts of `destination` ("partner.example", "[mx.example]",
  // "[192.0.2.1]"): at once when known without waiting (then `done` is not
  // called), else nullptr and `done(facts)` later.
  Facts discover(const std::string& destination, Done done);

  int fd() const { return epfd_; }  // readable: call process()
  void process();
  // Fails every discovery running now with `why` (their `done` run here).
  void fail_all(const std::string& why);
  size_t outstanding() const { return jobs_.size(); }
  const Counts& counts() const { return counts_; }
  Resolver& resolver() { return *resolver_; }
  const DiscoverySettings& settings() const { return resolver_->settings(); }
  // The MTA-STS policy store (nullptr when MTA-STS is off).
  const std::shared_ptr<sts::PolicyStore>& sts_store() const { return store_; }
  // MTA-STS fetches under way (requests waiting and background ones).
  size_t sts_fetches() const { return fetches_.size(); }

 private:
  struct Job;
  // sts::Fetcher's sockets and timer on this Discoverer's epoll: the daemon
  // watches one descriptor (fd()) and process() dispatches.
  struct Hooks : sts::LoopHooks {
    Discoverer* d;
    explicit Hooks(Discoverer* self) : d(self) {}
    void watch(int fd, bool read, bool write) override;
    void set_timer(long ms) override;
  };
  // An MTA-STS policy fetch under way for one domain: the requests waiting
  // for it (none for a background refresh) and the TXT id it is for.
  struct Fetch {
    std::string id;
    std::vector<std::weak_ptr<Job>> jobs;
    std::vector<std::string> dests;  // destinations whose cached facts it changes
  };
  explicit Discoverer(std::unique_ptr<Resolver> r) : resolver_(std::move(r)) {}
  void start(const std::shared_ptr<Job>& j);
  void ask(const std::shared_ptr<Job>& j, const std::string& name, RrType type, size_t* slot);
  void on_mx(const std::shared_ptr<Job>& j);
  void ask_host(const std::shared_ptr<Job>& j, size_t host);
  void answered(const std::shared_ptr<Job>& j);
  void complete(const std::shared_ptr<Job>& j, const std::string& failure);
  void arm_timer();

  // Completed destinations, until the first of their answers expires in
  // the resolver's cache: a hit is one hash lookup, not five plus copies,
  // so cache hits answer at static-rule speed. LRU-bounded by cache_entries.
  struct Cached {
    Facts facts;
    Clock::time_point expires;
    std::list<std::string>::iterator lru;
  };
  std::unordered_map<std::string, Cached> facts_;
  std::list<std::string> facts_lru_;  // most recently used first
  Facts cached_facts(const std::string& destination);
  void cache_facts(const std::shared_ptr<Job>& j);
  void uncache_facts(const std::string& destination);

  // MTA-STS (RFC 8461): the TXT answer decides (sts_decision), a fetch runs
  // on this Discoverer's epoll (Hooks), the store keeps the policies.
  void on_txt(const std::shared_ptr<Job>& j);
  void start_fetch(const std::string& domain, const std::string& id, const std::shared_ptr<Job>& j, bool refresh);
  void on_fetched(const std::string& domain, const sts::FetchResult& r);
  void set_sts(Job& j, const std::optional<sts::Policy>& p, const sts::CachedPolicy* c, std::string source,
               std::string note);
  void maybe_refresh(const std::string& domain, sts::PolicyStore::Entry& e, int64_t now);
  std::shared_ptr<sts::PolicyStore> store_;
  std::unique_ptr<Hooks> hooks_;
  std::unique_ptr<sts::Fetcher> fetcher_;
  int sts_timer_fd_ = -1;
  std::unordered_map<std::string, Fetch> fetches_;  // by policy domain

  std::unique_ptr<Resolver> resolver_;
  int epfd_ = -1, timer_fd_ = -1;
  std::unordered_map<std::string, std::shared_ptr<Job>> jobs_;
  std::deque<std::pair<Clock::time_point, std::weak_ptr<Job>>> deadlines_;  // in start order = deadline order
  Counts counts_;
};

// Whether two settings make the same Discoverer (a reload that changes
// none of these keeps the running one, and its cache).
bool same_resolver_settings(const DiscoverySettings& a, const DiscoverySettings& b);
// Facts that say only "failed: why" (no resolver, for instance).
Discoverer::Facts failed_facts(const std::string& destination, const std::string& why);

// discover() driven by a loop of its own (poll on fd()) until the facts
// come: for `tlspolicy query` and the tests. The deadline bounds the wait.
Discoverer::Facts discover_wait(Discoverer& d, const std::string& destination);

}  // namespace tlspolicy
