// A reversed-label domain trie: "sales.example.com" is stored as the path
// com -> example -> sales. Each node has two slots: one for the domain itself
// and one for everything below it. Edges live in one hash table keyed by
// (parent node, label), labels in an append-only arena, so a node costs a few
// dozen bytes and a lookup is one hash probe per label of the key.
#pragma once
#include <cstdint>
#include <memory>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tlspolicy {

class DomainTrie {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;
  struct Slots {
    uint32_t self = kNone;  // matches exactly this domain
    uint32_t sub = kNone;   // matches any domain below this one
  };

  // Finds or creates the node for a lowercase, validated domain.
  Slots& node(std::string_view domain);

  struct Hit {
    uint32_t value;
    size_t offset;  // the matched domain is key.substr(offset)
    bool exact;     // matched the key itself, not a parent
  };
  // Visits the hits for a lowercase key, most specific first: the key's own
  // node (unless sub_only, used for Postfix's ".parent" keys), then parent
  // domains from nearest to farthest. The visitor returns false to stop.
  template <class F>
  void visit(std::string_view key, bool sub_only, F&& f) const;

  size_t node_count() const { return nodes_.size(); }

 private:
  struct Edge {
    uint32_t parent;
    std::string_view label;
    bool operator==(const Edge&) const = default;
  };
  struct EdgeHash {
    size_t operator()(const Edge& e) const {
      return std::hash<std::string_view>{}(e.label) * 31 + e.parent;
    }
  };
  uint32_t child(uint32_t parent, std::string_view label) const {
    auto it = edges_.find(Edge{parent, label});
    return it == edges_.end() ? kNone : it->second;
  }
  std::string_view keep(std::string_view label);

  std::vector<Slots> nodes_{1};  // node 0 is the root
  std::unordered_map<Edge, uint32_t, EdgeHash> edges_;
  std::vector<std::unique_ptr<char[]>> arena_;
  size_t arena_left_ = 0;
  char* arena_next_ = nullptr;
};

template <class F>
void DomainTrie::visit(std::string_view key, bool sub_only, F&& f) const {
  // Walk from the top-level label down, remembering the sub slots seen on
  // the way; they are reported nearest-first afterwards.
  struct Seen {
    uint32_t value;
    size_t offset;
  };
  Seen seen[128];
  int nseen = 0;
  uint32_t n = 0;
  size_t end = key.size();
  while (end > 0) {
    size_t dot = key.rfind('.', end - 1);
    size_t start = dot == std::string_view::npos ? 0 : dot + 1;
    if (start == end) return;  // empty label: not a domain
    uint32_t c = child(n, key.substr(start, end - start));
    if (c == kNone) break;
    n = c;
    if (start == 0) {  // reached the key's own node
      if (!sub_only && nodes_[n].self != kNone && !f(Hit{nodes_[n].self, 0, true})) return;
      if (sub_only && nodes_[n].sub != kNone && nseen < 128) seen[nseen++] = {nodes_[n].sub, 0};
      break;
    }
    if (nodes_[n].sub != kNone && nseen < 128) seen[nseen++] = {nodes_[n].sub, start};
    end = dot;
  }
  for (int i = nseen - 1; i >= 0; --i)
    if (!f(Hit{seen[i].value, seen[i].offset, false})) return;
}

}  // namespace tlspolicy
