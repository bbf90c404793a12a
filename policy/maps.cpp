// Map answers. Keys arrive as Postfix sends them (any case, trailing dots,
// [ip]:port, .parent, +extensions) and are normalised here, once, for every
// front end.
#include "policy/maps.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>

namespace tlspolicy {

std::optional<MapName> parse_map_name(std::string_view n) {
  if (n == "tls-policy") return MapName::tls_policy;
  if (n == "transport") return MapName::transport;
  if (n == "sender-transport") return MapName::sender_transport;
  if (n == "inbound") return MapName::inbound;
  if (n == "access") return MapName::sendmail_access;
  return std::nullopt;
}

std::string_view map_name(MapName m) {
  switch (m) {
    case MapName::tls_policy: return "tls-policy";
    case MapName::transport: return "transport";
    case MapName::sender_transport: return "sender-transport";
    case MapName::inbound: return "inbound";
    case MapName::sendmail_access: return "access";
  }
  return "?";
}

namespace {

// Records hits: only the first unless explaining.
struct Collector {
  std::vector<Step>* trail;
  uint32_t first = kNone;
  const Snapshot& s;
  bool operator()(const Hit& h) {
    if (first == kNone) first = h.entry;
    if (trail) trail->push_back({s.entries[h.entry].rule, h.entry, h.kind, std::string(h.matched), h.prefix});
    return trail != nullptr;
  }
};

// For explain: which disabled rules would match. visit(matcher, f) asks one
// of a disabled rule's matchers the way the enabled lookup asked its own.
template <class Visit>
void note_disabled(const Snapshot& s, Matcher DisabledRule::*which, Answer& a, Visit&& visit) {
  for (auto& d : s.disabled) {
    uint32_t hit = kNone;
    visit((*d).*which, [&](const Hit& h) {
      hit = h.entry;
      return false;
    });
    if (hit != kNone) a.disabled_hits.push_back(hit);
  }
}

void add_default(const Snapshot& s, std::vector<Step>* trail) {
  if (trail && s.default_rule != kNone) trail->push_back({s.default_rule, kNone, HitKind::any, {}, 0});
}

// Splits a next-hop key into an IP address or a host name, Postfix style:
// "[192.0.2.1]", "[192.0.2.1]:2525", "[ipv6:2001:db8::1]", "host:port",
// ".parent", "example.com." (any number of trailing dots: "a.b.." is no
// other name than "a.b", and must not escape its rules).
struct NextHop {
  std::optional<IpAddr> ip;
  std::string_view host;
  bool sub_only = false;
};

std::optional<NextHop> parse_next_hop(std::string_view k) {
  NextHop h;
  if (k.starts_with("[")) {
    auto close = k.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    auto rest = k.substr(close + 1);
    if (!rest.empty() && !rest.starts_with(":")) return std::nullopt;
    auto inner = k.substr(1, close - 1);
    if (inner.starts_with("ipv6:")) inner.remove_prefix(5);
    h.ip = parse_ip(inner);
    while (inner.ends_with(".")) inner.remove_suffix(1);
    if (!h.ip) h.host = inner;
    return h;
  }
  // Only digits-first or colon-holding keys can be addresses: skip inet_pton otherwise.
  if ((!k.empty() && k[0] >= '0' && k[0] <= '9') || k.find(':') != std::string_view::npos)
    if (auto ip = parse_ip(k)) {
      h.ip = ip;
      return h;
    }
  auto colon = k.rfind(':');
  if (colon != std::string_view::npos) k = k.substr(0, colon);
  if (k.starts_with(".")) {
    h.sub_only = true;
    k.remove_prefix(1);
  }
  while (k.ends_with(".")) k.remove_suffix(1);
  h.host = k;
  return h;
}

// Keys with U-labels (SMTPUTF8 mail: "bücher.test", "[bücher.test]:25")
// may be this much longer than the A-label name they convert to.
constexpr size_t kMaxUtf8Key = 1024;

Answer tls_policy(const Snapshot& s, std::string_view key, bool explain) {
  Answer a;
  char buf[256];
  if (key.empty()) return a;
  // No domain is longer than 253 bytes: a longer key matches no rule.
  size_t len = key.size() < sizeof buf ? key.size() : 0;
  unsigned char high = 0;  // any byte >= 0x80: a UTF-8 name, converted below
  for (size_t i = 0; i < len; ++i) {
    buf[i] = ascii_lower(key[i]);
    high |= uint8_t(key[i]);
  }
  std::string_view k(buf, len);
  std::string long_key;
  if (len == 0 && key.size() <= kMaxUtf8Key && has_non_ascii(key)) {
    long_key = lowercase(key);
    k = long_key;
    high = 0x80;
  }
  std::vector<Step> trail;
  Collector c{explain ? &trail : nullptr, kNone, s};
  // The same walk over any matcher: the enabled rules', or for explain a
  // disabled rule's.
  auto walk = [&](const Matcher& m, auto&& f) {
    if (k.empty()) {
    } else if (k.find('@') != std::string_view::npos) {
      auto addr = normalize_address(k, s.settings.recipient_delimiter);
      m.visit_address(addr, f);
    } else if (auto hop = parse_next_hop(k)) {
      std::string ascii;  // the host name in A-labels, for a UTF-8 key only
      if (hop->ip) {
        m.visit_ip(*hop->ip, f);
      } else if (!hop->host.empty()) {
        if (high & 0x80) {
          ascii = idn_key(hop->host);
          hop->host = ascii;
        }
        m.visit_domain(hop->host, hop->sub_only, f);
      }
    }
  };
  walk(s.destinations, c);
  if (explain) note_disabled(s, &DisabledRule::destinations, a, walk);
  add_default(s, c.trail);
  uint32_t rule = c.first != kNone ? s.entries[c.first].rule : s.default_rule;
  a.rule = rule;
  if (rule != kNone) {
    a.found = true;
    a.value = s.rules[rule].policy.value();
    a.source = s.rules[rule].is_default ? "default" : "rule";
  }
  if (explain) {
    a.trail = std::move(trail);
    a.reasoning = c.first != kNone ? "the most specific matching rule decides"
                  : rule != kNone  ? "no rule matches, so the default applies"
                                   : "no rule matches and there is no default: Postfix's own "
                                     "smtp_tls_security_level applies";
  }
  return a;
}

// Level of a recipient from the destination rules: the first hit (address,
// exact domain, nearest parent) and the domain-level answer without the
// address rule, for "is this recipient stricter than its domain?".
struct RecipientLevels {
  uint32_t address_rule = kNone;  // rule of an address entry, if any
  uint32_t domain_rule = kNone;   // rule of the domain/parent entry, else the default
  Level domain_level = Level::may;
};

RecipientLevels recipient_levels(const Snapshot& s, std::string_view addr, std::vector<Step>* trail) {
  RecipientLevels r;
  s.destinations.visit_address(addr, [&](const Hit& h) {
    uint32_t rule = s.entries[h.entry].rule;
    if (trail) trail->push_back({rule, h.entry, h.kind, std::string(h.matched), 0});
    if (h.kind == HitKind::address) {
      if (r.address_rule == kNone) r.address_rule = rule;
    } else if (r.domain_rule == kNone) {
      r.domain_rule = rule;
    }
    return trail != nullptr || r.domain_rule == kNone;
  });
  if (r.domain_rule == kNone) r.domain_rule = s.default_rule;
  add_default(s, trail);
  if (r.domain_rule != kNone) r.domain_level = s.rules[r.domain_rule].policy.level;
  return r;
}

const std::string& transport_of(const Snapshot& s, uint32_t rule) {
  const auto& t = s.rules[rule].transport;
  if (!t.empty()) return t;
  return s.bounces(rule) ? s.settings.bounce_transport : s.settings.transport;
}

Answer transport(const Snapshot& s, std::string_view key, bool explain) {
  Answer a;
  if (key.find('@') == std::string_view::npos || key.size() > 2048) return a;
  auto addr = normalize_address(key, s.settings.recipient_delimiter);
  auto r = recipient_levels(s, addr, explain ? &a.trail : nullptr);
  if (explain)
    note_disabled(s, &DisabledRule::destinations, a, [&](const Matcher& m, auto&& f) { m.visit_address(addr, f); });
  uint32_t decider = kNone;
  uint32_t effective = r.address_rule != kNone ? r.address_rule : r.domain_rule;
  if (s.bounces(effective)) {
    // Every recipient under a bounce rule (address, domain or default) goes
    // to the service whose status filter bounces at the first TLS failure.
    decider = effective;
    if (explain)
      a.reasoning = fmt::format("the rule that decides this recipient ({}) has on_failure = \"bounce\": "
                                "routed to the service that returns the mail to the sender at the first "
                                "TLS failure",
                                s.rules[effective].policy.value());
  } else if (r.address_rule != kNone) {
    Level own = s.rules[r.address_rule].policy.level;
    bool route = s.settings.route == Route::stricter ? rank(own) > rank(r.domain_level) : enforces_tls(own);
    if (route) decider = r.address_rule;
    if (explain && route && s.settings.route == Route::enforced)
      a.reasoning = fmt::format("route = \"enforced\": the address rule ({}) enforces TLS, so this recipient "
                                "is routed to the enforcing transport",
                                level_name(own));
    else if (explain)
      a.reasoning = route ? fmt::format("the address rule ({}) is stricter than its domain's level ({}), "
                                        "so this recipient is routed to the enforcing transport",
                                        level_name(own), level_name(r.domain_level))
                          : fmt::format("the address rule ({}) is not stricter than its domain's level "
                                        "({}): the tls-policy map covers it",
                                        level_name(own), level_name(r.domain_level));
  } else if (s.settings.route == Route::enforced && r.domain_rule != kNone &&
             r.domain_rule != s.default_rule && enforces_tls(r.domain_level)) {
    decider = r.domain_rule;
    if (explain) a.reasoning = "route = \"enforced\": every recipient under an enforcing rule is routed";
  } else if (explain) {
    a.reasoning = "no address rule for this recipient: the tls-policy map decides per next hop";
  }
  a.rule = decider;
  if (decider != kNone) {
    a.found = true;
    a.value = transport_of(s, decider);
  }
  return a;
}

Answer sender_transport(const Snapshot& s, std::string_view key, bool explain) {
  Answer a;
  if (key.find('@') == std::string_view::npos || key.size() > 2048) return a;
  uint32_t rule = kNone;
  Level l = sender_level(s, key, &rule);
  if (explain) {
    auto addr = normalize_address(key, s.settings.recipient_delimiter);
    Collector c{&a.trail, kNone, s};
    if (rule != kNone) s.senders.visit_address(addr, c);
    note_disabled(s, &DisabledRule::senders, a, [&](const Matcher& m, auto&& f) { m.visit_address(addr, f); });
  }
  if (rule != kNone && enforces_tls(l)) {
    a.rule = rule;
    a.found = true;
    a.value = transport_of(s, rule);
  }
  if (explain)
    a.reasoning = rule == kNone       ? "no sender rule matches"
                  : enforces_tls(l) ? "mail from this sender must leave over TLS: routed to the enforcing transport"
                                    : "the sender rule does not enforce TLS, so nothing is routed";
  return a;
}

// Standard replies; a rule's own reply template replaces all of them.
std::string expand(std::string_view tmpl, const Rule& r, const TlsFacts& f, std::string_view sender,
                   std::string_view rcpt) {
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] == '{') {
      auto close = tmpl.find('}', i);
      auto name = tmpl.substr(i + 1, close - i - 1);
      if (name == "bits") out += std::to_string(f.bits);
      else if (name == "min_bits") out += std::to_string(r.min_bits);
      else if (name == "version") out += f.version.empty() ? "none" : f.version;
      else if (name == "min_protocol") out += r.min_protocol;
      else if (name == "rcpt") out += rcpt;
      else if (name == "sender") out += sender;
      i = close;
      continue;
    }
    out += tmpl[i];
  }
  // Sender and recipient come from the client: keep the reply one clean
  // line, within SMTP's 512-byte reply limit.
  for (auto& c : out)
    if (c < ' ' || c > '~' || c == '%') c = '?';
  if (out.size() > 500) out = out.substr(0, 497) + "...";
  if (r.action == Action::tempfail && out[0] == '5') {
    // As Postfix's soft_bounce: 5yz becomes 4yz, 5.x.y becomes 4.x.y; where
    // 4yz is not a defined reply (430, 403...) use 451.
    out[0] = '4';
    if (out.size() > 5 && out[4] == '5' && out[5] == '.') out[4] = '4';
    auto code = std::string_view(out).substr(0, 3);
    if (code != "421" && code != "450" && code != "451" && code != "452" && code != "454" && code != "455")
      out.replace(0, 3, "451");
  }
  return out;
}

