// One lookup dimension (destinations, senders, inbound recipients, clients...):
// every entry kind indexed in the structure that suits it. Values are entry
// ids; the snapshot maps them to rules. Lookups report hits most specific
// first: address > local part > exact domain > nearest parent domain >
// longest CIDR prefix > "*". The first hit decides; the rest explain.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "policy/cidr_tree.hpp"
#include "policy/domain_trie.hpp"
#include "policy/names.hpp"

namespace tlspolicy {

enum class HitKind { address, local_part, exact_domain, parent_domain, cidr, any, null_sender };
std::string_view hit_kind_words(HitKind k);

struct Hit {
  uint32_t entry;
  HitKind kind;
  std::string_view matched;  // the domain that matched (a suffix of the key), if any
  int prefix = 0;            // for cidr
};

class Matcher {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  // Indexes an entry. Where a slot is taken already, compatible(existing) says
  // whether the two entries agree; the first one that does not is returned so
  // the caller can report both. Returns kNone when the entry is in.
  uint32_t add(const Entry& e, uint32_t id, const std::function<bool(uint32_t)>& compatible);

  template <class F>
  void visit_domain(std::string_view key, bool sub_only, F&& f) const {
    domains_.visit(key, sub_only, [&](const DomainTrie::Hit& h) {
      return f(Hit{h.value, h.exact ? HitKind::exact_domain : HitKind::parent_domain,
                   key.substr(h.offset)});
    });
  }

  // key: lowercase "local@domain", extension already stripped.
  template <class F>
  void visit_address(std::string_view key, F&& f) const {
    auto at = key.rfind('@');
    if (at == std::string_view::npos) return;
    if (!addresses_.empty()) {
      auto it = addresses_.find(key);
      if (it != addresses_.end() && !f(Hit{it->second, HitKind::address, {}})) return;
    }
    if (!local_parts_.empty()) {
      auto it = local_parts_.find(key.substr(0, at));
      if (it != local_parts_.end() && !f(Hit{it->second, HitKind::local_part, {}})) return;
    }
    bool go_on = true;
    visit_domain(key.substr(at + 1), false, [&](const Hit& h) { return go_on = f(h); });
    if (go_on && any_ != kNone) f(Hit{any_, HitKind::any, {}});
  }

  // An IPv4-mapped address (a milter client on a dual-stack socket) is
  // looked up as the IPv4 address it stands for.
  template <class F>
  void visit_ip(const IpAddr& ip, F&& f) const {
    const IpAddr a = ip.v6 ? unmap_v4(ip) : ip;
    (a.v6 ? v6_ : v4_).visit(a, [&](uint32_t v, int prefix) {
      return f(Hit{v, HitKind::cidr, {}, prefix});
    });
  }

  // The null sender "<>": only its own entry matches it, "*" does not.
  template <class F>
  void visit_null_sender(F&& f) const {
    if (null_sender_ != kNone) f(Hit{null_sender_, HitKind::null_sender, {}});
  }

  size_t size() const { return size_; }  // entries indexed
  void reserve_domains(size_t n) { domains_.reserve(n); }
  size_t trie_nodes() const { return domains_.node_count(); }

 private:
  struct StrHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using StrMap = std::unordered_map<std::string, uint32_t, StrHash, std::equal_to<>>;

  DomainTrie domains_;
  CidrTree v4_, v6_;
  StrMap addresses_, local_parts_;
  uint32_t any_ = kNone;
  uint32_t null_sender_ = kNone;
  size_t size_ = 0;
};

}  // namespace tlspolicy
