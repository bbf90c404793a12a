// See server.hpp for the why. Level-triggered epoll. Each connection's
// buffers are bounded (Limits): it reads only while no complete request
// waits in its input (backpressure) and answers only while its pending
// replies are below max_pending_output; requests held back are answered as
// the client reads (EPOLLOUT), a bounded amount per round so other clients
// get their turn.
#include "socketmap/server.hpp"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

namespace tlspolicy {

namespace {
// Idle connections closed per loop round (each close is a syscall pair and
// a FIN; 4000 at once held the loop ~60 ms).
constexpr size_t kClosePerRound = 128;
constexpr auto kWarnEvery = std::chrono::seconds(10);
using Clock = std::chrono::steady_clock;

// Client-provided text for a log line: printable ASCII only, at most `max`.
void append_printable(std::string& out, std::string_view s, size_t max = 256) {
  for (char c : s.substr(0, max)) out += (c >= ' ' && c <= '~') ? c : '?';
}

// epoll's data: listeners and watched descriptors carry the fd alone,
// connections also their id, so an event queued for a connection closed
// earlier in the same round never reaches a new one that got its fd.
uint64_t conn_key(int fd, uint32_t id) { return (uint64_t(id) << 32) | uint32_t(fd); }
}  // namespace

struct SocketmapServer::Conn {
  int fd;
  uint32_t id;
  NetstringReader in{kMaxRequest};
  std::string out;
  size_t out_pos = 0;
  Clock::time_point last_active = Clock::now();
  Clock::time_point partial_since{};  // when an incomplete request started
  bool backlog = false;               // complete requests may wait in `in`
  bool eof = false;                   // nothing more to read (FIN, or a framing error)
  bool keep_idle = false;             // asked the access map: Sendmail never reconnects
  uint32_t events = 0;
  // A request waiting for discovery: answered, with the snapshot it started
  // with, when the facts come (resume()); nothing else is read or answered
  // meanwhile.
  struct Parked {
    std::string request;
    std::shared_ptr<const Snapshot> snapshot;
    Clock::time_point since;
  };
  std::unique_ptr<Parked> parked;
  size_t pending() const { return out.size() - out_pos; }
};

template <class MakeText>
void SocketmapServer::warn(Throttle& t, MakeText&& text) {
  auto now = Clock::now();
  if (t.last != Clock::time_point{} && now - t.last < kWarnEvery) {
    ++t.suppressed;
    return;
  }
  std::string line = text();
  if (t.suppressed)
    line += fmt::format(" ({} more like this in the last {} s, not logged)", t.suppressed,
                        std::chrono::duration_cast<std::chrono::seconds>(now - t.last).count());
  opt_.log(LOG_WARNING, line);
  t.last = now;
  t.suppressed = 0;
}

SocketmapServer::SocketmapServer(ServerOptions opt) : opt_(std::move(opt)) {
  if (!opt_.log_lookup) opt_.log_lookup = opt_.log;
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) throw std::runtime_error(fmt::format("epoll_create1: {}", std::strerror(errno)));
}

SocketmapServer::~SocketmapServer() {
  for (auto& [fd, c] : conns_) ::close(fd);
  ::close(epfd_);
}

void SocketmapServer::set_options(bool log_all, bool log_rules, int max_connections, std::chrono::seconds idle) {
  opt_.log_all_lookups = log_all;
  opt_.log_rule_lookups = log_rules;
  opt_.max_connections = max_connections;
  opt_.idle_timeout = idle;
}

void SocketmapServer::add_listener(int fd) {
  listeners_[fd] = true;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
}

void SocketmapServer::watch(int fd, std::function<void()> cb) {
  watched_[fd] = std::move(cb);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
}

void SocketmapServer::unwatch(int fd) {
  if (watched_.erase(fd)) epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
}

void SocketmapServer::accept_all(int listener) {
  for (;;) {
    int fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: the listener stays readable, so stop watching
        // it (no busy loop) until a connection closes or the next sweep.
        pause_listeners(fmt::format("accept: {}", std::strerror(errno)));
      }
      return;  // EAGAIN, or a transient error: epoll tells us when to retry
    }
    if (int(conns_.size()) >= opt_.max_connections) {
      warn(cap_warning_, [&] {
        return fmt::format("connection limit {} reached: refusing new connections (daemon.max_connections)",
                           opt_.max_connections);
      });
      ::close(fd);
      stats().connections_refused.add();
      continue;
    }
    add_conn(fd);
  }
}

void SocketmapServer::adopt(int fd) { add_conn(fd); }

