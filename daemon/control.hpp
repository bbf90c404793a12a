// The control socket (daemon.control, a unix socket only root and
// daemon.user may open): `tlspolicy status`, `tlspolicy reload [--force]` and
// `tlspolicy query --daemon` ask the running daemon, so an admin sees what
// is being served rather than what is on disk.
//
// Protocol: one request line, one reply, then the daemon closes. Requests:
// "status", "reload", "reload force", "query MAP KEY" and "explain MAP KEY".
// The reply's first line is "OK", "NOTFOUND", "TEMP" or "ERROR", the rest is
// text. query and explain answer as the socketmap does, discovery included
// (the daemon's DNS cache and resolver): what Postfix is told.
// Served by one thread of its own with blocking I/O and timeouts: requests
// are rare and small, and lookups never wait for it.
#pragma once
#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "policy/facts.hpp"
#include "policy/holder.hpp"

namespace tlspolicy {

class ControlServer {
 public:
  struct Hooks {
    // Both run on the control thread and must be thread-safe.
    std::function<std::string()> status;
    // Starts a reload on the event loop and returns its outcome (blocks).
    std::function<std::pair<bool, std::string>(bool forced)> reload;
    // The DNS facts of a destination from the daemon's own discovery (its
    // cache, its resolver), run on the event loop; blocks until they come
    // (at most the discovery deadline). Unset: query and explain answer
    // from the static policy alone.
    std::function<std::shared_ptr<const DestinationFacts>(const std::string& destination)> discover;
  };
  // Binds the socket (before privileges are dropped), owned by uid/gid, mode
  // 0600. Returns false with *error set on failure.
  bool open(const std::string& path, uid_t uid, gid_t gid, std::string* error);
  void start(const PolicyHolder& holder, Hooks hooks);
  void stop();
  ~ControlServer() { stop(); }

 private:
  void serve_one(int fd);
  std::string path_;
  int listen_fd_ = -1;
  std::atomic<int> client_fd_{-1};  // the connection being served, for stop()
  const PolicyHolder* holder_ = nullptr;
  Hooks hooks_;
  std::thread thread_;
};

}  // namespace tlspolicy
