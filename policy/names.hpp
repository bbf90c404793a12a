// Parsing and normalising the names rules are keyed by: domains, addresses,
// local parts, IP addresses and CIDR ranges. Shared by config loading (strict,
// with messages) and lookups (lenient: an odd key simply matches nothing).
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tlspolicy {

inline char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; }
std::string lowercase(std::string_view s);

// A syntactically valid ASCII domain name (labels of letters, digits, '-', '_').
bool valid_domain_pattern(std::string_view d);

struct IpAddr {
  bool v6 = false;
  std::array<uint8_t, 16> bytes{};
  int bits() const { return v6 ? 128 : 32; }
};
std::optional<IpAddr> parse_ip(std::string_view s);
std::string format_ip(const IpAddr& a);

// What a config entry says; the dimension decides which kinds are allowed.
enum class EntryKind {
  domain,           // example.com: the domain and (if subdomains are on) its subdomains
  exact_domain,     // *@example.com, or example.com with subdomains off
  subdomains_only,  // .example.com
  address,          // user@example.com
  local_part,       // john.smith: that local part at any domain (inbound recipients)
  any,              // *
  cidr,             // 192.0.2.0/24, 2001:db8::/32, or a single address
};
std::string_view entry_kind_words(EntryKind k);

// Which list an entry comes from; decides how bare words are read.
enum class Dimension { destination, sender, inbound_sender, inbound_recipient, client };
std::string_view dimension_name(Dimension d);

struct Entry {
  EntryKind kind = EntryKind::domain;
  std::string key;  // normalised domain / address / local part; empty for cidr and any
  IpAddr addr;      // for cidr
  int prefix = 0;   // for cidr
};

// Parses one config/list entry. On error returns nullopt with *error naming the
// problem and, where there is one, the fix ("perhaps you meant ...").
std::optional<Entry> parse_entry(std::string_view text, Dimension dim, bool subdomains,
                                 std::string* error);

// Lookup-side normalisation: lowercase, strip one trailing dot.
std::string normalize_domain_key(std::string_view s);
// Lowercases an address and strips a +extension: the local part is cut at the
// first character from `delimiters` (Postfix's recipient_delimiter semantics).
std::string normalize_address(std::string_view s, std::string_view delimiters);

}  // namespace tlspolicy
