// The persistent MTA-STS policy cache: survives a restart, stays bounded,
// and a bad file (garbage, truncated, someone else's SQLite) is moved aside
// with a log line while the cache carries on.
#include "catch.hpp"

#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "discovery/sts_cache.hpp"
#include "discovery/sts_store.hpp"

#include <fmt/format.h>
#include <ctime>
#include "testing.hpp"

using namespace tlspolicy::sts;
namespace fs = std::filesystem;

namespace {

struct Logged {
  std::vector<std::string> lines;
  CacheOptions opts(const std::string& path, size_t max = 100) {
    CacheOptions o;
    o.path = path;
    o.max_entries = max;
    o.log = [this](std::string_view m) { lines.emplace_back(m); };
    return o;
  }
  std::string all() const {
    std::string s;
    for (auto& l : lines) s += l + "\n";
    return s;
  }
};

CachedPolicy pol(const std::string& domain, const std::string& id, int64_t fetched, int64_t last_used = 0) {
  CachedPolicy p;
  p.domain = domain;
  p.id = id;
  p.text = "version: STSv1\r\nmode: enforce\r\nmx: mx." + domain + "\r\nmax_age: 86400\r\n";
  p.fetched = fetched;
  p.expires = fetched + 86400;
  p.last_used = last_used ? last_used : fetched;
  return p;
}

std::vector<fs::path> aside_files(const std::string& dir) {
  std::vector<fs::path> out;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".corrupt-") != std::string::npos) out.push_back(e.path());
  return out;
}

}  // namespace

TEST_CASE("cached policies survive a restart") {
  std::string dir = testing::temp_dir();
  std::string path = dir + "/mta-sts.db";
  Logged log;
  {
    PolicyCache c(log.opts(path));
    REQUIRE(c.persistent());
    CHECK(c.put(pol("a.example", "id1", 1000)));
    CHECK(c.put(pol("B.Example", "id2", 2000)));
    CHECK(c.put(pol("a.example", "id3", 3000)));  // a new id replaces the old policy
    CHECK(c.size() == 2);
  }
  PolicyCache c(log.opts(path));
  REQUIRE(c.persistent());
  auto a = c.get("A.EXAMPLE");
  REQUIRE(a);
  CHECK(a->id == "id3");
  CHECK(a->fetched == 3000);
  CHECK(a->expires == 3000 + 86400);
  CHECK(a->text == pol("a.example", "", 0).text);
  auto b = c.get("b.example");
  REQUIRE(b);
  CHECK(b->id == "id2");
  CHECK_FALSE(c.get("c.example"));
  CHECK(c.erase("b.example"));  // mode none: the policy is dropped
  CHECK_FALSE(c.get("b.example"));
  CHECK(c.all().size() == 1);
  INFO(log.all());
  CHECK(log.lines.empty());
  fs::remove_all(dir);
}

TEST_CASE("the cache is bounded: least recently used policies go first") {
  std::string dir = testing::temp_dir();
  Logged log;
  PolicyCache c(log.opts(dir + "/mta-sts.db", 3));
  CHECK(c.put(pol("d1.example", "1", 100, 100)));
  CHECK(c.put(pol("d2.example", "1", 100, 200)));
  CHECK(c.put(pol("d3.example", "1", 100, 300)));
  CHECK(c.touch("d1.example", 400));  // used again: now the newest
  CHECK(c.put(pol("d4.example", "1", 100, 500)));
  CHECK(c.size() == 3);
  CHECK_FALSE(c.get("d2.example"));
  CHECK(c.get("d1.example"));
  CHECK(c.put(pol("d5.example", "1", 100, 600)));
  CHECK(c.size() == 3);
  CHECK_FALSE(c.get("d3.example"));
  fs::remove_all(dir);
}