// Checks one rule against the session's TLS facts.
void apply(const Snapshot& s, uint32_t rule, Dimension dim, const TlsFacts& f, std::string_view sender,
           std::string_view rcpt, Verdict& v) {
  const Rule& r = s.rules[rule];
  if (!v.matched) v.rule = rule;
  v.matched = true;
  if (!r.require_tls) return;
  bool tls = !f.version.empty() || f.bits > 0;
  const char* std_reply = nullptr;
  if (r.min_bits > 0 && f.bits < r.min_bits)
    std_reply = "554 5.7.0 encryption too weak {bits} less than {min_bits}";
  else if (!tls)
    std_reply = dim == Dimension::inbound_recipient ? "550 5.7.1 <{rcpt}>: TLS required for mail to this recipient"
                                                    : "530 5.7.0 Must issue a STARTTLS command first";
  else if (!r.min_protocol.empty() && protocol_rank(f.version) < protocol_rank(r.min_protocol))
    std_reply = "554 5.7.0 TLS protocol {version} is older than the required {min_protocol}";
  else
    return;
  // The strictest failure wins: reject over tempfail over monitor.
  if (!v.pass && int(v.action) <= int(r.action)) return;
  v.pass = false;
  v.action = r.action;
  v.rule = rule;
  v.reply = expand(r.reply.empty() ? std_reply : r.reply, r, f, sender, rcpt);
}

uint32_t first_rule(const Snapshot& s, const Matcher& m, std::string_view addr) {
  uint32_t rule = kNone;
  m.visit_address(addr, [&](const Hit& h) {
    rule = s.entries[h.entry].rule;
    return false;
  });
  return rule;
}

std::string verdict_value(const Verdict& v) {
  if (v.pass) return "accept";
  return fmt::format("{} {}", action_name(v.action), v.reply);
}

