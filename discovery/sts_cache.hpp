// The persistent MTA-STS policy cache: RFC 8461 5 wants a sender to keep a
// policy until its max_age runs out, across restarts, so that an attacker who
// blocks the TXT lookup or the HTTPS fetch cannot strip the policy.
//
// Store: SQLite (Debian's libsqlite3), one table keyed by domain. Why SQLite
// and not LMDB or an atomically renamed file: each write is a transaction
// that survives a crash or power cut without our own fsync/rename dance;
// corruption is detected (quick_check, "file is not a database") rather than
// read as garbage; a row bound and LRU eviction are one SQL statement; and
// there is no map size to choose up front as LMDB needs. Writes are rare (one
// per fetched policy), so SQLite's write cost does not matter; lookups are
// served from memory by the caller, not from this file.
//
// A cache that cannot be used never stops the daemon: a corrupt or foreign
// file is logged and moved aside ("<path>.corrupt-<unix time>") and a new one
// started; a path that cannot be opened at all (no directory, no permission)
// is logged and the cache lives in memory until the next start.
#pragma once
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;

namespace tlspolicy::sts {

struct CachedPolicy {
  std::string domain;   // the policy domain, lower case
  std::string id;       // the TXT record's id when the policy was fetched
  std::string text;     // the policy file as fetched (parse_policy() reads it)
  int64_t fetched = 0;  // unix seconds
  int64_t expires = 0;  // fetched + max_age
  int64_t last_used = 0;  // last lookup that used it: eviction and proactive refresh
};

struct CacheOptions {
  std::string path = "/var/lib/tlspolicy/mta-sts.db";
  size_t max_entries = 10000;  // least recently used beyond this are evicted
  std::function<void(std::string_view)> log;  // warnings; none: stderr
  // Read the file if it is there and readable, never create, change or move
  // it (`tlspolicy query`: a tool run by anyone must not touch the daemon's
  // state). Writes then go to memory only.
  bool read_only = false;
};

class PolicyCache {
 public:
  explicit PolicyCache(CacheOptions opt);  // never throws for a bad file
  ~PolicyCache();
  PolicyCache(const PolicyCache&) = delete;
  PolicyCache& operator=(const PolicyCache&) = delete;

  std::optional<CachedPolicy> get(const std::string& domain);
  // Inserts or replaces (a new id), then evicts beyond max_entries. False
  // when the write failed (logged); the caller keeps serving from memory.
  bool put(const CachedPolicy& p);
  // Mode "none" or an expired policy: dropped.
  bool erase(const std::string& domain);
  bool touch(const std::string& domain, int64_t now);
  // Removes policies whose expiry has passed; returns how many.
  size_t purge_expired(int64_t now);
  // Policies in use (last_used >= used_since) that expire before
  // now + horizon: the ones to refresh proactively, soonest first.
  std::vector<CachedPolicy> due_for_refresh(int64_t now, int64_t horizon, int64_t used_since, size_t limit);
  // Every policy, for loading into memory at start.
  std::vector<CachedPolicy> all();
  size_t size();

  // Whether policies reach the disk (false: the file could not be used).
  bool persistent() const { return persistent_; }
  const std::string& path() const { return opt_.path; }

 private:
  void open();
  bool open_file(std::string* why, bool* corrupt);
  void open_memory();
  void move_aside(const std::string& why);
  void warn(std::string_view msg);
  bool exec(const char* sql, std::string* why = nullptr);
  // A statement failed: a corrupt file is moved aside and replaced.
  void failed(const char* what, int rc);

  CacheOptions opt_;
  sqlite3* db_ = nullptr;
  bool persistent_ = false;
  std::mutex mu_;
};

}  // namespace tlspolicy::sts
