// See destination.hpp.
#include "discovery/destination.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tuple>

#include "policy/names.hpp"
#include "policy/stats.hpp"

namespace tlspolicy {

namespace {
// MX hosts looked at per destination: Postfix tries at most
// smtp_mx_address_limit (5) addresses; more than 16 hosts is abuse.
constexpr size_t kMaxMxHosts = 16;
}  // namespace

struct Discoverer::Job {
  std::string dest;  // as asked
  std::string name;  // the domain or the literal's host (no brackets)
  bool literal = false;
  int pending = 0;
  bool done = false;
  std::vector<Done> waiters;
  // Every question asked, in order; the answers as they come (nullptr: none yet).
  std::vector<std::pair<std::string, RrType>> asked;
  std::vector<Resolver::Answer> answers;
  size_t mx_slot = SIZE_MAX;
  struct Host {
    std::string name;
    int preference = 0;
    size_t a = SIZE_MAX, aaaa = SIZE_MAX, tlsa = SIZE_MAX;
  };
  std::vector<Host> hosts;
  std::shared_ptr<DestinationFacts> facts = std::make_shared<DestinationFacts>();
};

std::unique_ptr<Discoverer> Discoverer::create(const DiscoverySettings& s, std::string* error) {
  auto r = Resolver::create(s, error);
  if (!r) return nullptr;
  std::unique_ptr<Discoverer> d(new Discoverer(std::move(r)));
  d->epfd_ = epoll_create1(EPOLL_CLOEXEC);
  d->timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (d->epfd_ < 0 || d->timer_fd_ < 0) {
    *error = fmt::format("epoll/timerfd: {}", std::strerror(errno));
    return nullptr;
  }
  for (int fd : {d->resolver_->fd(), d->timer_fd_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(d->epfd_, EPOLL_CTL_ADD, fd, &ev);
  }
  return d;
}

Discoverer::~Discoverer() {
  fail_all("discovery stopped (the daemon is stopping or a reload changed the discovery settings)");
  resolver_.reset();  // drops the callbacks that still hold jobs
  if (epfd_ >= 0) ::close(epfd_);
  if (timer_fd_ >= 0) ::close(timer_fd_);
}

void Discoverer::fail_all(const std::string& why) {
  auto jobs = jobs_;  // complete() erases
  for (auto& [d, j] : jobs) complete(j, why);
}

Discoverer::Facts Discoverer::cached_facts(const std::string& destination) {
  return facts_.get(destination, Clock::now());
}

// A completed discovery's facts, kept while every answer they rest on is
// still in the resolver's cache (not when one was not cached at all: TTL 0).
void Discoverer::cache_facts(const std::shared_ptr<Job>& j) {
  if (facts_.max_entries() == 0) return;
  auto now = Clock::now();
  auto expires = Clock::time_point::max();
  for (auto& [name, type] : j->asked) expires = std::min(expires, resolver_->expiry(name, type));
  if (expires <= now) return;
  // Kept for hours: no spare capacity (complete() grows `answers` by
  // push_back, 4 slots for 3 answers: ~140 of ~1900 bytes per destination).
  j->facts->answers.shrink_to_fit();
  facts_.put(j->dest, j->facts, expires);
}

Discoverer::Facts Discoverer::discover(const std::string& destination, Done done) {
  if (Facts f = cached_facts(destination)) {
    ++counts_.facts_hits;
    ++counts_.immediate;
    stats().dns_cache_hits.add();
    return f;
  }
  if (auto it = jobs_.find(destination); it != jobs_.end()) {
    ++counts_.coalesced;
    it->second->waiters.push_back(std::move(done));
    return nullptr;
  }
  auto j = std::make_shared<Job>();
  j->dest = destination;
  j->facts->destination = destination;
  std::string_view n = destination;
  if (n.starts_with('[')) {
    // "[host]" or "[host]:port": the host itself, no MX lookup.
    auto close = n.find(']');
    j->literal = j->facts->literal = true;
    n = n.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1);
  }
  if (n.ends_with('.')) n.remove_suffix(1);
  j->name = lowercase(n);
  if (j->literal) {
    if (auto ip = parse_ip(j->name)) {  // "[192.0.2.1]": nothing to ask
      MxHost h;
      h.name = j->name;
      h.addrs.push_back(*ip);
      j->facts->mx.push_back(std::move(h));
      j->done = true;
      ++counts_.immediate;
      return j->facts;
    }
  }
  if (jobs_.size() >= size_t(std::max(0, settings().max_outstanding))) {
    ++counts_.overloaded;
    ++counts_.immediate;
    j->facts->failed = true;
    j->facts->error = fmt::format("too many outstanding DNS resolutions (max_outstanding {})", settings().max_outstanding);
    return j->facts;
  }
  start(j);
  if (j->done) {
    ++counts_.immediate;
    return j->facts;
  }
  ++counts_.started;
  j->waiters.push_back(std::move(done));
  jobs_.emplace(destination, j);
  stats().discovery_in_flight.fetch_add(1, std::memory_order_relaxed);
  bool first = deadlines_.empty();
  deadlines_.emplace_back(Clock::now() + std::chrono::milliseconds(settings().deadline_ms), j);
  if (first) arm_timer();
  return nullptr;
}

// Asks one question; the answer lands in j->answers[*slot].
void Discoverer::ask(const std::shared_ptr<Job>& j, const std::string& name, RrType type, size_t* slot) {
  *slot = j->asked.size();
  j->asked.emplace_back(name, type);
  j->answers.emplace_back();
  ++j->pending;
  size_t at = *slot;
  resolver_->resolve(name, type, [this, j, at](const Resolver::Answer& a) {
    if (j->done) return;  // failed at its deadline meanwhile
    j->answers[at] = a;
    if (at == j->mx_slot) on_mx(j);
    answered(j);
  });
}

void Discoverer::start(const std::shared_ptr<Job>& j) {
  ++j->pending;  // held while asking: completes once, after every question is out
  if (j->literal) {
    j->hosts.push_back({j->name, 0});
    ask_host(j, 0);
  } else {
    ask(j, j->name, RrType::MX, &j->mx_slot);
  }
  answered(j);
}

// The MX answer: which hosts to ask about.
void Discoverer::on_mx(const std::shared_ptr<Job>& j) {
  const DnsRecordSet& mx = *j->answers[j->mx_slot];
  if (mx.status == DnsStatus::nodata) {
    j->hosts.push_back({j->name, 0});  // implicit MX (RFC 5321 5.1)
  } else if (mx.status == DnsStatus::ok && !(mx.data.size() == 1 && mx.data[0] == "0 .")) {
    for (auto& rec : mx.data) {
      auto sp = rec.find(' ');
      Job::Host h;
      h.preference = std::atoi(rec.substr(0, sp).c_str());
      h.name = rec.substr(sp + 1);
      if (h.name == ".") continue;  // a null MX among others: ignore it
      if (std::none_of(j->hosts.begin(), j->hosts.end(), [&](auto& o) { return o.name == h.name; }))
        j->hosts.push_back(std::move(h));
    }
    std::stable_sort(j->hosts.begin(), j->hosts.end(),
                     [](auto& a, auto& b) { return a.preference < b.preference; });
    if (j->hosts.size() > kMaxMxHosts) j->hosts.resize(kMaxMxHosts);
  }
  ++j->pending;  // the hosts' answers may all come from the cache at once
  for (size_t i = 0; i < j->hosts.size(); ++i) ask_host(j, i);
  answered(j);
}

void Discoverer::ask_host(const std::shared_ptr<Job>& j, size_t i) {
  std::string name = j->hosts[i].name;
  ask(j, name, RrType::A, &j->hosts[i].a);
  ask(j, name, RrType::AAAA, &j->hosts[i].aaaa);
  // TLSA only where DANE could apply: a secure MX set (or a literal host);
  // asked beside the addresses, used only if they are secure too (RFC 7672 2.2).
  bool mx_secure = j->literal || j->answers[j->mx_slot]->security == DnsSecurity::secure;
  if (settings().dane != DaneMode::off && mx_secure) {
    std::string tlsa = "_25._tcp.";
    tlsa += name;
    ask(j, tlsa, RrType::TLSA, &j->hosts[i].tlsa);
  }
}

void Discoverer::answered(const std::shared_ptr<Job>& j) {
  if (--j->pending == 0 && !j->done) complete(j, "");
}

namespace {
bool failed(const DnsRecordSet& a) { return a.status == DnsStatus::failed || a.security == DnsSecurity::bogus; }
}  // namespace

// Builds the facts from the answers (or fails them with `failure`), and
// runs the waiters.
void Discoverer::complete(const std::shared_ptr<Job>& j, const std::string& failure) {
  if (j->done) return;
  j->done = true;
  DestinationFacts& f = *j->facts;
  for (auto& a : j->answers)
    if (a) f.answers.push_back(*a);
  if (!failure.empty()) {
    f.failed = true;
    f.error = failure;
  } else {
    if (!j->literal) {
      const DnsRecordSet& mx = *j->answers[j->mx_slot];
      f.mx_security = mx.security;
      if (failed(mx)) {
        f.failed = true;
        f.error = fmt::format("MX {}: {}", j->name, mx.error);
      } else if (mx.status == DnsStatus::nxdomain) {
        f.error = fmt::format("MX {}: no such domain (NXDOMAIN)", j->name);
      } else if (mx.status == DnsStatus::nodata) {
        f.implicit_mx = true;
      } else if (j->hosts.empty()) {
        f.null_mx = true;
      }
    }
    for (auto& h : j->hosts) {
      MxHost m;
      m.name = h.name;
      m.preference = h.preference;
      const DnsRecordSet& a = *j->answers[h.a];
      const DnsRecordSet& aaaa = *j->answers[h.aaaa];
      for (const DnsRecordSet* s : {&a, &aaaa})
        if (s->status == DnsStatus::ok)
          for (auto& d : s->data)
            if (auto ip = parse_ip(d)) m.addrs.push_back(*ip);
      // Either family failing leaves the host's addresses unknown: a rule
      // matching addresses must not be assumed away.
      m.addr_failed = failed(a) || failed(aaaa);
      if (a.security == DnsSecurity::bogus || aaaa.security == DnsSecurity::bogus)
        m.addr_security = DnsSecurity::bogus;
      else if (a.security == DnsSecurity::secure && aaaa.security == DnsSecurity::secure)
        m.addr_security = DnsSecurity::secure;
      if (h.tlsa != SIZE_MAX && m.addr_security == DnsSecurity::secure) {
        const DnsRecordSet& t = *j->answers[h.tlsa];
        if (failed(t)) {
          m.tlsa = TlsaState::failed;  // RFC 7672 2.2: no delivery in the clear
        } else if (t.status == DnsStatus::ok && t.security == DnsSecurity::secure) {
          // Usages 2 (DANE-TA) and 3 (DANE-EE) only: RFC 7672 3.1.3.
          bool usable = std::any_of(t.data.begin(), t.data.end(),
                                    [](const std::string& r) { return r.starts_with("2 ") || r.starts_with("3 "); });
          m.tlsa = usable ? TlsaState::usable : TlsaState::unusable;
        }
      }
      f.mx.push_back(std::move(m));
    }
    if (j->literal && !f.mx.empty() && f.mx[0].addr_failed) {
      f.failed = true;
      for (auto& a : f.answers)
        if (failed(a)) {
          f.error = fmt::format("{} {}: {}", a.type, a.name, a.error);
          break;
        }
    }
  }
  if (failure.empty()) cache_facts(j);
  auto it = jobs_.find(j->dest);
  if (it != jobs_.end() && it->second == j) {
    jobs_.erase(it);
    stats().discovery_in_flight.fetch_sub(1, std::memory_order_relaxed);
  }
  auto waiters = std::move(j->waiters);
  Facts facts = j->facts;
  for (auto& w : waiters) w(facts);
}

void Discoverer::arm_timer() {
  itimerspec its{};
  while (!deadlines_.empty() && deadlines_.front().second.expired()) deadlines_.pop_front();
  if (!deadlines_.empty()) {
    auto ns = std::max<long long>(
        1, std::chrono::duration_cast<std::chrono::nanoseconds>(deadlines_.front().first - Clock::now()).count());
    its.it_value.tv_sec = time_t(ns / 1000000000);
    its.it_value.tv_nsec = long(ns % 1000000000);
  }
  timerfd_settime(timer_fd_, 0, &its, nullptr);
}

void Discoverer::process() {
  resolver_->process();
  uint64_t ticks;
  if (::read(timer_fd_, &ticks, sizeof ticks) != sizeof ticks) return;
  auto now = Clock::now();
  while (!deadlines_.empty() && deadlines_.front().first <= now) {
    auto j = deadlines_.front().second.lock();
    deadlines_.pop_front();
    if (!j || j->done) continue;
    std::string waiting;
    for (size_t i = 0; i < j->answers.size(); ++i)
      if (!j->answers[i]) {
        waiting = fmt::format(" (no answer yet for {} {})", rr_type_name(j->asked[i].second), j->asked[i].first);
        break;
      }
    ++counts_.timeouts;
    stats().discovery_timeouts.add();
    complete(j, fmt::format("DNS timeout after {} ms{}", settings().deadline_ms, waiting));
  }
  arm_timer();
}

bool same_resolver_settings(const DiscoverySettings& a, const DiscoverySettings& b) {
  auto tie = [](const DiscoverySettings& s) {
    return std::tie(s.forwarders, s.trust_anchor_file, s.trust_forwarder_ad, s.query_timeout_ms, s.deadline_ms,
                    s.max_outstanding, s.cache_entries, s.negative_ttl_max, s.failure_ttl, s.dane);
  };
  return tie(a) == tie(b);
}

Discoverer::Facts failed_facts(const std::string& destination, const std::string& why) {
  auto f = std::make_shared<DestinationFacts>();
  f->destination = destination;
  f->failed = true;
  f->error = why;
  return f;
}

Discoverer::Facts discover_wait(Discoverer& d, const std::string& destination) {
  Discoverer::Facts got;
  bool done = false;
  got = d.discover(destination, [&](const Discoverer::Facts& f) {
    got = f;
    done = true;
  });
  while (!got && !done) {
    pollfd p{d.fd(), POLLIN, 0};
    if (::poll(&p, 1, 1000) < 0 && errno != EINTR) break;
    d.process();
  }
  return got;
}

}  // namespace tlspolicy