// "from=a@b to=c@d client=192.0.2.1 version=TLSv1.3 bits=256", any subset.
Answer inbound(const Snapshot& s, std::string_view key, bool explain) {
  Answer a;
  std::string from, to;
  bool has_from = false;  // "from=" and "from=<>" are the null sender; no from= is no sender rule
  std::optional<IpAddr> client;
  TlsFacts f;
  size_t i = 0;
  while (i < key.size()) {
    size_t j = key.find(' ', i);
    if (j == std::string_view::npos) j = key.size();
    auto tok = key.substr(i, j - i);
    i = j + 1;
    if (tok.empty()) continue;
    auto eq = tok.find('=');
    if (eq == std::string_view::npos) return a;
    auto name = tok.substr(0, eq), value = tok.substr(eq + 1);
    if (name == "from") {
      has_from = true;
      from = value == "<>" ? std::string_view() : value;
    }
    else if (name == "to") to = value;
    else if (name == "client") client = parse_ip(value);
    else if (name == "version") f.version = value;
    else if (name == "bits") f.bits = parse_cipher_bits(value);
    else return a;
  }
  Verdict v = check_inbound_sender(s, from, client ? &*client : nullptr, f, has_from);
  if (!to.empty()) {
    Verdict rv = check_inbound_recipient(s, to, from, f);
    if (rv.matched && (!v.matched || (!rv.pass && (v.pass || int(rv.action) < int(v.action))))) v = rv;
  }
  if (explain) {
    auto delim = s.settings.recipient_delimiter;
    if (!from.empty())
      note_disabled(s, &DisabledRule::inbound_senders, a, [&](const Matcher& m, auto&& fn) {
        m.visit_address(normalize_address(from, delim), fn);
      });
    else if (has_from)
      note_disabled(s, &DisabledRule::inbound_senders, a,
                    [&](const Matcher& m, auto&& fn) { m.visit_null_sender(fn); });
    if (!to.empty())
      note_disabled(s, &DisabledRule::inbound_recipients, a, [&](const Matcher& m, auto&& fn) {
        m.visit_address(normalize_address(to, delim), fn);
      });
    if (client)
      note_disabled(s, &DisabledRule::clients, a, [&](const Matcher& m, auto&& fn) { m.visit_ip(*client, fn); });
  }
  if (!v.matched) {
    if (explain) a.reasoning = "no inbound rule matches: the mail is accepted as Postfix decides";
    return a;
  }
  a.found = true;
  a.rule = v.rule;
  a.value = verdict_value(v);
  if (explain) {
    a.trail.push_back({v.rule, kNone, HitKind::any, {}, 0});
    a.reasoning = v.pass ? "the session meets every matching inbound rule" : "this rule's requirement is not met";
  }
  return a;
}

bool iequal_prefix(std::string_view key, std::string_view tag) {
  if (key.size() < tag.size()) return false;
  for (size_t i = 0; i < tag.size(); ++i)
    if (ascii_lower(key[i]) != ascii_lower(tag[i])) return false;
  return true;
}

// Sendmail's access map as a socket map: the same policy in Sendmail's
// words. Outbound: levels that authenticate the server become
// "TEMP+VERIFY:<bits>", encrypt "TEMP+ENCR:<bits>" (TEMP+ pins a deferral
// even where a site defines TLS_PERM_ERR, as Postfix defers; PERM+ for a rule
// with on_failure = "bounce", so the sender hears at once), and a rule that
// decided without enforcing answers "OK", so Sendmail does not go on to a
// parent domain's stricter entry. Inbound clients: "ENCR:<bits>" (Sendmail
// answers MAIL with its temporary 454 4.7.0). Try_TLS: "NO" for
// level none. Everything else (Connect:, From:, Spam: ...) NOTFOUND.
Answer sendmail_access(const Snapshot& s, std::string_view key, bool explain) {
  Answer a;
  auto answer = [&](uint32_t rule, std::string value) {
    a.found = true;
    a.rule = rule;
    a.value = std::move(value);
  };
  auto bits_of = [&](int bits) { return bits > 0 ? bits : s.settings.sendmail_min_bits; };
  // An outbound level in Sendmail's words.
  auto outbound = [&](uint32_t rule, Level l) {
    const char* kind = s.bounces(rule) ? "PERM" : "TEMP";  // on_failure: bounce or defer
    if (rank(l) >= rank(Level::verify))
      answer(rule, fmt::format("{}+VERIFY:{}", kind, bits_of(0)));
    else if (enforces_tls(l))
      answer(rule, fmt::format("{}+ENCR:{}", kind, bits_of(0)));
    else if (!s.rules[rule].is_default)
      answer(rule, "OK");
  };
  // Sendmail writes IPv6 addresses as "ipv6:0:0:...:1", maybe in brackets.
  auto host_part = [](std::string_view h) {
    if (h.starts_with("[") && h.ends_with("]")) h = h.substr(1, h.size() - 2);
    if (iequal_prefix(h, "ipv6:")) h.remove_prefix(5);
    return h;
  };
  if (iequal_prefix(key, "TLS_Srv:") || iequal_prefix(key, "Try_TLS:")) {
    bool try_tls = iequal_prefix(key, "Try_TLS:");
    auto host = host_part(key.substr(8));
    // An IPv6 address becomes "[addr]". (Built by appends: GCC 12 at -O3
    // reports a false -Wrestrict for "[" + std::string(host).)
    std::string hop;
    bool v6 = host.find(':') != std::string_view::npos;
    if (v6) hop += '[';
    hop += host;
    if (v6) hop += ']';
    Answer p = tls_policy(s, hop, explain);
    a.trail = std::move(p.trail);
    if (p.rule != kNone) {
      Level l = s.rules[p.rule].policy.level;
      if (!try_tls) outbound(p.rule, l);
      if (try_tls && l == Level::none) answer(p.rule, "NO");
    }
  } else if (iequal_prefix(key, "TLS_Rcpt:")) {
    auto rest = key.substr(9);
    uint32_t rule = kNone;
    Level l = Level::may;
    if (rest.find('@') != std::string_view::npos && !rest.ends_with("@")) {
      l = recipient_level(s, rest, &rule);
    } else if (!rest.empty() && !rest.ends_with("@")) {
      Answer p = tls_policy(s, rest, false);
      rule = p.rule;
      if (rule != kNone) l = s.rules[rule].policy.level;
    }
    if (rule != kNone) outbound(rule, l);
  } else if (iequal_prefix(key, "TLS_Clt:")) {
    if (auto ip = parse_ip(host_part(key.substr(8)))) {
      uint32_t rule = kNone;
      s.clients.visit_ip(*ip, [&](const Hit& h) {
        rule = s.entries[h.entry].rule;
        return false;
      });
      if (rule != kNone) {
        const Rule& r = s.rules[rule];
        if (!r.require_tls || r.action == Action::monitor)
          answer(rule, "OK");
        else  // Sendmail refuses with its temporary "454 4.7.0 encryption too weak"
          answer(rule, fmt::format("ENCR:{}", bits_of(r.min_bits)));
      }
    }
  }
  if (explain)
    a.reasoning = a.found ? "Sendmail access map: the policy in Sendmail's words (ENCR:<bits> = TLS required, "
                            "VERIFY:<bits> = verified TLS required, OK = no requirement)"
                          : "no rule for this key: Sendmail's own defaults apply";
  return a;
}

}  // namespace

