// Node creation for the domain trie (lookups are inline in the header).
#include "policy/domain_trie.hpp"

namespace tlspolicy {

// Doubles the edge table; keeps the load factor at or under 3/4.
void DomainTrie::grow() {
  std::vector<Edge> old(edges_.size() * 2);
  old.swap(edges_);
  size_t mask = edges_.size() - 1;
  for (const Edge& e : old) {
    if (e.parent == kNone) continue;
    size_t i = hash(e.parent, std::string_view(labels_).substr(e.label_off, e.tag_len & 0xff)) & mask;
    while (edges_[i].parent != kNone) i = (i + 1) & mask;
    edges_[i] = e;
  }
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
    if (edges_[slot].parent == kNone) {
      edges_[slot] = Edge{n, uint32_t(used_ + 1), uint32_t(labels_.size()), tag_len(h, label.size()), {}};
      labels_.append(label);
      if (++used_ * 4 > edges_.size() * 3) {
        grow();
        slot = find_slot(n, label, hash(n, label));
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
