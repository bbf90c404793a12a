// Fetching MTA-STS policy files over HTTPS (RFC 8461 3.3) with libcurl's
// multi interface, on the caller's event loop: the fetcher never blocks. The
// loop watches the sockets and the one timer libcurl asks for (LoopHooks)
// and calls back on_socket()/on_timeout(); for tests and tools run() drives
// the same interface with poll().
//
// What RFC 8461 asks of the fetch, and how:
// - https only (CURLOPT_PROTOCOLS_STR), the certificate validated for
//   mta-sts.<domain> against the system CA store or a configured CA file
//   (CURLOPT_CAINFO set explicitly, so no environment variable picks the
//   store), TLS 1.2 or later;
// - no redirects: CURLOPT_FOLLOWLOCATION off and any status other than 200
//   (a 3xx included) is a failed fetch;
// - media type text/plain;
// - a size limit (64 KiB): CURLOPT_MAXFILESIZE for a declared length and a
//   bound in the write callback for a chunked body, which has none;
// - connect and total timeouts; no HTTP cache (none is kept).
// Identical fetches are coalesced: a domain already being fetched gets one
// more waiter, not a second transfer.
//
// Name resolution: libcurl's own (the system resolver). connect_to maps
// "mta-sts.<domain>:443" to another address and port without changing the
// name the certificate is checked against; the tests use it to reach an
// HTTPS fixture on 127.0.0.1:<port>.
#pragma once
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace tlspolicy::sts {

struct FetchSettings {
  std::string ca_file;          // empty: libcurl's built-in system CA store
  long connect_timeout_ms = 10000;
  long total_timeout_ms = 60000;  // RFC 8461 3.3 suggests one minute
  size_t max_size = 64 * 1024;
  long max_connections = 16;      // transfers beyond wait in libcurl's queue
  // Distinct domains being fetched at once; beyond, fetch() refuses (the
  // caller answers from what it has): a flood of new domains cannot grow
  // memory without bound. Joining a fetch under way is always accepted.
  size_t max_pending = 1024;
  // CURLOPT_CONNECT_TO entries, "mta-sts.a.test:443:127.0.0.1:4443" (tests).
  std::vector<std::string> connect_to;
  // An HTTPS proxy URL; empty means none, whatever https_proxy says.
  std::string proxy;
  std::string user_agent = "tlspolicyd";
};

struct FetchResult {
  std::string domain;  // the policy domain
  std::string url;
  bool ok = false;     // a 200 text/plain body within the limits
  long http_status = 0;
  std::string body;    // when ok
  std::string error;   // when not ok: "HTTP 301: redirects are not followed (RFC 8461 3.3)", ...
  std::chrono::milliseconds took{0};
};

// How the fetcher asks its event loop for attention. The loop calls
// Fetcher::on_socket when a watched fd is ready and Fetcher::on_timeout when
// the timer fires.
class LoopHooks {
 public:
  virtual ~LoopHooks() = default;
  // Watch fd for reading and/or writing (both false: stop watching it).
  // libcurl may close a socket before saying so and reuse its number: an
  // epoll loop must re-add an fd whose registration the kernel dropped.
  virtual void watch(int fd, bool read, bool write) = 0;
  // Fire once after ms milliseconds (0: as soon as possible); -1 cancels.
  virtual void set_timer(long ms) = 0;
};

class Fetcher {
 public:
  using Callback = std::function<void(const FetchResult&)>;
  // hooks == nullptr: the fetcher drives itself with run().
  explicit Fetcher(FetchSettings settings, LoopHooks* hooks = nullptr);
  ~Fetcher();  // abandons transfers in flight; their callbacks are not called
  Fetcher(const Fetcher&) = delete;
  Fetcher& operator=(const Fetcher&) = delete;

  // Starts fetching https://mta-sts.<domain>/.well-known/mta-sts.txt, or
  // joins the fetch already under way. cb runs on the loop, never from
  // inside fetch(). False with *error set when domain is not a host name or
  // max_pending fetches are under way.
  bool fetch(const std::string& domain, Callback cb, std::string* error = nullptr);

  // The event loop's calls.
  void on_socket(int fd, bool readable, bool writable, bool failed = false);
  void on_timeout();

  size_t in_flight() const { return transfers_.size(); }
  // Transfers started since construction (coalesced waiters not counted).
  size_t started() const { return started_; }

  // Drives the transfers with poll() until none is left or max_ms passed
  // (only without LoopHooks). Returns whether all finished.
  bool run(long max_ms);

  static std::string policy_url(const std::string& domain);

 private:
  struct Transfer;
  struct PollHooks;
  static int socket_cb(void* easy, int fd, int what, void* self, void* socketp);
  static int timer_cb(void* multi, long ms, void* self);
  static size_t body_cb(char* data, size_t size, size_t n, void* transfer);
  void finish_done();

  FetchSettings settings_;
  std::unique_ptr<PollHooks> own_hooks_;
  LoopHooks* hooks_;
  void* multi_ = nullptr;  // CURLM*
  void* connect_to_ = nullptr;  // curl_slist*
  std::map<std::string, std::unique_ptr<Transfer>> transfers_;  // by domain
  size_t started_ = 0;
};

}  // namespace tlspolicy::sts