Level recipient_level(const Snapshot& s, std::string_view rcpt, uint32_t* rule) {
  auto addr = normalize_address(rcpt, s.settings.recipient_delimiter);
  auto r = recipient_levels(s, addr, nullptr);
  if (r.address_rule != kNone) {
    *rule = r.address_rule;
    return s.rules[r.address_rule].policy.level;
  }
  *rule = r.domain_rule;
  return r.domain_level;
}

Level domain_level(const Snapshot& s, std::string_view rcpt, uint32_t* rule) {
  auto r = recipient_levels(s, normalize_address(rcpt, s.settings.recipient_delimiter), nullptr);
  *rule = r.domain_rule;
  return r.domain_level;
}

std::string effective_text(const Snapshot& s, std::string_view rcpt) {
  auto by = [&](uint32_t rule) {
    if (rule == kNone) return std::string("no rule");
    const Rule& r = s.rules[rule];
    return r.is_default ? fmt::format("the default at {}", s.where(r))
                        : fmt::format("rule \"{}\" at {}", printable(r.name), s.where(r));
  };
  std::string out = fmt::format("effective {}:\n", printable(rcpt));
  auto at = rcpt.rfind('@');
  std::string domain(at == std::string_view::npos ? rcpt : rcpt.substr(at + 1));
  Answer hop = query(s, MapName::tls_policy, domain);
  Answer tr = query(s, MapName::transport, rcpt);
  uint32_t rule = kNone;
  Level level = recipient_level(s, rcpt, &rule);
  out += fmt::format("  next hop {}: tls-policy answers {} ({})\n", printable(domain),
                     hop.found ? hop.value : "NOTFOUND: Postfix's smtp_tls_security_level", by(hop.rule));
  if (tr.found)
    out += fmt::format("  transport: {} ({}): this recipient is delivered by that service, whose own TLS "
                       "settings apply\n",
                       tr.value, by(tr.rule));
  else
    out += "  transport: NOTFOUND: Postfix's normal routing, and the next hop's policy above applies\n";
  const MilterSettings& m = s.settings.milter;
  std::string header = enforces_tls(level) ? m.header_require : level == Level::none ? "" : m.header_try;
  out += fmt::format("  {}: {} (level {}, {}; a message's header follows its strictest recipient)\n", m.header,
                     header.empty() ? "none added" : header, level_name(level), by(rule));
  return out;
}

Level sender_level(const Snapshot& s, std::string_view sender, uint32_t* rule) {
  auto addr = normalize_address(sender, s.settings.recipient_delimiter);
  *rule = first_rule(s, s.senders, addr);
  return *rule == kNone ? Level::none : s.rules[*rule].policy.level;
}

Verdict check_inbound_sender(const Snapshot& s, std::string_view sender, const IpAddr* client,
                             const TlsFacts& tls, bool sender_known) {
  Verdict v;
  if (!sender.empty()) {
    auto addr = normalize_address(sender, s.settings.recipient_delimiter);
    uint32_t rule = first_rule(s, s.inbound_senders, addr);
    if (rule != kNone) apply(s, rule, Dimension::inbound_sender, tls, sender, {}, v);
  } else if (sender_known) {
    uint32_t rule = kNone;
    s.inbound_senders.visit_null_sender([&](const Hit& h) { rule = s.entries[h.entry].rule; });
    if (rule != kNone) apply(s, rule, Dimension::inbound_sender, tls, sender, {}, v);
  }
  if (client) {
    uint32_t rule = kNone;
    s.clients.visit_ip(*client, [&](const Hit& h) {
      rule = s.entries[h.entry].rule;
      return false;
    });
    if (rule != kNone) apply(s, rule, Dimension::client, tls, sender, {}, v);
  }
  return v;
}

Verdict check_inbound_recipient(const Snapshot& s, std::string_view rcpt, std::string_view sender,
                                const TlsFacts& tls) {
  Verdict v;
  auto addr = normalize_address(rcpt, s.settings.recipient_delimiter);
  uint32_t rule = first_rule(s, s.inbound_recipients, addr);
  if (rule != kNone) apply(s, rule, Dimension::inbound_recipient, tls, sender, rcpt, v);
  return v;
}

Answer query(const Snapshot& s, MapName map, std::string_view key, bool explain) {
  Answer a;
  switch (map) {
    case MapName::tls_policy: return tls_policy(s, key, explain);
    case MapName::transport: a = transport(s, key, explain); break;
    case MapName::sender_transport: a = sender_transport(s, key, explain); break;
    case MapName::inbound: a = inbound(s, key, explain); break;
    case MapName::sendmail_access: a = sendmail_access(s, key, explain); break;
  }
  if (a.found && a.rule != kNone) a.source = s.rules[a.rule].is_default ? "default" : "rule";
  return a;
}

