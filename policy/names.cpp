// Name parsing for rules and lookups. See names.hpp.
#include "policy/names.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <idn2.h>
#include <libpsl.h>

#include <cstring>

namespace tlspolicy {

std::string lowercase(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = ascii_lower(c);
  return out;
}

size_t utf8_length(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return i + k < s.size() ? uint8_t(s[i + k]) : 0; };
  uint8_t c = b(0);
  if (c < 0x80) return 1;
  auto cont = [&](size_t k) { return (b(k) & 0xc0) == 0x80; };
  // RFC 3629's table: no overlong forms, no surrogates, nothing above U+10FFFF.
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    uint8_t lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    return b(1) >= lo && b(1) <= hi && cont(2) ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    uint8_t lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    return b(1) >= lo && b(1) <= hi && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  auto escape = [&](uint8_t c) { out += fmt::format("\\x{:02x}", c); };
  for (size_t i = 0; i < s.size();) {
    uint8_t c = uint8_t(s[i]);
    size_t n = utf8_length(s, i);
    // C1 controls (U+0080..U+009F, encoded c2 80..c2 9f) act on terminals too.
    bool control = c < 0x20 || c == 0x7f || (c == 0xc2 && n == 2 && uint8_t(s[i + 1]) < 0xa0);
    if (n == 0) n = 1, control = true;
    if (control)
      for (size_t k = 0; k < n; ++k) escape(uint8_t(s[i + k]));
    else
      out.append(s.substr(i, n));
    i += n;
  }
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

bool has_non_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return true;
  return false;
}

