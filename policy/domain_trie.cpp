// Node creation for the domain trie (lookups are inline in the header).
#include "policy/domain_trie.hpp"

#include <new>

namespace tlspolicy {

// Moves every entry into a table of cap slots (a power of two).
void DomainTrie::rehash(size_t cap) {
  std::unique_ptr<Edge[], Free> fresh(static_cast<Edge*>(std::calloc(cap, sizeof(Edge))));
  if (!fresh) throw std::bad_alloc();
  size_t mask = cap - 1;
  bool tag_bits_enough = cap <= (size_t(1) << 24);
  for (size_t j = 0; j < cap_; ++j) {
    const Edge& e = edges_[j];
    if (e.child == 0) continue;
    uint32_t h = tag_bits_enough ? e.tag_len
                                 : hash(e.parent, std::string_view(labels_).substr(e.label_off, e.tag_len & 0xff));
    size_t i = index(h, mask);
    while (fresh[i].child != 0) i = (i + 1) & mask;
    fresh[i] = e;
  }
  edges_ = std::move(fresh);
  cap_ = cap;
}

void DomainTrie::reserve(size_t n) {
  size_t want = (used_ + n) * 4 / 3 + 1;
  size_t cap = cap_;
  while (cap < want) cap *= 2;
  if (cap != cap_) rehash(cap);
}

DomainTrie::Slots& DomainTrie::node(std::string_view domain) {
  uint32_t n = 0;
  Slots* slots = &root_;
  size_t end = domain.size();
  while (end > 0) {
    size_t dot = domain.rfind('.', end - 1);
    size_t start = dot == std::string_view::npos ? 0 : dot + 1;
    auto label = domain.substr(start, end - start);
    uint32_t h = hash(n, label);
    size_t slot = find_slot(n, label, h);
    if (edges_[slot].child == 0) {
      edges_[slot] = Edge{n, uint32_t(used_ + 1), uint32_t(labels_.size()), tag_len(h, label.size()), Slots{}};
      labels_.append(label);
      if (++used_ * 4 > cap_ * 3) {  // keep the load factor at or under 3/4
        rehash(cap_ * 2);
        slot = find_slot(n, label, h);
      }
    }
    n = edges_[slot].child;
    slots = &edges_[slot].slots;
    if (start == 0) break;
    end = dot;
  }
  return *slots;
}

}  // namespace tlspolicy
