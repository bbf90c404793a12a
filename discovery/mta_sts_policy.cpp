// RFC 8461 parsing by hand: the grammar is a few lines of ABNF and no Debian
// library parses MTA-STS (libcurl fetches, it does not interpret).
#include "discovery/mta_sts_policy.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "policy/names.hpp"

namespace tlspolicy::sts {
namespace {

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_wsp(char c) { return c == ' ' || c == '\t'; }

// sts-ext-name / sts-policy-ext-name: (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
bool valid_ext_name(std::string_view n) {
  if (n.empty() || n.size() > 32) return false;
  if (!is_alpha(n[0]) && !is_digit(n[0])) return false;
  return std::all_of(n.begin(), n.end(), [](char c) {
    return is_alpha(c) || is_digit(c) || c == '_' || c == '-' || c == '.';
  });
}

std::string_view trim_wsp(std::string_view s) {
  while (!s.empty() && is_wsp(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_wsp(s.back())) s.remove_suffix(1);
  return s;
}

// RFC 5321 Domain: LDH labels of 1..63, not starting or ending with '-',
// 253 octets at most, no trailing dot.
bool valid_host(std::string_view d) {
  if (d.empty() || d.size() > 253) return false;
  size_t start = 0;
  while (true) {
    size_t dot = d.find('.', start);
    std::string_view label = d.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (label.empty() || label.size() > 63) return false;
    if (label.front() == '-' || label.back() == '-') return false;
    for (char c : label)
      if (!is_alpha(c) && !is_digit(c) && c != '-') return false;
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

std::string quoted(std::string_view s) {
  std::string out = "\"";
  out += printable(s.size() > 80 ? s.substr(0, 80) : s);
  if (s.size() > 80) out += "...";
  out += "\"";
  return out;
}

}  // namespace

std::string_view mode_name(Mode m) {
  switch (m) {
    case Mode::enforce: return "enforce";
    case Mode::testing: return "testing";
    case Mode::none: return "none";
  }
  return "?";
}

TxtRecord parse_txt_record(std::string_view rec) {
  TxtRecord r;
  r.status = TxtRecord::Status::invalid;
  constexpr std::string_view version = "v=STSv1";
  if (rec.substr(0, version.size()) != version) {
    r.error = fmt::format("TXT record {} does not start with \"v=STSv1\"", quoted(rec));
    return r;
  }
  std::string_view rest = rec.substr(version.size());
  bool have_id = false;
  // 1*(sts-field-delim sts-field) [sts-field-delim], sts-field-delim = *WSP ";" *WSP
  while (true) {
    size_t i = 0;
    while (i < rest.size() && is_wsp(rest[i])) ++i;
    if (i == rest.size()) break;  // trailing whitespace: tolerated
    if (rest[i] != ';') {
      r.error = fmt::format("TXT record {}: expected \";\" before {}", quoted(rec), quoted(rest.substr(i)));
      return r;
    }
    ++i;
    while (i < rest.size() && is_wsp(rest[i])) ++i;
    rest.remove_prefix(i);
    if (rest.empty()) break;  // the optional final delimiter
    size_t end = 0;
    while (end < rest.size() && rest[end] != ';' && !is_wsp(rest[end])) ++end;
    std::string_view field = rest.substr(0, end);
    rest.remove_prefix(end);
    size_t eq = field.find('=');
    if (eq == std::string_view::npos) {
      r.error = fmt::format("TXT record {}: field {} has no \"=\"", quoted(rec), quoted(field));
      return r;
    }
    std::string_view name = field.substr(0, eq), value = field.substr(eq + 1);
    if (!valid_ext_name(name)) {
      r.error = fmt::format("TXT record {}: bad field name {}", quoted(rec), quoted(name));
      return r;
    }
    // sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
    bool value_ok = !value.empty() && std::all_of(value.begin(), value.end(), [](char c) {
      auto u = static_cast<unsigned char>(c);
      return u >= 0x21 && u <= 0x7e && c != ';' && c != '=';
    });
    if (!value_ok) {
      r.error = fmt::format("TXT record {}: bad value for {}", quoted(rec), quoted(name));
      return r;
    }
    if (name == "id") {
      if (have_id) continue;  // a repeated field: the first counts (RFC 8461 3.1)
      if (value.size() > 32 || !std::all_of(value.begin(), value.end(),
                                            [](char c) { return is_alpha(c) || is_digit(c); })) {
        r.error = fmt::format("TXT record {}: id must be 1 to 32 letters and digits", quoted(rec));
        return r;
      }
      r.id = std::string(value);
      have_id = true;
    }
  }
  if (!have_id) {
    r.error = fmt::format("TXT record {} has no id", quoted(rec));
    r.id.clear();
    return r;
  }
  r.status = TxtRecord::Status::found;
  return r;
}

TxtRecord parse_txt_records(const std::vector<std::string>& records) {
  std::vector<std::string_view> sts;
  for (const auto& rec : records) {
    std::string_view v = rec;
    // "v=STSv1" followed by the delimiter (or nothing): "v=STSv10" is another version.
    if (v.substr(0, 7) == "v=STSv1" && (v.size() == 7 || v[7] == ';' || is_wsp(v[7])))
      sts.push_back(v);
  }
  if (sts.empty()) {
    TxtRecord r;
    r.status = TxtRecord::Status::none;
    if (!records.empty())
      r.error = fmt::format("{} TXT record(s), none starts with \"v=STSv1\"", records.size());
    return r;
  }
  if (sts.size() > 1) {
    TxtRecord r;
    r.status = TxtRecord::Status::invalid;
    r.error = fmt::format("{} TXT records start with \"v=STSv1\" (RFC 8461 3.1 allows one)", sts.size());
    return r;
  }
  return parse_txt_record(sts.front());
}

PolicyResult parse_policy(std::string_view text) {
  PolicyResult res;
  auto fail = [&](std::string e) {
    res.policy.reset();
    res.error = std::move(e);
    return res;
  };
  if (text.size() > max_policy_size)
    return fail(fmt::format("policy is {} bytes, more than the limit of {}", text.size(), max_policy_size));
  Policy p;
  bool have_version = false, have_mode = false, have_max_age = false;
  size_t lineno = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? nl : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    for (char c : line) {
      auto u = static_cast<unsigned char>(c);
      if ((u < 0x20 && c != '\t') || u == 0x7f)
        return fail(fmt::format("line {}: control character in {}", lineno, quoted(line)));
    }
    size_t colon = line.find(':');
    if (colon == std::string_view::npos)
      return fail(fmt::format("line {}: {} is not \"key: value\"", lineno, quoted(line)));
    std::string_view key = line.substr(0, colon);
    std::string_view value = trim_wsp(line.substr(colon + 1));
    if (!valid_ext_name(key))
      return fail(fmt::format("line {}: bad field name {}", lineno, quoted(key)));
    if (value.empty())
      return fail(fmt::format("line {}: field \"{}\" has no value", lineno, key));
    // Keep the line for TLSRPT's policy_string, without trailing blanks.
    p.lines.emplace_back(trim_wsp(line));
    if (key == "version") {
      if (have_version) continue;
      if (value != "STSv1")
        return fail(fmt::format("line {}: version {} is not \"STSv1\"", lineno, quoted(value)));
      have_version = true;
    } else if (key == "mode") {
      if (have_mode) continue;
      if (value == "enforce") p.mode = Mode::enforce;
      else if (value == "testing") p.mode = Mode::testing;
      else if (value == "none") p.mode = Mode::none;
      else
        return fail(fmt::format("line {}: mode {} is not \"enforce\", \"testing\" or \"none\"", lineno,
                                quoted(value)));
      have_mode = true;
    } else if (key == "max_age") {
      if (have_max_age) continue;
      if (value.size() > 10 || !std::all_of(value.begin(), value.end(), is_digit))
        return fail(fmt::format("line {}: max_age {} is not a number of at most 10 digits", lineno,
                                quoted(value)));
      uint64_t n = 0;
      for (char c : value) n = n * 10 + uint64_t(c - '0');
      if (n > max_max_age)
        return fail(fmt::format("line {}: max_age {} is over the maximum of {}", lineno, n, max_max_age));
      p.max_age = uint32_t(n);
      have_max_age = true;
    } else if (key == "mx") {
      std::string pattern = lowercase(value);
      std::string_view host = pattern;
      if (host.substr(0, 2) == "*.") host.remove_prefix(2);
      if (!valid_host(host))
        return fail(fmt::format("line {}: mx {} is not a host name or \"*.\" and a domain", lineno,
                                quoted(value)));
      if (std::find(p.mx.begin(), p.mx.end(), pattern) == p.mx.end()) p.mx.push_back(std::move(pattern));
    }
    // Any other key: an extension, ignored (RFC 8461 3.2).
  }
  if (!have_version) return fail("no \"version\" field");
  if (!have_mode) return fail("no \"mode\" field");
  if (!have_max_age) return fail("no \"max_age\" field");
  if (p.mx.empty() && p.mode != Mode::none)
    return fail(fmt::format("mode {} without any \"mx\" field", mode_name(p.mode)));
  res.policy = std::move(p);
  return res;
}

bool mx_matches(std::string_view pattern, std::string_view host) {
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  if (host.empty() || pattern.empty()) return false;
  auto iequal = [](std::string_view a, std::string_view b) {
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
  };
  if (pattern.substr(0, 2) == "*.") {
    std::string_view suffix = pattern.substr(1);  // ".example.net"
    if (host.size() <= suffix.size()) return false;
    std::string_view label = host.substr(0, host.size() - suffix.size());
    if (label.find('.') != std::string_view::npos) return false;  // exactly one label
    return iequal(host.substr(label.size()), suffix);
  }
  return iequal(pattern, host);
}

bool policy_allows_mx(const Policy& p, std::string_view host) {
  return std::any_of(p.mx.begin(), p.mx.end(), [&](const std::string& pat) { return mx_matches(pat, host); });
}

std::string postfix_answer(const Policy& p, const AnswerOptions& opt) {
  std::string out = "secure match=";
  std::vector<std::string> seen;
  for (const auto& pat : p.mx) {
    std::string m = pat.substr(0, 2) == "*." ? pat.substr(1) : pat;
    if (std::find(seen.begin(), seen.end(), m) != seen.end()) continue;
    if (!seen.empty()) out += ':';
    out += m;
    seen.push_back(std::move(m));
  }
  out += " servername=hostname";
  if (!opt.tlsrpt) return out;
  out += " policy_type=sts policy_domain=";
  out += opt.domain;
  if (opt.ttl) {
    out += " policy_ttl=";
    out += std::to_string(*opt.ttl);
  }
  for (const auto& pat : p.mx) {
    out += " mx_host_pattern=";
    out += pat;
  }
  for (const auto& line : p.lines) {
    // "{ name = value }" protects blanks but has no escape for braces: such
    // a line (only possible in an extension field) is left out of the report.
    // So is one with bytes outside ASCII (an extension value's UTF-8, or
    // worse): with smtputf8_enable Postfix refuses a table value that is not
    // valid UTF-8 as a lookup error, and the socketmap answer stays ASCII.
    if (line.find_first_of("{}") != std::string::npos ||
        std::any_of(line.begin(), line.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; }))
      continue;
    out += " { policy_string = ";
    out += line;
    out += " }";
  }
  return out;
}

}  // namespace tlspolicy::sts