std::optional<std::string> idn_to_ascii(std::string_view domain, std::string* why) {
  if (domain.find('\0') != std::string_view::npos) {  // libidn2 reads C strings
    if (why) *why = "a NUL byte";
    return std::nullopt;
  }
  char* out = nullptr;
  int rc = idn2_to_ascii_8z(std::string(domain).c_str(), &out, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
  if (rc != IDN2_OK) {
    if (why) *why = idn2_strerror(rc);
    return std::nullopt;
  }
  std::string ascii = lowercase(out);
  idn2_free(out);
  return ascii;
}

// A valid name is at most 253 bytes as A-labels; its UTF-8 form can be
// longer, but not four times longer in any real name. Longer keys are not
// worth libidn2's time (tens of microseconds per call).
constexpr size_t kMaxUtf8Domain = 1024;

std::string idn_key(std::string_view domain) {
  if (domain.size() > kMaxUtf8Domain) return lowercase(domain);
  if (auto a = idn_to_ascii(domain, nullptr)) return *a;
  // Label by label from the top-level one down: the trie walks the same
  // way, so below the first label libidn2 refuses nothing can match, and
  // the rest stays as it is (so do labels once the name is too long).
  std::string out;
  for (size_t end = domain.size();;) {
    size_t dot = end == 0 ? std::string_view::npos : domain.rfind('.', end - 1);
    size_t start = dot == std::string_view::npos ? 0 : dot + 1;
    auto label = domain.substr(start, end - start);
    std::optional<std::string> a;
    if (!has_non_ascii(label))
      a = lowercase(label);
    else if (out.size() <= 253)
      a = idn_to_ascii(label, nullptr);
    if (!a) return lowercase(domain.substr(0, end)) + out;
    // Prepended by building anew: GCC 12 at -O3 reports a false -Wrestrict
    // for out.insert(0, ...).
    a->append(out);
    out = std::move(*a);
    if (dot == std::string_view::npos) return out;
    out = "." + out;
    end = dot;
  }
}

namespace {
std::optional<IpAddr> parse_ip_exact(std::string_view s) {
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
}  // namespace

IpAddr unmap_v4(const IpAddr& a) {
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (!a.v6 || std::memcmp(a.bytes.data(), kMapped, sizeof kMapped) != 0) return a;
  IpAddr v4;
  std::memcpy(v4.bytes.data(), a.bytes.data() + 12, 4);
  return v4;
}

std::optional<IpAddr> parse_ip(std::string_view s) {
  auto a = parse_ip_exact(s);
  if (a && a->v6) return unmap_v4(*a);
  return a;
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
    case EntryKind::null_sender: return "the null sender";
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

bool valid_utf8(std::string_view s) {
  for (size_t i = 0, n; i < s.size(); i += n)
    if ((n = utf8_length(s, i)) == 0) return false;
  return true;
}

// Validates a domain (the tail of the entry `whole`) and returns it as rules
// store it: lowercase, A-labels, no trailing dot. Explains what is wrong
// otherwise, with the entry as it should have been written.
std::optional<std::string> domain_or_error(std::string_view d, std::string_view whole,
                                           std::string* error) {
  auto head = whole.substr(0, whole.size() - d.size());
  std::string_view bare = d;
  while (!bare.empty() && bare.back() == '.') bare.remove_suffix(1);
  if (d.size() - bare.size() > 1) {
    *error = fmt::format("\"{}\" ends in {} dots: a domain ends in at most one, write \"{}{}\"", whole,
                         d.size() - bare.size(), head, bare);
    return std::nullopt;
  }
  if (bare.starts_with(".") || bare.find("..") != std::string_view::npos) {
    std::string fixed;
    for (char c : bare)
      if (c != '.' || (!fixed.empty() && fixed.back() != '.')) fixed += c;
    *error = fmt::format("empty label in \"{}\": perhaps you meant \"{}{}\"", whole, head, fixed);
    return std::nullopt;
  }
  std::string ascii;
  if (has_non_ascii(bare)) {
    std::string why;
    auto a = idn_to_ascii(bare, &why);
    if (!a) {
      *error = fmt::format("\"{}\" is not a valid internationalised domain name ({})", whole, why);
      return std::nullopt;
    }
    ascii = std::move(*a);
    bare = ascii;
  }
  if (!valid_domain_pattern(bare)) {
    *error = fmt::format("\"{}\" is not a valid domain name", whole);
    return std::nullopt;
  }
  return lowercase(bare);
}

std::optional<std::string> local_part_or_error(std::string_view local, std::string_view whole,
                                               std::string* error) {
  if (!valid_utf8(local)) {
    *error = fmt::format("\"{}\": the local part is not valid UTF-8", whole);
    return std::nullopt;
  }
  return lowercase(local);
}

std::optional<Entry> parse_cidr(std::string_view text, Dimension dim, std::string* error) {
  Entry e;
  e.kind = EntryKind::cidr;
  auto slash = text.find('/');
  auto ip = parse_ip_exact(text.substr(0, slash));
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
  // ::ffff:192.0.2.0/120 is 192.0.2.0/24: lookups see IPv4-mapped
  // addresses as IPv4 (a mapped network always has a prefix of 96 or more).
  if (ip->v6 && unmap_v4(*ip).v6 == false && e.prefix >= 96) {
    e.addr = unmap_v4(*ip);
    e.prefix -= 96;
  }
  (void)dim;
  return e;
}

}  // namespace

bool has_public_suffix(std::string_view domain) {
  while (domain.ends_with(".")) domain.remove_suffix(1);
  auto dot = domain.rfind('.');
  if (dot == std::string_view::npos) return false;  // a bare word
  std::string tld(domain.substr(dot + 1));
  if (tld == "test" || tld == "example" || tld == "invalid" || tld == "localhost") return true;
  auto under = [&](std::string_view parent) {
    return domain == parent || (domain.ends_with(parent) && domain[domain.size() - parent.size() - 1] == '.');
  };
  if (under("example.com") || under("example.net") || under("example.org")) return true;
  // NO_STAR_RULE: without it every unknown TLD would count as a suffix.
  static const psl_ctx_t* psl = psl_builtin();
  return psl && psl_is_public_suffix2(psl, tld.c_str(), PSL_TYPE_ICANN | PSL_TYPE_NO_STAR_RULE);
}

std::optional<Entry> parse_entry(std::string_view text, Dimension dim, bool subdomains,
                                 std::string* error) {
  if (text.empty()) {
    *error = "empty entry";
    return std::nullopt;
  }
  for (char c : text)
    if (c == ' ' || c == '\t' || c == ',') {
      *error = fmt::format("\"{}\" holds more than one entry: a config string is one entry, so write "
                           "[ \"a\", \"b\" ] (a list file may hold several per line)",
                           text);
      return std::nullopt;
    }
  bool ip_dim = dim == Dimension::destination || dim == Dimension::client;
  if (text == "<>") {
    if (dim == Dimension::inbound_sender) return Entry{EntryKind::null_sender, {}, {}, 0};
    *error = fmt::format("\"<>\" (the null sender) is only allowed in an inbound from list, not a {} list",
                         dimension_name(dim));
    return std::nullopt;
  }
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
      auto l = local_part_or_error(local, text, error);
      if (!l) return std::nullopt;
      return Entry{EntryKind::local_part, *l, {}, 0};
    }
    auto d = domain_or_error(domain, text, error);
    if (!d) return std::nullopt;
    if (local == "*" || local.empty()) return Entry{EntryKind::exact_domain, *d, {}, 0};
    if (local.find('@') != std::string_view::npos) {
      *error = fmt::format("\"{}\" is not a valid address", text);
      return std::nullopt;
    }
    auto l = local_part_or_error(local, text, error);
    if (!l) return std::nullopt;
    return Entry{EntryKind::address, *l + "@" + *d, {}, 0};
  }
  if (dim == Dimension::inbound_recipient) {
    auto l = local_part_or_error(text, text, error);
    if (!l) return std::nullopt;
    return Entry{EntryKind::local_part, *l, {}, 0};
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

// "a.b." and "a.b.." are "a.b": a name with extra trailing dots must not
// escape the rules of the name it spells.
std::string normalize_domain_key(std::string_view s) {
  while (!s.empty() && s.back() == '.') s.remove_suffix(1);
  return has_non_ascii(s) ? idn_key(s) : lowercase(s);
}

std::string normalize_address(std::string_view s, std::string_view delimiters) {
  std::string out = lowercase(s);
  auto at = out.rfind('@');
  if (at == std::string::npos) return out;
  auto cut = delimiters.empty() ? std::string::npos : out.find_first_of(delimiters);
  // Postfix never strips at position 0 ("+foo@x" keeps its local part).
  if (cut != std::string::npos && cut > 0 && cut < at) {
    out.erase(cut, at - cut);
    at = cut;
  }
  while (out.size() > at + 1 && out.back() == '.') out.pop_back();
  if (has_non_ascii(std::string_view(out).substr(at + 1))) out = out.substr(0, at + 1) + idn_key(out.substr(at + 1));
  return out;
}

}  // namespace tlspolicy
