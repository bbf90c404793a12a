// Level names and Postfix policy attribute validation. Postfix defers every
// message whose policy answer has an unknown or malformed attribute, so each
// attribute is checked here, at config load, instead of at delivery time.
#include "policy/level.hpp"

#include <algorithm>
#include <array>
#include <fmt/format.h>
#include <vector>

#include "policy/ciphers.hpp"
#include "policy/names.hpp"

namespace tlspolicy {
namespace {

constexpr std::array<std::string_view, 8> kNames = {
    "none", "may", "dane", "encrypt", "verify", "secure", "dane-only", "fingerprint"};

constexpr std::array<std::string_view, 6> kProtocols = {"SSLv2", "SSLv3", "TLSv1",
                                                        "TLSv1.1", "TLSv1.2", "TLSv1.3"};

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

std::vector<std::string_view> split(std::string_view s, std::string_view seps) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find_first_of(seps, i);
    if (j == std::string_view::npos) j = s.size();
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

bool known_protocol(std::string_view p) {
  for (auto k : kProtocols)
    if (iequals(k, p)) return true;
  return false;
}

// protocols= takes "!SSLv3:!TLSv1", "TLSv1.2:TLSv1.3" or ">=TLSv1.2" (Postfix 3.6+).
std::string check_protocols(std::string_view v) {
  if (v.empty()) return "empty protocols= value";
  for (auto tok : split(v, ":,")) {
    std::string_view p = tok;
    if (p.starts_with(">=") || p.starts_with("<="))
      p.remove_prefix(2);
    else if (p.starts_with("!"))
      p.remove_prefix(1);
    if (!known_protocol(p))
      return fmt::format("unknown protocol \"{}\" in protocols={} (use SSLv3, TLSv1, TLSv1.1, "
                         "TLSv1.2 or TLSv1.3, e.g. protocols=>=TLSv1.2)",
                         tok, v);
  }
  return {};
}

bool cipher_list_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '+' || c == '!' || c == ':' || c == '_' || c == '.' || c == ',' ||
         c == '@' || c == '=';
}

// fingerprint match= is a list of hex byte pairs separated by ':' per byte,
// several fingerprints separated by '|' (Postfix accepts "|" inside one attribute).
// Postfix reads a fingerprint as hex byte pairs, each optionally followed
// by ':' (hex_decode_opt with HEX_DECODE_FLAG_ALLOW_COLON); several are
// separated by '|'. At least 16 bytes (MD5, the shortest digest).
bool hex_fingerprint(std::string_view v) {
  auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
  for (auto fp : split(v, "|")) {
    size_t bytes = 0, i = 0;
    while (i < fp.size()) {
      if (i + 1 >= fp.size() || !hex(fp[i]) || !hex(fp[i + 1])) return false;
      i += 2;
      ++bytes;
      if (i < fp.size() && fp[i] == ':') {
        if (i + 1 == fp.size()) return false;
        ++i;
      }
    }
    if (bytes < 16) return false;
  }
  return true;
}

// Postfix's valid_hostname(): a DNS name that is not all digits and dots.
bool postfix_hostname(std::string_view v) {
  return v.size() <= 255 && valid_domain_pattern(v) && v.find_first_not_of("0123456789.") != std::string_view::npos;
}

bool one_of(std::string_view v, std::initializer_list<std::string_view> words) {
  for (auto w : words)
    if (iequals(v, w)) return true;
  return false;
}

// Checks one attribute as Postfix's tls_policy_lookup_one() (3.7 to 3.10)
// would: names and keywords compared case-insensitively, the repeat rules
// and the values it accepts. `name` is lowercased by the caller.
std::string check_attribute(Level level, std::string_view name, std::string_view value,
                            bool repeated) {
  constexpr std::string_view kOnce[] = {"ciphers",     "protocols",     "exclude",       "servername",
                                        "policy_type", "policy_domain", "policy_failure", "policy_ttl"};
  for (auto o : kOnce)
    if (name == o && repeated) return fmt::format("attribute {}= given twice (Postfix allows it once)", name);
  if (value.empty() && (name == "ciphers" || name == "match" || name == "tafile" || name == "servername" ||
                        name == "policy_type" || name == "policy_domain" || name == "policy_failure" ||
                        name == "policy_ttl" || name == "connection_reuse" || name == "enable_rpk"))
    return fmt::format("attribute {}= has no value", name);
  if (name == "ciphers") {
    if (one_of(value, {"export", "low", "medium", "high", "null"})) return {};
    return fmt::format("ciphers={} is not one of export, low, medium, high, null", value);
  }
  if (name == "protocols") return value.empty() ? std::string() : check_protocols(value);
  if (name == "exclude") {
    for (char c : value)
      if (!cipher_list_char(c))
        return fmt::format("exclude={} is not an OpenSSL cipher list", value);
    return {};
  }
  if (name == "match") {
    if (level == Level::fingerprint) {
      if (!hex_fingerprint(value))
        return fmt::format("match={} is not a certificate fingerprint (hex bytes separated "
                           "by ':', e.g. 3D:95:34:...)",
                           value);
      return {};
    }
    if (level == Level::verify || level == Level::secure) {
      // hostname, nexthop, dot-nexthop, a DNS name, or ".domain" for any
      // subdomain of it (tls_client.c add_namechecks(); the MTA-STS peers
      // write "*.mx.example" patterns so). Postfix ignores a lone ".".
      for (auto n : split(value, ":")) {
        if (one_of(n, {"hostname", "nexthop", "dot-nexthop"}) || n == ".") continue;
        if (n.starts_with(".")) n.remove_prefix(1);
        if (!valid_domain_pattern(n))
          return fmt::format("match={}: \"{}\" is neither hostname, nexthop, dot-nexthop, a domain name "
                             "nor .domain (its subdomains)",
                             value, n);
      }
      return {};
    }
    return fmt::format("match= only applies to the fingerprint, verify and secure levels, "
                       "not {}",
                       level_name(level));
  }
  if (name == "servername") {
    // "hostname" and "nexthop" are keywords, compared case-sensitively by Postfix.
    if (value == "hostname" || value == "nexthop" || postfix_hostname(value)) return {};
    return fmt::format("servername={} is neither \"hostname\", \"nexthop\" nor a domain name", value);
  }
  if (name == "tafile") {
    if (level != Level::verify && level != Level::secure)
      return fmt::format("tafile= only applies to the verify and secure levels, not {}",
                         level_name(level));
    return {};
  }
  if (name == "connection_reuse" || name == "enable_rpk") {
    if (one_of(value, {"yes", "no"})) return {};
    return fmt::format("{}={} must be yes or no", name, value);
  }
  // TLSRPT (Postfix 3.10): the policy that an MTA-STS or DANE source applied.
  if (name == "policy_type") {
    if (one_of(value, {"sts", "no-policy-found"})) return {};
    return fmt::format("policy_type={} must be sts or no-policy-found", value);
  }
  if (name == "policy_domain") {
    if (postfix_hostname(value)) return {};
    return fmt::format("policy_domain={} is not a domain name", value);
  }
  if (name == "policy_failure") {
    if (one_of(value, {"sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid", "validation-failure"}))
      return {};
    return fmt::format("policy_failure={} must be sts-policy-fetch-error, sts-policy-invalid, "
                       "sts-webpki-invalid or validation-failure",
                       value);
  }
  if (name == "policy_ttl") {
    // Digits that fit Postfix's int.
    bool digits = value.find_first_not_of("0123456789") == std::string_view::npos;
    if (!digits || value.size() > 10 || std::stoll(std::string(value)) > 2147483647)
      return fmt::format("policy_ttl={} is not a number of seconds (at most 2147483647)", value);
    return {};
  }
  if (name == "policy_string" || name == "mx_host_pattern") return {};
  return fmt::format("unknown policy attribute \"{}=\" (Postfix knows ciphers=, protocols=, "
                     "exclude=, match=, servername=, tafile=, connection_reuse=, enable_rpk= (3.9), "
                     "and policy_type=, policy_domain=, policy_string=, mx_host_pattern=, "
                     "policy_failure= (TLSRPT, 3.10))",
                     name);
}

// Splits a policy as Postfix does: tokens separated by commas and white
// space; 3.10's "{ name = value with spaces }" is one token.
std::vector<std::string_view> policy_tokens(std::string_view s, std::string* error) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == ',' || s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n') {
      ++i;
      continue;
    }
    size_t j = i;
    if (s[i] == '{') {
      j = s.find('}', i);
      if (j == std::string_view::npos) {
        *error = fmt::format("\"{}\": a \"{{\" without its \"}}\"", s.substr(i));
        return {};
      }
      ++j;
    } else {
      while (j < s.size() && s[j] != ',' && s[j] != ' ' && s[j] != '\t' && s[j] != '\r' && s[j] != '\n') ++j;
    }
    out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::string_view trim(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

}  // namespace

