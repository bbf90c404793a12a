// See server.hpp for the why. Level-triggered epoll; a connection reads while
// its reply buffer is small and stops reading (backpressure) when a client
// pipelines without reading its answers.
#include "socketmap/server.hpp"

#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <syslog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace tlspolicy {

namespace {
// Per connection: answers held for a client that does not read (reading
// stops beyond this), and bytes read per loop round (fairness: one client
// pipelining thousands of requests takes its turn like everyone else).
constexpr size_t kMaxPendingOutput = 64 << 10;
constexpr size_t kReadPerRound = 16 << 10;
using Clock = std::chrono::steady_clock;
}  // namespace

struct SocketmapServer::Conn {
  int fd;
  NetstringReader in{kMaxRequest};
  std::string out;
  size_t out_pos = 0;
  Clock::time_point last_active = Clock::now();
  Clock::time_point partial_since{};  // when an incomplete request started
  bool closing = false;               // error sent: close once flushed
  bool keep_idle = false;             // asked the access map: Sendmail never reconnects
  uint32_t events = 0;
};

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
      auto now = Clock::now();
      if (now - last_cap_warning_ > std::chrono::seconds(10)) {
        opt_.log(LOG_WARNING, fmt::format("connection limit {} reached: refusing new connections "
                                          "(daemon.max_connections)",
                                          opt_.max_connections));
        last_cap_warning_ = now;
      }
      ::close(fd);
      continue;
    }
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    c->events = EPOLLIN;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
    conns_[fd] = std::move(c);
  }
}

// One line per lookup a rule decided (every lookup with log_all_lookups),
// built in a reused buffer: at tens of thousands of lookups a second the
// line's allocations would cost more than the lookup.
void SocketmapServer::log_lookup(std::string_view request, const SocketmapReply& r) {
  if (!r.known_map) {
    opt_.log(LOG_WARNING, fmt::format("socketmap: {}", r.payload));
    return;
  }
  bool rule_hit = r.answer.rule != kNone && !policy_->rules[r.answer.rule].is_default;
  if (!opt_.log_all_lookups && !(rule_hit && opt_.log_rule_lookups)) return;
  auto key = request.substr(request.find(' ') + 1);
  line_.clear();
  auto out = std::back_inserter(line_);
  fmt::format_to(out, "lookup {} ", map_name(r.map));
  for (char c : key.substr(0, 256)) line_ += (c >= ' ' && c <= '~') ? c : '?';
  fmt::format_to(out, ": {} (", r.payload);
  if (r.answer.rule == kNone) {
    line_ += "no rule)";
  } else {
    const Rule& rule = policy_->rules[r.answer.rule];
    if (rule.is_default)
      fmt::format_to(out, "default at {}:{})", policy_->files[rule.file], rule.line);
    else
      fmt::format_to(out, "rule \"{}\" at {}:{})", rule.name, policy_->files[rule.file], rule.line);
  }
  opt_.log_lookup(LOG_INFO, line_);
}