TEST_CASE("refresh and expiry lists") {
  std::string dir = testing::temp_dir();
  Logged log;
  PolicyCache c(log.opts(dir + "/mta-sts.db"));
  auto p1 = pol("soon.example", "1", 0, 900);
  p1.expires = 1100;
  auto p2 = pol("later.example", "1", 0, 900);
  p2.expires = 5000;
  auto p3 = pol("unused.example", "1", 0, 10);
  p3.expires = 1050;
  auto p4 = pol("gone.example", "1", 0, 900);
  p4.expires = 999;
  for (auto& p : {p1, p2, p3, p4}) CHECK(c.put(p));
  auto due = c.due_for_refresh(1000, 200, 500, 10);  // expiring before 1200, used since 500
  REQUIRE(due.size() == 2);
  CHECK(due[0].domain == "gone.example");
  CHECK(due[1].domain == "soon.example");
  CHECK(c.purge_expired(1000) == 1);
  CHECK_FALSE(c.get("gone.example"));
  CHECK(c.size() == 3);
  fs::remove_all(dir);
}

TEST_CASE("a garbage cache file is logged, moved aside and replaced") {
  std::string dir = testing::temp_dir();
  std::string path = dir + "/mta-sts.db";
  std::string garbage;
  for (int i = 0; i < 5000; ++i) garbage += char((i * 7919) % 251);
  std::ofstream(path, std::ios::binary) << garbage;
  Logged log;
  PolicyCache c(log.opts(path));
  INFO(log.all());
  CHECK(c.persistent());
  REQUIRE(log.lines.size() == 1);
  CHECK(log.lines[0].find("not a database") != std::string::npos);
  CHECK(log.lines[0].find("moved it to " + path + ".corrupt-") != std::string::npos);
  auto aside = aside_files(dir);
  REQUIRE(aside.size() == 1);
  CHECK(fs::file_size(aside[0]) == garbage.size());  // kept for a post-mortem, untouched
  CHECK(c.put(pol("a.example", "1", 1)));
  CHECK(c.get("a.example"));
  fs::remove_all(dir);
}

TEST_CASE("a truncated cache file is logged, moved aside and replaced") {
  std::string dir = testing::temp_dir();
  std::string path = dir + "/mta-sts.db";
  {
    Logged log;
    PolicyCache c(log.opts(path, 100000));
    for (int i = 0; i < 300; ++i) {
      std::string d = "d";  // appended, not "d" + ...: GCC 12 -O3's false -Wrestrict
      d += std::to_string(i);
      d += ".example";
      auto p = pol(d, "id", i);
      p.text += std::string(200, '#');
      REQUIRE(c.put(p));
    }
  }
  auto full = fs::file_size(path);
  REQUIRE(full > 20000);
  fs::resize_file(path, full / 2);
  Logged log;
  PolicyCache c(log.opts(path));
  INFO(log.all());
  CHECK(c.persistent());
  REQUIRE(log.lines.size() == 1);
  CHECK(log.lines[0].find("moved it to") != std::string::npos);
  CHECK(aside_files(dir).size() == 1);
  CHECK(c.size() == 0);
  CHECK(c.put(pol("a.example", "1", 1)));
  CHECK(c.get("a.example"));
  fs::remove_all(dir);
}

TEST_CASE("another program's SQLite file is not written into") {
  std::string dir = testing::temp_dir();
  std::string path = dir + "/mta-sts.db";
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, "CREATE TABLE precious(x); INSERT INTO precious VALUES(42);", nullptr, nullptr, nullptr) ==
          SQLITE_OK);
  sqlite3_close(db);
  Logged log;
  PolicyCache c(log.opts(path));
  INFO(log.all());
  REQUIRE(log.lines.size() == 1);
  CHECK(log.lines[0].find("not a tlspolicy MTA-STS cache") != std::string::npos);
  CHECK(aside_files(dir).size() == 1);
  CHECK(c.persistent());
  CHECK(c.put(pol("a.example", "1", 1)));
  fs::remove_all(dir);
}