void SocketmapServer::add_conn(int fd) {
  auto c = std::make_unique<Conn>();
  c->fd = fd;
  c->id = ++next_id_ ? next_id_ : ++next_id_;  // never 0: that marks listeners
  c->events = EPOLLIN;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = conn_key(fd, c->id);
  epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
  conns_[fd] = std::move(c);
  stats().connections_accepted.add();
}

size_t SocketmapServer::max_buffered_now() const {
  size_t n = 0;
  for (auto& [fd, c] : conns_) n = std::max(n, c->in.buffered() + c->pending());
  return n;
}

// One line per lookup a rule decided (every lookup with log_all_lookups),
// built in a reused buffer: at tens of thousands of lookups a second the
// line's allocations would cost more than the lookup.
void SocketmapServer::log_lookup(const Snapshot& s, std::string_view request, const SocketmapReply& r) {
  if (!r.known_map) {
    warn(request_warning_, [&] { return "socketmap: " + printable(std::string_view(r.payload).substr(0, 256)); });
    return;
  }
  bool rule_hit = r.answer.rule != kNone && !s.rules[r.answer.rule].is_default;
  // Discovery decided or took part (DANE, MTA-STS, an MX-aware match, TEMP
  // on a DNS failure, a testing policy that would enforce): logged like a
  // rule's decision, with its reason.
  bool discovered = !r.answer.via.empty();
  if (!opt_.log_all_lookups && !((rule_hit || discovered) && opt_.log_rule_lookups)) return;
  auto key = request.substr(request.find(' ') + 1);
  line_.clear();
  auto out = std::back_inserter(line_);
  fmt::format_to(out, "lookup {} ", map_name(r.map));
  append_printable(line_, key);
  fmt::format_to(out, ": {} (", r.payload);
  if (r.answer.rule == kNone) {
    line_ += "no rule)";
  } else {
    const Rule& rule = s.rules[r.answer.rule];
    if (rule.is_default)
      fmt::format_to(out, "default at {}:{})", s.files[rule.file], rule.line);
    else
      fmt::format_to(out, "rule \"{}\" at {}:{})", rule.name, s.files[rule.file], rule.line);
  }
  if (discovered && !r.answer.temp) {  // (a TEMP answer's payload has the reason already)
    line_ += ": ";
    append_printable(line_, std::string_view(r.answer.via).substr(0, 1000));
  }
  opt_.log_lookup(LOG_INFO, line_);
}

void SocketmapServer::pause_listeners(const std::string& why) {
  if (listeners_paused_) return;
  listeners_paused_ = true;
  for (auto& [fd, on] : listeners_) epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
  warn(cap_warning_, [&] { return fmt::format("{}: not accepting for now ({} connections open)", why, conns_.size()); });
}

void SocketmapServer::resume_listeners() {
  if (!listeners_paused_) return;
  listeners_paused_ = false;
  for (auto& [fd, on] : listeners_) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
  }
}

// One connection's readiness: read (if it may), answer what is buffered,
// send. Every step that can close the connection is the last one.
void SocketmapServer::service(Conn& c, uint32_t events) {
  if ((events & (EPOLLERR | EPOLLHUP)) && !(events & EPOLLIN)) {
    close_conn(c);  // reset or gone while we were not reading
    return;
  }
  if ((events & EPOLLIN) && !c.eof && !c.backlog && !c.parked && !read_input(c)) return;
  if ((events & EPOLLOUT) && !send_output(c)) return;  // room first, then answers
  if (!c.parked) answer(c);
  if (!send_output(c)) return;
  settle(c);
}

// One read of at most read_per_round, never past max_input(). Returns false
// if the connection was closed (read error).
bool SocketmapServer::read_input(Conn& c) {
  char buf[16 << 10];
  size_t max_input = limits_.max_input();
  size_t room = std::min({sizeof buf, limits_.read_per_round, max_input - std::min(max_input, c.in.buffered())});
  if (room == 0) return true;  // cannot happen (see Limits); never grow past it
  for (;;) {
    ssize_t n = ::read(c.fd, buf, room);
    if (n == 0) {
      c.eof = true;  // the client is done sending: answer what came, then close
      return true;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      close_conn(c);
      return false;
    }
    c.in.append(std::string_view(buf, size_t(n)));
    c.last_active = Clock::now();
    return true;
  }
}

