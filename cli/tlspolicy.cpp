// tlspolicy: the admin command. `check` loads the configuration the way the
// daemon does (and compares `default` with Postfix's own level); `query`
// answers a key exactly as the daemon answers Postfix (same snapshot, same
// query()), with --explain saying which rule decided.
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <libconfig.h++>
#include <string>
#include <thread>
#include <vector>

#include "discovery/destination.hpp"
#include "policy/config.hpp"
#include "policy/level.hpp"
#include "policy/maps.hpp"

extern char** environ;

using namespace tlspolicy;

namespace {

constexpr const char* kUsage =
    "usage: tlspolicy check [-c FILE] [-v] [--postconf-dir DIR]\n"
    "       tlspolicy query [-c FILE] [-m MAP] [--explain] [--no-dns] KEY...\n"
    "       tlspolicy query [-c FILE] [-m MAP] [--threads N] -   (keys from stdin, key<TAB>value out)\n"
    "       tlspolicy query --daemon [-c FILE | --socket PATH] [-m MAP] [--explain] KEY...\n"
    "       tlspolicy query [-c FILE] -m effective ADDRESS...   (transport, next-hop policy, header)\n"
    "       tlspolicy status [-c FILE | --socket PATH]\n"
    "       tlspolicy postfix-config [-c FILE]   (the main.cf and master.cf lines FILE needs)\n"
    "       tlspolicy reload [--force] [-c FILE | --socket PATH]\n"
    "maps: tls-policy (default), transport, sender-transport, inbound, access\n"
    "--daemon, status and reload ask the running tlspolicyd over its control socket\n"
    "(daemon.control in FILE, default /run/tlspolicyd/control.sock)\n"
    "default FILE: /etc/tlspolicy/tlspolicy.conf\n";

// The running daemon's control socket: one request line, the reply until
// it closes. Returns the reply's first line ("OK", "NOTFOUND", "ERROR") and
// puts the rest in *body; "" when the daemon cannot be reached.
std::string ask_daemon(const std::string& path, const std::string& request, std::string* body) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (fd < 0 || path.size() >= sizeof sa.sun_path) {
    *body = fmt::format("{}: cannot use this socket path\n", path);
    if (fd >= 0) ::close(fd);
    return "";
  }
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  timeval tv{150, 0};  // a reload of a huge policy takes seconds; a daemon that hangs must not hang us
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
    *body = fmt::format("{}: {} (is tlspolicyd running, and are you root or its daemon.user?)\n", path,
                        std::strerror(errno));
    ::close(fd);
    return "";
  }
  std::string line = request + "\n", reply;
  (void)!::write(fd, line.data(), line.size());
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) reply.append(buf, size_t(n));
  ::close(fd);
  auto nl = reply.find('\n');
  *body = nl == std::string::npos ? "" : reply.substr(nl + 1);
  return reply.substr(0, nl);
}

// Where the daemon listens for control requests: --socket, else the
// config's daemon.control, read alone (not the whole policy: a 1M-entry one
// takes seconds). A config that cannot be read is an error, never a guess:
// another daemon may answer at the default path.
std::optional<std::string> control_path(const std::string& socket, const std::string& config, std::string* error) {
  if (!socket.empty()) return socket;
  libconfig::Config cfg;
  auto slash = config.rfind('/');
  cfg.setIncludeDir(slash == std::string::npos ? "." : config.substr(0, slash).c_str());
  try {
    cfg.readFile(config.c_str());
  } catch (const libconfig::ParseException& e) {
    *error = fmt::format("{}:{}: {}: cannot find daemon.control there; give --socket PATH", e.getFile() ? e.getFile() : config,
                         e.getLine(), e.getError());
    return std::nullopt;
  } catch (const std::exception&) {
    *error = fmt::format("{}: cannot read it to find daemon.control; give --socket PATH", config);
    return std::nullopt;
  }
  std::string path = DaemonSettings{}.control;
  cfg.lookupValue("daemon.control", path);
  if (path.empty()) {
    *error = fmt::format("{}: daemon.control is \"\": this daemon has no control socket", config);
    return std::nullopt;
  }
  return path;
}

