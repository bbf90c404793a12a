// tlspolicy: the admin command. `check` loads the configuration the way the
// daemon does; `query` answers a key exactly as the daemon answers Postfix
// (same snapshot, same query()), with --explain saying which rule decided.
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
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
  }
  return r.snapshot;
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
int query_stream(const Snapshot& s, MapName map, FILE* in) {
  const size_t kBlock = 4 << 20;
  unsigned threads = std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
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
