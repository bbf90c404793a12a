// See listen.hpp.
#include "daemon/listen.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "policy/names.hpp"

namespace tlspolicy {

namespace {

int fail(int fd, std::string* error, std::string msg) {
  *error = std::move(msg);
  if (fd >= 0) ::close(fd);
  return -1;
}

int open_unix(const std::string& path, const DaemonSettings& d, std::string* error) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(fd, error, fmt::format("socket: {}", std::strerror(errno)));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) return fail(fd, error, fmt::format("{}: path too long", path));
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  struct stat st;
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());  // stale socket
  mode_t old = umask(0177);
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  umask(old);
  if (rc < 0) return fail(fd, error, fmt::format("bind {}: {}", path, std::strerror(errno)));
  uid_t uid = uid_t(-1);
  gid_t gid = gid_t(-1);
  if (!d.socket_owner.empty()) {
    passwd* pw = getpwnam(d.socket_owner.c_str());
    if (!pw) return fail(fd, error, fmt::format("socket_owner \"{}\": no such user", d.socket_owner));
    uid = pw->pw_uid;
  }
  if (!d.socket_group.empty()) {
    group* gr = getgrnam(d.socket_group.c_str());
    if (!gr) return fail(fd, error, fmt::format("socket_group \"{}\": no such group", d.socket_group));
    gid = gr->gr_gid;
  }
  if ((uid != uid_t(-1) || gid != gid_t(-1)) && chown(path.c_str(), uid, gid) < 0)
    return fail(fd, error, fmt::format("chown {}: {}", path, std::strerror(errno)));
  if (chmod(path.c_str(), d.socket_mode) < 0)
    return fail(fd, error, fmt::format("chmod {}: {}", path, std::strerror(errno)));
  if (listen(fd, 1024) < 0) return fail(fd, error, fmt::format("listen {}: {}", path, std::strerror(errno)));
  return fd;
}

int open_inet(std::string_view hostport, std::string* error) {
  auto colon = hostport.rfind(':');
  auto host = hostport.substr(0, colon);
  if (host.starts_with("[")) host = host.substr(1, host.size() - 2);
  int port = std::atoi(std::string(hostport.substr(colon + 1)).c_str());
  auto ip = parse_ip(host);
  if (!ip) return fail(-1, error, fmt::format("{}: not an IP address", host));
  int fd = socket(ip->v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(fd, error, fmt::format("socket: {}", std::strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  // Replies are small and each is the whole answer: never wait for Nagle.
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int rc;
  if (ip->v6) {
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    sa.sin6_port = htons(uint16_t(port));
    std::memcpy(&sa.sin6_addr, ip->bytes.data(), 16);
    rc = bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  } else {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(uint16_t(port));
    std::memcpy(&sa.sin_addr, ip->bytes.data(), 4);
    rc = bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  }
  if (rc < 0) return fail(fd, error, fmt::format("bind {}: {}", hostport, std::strerror(errno)));
  if (listen(fd, 1024) < 0) return fail(fd, error, fmt::format("listen {}: {}", hostport, std::strerror(errno)));
  return fd;
}

}  // namespace

int open_listener(const std::string& ep, const DaemonSettings& d, std::string* error) {
  if (ep.starts_with("unix:")) return open_unix(ep.substr(5), d, error);
  if (ep.starts_with("inet:")) return open_inet(std::string_view(ep).substr(5), error);
  *error = fmt::format("{}: unknown endpoint type", ep);
  return -1;
}

}  // namespace tlspolicy
