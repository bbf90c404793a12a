// See resolver.hpp.
#include "discovery/resolver.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unbound.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "policy/stats.hpp"

namespace tlspolicy {

std::string_view rr_type_name(RrType t) {
  switch (t) {
    case RrType::A: return "A";
    case RrType::MX: return "MX";
    case RrType::TXT: return "TXT";
    case RrType::AAAA: return "AAAA";
    case RrType::TLSA: return "TLSA";
  }
  return "?";
}

namespace {

std::string cache_key(const std::string& name, RrType type) {
  std::string k = std::to_string(unsigned(type));
  k += ' ';
  k += name;
  return k;
}

std::string_view rcode_name(int rcode) {
  switch (rcode) {
    case 1: return "FORMERR";
    case 2: return "SERVFAIL";
    case 4: return "NOTIMP";
    case 5: return "REFUSED";
    default: return "error";
  }
}

// One uncompressed wire-format name (as libunbound gives rdata) in
// presentation form, lower case, no trailing dot ("." for the root).
// Returns the bytes read, 0 when malformed.
size_t wire_name(const uint8_t* p, size_t n, std::string* out) {
  out->clear();
  size_t i = 0;
  while (i < n) {
    size_t len = p[i++];
    if (len == 0) {
      if (out->empty()) out->push_back('.');  // (not = ".": GCC 12 -O3 -Wrestrict)
      return i;
    }
    if (len > 63 || i + len > n) return 0;
    if (!out->empty()) *out += '.';
    for (size_t j = 0; j < len; ++j) {
      char c = char(p[i + j]);
      c = (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
      if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')
        *out += c;
      else
        *out += fmt::format("\\{:03}", unsigned(uint8_t(c)));
    }
    i += len;
  }
  return 0;
}

// The presentation form of one record's rdata, "" when malformed.
std::string rdata_text(RrType type, const uint8_t* p, size_t n) {
  char buf[INET6_ADDRSTRLEN];
  switch (type) {
    case RrType::A:
      if (n != 4 || !inet_ntop(AF_INET, p, buf, sizeof buf)) return {};
      return buf;
    case RrType::AAAA:
      if (n != 16 || !inet_ntop(AF_INET6, p, buf, sizeof buf)) return {};
      return buf;
    case RrType::MX: {
      if (n < 3) return {};
      std::string host;
      if (wire_name(p + 2, n - 2, &host) != n - 2) return {};
      std::string out = std::to_string((unsigned(p[0]) << 8) | p[1]);
      out += ' ';
      out += host;
      return out;
    }
    case RrType::TXT: {
      // One or more <character-string>s (RFC 1035 3.3.14), concatenated
      // (RFC 8461 3.1). Control and non-ASCII bytes are escaped so logs and
      // --explain stay one clean line; a valid STS record has none.
      std::string out;
      size_t i = 0;
      while (i < n) {
        size_t len = p[i++];
        if (i + len > n) return {};
        for (size_t k = 0; k < len; ++k) {
          uint8_t c = p[i + k];
          if (c < 0x20 || c >= 0x7f || c == '\\')
            out += fmt::format("\\{:03}", unsigned(c));
          else
            out += char(c);
        }
        i += len;
      }
      return out;
    }
    case RrType::TLSA: {
      if (n < 4) return {};
      std::string out = fmt::format("{} {} {} ", p[0], p[1], p[2]);
      for (size_t i = 3; i < n; ++i) out += fmt::format("{:02x}", p[i]);
      return out;
    }
  }
  return {};
}

// The negative-caching TTL of a NXDOMAIN/NODATA reply (RFC 2308 5: the
// lesser of the SOA record's TTL and its MINIMUM field), read from the
// authority section of the reply packet; -1 when there is no SOA. By hand:
// libunbound reports no TTL for negative answers, and a dozen lines of
// bounds-checked packet walking do not earn a dependency (ldns).
long negative_ttl(const uint8_t* p, size_t n) {
  if (n < 12) return -1;
  auto u16 = [&](size_t i) { return unsigned(p[i] << 8 | p[i + 1]); };
  auto u32 = [&](size_t i) { return (uint32_t(u16(i)) << 16) | u16(i + 2); };
  auto skip_name = [&](size_t i) -> size_t {  // compressed names allowed in a packet
    while (i < n) {
      uint8_t len = p[i];
      if (len == 0) return i + 1;
      if ((len & 0xc0) == 0xc0) return i + 2;
      i += 1 + len;
    }
    return n + 1;
  };
  unsigned qd = u16(4), an = u16(6), ns = u16(8);
  size_t i = 12;
  for (unsigned q = 0; q < qd && i <= n; ++q) i = skip_name(i) + 4;
  for (unsigned r = 0; r < an + ns; ++r) {
    i = skip_name(i);
    if (i + 10 > n) return -1;
    unsigned type = u16(i), rdlen = u16(i + 8);
    uint32_t ttl = u32(i + 4);
    size_t rd = i + 10;
    if (rd + rdlen > n) return -1;
    if (r >= an && type == 6) {  // SOA: mname, rname, serial, refresh, retry, expire, minimum
      size_t j = skip_name(skip_name(rd));
      if (j + 20 > rd + rdlen) return -1;
      return long(std::min(ttl, u32(j + 16)));
    }
    i = rd + rdlen;
  }
  return -1;
}

}  // namespace

std::unique_ptr<Resolver> Resolver::create(const DiscoverySettings& s, std::string* error) {
  std::unique_ptr<Resolver> r(new Resolver(s));
  r->ctx_ = ub_ctx_create();
  if (!r->ctx_) {
    *error = "cannot create the libunbound context";
    return nullptr;
  }
  auto fail = [&](std::string what, int err) {
    *error = fmt::format("{}: {}", what, ub_strerror(err));
    return nullptr;
  };
  // A thread of libunbound's runs the queries; the default would fork.
  if (int e = ub_ctx_async(r->ctx_, 1)) return fail("ub_ctx_async", e);
  // Forwarders on loopback (a local validating resolver, the test fixture)
  // are refused by default; names under test. are a local zone by default.
  for (auto [opt, val] : {std::pair{"do-not-query-localhost:", "no"}, std::pair{"local-zone:", "test. transparent"}})
    if (int e = ub_ctx_set_option(r->ctx_, opt, val)) return fail(fmt::format("option {} {}", opt, val), e);
  for (auto& f : s.forwarders)
    if (int e = ub_ctx_set_fwd(r->ctx_, f.c_str())) return fail(fmt::format("forwarder \"{}\"", f), e);
  // Tried (tests/discovery, "trust_forwarder_ad"): libunbound hands back
  // its own rendering of an answer, whose AD bit is its own validator's
  // verdict (set only with a trust anchor); with module-config "iterator"
  // it does not ask with DO and the forwarder's AD is dropped as well. So a
  // forwarder's AD cannot be trusted through libunbound: refuse the setting
  // rather than silently treat every answer as insecure.
  if (s.trust_forwarder_ad) {
    *error = "trust_forwarder_ad is not supported: libunbound does not pass a forwarder's AD bit through; "
             "give trust_anchor_file (the root's /usr/share/dns/root.key, or your zones' DS/DNSKEY) so that "
             "tlspolicyd validates the forwarder's answers itself";
    return nullptr;
  }
  if (!s.trust_anchor_file.empty()) {
    // libunbound reads the file when the first query starts: check now that
    // this user can read it, so the error is said at start (or reload).
    int fd = ::open(s.trust_anchor_file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      *error = fmt::format("trust anchor {}: {}", s.trust_anchor_file, std::strerror(errno));
      return nullptr;
    }
    ::close(fd);
    // DS or DNSKEY records in zone-file format (/usr/share/dns/root.key is
    // one). An RFC 5011 auto-trust file would need ub_ctx_add_ta_autr and a
    // writable file: not offered.
    if (int e = ub_ctx_add_ta_file(r->ctx_, s.trust_anchor_file.c_str()))
      return fail(fmt::format("trust anchor {}", s.trust_anchor_file), e);
  }
  r->epfd_ = epoll_create1(EPOLL_CLOEXEC);
  r->timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (r->epfd_ < 0 || r->timer_fd_ < 0) {
    *error = fmt::format("epoll/timerfd: {}", std::strerror(errno));
    return nullptr;
  }
  for (int fd : {ub_fd(r->ctx_), r->timer_fd_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (fd < 0 || epoll_ctl(r->epfd_, EPOLL_CTL_ADD, fd, &ev) < 0) {
      *error = "cannot watch libunbound's descriptor";
      return nullptr;
    }
  }
  return r;
}

Resolver::~Resolver() {
  // Cancelled queries call nothing; the waiters' owner has failed its requests.
  if (ctx_) {
    for (auto& [k, p] : pending_) ub_cancel(ctx_, p->async_id);
    ub_ctx_delete(ctx_);
  }
  if (epfd_ >= 0) ::close(epfd_);
  if (timer_fd_ >= 0) ::close(timer_fd_);
}

Resolver::Answer Resolver::cached(const std::string& name, RrType type) {
  auto it = cache_.find(cache_key(name, type));
  if (it == cache_.end()) return nullptr;
  if (Clock::now() >= it->second.expires) {
    lru_.erase(it->second.lru);
    cache_.erase(it);
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return it->second.answer;
}

Resolver::Clock::time_point Resolver::expiry(const std::string& name, RrType type) const {
  auto it = cache_.find(cache_key(name, type));
  return it == cache_.end() ? Clock::now() : it->second.expires;
}

bool Resolver::resolve(const std::string& name, RrType type, Callback cb) {
  if (Answer a = cached(name, type)) {
    ++counts_.cache_hits;
    stats().dns_cache_hits.add();
    cb(a);
    return true;
  }
  std::string key = cache_key(name, type);
  if (auto it = pending_.find(key); it != pending_.end()) {
    ++counts_.coalesced;
    it->second->waiters.push_back(std::move(cb));
    return false;
  }
  auto p = std::make_unique<Pending>();
  p->self = this;
  p->key = key;
  p->name = name;
  p->type = type;
  p->deadline = Clock::now() + std::chrono::milliseconds(settings_.query_timeout_ms);
  p->waiters.push_back(std::move(cb));
  ++counts_.queries;
  stats().dns_queries.add();
  int err = ub_resolve_async(ctx_, name.c_str(), int(type), 1 /* IN */, p.get(), &Resolver::on_result, &p->async_id);
  if (err) {
    auto a = std::make_shared<DnsRecordSet>();
    a->name = name;
    a->type = rr_type_name(type);
    a->error = fmt::format("libunbound: {}", ub_strerror(err));
    ++counts_.failures;
    stats().dns_failures.add();
    p->waiters.front()(a);  // nothing cached: a setup error is not the name's fault
    return true;
  }
  bool first = pending_.empty();
  pending_.emplace(key, std::move(p));
  if (first) arm_timer();
  return false;
}

// Arms the timer for the earliest query timeout (disarms with none pending).
void Resolver::arm_timer() {
  itimerspec its{};
  if (!pending_.empty()) {
    auto first = Clock::time_point::max();
    for (auto& [k, p] : pending_) first = std::min(first, p->deadline);
    auto ns = std::max<long long>(1, std::chrono::duration_cast<std::chrono::nanoseconds>(first - Clock::now()).count());
    its.it_value.tv_sec = time_t(ns / 1000000000);
    its.it_value.tv_nsec = long(ns % 1000000000);
  }
  timerfd_settime(timer_fd_, 0, &its, nullptr);
}

void Resolver::process() {
  int e = ub_process(ctx_);
  (void)e;  // an error here means a broken pipe to libunbound's thread: the timeouts fail the queries
  uint64_t ticks;
  bool timer = ::read(timer_fd_, &ticks, sizeof ticks) == sizeof ticks;
  if (!timer) return;
  auto now = Clock::now();
  std::vector<std::string> late;
  for (auto& [k, p] : pending_)
    if (p->deadline <= now) late.push_back(k);
  for (auto& k : late) {
    auto it = pending_.find(k);
    if (it == pending_.end()) continue;  // a callback of an earlier one finished it
    ub_cancel(ctx_, it->second->async_id);
    auto a = std::make_shared<DnsRecordSet>();
    a->name = it->second->name;
    a->type = rr_type_name(it->second->type);
    a->error = fmt::format("no answer within {} ms", settings_.query_timeout_ms);
    finish(k, a, std::chrono::seconds(settings_.failure_ttl));
  }
  arm_timer();
}

void Resolver::on_result(void* mydata, int err, ub_result* result) {
  auto* p = static_cast<Pending*>(mydata);
  Resolver* self = p->self;
  Clock::duration keep{};
  Answer a = self->make_answer(p->name, p->type, err, result, &keep);
  if (result) ub_resolve_free(result);
  self->finish(p->key, std::move(a), keep);  // frees p
}

// Caches the answer (for `keep`), takes the query off the pending list and
// runs its waiters, which may start new queries.
void Resolver::finish(const std::string& key_in, Answer a, Clock::duration keep) {
  std::string key = key_in;  // the pending entry owns key_in
  auto it = pending_.find(key);
  std::vector<Callback> waiters;
  if (it != pending_.end()) {
    waiters = std::move(it->second->waiters);
    pending_.erase(it);
  }
  if (a->status == DnsStatus::failed) {
    ++counts_.failures;
    stats().dns_failures.add();
  }
  if (keep > Clock::duration::zero() && settings_.cache_entries > 0) {
    auto [e, fresh] = cache_.try_emplace(key);
    if (fresh) {
      lru_.push_front(key);
      e->second.lru = lru_.begin();
    } else {
      lru_.splice(lru_.begin(), lru_, e->second.lru);
    }
    e->second.answer = a;
    e->second.expires = Clock::now() + keep;
    while (cache_.size() > settings_.cache_entries) {
      cache_.erase(lru_.back());
      lru_.pop_back();
    }
  }
  for (auto& w : waiters) w(a);
}

Resolver::Answer Resolver::make_answer(const std::string& name, RrType type, int err, ub_result* r,
                                       Clock::duration* keep) const {
  auto a = std::make_shared<DnsRecordSet>();
  a->name = name;
  a->type = rr_type_name(type);
  auto failure = std::chrono::seconds(settings_.failure_ttl);
  *keep = failure;
  if (err || !r) {
    a->error = fmt::format("libunbound: {}", ub_strerror(err));
    return a;
  }
  if (r->bogus) {
    a->security = DnsSecurity::bogus;
    a->error = fmt::format("DNSSEC validation failed (bogus): {}", r->why_bogus ? r->why_bogus : "no reason given");
    return a;
  }
  a->security = r->secure ? DnsSecurity::secure : DnsSecurity::insecure;
  if (r->rcode != 0 && !r->nxdomain) {
    a->error = fmt::format("{} (rcode {})", rcode_name(r->rcode), r->rcode);
    return a;
  }
  if (r->nxdomain || !r->havedata) {
    a->status = r->nxdomain ? DnsStatus::nxdomain : DnsStatus::nodata;
    long neg = negative_ttl(static_cast<const uint8_t*>(r->answer_packet), size_t(std::max(0, r->answer_len)));
    if (neg < 0) neg = std::max(0, r->ttl);
    neg = std::min<long>(neg, settings_.negative_ttl_max);
    a->ttl = uint32_t(neg);
    *keep = std::chrono::seconds(neg);
    return a;
  }
  a->status = DnsStatus::ok;
  a->ttl = uint32_t(std::max(0, r->ttl));
  *keep = std::chrono::seconds(a->ttl);
  for (int i = 0; r->data[i]; ++i) {
    std::string t = rdata_text(type, reinterpret_cast<const uint8_t*>(r->data[i]), size_t(r->len[i]));
    // An empty TXT record ("") is well-formed: its presentation is "".
    bool empty_txt = type == RrType::TXT && r->len[i] >= 1 &&
                     std::all_of(r->data[i], r->data[i] + r->len[i], [](char c) { return c == 0; });
    if (t.empty() && !empty_txt) {
      a->status = DnsStatus::failed;
      a->data.clear();
      a->error = fmt::format("malformed {} record", rr_type_name(type));
      *keep = failure;
      return a;
    }
    a->data.push_back(std::move(t));
  }
  return a;
}

}  // namespace tlspolicy
