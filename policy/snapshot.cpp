// Small helpers of the compiled policy. See snapshot.hpp.
#include "policy/snapshot.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <unordered_set>

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

std::string_view dane_mode_name(DaneMode m) {
  switch (m) {
    case DaneMode::off: return "off";
    case DaneMode::dane: return "dane";
    case DaneMode::dane_only: return "dane-only";
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
  for (auto& r : rules) n += (r.direction == d && !r.is_default && r.enabled);
  return n;
}

size_t Snapshot::entry_count(uint32_t rule) const {
  size_t n = 0;
  for (auto& e : entries) n += e.rule == rule;
  return n;
}

std::string Snapshot::summary() const {
  std::string off;
  if (!disabled.empty()) {
    size_t n = 0;
    for (auto& e : entries) n += !rules[e.rule].enabled;
    off = fmt::format(", {} disabled rule{} ({} entries not in force)", disabled.size(),
                      disabled.size() == 1 ? "" : "s", n);
  }
  auto out = fmt::format("{} outbound rules ({} destination entries, {} sender entries), {} inbound rules ({} sender, "
                     "{} recipient, {} client entries), default {}",
                     rule_count(Direction::outbound), destinations.size(), senders.size(),
                     rule_count(Direction::inbound), inbound_senders.size(), inbound_recipients.size(),
                     clients.size(),
                     default_rule == kNone ? std::string("unset (Postfix's smtp_tls_security_level applies)")
                                           : rules[default_rule].policy.value());
  out += off;
  const auto& d = settings.discovery;
  if (d.configured) {
    size_t aware = 0;
    for (auto& r : rules) aware += r.enabled && r.mx_aware;
    out += fmt::format("; discovery {}: {} MX-aware rule{} ({} mx: entries), dane {}, DNS {}", needs_dns ? "on" : "unused",
                       aware, aware == 1 ? "" : "s", mx_names.size(), dane_mode_name(d.dane),
                       d.forwarders.empty() ? std::string("from the root")
                                            : fmt::format("via {}", fmt::join(d.forwarders, " ")));
    // (Only when on, so that summaries of configurations without MTA-STS
    // read as before.)
    if (d.mta_sts.enabled)
      out += fmt::format(", MTA-STS on ({} first)",
                         d.order.front() == DiscoveredSource::dane ? "DANE" : "MTA-STS");
    size_t overrides = 0;
    for (auto& r : rules) overrides += r.enabled && r.override_discovery;
    if (overrides) out += fmt::format(", {} override rule{}", overrides, overrides == 1 ? "" : "s");
  }
  return out;
}

bool Snapshot::entry_enforces(uint32_t e) const {
  const Rule& r = rules[entries[e].rule];
  if (!r.enabled) return false;
  return r.direction == Direction::outbound ? enforces_tls(r.policy.level)
                                            : r.require_tls && r.action != Action::monitor;
}

size_t Snapshot::enforcing_entries() const {
  size_t n = 0;
  for (uint32_t e = 0; e < entries.size(); ++e) n += entry_enforces(e);
  return n;
}

namespace {
// The name an entry stands for, whatever way it is written (case, U-label
// or A-label, brackets): what the guard compares when texts differ.
std::string entry_key(std::string_view text) {
  std::string err;
  if (auto e = parse_entry(text, Dimension::destination, true, &err)) {
    if (e->kind == EntryKind::cidr) return fmt::format("{}/{}", format_ip(e->addr), e->prefix);
    return std::string(e->kind == EntryKind::subdomains_only ? "." : "") + e->key;
  }
  return lowercase(text);
}

template <class Key>
Shrink shrink_by(const Snapshot& before, const Snapshot& after, size_t limit, Key key) {
  Shrink s;
  std::unordered_set<std::string> kept;
  for (uint32_t e = 0; e < after.entries.size(); ++e)
    if (after.entry_enforces(e)) kept.insert(key(after.text(e)));
  s.after = after.enforcing_entries();
  for (uint32_t e = 0; e < before.entries.size(); ++e) {
    if (!before.entry_enforces(e)) continue;
    ++s.before;
    if (kept.count(key(before.text(e)))) continue;
    if (s.gone++ < limit) s.examples.push_back(fmt::format("{} ({})", before.text(e), before.where_entry(e)));
  }
  return s;
}
}  // namespace

Shrink enforcing_shrink(const Snapshot& before, const Snapshot& after, size_t limit) {
  // By text first (cheap: a 1M-entry reload pays no parsing); only when
  // texts went, by the names they stand for, so that rewriting an entry
  // (bücher.test for xn--bcher-kva.test, another case) is not a loss.
  Shrink s = shrink_by(before, after, limit, [](std::string_view t) { return std::string(t); });
  if (s.gone == 0) return s;
  return shrink_by(before, after, limit, entry_key);
}

bool Snapshot::bounces(uint32_t rule) const {
  if (rule == kNone) return false;
  const Rule& r = rules[rule];
  if (r.direction != Direction::outbound || !enforces_tls(r.policy.level)) return false;
  OnFailure f = r.on_failure == OnFailure::inherit ? settings.on_failure : r.on_failure;
  return f == OnFailure::bounce;
}

}  // namespace tlspolicy
