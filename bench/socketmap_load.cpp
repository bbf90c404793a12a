// Socketmap load client: C connections, each with one request in flight
// (Postfix's pattern: a process asks, waits, asks again), keys read from a
// file and cycled. Prints requests/s and p50/p99/max latency overall and per
// time slice, and counts failed lookups (error replies, closed connections).
// Usage: socketmap_load PORT MAP KEYFILE CONNECTIONS SECONDS [SLICE_MS]
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

using Clock = std::chrono::steady_clock;

struct Conn {
  int fd;
  std::string in;
  Clock::time_point sent;
  size_t next_key;
};

static double pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  size_t k = std::min(v.size() - 1, size_t(p * double(v.size())));
  std::nth_element(v.begin(), v.begin() + long(k), v.end());
  return v[k];
}

int main(int argc, char** argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: socketmap_load PORT MAP KEYFILE CONNECTIONS SECONDS [SLICE_MS]\n");
    return 2;
  }
  int port = atoi(argv[1]);
  std::string map = argv[2];
  std::vector<std::string> reqs;
  {
    std::ifstream f(argv[3]);
    std::string k;
    while (std::getline(f, k)) {
      std::string payload = map + " " + k;
      reqs.push_back(std::to_string(payload.size()) + ":" + payload + ",");
    }
  }
  if (reqs.empty()) return fprintf(stderr, "no keys\n"), 2;
  int nconn = atoi(argv[4]);
  double seconds = atof(argv[5]);
  int slice_ms = argc > 6 ? atoi(argv[6]) : 0;
  int ep = epoll_create1(0);
  std::vector<Conn> conns(static_cast<size_t>(nconn));
  for (int i = 0; i < nconn; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(uint16_t(port));
    sa.sin_addr.s_addr = htonl(0x7f000001);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) return perror("connect"), 1;
    conns[size_t(i)] = {fd, {}, {}, size_t(i) * 7919 % reqs.size()};
    epoll_event ev{EPOLLIN, {}};
    ev.data.u32 = uint32_t(i);
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  std::vector<double> lat, slice_lat;
  long failed = 0, done = 0;
  auto send_next = [&](Conn& c) {
    const auto& r = reqs[c.next_key];
    c.next_key = (c.next_key + 1) % reqs.size();
    c.sent = Clock::now();
    if (write(c.fd, r.data(), r.size()) != ssize_t(r.size())) ++failed;
  };
  auto start = Clock::now();
  auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  auto slice_end = start + std::chrono::milliseconds(slice_ms);
  long slice_done = 0;
  for (auto& c : conns) send_next(c);
  epoll_event evs[512];
  while (Clock::now() < end) {
    int n = epoll_wait(ep, evs, 512, 100);
    auto now = Clock::now();
    for (int i = 0; i < n; ++i) {
      Conn& c = conns[evs[i].data.u32];
      char buf[4096];
      ssize_t r = read(c.fd, buf, sizeof buf);
      if (r <= 0) {
        ++failed;
        epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
        continue;
      }
      c.in.append(buf, size_t(r));
      size_t comma;
      while ((comma = c.in.find(',')) != std::string::npos) {
        size_t colon = c.in.find(':');
        if (colon == std::string::npos) break;
        size_t len = size_t(atol(c.in.c_str()));
        if (c.in.size() < colon + len + 2) break;
        std::string body = c.in.substr(colon + 1, len);
        c.in.erase(0, colon + len + 2);
        if (!(body.rfind("OK ", 0) == 0 || body.rfind("NOTFOUND", 0) == 0)) ++failed;
        double us = std::chrono::duration<double, std::micro>(now - c.sent).count();
        lat.push_back(us);
        if (slice_ms) slice_lat.push_back(us);
        ++done;
        ++slice_done;
        send_next(c);
      }
    }
    if (slice_ms && now >= slice_end) {
      double t = std::chrono::duration<double>(now - start).count();
      printf("slice t=%.1fs req/s=%.0f p50=%.0fus p99=%.0fus max=%.0fus\n", t, double(slice_done) * 1000 / slice_ms,
             pct(slice_lat, 0.5), pct(slice_lat, 0.99), slice_lat.empty() ? 0.0 : *std::max_element(slice_lat.begin(), slice_lat.end()));
      slice_lat.clear();
      slice_done = 0;
      slice_end = now + std::chrono::milliseconds(slice_ms);
    }
  }
  double el = std::chrono::duration<double>(Clock::now() - start).count();
  double mx = lat.empty() ? 0 : *std::max_element(lat.begin(), lat.end());
  printf("connections=%d requests=%ld req/s=%.0f p50=%.0fus p99=%.0fus max=%.0fus failed=%ld\n", nconn, done,
         double(done) / el, pct(lat, 0.5), pct(lat, 0.99), mx, failed);
  return failed ? 1 : 0;
}
