// See sts_store.hpp.
#include "discovery/sts_store.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <ctime>

#include <unistd.h>

#include "policy/names.hpp"

namespace tlspolicy::sts {

StsStats& sts_stats() {
  static StsStats s;
  return s;
}

PolicyStore::PolicyStore(const std::string& path, size_t max_entries, bool read_only, Log log)
    : path_(path), max_entries_(std::max<size_t>(1, max_entries)), read_only_(read_only), log_(std::move(log)) {
  CacheOptions o;
  o.path = path;
  o.max_entries = max_entries_;
  o.read_only = read_only;
  o.log = [this](std::string_view msg) {
    sts_stats().cache_errors.add();
    this->log(true, msg);
  };
  // Read only and no file: nothing to read, and nothing to say about it.
  if (read_only_ && ::access(path.c_str(), F_OK) != 0) return;
  cache_ = std::make_unique<PolicyCache>(std::move(o));
  int64_t now = int64_t(std::time(nullptr));
  if (!read_only_) cache_->purge_expired(now);
  size_t bad = 0;
  for (auto& p : cache_->all()) {
    if (p.expires <= now) continue;
    auto parsed = parse_policy(p.text);
    if (!parsed.policy) {  // a row we wrote but cannot read back: drop it
      ++bad;
      if (!read_only_) cache_->erase(p.domain);
      continue;
    }
    std::string d = p.domain;
    index_[d] = Entry{std::move(p), std::move(parsed.policy), 0};
  }
  if (bad) {
    sts_stats().cache_errors.add(bad);
    this->log(true, fmt::format("MTA-STS cache {}: {} unreadable polic{} dropped", printable(path_), bad,
                                bad == 1 ? "y" : "ies"));
  }
  evict();
  sts_stats().policies.store(int64_t(index_.size()), std::memory_order_relaxed);
  this->log(false, fmt::format("MTA-STS cache {}: {} polic{} loaded{}{}", printable(path_), index_.size(),
                               index_.size() == 1 ? "y" : "ies", read_only_ ? " (read only)" : "",
                               cache_->persistent() || read_only_ ? "" : " (kept in memory only)"));
}

void PolicyStore::log(bool error, std::string_view msg) const {
  if (log_) log_(error, msg);
  else std::fprintf(stderr, "%.*s\n", int(msg.size()), msg.data());
}

PolicyStore::Entry* PolicyStore::find(const std::string& domain) {
  auto it = index_.find(domain);
  return it == index_.end() ? nullptr : &it->second;
}

PolicyStore::~PolicyStore() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (writer_.joinable()) writer_.join();
}

void PolicyStore::write(std::function<void(PolicyCache&)> op) {
  if (read_only_ || !cache_) return;
  {
    std::lock_guard lock(mutex_);
    if (queue_.size() >= kMaxQueued) {
      sts_stats().cache_errors.add();
      return;  // (not logged here: a flood would flood the log; the counter says it)
    }
    queue_.push_back(std::move(op));
    if (!writer_.joinable())
      writer_ = std::thread([this] {
        std::unique_lock lock(mutex_);
        for (;;) {
          wake_.wait(lock, [this] { return stop_ || !queue_.empty(); });
          if (queue_.empty()) return;  // stop_, and everything written
          auto next = std::move(queue_.front());
          queue_.pop_front();
          busy_ = true;
          lock.unlock();
          next(*cache_);  // PolicyCache logs its own failures (thread-safe log)
          lock.lock();
          busy_ = false;
          if (queue_.empty()) idle_.notify_all();
        }
      });
  }
  wake_.notify_one();
}

void PolicyStore::flush() {
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [this] { return queue_.empty() && !busy_; });
}

void PolicyStore::store(const CachedPolicy& p) {
  auto parsed = parse_policy(p.text);
  if (!parsed.policy) return;  // after_fetch stores only policies that parsed
  auto& e = index_[p.domain];
  e.cached = p;
  e.policy = std::move(parsed.policy);
  write([p](PolicyCache& c) { c.put(p); });
  evict();
  sts_stats().policies.store(int64_t(index_.size()), std::memory_order_relaxed);
}

void PolicyStore::erase(const std::string& domain) {
  index_.erase(domain);
  write([domain](PolicyCache& c) { c.erase(domain); });
  sts_stats().policies.store(int64_t(index_.size()), std::memory_order_relaxed);
}

// Beyond max_entries, the least recently used go (as the file's own LRU
// bound does). A linear scan: it runs only when a fetch adds a policy.
void PolicyStore::evict() {
  while (index_.size() > max_entries_) {
    auto victim = std::min_element(index_.begin(), index_.end(), [](auto& a, auto& b) {
      return a.second.cached.last_used < b.second.cached.last_used;
    });
    index_.erase(victim);
  }
}

}  // namespace tlspolicy::sts
