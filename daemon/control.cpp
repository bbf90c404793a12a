// See control.hpp.
#include "daemon/control.hpp"

#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "policy/maps.hpp"

namespace tlspolicy {

bool ControlServer::open(const std::string& path, uid_t uid, gid_t gid, std::string* error) {
  sockaddr_un sa{};
  if (path.size() >= sizeof sa.sun_path) {
    *error = "path too long";
    return false;
  }
  // The directory (e.g. /run/tlspolicyd, systemd's RuntimeDirectory) may
  // not exist outside systemd.
  auto slash = path.rfind('/');
  if (slash > 0) ::mkdir(path.substr(0, slash).c_str(), 0755);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::strerror(errno);
    return false;
  }
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  struct stat st{};
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
    // Another tlspolicyd on this host may be answering there: never steal
    // its socket, only remove a dead one.
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
      *error = "another tlspolicyd answers there (give this one its own daemon.control)";
      ::close(fd);
      return false;
    }
    ::close(fd);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      *error = std::strerror(errno);
      return false;
    }
    ::unlink(path.c_str());
  }
  mode_t old = umask(0177);
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  umask(old);
  if (rc < 0 || listen(fd, 8) < 0 || (geteuid() == 0 && chown(path.c_str(), uid, gid) < 0)) {
    *error = std::strerror(errno);
    ::close(fd);
    return false;
  }
  path_ = path;
  listen_fd_ = fd;
  return true;
}

void ControlServer::start(const PolicyHolder& holder, Hooks hooks) {
  if (listen_fd_ < 0) return;
  holder_ = &holder;
  hooks_ = std::move(hooks);
  thread_ = std::thread([this] {
    for (;;) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;  // stop() shut the socket down
      }
      client_fd_ = fd;
      serve_one(fd);
      client_fd_ = -1;
      ::close(fd);
    }
  });
}

void ControlServer::stop() {
  if (listen_fd_ < 0) return;
  ::shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
  int client = client_fd_;
  if (client >= 0) ::shutdown(client, SHUT_RDWR);  // and a client in the middle of a request
  if (thread_.joinable()) thread_.join();
  ::close(listen_fd_);
  listen_fd_ = -1;
  ::unlink(path_.c_str());
}

void ControlServer::serve_one(int fd) {
  // One request line within 5 s in all, however slowly it trickles in.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  timeval tv{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::string line;
  char buf[1024];
  while (line.find('\n') == std::string::npos && line.size() < 4096 && std::chrono::steady_clock::now() < deadline) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
    if (n > 0) line.append(buf, size_t(n));
  }
  if (line.find('\n') == std::string::npos) return;  // incomplete: no answer
  line = line.substr(0, line.find('\n'));
  if (!line.empty() && line.back() == '\r') line.pop_back();
  std::string reply;
  try {
    auto sp = line.find(' ');
    std::string cmd = line.substr(0, sp), rest = sp == std::string::npos ? "" : line.substr(sp + 1);
    if (cmd == "status") {
      reply = "OK\n" + hooks_.status();
    } else if (cmd == "reload" && (rest.empty() || rest == "force")) {
      auto [ok, text] = hooks_.reload(rest == "force");
      reply = (ok ? "OK\n" : "ERROR\n") + text;
    } else if (cmd == "query" || cmd == "explain") {
      auto sp2 = rest.find(' ');
      auto map = parse_map_name(rest.substr(0, sp2));
      if (!map || sp2 == std::string::npos) {
        reply = fmt::format("ERROR\nusage: {} MAP KEY (maps: {})\n", cmd, kMapNames);
      } else {
        auto snap = holder_->load();
        std::string key = rest.substr(sp2 + 1);
        bool explain = cmd == "explain";
        std::shared_ptr<const DestinationFacts> facts;
        if (hooks_.discover)
          if (std::string target = discovery_target(*snap, *map, key, explain); !target.empty())
            facts = hooks_.discover(target);
        Answer a = facts ? query(*snap, *map, key, explain, facts.get()) : query(*snap, *map, key, explain);
        reply = a.temp ? "TEMP\n" : a.found ? "OK\n" : "NOTFOUND\n";
        reply += cmd == "explain" ? explain_text(*snap, *map, key, a) : (a.found ? a.value + "\n" : "");
      }
    } else {
      reply = "ERROR\nunknown request: use status, reload, reload force, query MAP KEY or explain MAP KEY\n";
    }
  } catch (const std::exception& e) {
    reply = fmt::format("ERROR\n{}\n", e.what());
  }
  size_t off = 0;
  while (off < reply.size()) {
    ssize_t n = ::send(fd, reply.data() + off, reply.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += size_t(n);
  }
}

}  // namespace tlspolicy