// Answers complete requests from the input while the replies pending stay
// under max_pending_output, at most answers_per_round of them.
void SocketmapServer::answer(Conn& c) {
  std::string_view req;
  NetstringReader::Status st = NetstringReader::Status::need_more;
  int budget = limits_.answers_per_round;
  c.backlog = false;
  while (c.pending() <= limits_.max_pending_output) {
    if (budget-- == 0) {
      c.backlog = true;
      break;
    }
    if ((st = c.in.next(&req)) != NetstringReader::Status::ok) break;
    auto t0 = Clock::now();
    FactsPtr facts;
    MapName map;
    std::string_view key;
    // The static answer, looked up once: discovery_target() needs it, and
    // it is the answer (or the merge's input) too.
    Answer static_answer;
    bool have_static = false;
    if (discover_ && split_request(req, &map, &key)) {
      have_static = true;
      if (std::string target = discovery_target(*policy_, map, key, false, &static_answer); !target.empty()) {
        facts = discover_(target, [this, fd = c.fd, id = c.id](const FactsPtr& f) { resume(fd, id, f); });
        if (!facts) {
          c.parked = std::make_unique<Conn::Parked>(Conn::Parked{std::string(req), policy_, t0});
          ++parked_;
          stats().discovery_parked.add();
          break;
        }
      }
    }
    SocketmapReply r = answer_socketmap(*policy_, req, facts.get(), have_static ? &static_answer : nullptr);
    count(*policy_, r, uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count()));
    c.keep_idle |= r.map == MapName::sendmail_access && r.known_map;
    log_lookup(*policy_, req, r);
    append_netstring(c.out, r.payload);
  }
  if (c.parked) {
    c.partial_since = {};  // waiting for us, not for the client
    return;
  }
  if (c.pending() > limits_.max_pending_output && c.in.buffered() > 0) c.backlog = true;
  if (st == NetstringReader::Status::error) {
    stats().malformed_requests.add();
    warn(malformed_warning_,
         [&] { return fmt::format("socketmap client: {}: closing connection", printable(c.in.error())); });
    append_netstring(c.out, "PERM " + c.in.error());
    c.eof = true;  // read nothing more; close once the replies are out
    c.backlog = false;
    c.in = NetstringReader(kMaxRequest);
  }
  if (c.backlog || c.in.buffered() == 0)
    c.partial_since = {};
  else if (c.partial_since == Clock::time_point{})
    c.partial_since = Clock::now();
}

// Sends what the socket takes. Returns false if the connection was closed
// (send error: the client is gone).
bool SocketmapServer::send_output(Conn& c) {
  while (c.out_pos < c.out.size()) {
    ssize_t n = ::send(c.fd, c.out.data() + c.out_pos, c.out.size() - c.out_pos, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      close_conn(c);
      return false;
    }
    c.out_pos += size_t(n);
    c.last_active = Clock::now();  // a client that reads its answers is not idle
  }
  if (c.out_pos == c.out.size()) {
    c.out.clear();
    c.out_pos = 0;
  } else if (c.out_pos > limits_.max_pending_output) {
    c.out.erase(0, c.out_pos);  // keep the buffer from creeping
    c.out_pos = 0;
  }
  return true;
}

// After a round's work: close a finished connection, else ask epoll for what
// it needs next: input while nothing waits, output while replies are pending
// or held-back requests wait for room (writable = answer more next round).
void SocketmapServer::settle(Conn& c) {
  if (c.eof && !c.backlog && !c.parked && c.pending() == 0) {
    close_conn(c);
    return;
  }
  uint32_t want = 0;
  if (!c.eof && !c.backlog && !c.parked && c.pending() <= limits_.max_pending_output) want |= EPOLLIN;
  if (c.pending() > 0 || (c.backlog && !c.parked)) want |= EPOLLOUT;
  if (want == c.events) return;
  c.events = want;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = conn_key(c.fd, c.id);
  epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
}

// The metrics' view of one answer (policy/stats.hpp): relaxed atomic adds.
void SocketmapServer::count(const Snapshot& s, const SocketmapReply& r, uint64_t ns) {
  Stats& st = stats();
  if (!r.known_map) {
    st.unknown_map.add();
    return;
  }
  size_t m = size_t(r.map);
  char w = r.payload.empty() ? 'P' : r.payload[0];
  st.lookups[m][w == 'O' ? 0 : w == 'N' ? 1 : w == 'T' ? 2 : 3].add();
  st.latency[m].observe(ns);
  if (r.answer.rule != kNone) s.rule_hits[r.answer.rule].add();
}

