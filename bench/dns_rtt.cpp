// The DNS yardstick for bench/discovery.sh: how long the DNS fixture itself
// takes to answer, one question at a time over UDP (what one socketmap
// request that misses the cache waits for at least). Hand-built queries:
// a header and one question are a few lines, and a resolver library would
// add its own time to the figure this measures. Not part of the product.
// Usage: dns_rtt IP PORT QTYPE NAMEFILE [MAX]
//   QTYPE: MX, A, AAAA or TLSA; NAMEFILE: one name per line. Prints
//   questions, p50/p99/max in microseconds and how many got no NOERROR.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
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

static double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  size_t k = std::min(v.size() - 1, size_t(p * double(v.size())));
  std::nth_element(v.begin(), v.begin() + long(k), v.end());
  return v[k];
}

static std::string query(uint16_t id, const std::string& name, uint16_t qtype) {
  std::string q;
  const unsigned char hdr[12] = {static_cast<unsigned char>(id >> 8), static_cast<unsigned char>(id & 0xff),
                                 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};  // RD, one question
  q.append(reinterpret_cast<const char*>(hdr), sizeof hdr);
  size_t start = 0;
  while (start < name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    q.push_back(static_cast<char>(dot - start));
    q.append(name, start, dot - start);
    start = dot + 1;
  }
  q.push_back(0);
  q.push_back(static_cast<char>(qtype >> 8));
  q.push_back(static_cast<char>(qtype & 0xff));
  q.push_back(0);
  q.push_back(1);  // IN
  return q;
}

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: dns_rtt IP PORT QTYPE NAMEFILE [MAX]\n");
    return 2;
  }
  std::string t = argv[3];
  uint16_t qtype = t == "MX" ? 15 : t == "A" ? 1 : t == "AAAA" ? 28 : t == "TLSA" ? 52 : 0;
  if (!qtype) return fprintf(stderr, "dns_rtt: unknown QTYPE %s\n", argv[3]), 2;
  std::vector<std::string> names;
  {
    std::ifstream f(argv[4]);
    std::string n;
    while (std::getline(f, n))
      if (!n.empty()) names.push_back(n);
  }
  if (argc > 5) names.resize(std::min(names.size(), size_t(atol(argv[5]))));
  if (names.empty()) return fprintf(stderr, "dns_rtt: no names\n"), 2;
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(uint16_t(atoi(argv[2])));
  if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) return fprintf(stderr, "dns_rtt: bad IP\n"), 2;
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) return perror("connect"), 1;
  std::vector<double> lat;
  long bad = 0;
  uint16_t id = 1;
  for (const auto& n : names) {
    std::string q = query(++id, n, qtype);
    auto t0 = Clock::now();
    if (send(fd, q.data(), q.size(), 0) != ssize_t(q.size())) return perror("send"), 1;
    unsigned char buf[4096];
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 3000) <= 0) {
        ++bad;
        break;
      }
      ssize_t r = recv(fd, buf, sizeof buf, 0);
      if (r < 12 || ((buf[0] << 8) | buf[1]) != id) continue;  // a late reply to an earlier one
      lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      if ((buf[3] & 0x0f) != 0) ++bad;
      break;
    }
  }
  printf("questions=%zu p50=%.0fus p99=%.0fus max=%.0fus not_noerror=%ld\n", names.size(), pct(lat, 0.5),
         pct(lat, 0.99), lat.empty() ? 0.0 : *std::max_element(lat.begin(), lat.end()), bad);
  return 0;
}
