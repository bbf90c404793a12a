#include "discovery/sts_fetch.hpp"

#include <curl/curl.h>
#include <fmt/format.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <optional>
#include <stdexcept>

#include "policy/names.hpp"

namespace tlspolicy::sts {

using Clock = std::chrono::steady_clock;

struct Fetcher::Transfer {
  CURL* easy = nullptr;
  std::string domain, url, body;
  size_t max_size = 0;
  bool too_big = false;
  std::vector<Callback> waiters;
  char errbuf[CURL_ERROR_SIZE] = {};
  Clock::time_point start = Clock::now();
  ~Transfer() {
    if (easy) curl_easy_cleanup(easy);
  }
};

// run()'s loop: the sockets and the timer libcurl asked for, served by poll().
struct Fetcher::PollHooks : LoopHooks {
  std::map<int, short> fds;
  std::optional<Clock::time_point> deadline;
  void watch(int fd, bool read, bool write) override {
    if (!read && !write) {
      fds.erase(fd);
      return;
    }
    fds[fd] = short((read ? POLLIN : 0) | (write ? POLLOUT : 0));
  }
  void set_timer(long ms) override {
    if (ms < 0) deadline.reset();
    else deadline = Clock::now() + std::chrono::milliseconds(ms);
  }
};

namespace {

// A host name fit for the URL: LDH labels, nothing that would change the URL.
bool url_safe_domain(const std::string& d) {
  if (d.empty() || d.size() > 253 || d.front() == '.' || d.back() == '.' || d.front() == '-') return false;
  return std::all_of(d.begin(), d.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
  }) && d.find("..") == std::string::npos;
}

// "text/plain", "text/plain; charset=utf-8", any case (RFC 8461 3.2 and RFC 2045).
bool is_text_plain(const char* ct) {
  if (!ct) return false;
  std::string_view v(ct);
  v = v.substr(0, v.find(';'));
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  return lowercase(v) == "text/plain";
}

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw std::runtime_error("curl_global_init failed");
  });
}

}  // namespace

// The body's bound: libcurl calls this with each piece; returning less than
// given aborts the transfer (CURLE_WRITE_ERROR), which is how a chunked body
// without Content-Length is cut off at the limit.
size_t Fetcher::body_cb(char* data, size_t size, size_t n, void* userp) {
  auto* t = static_cast<Fetcher::Transfer*>(userp);
  size_t len = size * n;
  if (t->body.size() + len > t->max_size) {
    t->too_big = true;
    return 0;
  }
  t->body.append(data, len);
  return len;
}

Fetcher::Fetcher(FetchSettings settings, LoopHooks* hooks) : settings_(std::move(settings)), hooks_(hooks) {
  global_init();
  if (!hooks_) {
    own_hooks_ = std::make_unique<PollHooks>();
    hooks_ = own_hooks_.get();
  }
  multi_ = curl_multi_init();
  if (!multi_) throw std::runtime_error("curl_multi_init failed");
  curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &Fetcher::socket_cb);
  curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &Fetcher::timer_cb);
  curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
  curl_multi_setopt(multi_, CURLMOPT_MAX_TOTAL_CONNECTIONS, settings_.max_connections);
  curl_slist* list = nullptr;
  for (const auto& c : settings_.connect_to) {
    curl_slist* l = curl_slist_append(list, c.c_str());
    if (!l) {
      curl_slist_free_all(list);
      throw std::runtime_error("out of memory");
    }
    list = l;
  }
  connect_to_ = list;
}

Fetcher::~Fetcher() {
  for (auto& [domain, t] : transfers_) curl_multi_remove_handle(multi_, t->easy);
  transfers_.clear();
  curl_multi_cleanup(multi_);
  curl_slist_free_all(static_cast<curl_slist*>(connect_to_));
}

std::string Fetcher::policy_url(const std::string& domain) {
  std::string url = "https://mta-sts.";
  url += lowercase(domain);
  url += "/.well-known/mta-sts.txt";
  return url;
}

bool Fetcher::fetch(const std::string& domain_in, Callback cb, std::string* error) {
  if (!url_safe_domain(domain_in)) {
    if (error) *error = fmt::format("\"{}\" is not a domain name", printable(domain_in));
    return false;
  }
  std::string domain = lowercase(domain_in);
  if (auto it = transfers_.find(domain); it != transfers_.end()) {
    it->second->waiters.push_back(std::move(cb));
    return true;
  }
  if (transfers_.size() >= settings_.max_pending) {
    if (error) *error = fmt::format("{} policy fetches under way already (max_pending)", transfers_.size());
    return false;
  }
  auto t = std::make_unique<Transfer>();
  t->domain = domain;
  t->url = policy_url(domain);
  t->max_size = settings_.max_size;
  t->waiters.push_back(std::move(cb));
  CURL* e = curl_easy_init();
  if (!e) {
    if (error) *error = "curl_easy_init failed";
    return false;
  }
  t->easy = e;
  curl_easy_setopt(e, CURLOPT_URL, t->url.c_str());
  curl_easy_setopt(e, CURLOPT_PRIVATE, t.get());
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(e, CURLOPT_SSLVERSION, long(CURL_SSLVERSION_TLSv1_2));
  if (!settings_.ca_file.empty()) {
    curl_easy_setopt(e, CURLOPT_CAINFO, settings_.ca_file.c_str());
    curl_easy_setopt(e, CURLOPT_CAPATH, nullptr);
  }
  curl_easy_setopt(e, CURLOPT_PROXY, settings_.proxy.c_str());  // "" = no proxy, env ignored
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, settings_.connect_timeout_ms);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, settings_.total_timeout_ms);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, curl_off_t(settings_.max_size));
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &body_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t.get());
  curl_easy_setopt(e, CURLOPT_USERAGENT, settings_.user_agent.c_str());
  if (connect_to_) curl_easy_setopt(e, CURLOPT_CONNECT_TO, static_cast<curl_slist*>(connect_to_));
  if (CURLMcode rc = curl_multi_add_handle(multi_, e); rc != CURLM_OK) {
    if (error) *error = curl_multi_strerror(rc);
    return false;
  }
  ++started_;
  transfers_.emplace(domain, std::move(t));
  return true;
}

