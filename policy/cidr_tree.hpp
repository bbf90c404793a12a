// Longest-prefix match for IPv4 and IPv6: a binary trie over address bits,
// nodes in one vector. A /24 costs at most 24 nodes of 12 bytes; a lookup is
// at most 32 (or 128) array steps and never scans the rule list.
#pragma once
#include <cstdint>
#include <vector>

#include "policy/names.hpp"

namespace tlspolicy {

class CidrTree {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  // The value slot for a network (bits past prefix are ignored).
  uint32_t& slot(const IpAddr& a, int prefix) {
    uint32_t n = 0;
    for (int b = 0; b < prefix; ++b) {
      int bit = (a.bytes[b / 8] >> (7 - b % 8)) & 1;
      if (nodes_[n].child[bit] == kNone) {
        nodes_[n].child[bit] = static_cast<uint32_t>(nodes_.size());
        nodes_.emplace_back();
      }
      n = nodes_[n].child[bit];
    }
    return nodes_[n].value;
  }

  // Visits matching networks, longest prefix first; visitor(value, prefix)
  // returns false to stop.
  template <class F>
  void visit(const IpAddr& a, F&& f) const {
    struct Seen {
      uint32_t value;
      int prefix;
    };
    Seen seen[129];
    int nseen = 0;
    uint32_t n = 0;
    for (int b = 0;; ++b) {
      if (nodes_[n].value != kNone) seen[nseen++] = {nodes_[n].value, b};
      if (b == a.bits()) break;
      int bit = (a.bytes[b / 8] >> (7 - b % 8)) & 1;
      n = nodes_[n].child[bit];
      if (n == kNone) break;
    }
    for (int i = nseen - 1; i >= 0; --i)
      if (!f(seen[i].value, seen[i].prefix)) return;
  }

  size_t node_count() const { return nodes_.size(); }

 private:
  struct Node {
    uint32_t child[2] = {kNone, kNone};
    uint32_t value = kNone;
  };
  std::vector<Node> nodes_{1};
};

}  // namespace tlspolicy
