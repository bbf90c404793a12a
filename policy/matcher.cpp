// Entry insertion with conflict detection (lookups are inline in the header).
#include "policy/matcher.hpp"

namespace tlspolicy {

std::string_view hit_kind_words(HitKind k) {
  switch (k) {
    case HitKind::address: return "the address";
    case HitKind::local_part: return "the local part";
    case HitKind::exact_domain: return "the domain";
    case HitKind::parent_domain: return "a parent domain";
    case HitKind::cidr: return "an address range";
    case HitKind::any: return "\"*\"";
    case HitKind::null_sender: return "the null sender";
  }
  return "?";
}

namespace {
// Fills an empty slot, or reports the occupant when it disagrees.
uint32_t claim(uint32_t& slot, uint32_t id, const std::function<bool(uint32_t)>& compatible) {
  if (slot == Matcher::kNone) {
    slot = id;
    return Matcher::kNone;
  }
  return compatible(slot) ? Matcher::kNone : slot;
}
}  // namespace

uint32_t Matcher::add(const Entry& e, uint32_t id,
                      const std::function<bool(uint32_t)>& compatible) {
  ++size_;
  switch (e.kind) {
    case EntryKind::domain: {
      auto& n = domains_.node(e.key);
      uint32_t c = claim(n.self, id, compatible);
      return c != kNone ? c : claim(n.sub, id, compatible);
    }
    case EntryKind::exact_domain: return claim(domains_.node(e.key).self, id, compatible);
    case EntryKind::subdomains_only: return claim(domains_.node(e.key).sub, id, compatible);
    case EntryKind::address: return claim(addresses_.try_emplace(e.key, kNone).first->second, id, compatible);
    case EntryKind::local_part:
      return claim(local_parts_.try_emplace(e.key, kNone).first->second, id, compatible);
    case EntryKind::any: return claim(any_, id, compatible);
    case EntryKind::null_sender: return claim(null_sender_, id, compatible);
    case EntryKind::cidr: return claim((e.addr.v6 ? v6_ : v4_).slot(e.addr, e.prefix), id, compatible);
  }
  return kNone;
}

}  // namespace tlspolicy
