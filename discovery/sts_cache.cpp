#include "discovery/sts_cache.hpp"

#include <fmt/format.h>
#include <sqlite3.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "policy/names.hpp"

namespace tlspolicy::sts {
namespace {

// "TLSP" in ASCII: marks the file as ours, so another SQLite file given by
// mistake is moved aside instead of being written into.
constexpr int application_id = 0x544c5350;
constexpr int schema_version = 1;

// A prepared statement that finalizes itself.
struct Stmt {
  sqlite3_stmt* s = nullptr;
  int rc = SQLITE_OK;
  Stmt(sqlite3* db, const char* sql) { rc = sqlite3_prepare_v2(db, sql, -1, &s, nullptr); }
  ~Stmt() { sqlite3_finalize(s); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  explicit operator bool() const { return rc == SQLITE_OK && s; }
  void text(int i, std::string_view v) { sqlite3_bind_text(s, i, v.data(), int(v.size()), SQLITE_TRANSIENT); }
  void blob(int i, std::string_view v) { sqlite3_bind_blob(s, i, v.data(), int(v.size()), SQLITE_TRANSIENT); }
  void i64(int i, int64_t v) { sqlite3_bind_int64(s, i, v); }
  int step() { return rc = sqlite3_step(s); }
  std::string col_text(int i) {
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
    return p ? std::string(p, size_t(sqlite3_column_bytes(s, i))) : std::string();
  }
  std::string col_blob(int i) {
    auto* p = static_cast<const char*>(sqlite3_column_blob(s, i));
    return p ? std::string(p, size_t(sqlite3_column_bytes(s, i))) : std::string();
  }
};

bool is_corruption(int rc) {
  rc &= 0xff;
  return rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB;
}

constexpr const char* select_cols = "SELECT domain, id, text, fetched, expires, last_used FROM policies";

CachedPolicy row(Stmt& st) {
  CachedPolicy p;
  p.domain = st.col_text(0);
  p.id = st.col_text(1);
  p.text = st.col_blob(2);
  p.fetched = sqlite3_column_int64(st.s, 3);
  p.expires = sqlite3_column_int64(st.s, 4);
  p.last_used = sqlite3_column_int64(st.s, 5);
  return p;
}

}  // namespace

PolicyCache::PolicyCache(CacheOptions opt) : opt_(std::move(opt)) {
  std::lock_guard lock(mu_);
  open();
}

PolicyCache::~PolicyCache() {
  if (db_) sqlite3_close_v2(db_);
}

void PolicyCache::warn(std::string_view msg) {
  if (opt_.log) opt_.log(msg);
  else std::fprintf(stderr, "%.*s\n", int(msg.size()), msg.data());
}

bool PolicyCache::exec(const char* sql, std::string* why) {
  char* err = nullptr;
  int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
  if (rc != SQLITE_OK && why) *why = err ? err : sqlite3_errstr(rc);
  sqlite3_free(err);
  return rc == SQLITE_OK;
}

void PolicyCache::open() {
  std::string why;
  bool corrupt = false;
  if (open_file(&why, &corrupt)) return;
  if (opt_.read_only) {
    warn(fmt::format("MTA-STS cache {} (read only): {}; not used", printable(opt_.path), why));
    open_memory();
    return;
  }
  if (corrupt) {
    move_aside(why);
    why.clear();
    corrupt = false;
    if (open_file(&why, &corrupt)) return;
  }
  warn(fmt::format("MTA-STS cache {}: {}; policies are kept in memory only until the next start",
                   printable(opt_.path), why));
  open_memory();
}

bool PolicyCache::open_file(std::string* why, bool* corrupt) {
  persistent_ = false;
  if (db_) {
    sqlite3_close_v2(db_);
    db_ = nullptr;
  }
  int flags = opt_.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
  int rc = sqlite3_open_v2(opt_.path.c_str(), &db_, flags | SQLITE_OPEN_FULLMUTEX, nullptr);
  auto fail = [&](std::string w, int code) {
    *why = std::move(w);
    *corrupt = is_corruption(code);
    sqlite3_close_v2(db_);
    db_ = nullptr;
    return false;
  };
  if (rc != SQLITE_OK) return fail(db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc), rc);
  sqlite3_extended_result_codes(db_, 1);
  sqlite3_busy_timeout(db_, 2000);
  // Reads every page: a garbage file fails here ("file is not a database"),
  // a truncated or damaged one answers something other than "ok".
  {
    Stmt st(db_, "PRAGMA quick_check");
    if (!st) return fail(sqlite3_errmsg(db_), st.rc);
    if (st.step() != SQLITE_ROW) return fail(sqlite3_errmsg(db_), st.rc);
    std::string res = st.col_text(0);
    if (res != "ok") return fail("damaged database: " + res, SQLITE_CORRUPT);
  }
  int app = 0, version = 0, tables = 0;
  {
    Stmt st(db_, "SELECT (SELECT application_id FROM pragma_application_id),"
                 " (SELECT user_version FROM pragma_user_version),"
                 " (SELECT count(*) FROM sqlite_master)");
    if (!st || st.step() != SQLITE_ROW) return fail(sqlite3_errmsg(db_), st.rc);
    app = sqlite3_column_int(st.s, 0);
    version = sqlite3_column_int(st.s, 1);
    tables = sqlite3_column_int(st.s, 2);
  }
  bool fresh = app == 0 && tables == 0;
  if (opt_.read_only) {
    if (fresh) return fail("empty", SQLITE_OK);
    if (app != application_id) return fail("not a tlspolicy MTA-STS cache (another SQLite file)", SQLITE_OK);
    if (version != schema_version)
      return fail(fmt::format("cache format {} is not the {} this version reads", version, schema_version), SQLITE_OK);
    return true;  // persistent_ stays false; the caller (sts_store) never writes a read-only cache
  }
  if (!fresh && app != application_id) return fail("not a tlspolicy MTA-STS cache (another SQLite file)", SQLITE_NOTADB);
  if (!fresh && version != schema_version)
    return fail(fmt::format("cache format {} is not the {} this version reads", version, schema_version), SQLITE_NOTADB);
  // Rare writes, each one durable before it is reported done.
  std::string w;
  if (!exec("PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL", &w)) return fail(w, SQLITE_ERROR);
  if (fresh) {
    std::string sql = fmt::format(
        "BEGIN;"
        "CREATE TABLE policies(domain TEXT PRIMARY KEY, id TEXT NOT NULL, text BLOB NOT NULL,"
        " fetched INTEGER NOT NULL, expires INTEGER NOT NULL, last_used INTEGER NOT NULL);"
        "CREATE INDEX policies_last_used ON policies(last_used);"
        "PRAGMA application_id={}; PRAGMA user_version={};"
        "COMMIT;",
        application_id, schema_version);
    if (!exec(sql.c_str(), &w)) {
      exec("ROLLBACK");
      return fail(w, sqlite3_errcode(db_));
    }
  }
  persistent_ = true;
  return true;
}

void PolicyCache::open_memory() {
  if (db_) sqlite3_close_v2(db_);
  db_ = nullptr;
  persistent_ = false;
  if (sqlite3_open_v2(":memory:", &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, nullptr) != SQLITE_OK ||
      !exec("CREATE TABLE policies(domain TEXT PRIMARY KEY, id TEXT NOT NULL, text BLOB NOT NULL,"
            " fetched INTEGER NOT NULL, expires INTEGER NOT NULL, last_used INTEGER NOT NULL)")) {
    // Only when out of memory; every call below then fails softly.
    warn("MTA-STS cache: cannot even open an in-memory database");
    if (db_) sqlite3_close_v2(db_);
    db_ = nullptr;
  }
}

void PolicyCache::move_aside(const std::string& why) {
  if (db_) {
    sqlite3_close_v2(db_);
    db_ = nullptr;
  }
  std::string aside = opt_.path;
  aside += ".corrupt-";
  aside += std::to_string(int64_t(std::time(nullptr)));
  if (std::rename(opt_.path.c_str(), aside.c_str()) != 0) {
    warn(fmt::format("MTA-STS cache {}: {}; cannot move it aside: {}", printable(opt_.path), why,
                     std::strerror(errno)));
    return;
  }
  // A journal left beside the bad file belongs to it, not to the new one.
  for (const char* ext : {"-journal", "-wal", "-shm"}) {
    std::string from = opt_.path + ext, to = aside + ext;
    std::rename(from.c_str(), to.c_str());
  }
  warn(fmt::format("MTA-STS cache {}: {}; moved it to {} and started an empty cache", printable(opt_.path), why,
                   printable(aside)));
}

void PolicyCache::failed(const char* what, int rc) {
  warn(fmt::format("MTA-STS cache {}: {} failed: {}", printable(opt_.path), what,
                   db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc)));
  if (persistent_ && !opt_.read_only && is_corruption(rc)) {
    move_aside("damaged while in use");
    open();
  }
}

