// Config loading. The accepted settings are declared in one table per group
// (name and type); anything else is an error naming file and line. Entries
// from inline arrays and from list files go through the same add_entry().
#include "policy/config.hpp"

#include "policy/ciphers.hpp"
#include "policy/maps.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <libconfig.h++>
#include <sstream>
#include <span>
#include <thread>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

namespace tlspolicy {

// File names come from the configuration (to_lists = ...): printable().
std::string Diagnostic::located() const {
  if (line > 0) return fmt::format("{}:{}: {}", printable(file), line, message);
  return fmt::format("{}: {}", printable(file), message);
}

std::string Diagnostic::text(std::string_view severity) const {
  if (line > 0) return fmt::format("{}:{}: {}: {}", printable(file), line, severity, message);
  return fmt::format("{}: {}: {}", printable(file), severity, message);
}

namespace {

using libconfig::Setting;
using uchar = unsigned char;

enum class Type { string, boolean, integer, strings, group, list };

struct Key {
  const char* name;
  Type type;
};

constexpr Key kTopKeys[] = {
    {"default", Type::string},   {"subdomains", Type::boolean}, {"recipient_delimiter", Type::string},
    {"transport", Type::string}, {"route", Type::string},       {"outbound", Type::list},
    {"inbound", Type::list},     {"daemon", Type::group},       {"milter", Type::group},
    {"sendmail_min_bits", Type::integer}, {"allow_empty", Type::boolean},
    {"on_failure", Type::string}, {"bounce_transport", Type::string},
    {"discovery", Type::group},
};
constexpr Key kOutboundKeys[] = {
    {"name", Type::string},    {"level", Type::string},      {"to", Type::strings},
    {"to_lists", Type::strings}, {"from", Type::strings},    {"from_lists", Type::strings},
    {"subdomains", Type::boolean}, {"transport", Type::string}, {"min_cipher_bits", Type::integer},
    {"on_failure", Type::string}, {"enabled", Type::boolean},   {"on_dns_failure", Type::string},
    {"override", Type::boolean},
};
constexpr Key kInboundKeys[] = {
    {"name", Type::string},         {"from", Type::strings},       {"from_lists", Type::strings},
    {"to", Type::strings},          {"to_lists", Type::strings},   {"clients", Type::strings},
    {"client_lists", Type::strings}, {"subdomains", Type::boolean}, {"require", Type::string},
    {"min_cipher_bits", Type::integer}, {"min_protocol", Type::string}, {"action", Type::string},
    {"reply", Type::string},        {"enabled", Type::boolean},
};
constexpr Key kDaemonKeys[] = {
    {"socketmap", Type::strings},     {"milter", Type::string},       {"user", Type::string},
    {"group", Type::string},          {"socket_owner", Type::string}, {"socket_group", Type::string},
    {"socket_mode", Type::string},    {"idle_timeout", Type::integer}, {"max_connections", Type::integer},
    {"log_all_lookups", Type::boolean}, {"log_rule_lookups", Type::boolean},
    {"reload_guard", Type::integer},  {"metrics", Type::string},  {"control", Type::string},
};
constexpr Key kDiscoveryKeys[] = {
    {"forwarders", Type::strings},      {"trust_anchor_file", Type::string},
    {"trust_forwarder_ad", Type::boolean}, {"query_timeout", Type::integer},
    {"deadline", Type::integer},        {"max_outstanding", Type::integer},
    {"cache_entries", Type::integer},   {"negative_ttl_max", Type::integer},
    {"failure_ttl", Type::integer},     {"dane", Type::string},
    {"on_dns_failure", Type::string},   {"mta_sts", Type::group},
    {"prefer", Type::string},
};
constexpr Key kMtaStsKeys[] = {
    {"enabled", Type::boolean},         {"ca_file", Type::string},
    {"cache", Type::string},            {"cache_entries", Type::integer},
    {"connect_timeout", Type::integer}, {"fetch_timeout", Type::integer},
    {"max_size", Type::integer},        {"max_fetches", Type::integer},
    {"tlsrpt", Type::boolean},          {"connect_to", Type::strings},
};
constexpr Key kMilterKeys[] = {
    {"header", Type::string},          {"header_require", Type::string},
    {"header_try", Type::string},      {"authenticated_is_outbound", Type::boolean},
    {"outbound_clients", Type::strings}, {"outbound_daemons", Type::strings},
    {"failure_action", Type::string},
};

std::string_view type_words(Type t) {
  switch (t) {
    case Type::string: return "a string in double quotes";
    case Type::boolean: return "true or false";
    case Type::integer: return "a number";
    case Type::strings: return "a string or an array of strings [ \"a\", \"b\" ]";
    case Type::group: return "a group { ... }";
    case Type::list: return "a list of groups ( { ... }, { ... } )";
  }
  return "?";
}

bool has_type(const Setting& s, Type t) {
  switch (t) {
    case Type::string: return s.getType() == Setting::TypeString;
    case Type::boolean: return s.getType() == Setting::TypeBoolean;
    case Type::integer: return s.getType() == Setting::TypeInt || s.getType() == Setting::TypeInt64;
    case Type::strings:
      if (s.getType() == Setting::TypeString) return true;
      if (s.getType() != Setting::TypeArray && s.getType() != Setting::TypeList) return false;
      for (int i = 0; i < s.getLength(); ++i)
        if (s[i].getType() != Setting::TypeString) return false;
      return true;
    case Type::group: return s.getType() == Setting::TypeGroup;
    case Type::list: return s.getType() == Setting::TypeList;
  }
  return false;
}

long long as_int(const Setting& s) {
  return s.getType() == Setting::TypeInt64 ? static_cast<long long>(s) : static_cast<int>(s);
}

constexpr std::string_view kUtf8Bom = "\xEF\xBB\xBF";

// libconfig takes a UTF-8 byte order mark for a syntax error: read such a
// file without it (the mark is on line 1, so line numbers stay right; the
// settings then carry no file name, and Loader::file_of() names the file).
void read_config_file(libconfig::Config& cfg, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char head[3] = {};
  if (in.read(head, 3) && std::string_view(head, 3) == kUtf8Bom) {
    std::ostringstream rest;
    rest << in.rdbuf();
    cfg.readString(rest.str());
  } else {
    cfg.readFile(path.c_str());
  }
}

struct Item {
  std::string text;
  std::string file;
  int line;
};

class Loader {
 public:
  explicit Loader(std::string path) : path_(std::move(path)) {
    auto slash = path_.rfind('/');
    dir_ = slash == std::string::npos ? "." : path_.substr(0, slash);
  }

  LoadResult run();

