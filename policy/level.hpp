// TLS security levels (Postfix's names plus the words gateway admins use) and
// the per-rule policy value: a level with validated Postfix policy attributes.
#pragma once
#include <optional>
#include <string>
#include <vector>
#include <string_view>

namespace tlspolicy {

// Ordered from weakest to strictest guarantee; "strictest wins" compares these.
// dane is opportunistic DANE (plain "may" without TLSA records), so it ranks
// below encrypt; dane-only, fingerprint, verify and secure all authenticate.
enum class Level { none, may, dane, encrypt, verify, secure, dane_only, fingerprint };

std::string_view level_name(Level l);
// Accepts Postfix names (case-insensitive) and aliases: try/opportunistic = may,
// require/required/enforce/encrypted = encrypt.
std::optional<Level> parse_level(std::string_view word);
inline int rank(Level l) { return static_cast<int>(l); }
inline bool enforces_tls(Level l) { return rank(l) >= rank(Level::encrypt); }

// A level and its attributes, rendered exactly as Postfix will read it.
struct TlsPolicy {
  Level level = Level::may;
  std::string attributes;  // "" or " protocols=>=TLSv1.2 ciphers=high" (leading space)
  std::string value() const { return std::string(level_name(level)) + attributes; }
  bool operator==(const TlsPolicy&) const = default;
};

// Parses "encrypt protocols=>=TLSv1.2 ciphers=high". On error returns nullopt
// and sets *error to a message naming the offending word and the fix.
// Parses "level attr=value ...". Remarks that do not make the policy
// invalid (an exclusion OpenSSL does not know) go to *notes when given.
std::optional<TlsPolicy> parse_tls_policy(std::string_view text, std::string* error,
                                          std::vector<std::string>* notes = nullptr);

}  // namespace tlspolicy