void SocketmapServer::pause_listeners(const std::string& why) {
  if (listeners_paused_) return;
  listeners_paused_ = true;
  for (auto& [fd, on] : listeners_) epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
  auto now = Clock::now();
  if (now - last_cap_warning_ > std::chrono::seconds(10)) {
    opt_.log(LOG_WARNING, fmt::format("{}: not accepting for now ({} connections open)", why, conns_.size()));
    last_cap_warning_ = now;
  }
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

void SocketmapServer::on_readable(Conn& c) {
  char buf[kReadPerRound];
  for (int rounds = 0; rounds < 1; ++rounds) {
    ssize_t n = ::read(c.fd, buf, sizeof buf);
    if (n == 0) {
      close_conn(c.fd);
      return;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      close_conn(c.fd);
      return;
    }
    c.in.append(std::string_view(buf, size_t(n)));
    c.last_active = Clock::now();
    if (size_t(n) < sizeof buf) break;
  }
  std::string_view req;
  NetstringReader::Status st;
  while ((st = c.in.next(&req)) == NetstringReader::Status::ok) {
    SocketmapReply r = answer_socketmap(*policy_, req);
    c.keep_idle |= r.map == MapName::sendmail_access && r.known_map;
    log_lookup(req, r);
    append_netstring(c.out, r.payload);
    if (c.out.size() - c.out_pos > kMaxPendingOutput) break;  // let the client read first
  }
  if (st == NetstringReader::Status::error) {
    // At most one line per 10 s, however many clients misbehave.
    ++malformed_;
    auto now = Clock::now();
    if (now - last_malformed_log_ >= std::chrono::seconds(10)) {
      opt_.log(LOG_WARNING, fmt::format("socketmap client: {}: closing connection{}", c.in.error(),
                                        malformed_ > 1 ? fmt::format(" ({} such connections since the last "
                                                                     "warning)", malformed_)
                                                       : std::string()));
      last_malformed_log_ = now;
      malformed_ = 0;
    }
    append_netstring(c.out, "PERM " + c.in.error());
    c.closing = true;
  }
  c.partial_since = c.in.buffered() > 0 ? (c.partial_since == Clock::time_point{} ? Clock::now() : c.partial_since)
                                        : Clock::time_point{};
  flush(c);
}

void SocketmapServer::flush(Conn& c) {
  while (c.out_pos < c.out.size()) {
    ssize_t n = ::send(c.fd, c.out.data() + c.out_pos, c.out.size() - c.out_pos, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      close_conn(c.fd);
      return;
    }
    c.out_pos += size_t(n);
  }
  if (c.out_pos == c.out.size()) {
    c.out.clear();
    c.out_pos = 0;
    if (c.closing) {
      close_conn(c.fd);
      return;
    }
  }
  update_events(c);
}

void SocketmapServer::on_writable(Conn& c) {
  flush(c);
  // Requests held back by backpressure may be waiting in the input buffer.
  auto it = conns_.find(c.fd);
  if (it != conns_.end() && !c.closing && c.out.empty() && c.in.buffered() > 0) on_readable(c);
}

void SocketmapServer::update_events(Conn& c) {
  uint32_t want = 0;
  size_t pending = c.out.size() - c.out_pos;
  if (!c.closing && pending <= kMaxPendingOutput) want |= EPOLLIN;
  if (pending > 0) want |= EPOLLOUT;
  if (want == c.events) return;
  c.events = want;
  epoll_event ev{};
  ev.events = want;
  ev.data.fd = c.fd;
  epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
}

void SocketmapServer::close_conn(int fd) {
  epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
  ::close(fd);
  conns_.erase(fd);
  resume_listeners();  // a descriptor is free again
}

// Closes idle connections and requests that trickle in too slowly. Not
// idle Sendmail ones: a Sendmail process keeps its map connection for life
// and its next lookup on a closed one fails (451) instead of reconnecting.
void SocketmapServer::sweep() {
  auto now = Clock::now();
  std::vector<int> doomed;
  for (auto& [fd, c] : conns_) {
    bool idle = !c->keep_idle && now - c->last_active > opt_.idle_timeout;
    bool slow = c->partial_since != Clock::time_point{} && now - c->partial_since > opt_.idle_timeout;
    if (idle || slow) doomed.push_back(fd);
  }
  for (int fd : doomed) close_conn(fd);
  resume_listeners();  // retry accepting at least once a second
}

void SocketmapServer::run() {
  running_ = true;
  epoll_event events[256];
  auto next_sweep = Clock::now() + std::chrono::seconds(1);
  while (running_) {
    int n = epoll_wait(epfd_, events, 256, 1000);
    if (n < 0 && errno != EINTR) throw std::runtime_error(fmt::format("epoll_wait: {}", std::strerror(errno)));
    for (int i = 0; i < n; ++i) {
      int fd = events[i].data.fd;
      if (listeners_.count(fd)) {
        accept_all(fd);
        continue;
      }
      if (auto w = watched_.find(fd); w != watched_.end()) {
        w->second();
        continue;
      }
      auto it = conns_.find(fd);
      if (it == conns_.end()) continue;
      Conn& c = *it->second;
      if (events[i].events & (EPOLLERR | EPOLLHUP) && !(events[i].events & EPOLLIN)) {
        close_conn(fd);
        continue;
      }
      if (events[i].events & EPOLLOUT) {
        on_writable(c);
        if (!conns_.count(fd)) continue;
      }
      if (events[i].events & EPOLLIN) on_readable(c);
    }
    if (opt_.flush_log) opt_.flush_log();
    if (Clock::now() >= next_sweep) {
      sweep();
      next_sweep = Clock::now() + std::chrono::seconds(1);
    }
  }
}

}  // namespace tlspolicy
