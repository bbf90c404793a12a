// The socketmap responder's network side: one epoll loop, non-blocking
// sockets, per-connection buffers.
//
// Why a single-threaded epoll loop: a lookup is a few hundred nanoseconds of
// CPU on an immutable snapshot, so one thread answers far more requests than
// Postfix's processes send, with no locks, no per-request allocation of a
// thread, and no way for a slow or stuck client to hold anyone else up (all
// I/O is non-blocking and every connection has its own bounded buffers and
// deadlines). A library (asio, libuv) would add a dependency for the same
// hundred lines; the daemon's other event sources (signals, inotify, reload
// completion) plug into the same loop via watch().
#pragma once
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "policy/snapshot.hpp"
#include "socketmap/netstring.hpp"
#include "socketmap/responder.hpp"

namespace tlspolicy {

struct ServerOptions {
  int max_connections = 1024;
  std::chrono::seconds idle_timeout{60};
  bool log_all_lookups = false;
  bool log_rule_lookups = true;
  // Receives log lines: priority (syslog's LOG_*) and text.
  std::function<void(int, const std::string&)> log;
  // Per-lookup lines (may be buffered), and the flush run after each loop round.
  std::function<void(int, const std::string&)> log_lookup;
  std::function<void()> flush_log;
};

class SocketmapServer {
 public:
  explicit SocketmapServer(ServerOptions opt);
  ~SocketmapServer();
  SocketmapServer(const SocketmapServer&) = delete;
  SocketmapServer& operator=(const SocketmapServer&) = delete;

  void add_listener(int fd);
  // Calls on_readable whenever fd is readable (signals, inotify, eventfd).
  void watch(int fd, std::function<void()> on_readable);
  // Installs a snapshot; returns the one it replaces.
  std::shared_ptr<const Snapshot> set_policy(std::shared_ptr<const Snapshot> s) {
    policy_.swap(s);
    return s;
  }
  void set_options(bool log_all, bool log_rules, int max_connections, std::chrono::seconds idle);
  void run();  // until stop()
  void stop() { running_ = false; }
  size_t connections() const { return conns_.size(); }

 private:
  struct Conn;
  void accept_all(int listener);
  void on_readable(Conn& c);
  void on_writable(Conn& c);
  void flush(Conn& c);
  void update_events(Conn& c);
  void close_conn(int fd);
  void sweep();
  void pause_listeners(const std::string& why);
  void resume_listeners();
  void log_lookup(std::string_view request, const SocketmapReply& r);

  ServerOptions opt_;
  int epfd_ = -1;
  bool running_ = false;
  std::shared_ptr<const Snapshot> policy_;
  std::unordered_map<int, std::unique_ptr<Conn>> conns_;
  std::unordered_map<int, std::function<void()>> watched_;
  std::unordered_map<int, bool> listeners_;
  std::chrono::steady_clock::time_point last_cap_warning_{};
  std::string line_;  // log_lookup's reused buffer
  bool listeners_paused_ = false;
  std::chrono::steady_clock::time_point last_malformed_log_{};
  unsigned long malformed_ = 0;  // malformed clients not yet mentioned in the log
};

}  // namespace tlspolicy
