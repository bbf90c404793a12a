// The trusted-forwarder backend of Resolver (trust_forwarder_ad = true; see
// dns_backend.hpp): every question goes to the configured forwarders with
// the AD bit set (RFC 6840 5.7: a query with AD asks for the AD bit in the
// answer without DO's RRSIG baggage) and an EDNS OPT record; the answer is
// secure when the forwarder set AD, insecure when it did not. A validating
// resolver answers SERVFAIL for bogus data: that is a failed answer, never
// data. The forwarders must be validating resolvers on a trusted path
// (loopback): AD is an unsigned header bit anyone on the path can set.
//
// Why c-ares (libc-ares-dev, Debian): libunbound cannot do this (it hands
// back its own rendering of an answer, whose AD is its own validator's
// verdict: it drops the forwarder's); glibc's res_nquery and libldns's
// resolver block, so they would need a thread pool handing answers back to
// the event loop. c-ares is an asynchronous stub resolver made for event
// loops: non-blocking sockets we watch with epoll, its own retries across
// the forwarders, TCP on truncation, and ares_send() sends the query we
// build (so the AD bit is ours to set) and returns the raw reply (so the AD
// bit is ours to read). The reply is parsed with glibc's ns_initparse /
// ns_parserr (libresolv), the records formatted by the same dns::rdata_text
// as libunbound's, so both backends give identical DnsRecordSet data.
#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <fmt/format.h>
#include <resolv.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "discovery/dns_backend.hpp"

namespace tlspolicy {
namespace {

constexpr int kEdnsUdpSize = 1232;  // the DNS Flag Day 2020 size: no fragmentation

// "IP[@PORT]" -> c-ares's "IP[:PORT]" / "[IPv6][:PORT]"; "" when malformed.
std::string ares_server(const std::string& f) {
  auto at = f.find('@');
  std::string ip = f.substr(0, at), port = at == std::string::npos ? "" : f.substr(at + 1);
  unsigned char buf[16];
  bool v6 = inet_pton(AF_INET6, ip.c_str(), buf) == 1;
  if (!v6 && inet_pton(AF_INET, ip.c_str(), buf) != 1) return {};
  if (at != std::string::npos) {
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) return {};
    int p = std::stoi(port);
    if (p < 1 || p > 65535) return {};
  }
  std::string out;
  if (v6 && !port.empty()) {
    out += '[';
    out += ip;
    out += ']';
  } else {
    out += ip;
  }
  if (!port.empty()) {
    out += ':';
    out += port;
  }
  return out;
}

// The uncompressed length of the wire name at p (ns_name_unpack's output).
size_t unpacked_len(const uint8_t* p, size_t n) {
  size_t i = 0;
  while (i < n) {
    if (p[i] == 0) return i + 1;
    i += 1 + p[i];
  }
  return 0;
}

// Two presentation names equal, ignoring case and a trailing dot (glibc's
// ns_samename does this, but is deprecated).
bool same_name(std::string_view a, std::string_view b) {
  if (a.size() > 1 && a.back() == '.') a.remove_suffix(1);
  if (b.size() > 1 && b.back() == '.') b.remove_suffix(1);
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; };
           return lower(x) == lower(y);
         });
}

class ForwarderBackend final : public DnsBackend {
 public:
  explicit ForwarderBackend(const DiscoverySettings& s) : settings_(s) {}
  ~ForwarderBackend() override {
    queries_.clear();
    by_key_.clear();
    if (ch_) ares_destroy(ch_);  // calls every callback with ARES_EDESTRUCTION
    if (ep_ >= 0) ::close(ep_);
    if (tfd_ >= 0) ::close(tfd_);
  }
  bool init(std::string* error);
  int fd() const override { return ep_; }
  std::string start(const std::string& key, const std::string& name, RrType type) override;
  void cancel(const std::string& key) override;
  void process() override;
  std::string_view name() const override { return "forwarders (trusted AD bit)"; }

 private:
  struct Query {
    std::string key, name;
    RrType type;
  };
  struct Ticket {  // c-ares's callback argument: lives until its callback
    ForwarderBackend* self;
    uint64_t token;
  };
  static void on_socket(void* data, ares_socket_t s, int readable, int writable);
  static void on_answer(void* arg, int status, int timeouts, unsigned char* abuf, int alen);
  void arm_timer();