std::optional<CachedPolicy> PolicyCache::get(const std::string& domain) {
  std::lock_guard lock(mu_);
  if (!db_) return std::nullopt;
  Stmt st(db_, fmt::format("{} WHERE domain = ?", select_cols).c_str());
  if (!st) {
    failed("lookup", st.rc);
    return std::nullopt;
  }
  st.text(1, lowercase(domain));
  int rc = st.step();
  if (rc == SQLITE_ROW) return row(st);
  if (rc != SQLITE_DONE) failed("lookup", rc);
  return std::nullopt;
}

bool PolicyCache::put(const CachedPolicy& p) {
  std::lock_guard lock(mu_);
  if (!db_) return false;
  if (!exec("BEGIN IMMEDIATE")) {
    failed("begin", sqlite3_errcode(db_));
    return false;
  }
  auto abort = [&](const char* what, int rc) {
    exec("ROLLBACK");
    failed(what, rc);
    return false;
  };
  {
    Stmt st(db_, "INSERT OR REPLACE INTO policies(domain, id, text, fetched, expires, last_used)"
                 " VALUES(?, ?, ?, ?, ?, ?)");
    if (!st) return abort("store", st.rc);
    st.text(1, lowercase(p.domain));
    st.text(2, p.id);
    st.blob(3, p.text);
    st.i64(4, p.fetched);
    st.i64(5, p.expires);
    st.i64(6, p.last_used);
    if (st.step() != SQLITE_DONE) return abort("store", st.rc);
  }
  {
    // Least recently used first, beyond the bound.
    Stmt st(db_, "DELETE FROM policies WHERE domain IN (SELECT domain FROM policies"
                 " ORDER BY last_used ASC, fetched ASC LIMIT max(0, (SELECT count(*) FROM policies) - ?))");
    if (!st) return abort("evict", st.rc);
    st.i64(1, int64_t(opt_.max_entries));
    if (st.step() != SQLITE_DONE) return abort("evict", st.rc);
  }
  if (!exec("COMMIT")) return abort("commit", sqlite3_errcode(db_));
  return true;
}

