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

// Untrusted text (entries, keys, file contents) made safe to put in a log or
// error line: control characters (C0, DEL, C1) and bytes that are not valid
// UTF-8 become \xNN; everything else, UTF-8 letters included, is kept.
std::string printable(std::string_view s);
// The length of the valid UTF-8 sequence at s[i] (1 for ASCII), 0 if invalid.
size_t utf8_length(std::string_view s, size_t i);

// A syntactically valid ASCII domain name (labels of letters, digits, '-', '_').
bool valid_domain_pattern(std::string_view d);

bool has_non_ascii(std::string_view s);
// Whether a domain (lowercase A-labels) ends in a top-level domain of the
// Public Suffix List (libpsl's built-in copy), or is under a special-use
// name (RFC 2606/6761: test, example, invalid, localhost, example.com/net/org)
// that tests and docs use on purpose. False for a bare word ("john") and for
// "john.smith" or "partner.lan": likely a local part or an internal name.
bool has_public_suffix(std::string_view domain);
// A domain with U-labels (bücher.test, any case, NFC or not) in the form
// rules are stored in: lowercase A-labels (xn--bcher-kva.test), by libidn2
// (IDNA 2008 with UTS #46 non-transitional mapping, as Postfix's ICU does).
// nullopt with *why set when libidn2 refuses the name.
std::optional<std::string> idn_to_ascii(std::string_view domain, std::string* why);
// Lookup side: the same, label by label where the whole name is refused, so
// a label libidn2 rejects stays as it is (it matches no rule) while its
// parent domains still match theirs.
std::string idn_key(std::string_view domain);

struct IpAddr {
  bool v6 = false;
  std::array<uint8_t, 16> bytes{};
  int bits() const { return v6 ? 128 : 32; }
};
// Parses an IPv4 or IPv6 address; an IPv4-mapped IPv6 address
// (::ffff:192.0.2.1) comes back as the IPv4 address it stands for.
std::optional<IpAddr> parse_ip(std::string_view s);
// ::ffff:a.b.c.d -> a.b.c.d; any other address as it is.
IpAddr unmap_v4(const IpAddr& a);
std::string format_ip(const IpAddr& a);

// What a config entry says; the dimension decides which kinds are allowed.
enum class EntryKind {
  domain,           // example.com: the domain and (if subdomains are on) its subdomains
  exact_domain,     // *@example.com, or example.com with subdomains off
  subdomains_only,  // .example.com
  address,          // user@example.com
  local_part,       // john.smith: that local part at any domain (inbound recipients)
  any,              // * (a sender "*" does not cover the null sender)
  null_sender,      // <>: the null sender of bounces and DSNs (inbound senders)
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

// Lookup-side normalisation: lowercase, strip trailing dots, U-labels to
// A-labels (idn_key).
std::string normalize_domain_key(std::string_view s);
// Lowercases an address and strips a +extension: the local part is cut at the
// first character from `delimiters` (Postfix's recipient_delimiter semantics).
// The local part (UTF-8 under SMTPUTF8) stays bytes, ASCII-lowercased; the
// domain is normalised as by normalize_domain_key.
std::string normalize_address(std::string_view s, std::string_view delimiters);

}  // namespace tlspolicy
