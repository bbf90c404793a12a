// Level names and Postfix policy attribute validation. Postfix defers every
// message whose policy answer has an unknown or malformed attribute, so each
// attribute is checked here, at config load, instead of at delivery time.
#include "policy/level.hpp"

#include <array>
#include <fmt/format.h>
#include <vector>

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
bool hex_fingerprint(std::string_view v) {
  for (auto fp : split(v, "|")) {
    auto bytes = split(fp, ":");
    if (bytes.size() < 16) return false;
    for (auto b : bytes)
      if (b.size() != 2 || !std::isxdigit(static_cast<unsigned char>(b[0])) ||
          !std::isxdigit(static_cast<unsigned char>(b[1])))
        return false;
  }
  return true;
}

std::string check_attribute(Level level, std::string_view name, std::string_view value,
                            bool repeated) {
  if (value.empty()) return fmt::format("attribute {}= has no value", name);
  if (name != "match" && repeated) return fmt::format("attribute {}= given twice", name);
  if (name == "ciphers") {
    for (auto k : {"export", "low", "medium", "high", "null"})
      if (value == k) return {};
    return fmt::format("ciphers={} is not one of export, low, medium, high, null", value);
  }
  if (name == "protocols") return check_protocols(value);
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
      for (auto n : split(value, ":"))
        if (n != "hostname" && n != "nexthop" && n != "dot-nexthop" &&
            !valid_domain_pattern(n))
          return fmt::format("match={}: \"{}\" is neither hostname, nexthop, dot-nexthop nor "
                             "a domain name",
                             value, n);
      return {};
    }
    return fmt::format("match= only applies to the fingerprint, verify and secure levels, "
                       "not {}",
                       level_name(level));
  }
  if (name == "servername") {
    if (value == "hostname" || valid_domain_pattern(value)) return {};
    return fmt::format("servername={} is neither \"hostname\" nor a domain name", value);
  }
  if (name == "tafile") {
    if (level != Level::verify && level != Level::secure)
      return fmt::format("tafile= only applies to the verify and secure levels, not {}",
                         level_name(level));
    if (!value.starts_with("/")) return fmt::format("tafile={} is not an absolute path", value);
    return {};
  }
  if (name == "connection_reuse") {
    if (value == "yes" || value == "no") return {};
    return fmt::format("connection_reuse={} must be yes or no", value);
  }
  return fmt::format("unknown policy attribute \"{}=\" (Postfix knows ciphers=, protocols=, "
                     "exclude=, match=, servername=, tafile=, connection_reuse=)",
                     name);
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

std::optional<TlsPolicy> parse_tls_policy(std::string_view text, std::string* error) {
  auto words = split(text, " \t");
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
    *error = fmt::format("level none takes no attributes (\"{}\")", words[1]);
    return std::nullopt;
  }
  std::vector<std::string_view> seen;
  for (size_t i = 1; i < words.size(); ++i) {
    auto eq = words[i].find('=');
    if (eq == std::string_view::npos) {
      *error = fmt::format("\"{}\" is not an attribute (expected name=value, e.g. "
                           "protocols=>=TLSv1.2)",
                           words[i]);
      return std::nullopt;
    }
    auto name = words[i].substr(0, eq);
    bool repeated = false;
    for (auto s : seen) repeated |= (s == name);
    auto problem = check_attribute(*level, name, words[i].substr(eq + 1), repeated);
    if (!problem.empty()) {
      *error = problem;
      return std::nullopt;
    }
    seen.push_back(name);
    p.attributes += ' ';
    p.attributes += words[i];
  }
  if (p.level == Level::fingerprint && p.attributes.find(" match=") == std::string::npos) {
    *error = "level fingerprint needs at least one match=<fingerprint>";
    return std::nullopt;
  }
  return p;
}

}  // namespace tlspolicy
