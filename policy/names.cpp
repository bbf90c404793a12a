// Name parsing for rules and lookups. See names.hpp.
#include "policy/names.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

namespace tlspolicy {

std::string lowercase(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = ascii_lower(c);
  return out;
}

bool valid_domain_pattern(std::string_view d) {
  if (d.empty() || d.size() > 253) return false;
  size_t label = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    char c = d[i];
    if (c == '.') {
      if (label == 0 || d[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || (c == '-' && label > 0);
    if (!ok || ++label > 63) return false;
  }
  return label > 0 && d.back() != '-';
}

std::optional<IpAddr> parse_ip(std::string_view s) {
  if (s.size() >= INET6_ADDRSTRLEN) return std::nullopt;
  char buf[INET6_ADDRSTRLEN];
  s.copy(buf, s.size());
  buf[s.size()] = 0;
  IpAddr a;
  if (inet_pton(AF_INET, buf, a.bytes.data()) == 1) return a;
  if (s.find(':') != std::string_view::npos && inet_pton(AF_INET6, buf, a.bytes.data()) == 1) {
    a.v6 = true;
    return a;
  }
  return std::nullopt;
}

std::string format_ip(const IpAddr& a) {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(a.v6 ? AF_INET6 : AF_INET, a.bytes.data(), buf, sizeof buf);
  return buf;
}

std::string_view entry_kind_words(EntryKind k) {
  switch (k) {
    case EntryKind::domain: return "domain and its subdomains";
    case EntryKind::exact_domain: return "exact domain";
    case EntryKind::subdomains_only: return "subdomains only";
    case EntryKind::address: return "address";
    case EntryKind::local_part: return "local part at any domain";
    case EntryKind::any: return "everything";
    case EntryKind::cidr: return "address range";
  }
  return "?";
}

std::string_view dimension_name(Dimension d) {
  switch (d) {
    case Dimension::destination: return "destination";
    case Dimension::sender: return "sender";
    case Dimension::inbound_sender: return "inbound sender";
    case Dimension::inbound_recipient: return "inbound recipient";
    case Dimension::client: return "client";
  }
  return "?";
}

namespace {

bool has_non_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return true;
  return false;
}

// Validates and lowercases a domain; explains what is wrong otherwise.
std::optional<std::string> domain_or_error(std::string_view d, std::string_view whole,
                                           std::string* error) {
  if (!d.empty() && d.back() == '.') d.remove_suffix(1);
  if (has_non_ascii(d)) {
    *error = fmt::format("non-ASCII domain \"{}\": write it in A-label form (xn--...), as "
                         "Postfix and DNS see it, e.g. the output of \"idn2 {}\"",
                         whole, d);
    return std::nullopt;
  }
  if (!valid_domain_pattern(d)) {
    *error = fmt::format("\"{}\" is not a valid domain name", whole);
    return std::nullopt;
  }
  return lowercase(d);
}

std::optional<Entry> parse_cidr(std::string_view text, Dimension dim, std::string* error) {
  Entry e;
  e.kind = EntryKind::cidr;
  auto slash = text.find('/');
  auto ip = parse_ip(text.substr(0, slash));
  if (!ip) {
    *error = fmt::format("\"{}\" is not an IP address or range", text);
    return std::nullopt;
  }
  e.addr = *ip;
  e.prefix = ip->bits();
  if (slash != std::string_view::npos) {
    auto len = text.substr(slash + 1);
    int n = 0;
    bool ok = !len.empty() && len.size() <= 3;
    for (char c : len) {
      ok &= (c >= '0' && c <= '9');
      n = n * 10 + (c - '0');
    }
    if (!ok || n > ip->bits()) {
      *error = fmt::format("bad prefix length in \"{}\" (0 to {} for IPv{})", text, ip->bits(),
                           ip->v6 ? 6 : 4);
      return std::nullopt;
    }
    e.prefix = n;
    IpAddr net = *ip;
    for (int b = n; b < ip->bits(); ++b) net.bytes[b / 8] &= uint8_t(~(0x80 >> (b % 8)));
    if (net.bytes != ip->bytes) {
      *error = fmt::format("non-null host address bits in \"{}\", perhaps you meant \"{}/{}\"",
                           text, format_ip(net), n);
      return std::nullopt;
    }
  }
  (void)dim;
  return e;
}

}  // namespace

std::optional<Entry> parse_entry(std::string_view text, Dimension dim, bool subdomains,
                                 std::string* error) {
  if (text.empty()) {
    *error = "empty entry";
    return std::nullopt;
  }
  for (char c : text)
    if (c == ' ' || c == '\t' || c == ',') {
      *error = fmt::format("\"{}\" holds more than one entry: put one entry per line or list "
                           "element",
                           text);
      return std::nullopt;
    }
  bool ip_dim = dim == Dimension::destination || dim == Dimension::client;
  if (text == "*") {
    if (dim == Dimension::inbound_sender || dim == Dimension::inbound_recipient)
      return Entry{EntryKind::any, {}, {}, 0};
    *error = dim == Dimension::destination
                 ? "\"*\" is not a destination: to cover every destination set default = "
                   "\"encrypt\" (or another level) instead"
                 : fmt::format("\"*\" is not allowed in a {} list", dimension_name(dim));
    return std::nullopt;
  }
  if (dim == Dimension::client || text.find('/') != std::string_view::npos ||
      (text.front() != '.' && parse_ip(text)) ||
      (text.front() == '[' && text.back() == ']')) {
    if (!ip_dim) {
      *error = fmt::format("\"{}\": IP addresses and ranges belong in a destination or client "
                           "list, not a {} list",
                           text, dimension_name(dim));
      return std::nullopt;
    }
    if (text.front() == '[' && text.back() == ']') text = text.substr(1, text.size() - 2);
    return parse_cidr(text, dim, error);
  }
  auto at = text.rfind('@');
  if (at != std::string_view::npos) {
    auto local = text.substr(0, at);
    auto domain = text.substr(at + 1);
    if (domain.empty() && dim == Dimension::inbound_recipient && !local.empty()) {
      return Entry{EntryKind::local_part, lowercase(local), {}, 0};
    }
    auto d = domain_or_error(domain, text, error);
    if (!d) return std::nullopt;
    if (local == "*" || local.empty()) return Entry{EntryKind::exact_domain, *d, {}, 0};
    if (local.find('@') != std::string_view::npos || has_non_ascii(local)) {
      *error = fmt::format("\"{}\" is not a valid address", text);
      return std::nullopt;
    }
    return Entry{EntryKind::address, lowercase(local) + "@" + *d, {}, 0};
  }
  if (dim == Dimension::inbound_recipient) {
    if (has_non_ascii(text)) {
      *error = fmt::format("\"{}\" is not a valid local part", text);
      return std::nullopt;
    }
    return Entry{EntryKind::local_part, lowercase(text), {}, 0};
  }
  if (text.front() == '.') {
    auto d = domain_or_error(text.substr(1), text, error);
    if (!d) return std::nullopt;
    return Entry{EntryKind::subdomains_only, *d, {}, 0};
  }
  auto d = domain_or_error(text, text, error);
  if (!d) return std::nullopt;
  return Entry{subdomains ? EntryKind::domain : EntryKind::exact_domain, *d, {}, 0};
}

std::string normalize_domain_key(std::string_view s) {
  if (!s.empty() && s.back() == '.') s.remove_suffix(1);
  return lowercase(s);
}

std::string normalize_address(std::string_view s, std::string_view delimiters) {
  std::string out = lowercase(s);
  auto at = out.rfind('@');
  if (at == std::string::npos || delimiters.empty()) return out;
  auto cut = out.find_first_of(delimiters);
  // Postfix never strips at position 0 ("+foo@x" keeps its local part).
  if (cut != std::string::npos && cut > 0 && cut < at) out.erase(cut, at - cut);
  if (!out.empty() && out.back() == '.') out.pop_back();
  return out;
}

}  // namespace tlspolicy