  DiscoverySettings settings_;
  ares_channel ch_ = nullptr;
  int ep_ = -1;   // epoll over c-ares's sockets and tfd_
  int tfd_ = -1;  // c-ares's next retransmission
  uint64_t next_token_ = 1;
  std::unordered_map<uint64_t, Query> queries_;
  std::unordered_map<std::string, uint64_t> by_key_;
  bool starting_ = false;
  std::string start_error_;
};

bool ForwarderBackend::init(std::string* error) {
  if (settings_.forwarders.empty()) {
    *error = "trust_forwarder_ad = true needs forwarders: the validating resolvers whose AD bit is trusted";
    return false;
  }
  if (!settings_.trust_anchor_file.empty()) {
    *error = fmt::format("trust_forwarder_ad = true and trust_anchor_file \"{}\" exclude each other: either the "
                         "forwarders validate (trust_forwarder_ad) or tlspolicyd does (trust_anchor_file)",
                         settings_.trust_anchor_file);
    return false;
  }
  std::string csv;
  for (auto& f : settings_.forwarders) {
    std::string s = ares_server(f);
    if (s.empty()) {
      *error = fmt::format("forwarder \"{}\" is not IP[@PORT]", f);
      return false;
    }
    if (!csv.empty()) csv += ',';
    csv += s;
  }
  static std::once_flag once;
  static int lib_status = ARES_SUCCESS;
  std::call_once(once, [] { lib_status = ares_library_init(ARES_LIB_INIT_ALL); });
  if (lib_status != ARES_SUCCESS) {
    *error = fmt::format("c-ares: {}", ares_strerror(lib_status));
    return false;
  }
  ep_ = epoll_create1(EPOLL_CLOEXEC);
  tfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (ep_ < 0 || tfd_ < 0) {
    *error = fmt::format("epoll/timerfd: {}", std::strerror(errno));
    return false;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = tfd_;
  if (epoll_ctl(ep_, EPOLL_CTL_ADD, tfd_, &ev) < 0) {
    *error = fmt::format("epoll: {}", std::strerror(errno));
    return false;
  }
  ares_options o{};
  o.sock_state_cb = &ForwarderBackend::on_socket;
  o.sock_state_cb_data = this;
  // Two tries per forwarder, the second with twice the first's timeout
  // (c-ares doubles it): the next forwarder is asked after half of
  // query_timeout, and Resolver's own per-query timeout (query_timeout)
  // ends the question before c-ares gives up on its own (1.5 times it).
  o.tries = 2;
  o.timeout = std::max(50, settings_.query_timeout_ms / 2);
  // NOCHECKRESP: a SERVFAIL (how a validator says "bogus") or REFUSED
  // comes back to us as it is; without it c-ares asks the next forwarder
  // and, when all said so, reports "Could not contact DNS servers", which
  // hides the reason. The next forwarder is still asked on a timeout.
  o.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES | ARES_FLAG_NOCHECKRESP;
  int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TRIES | ARES_OPT_TIMEOUTMS | ARES_OPT_FLAGS;
  if (int st = ares_init_options(&ch_, &o, mask); st != ARES_SUCCESS) {
    ch_ = nullptr;
    *error = fmt::format("c-ares: {}", ares_strerror(st));
    return false;
  }
  if (int st = ares_set_servers_ports_csv(ch_, csv.c_str()); st != ARES_SUCCESS) {
    *error = fmt::format("forwarders \"{}\": {}", csv, ares_strerror(st));
    return false;
  }
  return true;
}

void ForwarderBackend::on_socket(void* data, ares_socket_t s, int readable, int writable) {
  auto* self = static_cast<ForwarderBackend*>(data);
  epoll_event ev{};
  ev.data.fd = s;
  ev.events = (readable ? EPOLLIN : 0u) | (writable ? EPOLLOUT : 0u);
  if (!readable && !writable) {
    epoll_ctl(self->ep_, EPOLL_CTL_DEL, s, nullptr);
    return;
  }
  if (epoll_ctl(self->ep_, EPOLL_CTL_MOD, s, &ev) < 0 && errno == ENOENT) epoll_ctl(self->ep_, EPOLL_CTL_ADD, s, &ev);
}

std::string ForwarderBackend::start(const std::string& key, const std::string& name, RrType type) {
  unsigned char* buf = nullptr;
  int len = 0;
  int st = ares_create_query(name.c_str(), ns_c_in, int(type), 0, 1 /* RD */, &buf, &len, kEdnsUdpSize);
  if (st != ARES_SUCCESS) return fmt::format("c-ares: {}", ares_strerror(st));
  if (len >= 4) buf[3] |= 0x20;  // AD (RFC 6840 5.7); the header's 4th byte: RA Z AD CD RCODE
  uint64_t token = next_token_++;
  queries_[token] = Query{key, name, type};
  by_key_[key] = token;
  starting_ = true;
  start_error_.clear();
  ares_send(ch_, buf, len, &ForwarderBackend::on_answer, new Ticket{this, token});
  starting_ = false;
  ares_free_string(buf);
  if (!start_error_.empty()) {  // failed at once (no memory, no server): said by start()
    queries_.erase(token);
    by_key_.erase(key);
    return start_error_;
  }
  arm_timer();
  return {};
}

void ForwarderBackend::cancel(const std::string& key) {
  // c-ares 1.18 cancels only all queries at once: forget this one, its
  // late callback finds no token and delivers nothing.
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return;
  queries_.erase(it->second);
  by_key_.erase(it);
}

void ForwarderBackend::on_answer(void* arg, int status, int timeouts, unsigned char* abuf, int alen) {
  (void)timeouts;
  std::unique_ptr<Ticket> t(static_cast<Ticket*>(arg));
  if (status == ARES_EDESTRUCTION) return;
  ForwarderBackend* self = t->self;
  if (self->starting_) {
    self->start_error_ = fmt::format("c-ares: {}", ares_strerror(status));
    return;
  }
  auto it = self->queries_.find(t->token);
  if (it == self->queries_.end()) return;  // cancelled (timed out in Resolver)
  Query q = std::move(it->second);
  self->queries_.erase(it);
  if (auto k = self->by_key_.find(q.key); k != self->by_key_.end() && k->second == t->token) self->by_key_.erase(k);
  Clock::duration keep{};
  Resolver::Answer a;
  if (status != ARES_SUCCESS || !abuf) {
    auto f = std::make_shared<DnsRecordSet>();
    f->name = q.name;
    f->type = rr_type_name(q.type);
    if (status == ARES_EREFUSED)
      f->error = "REFUSED by the forwarders";
    else
      f->error = fmt::format("forwarders: {}", ares_strerror(status));
    keep = std::chrono::seconds(self->settings_.failure_ttl);
    a = std::move(f);
  } else {
    a = dns::reply_answer(q.name, q.type, abuf, size_t(std::max(0, alen)), self->settings_, &keep);
  }
  self->deliver_(q.key, std::move(a), keep);
}

void ForwarderBackend::process() {
  epoll_event evs[32];
  int n = epoll_wait(ep_, evs, 32, 0);
  for (int i = 0; i < n; ++i) {
    int fd = evs[i].data.fd;
    if (fd == tfd_) {
      uint64_t ticks;
      ssize_t r = ::read(tfd_, &ticks, sizeof ticks);
      (void)r;
      continue;
    }
    bool rd = evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP), wr = evs[i].events & EPOLLOUT;
    ares_process_fd(ch_, rd ? fd : ARES_SOCKET_BAD, wr ? fd : ARES_SOCKET_BAD);
  }
  ares_process_fd(ch_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // retransmissions and c-ares's timeouts
  arm_timer();
}

void ForwarderBackend::arm_timer() {
  itimerspec its{};
  timeval tv{};
  if (ares_timeout(ch_, nullptr, &tv)) {
    its.it_value.tv_sec = tv.tv_sec;
    its.it_value.tv_nsec = long(tv.tv_usec) * 1000;
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;  // 0 would disarm
  }
  timerfd_settime(tfd_, 0, &its, nullptr);
}

}  // namespace

