// Asynchronous DNS for discovery: libunbound (its own DNSSEC validator, or
// forwarding to a configured resolver) behind our own answer cache.
//
// Why a cache of our own in front of libunbound's: libunbound's cache keeps
// no negative answers bounded the way we want (capped by negative_ttl_max),
// has no notion of "this name failed, do not ask again for failure_ttl", is
// not bounded by a count of answers, and does not coalesce our callers: N
// requests for one name in flight would each get their own callback. Ours is
// (name, type) -> DnsRecordSet with an expiry, LRU-bounded, with one
// ub_resolve_async per (name, type) in flight and many waiters on it.
//
// Never blocks: fd() is readable when libunbound has answers (its thread
// runs the queries) or a query's timeout passed; process() delivers them.
// The daemon watches fd() from its epoll loop; `tlspolicy query` polls it.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "policy/facts.hpp"
#include "policy/snapshot.hpp"

struct ub_ctx;
struct ub_result;

namespace tlspolicy {

// TXT: each record's presentation is the concatenation of its
// character-strings (what RFC 8461 3.1 parses), bytes outside printable
// ASCII written \DDD.
enum class RrType : uint16_t { A = 1, MX = 15, TXT = 16, AAAA = 28, TLSA = 52 };
std::string_view rr_type_name(RrType t);

class Resolver {
 public:
  using Clock = std::chrono::steady_clock;
  using Answer = std::shared_ptr<const DnsRecordSet>;
  using Callback = std::function<void(const Answer&)>;

  struct Counts {
    uint64_t queries = 0;     // sent to libunbound (cache misses not coalesced)
    uint64_t cache_hits = 0;  // answered from the cache
    uint64_t coalesced = 0;   // joined a query already in flight
    uint64_t failures = 0;    // failed answers (SERVFAIL, timeout, bogus)
  };

  // Creates the libunbound context from the settings; nullptr with *error
  // when a setting is refused (an unreadable trust anchor, a bad forwarder).
  static std::unique_ptr<Resolver> create(const DiscoverySettings& s, std::string* error);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // The answer for (name, type): from the cache at once (cb runs before
  // resolve() returns, which returns true), else cb runs later from
  // process(), exactly once. The destructor drops the callbacks still
  // waiting (their owner fails its own requests first).
  bool resolve(const std::string& name, RrType type, Callback cb);
  // A cached, unexpired answer, or nullptr; counts nothing.
  Answer cached(const std::string& name, RrType type);

  // When the cached answer for (name, type) expires; now when not cached.
  Clock::time_point expiry(const std::string& name, RrType type) const;

  int fd() const { return epfd_; }
  // Delivers the answers that arrived and fails the queries past their
  // timeout. Returns at once when there is nothing to do.
  void process();
  size_t in_flight() const { return pending_.size(); }
  size_t cache_size() const { return cache_.size(); }
  const Counts& counts() const { return counts_; }
  const DiscoverySettings& settings() const { return settings_; }

 private:
  struct Pending {
    Resolver* self;
    std::string key, name;
    RrType type;
    int async_id = 0;
    Clock::time_point deadline;
    std::vector<Callback> waiters;
  };
  struct Entry {
    Answer answer;
    Clock::time_point expires;
    std::list<std::string>::iterator lru;
  };
  Resolver(const DiscoverySettings& s) : settings_(s) {}
  static void on_result(void* mydata, int err, ub_result* result);
  void finish(const std::string& key, Answer a, Clock::duration keep);
  void arm_timer();
  Answer make_answer(const std::string& name, RrType type, int err, ub_result* r, Clock::duration* keep) const;

  DiscoverySettings settings_;
  ub_ctx* ctx_ = nullptr;
  int epfd_ = -1;   // epoll over libunbound's fd and timer_fd_: one fd for callers
  int timer_fd_ = -1;
  std::unordered_map<std::string, Entry> cache_;
  std::list<std::string> lru_;  // most recently used first
  std::unordered_map<std::string, std::unique_ptr<Pending>> pending_;
  Counts counts_;
};

}  // namespace tlspolicy
