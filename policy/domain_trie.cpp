// Node creation for the domain trie (lookups are inline in the header).
#include "policy/domain_trie.hpp"

#include <cstring>

namespace tlspolicy {

std::string_view DomainTrie::keep(std::string_view label) {
  if (label.size() > arena_left_) {
    size_t size = std::max<size_t>(64 * 1024, label.size());
    arena_.push_back(std::make_unique<char[]>(size));
    arena_next_ = arena_.back().get();
    arena_left_ = size;
  }
  std::memcpy(arena_next_, label.data(), label.size());
  std::string_view kept(arena_next_, label.size());
  arena_next_ += label.size();
  arena_left_ -= label.size();
  return kept;
}

DomainTrie::Slots& DomainTrie::node(std::string_view domain) {
  uint32_t n = 0;
  size_t end = domain.size();
  while (end > 0) {
    size_t dot = domain.rfind('.', end - 1);
    size_t start = dot == std::string_view::npos ? 0 : dot + 1;
    auto label = domain.substr(start, end - start);
    uint32_t c = child(n, label);
    if (c == kNone) {
      c = static_cast<uint32_t>(nodes_.size());
      nodes_.emplace_back();
      edges_.emplace(Edge{n, keep(label)}, c);
    }
    n = c;
    if (start == 0) break;
    end = dot;
  }
  return nodes_[n];
}

}  // namespace tlspolicy