std::string_view level_name(Level l) { return kNames[static_cast<size_t>(l)]; }

std::optional<Level> parse_level(std::string_view w) {
  for (size_t i = 0; i < kNames.size(); ++i)
    if (iequals(kNames[i], w)) return static_cast<Level>(i);
  for (auto a : {"try", "opportunistic"})
    if (iequals(a, w)) return Level::may;
  for (auto a : {"require", "required", "enforce", "encrypted"})
    if (iequals(a, w)) return Level::encrypt;
  return std::nullopt;
}

std::optional<TlsPolicy> parse_tls_policy(std::string_view text, std::string* error,
                                          std::vector<std::string>* notes) {
  std::string tokerr;
  auto words = policy_tokens(text, &tokerr);
  if (!tokerr.empty()) {
    *error = tokerr;
    return std::nullopt;
  }
  if (words.empty()) {
    *error = "empty level (use none, may, encrypt, dane, dane-only, fingerprint, verify or "
             "secure)";
    return std::nullopt;
  }
  auto level = parse_level(words[0]);
  if (!level) {
    *error = fmt::format("unknown TLS level \"{}\" (use none, may, encrypt, dane, dane-only, "
                         "fingerprint, verify, secure, or try/require)",
                         words[0]);
    return std::nullopt;
  }
  TlsPolicy p{*level, {}};
  if (*level == Level::none && words.size() > 1) {
    *error = fmt::format("level none takes no attributes (\"{}\"; Postfix would ignore it)", words[1]);
    return std::nullopt;
  }
  std::vector<std::string> seen;
  bool tlsrpt = false, has_type = false;
  for (size_t i = 1; i < words.size(); ++i) {
    std::string_view w = words[i];
    bool braced = w.front() == '{';
    if (braced) w = w.substr(1, w.size() - 2);
    auto eq = w.find('=');
    if (eq == std::string_view::npos || trim(w.substr(0, eq)).empty()) {
      *error = fmt::format("\"{}\" is not an attribute (expected name=value, e.g. protocols=>=TLSv1.2; "
                           "a comma or space starts a new attribute, as in Postfix, so separate "
                           "protocols and match names with \":\")",
                           words[i]);
      return std::nullopt;
    }
    std::string name = lowercase(trim(w.substr(0, eq)));
    std::string_view value = trim(w.substr(eq + 1));
    bool repeated = std::find(seen.begin(), seen.end(), name) != seen.end();
    auto problem = check_attribute(*level, name, value, repeated);
    if (!problem.empty()) {
      *error = problem;
      return std::nullopt;
    }
    if (name == "exclude" && notes)
      for (auto x : split(value, ":"))
        if (!known_cipher_name(x))
          notes->push_back(fmt::format("exclude={}: this OpenSSL knows no cipher or alias \"{}\", so excluding it "
                                       "has no effect",
                                       value, x));
    has_type |= name == "policy_type";
    tlsrpt |= name == "policy_domain" || name == "policy_string" || name == "mx_host_pattern" ||
              name == "policy_failure" || name == "policy_ttl";
    seen.push_back(name);
    // Written back as Postfix reads it: braces where a value has spaces.
    bool spaces = value.find_first_of(" \t") != std::string_view::npos;
    p.attributes += ' ';
    if (braced || spaces)
      p.attributes += fmt::format("{{ {} = {} }}", name, value);
    else
      p.attributes += fmt::format("{}={}", name, value);
  }
  if (tlsrpt && !has_type) {
    *error = "TLSRPT attributes (policy_domain=, policy_string=, mx_host_pattern=, policy_failure=) need "
             "policy_type= (Postfix 3.10 treats them as an invalid policy otherwise)";
    return std::nullopt;
  }
  if (p.level == Level::fingerprint && p.attributes.find(" match=") == std::string::npos) {
    *error = "level fingerprint needs at least one match=<fingerprint>";
    return std::nullopt;
  }
  return p;
}

}  // namespace tlspolicy