bool PolicyCache::erase(const std::string& domain) {
  std::lock_guard lock(mu_);
  if (!db_) return false;
  Stmt st(db_, "DELETE FROM policies WHERE domain = ?");
  if (!st) {
    failed("delete", st.rc);
    return false;
  }
  st.text(1, lowercase(domain));
  if (st.step() != SQLITE_DONE) {
    failed("delete", st.rc);
    return false;
  }
  return true;
}

bool PolicyCache::touch(const std::string& domain, int64_t now) {
  std::lock_guard lock(mu_);
  if (!db_) return false;
  Stmt st(db_, "UPDATE policies SET last_used = ? WHERE domain = ? AND last_used < ?");
  if (!st) {
    failed("touch", st.rc);
    return false;
  }
  st.i64(1, now);
  st.text(2, lowercase(domain));
  st.i64(3, now);
  if (st.step() != SQLITE_DONE) {
    failed("touch", st.rc);
    return false;
  }
  return true;
}

size_t PolicyCache::purge_expired(int64_t now) {
  std::lock_guard lock(mu_);
  if (!db_) return 0;
  Stmt st(db_, "DELETE FROM policies WHERE expires <= ?");
  if (!st) {
    failed("purge", st.rc);
    return 0;
  }
  st.i64(1, now);
  if (st.step() != SQLITE_DONE) {
    failed("purge", st.rc);
    return 0;
  }
  return size_t(sqlite3_changes(db_));
}

std::vector<CachedPolicy> PolicyCache::due_for_refresh(int64_t now, int64_t horizon, int64_t used_since,
                                                       size_t limit) {
  std::lock_guard lock(mu_);
  std::vector<CachedPolicy> out;
  if (!db_) return out;
  Stmt st(db_, fmt::format("{} WHERE expires < ? AND last_used >= ? ORDER BY expires ASC LIMIT ?", select_cols).c_str());
  if (!st) {
    failed("refresh list", st.rc);
    return out;
  }
  st.i64(1, now + horizon);
  st.i64(2, used_since);
  st.i64(3, int64_t(limit));
  int rc;
  while ((rc = st.step()) == SQLITE_ROW) out.push_back(row(st));
  if (rc != SQLITE_DONE) failed("refresh list", rc);
  return out;
}

std::vector<CachedPolicy> PolicyCache::all() {
  std::lock_guard lock(mu_);
  std::vector<CachedPolicy> out;
  if (!db_) return out;
  Stmt st(db_, select_cols);
  if (!st) {
    failed("read", st.rc);
    return out;
  }
  int rc;
  while ((rc = st.step()) == SQLITE_ROW) out.push_back(row(st));
  if (rc != SQLITE_DONE) failed("read", rc);
  return out;
}

size_t PolicyCache::size() {
  std::lock_guard lock(mu_);
  if (!db_) return 0;
  Stmt st(db_, "SELECT count(*) FROM policies");
  if (!st || st.step() != SQLITE_ROW) return 0;
  return size_t(sqlite3_column_int64(st.s, 0));
}

}  // namespace tlspolicy::sts
