// discovery/facts_cache: the Discoverer's destination -> facts table.
// The bound, CLOCK's second chance, expiry, erase, long keys, and a long
// random run against std::unordered_map as the model (with the bound above
// the key count, so nothing is evicted and the two must agree exactly;
// with a small bound, every answer must still be the latest facts put).
#include "catch.hpp"

#include <algorithm>
#include <random>
#include <string>
#include <unordered_map>

#include "discovery/facts_cache.hpp"

using tlspolicy::DestinationFacts;
using tlspolicy::FactsCache;
using Clock = FactsCache::Clock;

namespace {

FactsCache::Facts facts(const std::string& dest, int serial = 0) {
  auto f = std::make_shared<DestinationFacts>();
  f->destination = dest;
  f->error = std::to_string(serial);  // tells two puts of one key apart
  return f;
}

std::string key(size_t i, bool long_key = false) {
  std::string k = "d";  // appended, not "d" + ...: GCC 12's false -Wrestrict
  k += std::to_string(i);
  k += ".bulk.test";
  if (long_key) k += ".a-name-longer-than-the-inline-key-storage.example";
  return k;
}

}  // namespace

TEST_CASE("facts cache: put, get, replace, erase") {
  FactsCache c(100);
  auto now = Clock::now();
  auto later = now + std::chrono::hours(1);
  CHECK(c.get("a.example", now) == nullptr);
  c.erase("a.example");  // absent: nothing happens
  c.put("a.example", facts("a.example", 1), later);
  c.put("[mx.example]:25", facts("[mx.example]:25", 1), later);
  REQUIRE(c.size() == 2);
  auto got = c.get("a.example", now);
  REQUIRE(got);
  CHECK(got->destination == "a.example");
  c.put("a.example", facts("a.example", 2), later);  // replaces, no second entry
  CHECK(c.size() == 2);
  CHECK(c.get("a.example", now)->error == "2");
  CHECK(c.get("A.example", now) == nullptr);  // keys are exact (the Discoverer normalises)
  c.erase("a.example");
  CHECK(c.get("a.example", now) == nullptr);
  CHECK(c.size() == 1);
  CHECK(c.get("[mx.example]:25", now)->destination == "[mx.example]:25");
}

TEST_CASE("facts cache: an entry expires at its expiry, and is dropped then") {
  FactsCache c(10);
  auto t0 = Clock::now();
  c.put("a.example", facts("a.example"), t0 + std::chrono::seconds(10));
  CHECK(c.get("a.example", t0 + std::chrono::seconds(9)) != nullptr);
  CHECK(c.get("a.example", t0 + std::chrono::seconds(10)) == nullptr);
  CHECK(c.size() == 0);
  // Put again (the Discoverer after a fresh discovery): found again.
  c.put("a.example", facts("a.example"), t0 + std::chrono::seconds(20));
  CHECK(c.get("a.example", t0 + std::chrono::seconds(15)) != nullptr);
}

TEST_CASE("facts cache: max_entries 0 keeps nothing") {
  FactsCache c(0);
  c.put("a.example", facts("a.example"), Clock::now() + std::chrono::hours(1));
  CHECK(c.size() == 0);
  CHECK(c.get("a.example", Clock::now()) == nullptr);
}

TEST_CASE("facts cache: the bound holds, and CLOCK spares what was used") {
  for (size_t max : {1u, 2u, 4u, 7u, 100u, 1000u}) {
    CAPTURE(max);
    FactsCache c(max);
    auto now = Clock::now();
    auto later = now + std::chrono::hours(1);
    for (size_t i = 0; i < 5 * max + 10; ++i) {
      c.put(key(i), facts(key(i)), later);
      REQUIRE(c.size() <= max);
    }
    CHECK(c.size() == max);
    // The table stays within 3/4 load of the bound's power of two.
    CHECK(c.capacity() * 3 >= max * 4);
    CHECK(c.capacity() <= std::max<size_t>(64, 4 * max));
  }
  // Second chance: a, b, c used since they were put, d never: d goes.
  FactsCache c(4);
  auto now = Clock::now();
  auto later = now + std::chrono::hours(1);
  for (const char* k : {"a", "b", "c", "d"}) c.put(k, facts(k), later);
  for (const char* k : {"a", "b", "c"}) REQUIRE(c.get(k, now));
  c.put("e", facts("e"), later);
  CHECK(c.size() == 4);
  CHECK(c.get("d", now) == nullptr);
  for (const char* k : {"a", "b", "c", "e"}) CHECK(c.get(k, now) != nullptr);
  // Everything used: the hand clears every bit and takes one all the same.
  c.put("f", facts("f"), later);
  CHECK(c.size() == 4);
  CHECK(c.get("f", now) != nullptr);
}

TEST_CASE("facts cache: long keys, collisions and churn against a model") {
  std::mt19937_64 rng(20261202);
  for (bool long_keys : {false, true}) {
    for (size_t max : {size_t(50), size_t(100000)}) {
      CAPTURE(long_keys, max);
      FactsCache c(max);
      std::unordered_map<std::string, int> model;  // key -> serial of the latest put
      auto now = Clock::now();
      auto later = now + std::chrono::hours(1);
      const size_t keys = max < 1000 ? 200 : 20000;
      int serial = 0;
      for (int step = 0; step < 200000; ++step) {
        std::string k = key(rng() % keys, long_keys);
        switch (rng() % 4) {
          case 0:
          case 1: {
            c.put(k, facts(k, ++serial), later);
            model[k] = serial;
            break;
          }
          case 2: {
            auto got = c.get(k, now);
            auto m = model.find(k);
            if (got) {
              // Never stale, never another key's facts.
              REQUIRE(m != model.end());
              REQUIRE(got->destination == k);
              REQUIRE(got->error == std::to_string(m->second));
            } else if (max >= keys) {
              REQUIRE(m == model.end());  // nothing evicted: the model decides
            }
            break;
          }
          case 3:
            c.erase(k);
            model.erase(k);
            REQUIRE(c.get(k, now) == nullptr);
            break;
        }
        REQUIRE(c.size() <= max);
      }
      if (max >= keys) {
        CHECK(c.size() == model.size());
        for (auto& [k, s] : model) {
          auto got = c.get(k, now);
          REQUIRE(got);
          CHECK(got->error == std::to_string(s));
        }
      }
    }
  }
}

TEST_CASE("facts cache: erase in every order keeps the other keys findable") {
  // 48 keys in a 64-slot table: long probe runs that wrap around the end,
  // each erase shifting followers back.
  std::mt19937_64 rng(7);
  for (int round = 0; round < 50; ++round) {
    FactsCache c(48);
    auto now = Clock::now();
    auto later = now + std::chrono::hours(1);
    std::vector<std::string> ks;
    for (size_t i = 0; i < 48; ++i) ks.push_back(key(size_t(round) * 100 + i, i % 3 == 0));
    for (auto& k : ks) c.put(k, facts(k), later);
    REQUIRE(c.size() == 48);
    std::shuffle(ks.begin(), ks.end(), rng);
    for (size_t i = 0; i < ks.size(); ++i) {
      c.erase(ks[i]);
      REQUIRE(c.get(ks[i], now) == nullptr);
      for (size_t j = i + 1; j < ks.size(); ++j) REQUIRE(c.get(ks[j], now) != nullptr);
    }
    CHECK(c.size() == 0);
  }
}
