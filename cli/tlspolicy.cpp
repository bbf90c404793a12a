// tlspolicy: the admin command. `check` loads the configuration the way the
// daemon does; `query` answers a key exactly as the daemon answers Postfix
// (same snapshot, same query()), with --explain saying which rule decided.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "policy/config.hpp"
#include "policy/maps.hpp"

using namespace tlspolicy;

namespace {

constexpr const char* kUsage =
    "usage: tlspolicy check [-c FILE]\n"
    "       tlspolicy query [-c FILE] [-m MAP] [--explain] KEY...\n"
    "       tlspolicy query [-c FILE] [-m MAP] -      (keys from stdin, key<TAB>value out)\n"
    "maps: tls-policy (default), transport, sender-transport, inbound\n"
    "default FILE: /etc/tlspolicy/tlspolicy.conf\n";

int usage(const char* problem) {
  if (problem) fmt::print(stderr, "tlspolicy: {}\n", problem);
  fmt::print(stderr, "{}", kUsage);
  return 2;
}

// Loads and reports like `postfix check`: every error, then a verdict.
std::shared_ptr<const Snapshot> load(const std::string& path, bool verbose) {
  auto t0 = std::chrono::steady_clock::now();
  LoadResult r = load_policy(path);
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (auto& w : r.warnings) fmt::print(stderr, "{}\n", w.text("warning"));
  for (auto& e : r.errors) fmt::print(stderr, "{}\n", e.text("error"));
  if (!r.snapshot) {
    fmt::print(stderr, "tlspolicy: {}: configuration has {} error{}\n", path, r.errors.size(),
               r.errors.size() == 1 ? "" : "s");
    return nullptr;
  }
  if (verbose) {
    fmt::print("configuration OK: {}; {} files read in {:.1f} ms\n", r.snapshot->summary(), r.files.size(), ms);
  }
  return r.snapshot;
}

// postmap -q - semantics: found keys print "key<TAB>value"; exit 0 if any was found.
int query_stream(const Snapshot& s, MapName map, FILE* in) {
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, in)) > 0) data.append(buf, n);
  std::string out;
  out.reserve(1 << 20);
  bool any = false;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t nl = data.find('\n', pos);
    if (nl == std::string::npos) nl = data.size();
    std::string_view key(data.data() + pos, nl - pos);
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
    if (out.size() > (1 << 20)) {
      fwrite(out.data(), 1, out.size(), stdout);
      out.clear();
    }
  }
  fwrite(out.data(), 1, out.size(), stdout);
  return any ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage(nullptr);
  std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    fmt::print("{}", kUsage);
    return 0;
  }
  std::string config = kDefaultConfig;
  MapName map = MapName::tls_policy;
  bool explain = false;
  std::vector<std::string> keys;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "-c" || a == "-m") && i + 1 >= argc) return usage(fmt::format("{} needs a value", a).c_str());
    if (a == "-c") {
      config = argv[++i];
    } else if (a == "-m") {
      auto m = parse_map_name(argv[++i]);
      if (!m) return usage(fmt::format("unknown map \"{}\" (maps: {})", argv[i], kMapNames).c_str());
      map = *m;
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
    return load(config, true) ? 0 : 1;
  }
  if (cmd != "query") return usage(fmt::format("unknown command \"{}\"", cmd).c_str());
  if (keys.empty()) return usage("query needs a KEY (or - for keys on stdin)");
  auto snap = load(config, false);
  if (!snap) return 2;
  if (keys.size() == 1 && keys[0] == "-" && !explain) return query_stream(*snap, map, stdin);
  bool any = false;
  for (auto& k : keys) {
    Answer a = query(*snap, map, k, explain);
    any |= a.found;
    if (explain)
      fmt::print("{}", explain_text(*snap, map, k, a));
    else if (a.found && keys.size() == 1)
      fmt::print("{}\n", a.value);
    else if (a.found)
      fmt::print("{}\t{}\n", k, a.value);
  }
  return any ? 0 : 1;
}