 private:
  // Messages quote entries and values from files: printable() keeps their
  // control characters off the admin's terminal and out of the log.
  void error(const std::string& file, int line, std::string msg) {
    if (result_.errors.size() < kMaxErrors)
      result_.errors.push_back({file, line, printable(msg)});
    else
      too_many_ = true;
  }
  void error(const Setting& s, std::string msg) { error(file_of(s), int(s.getSourceLine()), std::move(msg)); }
  void warn(const std::string& file, int line, std::string msg) {
    result_.warnings.push_back({file, line, printable(msg)});
  }
  void warn(const Setting& s, std::string msg) { warn(file_of(s), int(s.getSourceLine()), std::move(msg)); }
  void warn_no_suffix(const Entry& e, std::string_view text, uint32_t file, uint32_t line);
  std::string file_of(const Setting& s) const { return source_name(s.getSourceFile()); }
  // libconfig names files as opened, relative to the config's directory (see
  // parse()): give them back the path the admin knows.
  std::string source_name(const char* f) const {
    if (!f) return path_;
    if (f[0] == '/' || dir_ == ".") return f;
    return dir_ + "/" + f;
  }
  void parse(libconfig::Config& cfg);
  uint32_t file_index(const std::string& f) {
    for (size_t i = 0; i < snap_->files.size(); ++i)
      if (snap_->files[i] == f) return uint32_t(i);
    snap_->files.push_back(f);
    return uint32_t(snap_->files.size() - 1);
  }
  bool check_keys(const Setting& group, std::span<const Key> keys, std::string_view what);
  std::vector<Item> strings(const Setting& s);
  void read_settings(const Setting& root);
  std::optional<OnFailure> parse_on_failure(const Setting& v);
  void check_bounce_rules();
  void read_daemon(const Setting& g);
  void read_milter(const Setting& g);
  void read_discovery(const Setting& g);
  void read_mta_sts(const Setting& g);
  // A number setting of group g within [min, max]; reports one outside.
  struct Range {
    const char* key;
    long long min, max;
    const char* unit;
  };
  std::optional<long long> number(const Setting& g, const Range& r) {
    if (!g.exists(r.key)) return std::nullopt;
    long long v = as_int(g[r.key]);
    if (v < r.min || v > r.max) {
      error(g[r.key], fmt::format("{} = {} must be {}..{}{}", r.key, v, r.min, r.max, r.unit));
      return std::nullopt;
    }
    return v;
  }
  std::optional<bool> parse_on_dns_failure(const Setting& v);
  void finish_discovery();
  std::optional<Entry> parse_mx_entry(std::string_view text, Dimension dim, std::string* problem);
  DisabledRule* disabled_of(uint32_t rule) {
    for (auto& d : snap_->disabled)
      if (d->rule == rule) return d.get();
    return nullptr;  // not reached: disabled rules get their slot before their entries
  }
  void read_outbound(const Setting& r, int index);
  void read_inbound(const Setting& r, int index);
  // Adds inline entries (key) and list-file entries (key_lists) of a rule.
  void add_entries(const Setting& r, const char* key, const char* lists_key, Matcher& m,
                   Dimension dim, bool subdomains, uint32_t rule);
  void add_entry(Matcher& m, Dimension dim, bool subdomains, std::string_view text, uint32_t rule,
                 uint32_t file, uint32_t line);
  void read_list(const Setting& at, const std::string& name, Matcher& m, Dimension dim,
                 bool subdomains, uint32_t rule);
  // Registers the file of every setting, so @include files that only hold
  // settings are watched for changes too.
  void collect_sources(const Setting& s) {
    if (s.getSourceFile()) file_index(file_of(s));
    if (s.isAggregate())
      for (int i = 0; i < s.getLength(); ++i) collect_sources(s[i]);
  }
  // enabled = false: the rule's entries go to matchers of their own
  // (checked, never looked up); nullptr for an enabled rule.
  DisabledRule* disabled_slot(const Setting& r, Rule& rule) {
    if (!r.exists("enabled") || bool(r["enabled"])) return nullptr;
    rule.enabled = false;
    snap_->disabled.push_back(std::make_unique<DisabledRule>());
    return snap_->disabled.back().get();
  }
  // "*" leaves out the null sender (bounces often come from servers that
  // cannot do TLS): say so where someone may think it covers every sender,
  // unless some enabled rule has a "<>" entry.
  void warn_star_senders() {
    bool covered = false;
    snap_->inbound_senders.visit_null_sender([&](const Hit&) { covered = true; });
    if (covered) return;
    for (uint32_t e : star_senders_)
      warn(snap_->files[snap_->entries[e].file], int(snap_->entries[e].line),
           fmt::format("inbound rule \"{}\": from \"*\" does not cover the null sender <> (bounces and "
                       "delivery status notices, often from servers without TLS); to require TLS for them "
                       "too, add \"<>\" to from",
                       snap_->rules[snap_->entries[e].rule].name));
  }
  uint32_t add_rule(Rule r) {
    snap_->rules.push_back(std::move(r));
    return uint32_t(snap_->rules.size() - 1);
  }

