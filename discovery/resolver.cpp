// See resolver.hpp. The backends are in unbound_backend.cpp and
// forwarder_backend.cpp; what they share (record formatting, negative TTLs)
// is here.
#include "discovery/resolver.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "discovery/dns_backend.hpp"
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

namespace dns {

std::string_view rcode_name(int rcode) {
  switch (rcode) {
    case 1: return "FORMERR";
    case 2: return "SERVFAIL";
    case 4: return "NOTIMP";
    case 5: return "REFUSED";
    default: return "error";
  }
}

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

std::optional<std::string> rdata_text(RrType type, const uint8_t* p, size_t n) {
  char buf[INET6_ADDRSTRLEN];
  switch (type) {
    case RrType::A:
      if (n != 4 || !inet_ntop(AF_INET, p, buf, sizeof buf)) return std::nullopt;
      return std::string(buf);
    case RrType::AAAA:
      if (n != 16 || !inet_ntop(AF_INET6, p, buf, sizeof buf)) return std::nullopt;
      return std::string(buf);
    case RrType::MX: {
      if (n < 3) return std::nullopt;
      std::string host;
      if (wire_name(p + 2, n - 2, &host) != n - 2) return std::nullopt;
      std::string out = std::to_string((unsigned(p[0]) << 8) | p[1]);
      out += ' ';
      out += host;
      return out;
    }
    case RrType::TXT: {
      // One or more <character-string>s (RFC 1035 3.3.14), concatenated
      // (RFC 8461 3.1). Control and non-ASCII bytes are escaped so logs and
      // --explain stay one clean line; a valid STS record has none.
      if (n == 0) return std::nullopt;
      std::string out;
      size_t i = 0;
      while (i < n) {
        size_t len = p[i++];
        if (i + len > n) return std::nullopt;
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
      if (n < 4) return std::nullopt;
      std::string out = fmt::format("{} {} {} ", p[0], p[1], p[2]);
      for (size_t i = 3; i < n; ++i) out += fmt::format("{:02x}", p[i]);
      return out;
    }
  }
  return std::nullopt;
}

// By hand: libunbound reports no TTL for negative answers, and a dozen
// lines of bounds-checked packet walking do not earn a dependency.
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

}  // namespace dns

namespace {

std::string cache_key(const std::string& name, RrType type) {
  std::string k = std::to_string(unsigned(type));
  k += ' ';
  k += name;
  return k;
}

}  // namespace

std::unique_ptr<Resolver> Resolver::create(const DiscoverySettings& s, std::string* error) {
  std::unique_ptr<Resolver> r(new Resolver(s));
  r->backend_ = s.trust_forwarder_ad ? make_forwarder_backend(s, error) : make_unbound_backend(s, error);
  if (!r->backend_) return nullptr;
  Resolver* self = r.get();
  r->backend_->deliver_ = [self](const std::string& key, Answer a, Clock::duration keep) {
    self->finish(key, std::move(a), keep);
  };
  r->epfd_ = epoll_create1(EPOLL_CLOEXEC);
  r->timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (r->epfd_ < 0 || r->timer_fd_ < 0) {
    *error = fmt::format("epoll/timerfd: {}", std::strerror(errno));
    return nullptr;
  }
  for (int fd : {r->backend_->fd(), r->timer_fd_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (fd < 0 || epoll_ctl(r->epfd_, EPOLL_CTL_ADD, fd, &ev) < 0) {
      *error = fmt::format("cannot watch the DNS backend's descriptor ({})", r->backend_->name());
      return nullptr;
    }
  }
  return r;
}

Resolver::Resolver(const DiscoverySettings& s) : settings_(s) {}

Resolver::~Resolver() {
  // Cancelled queries call nothing; the waiters' owner has failed its requests.
  if (backend_) {
    for (auto& [k, p] : pending_) backend_->cancel(k);
    backend_.reset();
  }
  if (epfd_ >= 0) ::close(epfd_);
  if (timer_fd_ >= 0) ::close(timer_fd_);
}

std::string_view Resolver::backend_name() const { return backend_->name(); }

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
  ++counts_.queries;
  stats().dns_queries.add();
  std::string err = backend_->start(key, name, type);
  if (!err.empty()) {
    auto a = std::make_shared<DnsRecordSet>();
    a->name = name;
    a->type = rr_type_name(type);
    a->error = std::move(err);
    ++counts_.failures;
    stats().dns_failures.add();
    cb(a);  // nothing cached: a setup error is not the name's fault
    return true;
  }
  auto p = std::make_unique<Pending>();
  p->key = key;
  p->name = name;
  p->type = type;
  p->deadline = Clock::now() + std::chrono::milliseconds(settings_.query_timeout_ms);
  p->waiters.push_back(std::move(cb));
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
  backend_->process();
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
    backend_->cancel(k);
    auto a = std::make_shared<DnsRecordSet>();
    a->name = it->second->name;
    a->type = rr_type_name(it->second->type);
    a->error = fmt::format("no answer within {} ms", settings_.query_timeout_ms);
    finish(k, a, std::chrono::seconds(settings_.failure_ttl));
  }
  arm_timer();
}

// Caches the answer (for `keep`), takes the query off the pending list and
// runs its waiters, which may start new queries.
void Resolver::finish(const std::string& key_in, Answer a, Clock::duration keep) {
  std::string key = key_in;  // the caller's string may be owned by what we erase
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

}  // namespace tlspolicy
