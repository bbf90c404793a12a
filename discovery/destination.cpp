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
#include <ctime>
#include <tuple>

#include "discovery/sts_decision.hpp"

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
  // MTA-STS: the TXT question's slot; waiting for a policy fetch; facts
  // to be cached only failure_ttl (a fetch under way or failed).
  size_t txt_slot = SIZE_MAX;
  bool sts_fetching = false;
  bool sts_short = false;
  int64_t sts_refresh_at = 0;  // unix time the policy in force is due for a proactive refresh
  StsFacts sts;
};

void Discoverer::Hooks::watch(int fd, bool read, bool write) {
  if (!read && !write) {
    epoll_ctl(d->epfd_, EPOLL_CTL_DEL, fd, nullptr);  // may already be gone (closed): fine
    return;
  }
  epoll_event ev{};
  ev.events = (read ? EPOLLIN : 0u) | (write ? EPOLLOUT : 0u);
  ev.data.fd = fd;
  // libcurl may have closed and reused the number: the kernel then dropped
  // the old registration, so MOD fails with ENOENT and we add it again.
  if (epoll_ctl(d->epfd_, EPOLL_CTL_MOD, fd, &ev) < 0 && errno == ENOENT) epoll_ctl(d->epfd_, EPOLL_CTL_ADD, fd, &ev);
}

void Discoverer::Hooks::set_timer(long ms) {
  itimerspec its{};  // all zero: disarmed
  if (ms >= 0) {
    its.it_value.tv_sec = time_t(ms / 1000);
    its.it_value.tv_nsec = long(ms % 1000) * 1000000 + (ms == 0 ? 1 : 0);
  }
  timerfd_settime(d->sts_timer_fd_, 0, &its, nullptr);
}

namespace {
int64_t unix_now() { return int64_t(std::time(nullptr)); }

// Proactive refresh (RFC 8461 5.1 lets a sender refresh a policy in use
// before it expires): a cached policy used by a discovery within
// min(max_age / 4, 1 day) of its expiry is refetched in the background, at
// most once per failure_ttl while refetches fail; the facts cache keeps a
// destination's facts only until its policy is due, so a destination in use
// is discovered again then. A policy nobody uses is left to expire.
int64_t refresh_window(const sts::CachedPolicy& c) {
  return std::min<int64_t>((c.expires - c.fetched) / 4, 86400);
}
}  // namespace

