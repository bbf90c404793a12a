// Test driver for discovery/sts_fetch: fetches the MTA-STS policies of the
// domains given (all at once, repeats allowed, to show coalescing) and
// prints one line per request as it completes:
//   <domain> TAB ok|fail TAB <http status> TAB <policy outcome or error>
// then "started=<transfers>". --loop epoll drives the fetcher through
// LoopHooks on an epoll + timerfd loop, the way the daemon's loop will;
// --loop poll uses the fetcher's own run().
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "discovery/mta_sts_policy.hpp"
#include "discovery/sts_fetch.hpp"

using namespace tlspolicy::sts;

namespace {

struct EpollLoop : LoopHooks {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  std::map<int, uint32_t> watched;
  Fetcher* fetcher = nullptr;
  EpollLoop() {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = tfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
  }
  ~EpollLoop() override {
    close(tfd);
    close(ep);
  }
  void watch(int fd, bool read, bool write) override {
    epoll_event ev{};
    ev.data.fd = fd;
    ev.events = (read ? EPOLLIN : 0u) | (write ? EPOLLOUT : 0u);
    if (!read && !write) {
      if (watched.erase(fd)) epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
      return;
    }
    // libcurl may close a socket before telling us, and the next one can get
    // the same number: the kernel dropped the old registration, so MOD then
    // fails with ENOENT and the fd must be added afresh (and vice versa).
    if (epoll_ctl(ep, watched.count(fd) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0) {
      if (errno == ENOENT) epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
      else if (errno == EEXIST) epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    }
    watched[fd] = ev.events;
  }
  void set_timer(long ms) override {
    itimerspec its{};
    if (ms >= 0) {
      if (ms == 0) ms = 1;  // 0 would disarm
      its.it_value.tv_sec = ms / 1000;
      its.it_value.tv_nsec = (ms % 1000) * 1000000L;
    }
    timerfd_settime(tfd, 0, &its, nullptr);
  }
  void run() {
    epoll_event evs[32];
    while (fetcher->in_flight() > 0) {
      int n = epoll_wait(ep, evs, 32, 1000);
      for (int i = 0; i < n; ++i) {
        int fd = evs[i].data.fd;
        if (fd == tfd) {
          uint64_t x;
          if (read(tfd, &x, sizeof x) > 0) fetcher->on_timeout();
          continue;
        }
        if (!watched.count(fd)) continue;
        uint32_t e = evs[i].events;
        fetcher->on_socket(fd, e & (EPOLLIN | EPOLLHUP), e & EPOLLOUT, e & EPOLLERR);
      }
    }
  }
};

std::string outcome(const FetchResult& r) {
  if (!r.ok) return r.error;
  auto p = parse_policy(r.body);
  if (!p.policy) return "invalid policy: " + p.error;
  std::string s = "mode=";
  s += mode_name(p.policy->mode);
  s += " max_age=" + std::to_string(p.policy->max_age);
  if (p.policy->mode == Mode::enforce) s += " answer=" + postfix_answer(*p.policy);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  FetchSettings st;
  std::string loop = "poll";
  std::vector<std::string> domains;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--ca") st.ca_file = next();
    else if (a == "--connect-to") st.connect_to.push_back(next());
    else if (a == "--timeout-ms") st.total_timeout_ms = std::stol(next());
    else if (a == "--connect-timeout-ms") st.connect_timeout_ms = std::stol(next());
    else if (a == "--max-size") st.max_size = std::stoul(next());
    else if (a == "--loop") loop = next();
    else if (a == "--max-pending") st.max_pending = std::stoul(next());
    else domains.push_back(a);
  }
  EpollLoop ep;
  Fetcher f(st, loop == "epoll" ? &ep : nullptr);
  ep.fetcher = &f;
  int bad = 0;
  for (const auto& d : domains) {
    std::string err;
    bool ok = f.fetch(d, [](const FetchResult& r) {
      std::printf("%s\t%s\t%ld\t%s\n", r.domain.c_str(), r.ok ? "ok" : "fail", r.http_status, outcome(r).c_str());
      std::fflush(stdout);
    }, &err);
    if (!ok) {
      std::printf("%s\trefused\t0\t%s\n", d.c_str(), err.c_str());
      ++bad;
    }
  }
  if (loop == "epoll") ep.run();
  else if (!f.run(120000)) {
    std::printf("run: transfers left after 120 s\n");
    return 1;
  }
  std::printf("started=%zu\n", f.started());
  return 0;
}