TEST_CASE("a cache path that cannot be opened falls back to memory") {
  std::string dir = testing::temp_dir();
  Logged log;
  PolicyCache c(log.opts(dir + "/no/such/dir/mta-sts.db"));
  INFO(log.all());
  CHECK_FALSE(c.persistent());
  REQUIRE(log.lines.size() == 1);
  CHECK(log.lines[0].find("kept in memory only") != std::string::npos);
  CHECK(c.put(pol("a.example", "1", 1)));
  CHECK(c.get("a.example"));
  CHECK(aside_files(dir).empty());  // nothing was corrupt: nothing moved
  fs::remove_all(dir);
}

TEST_CASE("an empty cache file (a crash right after creation) is simply used") {
  std::string dir = testing::temp_dir();
  std::string path = dir + "/mta-sts.db";
  std::ofstream(path).close();
  Logged log;
  PolicyCache c(log.opts(path));
  INFO(log.all());
  CHECK(c.persistent());
  CHECK(log.lines.empty());
  CHECK(c.put(pol("a.example", "1", 1)));
  fs::remove_all(dir);
}

TEST_CASE("read only (tlspolicy query): reads the file, never creates, writes or moves it") {
  std::string dir = testing::temp_dir();
  std::string path = dir + "/mta-sts.db";
  Logged log;
  {
    PolicyCache c(log.opts(path));
    REQUIRE(c.put(pol("a.example", "id1", 1000)));
  }
  auto before = fs::last_write_time(path);
  {
    auto o = log.opts(path);
    o.read_only = true;
    PolicyCache ro(o);
    auto got = ro.get("a.example");
    REQUIRE(got);
    CHECK(got->id == "id1");
    CHECK(ro.all().size() == 1);
  }
  CHECK(fs::last_write_time(path) == before);
  // No file: none is created.
  std::string missing = dir + "/none.db";
  {
    auto o = log.opts(missing);
    o.read_only = true;
    PolicyCache ro(o);
    CHECK_FALSE(ro.get("a.example"));
  }
  CHECK_FALSE(fs::exists(missing));
  // A garbage file is not moved aside (the daemon's job, not a query's).
  std::string bad = dir + "/bad.db";
  {
    std::ofstream(bad) << std::string(4096, 'x');
  }
  log.lines.clear();
  {
    auto o = log.opts(bad);
    o.read_only = true;
    PolicyCache ro(o);
    CHECK_FALSE(ro.get("a.example"));
  }
  CHECK(fs::exists(bad));
  CHECK(aside_files(dir).empty());
  CHECK(log.all().find("read only") != std::string::npos);
}

// The store writes on a thread of its own (never on the event loop); what it
// was given is in the file once flushed, and a store destroyed with writes
// queued finishes them first: a restart finds every policy.
TEST_CASE("the policy store writes through off the caller's thread, and nothing queued is lost") {
  std::string dir = testing::temp_dir();
  std::string path = dir + "/mta-sts.db";
  int64_t now = int64_t(std::time(nullptr));
  std::vector<std::string> logged;
  auto log = [&logged](bool, std::string_view m) { logged.emplace_back(m); };
  {
    PolicyStore s(path, 1000, false, log);
    for (int i = 0; i < 200; ++i) s.store(pol(fmt::format("d{}.example", i), "id1", now));
    CHECK(s.size() == 200);  // memory at once
    s.erase("d7.example");
    s.flush();
    CacheOptions ro;
    ro.path = path;
    ro.max_entries = 1000;
    ro.read_only = true;
    PolicyCache c(ro);  // a second reader: the file has them
    CHECK(c.size() == 199);
    CHECK_FALSE(c.get("d7.example"));
    for (int i = 200; i < 400; ++i) s.store(pol(fmt::format("d{}.example", i), "id1", now));
  }  // destroyed with writes still queued
  PolicyStore again(path, 1000, false, log);
  CHECK(again.size() == 399);
  CHECK(again.find("d399.example"));
  CHECK_FALSE(again.find("d7.example"));
}
