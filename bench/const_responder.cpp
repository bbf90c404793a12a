// The yardstick for the socketmap benchmark: the least a socketmap server can
// do (epoll, read a netstring, write a constant "OK may"), so that its
// requests/s are the IPC limit of the machine. Not part of the product.
// Usage: const_responder PORT
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(ls, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(uint16_t(atoi(argv[1])));
  sa.sin_addr.s_addr = htonl(0x7f000001);
  if (bind(ls, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 || listen(ls, 1024) < 0) return perror("bind"), 1;
  int ep = epoll_create1(0);
  epoll_event ev{EPOLLIN, {}};
  ev.data.fd = ls;
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  std::unordered_map<int, std::string> bufs;
  const char reply[] = "6:OK may,";
  epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == ls) {
        int c;
        while ((c = accept4(ls, nullptr, nullptr, SOCK_NONBLOCK)) >= 0) {
          epoll_event e{EPOLLIN, {}};
          e.data.fd = c;
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
        }
        continue;
      }
      char buf[16384];
      ssize_t r = read(fd, buf, sizeof buf);
      if (r <= 0) {
        close(fd);
        bufs.erase(fd);
        continue;
      }
      auto& b = bufs[fd];
      b.append(buf, size_t(r));
      std::string out;
      size_t pos;
      while ((pos = b.find(',')) != std::string::npos) {  // keys here never hold ','
        b.erase(0, pos + 1);
        out.append(reply, sizeof reply - 1);
      }
      if (!out.empty() && write(fd, out.data(), out.size()) < 0) close(fd);
    }
  }
}
