// The Discoverer's cache of completed destinations' facts: destination ->
// (facts, expiry), bounded by DiscoverySettings::cache_entries.
//
// A cache hit is on the path of every socketmap request an MX-aware rule
// or DANE could change, so it has to cost about what a static answer does.
// Hand-written (not std::unordered_map + an LRU std::list, as before)
// because that cost ~1 us more daemon CPU per hit on a 100k-entry table
// (bench/discovery.sh: ~5.5 against ~4.5 us user CPU per hit): a hash
// node, a key string and a list node per entry, each a cache miss, and a
// splice (a write to three nodes) per hit.
// Here: one flat array, linear probing, each slot holding its full hash,
// expiry, facts and (up to kInlineKey bytes) its key, so a hit is usually
// one cache line; lookups take a string_view (no allocation); eviction is
// CLOCK (second chance): a hit sets a bit in its own slot, and the eviction
// hand clears bits and takes the first slot without one. No tombstones:
// erase shifts the following slots back (the standard linear-probing
// deletion), so the table never degrades with churn. No Debian library
// offers this (absl/folly/tsl are not packaged as C++ libraries the build
// could use without adding a large dependency for one table).
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "policy/facts.hpp"

namespace tlspolicy {

class FactsCache {
 public:
  using Clock = std::chrono::steady_clock;
  using Facts = std::shared_ptr<const DestinationFacts>;

  // max_entries: the bound (0: keep nothing).
  explicit FactsCache(size_t max_entries = 0) : max_(max_entries) {}
  ~FactsCache();
  FactsCache(const FactsCache&) = delete;
  FactsCache& operator=(const FactsCache&) = delete;

  // The facts of `destination` while now < their expiry, else nullptr (an
  // expired entry is dropped here).
  Facts get(std::string_view destination, Clock::time_point now);
  // Stores (or replaces) an entry; at the bound, evicts one first (CLOCK).
  void put(std::string_view destination, Facts facts, Clock::time_point expires);
  void erase(std::string_view destination);
  size_t size() const { return size_; }
  size_t max_entries() const { return max_; }
  // Slots in the table now (a power of two; for the tests and the bench).
  size_t capacity() const { return mask_ ? mask_ + 1 : 0; }

 private:
  static constexpr size_t kInlineKey = 24;  // most destinations fit: no pointer to follow
  struct Slot {
    uint64_t hash = 0;  // 0: empty (a stored hash always has its top bit set)
    Clock::time_point expires{};
    Facts facts;
    uint32_t len = 0;
    bool ref = false;  // CLOCK's bit: used since the hand last passed
    union {
      char in[kInlineKey];
      char* out;  // len > kInlineKey: new[]'d
    } key;
    std::string_view key_view() const { return {len > kInlineKey ? key.out : key.in, len}; }
  };
  static uint64_t hash_of(std::string_view k);
  // The slot holding `k`, or SIZE_MAX.
  size_t find(std::string_view k, uint64_t h) const;
  void remove_at(size_t i);  // empties slot i, shifting followers back
  void evict_one();
  void grow();
  static void clear(Slot& s);
  static void move(Slot& to, Slot& from);

  size_t max_;
  std::unique_ptr<Slot[]> slots_;
  size_t mask_ = 0;  // capacity - 1 (0: no table yet)
  size_t size_ = 0;
  size_t hand_ = 0;  // CLOCK's hand
};

}  // namespace tlspolicy