// The facts a parked request waited for: answer it with the snapshot it
// started with, then go on with the requests behind it. The connection may
// have been closed meanwhile (looked up by fd and id: nothing to do then).
void SocketmapServer::resume(int fd, uint32_t id, const FactsPtr& facts) {
  auto it = conns_.find(fd);
  if (it == conns_.end() || it->second->id != id || !it->second->parked) return;
  Conn& c = *it->second;
  std::unique_ptr<Conn::Parked> p = std::move(c.parked);
  --parked_;
  SocketmapReply r = answer_socketmap(*p->snapshot, p->request, facts.get());
  count(*p->snapshot, r, uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - p->since).count()));
  c.keep_idle |= r.map == MapName::sendmail_access && r.known_map;
  log_lookup(*p->snapshot, p->request, r);
  append_netstring(c.out, r.payload);
  answer(c);
  if (!send_output(c)) return;
  settle(c);
}

// Closes at once; the Conn itself lives until the end of the round.
void SocketmapServer::close_conn(Conn& c) {
  auto it = conns_.find(c.fd);
  if (it == conns_.end() || it->second.get() != &c) return;  // already closed
  if (c.parked) {  // its discovery's answer will find no connection
    c.parked.reset();
    --parked_;
  }
  epoll_ctl(epfd_, EPOLL_CTL_DEL, c.fd, nullptr);
  ::close(c.fd);
  closed_.push_back(std::move(it->second));
  conns_.erase(it);
  stats().connections_closed.add();
  c.fd = -1;
  resume_listeners();  // a descriptor is free again
}

// Finds idle connections and requests that trickle in too slowly (once a
// second), and closes them kClosePerRound per round.
// Not idle Sendmail ones: a Sendmail process keeps its map connection for
// life and its next lookup on a closed one fails (451) instead of
// reconnecting.
void SocketmapServer::sweep(Clock::time_point now) {
  // A parked connection waits for us, not the client: never idle (its wait
  // is bounded by discovery's deadline).
  auto expired = [&](const Conn& c) {
    if (c.parked) return false;
    bool idle = !c.keep_idle && now - c.last_active > opt_.idle_timeout;
    bool slow = c.partial_since != Clock::time_point{} && now - c.partial_since > opt_.idle_timeout;
    return idle || slow;
  };
  if (expired_.empty() && now >= next_sweep_) {
    for (auto& [fd, c] : conns_)
      if (expired(*c)) expired_.emplace_back(fd, c->id);
    next_sweep_ = now + std::chrono::seconds(1);
    resume_listeners();  // retry accepting at least once a second
  }
  size_t n = std::min(expired_.size(), kClosePerRound);
  for (size_t i = expired_.size() - n; i < expired_.size(); ++i) {
    auto it = conns_.find(expired_[i].first);
    if (it != conns_.end() && it->second->id == expired_[i].second && expired(*it->second)) {
      stats().timeouts.add();
      close_conn(*it->second);
    }
  }
  expired_.resize(expired_.size() - n);
}

void SocketmapServer::run() {
  running_ = true;
  while (running_) run_once(1000);
}

void SocketmapServer::run_once(int timeout_ms) {
  epoll_event events[256];
  auto now = Clock::now();
  if (next_sweep_ == Clock::time_point{}) next_sweep_ = now + std::chrono::seconds(1);
  if (!expired_.empty()) {
    timeout_ms = 0;  // more expired connections to close
  } else {
    auto to_sweep = std::chrono::duration_cast<std::chrono::milliseconds>(next_sweep_ - now).count() + 1;
    timeout_ms = int(std::clamp<long long>(to_sweep, 0, timeout_ms));
  }
  int n = epoll_wait(epfd_, events, 256, timeout_ms);
  if (n < 0 && errno != EINTR) throw std::runtime_error(fmt::format("epoll_wait: {}", std::strerror(errno)));
  for (int i = 0; i < n; ++i) {
    int fd = int(uint32_t(events[i].data.u64));
    uint32_t id = uint32_t(events[i].data.u64 >> 32);
    if (id == 0) {
      if (listeners_.count(fd)) {
        accept_all(fd);
      } else if (auto w = watched_.find(fd); w != watched_.end()) {
        auto cb = w->second;  // the callback may unwatch its own descriptor
        cb();
      }
      continue;
    }
    auto it = conns_.find(fd);
    if (it == conns_.end() || it->second->id != id) continue;  // closed earlier this round
    service(*it->second, events[i].events);
  }
  closed_.clear();
  if (opt_.flush_log) opt_.flush_log();
  now = Clock::now();
  if (now >= next_sweep_ || !expired_.empty()) {
    sweep(now);
    closed_.clear();
  }
}

}  // namespace tlspolicy