int Fetcher::socket_cb(void*, int fd, int what, void* self, void*) {
  auto* f = static_cast<Fetcher*>(self);
  switch (what) {
    case CURL_POLL_IN: f->hooks_->watch(fd, true, false); break;
    case CURL_POLL_OUT: f->hooks_->watch(fd, false, true); break;
    case CURL_POLL_INOUT: f->hooks_->watch(fd, true, true); break;
    default: f->hooks_->watch(fd, false, false); break;  // CURL_POLL_REMOVE
  }
  return 0;
}

int Fetcher::timer_cb(void*, long ms, void* self) {
  static_cast<Fetcher*>(self)->hooks_->set_timer(ms);
  return 0;
}

void Fetcher::on_socket(int fd, bool readable, bool writable, bool failed) {
  int mask = (readable ? CURL_CSELECT_IN : 0) | (writable ? CURL_CSELECT_OUT : 0) | (failed ? CURL_CSELECT_ERR : 0);
  int running = 0;
  curl_multi_socket_action(multi_, fd, mask, &running);
  finish_done();
}

void Fetcher::on_timeout() {
  int running = 0;
  curl_multi_socket_action(multi_, CURL_SOCKET_TIMEOUT, 0, &running);
  finish_done();
}

void Fetcher::finish_done() {
  std::vector<std::pair<FetchResult, std::vector<Callback>>> done;
  int left = 0;
  while (CURLMsg* m = curl_multi_info_read(multi_, &left)) {
    if (m->msg != CURLMSG_DONE) continue;
    Transfer* t = nullptr;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&t));
    if (!t) continue;
    FetchResult r;
    r.domain = t->domain;
    r.url = t->url;
    r.took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t->start);
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &r.http_status);
    CURLcode rc = m->data.result;
    std::string detail = t->errbuf[0] ? std::string(t->errbuf) : std::string(curl_easy_strerror(rc));
    if (rc == CURLE_OK) {
      char* ct = nullptr;
      curl_easy_getinfo(t->easy, CURLINFO_CONTENT_TYPE, &ct);
      if (r.http_status >= 300 && r.http_status < 400)
        r.error = fmt::format("HTTP {}: redirects are not followed (RFC 8461 3.3)", r.http_status);
      else if (r.http_status != 200)
        r.error = fmt::format("HTTP {}", r.http_status);
      else if (!is_text_plain(ct))
        r.error = fmt::format("Content-Type \"{}\" is not text/plain (RFC 8461 3.2)", printable(ct ? ct : ""));
      else {
        r.ok = true;
        r.body = std::move(t->body);
      }
    } else if (t->too_big || rc == CURLE_FILESIZE_EXCEEDED) {
      r.error = fmt::format("policy larger than {} bytes", settings_.max_size);
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
      r.error = fmt::format("timed out: {}", detail);
    } else if (rc == CURLE_PEER_FAILED_VERIFICATION) {
      r.error = fmt::format("certificate of mta-sts.{} not valid: {}", t->domain, detail);
    } else {
      r.error = detail;
    }
    std::vector<Callback> waiters = std::move(t->waiters);
    curl_multi_remove_handle(multi_, t->easy);
    transfers_.erase(t->domain);  // destroys t and its easy handle
    done.emplace_back(std::move(r), std::move(waiters));
  }
  for (auto& [result, waiters] : done)
    for (auto& cb : waiters)
      if (cb) cb(result);
}

bool Fetcher::run(long max_ms) {
  if (!own_hooks_) throw std::logic_error("Fetcher::run() without its own loop");
  auto end = Clock::now() + std::chrono::milliseconds(max_ms);
  while (!transfers_.empty()) {
    auto now = Clock::now();
    if (now >= end) return false;
    auto wait = end - now;
    if (own_hooks_->deadline) wait = std::min<Clock::duration>(wait, *own_hooks_->deadline - now);
    long ms = std::max<long>(0, long(std::chrono::ceil<std::chrono::milliseconds>(wait).count()));
    std::vector<pollfd> pfds;
    for (auto [fd, ev] : own_hooks_->fds) pfds.push_back({fd, ev, 0});
    int n = poll(pfds.data(), pfds.size(), int(std::min<long>(ms, 1000)));
    if (n < 0 && errno != EINTR) throw std::runtime_error("poll failed");
    if (own_hooks_->deadline && Clock::now() >= *own_hooks_->deadline) {
      own_hooks_->deadline.reset();
      on_timeout();
    }
    for (const auto& p : pfds) {
      if (!p.revents || !own_hooks_->fds.count(p.fd)) continue;
      on_socket(p.fd, p.revents & (POLLIN | POLLHUP), p.revents & POLLOUT, p.revents & (POLLERR | POLLNVAL));
    }
  }
  return true;
}

}  // namespace tlspolicy::sts
