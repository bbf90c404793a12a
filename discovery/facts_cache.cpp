// See facts_cache.hpp.
#include "discovery/facts_cache.hpp"

#include <cstring>
#include <functional>
#include <utility>

namespace tlspolicy {

namespace {
constexpr size_t kFirstCapacity = 64;
// Grow when more than 3/4 full (linear probing stays short below that).
bool over_load(size_t n, size_t capacity) { return n * 4 > capacity * 3; }
}  // namespace

FactsCache::~FactsCache() {
  if (!slots_) return;
  for (size_t i = 0; i <= mask_; ++i) clear(slots_[i]);
}

uint64_t FactsCache::hash_of(std::string_view k) {
  return uint64_t(std::hash<std::string_view>{}(k)) | (uint64_t(1) << 63);
}

void FactsCache::clear(Slot& s) {
  if (s.len > kInlineKey) delete[] s.key.out;
  s.hash = 0;
  s.len = 0;
  s.ref = false;
  s.facts.reset();
}

// `to` is empty; `from` is left empty (its key storage moves with it).
void FactsCache::move(Slot& to, Slot& from) {
  to.hash = from.hash;
  to.expires = from.expires;
  to.facts = std::move(from.facts);
  to.len = from.len;
  to.ref = from.ref;
  to.key = from.key;
  from.hash = 0;
  from.len = 0;
  from.ref = false;
}

size_t FactsCache::find(std::string_view k, uint64_t h) const {
  if (!slots_) return SIZE_MAX;
  for (size_t i = h & mask_;; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.hash == 0) return SIZE_MAX;
    if (s.hash == h && s.key_view() == k) return i;
  }
}

FactsCache::Facts FactsCache::get(std::string_view destination, Clock::time_point now) {
  size_t i = find(destination, hash_of(destination));
  if (i == SIZE_MAX) return nullptr;
  Slot& s = slots_[i];
  if (now >= s.expires) {
    remove_at(i);
    return nullptr;
  }
  if (!s.ref) s.ref = true;
  return s.facts;
}

void FactsCache::put(std::string_view destination, Facts facts, Clock::time_point expires) {
  if (max_ == 0) return;
  uint64_t h = hash_of(destination);
  if (size_t i = find(destination, h); i != SIZE_MAX) {
    slots_[i].facts = std::move(facts);
    slots_[i].expires = expires;
    slots_[i].ref = true;
    return;
  }
  if (size_ >= max_) evict_one();
  if (!slots_ || over_load(size_ + 1, mask_ + 1)) grow();
  size_t i = h & mask_;
  while (slots_[i].hash != 0) i = (i + 1) & mask_;
  Slot& s = slots_[i];
  s.hash = h;
  s.expires = expires;
  s.facts = std::move(facts);
  s.len = uint32_t(destination.size());
  s.ref = false;  // earns its second chance by a hit
  char* k = s.key.in;
  if (s.len > kInlineKey) k = s.key.out = new char[s.len];
  std::memcpy(k, destination.data(), s.len);
  ++size_;
}

void FactsCache::erase(std::string_view destination) {
  if (size_t i = find(destination, hash_of(destination)); i != SIZE_MAX) remove_at(i);
}

// Linear probing's deletion without tombstones: every following slot of the
// run whose home lies outside (i, j] moves back into the hole.
void FactsCache::remove_at(size_t i) {
  clear(slots_[i]);
  --size_;
  for (size_t j = (i + 1) & mask_; slots_[j].hash != 0; j = (j + 1) & mask_) {
    size_t home = slots_[j].hash & mask_;
    bool between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (between) continue;
    move(slots_[i], slots_[j]);
    i = j;
  }
}

// CLOCK: the hand clears the bits of the slots it passes and evicts the
// first one without; at most two turns of the table.
void FactsCache::evict_one() {
  if (size_ == 0) return;
  for (;;) {
    hand_ &= mask_;
    Slot& s = slots_[hand_];
    if (s.hash != 0) {
      if (!s.ref) {
        remove_at(hand_);  // a follower may move into hand_: it is looked at next
        return;
      }
      s.ref = false;
    }
    ++hand_;
  }
}

void FactsCache::grow() {
  size_t cap = slots_ ? (mask_ + 1) * 2 : kFirstCapacity;
  std::unique_ptr<Slot[]> old = std::move(slots_);
  size_t old_cap = old ? mask_ + 1 : 0;
  slots_.reset(new Slot[cap]);
  mask_ = cap - 1;
  hand_ = 0;
  for (size_t j = 0; j < old_cap; ++j) {
    if (old[j].hash == 0) continue;
    size_t i = old[j].hash & mask_;
    while (slots_[i].hash != 0) i = (i + 1) & mask_;
    move(slots_[i], old[j]);
  }
}

}  // namespace tlspolicy