  void check_laxer_addresses();
  std::vector<std::pair<uint32_t, std::string>> dest_addresses_;  // enabled address entries: id, key
  static constexpr size_t kMaxErrors = 100;
  static constexpr off_t kMaxListBytes = off_t(1) << 30;  // 25M entries of 40 bytes
  std::string path_, dir_;
  std::shared_ptr<Snapshot> snap_ = std::make_shared<Snapshot>();
  LoadResult result_;
  bool too_many_ = false;
  std::vector<uint32_t> star_senders_;
  static constexpr size_t kMaxNoSuffixWarnings = 20;
  size_t no_suffix_ = 0;  // destinations without a public suffix  // "*" entries of enabled inbound sender rules requiring TLS
};

// Reports unknown and mistyped settings, then removes them so the readers
// below only ever see settings of the declared type.
bool Loader::check_keys(const Setting& group, std::span<const Key> keys, std::string_view what) {
  std::vector<std::string> bad;
  for (int i = 0; i < group.getLength(); ++i) {
    const Setting& s = group[i];
    const char* name = s.getName();
    const Key* k = nullptr;
    for (auto& key : keys)
      if (name && std::strcmp(key.name, name) == 0) k = &key;
    if (!k) {
      std::string known;
      for (auto& key : keys) known += std::string(known.empty() ? "" : ", ") + key.name;
      error(s, fmt::format("unknown setting \"{}\" in {} (known: {})", name ? name : "?", what, known));
    } else if (!has_type(s, k->type)) {
      error(s, fmt::format("setting \"{}\" must be {}", name, type_words(k->type)));
    } else {
      continue;
    }
    if (name) bad.push_back(name);
  }
  for (auto& name : bad) const_cast<Setting&>(group).remove(name.c_str());
  return bad.empty();
}

std::vector<Item> Loader::strings(const Setting& s) {
  std::vector<Item> out;
  if (s.getType() == Setting::TypeString) {
    out.push_back({s.c_str(), file_of(s), int(s.getSourceLine())});
  } else {
    for (int i = 0; i < s.getLength(); ++i)
      out.push_back({s[i].c_str(), file_of(s[i]), int(s[i].getSourceLine())});
  }
  return out;
}

// A destination that cannot be a mail domain on the Internet: "john.smith"
// (a local part, meant as john.smith@...), "partner.lan", a bare word. Only a
// warning: internal names reached through a relay are legitimate.
void Loader::warn_no_suffix(const Entry& e, std::string_view text, uint32_t file, uint32_t line) {
  if (e.kind == EntryKind::cidr || e.kind == EntryKind::any || e.kind == EntryKind::local_part ||
      e.kind == EntryKind::null_sender)
    return;
  std::string_view domain = e.key;
  if (auto at = domain.rfind('@'); at != std::string_view::npos) domain.remove_prefix(at + 1);
  if (has_public_suffix(domain)) return;
  if (++no_suffix_ > kMaxNoSuffixWarnings) return;  // a list of internal names: counted at the end
  std::string hint = e.kind == EntryKind::address
                         ? std::string("check the domain of this address")
                         : fmt::format("if you meant the local part {}@..., write the whole address "
                                       "({}@your-partner.example); if it is an internal name, ignore this",
                                       text, text);
  if (domain.find('.') == std::string_view::npos)
    warn(snap_->files[file], int(line),
         fmt::format("\"{}\" is a bare word, not an Internet domain: {}", text, hint));
  else
    warn(snap_->files[file], int(line),
         fmt::format("\"{}\" has no public suffix (\".{}\" is not a top-level domain): a domain? {}", text,
                     domain.substr(domain.rfind('.') + 1), hint));
}

// "mx:" + an MX host name (exact) or ".domain" (every MX host below it).
bool is_mx_entry(std::string_view text) {
  return text.size() >= 3 && ascii_lower(text[0]) == 'm' && ascii_lower(text[1]) == 'x' && text[2] == ':';
}

// An mx: entry as a domain entry of the rule's mx_names matcher; nullopt
// with *problem when it is not one.
std::optional<Entry> Loader::parse_mx_entry(std::string_view text, Dimension dim, std::string* problem) {
  auto name = text.substr(3);
  if (dim != Dimension::destination) {
    *problem = fmt::format("\"{}\": MX host names belong in an outbound rule's to list (the destinations), "
                           "not a {} list",
                           text, dimension_name(dim));
    return std::nullopt;
  }
  if (!snap_->settings.discovery.configured) {
    *problem = fmt::format("\"{}\": an mx: entry needs DNS, which is off: add a discovery block "
                           "(discovery = {{ }}; for the defaults: full recursion from the root, validated with "
                           "/usr/share/dns/root.key), see tlspolicy.conf(5)",
                           text);
    return std::nullopt;
  }
  if (name.empty() || name == ".") {
    *problem = fmt::format("\"{}\" names no host: write mx:HOST (that MX host) or mx:.DOMAIN (every MX host "
                           "below DOMAIN), e.g. mx:.mail.protection.outlook.com",
                           text);
    return std::nullopt;
  }
  auto bare = name;
  if (bare.front() == '[' && bare.back() == ']') bare = bare.substr(1, bare.size() - 2);
  if (bare.find('/') != std::string_view::npos || parse_ip(bare)) {
    *problem = fmt::format("\"{}\": IP addresses and ranges match MX hosts' addresses as they are: write "
                           "\"{}\" without mx:",
                           text, bare);
    return std::nullopt;
  }
  if (name.find('@') != std::string_view::npos || name.find('*') != std::string_view::npos) {
    *problem = fmt::format("\"{}\" is not an MX host name: write mx:HOST or mx:.DOMAIN (no * and no @; "
                           "mx:.outlook.com covers every MX host below outlook.com)",
                           text);
    return std::nullopt;
  }
  // mx:HOST is that host only and mx:.DOMAIN everything below, whatever
  // `subdomains` says: host names, not mail domains.
  std::string why;
  auto e = parse_entry(name, Dimension::destination, false, &why);
  if (!e) {
    *problem = fmt::format("{} (in \"{}\")", why, text);
    return std::nullopt;
  }
  return e;
}

void Loader::add_entry(Matcher& m, Dimension dim, bool subdomains, std::string_view text,
                       uint32_t rule, uint32_t file, uint32_t line) {
  std::string problem;
  bool mx = is_mx_entry(text);
  auto e = mx ? parse_mx_entry(text, dim, &problem) : parse_entry(text, dim, subdomains, &problem);
  if (!e) {
    error(snap_->files[file], int(line), problem);
    return;
  }
  if (dim == Dimension::destination) warn_no_suffix(*e, mx ? text.substr(3) : text, file, line);
  if (dim == Dimension::destination &&
      (mx || (e->kind == EntryKind::cidr && snap_->settings.discovery.configured)))
    snap_->rules[rule].mx_aware = true;
  // mx: entries go to the mx_names matcher of the same rule set (the
  // enabled rules', or this disabled rule's own).
  Matcher& into = !mx ? m : snap_->rules[rule].enabled ? snap_->mx_names : disabled_of(rule)->mx_names;
  uint32_t id = uint32_t(snap_->entries.size());
  if (dim == Dimension::destination && e->kind == EntryKind::address && &m == &snap_->destinations)
    dest_addresses_.push_back({id, e->key});
  snap_->entries.push_back({rule, file, line, uint32_t(snap_->entry_text.size()), uint32_t(text.size())});
  snap_->entry_text.append(text);
  const Rule& mine = snap_->rules[rule];
  uint32_t clash = into.add(*e, id, [&](uint32_t other) {
    return snap_->rules[snap_->entries[other].rule].same_effect(mine);
  });
  if (clash != Matcher::kNone) {
    const Rule& theirs = snap_->rules[snap_->entries[clash].rule];
    auto effect = [](const Rule& r) {
      return r.direction == Direction::outbound
                 ? r.policy.value()
                 : std::string(r.require_tls ? action_name(r.action) : "no TLS required");
    };
    error(snap_->files[file], int(line),
          fmt::format("\"{}\" ({} list of rule \"{}\": {}) conflicts with \"{}\" at {} (rule \"{}\": "
                      "{}): one key, two policies; remove one of them",
                      text, dimension_name(dim), mine.name, effect(mine), snap_->text(clash),
                      snap_->where_entry(clash), theirs.name, effect(theirs)));
  }
}

void Loader::read_list(const Setting& at, const std::string& name, Matcher& m, Dimension dim,
                       bool subdomains, uint32_t rule) {
  bool here = path_.find('/') == std::string::npos;
  std::string path = name.starts_with("/") || here ? name : dir_ + "/" + name;
  uint32_t file = file_index(path);  // watched for changes even while missing
  // A FIFO or device would block the loader for good, and a sparse file of
  // terabytes would have it reserve memory for it: neither is a list.
  struct stat st{};
  int probe = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // never blocks, not even on a FIFO
  bool regular = probe < 0 || (fstat(probe, &st) == 0 && S_ISREG(st.st_mode));
  if (probe >= 0) ::close(probe);
  if (!regular) {
    error(at, fmt::format("list file \"{}\" is not a regular file", path));
    return;
  }
  if (st.st_size > kMaxListBytes) {
    error(at, fmt::format("list file \"{}\" is larger than {} MiB: is it really a list?", path,
                          kMaxListBytes >> 20));
    return;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error(at, fmt::format("cannot open list file \"{}\": {}", path, std::strerror(errno)));
    return;
  }
  // Read in chunks (a 1M-line list need not sit in memory twice); reserve
  // by file size: capacity that is never touched costs no memory.
  in.seekg(0, std::ios::end);
  size_t size = size_t(std::max<std::streamoff>(0, in.tellg()));
  in.seekg(0);
  snap_->entries.reserve(snap_->entries.size() + size / 4);
  snap_->entry_text.reserve(snap_->entry_text.size() + size);
  uint32_t line = 0;
  std::string data;
  std::vector<char> chunk(1 << 20);
  bool eof = false;
  while (!eof && !too_many_) {
    in.read(chunk.data(), std::streamsize(chunk.size()));
    size_t got = size_t(in.gcount());
    eof = got < chunk.size();
    data.append(chunk.data(), got);
    if (line == 0 && got > 0) {
      // Size the domain table once from the first chunk's average line
      // instead of doubling it twenty times for a million-line list.
      size_t lines = size_t(std::count(data.begin(), data.end(), '\n')) + 1;
      m.reserve_domains(size * lines / data.size() * 3 / 2);
    }
    size_t pos = 0;
    while (pos < data.size() && !too_many_) {
      size_t nl = data.find('\n', pos);
      if (nl == std::string::npos) {
        if (!eof) break;  // an incomplete last line: wait for the next chunk
        nl = data.size();
      }
      std::string_view l(data.data() + pos, nl - pos);
      pos = nl + 1;
      ++line;
      if (line == 1 && l.starts_with(kUtf8Bom)) l.remove_prefix(kUtf8Bom.size());  // Windows editors add it
      // A '#' starts a comment at the start of a line or after white space.
      for (size_t h = l.find('#'); h != std::string_view::npos; h = l.find('#', h + 1))
        if (h == 0 || l[h - 1] == ' ' || l[h - 1] == '\t') {
          l = l.substr(0, h);
          break;
        }
      while (!l.empty() && (l.back() == ' ' || l.back() == '\t' || l.back() == '\r')) l.remove_suffix(1);
      while (!l.empty() && (l.front() == ' ' || l.front() == '\t')) l.remove_prefix(1);
      // Several entries on a line, separated by commas and/or white space
      // ("a.example, b.example c.example", as gateway exports write them),
      // are several entries, each with this line's number. (An inline
      // config string stays one entry: there, a comma is a typo.)
      while (!l.empty()) {
        size_t end = l.find_first_of(", \t");
        if (end != 0) add_entry(m, dim, subdomains, l.substr(0, end), rule, file, line);
        if (end == std::string_view::npos) break;
        l.remove_prefix(end + 1);
      }
    }
    data.erase(0, std::min(pos, data.size()));
  }
}

void Loader::add_entries(const Setting& r, const char* key, const char* lists_key, Matcher& m,
                         Dimension dim, bool subdomains, uint32_t rule) {
  if (r.exists(key))
    for (auto& item : strings(r[key]))
      add_entry(m, dim, subdomains, item.text, rule, file_index(item.file), uint32_t(item.line));
  if (r.exists(lists_key))
    for (auto& item : strings(r[lists_key])) {
      const Setting& s = r[lists_key];
      read_list(s.getType() == Setting::TypeString ? s : s[0], item.text, m, dim, subdomains, rule);
    }
}

std::string rule_name(const Setting& r, const char* dir, int index) {
  // The name is only ever shown (explain, logs): keep it printable there.
  if (r.exists("name") && r["name"].getType() == Setting::TypeString) return printable(r["name"].c_str());
  return fmt::format("{} rule #{}", dir, index + 1);
}

void Loader::read_outbound(const Setting& r, int index) {
  if (r.getType() != Setting::TypeGroup) {
    error(r, "each outbound rule must be a group { ... }");
    return;
  }
  check_keys(r, kOutboundKeys, "an outbound rule");
  Rule rule;
  rule.name = rule_name(r, "outbound", index);
  rule.file = file_index(file_of(r));
  rule.line = r.getSourceLine();
  rule.direction = Direction::outbound;
  if (!r.exists("level")) {
    error(r, fmt::format("outbound rule \"{}\" has no level (e.g. level = \"encrypt\";)", rule.name));
    return;
  }
  std::string problem;
  std::vector<std::string> notes;
  auto p = parse_tls_policy(r["level"].c_str(), &problem, &notes);
  if (!p) {
    error(r["level"], problem);
    return;
  }
  for (auto& n : notes) warn(r["level"], n);
  rule.policy = *p;
  if (r.exists("min_cipher_bits")) {
    // GlobalCerts' "at least 112-bit encryption", outbound: turned into a
    // cipher grade and exclusions Postfix enforces (policy/ciphers.hpp).
    const Setting& mb = r["min_cipher_bits"];
    int bits = int(as_int(mb));
    // (attributes start with a space: " ciphers=high ...")
    auto has = [&](std::string_view a) { return rule.policy.attributes.find(a) != std::string::npos; };
    if (!enforces_tls(rule.policy.level)) {
      error(mb, fmt::format("min_cipher_bits needs a level that requires TLS (encrypt or stricter), not {}: at {} a "
                            "server whose ciphers are too weak would get the mail in plaintext",
                            level_name(rule.policy.level), level_name(rule.policy.level)));
    } else if (has(" ciphers=") || has(" exclude=")) {
      error(mb, "min_cipher_bits and ciphers=/exclude= in the level together: use one of them");
    } else {
      CipherFloor f = cipher_floor(bits);
      if (!f.error.empty())
        error(mb, f.error);
      else
        rule.policy.attributes += f.attributes;
      if (!f.warning.empty()) warn(mb, f.warning);
    }
  }
  if (r.exists("transport")) {
    rule.transport = r["transport"].c_str();
    if (rule.transport.find(':') == std::string::npos || rule.transport.find_first_of(" \t") != std::string::npos)
      error(r["transport"], fmt::format("transport \"{}\" must be service:nexthop, e.g. "
                                        "\"smtp-tls-encrypt:\" or \"smtp-tls-encrypt:[relay.example]:587\"",
                                        rule.transport));
  }
  if (r.exists("on_failure")) {
    auto f = parse_on_failure(r["on_failure"]);
    if (f) rule.on_failure = *f;
  }
  rule.dns_failure_defers = snap_->settings.discovery.dns_failure_defers;
  if (r.exists("on_dns_failure")) {
    auto f = parse_on_dns_failure(r["on_dns_failure"]);
    if (f) rule.dns_failure_defers = *f;
  }
  if (r.exists("override")) rule.override_discovery = r["override"];
  bool has_to = r.exists("to") || r.exists("to_lists");
  bool has_from = r.exists("from") || r.exists("from_lists");
  if (!has_to && !has_from) {
    error(r, fmt::format("outbound rule \"{}\" matches nothing: give to = [...], to_lists, from or "
                         "from_lists",
                         rule.name));
    return;
  }
  if (has_from && !enforces_tls(rule.policy.level))
    warn(r, fmt::format("sender rule \"{}\" has level {}: senders are only routed for levels that "
                        "enforce TLS (encrypt or stricter)",
                        rule.name, level_name(rule.policy.level)));
  bool sub = r.exists("subdomains") ? bool(r["subdomains"]) : snap_->settings.subdomains;
  rule.has_to = has_to;
  rule.has_from = has_from;
  DisabledRule* off = disabled_slot(r, rule);
  uint32_t id = add_rule(std::move(rule));
  if (off) off->rule = id;
  add_entries(r, "to", "to_lists", off ? off->destinations : snap_->destinations, Dimension::destination, sub, id);
  add_entries(r, "from", "from_lists", off ? off->senders : snap_->senders, Dimension::sender, sub, id);
  const Rule& added = snap_->rules[id];
  if (r.exists("override") && added.override_discovery) {
    const auto& d = snap_->settings.discovery;
    if (!d.configured)
      warn(r["override"], fmt::format("rule \"{}\": override = true has no effect without a discovery block "
                                      "(nothing is discovered that it could override)",
                                      added.name));
    else if (d.dane == DaneMode::off && !d.mta_sts.enabled)
      warn(r["override"], fmt::format("rule \"{}\": override = true has no effect: neither DANE (dane = \"off\") "
                                      "nor MTA-STS (no mta_sts block) is on",
                                      added.name));
  }
  if (r.exists("on_dns_failure") && !snap_->settings.discovery.configured)
    warn(r["on_dns_failure"], fmt::format("rule \"{}\": on_dns_failure has no effect without a discovery block "
                                          "(no DNS is asked)",
                                          added.name));
  else if (r.exists("on_dns_failure") && !added.mx_aware)
    warn(r["on_dns_failure"], fmt::format("rule \"{}\": on_dns_failure has no effect: the rule has no MX-aware "
                                          "entries (IP addresses, CIDR ranges or mx: host names in to)",
                                          added.name));
  if (added.mx_aware && snap_->bounces(id))
    warn(r, fmt::format("rule \"{}\" has on_failure = \"bounce\" and MX-aware entries: a next hop it covers "
                        "through its MX hosts gets the level from the tls-policy map, and a TLS failure there is "
                        "deferred, not bounced (the transport map routes recipients by name, without DNS)",
                        added.name));
}

// A custom reply: "5xx x.y.z text" (or 4xx), placeholders from a fixed set.
std::string check_reply(const std::string& reply) {
  if (reply.size() < 5 || (reply[0] != '4' && reply[0] != '5') || !std::isdigit(uchar(reply[1])) ||
      !std::isdigit(uchar(reply[2])) || reply[3] != ' ')
    return fmt::format("reply \"{}\" must start with a 4xx or 5xx SMTP code, e.g. \"550 5.7.1 TLS "
                       "required\"",
                       reply);
  if (reply.size() > 7 && std::isdigit(uchar(reply[4])) && reply[5] == '.' && reply[4] != reply[0])
    return fmt::format("reply \"{}\": the enhanced status code must have the same class as the "
                       "reply code ({}.x.y)",
                       reply, reply[0]);
  for (size_t i = reply.find('{'); i != std::string::npos; i = reply.find('{', i + 1)) {
    auto close = reply.find('}', i);
    auto name = reply.substr(i + 1, close == std::string::npos ? 0 : close - i - 1);
    if (close == std::string::npos ||
        (name != "bits" && name != "min_bits" && name != "version" && name != "min_protocol" &&
         name != "rcpt" && name != "sender"))
      return fmt::format("reply \"{}\": unknown placeholder (known: {{bits}}, {{min_bits}}, "
                         "{{version}}, {{min_protocol}}, {{rcpt}}, {{sender}})",
                         reply);
  }
  return {};
}

std::optional<Action> parse_action(std::string_view s) {
  for (Action a : {Action::reject, Action::tempfail, Action::monitor})
    if (action_name(a) == s) return a;
  return std::nullopt;
}

void Loader::read_inbound(const Setting& r, int index) {
  if (r.getType() != Setting::TypeGroup) {
    error(r, "each inbound rule must be a group { ... }");
    return;
  }
  check_keys(r, kInboundKeys, "an inbound rule");
  Rule rule;
  rule.name = rule_name(r, "inbound", index);
  rule.file = file_index(file_of(r));
  rule.line = r.getSourceLine();
  rule.direction = Direction::inbound;
  if (r.exists("require")) {
    std::string v = r["require"].c_str();
    if (v == "tls")
      rule.require_tls = true;
    else if (v == "none")
      rule.require_tls = false;
    else
      error(r["require"], fmt::format("require = \"{}\": use \"tls\" or \"none\" (an exemption)", v));
  }
  if (r.exists("min_cipher_bits")) {
    long long bits = as_int(r["min_cipher_bits"]);
    if (bits < 1 || bits > 1024)
      error(r["min_cipher_bits"], fmt::format("min_cipher_bits = {} is out of range (1..1024; "
                                              "gateways commonly use 112 or 128)",
                                              bits));
    rule.min_bits = int(bits);
  }
  if (r.exists("min_protocol")) {
    rule.min_protocol = r["min_protocol"].c_str();
    if (protocol_rank(rule.min_protocol) == 0)
      error(r["min_protocol"], fmt::format("min_protocol = \"{}\": use TLSv1, TLSv1.1, TLSv1.2 or "
                                           "TLSv1.3",
                                           rule.min_protocol));
  }
  if (r.exists("action")) {
    auto a = parse_action(r["action"].c_str());
    if (!a)
      error(r["action"], fmt::format("action = \"{}\": use reject, tempfail or monitor", r["action"].c_str()));
    else
      rule.action = *a;
  }
  if (r.exists("reply")) {
    rule.reply = r["reply"].c_str();
    auto problem = check_reply(rule.reply);
    if (!problem.empty()) error(r["reply"], problem);
  }
  if (!rule.reply.empty() && rule.reply[0] == '4' && rule.action == Action::reject)
    error(r["reply"], fmt::format("reply \"{}\" is a temporary (4xx) reply but action is \"reject\": use "
                                  "action = \"tempfail\", or a 5xx reply",
                                  rule.reply));
  if (!rule.require_tls && (rule.min_bits || !rule.min_protocol.empty()))
    error(r, fmt::format("inbound rule \"{}\" says require = \"none\" but also sets a minimum",
                         rule.name));
  bool any = r.exists("from") || r.exists("from_lists") || r.exists("to") || r.exists("to_lists") ||
             r.exists("clients") || r.exists("client_lists");
  if (!any) {
    error(r, fmt::format("inbound rule \"{}\" matches nothing: give from, to or clients (to = [ \"*\" ] "
                         "for every recipient)",
                         rule.name));
    return;
  }
  bool sub = r.exists("subdomains") ? bool(r["subdomains"]) : snap_->settings.subdomains;
  DisabledRule* off = disabled_slot(r, rule);
  uint32_t id = add_rule(std::move(rule));
  if (off) off->rule = id;
  size_t first = snap_->entries.size();
  add_entries(r, "from", "from_lists", off ? off->inbound_senders : snap_->inbound_senders,
              Dimension::inbound_sender, sub, id);
  if (!off && snap_->rules[id].require_tls)
    for (size_t e = first; e < snap_->entries.size(); ++e)
      if (snap_->text(uint32_t(e)) == "*") star_senders_.push_back(uint32_t(e));
  size_t after_from = snap_->entries.size();
  add_entries(r, "to", "to_lists", off ? off->inbound_recipients : snap_->inbound_recipients,
              Dimension::inbound_recipient, sub, id);
  size_t after_to = snap_->entries.size();
  add_entries(r, "clients", "client_lists", off ? off->clients : snap_->clients, Dimension::client, sub, id);
  // Which milter stages this rule can stop (the milter asks for no reply
  // where no rule can): senders and clients are judged at MAIL, recipients
  // at RCPT. An exemption or a monitor rule never stops anything.
  const Rule& added = snap_->rules[id];
  if (!off && added.require_tls && added.action != Action::monitor) {
    if (after_from > first || snap_->entries.size() > after_to) snap_->inbound_stops.mail = true;
    if (after_to > after_from) snap_->inbound_stops.rcpt = true;
  }
}

// "inet:127.0.0.1:10461" or "unix:/path"; host must be an IP literal.
std::string check_endpoint(const std::string& ep) {
  if (ep.starts_with("unix:")) {
    if (ep.size() > 5 && ep[5] == '/' && ep.size() < 5 + 108) return {};
    return fmt::format("\"{}\": a unix socket needs an absolute path (unix:/run/tlspolicyd/x.sock)", ep);
  }
  if (ep.starts_with("inet:")) {
    auto rest = std::string_view(ep).substr(5);
    auto colon = rest.rfind(':');
    if (colon != std::string_view::npos) {
      auto host = rest.substr(0, colon);
      if (host.starts_with("[") && host.ends_with("]")) host = host.substr(1, host.size() - 2);
      auto port = rest.substr(colon + 1);
      int p = 0;
      bool ok = !port.empty() && port.size() <= 5;
      for (char c : port) ok &= std::isdigit(uchar(c)) != 0, p = p * 10 + (c - '0');
      if (parse_ip(host) && ok && p > 0 && p < 65536) return {};
    }
  }
  return fmt::format("\"{}\" is not an endpoint: use inet:IP:PORT (e.g. inet:127.0.0.1:10461) or "
                     "unix:/absolute/path",
                     ep);
}

void Loader::read_daemon(const Setting& g) {
  check_keys(g, kDaemonKeys, "daemon");
  auto& d = snap_->settings.daemon;
  if (g.exists("socketmap")) {
    d.socketmap.clear();
    for (auto& it : strings(g["socketmap"])) {
      auto p = check_endpoint(it.text);
      if (!p.empty()) error(it.file, it.line, p);
      d.socketmap.push_back(it.text);
    }
  }
  if (g.exists("metrics")) {
    d.metrics = g["metrics"].c_str();
    auto p = check_endpoint(d.metrics);
    if (!d.metrics.empty() && (!p.empty() || !d.metrics.starts_with("inet:")))
      error(g["metrics"], fmt::format("metrics = \"{}\": use inet:IP:PORT, e.g. inet:127.0.0.1:9464 (HTTP, "
                                      "on loopback: the counters are for your monitoring, not the world)",
                                      d.metrics));
  }
  if (g.exists("control")) {
    d.control = g["control"].c_str();
    if (!d.control.empty() && !d.control.starts_with("/"))
      error(g["control"], fmt::format("control = \"{}\": an absolute path of a unix socket, e.g. "
                                      "/run/tlspolicyd/control.sock (or \"\" for none)",
                                      d.control));
  }
  if (g.exists("milter")) {
    d.milter = g["milter"].c_str();
    auto p = check_endpoint(d.milter);
    if (!d.milter.empty() && !p.empty()) error(g["milter"], p);
  }
  for (auto [key, field] : {std::pair{"user", &d.user}, {"group", &d.group},
                            {"socket_owner", &d.socket_owner}, {"socket_group", &d.socket_group}})
    if (g.exists(key)) *field = g[key].c_str();
  if (g.exists("socket_mode")) {
    std::string m = g["socket_mode"].c_str();
    char* end = nullptr;
    unsigned long v = std::strtoul(m.c_str(), &end, 8);
    if (m.empty() || *end || v > 0777)
      error(g["socket_mode"], fmt::format("socket_mode = \"{}\" is not an octal mode like \"0660\"", m));
    d.socket_mode = unsigned(v);
  }
  if (g.exists("idle_timeout")) {
    d.idle_timeout = int(as_int(g["idle_timeout"]));
    if (d.idle_timeout < 11 || d.idle_timeout > 3600)
      error(g["idle_timeout"], fmt::format("idle_timeout = {} must be 11..3600 seconds (longer than "
                                           "Postfix's 10 s idle close)",
                                           d.idle_timeout));
  }
  if (g.exists("max_connections")) {
    d.max_connections = int(as_int(g["max_connections"]));
    if (d.max_connections < 1 || d.max_connections > 100000)
      error(g["max_connections"], fmt::format("max_connections = {} must be 1..100000", d.max_connections));
  }
  if (g.exists("log_all_lookups")) d.log_all_lookups = g["log_all_lookups"];
  if (g.exists("log_rule_lookups")) d.log_rule_lookups = g["log_rule_lookups"];
  if (g.exists("reload_guard")) {
    d.reload_guard = int(as_int(g["reload_guard"]));
    if (d.reload_guard < 0 || d.reload_guard > 100)
      error(g["reload_guard"], fmt::format("reload_guard = {} must be 0..100 (percent of the enforcing entries "
                                           "a reload on a file change may remove; 100 = no guard)",
                                           d.reload_guard));
  }
}

void Loader::read_milter(const Setting& g) {
  check_keys(g, kMilterKeys, "milter");
  auto& m = snap_->settings.milter;
  for (auto [key, field] : {std::pair{"header", &m.header}, {"header_require", &m.header_require},
                            {"header_try", &m.header_try}})
    if (g.exists(key)) {
      *field = g[key].c_str();
      bool ok = !field->empty();
      for (char c : *field) ok &= c > ' ' && c < 127 && (key != std::string_view("header") || c != ':');
      if (!ok) error(g[key], fmt::format("{} = \"{}\" must be one printable word", key, *field));
    }
  if (g.exists("authenticated_is_outbound")) m.authenticated_is_outbound = g["authenticated_is_outbound"];
  if (g.exists("outbound_daemons"))
    for (auto& it : strings(g["outbound_daemons"])) m.outbound_daemons.push_back(it.text);
  if (g.exists("outbound_clients")) {
    Rule marker;
    marker.name = "milter outbound_clients";
    marker.file = file_index(file_of(g["outbound_clients"]));
    marker.line = g["outbound_clients"].getSourceLine();
    marker.is_default = true;
    uint32_t id = add_rule(std::move(marker));
    for (auto& it : strings(g["outbound_clients"]))
      add_entry(snap_->outbound_clients, Dimension::client, false, it.text, id, file_index(it.file),
                uint32_t(it.line));
  }
  if (g.exists("failure_action")) {
    auto a = parse_action(g["failure_action"].c_str());
    if (!a)
      error(g["failure_action"], "failure_action must be reject, tempfail or monitor (monitor = accept)");
    else
      m.failure_action = *a;
  }
}

// on_dns_failure = "defer" (true) | "ignore" (false); reports anything else.
std::optional<bool> Loader::parse_on_dns_failure(const Setting& v) {
  std::string word = v.c_str();
  if (word == "defer") return true;
  if (word == "ignore") return false;
  error(v, fmt::format("on_dns_failure = \"{}\": use \"defer\" (answer TEMP, Postfix retries later: nothing "
                       "leaves in plaintext while DNS is down) or \"ignore\" (go on as if the MX-aware entries "
                       "did not match)",
                       printable(word)));
  return std::nullopt;
}

// "HOST:PORT:ADDRESS:PORT", as libcurl's CURLOPT_CONNECT_TO takes it
// (ADDRESS an IP, "[IPv6]" or a name): where a test sends the fetch of
// https://HOST:PORT/ instead. Checked here so a typo is an error with a line,
// not a fetch that silently goes to the real host.
bool valid_connect_to(std::string_view v) {
  std::vector<std::string_view> parts;
  while (true) {
    size_t end;
    if (v.starts_with("[")) {
      auto close = v.find(']');
      if (close == std::string_view::npos) return false;
      end = close + 1;
      if (end < v.size() && v[end] != ':') return false;
    } else {
      end = std::min(v.find(':'), v.size());
    }
    parts.push_back(v.substr(0, end));
    if (end >= v.size()) break;
    v.remove_prefix(end + 1);
  }
  if (parts.size() != 4) return false;
  auto port = [](std::string_view p) {
    if (p.empty() || p.size() > 5) return false;
    int n = 0;
    for (char c : p) {
      if (c < '0' || c > '9') return false;
      n = n * 10 + (c - '0');
    }
    return n > 0 && n < 65536;
  };
  auto host = [](std::string_view h) {
    if (h.starts_with("[") && h.ends_with("]")) return parse_ip(h.substr(1, h.size() - 2)).has_value();
    return parse_ip(h).has_value() || (!h.empty() && valid_domain_pattern(lowercase(h)));
  };
  return host(parts[0]) && port(parts[1]) && host(parts[2]) && port(parts[3]);
}

// discovery = { mta_sts = { ... }; }: present means on, unless enabled = false.
void Loader::read_mta_sts(const Setting& g) {
  check_keys(g, kMtaStsKeys, "mta_sts");
  auto& m = snap_->settings.discovery.mta_sts;
  m.enabled = g.exists("enabled") ? bool(g["enabled"]) : true;
  auto absolute = [&](const char* key, std::string* out, std::string_view example) {
    if (!g.exists(key)) return false;
    *out = g[key].c_str();
    if (out->starts_with("/")) return true;
    error(g[key], fmt::format("{} = \"{}\" must be an absolute path (e.g. {})", key, *out, example));
    return false;
  };
  if (absolute("ca_file", &m.ca_file, "/etc/ssl/certs/ca-certificates.crt") &&
      ::access(m.ca_file.c_str(), R_OK) != 0)
    error(g["ca_file"], fmt::format("ca_file \"{}\": {}: MTA-STS policies are fetched over HTTPS and their "
                                    "certificates validated against it; leave ca_file out for the system's CA "
                                    "store",
                                    m.ca_file, std::strerror(errno)));
  absolute("cache", &m.cache_file, "/var/lib/tlspolicy/mta-sts.db");
  if (auto v = number(g, {"cache_entries", 1, 100000000, " (MTA-STS policies kept)"})) m.cache_entries = size_t(*v);
  if (auto v = number(g, {"connect_timeout", 50, 300000, " milliseconds (one HTTPS connection)"}))
    m.connect_timeout_ms = int(*v);
  if (auto v = number(g, {"fetch_timeout", 50, 600000, " milliseconds (one policy fetch)"}))
    m.fetch_timeout_ms = int(*v);
  if (auto v = number(g, {"max_size", 64, 16 * 1024 * 1024, " bytes (the policy file size limit)"}))
    m.max_size = size_t(*v);
  if (auto v = number(g, {"max_fetches", 1, 1000000, " (domains fetched at once)"})) m.max_fetches = size_t(*v);
  if (g.exists("tlsrpt")) m.tlsrpt = g["tlsrpt"];
  if (g.exists("connect_to"))
    for (auto& it : strings(g["connect_to"])) {
      if (!valid_connect_to(it.text))
        error(it.file, it.line, fmt::format("connect_to \"{}\" is not HOST:PORT:ADDRESS:PORT (e.g. "
                                            "\"mta-sts.a.test:443:127.0.0.1:4443\", for tests)",
                                            it.text));
      m.connect_to.push_back(it.text);
    }
  if (m.connect_timeout_ms > m.fetch_timeout_ms)
    warn(g, fmt::format("mta_sts: connect_timeout ({} ms) is longer than fetch_timeout ({} ms): a fetch gives up "
                        "before a slow connection does",
                        m.connect_timeout_ms, m.fetch_timeout_ms));
}

// "IP" or "IP@PORT", as libunbound's ub_ctx_set_fwd() takes it.
bool valid_forwarder(std::string_view f) {
  auto at = f.rfind('@');
  auto ip = f.substr(0, at);
  if (!parse_ip(ip) || ip.find('/') != std::string_view::npos) return false;
  if (at == std::string_view::npos) return true;
  auto port = f.substr(at + 1);
  int p = 0;
  if (port.empty() || port.size() > 5) return false;
  for (char c : port) {
    if (c < '0' || c > '9') return false;
    p = p * 10 + (c - '0');
  }
  return p > 0 && p < 65536;
}

void Loader::read_discovery(const Setting& g) {
  check_keys(g, kDiscoveryKeys, "discovery");
  auto& d = snap_->settings.discovery;
  d.configured = true;
  if (g.exists("forwarders"))
    for (auto& it : strings(g["forwarders"])) {
      if (!valid_forwarder(it.text))
        error(it.file, it.line, fmt::format("forwarder \"{}\" is not IP[@PORT] (e.g. \"127.0.0.1@5353\" or "
                                            "\"::1\"): the address of a resolver, not its name",
                                            it.text));
      d.forwarders.push_back(it.text);
    }
  if (g.exists("trust_forwarder_ad")) d.trust_forwarder_ad = g["trust_forwarder_ad"];
  auto number = [&](const Range& r) { return this->number(g, r); };
  if (auto v = number({"query_timeout", 50, 60000, " milliseconds (one DNS question)"})) d.query_timeout_ms = int(*v);
  if (auto v = number({"deadline", 50, 60000, " milliseconds (one socketmap request waiting for DNS)"}))
    d.deadline_ms = int(*v);
  if (auto v = number({"max_outstanding", 1, 1000000, " (destinations discovered at once)"}))
    d.max_outstanding = int(*v);
  if (auto v = number({"cache_entries", 1, 100000000, " (cached DNS answers)"})) d.cache_entries = size_t(*v);
  if (auto v = number({"negative_ttl_max", 0, 86400, " seconds"})) d.negative_ttl_max = int(*v);
  if (auto v = number({"failure_ttl", 0, 3600, " seconds"})) d.failure_ttl = int(*v);
  if (g.exists("dane")) {
    std::string w = g["dane"].c_str();
    if (w == "off")
      d.dane = DaneMode::off;
    else if (w == "dane")
      d.dane = DaneMode::dane;
    else if (w == "dane-only")
      d.dane = DaneMode::dane_only;
    else
      error(g["dane"], fmt::format("dane = \"{}\": use \"off\" (no DANE answers), \"dane\" (Postfix's "
                                   "opportunistic DANE for domains that publish TLSA) or \"dane-only\" "
                                   "(mandatory DANE where every MX host publishes usable TLSA)",
                                   printable(w)));
  }
  if (g.exists("on_dns_failure")) {
    auto f = parse_on_dns_failure(g["on_dns_failure"]);
    if (f) d.dns_failure_defers = *f;
  }
  if (g.exists("mta_sts")) read_mta_sts(g["mta_sts"]);
  if (g.exists("prefer")) {
    std::string w = g["prefer"].c_str();
    if (w == "dane")
      d.order = {DiscoveredSource::dane, DiscoveredSource::mta_sts};
    else if (w == "mta-sts")
      d.order = {DiscoveredSource::mta_sts, DiscoveredSource::dane};
    else
      error(g["prefer"], fmt::format("prefer = \"{}\": use \"dane\" (DANE first, MTA-STS where DANE has no "
                                     "answer: RFC 8461 section 2) or \"mta-sts\" (MTA-STS first)",
                                     printable(w)));
    if ((w == "dane" || w == "mta-sts") && (d.dane == DaneMode::off || !d.mta_sts.enabled))
      warn(g["prefer"], fmt::format("prefer = \"{}\" has no effect: {} is off (it orders DANE and MTA-STS when "
                                    "both are on)",
                                    w, d.dane == DaneMode::off ? "DANE (dane = \"off\")" : "MTA-STS (no mta_sts block)"));
  }
  // The trust anchor: needed for DANE (a DANE answer needs DNSSEC-secure
  // facts) unless a trusted forwarder validates. MX-aware rules use insecure
  // answers too (as Postfix does), so without DANE a missing default file
  // only means no validation of our own.
  bool anchor_set = g.exists("trust_anchor_file");
  if (anchor_set) d.trust_anchor_file = g["trust_anchor_file"].c_str();
  const Setting& at = anchor_set ? g["trust_anchor_file"] : g;
  bool reported = false;
  if (!d.trust_anchor_file.empty()) {
    reported = true;
    if (!d.trust_anchor_file.starts_with("/")) {
      error(at, fmt::format("trust_anchor_file = \"{}\" must be an absolute path (e.g. /usr/share/dns/root.key)",
                            d.trust_anchor_file));
    } else if (::access(d.trust_anchor_file.c_str(), R_OK) != 0) {
      int err = errno;
      if (d.dane != DaneMode::off && !d.trust_forwarder_ad) {
        error(at, fmt::format("trust_anchor_file \"{}\": {}: DANE needs DNSSEC validation; install "
                              "dns-root-data (Debian's /usr/share/dns/root.key) or name a readable trust anchor",
                              d.trust_anchor_file, std::strerror(err)));
      } else {
        reported = false;
        if (anchor_set)
          warn(at, fmt::format("trust_anchor_file \"{}\": {}: answers are not validated here (without DANE, "
                               "MX-aware rules use them either way, as Postfix does; dane = \"dane\" would need "
                               "a readable trust anchor)",
                               d.trust_anchor_file, std::strerror(err)));
      }
      d.trust_anchor_file.clear();
    } else {
      reported = false;
    }
  }
  // tlspolicyd refuses it (discovery/resolver.cpp: libunbound renders
  // answers from its own validation and drops a forwarder's AD bit), so
  // check says so rather than OK for a configuration the daemon will not run.
  if (d.trust_forwarder_ad) {
    error(g["trust_forwarder_ad"], "trust_forwarder_ad = true is not supported: libunbound does not pass a "
                                   "forwarder's AD bit through; give trust_anchor_file (the root's "
                                   "/usr/share/dns/root.key, or your zones' DS/DNSKEY) so that tlspolicyd "
                                   "validates the forwarder's answers itself");
    d.trust_forwarder_ad = false;
  }
  if (d.dane != DaneMode::off && d.trust_anchor_file.empty() && !d.trust_forwarder_ad && !reported)
    error(g["dane"], fmt::format("dane = \"{}\" needs DNSSEC: a trust_anchor_file (trust_anchor_file = \"\" "
                                 "turns validation off)",
                                 g["dane"].c_str()));
  if (d.deadline_ms < d.query_timeout_ms)
    warn(g, fmt::format("deadline ({} ms) is shorter than query_timeout ({} ms): a request would give up before "
                        "a slow DNS question does",
                        d.deadline_ms, d.query_timeout_ms));
}

// After every rule: what the daemon needs to know about DNS.
void Loader::finish_discovery() {
  Snapshot& s = *snap_;
  const auto& d = s.settings.discovery;
  bool aware = false;
  for (auto& r : s.rules)
    if (r.enabled && r.direction == Direction::outbound && r.mx_aware) {
      aware = true;
      s.mx_aware_defers |= r.dns_failure_defers;
    }
  s.needs_dns = d.configured && (aware || d.dane != DaneMode::off || d.mta_sts.enabled);
  if (d.configured && !s.needs_dns && result_.errors.empty())
    warn(path_, 0, "a discovery block is configured, but nothing uses it (no enabled outbound rule has IP, "
                   "CIDR or mx: entries, dane = \"off\" and no mta_sts block): no DNS query will be sent");
}

// on_failure = "defer" | "bounce"; reports anything else.
std::optional<OnFailure> Loader::parse_on_failure(const Setting& v) {
  std::string word = v.c_str();
  if (word == "defer") return OnFailure::defer;
  if (word == "bounce") return OnFailure::bounce;
  error(v, fmt::format("on_failure = \"{}\": use \"defer\" (Postfix retries until "
                       "maximal_queue_lifetime) or \"bounce\" (the sender gets a DSN at the first TLS "
                       "failure)",
                       printable(word)));
  return std::nullopt;
}

// A bounce rule is routed to bounce_transport, a service that enforces plain
// encrypt: a stricter level (or attributes) there would be silently weakened,
// so such a rule needs its own transport.
void Loader::check_bounce_rules() {
  const Snapshot& s = *snap_;
  for (uint32_t i = 0; i < s.rules.size(); ++i) {
    const Rule& r = s.rules[i];
    if (!s.bounces(i) || !r.transport.empty() || r.policy == TlsPolicy{Level::encrypt, {}}) continue;
    error(s.files[r.file], r.line,
          fmt::format("{} has level \"{}\" and on_failure = \"bounce\": bounce_transport ({}) enforces "
                      "plain encrypt, which would weaken it. Give the rule its own transport (a master.cf "
                      "service with -o smtp_tls_security_level={} and the smtp_delivery_status_filter, "
                      "see tlspolicy.conf(5)) or on_failure = \"defer\"",
                      r.is_default ? std::string("the default") : fmt::format("outbound rule \"{}\"", r.name),
                      r.policy.value(), s.settings.bounce_transport, level_name(r.policy.level)));
  }
}

void Loader::read_settings(const Setting& root) {
  auto& s = snap_->settings;
  if (root.exists("on_failure")) {
    auto f = parse_on_failure(root["on_failure"]);
    if (f) s.on_failure = *f;
  }
  if (root.exists("bounce_transport")) {
    s.bounce_transport = root["bounce_transport"].c_str();
    if (s.bounce_transport.find(':') == std::string::npos ||
        s.bounce_transport.find_first_of(" \t") != std::string::npos)
      error(root["bounce_transport"], fmt::format("bounce_transport \"{}\" must be service:nexthop, e.g. "
                                                  "\"smtp-tls-bounce:\" or \"smtp-tls-bounce:[relay.example]:587\"",
                                                  s.bounce_transport));
  }
  if (root.exists("subdomains")) s.subdomains = root["subdomains"];
  if (root.exists("recipient_delimiter")) s.recipient_delimiter = root["recipient_delimiter"].c_str();
  if (root.exists("transport")) {
    s.transport = root["transport"].c_str();
    if (s.transport.find(':') == std::string::npos || s.transport.find_first_of(" \t") != std::string::npos)
      error(root["transport"], fmt::format("transport \"{}\" must be service:nexthop, e.g. "
                                           "\"smtp-tls-encrypt:\" or \"smtp-tls-encrypt:[relay.example]:587\"",
                                           s.transport));
  }
  if (root.exists("sendmail_min_bits")) {
    long long b = as_int(root["sendmail_min_bits"]);
    if (b < 1 || b > 1024)
      error(root["sendmail_min_bits"], fmt::format("sendmail_min_bits = {} is out of range (1..1024)", b));
    s.sendmail_min_bits = int(b);
  }
  if (root.exists("route")) {
    std::string r = root["route"].c_str();
    if (r == "stricter")
      s.route = Route::stricter;
    else if (r == "enforced")
      s.route = Route::enforced;
    else
      error(root["route"], fmt::format("route = \"{}\": use \"stricter\" (recipients whose own rule is "
                                       "stricter than their domain's) or \"enforced\" (every recipient "
                                       "whose level enforces TLS)",
                                       r));
  }
  if (root.exists("default")) {
    std::string problem;
    auto p = parse_tls_policy(root["default"].c_str(), &problem);
    if (!p) {
      error(root["default"], problem);
    } else {
      Rule d;
      d.name = "default";
      d.file = file_index(file_of(root["default"]));
      d.line = root["default"].getSourceLine();
      d.is_default = true;
      d.policy = *p;
      snap_->default_rule = add_rule(std::move(d));
    }
  }
  if (root.exists("allow_empty")) s.allow_empty = root["allow_empty"];
  if (root.exists("daemon")) read_daemon(root["daemon"]);
  if (root.exists("milter")) read_milter(root["milter"]);
  if (root.exists("discovery")) read_discovery(root["discovery"]);
}

// libconfig 1.5 (Debian 12) joins its include directory and every @include
// path, so an absolute "/etc/x.conf" became "DIR//etc/x.conf"; without an
// include directory it opens paths relative to the working directory. So the
// file is parsed on a thread of its own whose working directory is the
// config's (unshare(CLONE_FS) gives one thread its own cwd, leaving the
// process's alone): relative includes resolve against the config's directory
// as before, absolute ones are used as written.
// libconfig opens @include files itself, and a FIFO there would block the
// loader for good: every file the configuration includes (recursively, as
// libconfig resolves them: relative to the main file's directory) must be
// a regular file. Returns the first that is not, with why.
std::optional<std::pair<std::string, std::string>> irregular_include(const std::string& file, const std::string& dir,
                                                                     int depth) {
  struct stat st{};
  if (::stat(file.c_str(), &st) != 0) return std::nullopt;  // libconfig reports a missing file itself
  if (!S_ISREG(st.st_mode)) return std::pair{file, std::string("not a regular file")};
  if (depth > 10) return std::pair{file, std::string("@include nested more than 10 deep")};
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    auto at = line.find_first_not_of(" \t");
    if (at == std::string::npos || line.compare(at, 8, "@include") != 0) continue;
    auto q1 = line.find('"', at + 8), q2 = q1 == std::string::npos ? q1 : line.find('"', q1 + 1);
    if (q2 == std::string::npos) continue;
    std::string inc = line.substr(q1 + 1, q2 - q1 - 1);
    if (!inc.starts_with("/")) inc = dir + "/" + inc;
    if (auto bad = irregular_include(inc, dir, depth + 1)) return bad;
  }
  return std::nullopt;
}

void Loader::parse(libconfig::Config& cfg) {
  std::exception_ptr failed;
  auto base = path_.substr(path_.rfind('/') + 1);
  std::thread t([&] {
    try {
      if (unshare(CLONE_FS) != 0 || chdir(dir_.c_str()) != 0) {
        // Cannot happen on Linux short of a seccomp filter: fall back to
        // libconfig's include directory (absolute includes then fail).
        cfg.setIncludeDir(dir_.c_str());
        read_config_file(cfg, path_);
        return;
      }
      read_config_file(cfg, base);
    } catch (...) {
      failed = std::current_exception();
    }
  });
  t.join();
  if (failed) std::rethrow_exception(failed);
}

// One effective level per recipient: Postfix applies smtp_tls_policy_maps
// per next hop, so an address rule laxer than its domain's cannot make that
// recipient's delivery laxer (the header would say Try while the next hop
// enforces encrypt). Refused, with the way out, rather than answered in
// contradiction. (Stricter address rules are what the transport map is for.)
void Loader::check_laxer_addresses() {
  for (auto& [id, key] : dest_addresses_) {
    const EntryInfo& e = snap_->entries[id];
    const Rule& own = snap_->rules[e.rule];
    uint32_t drule = kNone;
    Level dlevel = domain_level(*snap_, key, &drule);
    // A stricter address rule is routed to the enforcing transport, which
    // enforces encrypt and nothing more unless the rule names its own.
    if ((rank(own.policy.level) > rank(Level::encrypt) || !own.policy.attributes.empty()) && own.transport.empty() &&
        rank(own.policy.level) > rank(dlevel))
      result_.warnings.push_back(
          {snap_->files[e.file], int(e.line),
           fmt::format("\"{}\" (rule \"{}\": {}) is routed to {}, which enforces what its master.cf entry says "
                       "(smtp_tls_security_level=encrypt in the documented one), not {}: give the rule its own "
                       "transport, e.g. a service with -o smtp_tls_security_level={}",
                       snap_->text(id), own.name, own.policy.value(), snap_->settings.transport,
                       own.policy.value(), level_name(own.policy.level))});
    if (drule == kNone || rank(own.policy.level) >= rank(dlevel)) continue;
    const Rule& dom = snap_->rules[drule];
    error(snap_->files[e.file], int(e.line),
          fmt::format("\"{}\" (rule \"{}\": {}) is laxer than its domain's {} ({} at {}): Postfix applies the "
                      "TLS policy per next hop, so this recipient would still get {} while the X-TLSLevel header "
                      "says otherwise. Remove the address entry, or make the exception for the whole domain "
                      "(or a subdomain) instead",
                      snap_->text(id), own.name, level_name(own.policy.level), level_name(dlevel),
                      dom.is_default ? "the default" : fmt::format("rule \"{}\"", dom.name), snap_->where(dom),
                      level_name(dlevel)));
  }
}

LoadResult Loader::run() {
  libconfig::Config cfg;
  {
    struct stat st{};
    std::ifstream probe;
    if (::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
      error(path_, 0, "the configuration is not a regular file");
      return std::move(result_);
    }
    if (auto bad = irregular_include(path_, dir_, 0); bad && bad->first != path_) {
      error(path_, 0, fmt::format("@include \"{}\": {}", bad->first, bad->second));
      return std::move(result_);
    }
    probe.open(path_);
    if (!probe) {
      error(path_, 0, fmt::format("cannot open configuration: {}", std::strerror(errno)));
      return std::move(result_);
    }
  }
  try {
    parse(cfg);
  } catch (const libconfig::ParseException& e) {
    error(source_name(e.getFile()), e.getLine(), fmt::format("syntax error: {}", e.getError()));
    return std::move(result_);
  } catch (const libconfig::FileIOException&) {
    error(path_, 0, "cannot read configuration (or a file it @includes)");
    return std::move(result_);
  }
  file_index(path_);
  const Setting& root = cfg.getRoot();
  check_keys(root, kTopKeys, "the top level");
  read_settings(root);
  for (auto [key, outbound] : {std::pair{"outbound", true}, {"inbound", false}}) {
    if (!root.exists(key) || !has_type(root[key], Type::list)) continue;
    const Setting& list = root[key];
    for (int i = 0; i < list.getLength() && !too_many_; ++i)
      outbound ? read_outbound(list[i], i) : read_inbound(list[i], i);
  }
  warn_star_senders();
  if (no_suffix_ > kMaxNoSuffixWarnings)
    warn(path_, 0, fmt::format("{} more destination entries have no public suffix (warnings shown for the "
                               "first {})",
                               no_suffix_ - kMaxNoSuffixWarnings, kMaxNoSuffixWarnings));
  if (too_many_) error(path_, 0, fmt::format("too many errors, stopped after {}", kMaxErrors));
  check_bounce_rules();
  finish_discovery();
  collect_sources(root);
  check_laxer_addresses();
  // An empty or truncated file (": > tlspolicy.conf", an editor that
  // truncates first) must not silently drop every rule.
  if (snap_->rules.empty() && !snap_->settings.allow_empty && result_.errors.empty())
    error(path_, 0, "no rules and no default: an empty or truncated configuration? Add rules, or set "
                    "allow_empty = true; if answering NOTFOUND to everything is what you want");
  if (!snap_->rules.empty() && snap_->default_rule == kNone &&
      std::all_of(snap_->rules.begin(), snap_->rules.end(), [](const Rule& r) { return !r.enabled; }))
    warn(path_, 0, "every rule is disabled (enabled = false) and there is no default: every lookup answers "
                   "NOTFOUND; switch a rule on, or set a default");
  result_.files = snap_->files;
  snap_->rule_hits = std::make_unique<Counter[]>(snap_->rules.size());
  if (result_.errors.empty()) result_.snapshot = std::move(snap_);
  return std::move(result_);
}

}  // namespace

LoadResult load_policy(const std::string& path) { return Loader(path).run(); }

}  // namespace tlspolicy
