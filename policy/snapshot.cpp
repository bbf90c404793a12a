// Small helpers of the compiled policy. See snapshot.hpp.
#include "policy/snapshot.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "policy/names.hpp"

namespace tlspolicy {

std::string_view action_name(Action a) {
  switch (a) {
    case Action::reject: return "reject";
    case Action::tempfail: return "tempfail";
    case Action::monitor: return "monitor";
  }
  return "?";
}

int protocol_rank(std::string_view v) {
  constexpr std::string_view order[] = {"SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"};
  for (int i = 0; i < 6; ++i)
    if (order[i].size() == v.size() &&
        std::equal(v.begin(), v.end(), order[i].begin(), [](char a, char b) { return ascii_lower(a) == ascii_lower(b); }))
      return i + 1;
  return 0;
}

std::string Snapshot::where(const Rule& r) const { return fmt::format("{}:{}", printable(files[r.file]), r.line); }

std::string Snapshot::where_entry(uint32_t e) const {
  return fmt::format("{}:{}", printable(files[entries[e].file]), entries[e].line);
}

size_t Snapshot::rule_count(Direction d) const {
  size_t n = 0;
  for (auto& r : rules) n += (r.direction == d && !r.is_default);
  return n;
}

std::string Snapshot::summary() const {
  return fmt::format("{} outbound rules ({} destination entries, {} sender entries), {} inbound rules ({} sender, "
                     "{} recipient, {} client entries), default {}",
                     rule_count(Direction::outbound), destinations.size(), senders.size(),
                     rule_count(Direction::inbound), inbound_senders.size(), inbound_recipients.size(),
                     clients.size(),
                     default_rule == kNone ? std::string("unset (Postfix's smtp_tls_security_level applies)")
                                           : rules[default_rule].policy.value());
}

}  // namespace tlspolicy
