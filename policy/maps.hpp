// The questions front ends ask, answered from one snapshot. query() is the
// single code path behind `tlspolicy query`, the socketmap responder and (via
// the recipient/sender/inbound functions) the milter.
#pragma once
#include <charconv>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/facts.hpp"
#include "policy/snapshot.hpp"

namespace tlspolicy {

// One map per Postfix table, the inbound check, and Sendmail's access map
// (TLS_Srv:, TLS_Rcpt:, TLS_Clt:, Try_TLS: keys; the socket map name "access").
enum class MapName { tls_policy, transport, sender_transport, inbound, sendmail_access };
std::optional<MapName> parse_map_name(std::string_view name);
std::string_view map_name(MapName m);
constexpr const char* kMapNames = "tls-policy, transport, sender-transport, inbound, access";

// One rule that matched a lookup (entry == kNone for the default).
struct Step {
  uint32_t rule;
  uint32_t entry;
  HitKind kind;
  std::string matched;
  int prefix;
  // A match through discovery: "MX mx1.partner.example [207.219.44.9] in
  // 207.219.44.0/24" or "MX aspmx.l.google.com is mx:aspmx.l.google.com".
  std::string via = {};
};

struct Answer {
  bool found = false;
  // A temporary failure (DNS failed for a destination an MX-aware rule might
  // cover): the socketmap answers "TEMP <value>" and Postfix defers.
  bool temp = false;
  std::string value;
  uint32_t rule = kNone;  // the rule that decided (default included), for logs
  // Filled only when explaining: every rule that matched, the deciding one
  // first, and a sentence on how the answer follows from them.
  std::vector<Step> trail;
  std::string reasoning;
  // Explain only: the first entry of each disabled rule (enabled = false)
  // that would match the key, were the rule on.
  std::vector<uint32_t> disabled_hits;
  // Explain only, with facts: the DNS answers (name, type, data, DNSSEC
  // status, TTL), then every source's answer (the rule for the name,
  // MX-aware rules, DANE, MTA-STS, the default) and the discovered policy.
  std::vector<std::string> discovery;
  // Set whenever discovery decided or competed (TEMP, an MX-aware rule,
  // DANE, MTA-STS, a rule that won over a discovered policy), explain or
  // not: one line for the daemon's log, e.g. "MX mx1.partner.example
  // [207.219.44.9] in 207.219.44.0/24 at force-encrypt.list:3", "DANE: the
  // MX set is secure; 2 of 2 hosts with usable TLSA (...): dane-only",
  // "MTA-STS enforce (id 2026..., mx mail.partner.example), stricter than
  // rule \"x\" (may)", or the TEMP reason; with "MTA-STS testing (...)
  // would enforce secure match=...: not enforced in testing mode" appended
  // when sts_would_enforce. Empty when the static policy answered and
  // nothing discovered competed.
  std::string via;
  // Which source decided, for metrics and logs: "rule" (a rule for the
  // key), "mx-rule" (an MX-aware rule through the MX hosts), "dane",
  // "mta-sts", "default", "temp", "none" (NOTFOUND). Points to a literal.
  std::string_view source = "none";
  // An MTA-STS policy in testing mode would have decided this answer had it
  // been in enforce mode (RFC 8461: reported, not enforced).
  bool sts_would_enforce = false;
};

Answer query(const Snapshot& s, MapName map, std::string_view key, bool explain = false);
// Discovery. discovery_target(): the destination whose discovered facts
// could change this lookup's answer ("partner.example", "[mx.example]"), or
// "" when the static policy answers alone: no MX-aware rule, DANE or
// MTA-STS could apply, or a rule for the name decides that no discovered
// policy can beat (override = true, or a level at least as strict as any
// DANE/MTA-STS answer the settings allow). The caller discovers it
// (discovery/) and asks again with the facts; facts == nullptr is the
// static answer. explain = true: also when a rule for the name decides, so
// that --explain can show every source.
// Only the tls-policy map discovers: the transport map is keyed by recipient
// and routes by name; MX-aware rules act per next hop, through tls-policy.
// static_out: when given, receives the static answer (query(s, map, key,
// explain)), computed once here: the final answer when the target is "",
// else to hand to query(..., facts, static_answer) so that it is not
// computed twice per request.
std::string discovery_target(const Snapshot& s, MapName map, std::string_view key, bool explain = false,
                             Answer* static_out = nullptr);
// The merge of the admin's rules with the discovered facts (the precedence
// in man/tlspolicy.conf.5). static_answer: discovery_target()'s static_out
// for the same snapshot, key and explain flag, or nullptr to compute it.
Answer query(const Snapshot& s, MapName map, std::string_view key, bool explain,
             const DestinationFacts* facts, const Answer* static_answer = nullptr);
std::string explain_text(const Snapshot& s, MapName map, std::string_view key, const Answer& a);

// Effective outbound level of one recipient (address rule, else domain rule,
// else the default; may when nothing is known) and the rule behind it.
Level recipient_level(const Snapshot& s, std::string_view rcpt, uint32_t* rule);
// The level its domain (exact, nearest parent, else the default) gives a
// recipient, ignoring any rule for the address itself; may when nothing is
// known. *rule: the deciding rule or kNone.
Level domain_level(const Snapshot& s, std::string_view rcpt, uint32_t* rule);
// For one recipient, everything that decides how its mail leaves, in one
// answer: the transport map's answer, the next hop's tls-policy answer, the
// X-TLSLevel header the milter writes, and the rule behind each (`tlspolicy
// query -m effective`).
std::string effective_text(const Snapshot& s, std::string_view rcpt);
// Level required by an outbound sender rule; none when no rule matches.
Level sender_level(const Snapshot& s, std::string_view sender, uint32_t* rule);

// TLS facts of an inbound session, as Postfix's milter macros give them.
struct TlsFacts {
  std::string version;  // {tls_version}; empty = no TLS
  int bits = 0;         // {cipher_bits}
};

// {cipher_bits} or the inbound key's bits=: plain decimal digits in int's
// range, else 0 (a sign, garbage, overflow), so a minimum fails closed.
inline int parse_cipher_bits(std::string_view text) {
  int bits = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), bits);
  if (ec != std::errc() || end != text.data() + text.size() || bits < 0) return 0;
  return bits;
}

struct Verdict {
  bool matched = false;   // some inbound rule applied
  bool pass = true;       // requirements met (or rule is an exemption)
  Action action = Action::reject;
  std::string reply;      // "550 5.7.1 ..." when !pass (for monitor: what would be said)
  uint32_t rule = kNone;
};
// At MAIL: the sender's rule and the client's rule.
// An empty sender is the null sender <> (bounces, DSNs): only a "<>" entry
// matches it, "*" does not. sender_known = false (the inbound map's key
// without from=): sender rules are skipped.
Verdict check_inbound_sender(const Snapshot& s, std::string_view sender, const IpAddr* client,
                             const TlsFacts& tls, bool sender_known = true);
// At RCPT: the recipient's rule.
Verdict check_inbound_recipient(const Snapshot& s, std::string_view rcpt, std::string_view sender,
                                const TlsFacts& tls);

}  // namespace tlspolicy