int usage(const char* problem) {
  if (problem) fmt::print(stderr, "tlspolicy: {}\n", problem);
  fmt::print(stderr, "{}", kUsage);
  return 2;
}

// Like `postfix check`: a policy file that others can change is a way to
// switch TLS enforcement off, so say so (warnings; the load still counts).
void warn_permissions(const std::vector<std::string>& files) {
  for (auto& f : files) {
    struct stat st;
    if (stat(f.c_str(), &st) < 0) continue;
    if (st.st_mode & (S_IWGRP | S_IWOTH))
      fmt::print(stderr, "{}: warning: group or other writable (chmod go-w {})\n", f, f);
    if (st.st_uid != 0)
      fmt::print(stderr, "{}: warning: not owned by root (uid {}): whoever owns it controls the TLS policy\n", f,
                 st.st_uid);
    auto slash = f.rfind('/');
    std::string dir = slash == std::string::npos ? "." : f.substr(0, slash ? slash : 1);
    if (stat(dir.c_str(), &st) == 0 && (st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
      fmt::print(stderr, "{}: warning: directory {} is writable by others: the file can be replaced\n", f, dir);
  }
}

// Loads and reports like `postfix check`: every error, then a verdict.
std::shared_ptr<const Snapshot> load(const std::string& path, bool verbose) {
  auto t0 = std::chrono::steady_clock::now();
  LoadResult r = load_policy(path);
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (auto& w : r.warnings) fmt::print(stderr, "{}\n", w.text("warning"));
  if (verbose) warn_permissions(r.files);
  for (auto& e : r.errors) fmt::print(stderr, "{}\n", e.text("error"));
  if (!r.snapshot) {
    fmt::print(stderr, "tlspolicy: {}: configuration has {} error{}\n", path, r.errors.size(),
               r.errors.size() == 1 ? "" : "s");
    return nullptr;
  }
  if (verbose) {
    fmt::print("configuration OK: {}; {} files read in {:.1f} ms\n", r.snapshot->summary(), r.files.size(), ms);
    for (auto& d : r.snapshot->disabled) {
      const Rule& rule = r.snapshot->rules[d->rule];
      size_t n = r.snapshot->entry_count(d->rule);
      fmt::print("rule \"{}\" at {} is disabled (enabled = false): its {} entr{} not in force\n", rule.name,
                 r.snapshot->where(rule), n, n == 1 ? "y is" : "ies are");
    }
  }
  return r.snapshot;
}

// Runs `postconf [-c DIR] -hx NAME...` (from PATH, else /usr/sbin) and
// returns its output lines; nullopt with *why when postconf is missing or fails.
std::optional<std::vector<std::string>> postconf(const std::string& dir, const std::vector<std::string>& names,
                                                 std::string* why) {
  std::string prog;
  std::string path = getenv("PATH") ? getenv("PATH") : "";
  path += ":/usr/sbin:/sbin";  // a non-root PATH often lacks them
  for (size_t pos = 0; pos <= path.size();) {
    size_t end = std::min(path.find(':', pos), path.size());
    std::string d = path.substr(pos, end - pos);
    pos = end + 1;
    if (d.empty()) continue;
    if (access((d + "/postconf").c_str(), X_OK) == 0) {
      prog = d + "/postconf";
      break;
    }
  }
  if (prog.empty()) {
    *why = "postconf not found (PATH, /usr/sbin)";
    return std::nullopt;
  }
  std::vector<std::string> args{prog};
  if (!dir.empty()) args.insert(args.end(), {"-c", dir});
  args.push_back("-hx");
  args.insert(args.end(), names.begin(), names.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) < 0) {
    *why = fmt::format("pipe: {}", std::strerror(errno));
    return std::nullopt;
  }
  if (pipe2(err, O_CLOEXEC) < 0) {
    *why = fmt::format("pipe: {}", std::strerror(errno));
    close(out[0]), close(out[1]);
    return std::nullopt;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  pid_t pid;
  int rc = posix_spawn(&pid, prog.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(out[1]), close(err[1]);
  // postconf writes a few lines: stdout then stderr fit in the pipes.
  auto drain = [](int fd) {
    std::string s;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
      if (n > 0) s.append(buf, size_t(n));
    close(fd);
    return s;
  };
  std::string text = drain(out[0]), errors = drain(err[0]);
  int status = 0;
  if (rc == 0) waitpid(pid, &status, 0);
  std::string cmd = fmt::format("{}", fmt::join(args, " "));
  if (rc != 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    // The last line says why (a fatal: after any warnings).
    while (!errors.empty() && errors.back() == '\n') errors.pop_back();
    auto line = errors.substr(errors.rfind('\n') + 1);
    *why = fmt::format("{} failed: {}", cmd, rc != 0 ? std::strerror(rc) : line.empty() ? "no output" : line);
    return std::nullopt;
  }
  std::vector<std::string> lines;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = std::min(text.find('\n', pos), text.size());
    lines.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  if (lines.size() != names.size()) {
    *why = fmt::format("{}: unexpected output \"{}\"", cmd, text);
    return std::nullopt;
  }
  return lines;
}

// A `default` weaker than main.cf's smtp_tls_security_level downgrades every
// destination without a rule (e.g. a dane or encrypt site to may): warn, like
// the load warnings, with the default's file:line. Notes go to stdout (-v).
void compare_with_postfix(const Snapshot& s, const std::string& postconf_dir, bool verbose) {
  auto note = [&](const std::string& text) {
    if (verbose) fmt::print("note: {}\n", text);
  };
  if (s.default_rule == kNone) {
    note("no default: Postfix's own smtp_tls_security_level applies to destinations without a rule");
    return;
  }
  const Rule& def = s.rules[s.default_rule];
  std::string why;
  auto got = postconf(postconf_dir, {"config_directory", "smtp_tls_security_level"}, &why);
  if (!got) {
    note(fmt::format("default not compared with Postfix's smtp_tls_security_level: {}", why));
    return;
  }
  std::string maincf = (*got)[0] + "/main.cf";
  std::string value = (*got)[1];
  // Postfix reads only the first word as the level; empty means none (or
  // the obsolete smtp_use_tls/smtp_enforce_tls, not compared here).
  std::string word = value.substr(0, value.find_first_of(" \t,"));
  auto level = word.empty() ? std::optional<Level>(Level::none) : parse_level(word);
  if (!level) {
    note(fmt::format("smtp_tls_security_level = {} in {}: not a level tlspolicy knows; not compared", value,
                     maincf));
    return;
  }
  if (rank(def.policy.level) < rank(*level)) {
    fmt::print(stderr,
               "{}: warning: default = \"{}\" is weaker than Postfix's smtp_tls_security_level = {} ({}): "
               "every destination without a rule of its own gets {} instead of {}; remove the default "
               "(Postfix's level then applies) or raise it\n",
               s.where(def), def.policy.value(), value, maincf, level_name(def.policy.level), level_name(*level));
    return;
  }
  note(fmt::format("default {} is not weaker than Postfix's smtp_tls_security_level = {} ({})", def.policy.value(),
                   value.empty() ? "(empty: none)" : value, maincf));
}

// The discovery block: which rules are MX-aware (stdout), and whether
// Postfix can act on DANE answers (a warning when smtp_dns_support_level is
// not dnssec: Postfix then treats dane as may and dane-only as a failure).
void check_discovery(const Snapshot& s, const std::string& postconf_dir, bool verbose) {
  const auto& d = s.settings.discovery;
  if (!d.configured) return;
  for (uint32_t i = 0; i < s.rules.size(); ++i) {
    const Rule& r = s.rules[i];
    if (!r.mx_aware || !r.enabled) continue;
    size_t mx = 0, ip = 0;
    for (uint32_t e = 0; e < s.entries.size(); ++e) {
      if (s.entries[e].rule != i) continue;
      auto t = s.text(e);
      bool is_mx = t.size() >= 3 && (t[0] == 'm' || t[0] == 'M') && (t[1] == 'x' || t[1] == 'X') && t[2] == ':';
      std::string err;
      auto parsed = is_mx ? std::nullopt : parse_entry(t, Dimension::destination, true, &err);
      mx += is_mx;
      ip += parsed && parsed->kind == EntryKind::cidr;
    }
    fmt::print("MX-aware rule \"{}\" at {} ({}): {} IP/CIDR entr{} matched against MX hosts' addresses, {} mx: "
               "entr{} against their names; DNS failure: {}\n",
               r.name, s.where(r), r.policy.value(), ip, ip == 1 ? "y" : "ies", mx, mx == 1 ? "y" : "ies",
               r.dns_failure_defers ? "defer (TEMP)" : "ignore");
  }
  // Overrides: rules whose answer wins over discovered DANE and MTA-STS
  // even when weaker (an exception for a partner whose DANE or MTA-STS is
  // broken). Listed so that none is forgotten once the partner is fixed.
  std::string over;
  if (d.dane != DaneMode::off) over = "DANE";
  if (d.mta_sts.enabled) over += over.empty() ? "MTA-STS" : " and MTA-STS";
  for (uint32_t i = 0; i < s.rules.size(); ++i) {
    const Rule& r = s.rules[i];
    if (!r.override_discovery || !r.enabled || r.direction != Direction::outbound) continue;
    size_t n = 0;
    std::string first;
    for (uint32_t e = 0; e < s.entries.size(); ++e) {
      if (s.entries[e].rule != i) continue;
      if (n++ == 0) first = printable(s.text(e));
    }
    std::string names = n == 0 ? std::string("no entries")
                        : n == 1 ? fmt::format("\"{}\"", first)
                                 : fmt::format("{} entries (\"{}\", ...)", n, first);
    if (over.empty())
      fmt::print("override rule \"{}\" at {} ({}): no effect, neither DANE nor MTA-STS is on\n", r.name, s.where(r),
                 r.policy.value());
    else
      fmt::print("override rule \"{}\" at {} ({}): wins over discovered {} for {}, even where they are stricter\n",
                 r.name, s.where(r), r.policy.value(), over, names);
  }
  if (verbose && s.needs_dns)
    fmt::print("note: discovery asks {}\n",
               d.forwarders.empty() ? std::string("the root servers itself (full recursion: tlspolicyd needs DNS "
                                                  "out to the Internet)")
                                    : fmt::format("{}", fmt::join(d.forwarders, ", ")));
  if (d.dane == DaneMode::off) return;
  std::string why;
  auto got = postconf(postconf_dir, {"config_directory", "smtp_dns_support_level"}, &why);
  if (!got) {
    if (verbose) fmt::print("note: dane = \"{}\" not compared with Postfix's smtp_dns_support_level: {}\n",
                            dane_mode_name(d.dane), why);
    return;
  }
  if ((*got)[1] != "dnssec")
    fmt::print(stderr,
               "{}: warning: dane = \"{}\", but Postfix's smtp_dns_support_level = {} ({}/main.cf): Postfix "
               "validates the TLSA records itself and needs smtp_dns_support_level = dnssec and a validating "
               "resolver in /etc/resolv.conf; without them a \"dane\" answer is plain opportunistic TLS and "
               "\"dane-only\" defers the mail\n",
               printable(s.files[0]), dane_mode_name(d.dane), (*got)[1].empty() ? "(empty)" : (*got)[1],
               (*got)[0]);
  else if (verbose)
    fmt::print("note: dane = \"{}\" and Postfix's smtp_dns_support_level = dnssec\n", dane_mode_name(d.dane));
}

// Answers the keys in data (whole lines) into out; returns whether any was found.
bool answer_lines(const Snapshot& s, MapName map, std::string_view data, std::string& out) {
  bool any = false;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t nl = data.find('\n', pos);
    if (nl == std::string_view::npos) nl = data.size();
    std::string_view key = data.substr(pos, nl - pos);
    pos = nl + 1;
    if (!key.empty() && key.back() == '\r') key.remove_suffix(1);
    if (key.empty()) continue;
    Answer a = query(s, map, key);
    if (!a.found) continue;
    any = true;
    out.append(key);
    out += '\t';
    out.append(a.value);
    out += '\n';
  }
  return any;
}

// postmap -q - semantics: found keys print "key<TAB>value", in input order;
// exit 0 if any was found. Input is read in blocks, and a block's lines are
// answered by one thread per core (the snapshot is immutable and shared), so
// memory stays bounded and a big batch uses the whole machine.
// threads = 0: one per core, at most 8.
int query_stream(const Snapshot& s, MapName map, FILE* in, unsigned threads) {
  const size_t kBlock = 4 << 20;
  if (threads == 0) threads = std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  std::string carry, block;
  std::vector<char> buf(kBlock);
  std::vector<std::string> outs(threads);
  bool any = false, eof = false;
  while (!eof) {
    size_t n = fread(buf.data(), 1, buf.size(), in);
    eof = n < buf.size();
    block.assign(carry);
    block.append(buf.data(), n);
    size_t cut = eof ? block.size() : block.rfind('\n') + 1;  // 0 if no newline yet
    carry.assign(block, cut, std::string::npos);
    std::string_view work(block.data(), cut);
    // Split at line boundaries into one range per thread (one if small).
    unsigned parts = work.size() < (256u << 10) ? 1 : threads;
    std::vector<std::string_view> ranges;
    size_t start = 0;
    for (unsigned t = 0; t < parts; ++t) {
      size_t end = t + 1 == parts ? work.size() : work.find('\n', std::min(work.size(), start + work.size() / parts));
      end = end == std::string_view::npos ? work.size() : std::min(work.size(), end + 1);
      ranges.push_back(work.substr(start, end - start));
      start = end;
    }
    std::vector<char> found(parts, 0);
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < parts; ++t)
      pool.emplace_back([&, t] { found[t] = answer_lines(s, map, ranges[t], outs[t]); });
    found[0] = answer_lines(s, map, ranges[0], outs[0]);
    for (auto& th : pool) th.join();
    for (unsigned t = 0; t < parts; ++t) {
      any |= found[t] != 0;
      fwrite(outs[t].data(), 1, outs[t].size(), stdout);
      outs[t].clear();
    }
  }
  return any ? 0 : 1;
}

}  // namespace

