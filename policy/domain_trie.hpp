// A reversed-label domain trie: "sales.example.com" is stored as the path
// com -> example -> sales. Each node has two slots: one for the domain itself
// and one for everything below it. Nodes live in one open-addressing hash
// table keyed by (parent node id, label), each entry holding its node's
// slots, with labels in a byte arena: a node costs about 30 bytes, the trie
// is two flat arrays (cheap to build, free and walk), and a lookup is one
// probe per label of the key (a cache miss for the entry, one for the label).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
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

  size_t node_count() const { return used_ + 1; }
  // Makes room for about n more nodes at once (no rehash on the way there).
  void reserve(size_t n);

 private:
  // All zero bytes = an empty entry, so the table is calloc'ed: pages of a
  // big table are only touched (and counted in RSS) as entries land in them.
  struct Edge {
    uint32_t parent;     // parent node id
    uint32_t child;      // this node's id (never 0, the root's: 0 marks empty)
    uint32_t label_off;
    uint32_t tag_len;    // the hash's top 24 bits above 8 bits of label length
    Slots slots;         // this node's values
  };
  // Comparing tags first spares the label bytes (another cache miss) on
  // almost every probe that is not the one we are looking for. The slot
  // index comes from the same 24 bits, so growing needs no label reads.
  static uint32_t tag_len(uint32_t h, size_t len) { return (h & 0xffffff00u) | uint32_t(len); }
  static size_t index(uint32_t h, size_t mask) { return (h >> 8) & mask; }
  static uint32_t hash(uint32_t parent, std::string_view label) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t(parent) * 0x9E3779B97F4A7C15ull);
    for (unsigned char c : label) h = (h ^ c) * 1099511628211ull;
    return uint32_t(h ^ (h >> 32));
  }
  // Index of the slot holding (parent, label), or of the empty slot where it would go.
  size_t find_slot(uint32_t parent, std::string_view label, uint32_t h) const {
    size_t mask = cap_ - 1;
    for (size_t i = index(h, mask);; i = (i + 1) & mask) {
      const Edge& e = edges_[i];
      if (e.child == 0) return i;
      if (e.parent == parent && e.tag_len == tag_len(h, label.size()) &&
          std::memcmp(labels_.data() + e.label_off, label.data(), label.size()) == 0)
        return i;
    }
  }
  const Edge* find(uint32_t parent, std::string_view label) const {
    if (label.size() > 255) return nullptr;  // keeps the length inside its 8 bits
    const Edge& e = edges_[find_slot(parent, label, hash(parent, label))];
    return e.child == 0 ? nullptr : &e;
  }
  void rehash(size_t cap);
  struct Free {
    void operator()(Edge* p) const { std::free(p); }
  };

  Slots root_;  // node 0, the root (never holds values: no entry is empty)
  size_t cap_ = 16;
  std::unique_ptr<Edge[], Free> edges_{static_cast<Edge*>(std::calloc(16, sizeof(Edge)))};
  size_t used_ = 0;
  std::string labels_;
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
    // An empty label ("x..partner.test"): not a domain, but whatever it is,
    // it is below the parents walked so far, so their rules still apply.
    if (start == end) break;
    const Edge* e = find(n, key.substr(start, end - start));
    if (!e) break;
    n = e->child;
    if (start == 0) {  // reached the key's own node
      if (!sub_only && e->slots.self != kNone && !f(Hit{e->slots.self, 0, true})) return;
      if (sub_only && e->slots.sub != kNone && nseen < 128) seen[nseen++] = {e->slots.sub, 0};
      break;
    }
    if (e->slots.sub != kNone && nseen < 128) seen[nseen++] = {e->slots.sub, start};
    end = dot;
  }
  for (int i = nseen - 1; i >= 0; --i)
    if (!f(Hit{seen[i].value, seen[i].offset, false})) return;
}

}  // namespace tlspolicy