std::unique_ptr<Discoverer> Discoverer::create(const DiscoverySettings& s, std::string* error,
                                               std::shared_ptr<sts::PolicyStore> store) {
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
  const auto& m = s.mta_sts;
  if (m.enabled) {
    d->sts_timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (d->sts_timer_fd_ < 0) {
      *error = fmt::format("timerfd: {}", std::strerror(errno));
      return nullptr;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = d->sts_timer_fd_;
    epoll_ctl(d->epfd_, EPOLL_CTL_ADD, d->sts_timer_fd_, &ev);
    if (store && store->path() == m.cache_file) {
      store->set_max_entries(m.cache_entries);
      d->store_ = std::move(store);
    } else {
      d->store_ = std::make_shared<sts::PolicyStore>(m.cache_file, m.cache_entries, false, nullptr);
    }
    sts::FetchSettings fs;
    fs.ca_file = m.ca_file;
    fs.connect_timeout_ms = m.connect_timeout_ms;
    fs.total_timeout_ms = m.fetch_timeout_ms;
    fs.max_size = m.max_size;
    fs.max_pending = m.max_fetches;
    fs.connect_to = m.connect_to;
    d->hooks_ = std::make_unique<Hooks>(d.get());
    try {
      d->fetcher_ = std::make_unique<sts::Fetcher>(std::move(fs), d->hooks_.get());
    } catch (const std::exception& e) {
      *error = fmt::format("MTA-STS fetcher: {}", e.what());
      return nullptr;
    }
  }
  return d;
}

Discoverer::~Discoverer() {
  fail_all("discovery stopped (the daemon is stopping or a reload changed the discovery settings)");
  fetcher_.reset();   // abandons fetches (no callbacks); unwatches its sockets on epfd_
  fetches_.clear();
  resolver_.reset();  // drops the callbacks that still hold jobs
  if (epfd_ >= 0) ::close(epfd_);
  if (timer_fd_ >= 0) ::close(timer_fd_);
  if (sts_timer_fd_ >= 0) ::close(sts_timer_fd_);
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
  // An MTA-STS fetch under way or failed: ask again soon (the fetch, when
  // it completes, also drops these facts: uncache_facts).
  if (j->sts_short) expires = std::min(expires, now + std::chrono::seconds(settings().failure_ttl));
  // A cached MTA-STS policy: ask again when it is due for a proactive
  // refresh (the discovery starts it), and never past its expiry.
  if (j->sts_refresh_at) {
    int64_t t = unix_now(), left = j->sts.expires - t;
    // A policy with max_age 0 (valid: expires as it is fetched) is kept
    // failure_ttl too, or every request would fetch it again.
    int64_t keep = j->sts_refresh_at > t ? j->sts_refresh_at - t
                   : left > 0            ? std::min<int64_t>(settings().failure_ttl, left)
                                         : int64_t(settings().failure_ttl);
    expires = std::min(expires, now + std::chrono::seconds(std::max<int64_t>(0, keep)));
  }
  if (expires <= now) return;
  // Kept for hours: no spare capacity (complete() grows `answers` by
  // push_back, 4 slots for 3 answers: ~140 of ~1900 bytes per destination).
  j->facts->answers.shrink_to_fit();
  facts_.put(j->dest, j->facts, expires);
}

void Discoverer::uncache_facts(const std::string& destination) { facts_.erase(destination); }

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
    else if (at == j->txt_slot) on_txt(j);
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
    if (fetcher_) {  // MTA-STS: the policy's TXT record beside the MX (RFC 8461 3.1)
      std::string txt = "_mta-sts.";
      txt += j->name;
      j->sts.asked = true;
      ask(j, txt, RrType::TXT, &j->txt_slot);
    }
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
  // Failed at the deadline before MTA-STS decided (the TXT answer not in,
  // or a fetch still running): an unexpired cached policy still applies, as
  // for a failed TXT lookup (RFC 8461 5): whoever delays the TXT answer, or
  // any other of the destination's answers, must not strip the policy.
  if (!failure.empty() && store_ && j->sts.asked && !j->sts.in_force && j->txt_slot != SIZE_MAX &&
      (!j->answers[j->txt_slot] || j->sts_fetching)) {
    sts::PolicyStore::Entry* e = store_->find(j->name);
    if (e && e->policy && e->cached.expires > unix_now())
      set_sts(*j, e->policy, &e->cached, fmt::format("cache (id {})", e->cached.id),
              fmt::format("{}: the cached policy applies (RFC 8461 5)", failure));
  }
  f.sts = std::move(j->sts);
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

// ---------------------------------------------------------------- MTA-STS --


// Fills the job's StsFacts from the policy in force (or none).
void Discoverer::set_sts(Job& j, const std::optional<sts::Policy>& p, const sts::CachedPolicy* c, std::string source,
                         std::string note) {
  StsFacts& f = j.sts;
  f.asked = true;
  f.source = std::move(source);
  f.note = std::move(note);
  f.in_force = false;
  f.mode = StsMode::none;
  f.answer.clear();
  f.mx.clear();
  if (!p || p->mode == sts::Mode::none) return;
  f.in_force = true;
  f.mode = p->mode == sts::Mode::enforce ? StsMode::enforce : StsMode::testing;
  f.mx = p->mx;
  f.max_age = p->max_age;
  if (c) {
    f.id = c->id;
    f.expires = c->expires;
    j.sts_refresh_at = c->expires - refresh_window(*c);
  }
  sts::AnswerOptions opt;
  opt.tlsrpt = settings().mta_sts.tlsrpt;
  opt.domain = j.name;
  auto a = sts::answer_for(p, opt);
  if (a.answer) {
    f.answer = std::move(*a.answer);
    sts::sts_stats().enforced.add();
  }
  if (a.would_enforce) {
    sts::sts_stats().would_enforce.add();
    if (store_)
      store_->log(false, fmt::format("MTA-STS: {} has a testing policy (id {}): would enforce {} (not enforced)",
                                     printable(j.name), f.id, sts::postfix_answer(*p)));
  }
}

// The _mta-sts TXT answer: RFC 8461 section 5's rules (sts_decision) on
// what the store holds.
void Discoverer::on_txt(const std::shared_ptr<Job>& j) {
  const DnsRecordSet& t = *j->answers[j->txt_slot];
  int64_t now = unix_now();
  sts::TxtLookup lookup = sts::TxtLookup::none;
  sts::TxtRecord txt;
  if (failed(t)) {
    lookup = sts::TxtLookup::failed;
  } else if (t.status == DnsStatus::ok) {
    lookup = sts::TxtLookup::found;
    txt = sts::parse_txt_records(t.data);
  }
  sts::PolicyStore::Entry* e = store_->find(j->name);
  std::optional<sts::CachedPolicy> cached;
  if (e) cached = e->cached;
  sts::Step step = sts::after_txt(cached, lookup, txt, now);
  switch (step.action) {
    case sts::Step::Action::no_policy:
      set_sts(*j, std::nullopt, nullptr, "", std::move(step.reason));
      return;
    case sts::Step::Action::use_cached:
      e->cached.last_used = now;  // memory only: the file's copy is rewritten when the policy changes
      set_sts(*j, e->policy, &e->cached, fmt::format("cache (id {})", e->cached.id), std::move(step.reason));
      maybe_refresh(j->name, *e, now);
      return;
    case sts::Step::Action::fetch:
      j->sts.note = std::move(step.reason);
      start_fetch(j->name, txt.id, j, false);
      return;
  }
}

void Discoverer::maybe_refresh(const std::string& domain, sts::PolicyStore::Entry& e, int64_t now) {
  if (store_->read_only() || e.cached.expires - now > refresh_window(e.cached)) return;
  if (now - e.refresh_tried < std::max(1, settings().failure_ttl) || fetches_.count(domain)) return;
  e.refresh_tried = now;
  start_fetch(domain, e.cached.id, nullptr, true);
}

// Starts (or joins) the fetch of domain's policy for TXT id `id`; j waits
// for it (nullptr: a background refresh).
void Discoverer::start_fetch(const std::string& domain, const std::string& id, const std::shared_ptr<Job>& j,
                             bool refresh) {
  auto it = fetches_.find(domain);
  if (it == fetches_.end()) {
    size_t before = fetcher_->started();
    std::string err;
    bool ok = fetcher_->fetch(domain, [this, domain](const sts::FetchResult& r) { on_fetched(domain, r); }, &err);
    if (!ok) {  // refused (max_fetches, a name that is no host name): as a failed fetch
      sts::sts_stats().fetches_failed.add();
      if (!j) return;
      auto* e = store_->find(domain);
      std::optional<sts::CachedPolicy> cached;
      if (e) cached = e->cached;
      auto o = sts::after_fetch(domain, cached, id, false, err, unix_now());
      j->sts_short = true;
      set_sts(*j, o.policy, e ? &e->cached : nullptr, o.policy ? fmt::format("cache (id {})", e->cached.id) : "",
              fmt::format("{}; {}", j->sts.note, o.reason));
      return;
    }
    if (fetcher_->started() > before) {
      sts::sts_stats().fetches_started.add();
      if (refresh) sts::sts_stats().refreshes.add();
    }
    it = fetches_.emplace(domain, Fetch{id, {}, {}}).first;
  }
  if (j) {
    it->second.jobs.push_back(j);
    it->second.dests.push_back(j->dest);
    j->sts_fetching = true;
    ++j->pending;
  }
}

// A fetch finished: the store changes once (store, erase or keep), the
// destinations' cached facts are dropped so the next request sees it, and
// the requests still waiting complete.
void Discoverer::on_fetched(const std::string& domain, const sts::FetchResult& r) {
  auto it = fetches_.find(domain);
  if (it == fetches_.end()) return;
  Fetch f = std::move(it->second);
  fetches_.erase(it);
  int64_t now = unix_now();
  auto* e = store_->find(domain);
  std::optional<sts::CachedPolicy> cached;
  if (e) cached = e->cached;
  auto o = sts::after_fetch(domain, cached, f.id, r.ok, r.ok ? r.body : r.error, now);
  // A policy that parsed (a "none" one with nothing cached included): the
  // fetch worked. Else it failed and the facts are kept only failure_ttl.
  bool valid = r.ok && sts::parse_policy(r.body).policy.has_value();
  (valid ? sts::sts_stats().fetches_ok : sts::sts_stats().fetches_failed).add();
  if (o.change == sts::FetchOutcome::CacheChange::store) store_->store(*o.entry);
  else if (o.change == sts::FetchOutcome::CacheChange::erase) store_->erase(domain);
  store_->log(!valid, fmt::format("MTA-STS: {} ({} ms): {}", r.url, r.took.count(), o.reason));
  e = store_->find(domain);
  uncache_facts(domain);
  for (auto& d : f.dests) uncache_facts(d);
  std::string source = valid ? fmt::format("fetched {}", r.url)
                       : o.policy && e ? fmt::format("cache (id {})", e->cached.id)
                                       : std::string();
  for (auto& w : f.jobs) {
    auto j = w.lock();
    if (!j || j->done) continue;  // completed at its deadline: the next request sees the policy
    j->sts_fetching = false;
    if (!valid) j->sts_short = true;
    set_sts(*j, o.policy, o.policy && e ? &e->cached : nullptr, source, fmt::format("{}; {}", j->sts.note, o.reason));
    answered(j);
  }
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
  if (fetcher_) {
    // libcurl's sockets and timer share epfd_ with the resolver and the
    // deadline timer (those two are handled below as before).
    epoll_event evs[64];
    int n = epoll_wait(epfd_, evs, 64, 0);
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == resolver_->fd() || fd == timer_fd_) continue;
      if (fd == sts_timer_fd_) {
        uint64_t t;
        if (::read(sts_timer_fd_, &t, sizeof t) == sizeof t) fetcher_->on_timeout();
        continue;
      }
      uint32_t ev = evs[i].events;
      fetcher_->on_socket(fd, ev & (EPOLLIN | EPOLLHUP), ev & EPOLLOUT, ev & EPOLLERR);
    }
  }
  resolver_->process();
  uint64_t ticks;
  if (::read(timer_fd_, &ticks, sizeof ticks) != sizeof ticks) return;
  auto now = Clock::now();
  while (!deadlines_.empty() && deadlines_.front().first <= now) {
    auto j = deadlines_.front().second.lock();
    deadlines_.pop_front();
    if (!j || j->done) continue;
    // Every DNS answer is in and only the MTA-STS fetch runs: answer now
    // as RFC 8461 5 says for a policy not (yet) known (the cached one if
    // unexpired, else as if no MTA-STS); the fetch goes on, and its end
    // drops these facts so the next request sees the policy.
    if (j->sts_fetching &&
        std::all_of(j->answers.begin(), j->answers.end(), [](const Resolver::Answer& a) { return bool(a); })) {
      auto* e = store_->find(j->name);
      std::optional<sts::CachedPolicy> cached;
      if (e) cached = e->cached;
      auto f = fetches_.find(j->name);
      auto o = sts::after_fetch(j->name, cached, f == fetches_.end() ? std::string() : f->second.id, false,
                                fmt::format("still running at the {} ms deadline (it goes on in the background)",
                                            settings().deadline_ms),
                                unix_now());
      j->sts_short = true;
      j->sts_fetching = false;
      set_sts(*j, o.policy, o.policy && e ? &e->cached : nullptr,
              o.policy && e ? fmt::format("cache (id {})", e->cached.id) : std::string(),
              fmt::format("{}; {}", j->sts.note, o.reason));
      complete(j, "");
      continue;
    }
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
    const auto& m = s.mta_sts;
    return std::tie(s.forwarders, s.trust_anchor_file, s.trust_forwarder_ad, s.query_timeout_ms, s.deadline_ms,
                    s.max_outstanding, s.cache_entries, s.negative_ttl_max, s.failure_ttl, s.dane, m.enabled,
                    m.ca_file, m.cache_file, m.cache_entries, m.connect_timeout_ms, m.fetch_timeout_ms, m.max_size,
                    m.max_fetches, m.tlsrpt, m.connect_to);
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