// The service part of a "service:nexthop" transport.
std::string_view service_of(std::string_view transport) { return transport.substr(0, transport.find(':')); }

// `tlspolicy postfix-config`: the main.cf and master.cf lines the loaded
// policy needs, so what the admin pastes matches what the maps answer.
int postfix_config(const Snapshot& s, const std::string& config) {
  const auto& set = s.settings;
  std::string sm = set.daemon.socketmap.empty() ? "unix:/var/spool/postfix/tlspolicyd/socketmap.sock"
                                                : set.daemon.socketmap[0];
  bool routed_to = set.route == Route::enforced, routed_from = false, bounce = false, encrypt = false;
  std::vector<std::string> own;  // comments on rules with their own transport
  for (uint32_t i = 0; i < s.rules.size(); ++i) {
    const Rule& r = s.rules[i];
    if (r.direction != Direction::outbound || !enforces_tls(r.policy.level)) continue;
    bool addr = false;
    for (uint32_t e = 0; e < s.entries.size() && r.has_to && !addr; ++e)
      addr = s.entries[e].rule == i && s.text(e).find('@') != std::string_view::npos;
    bool to = (r.has_to || r.is_default) && (addr || s.bounces(i) || set.route == Route::enforced);
    routed_to |= to;
    routed_from |= r.has_from;
    if (!to && !r.has_from) continue;
    if (!r.transport.empty())
      own.push_back(fmt::format("# {} ({}) routes to \"{}\": define that service yourself, with -o "
                                "smtp_tls_security_level={} -o smtp_tls_policy_maps={}",
                                r.is_default ? std::string("the default") : fmt::format("rule \"{}\"", r.name),
                                s.where(r), r.transport, level_name(r.policy.level),
                                s.bounces(i) ? " and the smtp_delivery_status_filter of smtp-tls-bounce" : ""));
    else if (s.bounces(i))
      bounce = true;
    else
      encrypt = true;
  }
  fmt::print("# main.cf, for {}\n", config);
  fmt::print("smtp_tls_policy_maps = socketmap:{}:tls-policy\n", sm);
  if (routed_to) fmt::print("transport_maps = socketmap:{}:transport\n", sm);
  if (routed_from) fmt::print("sender_dependent_default_transport_maps = socketmap:{}:sender-transport\n", sm);
  if (!set.daemon.milter.empty())
    fmt::print("smtpd_milters = {{ {}, default_action=tempfail }}\nnon_smtpd_milters = $smtpd_milters\n",
               set.daemon.milter);
  if (set.daemon.socketmap.empty() || sm.starts_with("unix:"))
    fmt::print("# (smtp runs chrooted in /var/spool/postfix on Debian: give the socket's path inside the chroot)\n");
  if (!bounce && !encrypt && own.empty()) return 0;
  fmt::print("\n# master.cf\n");
  if (encrypt)
    fmt::print("{} unix - - n - - smtp\n  -o smtp_tls_security_level=encrypt\n  -o smtp_tls_policy_maps=\n",
               service_of(set.transport));
  if (bounce)
    fmt::print("{} unix - - n - - smtp\n  -o smtp_tls_security_level=encrypt\n  -o smtp_tls_policy_maps=\n"
               "  -o smtp_delivery_status_filter=regexp:/etc/postfix/tls-bounce.regexp\n"
               "# (tls-bounce.regexp ships in tlspolicy's conf/ directory)\n",
               service_of(set.bounce_transport));
  for (auto& line : own) fmt::print("{}\n", line);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) return usage(nullptr);
  std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    fmt::print("{}", kUsage);
    return 0;
  }
  std::string config = kDefaultConfig;
  MapName map = MapName::tls_policy;
  bool explain = false, verbose = false;
  std::string postconf_dir;
  unsigned threads = 0;
  bool daemon = false, force = false, effective = false, no_dns = false;
  std::string socket;
  std::vector<std::string> keys;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "-c" || a == "-m" || a == "--postconf-dir" || a == "--threads" || a == "--socket") && i + 1 >= argc)
      return usage(fmt::format("{} needs a value", a).c_str());
    if (a == "-c") {
      config = argv[++i];
    } else if (a == "--postconf-dir" && cmd == "check") {
      postconf_dir = argv[++i];
    } else if (a == "-v" && cmd == "check") {
      verbose = true;
    } else if (a == "--threads" && cmd == "query") {
      std::string n = argv[++i];
      if (n.empty() || n.size() > 3 || n.find_first_not_of("0123456789") != std::string::npos || std::stoi(n) < 1 ||
          std::stoi(n) > 256)
        return usage(fmt::format("--threads {}: want a number of threads, 1 to 256", n).c_str());
      threads = unsigned(std::stoi(n));
    } else if (a == "--daemon" && cmd == "query") {
      daemon = true;
    } else if (a == "--force" && cmd == "reload") {
      force = true;
    } else if (a == "--socket" && (cmd == "query" || cmd == "status" || cmd == "reload")) {
      socket = argv[++i];
    } else if (a == "-m" && std::string_view(argv[i + 1]) == "effective" && cmd == "query") {
      effective = true;
      ++i;
    } else if (a == "-m") {
      auto m = parse_map_name(argv[++i]);
      if (!m) return usage(fmt::format("unknown map \"{}\" (maps: {})", argv[i], kMapNames).c_str());
      map = *m;
    } else if (a == "--no-dns" && cmd == "query") {
      no_dns = true;
    } else if (a == "-x" || a == "--explain") {
      explain = true;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage(fmt::format("unknown option {}", a).c_str());
    } else {
      keys.push_back(a);
    }
  }
  if (cmd == "check") {
    if (!keys.empty()) return usage("check takes no keys");
    auto snap = load(config, true);
    if (!snap) return 1;
    compare_with_postfix(*snap, postconf_dir, verbose);
    check_discovery(*snap, postconf_dir, verbose);
    return 0;
  }
  if (cmd == "postfix-config") {
    if (!keys.empty()) return usage("postfix-config takes no keys");
    auto snap = load(config, false);
    if (!snap) return 1;
    return postfix_config(*snap, config);
  }
  if (cmd == "status" || cmd == "reload") {
    if (!keys.empty()) return usage(fmt::format("{} takes no keys", cmd).c_str());
    std::string body, err;
    auto path = control_path(socket, config, &err);
    if (!path) {
      fmt::print(stderr, "tlspolicy: {}\n", err);
      return 2;
    }
    std::string head = ask_daemon(*path, cmd == "status" ? "status" : force ? "reload force" : "reload", &body);
    fmt::print(head == "OK" ? stdout : stderr, "{}", body);
    return head == "OK" ? 0 : head.empty() ? 2 : 1;
  }
  if (cmd != "query") return usage(fmt::format("unknown command \"{}\"", cmd).c_str());
  if (keys.empty()) return usage("query needs a KEY (or - for keys on stdin)");
  if (daemon) {
    // The snapshot the daemon serves, which may differ from the files now.
    std::string err;
    auto found = control_path(socket, config, &err);
    if (!found) {
      fmt::print(stderr, "tlspolicy: {}\n", err);
      return 2;
    }
    std::string path = *found;
    bool any = false;
    for (auto& k : keys) {
      std::string body;
      std::string head = ask_daemon(path, fmt::format("{} {} {}", explain ? "explain" : "query", map_name(map), k), &body);
      if (head.empty() || head == "ERROR") {
        fmt::print(stderr, "tlspolicy: {}", body);
        return 2;
      }
      any |= head == "OK";
      if (explain || keys.size() == 1)
        fmt::print("{}", body);
      else if (head == "OK")
        fmt::print("{}\t{}", k, body);
    }
    return any ? 0 : 1;
  }
  auto snap = load(config, false);
  if (!snap) return 2;
  if (effective) {
    // One recipient's whole story: transport, next-hop policy, header.
    for (auto& k : keys) {
      if (k.find('@') == std::string::npos) return usage(fmt::format("-m effective takes recipient addresses, not \"{}\"", k).c_str());
      fmt::print("{}", effective_text(*snap, k));
    }
    return 0;
  }
  if (keys.size() == 1 && keys[0] == "-" && !explain) return query_stream(*snap, map, stdin, threads);
  bool any = false;
  // The daemon's discovery (discovery/), driven by a loop of its own: the
  // same DNS questions, cache and facts, the same query(..., facts).
  // --no-dns: the static policy alone.
  std::unique_ptr<Discoverer> discoverer;
  for (auto& k : keys) {
    std::shared_ptr<const DestinationFacts> facts;
    if (!no_dns && snap->needs_dns) {
      // --explain: discovered even where a rule decides, to show every source.
      if (std::string target = discovery_target(*snap, map, k, explain); !target.empty()) {
        std::string err;
        if (!discoverer) {
          // MTA-STS: the daemon's persistent cache is read if this user can
          // read it, and never created, written or moved aside (read only):
          // a query run by anyone must not change the daemon's state. A
          // policy fetched here lives only as long as this process.
          std::shared_ptr<sts::PolicyStore> store;
          const auto& m = snap->settings.discovery.mta_sts;
          if (m.enabled)
            store = std::make_shared<sts::PolicyStore>(m.cache_file, m.cache_entries, true,
                                                       [](bool error, std::string_view msg) {
                                                         if (error) fmt::print(stderr, "tlspolicy: {}\n", msg);
                                                       });
          discoverer = Discoverer::create(snap->settings.discovery, &err, std::move(store));
        }
        facts = discoverer ? discover_wait(*discoverer, target)
                           : failed_facts(target, "DNS resolver not available: " + err);
      }
    }
    Answer a = facts ? query(*snap, map, k, explain, facts.get()) : query(*snap, map, k, explain);
    any |= a.found;
    if (explain)
      fmt::print("{}", explain_text(*snap, map, k, a));
    else if (a.temp)
      fmt::print("{}TEMP {}\n", keys.size() == 1 ? "" : k + "\t", a.value);
    else if (a.found && keys.size() == 1)
      fmt::print("{}\n", a.value);
    else if (a.found)
      fmt::print("{}\t{}\n", k, a.value);
  }
  return any ? 0 : 1;
}