namespace {

// The next hop a tls-policy key names, as discovery asks for it:
// "partner.example" (lowercase A-labels, no port, no trailing dot) or
// "[mx.example]"; "" for keys discovery has nothing to say about: addresses,
// IP literals (matched by IP entries as they are), ".parent" keys (asked by
// Postfix for parent-domain matching, not a destination), and anything that
// is not a host name (hostile keys never reach DNS).
std::string next_hop_target(std::string_view key) {
  if (key.empty() || key.size() > kMaxUtf8Key || key.find('@') != std::string_view::npos) return {};
  std::string k = lowercase(key);
  auto hop = parse_next_hop(k);
  if (!hop || hop->ip || hop->sub_only || hop->host.empty()) return {};
  std::string host(hop->host);
  if (has_non_ascii(host)) host = idn_key(host);
  if (host.size() > 253 || !valid_domain_pattern(host)) return {};
  std::string out;
  bool literal = k.starts_with("[");
  if (literal) out += '[';
  out += host;
  if (literal) out += ']';
  return out;
}

std::string_view security_word(DnsSecurity d) {
  switch (d) {
    case DnsSecurity::insecure: return "insecure";
    case DnsSecurity::secure: return "secure";
    case DnsSecurity::bogus: return "bogus";
  }
  return "?";
}

// "MX partner.example: 10 mx1.partner.example (secure, ttl 300)"
std::string answer_line(const DnsRecordSet& r) {
  std::string data;
  switch (r.status) {
    case DnsStatus::ok:
      for (auto& d : r.data) {
        if (!data.empty()) data += ", ";
        data += printable(d);
      }
      break;
    case DnsStatus::nodata: data = "no records (NODATA)"; break;
    case DnsStatus::nxdomain: data = "no such name (NXDOMAIN)"; break;
    case DnsStatus::failed: data = fmt::format("failed: {}", printable(r.error.empty() ? "no answer" : r.error)); break;
  }
  if (r.status == DnsStatus::failed) return fmt::format("{} {}: {}", printable(r.type), printable(r.name), data);
  return fmt::format("{} {}: {} ({}, ttl {})", printable(r.type), printable(r.name), data, security_word(r.security),
                     r.ttl);
}

// What the facts say, source by source, before the merge in query():
// whether DNS failed (MX-aware rules and DANE unknown), the strictest
// MX-aware rule an MX host matches, and DANE's answer. MTA-STS is read from
// facts.sts directly.
struct Outcome {
  bool dns_failed = false;  // MX answer failed or bogus: MX-aware rules and DANE unknown
  std::string failure;      // why (printable)
  bool addr_unknown = false;  // an MX host's addresses could not be looked up
  bool null_mx = false;
  uint32_t mx_rule = kNone;   // the MX-aware rule that matched (the strictest)
  // Whether that match rests on DNSSEC-secure answers (or on names DNS did
  // not choose: a [host] next hop, the domain itself as implicit MX). Only
  // then may the rule's override beat a discovered policy: MTA-STS exists
  // for the attacker who forges the MX and address answers (RFC 8461 10),
  // and a forged MX naming the admin's lax host must not switch it off.
  bool mx_rule_trusted = false;
  std::vector<Step> steps;    // MX-aware matches, the deciding one first
  bool dane = false;          // DANE has an answer
  Level dane_level = Level::dane;
  std::string dane_value;     // "dane" or "dane-only"
  // Some MX host publishes no TLSA: Postfix's dane level is opportunistic
  // ("may") for it, so the answer allows plaintext to that host.
  bool dane_opportunistic = false;
  std::string dane_note;      // the DANE assessment (explain, and the log line when DANE decides)
};

std::string_view tlsa_word(TlsaState t) {
  switch (t) {
    case TlsaState::none: return "no TLSA";
    case TlsaState::usable: return "usable TLSA";
    case TlsaState::unusable: return "only unusable TLSA";
    case TlsaState::failed: return "TLSA lookup failed";
  }
  return "?";
}

// The steps after the deciding one and the DANE note's host list are made
// only when explaining: the socketmap answers every cache hit with this,
// tens of thousands a second, and only `tlspolicy query --explain` reads them.
Outcome discover(const Snapshot& s, const DestinationFacts& f, bool explain) {
  Outcome o;
  const auto& ds = s.settings.discovery;
  // 1. Nothing known. A bogus MX answer is no answer: its data may be forged.
  if (f.failed || f.mx_security == DnsSecurity::bogus) {
    o.dns_failed = true;
    o.failure = f.failed ? (f.error.empty() ? std::string("DNS lookup failed") : printable(f.error))
                         : std::string("the MX answer failed DNSSEC validation (bogus)");
    return o;
  }
  if (f.null_mx) {
    o.null_mx = true;
    return o;
  }
  // 2. MX-aware entries: any MX host that matches puts the whole next hop
  // under the rule (Postfix's TLS policy is per next hop, and mail may go to
  // any of its MX hosts). Among several matches the strictest level wins;
  // on a tie, the first in MX preference order.
  int best_rank = -1;
  // A step's `via` is made only when the step is kept: the deciding one
  // (its via is the answer's), or every one when explaining.
  auto consider = [&](const Hit& h, bool trusted, auto&& make_via) {
    uint32_t rule = s.entries[h.entry].rule;
    int r = rank(s.rules[rule].policy.level);
    if (r <= best_rank && !explain) return;
    Step st{rule, h.entry, h.kind, {}, h.prefix, make_via()};
    if (r > best_rank) {
      best_rank = r;
      o.mx_rule = rule;
      o.mx_rule_trusted = trusted;
      if (explain)
        o.steps.insert(o.steps.begin(), std::move(st));
      else
        o.steps.assign(1, std::move(st));
    } else {
      o.steps.push_back(std::move(st));
    }
  };
  const char* kind = f.implicit_mx || f.literal ? "host" : "MX";
  bool names_trusted = f.literal || f.implicit_mx || f.mx_security == DnsSecurity::secure;
  for (auto& host : f.mx) {
    bool addrs_trusted = names_trusted && host.addr_security == DnsSecurity::secure;
    s.mx_names.visit_domain(host.name, false, [&](const Hit& h) {
      consider(h, names_trusted, [&] { return fmt::format("{} {} is {}", kind, printable(host.name), printable(s.text(h.entry))); });
      return true;
    });
    for (auto& ip : host.addrs)
      s.destinations.visit_ip(ip, [&](const Hit& h) {
        consider(h, addrs_trusted, [&] {
          auto ip_text = format_ip(ip);
          return h.prefix == ip.bits() ? fmt::format("{} {} [{}]", kind, printable(host.name), ip_text)
                                       : fmt::format("{} {} [{}] in {}", kind, printable(host.name), ip_text,
                                                     printable(s.text(h.entry)));
        });
        return true;
      });
    // Either family failing leaves addresses unknown, even when the other
    // answered: an IPv4 range cannot be ruled out by the AAAA records alone,
    // and Postfix, asking again, may get the A record and deliver there.
    if (host.addr_failed) o.addr_unknown = true;
  }
  // 3. DANE: only for a DNSSEC-secure MX set (or literal host) whose hosts
  // publish TLSA. Postfix itself validates the TLSA records (it needs
  // smtp_dns_support_level = dnssec); we only decide the level.
  if (ds.dane != DaneMode::off && !f.mx.empty()) {
    size_t usable = 0, unusable = 0, failed = 0;
    for (auto& h : f.mx) switch (h.tlsa) {
        case TlsaState::usable: ++usable; break;
        case TlsaState::unusable: ++unusable; break;
        case TlsaState::failed: ++failed; break;
        case TlsaState::none: break;
      }
    size_t n = f.mx.size();
    std::string hosts;
    for (auto& h : f.mx) {
      if (!hosts.empty()) hosts += ", ";
      hosts += fmt::format("{} {}", printable(h.name), tlsa_word(h.tlsa));
    }
    const char* what = f.literal ? "host" : f.implicit_mx ? "domain (no MX: the domain itself)" : "MX set";
    if (f.mx_security != DnsSecurity::secure) {
      o.dane_note = fmt::format("DANE: the {} is {}: no DANE answer (it needs DNSSEC-secure answers)", what,
                                security_word(f.mx_security));
    } else if (usable + unusable + failed == 0) {
      o.dane_note = fmt::format("DANE: the {} is secure, but no host publishes TLSA ({}): no DANE answer", what, hosts);
    } else {
      o.dane = true;
      bool all_usable = usable == n;
      o.dane_opportunistic = usable + unusable + failed < n;
      // "dane" is opportunistic (Postfix repeats the TLSA lookup at
      // delivery, and falls back to "may" should the records have gone), so
      // it ranks below encrypt; "dane-only" is mandatory and ranks above
      // every level but fingerprint (policy/level.hpp).
      o.dane_level = all_usable && ds.dane == DaneMode::dane_only ? Level::dane_only : Level::dane;
      o.dane_value = std::string(level_name(o.dane_level));
      std::string partial;
      if (!all_usable && ds.dane == DaneMode::dane_only)
        partial = " (not dane-only: it would refuse the hosts without usable TLSA, where RFC 7672 "
                  "asks for TLS per host: unusable TLSA encrypted, failed lookup deferred, none opportunistic)";
      else if (!all_usable)
        partial = " (Postfix's dane level applies RFC 7672 per host: unusable TLSA encrypted, failed lookup "
                  "deferred, none opportunistic)";
      o.dane_note = fmt::format("DANE: the {} is secure; {} of {} host{} with usable TLSA ({}): {}{}", what, usable,
                                n, n == 1 ? "" : "s", hosts, o.dane_value, partial);
    }
  }
  return o;
}

// MTA-STS's answer for a policy (enforce: discovery's answer; testing: what
// it would be), "" when it has no mx pattern. Discovery writes the answer
// (discovery/mta_sts_policy.cpp, with the TLSRPT attributes when asked);
// this fallback is its plain form, for a testing policy's "would enforce".
std::string sts_answer(const StsFacts& st) {
  if (!st.answer.empty()) return st.answer;
  if (st.mx.empty()) return {};
  std::string out = "secure match=";
  for (size_t i = 0; i < st.mx.size(); ++i) {
    if (i) out += ':';
    out += st.mx[i].starts_with("*.") ? std::string_view(st.mx[i]).substr(1) : std::string_view(st.mx[i]);
  }
  out += " servername=hostname";
  return printable(out);
}

std::string utc_time(int64_t t) {
  std::time_t tt = std::time_t(t);
  std::tm tm{};
  if (!gmtime_r(&tt, &tm)) return std::to_string(t);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

// "id 20260101, mx mail.partner.example, *.partner.example"
std::string sts_ident(const StsFacts& st) {
  std::string mx;
  for (auto& m : st.mx) {
    if (!mx.empty()) mx += ", ";
    mx += printable(m);
  }
  return fmt::format("id {}, mx {}", st.id.empty() ? std::string("?") : printable(st.id),
                     mx.empty() ? std::string("(none)") : mx);
}

std::string_view source_name(DiscoveredSource d) { return d == DiscoveredSource::dane ? "DANE" : "MTA-STS"; }

}  // namespace

std::string discovery_target(const Snapshot& s, MapName map, std::string_view key, bool explain, Answer* static_out) {
  if (static_out) *static_out = query(s, map, key, explain);
  if (!s.needs_dns || map != MapName::tls_policy) return {};
  std::string target = next_hop_target(key);
  if (target.empty() || explain) return target;
  Answer local;
  const Answer& a = static_out ? *static_out : (local = tls_policy(s, key, false));
  if (a.rule == kNone || s.rules[a.rule].is_default) return target;
  // A rule for the name decides among the admin's rules (over MX-aware
  // ones). Discovery matters only when a discovered policy could be stricter
  // than it: never for an override, nor for a rule at least as strict as
  // anything DANE or MTA-STS can answer (the admin wins a tie).
  const Rule& r = s.rules[a.rule];
  if (r.override_discovery) return {};
  const auto& ds = s.settings.discovery;
  int best = -1;
  if (ds.dane != DaneMode::off) best = rank(ds.dane == DaneMode::dane_only ? Level::dane_only : Level::dane);
  if (ds.mta_sts.enabled) best = std::max(best, rank(Level::secure));
  if (rank(r.policy.level) >= best) return {};
  return target;
}

// The merge (the precedence table in man/tlspolicy.conf.5):
// 1. The admin's answer: the rule for the name (exact, parent), else the
//    strictest MX-aware rule an MX host matches.
// 2. The discovered policy: the first of settings.discovery.order (DANE,
//    MTA-STS by default) with an answer. MTA-STS testing answers nothing.
// 3. Both: the stricter level wins (rank(), policy/level.hpp), the admin's
//    rule on a tie; an admin rule with override = true wins regardless.
//    One of them: it. Neither: the default (or NOTFOUND).
// DNS failure (MX answer failed or bogus): MX-aware rules and DANE are
// unknown. Without a rule for the name: TEMP when an MX-aware rule or DANE
// defers on DNS failure, as before; else MTA-STS or the default. With a rule
// for the name: TEMP only when DANE (deferring) might be stricter and the
// rule neither enforces TLS nor is an override; else the rule against MTA-STS.
Answer query(const Snapshot& s, MapName map, std::string_view key, bool explain, const DestinationFacts* facts,
             const Answer* static_answer) {
  if (!facts || map != MapName::tls_policy || !s.needs_dns)
    return static_answer ? *static_answer : query(s, map, key, explain);
  Answer a = static_answer ? *static_answer : tls_policy(s, key, explain);
  const auto& ds = s.settings.discovery;
  const DestinationFacts& f = *facts;
  Outcome o = discover(s, f, explain);
  bool by_name = a.rule != kNone && !s.rules[a.rule].is_default;
  const Rule* name_rule = by_name ? &s.rules[a.rule] : nullptr;
  int dane_best = ds.dane == DaneMode::off ? -1 : rank(ds.dane == DaneMode::dane_only ? Level::dane_only : Level::dane);

  // The admin's side.
  uint32_t admin = by_name ? a.rule : o.mx_rule;
  const Rule* admin_rule = admin == kNone ? nullptr : &s.rules[admin];
  auto admin_words = [&] {
    return fmt::format("{}rule \"{}\" ({})", by_name ? "" : "MX-aware ", admin_rule->name, admin_rule->policy.value());
  };

  // MTA-STS.
  const StsFacts& st = f.sts;
  bool sts_on = ds.mta_sts.enabled && st.asked;
  bool sts_enforce = sts_on && st.in_force && st.mode == StsMode::enforce;
  bool sts_testing = sts_on && st.in_force && st.mode == StsMode::testing;
  std::string sts_value = sts_enforce ? sts_answer(st) : std::string();
  if (sts_enforce && sts_value.empty()) sts_enforce = false;  // no mx pattern: nothing to enforce

  // TEMP: DNS failed where a deferring source might apply.
  std::string temp_reason, temp_why;
  if (o.dns_failed) {
    bool dane_defers = ds.dane != DaneMode::off && ds.dns_failure_defers;
    if (!by_name && (s.mx_aware_defers || dane_defers)) {
      temp_reason = fmt::format("DNS lookup for {} failed ({}): deferred until the rules that depend on its MX "
                                "hosts can be checked",
                                printable(f.destination), o.failure);
      if (explain)
        temp_why = fmt::format("DNS failed ({}), and an MX-aware rule (or DANE) with on_dns_failure = \"defer\" "
                               "might apply: TEMP, Postfix defers and retries, nothing leaves in plaintext",
                               o.failure);
    } else if (by_name && !name_rule->override_discovery && !enforces_tls(name_rule->policy.level) && dane_defers &&
               rank(name_rule->policy.level) < dane_best) {
      temp_reason = fmt::format("DNS lookup for {} failed ({}): deferred until DANE can be checked (rule \"{}\" "
                                "answers {}, weaker than DANE might)",
                                printable(f.destination), o.failure, name_rule->name, name_rule->policy.value());
      if (explain)
        temp_why = fmt::format("DNS failed ({}): DANE (on_dns_failure = \"defer\") might be stricter than rule "
                               "\"{}\" ({}), which neither enforces TLS nor is an override: TEMP, nothing leaves "
                               "in plaintext where DANE might apply",
                               o.failure, name_rule->name, name_rule->policy.value());
    }
  } else if (!by_name && o.mx_rule == kNone && o.addr_unknown && s.mx_aware_defers) {
    temp_reason = fmt::format("DNS address lookup for an MX host of {} failed: deferred until the rules that "
                              "depend on its addresses can be checked",
                              printable(f.destination));
    temp_why = "an MX host's addresses could not be looked up, and an MX-aware rule with on_dns_failure = "
               "\"defer\" might cover them: TEMP";
  }

  // The discovered policy: the first source in order with an answer.
  struct Found {
    DiscoveredSource src;
    Level level;
    std::string value;
  };
  std::optional<Found> disc;
  bool sts_reached = false;  // no source before MTA-STS answered
  // DANE that leaves some MX host opportunistic (no TLSA: Postfix's dane
  // level sends to it with "may", plaintext allowed) does not stop the
  // search: RFC 8461 section 2 puts DANE first per host, and for the hosts
  // without TLSA an MTA-STS enforce policy still requires TLS. Postfix takes
  // one level per next hop, so the stricter of the two (MTA-STS's secure)
  // applies; partial DANE is the answer only when nothing stricter follows.
  std::optional<Found> partial_dane;
  for (auto src : ds.order) {
    if (src == DiscoveredSource::dane && o.dane) {
      if (o.dane_opportunistic) {
        partial_dane = Found{src, o.dane_level, o.dane_value};
        continue;
      }
      disc = Found{src, o.dane_level, o.dane_value};
      break;
    }
    if (src == DiscoveredSource::mta_sts) {
      sts_reached = true;
      if (sts_enforce) {
        disc = Found{src, Level::secure, sts_value};
        break;
      }
    }
  }
  bool sts_over_partial_dane = disc && partial_dane;
  if (!disc) disc = partial_dane;
  auto disc_words = [&] { return fmt::format("{}'s {}", source_name(disc->src), level_name(disc->level)); };

  // Admin against discovered.
  enum { use_static, use_temp, use_admin, use_disc } winner = use_static;
  // An MX-aware override counts only on trusted DNS (Outcome::mx_rule_trusted);
  // on untrusted DNS it competes as an ordinary rule: the stricter wins.
  bool admin_override = admin_rule && admin_rule->override_discovery && (by_name || o.mx_rule_trusted);
  bool override_distrusted = admin_rule && admin_rule->override_discovery && !admin_override;
  if (!temp_reason.empty())
    winner = use_temp;
  else if (admin_rule && disc)
    winner = admin_override || rank(admin_rule->policy.level) >= rank(disc->level) ? use_admin : use_disc;
  else if (admin_rule)
    winner = use_admin;
  else if (disc)
    winner = use_disc;
  // The default as a floor under partial DANE: "dane" with an MX host
  // without TLSA sends to that host opportunistically, where a default that
  // enforces TLS (default = "encrypt") would not let it go in plaintext.
  // Discovery never makes a destination weaker than the admin's default.
  bool default_floor = winner == use_disc && disc->src == DiscoveredSource::dane && o.dane_opportunistic &&
                       a.found && a.rule != kNone && s.rules[a.rule].is_default &&
                       rank(s.rules[a.rule].policy.level) > rank(disc->level);
  if (default_floor) winner = use_static;
  // A testing policy "would enforce": had it been enforce, it would have decided.
  bool would_enforce = sts_testing && winner != use_temp && sts_reached &&
                       (!admin_rule || (!admin_override && rank(Level::secure) > rank(admin_rule->policy.level)));

  // The sentence on how the answer follows from the sources.
  std::string merge_why;
  if (explain) {
    if (winner == use_temp)
      merge_why = temp_why;
    else if (winner == use_admin && disc && admin_override)
      merge_why = fmt::format("{} is an override: it wins over {}", admin_words(), disc_words());
    else if (winner == use_admin && disc && rank(admin_rule->policy.level) == rank(disc->level))
      merge_why = fmt::format("{} is as strict as {}: on a tie the admin's rule wins", admin_words(), disc_words());
    else if (winner == use_admin && disc)
      merge_why = fmt::format("the stricter wins: {} over {}", admin_words(), disc_words());
    else if (winner == use_disc && admin_rule)
      merge_why = fmt::format("the stricter wins: {} over {}", disc_words(), admin_words());
    else if (winner == use_admin)
      merge_why = by_name ? "no discovered policy (DANE, MTA-STS) applies: the rule for the name decides"
                          : "an MX-aware entry matches (any matching MX host puts the whole next hop under its "
                            "rule; the strictest such rule wins), and no discovered policy applies";
    else if (winner == use_disc)
      merge_why = fmt::format("no rule for the name or its MX hosts: {} applies (the default only applies when "
                              "nothing else does)",
                              disc_words());
    else if (default_floor)
      merge_why = fmt::format("DANE leaves an MX host without TLSA opportunistic (Postfix's dane level: \"may\" "
                              "for it), and the default ({}) enforces TLS: the default applies, discovery never "
                              "makes a destination weaker than the default",
                              s.rules[a.rule].policy.value());
    else
      merge_why = o.null_mx ? "the domain publishes a null MX (RFC 7505): it accepts no mail, Postfix returns such "
                              "mail at once"
                            : "no rule for the name or its MX hosts, and no discovered policy";
    if (override_distrusted && disc)
      merge_why += fmt::format(" (MX-aware rule \"{}\"'s override counts only on DNSSEC-secure MX and address "
                               "answers: an insecure one may be forged)",
                               admin_rule->name);
    if (o.dns_failed && winner != use_temp)
      merge_why += fmt::format(" (DNS failed ({}): MX-aware rules and DANE unknown{})", o.failure,
                               by_name ? "; the rule for the name stands"
                                       : ", and on_dns_failure = \"ignore\": answered as if no MX-aware rule matched");
    if (winner == use_disc && disc->src == DiscoveredSource::dane)
      merge_why += " (Postfix validates the TLSA records itself, with smtp_dns_support_level = dnssec)";
    if (sts_over_partial_dane && (winner == use_disc || winner == use_admin))
      merge_why += "; DANE was asked first but leaves an MX host without TLSA opportunistic, so MTA-STS's "
                   "enforce policy, which requires TLS to every MX host, is the discovered policy";
  }

  // Every source's answer, for --explain.
  if (explain) {
    auto& lines = a.discovery;
    for (auto& r : f.answers) lines.push_back("dns: " + answer_line(r));
    lines.push_back(name_rule ? fmt::format("rule for the name: rule \"{}\" at {} ({}){}", name_rule->name,
                                            s.where(*name_rule), name_rule->policy.value(),
                                            name_rule->override_discovery
                                                ? ", override = true: it wins over DANE and MTA-STS"
                                                : "")
                              : std::string("rule for the name: none"));
    if (o.dns_failed)
      lines.push_back(fmt::format("MX-aware rules: unknown (DNS failed: {})", o.failure));
    else if (o.mx_rule != kNone)
      lines.push_back(fmt::format("MX-aware rules: rule \"{}\" ({}): {} at {}{}", s.rules[o.mx_rule].name,
                                  s.rules[o.mx_rule].policy.value(), o.steps.front().via,
                                  s.where_entry(o.steps.front().entry),
                                  by_name ? " (the rule for the name comes first)" : ""));
    else
      lines.push_back(o.null_mx ? "MX-aware rules: none (null MX)"
                      : o.addr_unknown ? "MX-aware rules: no match among the addresses known (an MX host's "
                                         "address lookup failed)"
                                       : "MX-aware rules: no entry matches the MX hosts");
    if (ds.dane == DaneMode::off)
      lines.push_back("DANE: off (dane = \"off\")");
    else if (o.dns_failed)
      lines.push_back(fmt::format("DANE: unknown (DNS failed: {})", o.failure));
    else if (!o.dane_note.empty())
      lines.push_back(o.dane_note);
    else
      lines.push_back(o.null_mx ? "DANE: no answer (null MX)" : "DANE: no answer (no MX host)");
    if (!ds.mta_sts.enabled) {
      lines.push_back("MTA-STS: off (no mta_sts block)");
    } else if (!st.asked) {
      lines.push_back("MTA-STS: not asked (only domain next hops have MTA-STS)");
    } else {
      std::string where;
      // (Appended: GCC 12 -O3 reports a false -Wrestrict for "; " + printable().)
      for (auto* part : {&st.source, &st.note})
        if (!part->empty()) {
          where += "; ";
          where += printable(*part);
        }
      if (!st.in_force || st.mode == StsMode::none)
        lines.push_back(fmt::format("MTA-STS: no policy in force{}", where));
      else if (st.mode == StsMode::enforce)
        lines.push_back(fmt::format("MTA-STS: enforce ({}; max_age {}, expires {}){}: {}", sts_ident(st), st.max_age,
                                    utc_time(st.expires), where,
                                    sts_value.empty() ? std::string("no mx pattern, nothing to enforce") : sts_value));
      else
        lines.push_back(fmt::format("MTA-STS: testing ({}; max_age {}, expires {}){}: testing: would enforce {} "
                                    "({})",
                                    sts_ident(st), st.max_age, utc_time(st.expires), where, sts_answer(st),
                                    would_enforce ? "it would decide the answer were the policy in enforce mode"
                                                  : "it would not change the answer"));
    }
    lines.push_back(s.default_rule == kNone
                        ? std::string("default: none (Postfix's smtp_tls_security_level)")
                        : fmt::format("default: {} ({}){}", s.rules[s.default_rule].policy.value(),
                                      s.where(s.rules[s.default_rule]),
                                      winner == use_static ? "" : ": not used, another source answers"));
    std::string order;
    for (auto src : ds.order) {
      if (!order.empty()) order += ", then ";
      order += source_name(src);
    }
    lines.push_back(disc ? fmt::format("discovered policy: {} (asked in order: {})", disc_words(), order)
                         : fmt::format("discovered policy: none (asked in order: {})", order));
  }

  // A testing policy that would have decided: said in the log line too.
  auto note_testing = [&](std::string& via) {
    if (!would_enforce) return;
    if (!via.empty()) via += "; ";
    via += fmt::format("MTA-STS testing ({}) would enforce {}: not enforced in testing mode", sts_ident(st),
                       sts_answer(st));
  };
  Answer d;
  switch (winner) {
    case use_static:
      a.sts_would_enforce = would_enforce;
      if (default_floor)
        a.via = fmt::format("the default ({}) over DANE's dane: an MX host has no TLSA, and Postfix's dane "
                            "level would send to it opportunistically",
                            s.rules[a.rule].policy.value());
      note_testing(a.via);
      if (explain) a.reasoning = fmt::format("{}; {}", merge_why, a.reasoning);
      return a;
    case use_temp:
      d.found = true;
      d.temp = true;
      d.value = temp_reason;
      d.via = temp_reason;
      d.source = "temp";
      break;
    case use_admin:
      if (by_name) {
        a.sts_would_enforce = would_enforce;
        if (disc)
          a.via = admin_override ? fmt::format("{} at {} is an override: it wins over {}", admin_words(),
                                               s.where(*admin_rule), disc_words())
                                 : fmt::format("{} at {}, at least as strict as {}", admin_words(),
                                               s.where(*admin_rule), disc_words());
        note_testing(a.via);
        if (explain) {
          for (auto& step : o.steps) a.trail.push_back(step);
          a.reasoning = fmt::format("{}; {}", a.reasoning, merge_why);
        }
        return a;
      }
      d.found = true;
      d.value = admin_rule->policy.value();
      d.rule = admin;
      d.source = "mx-rule";
      d.via = fmt::format("{} at {}", o.steps.front().via, s.where_entry(o.steps.front().entry));
      if (disc)
        d.via += admin_override ? fmt::format(", an override over {}", disc_words())
                                : fmt::format(", at least as strict as {}", disc_words());
      break;
    case use_disc:
      d.found = true;
      d.value = disc->value;
      d.source = disc->src == DiscoveredSource::dane ? "dane" : "mta-sts";
      d.via = disc->src == DiscoveredSource::dane
                  ? o.dane_note
                  : fmt::format("MTA-STS enforce ({})", sts_ident(st));
      if (admin_rule) d.via += fmt::format(", stricter than {}", admin_words());
      break;
  }
  d.sts_would_enforce = would_enforce;
  note_testing(d.via);
  if (explain) {
    // The deciding MX-aware rule first; the rules that lost (the name rule,
    // other MX-aware matches, the default) after it.
    auto& first = by_name ? a.trail : o.steps;
    auto& then = by_name ? o.steps : a.trail;
    d.trail = std::move(first);
    for (auto& step : then) d.trail.push_back(step);
    d.disabled_hits = std::move(a.disabled_hits);
    d.discovery = std::move(a.discovery);
    d.reasoning = merge_why;
  }
  return d;
}

std::string explain_text(const Snapshot& s, MapName map, std::string_view key, const Answer& a) {
  std::string out = fmt::format("{} {}: {}{}\n", map_name(map), printable(key), a.temp ? "TEMP " : "",
                                a.found ? a.value : "NOTFOUND");
  // A TEMP or DANE answer comes from no rule: every rule listed lost to it.
  bool first = !(a.found && a.rule == kNone);
  for (auto& st : a.trail) {
    const Rule& r = s.rules[st.rule];
    std::string what = r.direction == Direction::outbound || r.is_default
                           ? r.policy.value()
                           : (r.require_tls ? fmt::format("require TLS{}{}, action {}",
                                                          r.min_bits ? fmt::format(", >= {} bits", r.min_bits) : "",
                                                          r.min_protocol.empty() ? "" : ", >= " + r.min_protocol,
                                                          action_name(r.action))
                                            : std::string("exempt (require = none)"));
    std::string how;
    if (!st.via.empty())
      how = fmt::format("rule \"{}\" ({}): {} at {}", r.name, s.where(r), st.via, s.where_entry(st.entry));
    else if (st.entry == kNone)
      how = r.is_default && map != MapName::inbound ? "the default" : fmt::format("rule \"{}\"", r.name);
    else {
      how = fmt::format("rule \"{}\" ({}), entry \"{}\" at {} matched {}", r.name, s.where(r),
                        printable(s.text(st.entry)), s.where_entry(st.entry), hit_kind_words(st.kind));
      if (!st.matched.empty()) {
        how += ' ';  // (not " " + printable(): GCC 12 -O3 reports a false -Wrestrict)
        how += printable(st.matched);
      }
      if (st.kind == HitKind::cidr) how += fmt::format(" (/{})", st.prefix);
    }
    if (st.entry == kNone) how += fmt::format(" ({})", s.where(r));
    out += fmt::format("  {} {}: {}\n", first ? "decided by" : "lost to it:", how, what);
    first = false;
  }
  for (uint32_t e : a.disabled_hits) {
    const Rule& r = s.rules[s.entries[e].rule];
    out += fmt::format("  rule \"{}\" (disabled) would match: entry \"{}\" at {} ({}), but the rule at {} says "
                       "enabled = false, so it is not in force\n",
                       r.name, printable(s.text(e)), s.where_entry(e),
                       r.direction == Direction::outbound ? r.policy.value()
                       : r.require_tls                    ? std::string("require TLS")
                                                          : std::string("exempt"),
                       s.where(r));
  }
  for (auto& line : a.discovery) out += fmt::format("  {}\n", line);
  if (!a.reasoning.empty()) out += fmt::format("  why: {}\n", a.reasoning);
  return out;
}

}  // namespace tlspolicy
