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
#include <utility>
#include <vector>

#include "policy/facts.hpp"
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

// Discovery as the server sees it (the daemon connects discovery/ to it):
// the facts of a destination at once (cached, or failed fast), or nullptr
// and `done(facts)` later, exactly once, from a callback of the loop (never
// from inside the call).
using FactsPtr = std::shared_ptr<const DestinationFacts>;
// `done` has Discoverer::Done's exact type, so it is moved through, not
// wrapped in a second std::function (an allocation per lookup).
using DiscoverDone = std::function<void(const FactsPtr&)>;
using DiscoverFn = std::function<FactsPtr(const std::string& destination, DiscoverDone done)>;

class SocketmapServer {
 public:
  // Per-connection limits. The defaults serve production; the fuzzer shrinks
  // them so small inputs reach every backpressure path.
  struct Limits {
    // Replies held for a client that does not read: answering stops beyond.
    size_t max_pending_output = 64 << 10;
    // Bytes read per loop round (at most 16 KiB) and requests answered per
    // round: one client pipelining thousands of requests takes its turn
    // like everyone else.
    size_t read_per_round = 16 << 10;
    int answers_per_round = 2048;
    // Reading happens only while no complete request waits, so the input
    // holds at most one incomplete request plus one read; the output at most
    // max_pending_output plus one reply.
    size_t max_input() const { return kMaxRequest + 16 + read_per_round; }
    size_t max_buffered() const { return max_input() + max_pending_output + kMaxReply + 16; }
  };

  explicit SocketmapServer(ServerOptions opt);
  ~SocketmapServer();
  SocketmapServer(const SocketmapServer&) = delete;
  SocketmapServer& operator=(const SocketmapServer&) = delete;

  void add_listener(int fd);
  // Calls on_readable whenever fd is readable (signals, inotify, eventfd).
  void watch(int fd, std::function<void()> on_readable);
  void unwatch(int fd);
  // Installs a snapshot; returns the one it replaces.
  std::shared_ptr<const Snapshot> set_policy(std::shared_ptr<const Snapshot> s) {
    policy_.swap(s);
    return s;
  }
  // With discovery set, a request whose answer DNS facts could change
  // (discovery_target() not empty) asks it; when the facts are not at hand
  // the connection parks: it answers and reads nothing more (its pipelined
  // requests keep their order) until they come, while every other
  // connection is served. Unset (the default): static answers only.
  void set_discovery(DiscoverFn d) { discover_ = std::move(d); }
  size_t parked() const { return parked_; }
  void set_options(bool log_all, bool log_rules, int max_connections, std::chrono::seconds idle);
  void run();  // until stop()
  // One loop round: waits up to timeout_ms for events, handles them, then
  // the log flush and (when due) the idle sweep. run() is a loop of these;
  // the fuzzer drives it directly.
  void run_once(int timeout_ms);
  void stop() { running_ = false; }
  size_t connections() const { return conns_.size(); }
  void set_limits(const Limits& l) { limits_ = l; }
  const Limits& limits() const { return limits_; }
  // Serves an already connected socket (non-blocking) as a client connection.
  void adopt(int fd);
  // The most bytes any one connection holds now, unanswered input plus
  // unsent replies (at most limits().max_buffered()).
  size_t max_buffered_now() const;

 private:
  struct Conn;
  // A warning any client can trigger at will: at most one line per 10 s,
  // with the count of those left out since the last line.
  struct Throttle {
    std::chrono::steady_clock::time_point last{};
    unsigned long suppressed = 0;
  };
  template <class MakeText>
  void warn(Throttle& t, MakeText&& text);
  void accept_all(int listener);
  void add_conn(int fd);
  void service(Conn& c, uint32_t events);
  bool read_input(Conn& c);
  void answer(Conn& c);
  bool send_output(Conn& c);
  void settle(Conn& c);
  void close_conn(Conn& c);
  void sweep(std::chrono::steady_clock::time_point now);
  void pause_listeners(const std::string& why);
  void resume_listeners();
  void log_lookup(const Snapshot& s, std::string_view request, const SocketmapReply& r);
  void count(const Snapshot& s, const SocketmapReply& r, uint64_t ns);
  void resume(int fd, uint32_t id, const FactsPtr& facts);

  ServerOptions opt_;
  Limits limits_;
  int epfd_ = -1;
  bool running_ = false;
  std::shared_ptr<const Snapshot> policy_;
  DiscoverFn discover_;
  size_t parked_ = 0;
  std::unordered_map<int, std::unique_ptr<Conn>> conns_;
  // Connections closed this round: freed when the round ends, so no caller
  // up the stack can be left holding a freed Conn.
  std::vector<std::unique_ptr<Conn>> closed_;
  uint32_t next_id_ = 0;
  std::unordered_map<int, std::function<void()>> watched_;
  std::unordered_map<int, bool> listeners_;
  std::string line_;  // log_lookup's reused buffer
  bool listeners_paused_ = false;
  Throttle cap_warning_;        // connection limit, out of descriptors
  Throttle malformed_warning_;  // framing errors (connection closed)
  Throttle request_warning_;    // unknown map name, request without a key
  // Expired connections still to close: at most kClosePerRound per round, so
  // thousands expiring together never stall the loop.
  std::vector<std::pair<int, uint32_t>> expired_;
  std::chrono::steady_clock::time_point next_sweep_{};
};

}  // namespace tlspolicy
