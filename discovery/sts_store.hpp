// The MTA-STS policies the daemon knows: the persistent cache (sts_cache,
// SQLite) loaded once into memory, so a discovery never reads SQLite, and
// written through when a policy changes (fetched, dropped by "none"). One
// store outlives the Discoverers a reload replaces (the daemon hands it on),
// so a reload neither forgets policies nor reopens the file.
//
// The writes run on a thread of the store's own, in order: SQLite makes
// each one durable (journal, fdatasync: milliseconds, tens of them on a busy
// disk), and on the event loop that would stall every other client's
// answer while a new policy is written. Memory is updated at once, so the
// daemon's answers never wait for the file; at most kMaxQueued writes wait
// (beyond, a write is dropped, logged and counted: the policy stays in
// memory and is written again when next fetched). The destructor finishes
// the writes queued.
//
// A cache file that cannot be used is logged (and counted) and the store
// keeps policies in memory: it never stops the daemon. read_only (for
// `tlspolicy query`) reads the file when it can and never creates or writes it.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "discovery/mta_sts_policy.hpp"
#include "discovery/sts_cache.hpp"
#include "policy/stats.hpp"

namespace tlspolicy::sts {

// MTA-STS counters for the daemon's metrics (relaxed atomics: the loop
// adds, a scrape reads). Process-wide, so a reload keeps them.
struct StsStats {
  Counter fetches_started;  // HTTPS transfers started (coalesced waiters not counted)
  Counter fetches_ok;       // ... that gave a valid policy
  Counter fetches_failed;   // ... that did not (HTTP, TLS, size, timeout, invalid policy, refused)
  Counter refreshes;        // of those started: proactive refreshes of a policy in use near its expiry
  Counter would_enforce;    // discoveries where a testing policy applied (it would enforce in enforce mode)
  Counter enforced;         // discoveries where an enforce policy applied
  Counter cache_errors;     // persistent cache problems (unreadable, corrupt, failed writes): logged
  std::atomic<int64_t> policies{0};  // policies in the store now
};
StsStats& sts_stats();

class PolicyStore {
 public:
  // level: true for an error, false for information.
  using Log = std::function<void(bool error, std::string_view)>;
  struct Entry {
    CachedPolicy cached;
    std::optional<Policy> policy;  // parsed once, at load or store
    int64_t refresh_tried = 0;     // unix time of the last proactive refresh started
  };

  PolicyStore(const std::string& path, size_t max_entries, bool read_only, Log log);
  ~PolicyStore();
  PolicyStore(const PolicyStore&) = delete;
  PolicyStore& operator=(const PolicyStore&) = delete;

  // The policy cached for domain (expired or not), or nullptr. Memory only.
  Entry* find(const std::string& domain);
  // A fetched policy (new or refreshed): memory, then the file.
  void store(const CachedPolicy& p);
  // A "none" policy: dropped from memory and the file.
  void erase(const std::string& domain);

  size_t size() const { return index_.size(); }
  const std::string& path() const { return path_; }
  bool read_only() const { return read_only_; }
  bool persistent() const { return cache_ && cache_->persistent(); }
  void set_max_entries(size_t n) { max_entries_ = n; }
  void log(bool error, std::string_view msg) const;
  // Waits until the writes queued so far are in the file (tests).
  void flush();

  static constexpr size_t kMaxQueued = 10000;

 private:
  void evict();
  // Queues one write for the writer thread (started on first use).
  void write(std::function<void(PolicyCache&)> op);
  std::mutex mutex_;
  std::condition_variable wake_, idle_;
  std::deque<std::function<void(PolicyCache&)>> queue_;
  bool stop_ = false, busy_ = false;
  std::thread writer_;
  std::string path_;
  size_t max_entries_;
  bool read_only_;
  Log log_;
  std::unique_ptr<PolicyCache> cache_;
  std::unordered_map<std::string, Entry> index_;
};

}  // namespace tlspolicy::sts