namespace dns {

Resolver::Answer reply_answer(const std::string& qname, RrType qtype, const uint8_t* abuf, size_t alen,
                              const DiscoverySettings& settings, Resolver::Clock::duration* keep) {
  auto a = std::make_shared<DnsRecordSet>();
  a->name = qname;
  a->type = rr_type_name(qtype);
  *keep = std::chrono::seconds(settings.failure_ttl);
  ns_msg msg;
  if (alen > 65535 || ns_initparse(abuf, int(alen), &msg) < 0) {
    a->error = "malformed reply from the forwarder";
    return a;
  }
  int rcode = ns_msg_getflag(msg, ns_f_rcode);
  if (rcode != ns_r_noerror && rcode != ns_r_nxdomain) {
    a->error = fmt::format("{} (rcode {}) from the forwarder", rcode_name(rcode), rcode);
    if (rcode == ns_r_servfail) a->error += ": bogus data, or the resolver failed";
    return a;
  }
  a->security = ns_msg_getflag(msg, ns_f_ad) ? DnsSecurity::secure : DnsSecurity::insecure;
  // The records of the question's type at the name, following CNAMEs from
  // the question's name as libunbound does (a bounded number of hops).
  const unsigned char* eom = ns_msg_end(msg);
  std::string cur = qname;
  uint32_t ttl = std::numeric_limits<uint32_t>::max();
  int count = ns_msg_count(msg, ns_s_an);
  for (int hop = 0; hop < 16; ++hop) {
    std::string next;
    for (int i = 0; i < count; ++i) {
      ns_rr rr;
      if (ns_parserr(&msg, ns_s_an, i, &rr) < 0) {
        a->error = "malformed reply from the forwarder";
        a->data.clear();
        return a;
      }
      if (ns_rr_class(rr) != ns_c_in || !same_name(ns_rr_name(rr), cur)) continue;
      const unsigned char* rd = ns_rr_rdata(rr);
      size_t rdlen = ns_rr_rdlen(rr);
      if (ns_rr_type(rr) == ns_t_cname && qtype != RrType(ns_t_cname)) {
        char target[NS_MAXDNAME];
        if (ns_name_uncompress(ns_msg_base(msg), eom, rd, target, sizeof target) < 0) {
          a->error = "malformed CNAME in the forwarder's reply";
          a->data.clear();
          return a;
        }
        next = target;
        ttl = std::min(ttl, ns_rr_ttl(rr));
        continue;
      }
      if (ns_rr_type(rr) != int(qtype)) continue;
      std::optional<std::string> t;
      if (qtype == RrType::MX && rdlen >= 3) {  // the exchange may be compressed
        uint8_t buf[2 + NS_MAXCDNAME];
        buf[0] = rd[0];
        buf[1] = rd[1];
        if (ns_name_unpack(ns_msg_base(msg), eom, rd + 2, buf + 2, sizeof buf - 2) >= 0) {
          size_t n = unpacked_len(buf + 2, sizeof buf - 2);
          if (n) t = rdata_text(qtype, buf, 2 + n);
        }
      } else {
        t = rdata_text(qtype, rd, rdlen);
      }
      if (!t) {
        a->status = DnsStatus::failed;
        a->data.clear();
        a->error = fmt::format("malformed {} record", rr_type_name(qtype));
        return a;
      }
      ttl = std::min(ttl, ns_rr_ttl(rr));
      a->data.push_back(std::move(*t));
    }
    if (!a->data.empty() || next.empty()) break;
    cur = next;
  }
  if (rcode == ns_r_nxdomain || a->data.empty()) {
    a->status = rcode == ns_r_nxdomain ? DnsStatus::nxdomain : DnsStatus::nodata;
    a->data.clear();  // NXDOMAIN with records in the answer (found by fuzz_dns_reply): no data
    long neg = negative_ttl(abuf, alen);
    if (neg < 0) neg = 0;  // no SOA: not cached
    neg = std::min<long>(neg, settings.negative_ttl_max);
    a->ttl = uint32_t(neg);
    *keep = std::chrono::seconds(neg);
    return a;
  }
  a->status = DnsStatus::ok;
  a->ttl = ttl;
  *keep = std::chrono::seconds(ttl);
  return a;
}

}  // namespace dns

std::unique_ptr<DnsBackend> make_forwarder_backend(const DiscoverySettings& s, std::string* error) {
  auto b = std::make_unique<ForwarderBackend>(s);
  if (!b->init(error)) return nullptr;
  return b;
}

}  // namespace tlspolicy
