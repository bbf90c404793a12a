// The libunbound backend of Resolver (see dns_backend.hpp): full recursion
// or forwarding, DNSSEC validated by libunbound itself with the trust
// anchor, or not validated at all without one.
#include <fcntl.h>
#include <fmt/format.h>
#include <unbound.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "discovery/dns_backend.hpp"

namespace tlspolicy {
namespace {

class UnboundBackend final : public DnsBackend {
 public:
  explicit UnboundBackend(const DiscoverySettings& s) : settings_(s) {}
  ~UnboundBackend() override {
    if (ctx_) {
      for (auto& [k, q] : queries_) ub_cancel(ctx_, q->async_id);
      ub_ctx_delete(ctx_);
    }
  }
  bool init(std::string* error);
  int fd() const override { return ub_fd(ctx_); }
  std::string start(const std::string& key, const std::string& name, RrType type) override;
  void cancel(const std::string& key) override;
  void process() override {
    int e = ub_process(ctx_);
    (void)e;  // an error here means a broken pipe to libunbound's thread: the timeouts fail the queries
  }
  std::string_view name() const override { return "libunbound"; }

 private:
  struct Query {
    UnboundBackend* self;
    std::string key, name;
    RrType type;
    int async_id = 0;
  };
  static void on_result(void* mydata, int err, ub_result* result);
  Resolver::Answer make_answer(const Query& q, int err, ub_result* r, Clock::duration* keep) const;

  DiscoverySettings settings_;
  ub_ctx* ctx_ = nullptr;
  std::unordered_map<std::string, std::unique_ptr<Query>> queries_;
};

bool UnboundBackend::init(std::string* error) {
  ctx_ = ub_ctx_create();
  if (!ctx_) {
    *error = "cannot create the libunbound context";
    return false;
  }
  auto fail = [&](std::string what, int err) {
    *error = fmt::format("{}: {}", what, ub_strerror(err));
    return false;
  };
  // A thread of libunbound's runs the queries; the default would fork.
  if (int e = ub_ctx_async(ctx_, 1)) return fail("ub_ctx_async", e);
  // Forwarders on loopback (a local validating resolver, the test fixture)
  // are refused by default; names under test. are a local zone by default.
  for (auto [opt, val] : {std::pair{"do-not-query-localhost:", "no"}, std::pair{"local-zone:", "test. transparent"}})
    if (int e = ub_ctx_set_option(ctx_, opt, val)) return fail(fmt::format("option {} {}", opt, val), e);
  for (auto& f : settings_.forwarders)
    if (int e = ub_ctx_set_fwd(ctx_, f.c_str())) return fail(fmt::format("forwarder \"{}\"", f), e);
  // (A forwarder's AD bit is no use here: libunbound hands back its own
  // rendering of an answer, whose AD bit is its own validator's verdict.
  // trust_forwarder_ad = true therefore uses forwarder_backend.cpp.)
  if (!settings_.trust_anchor_file.empty()) {
    // libunbound reads the file when the first query starts: check now that
    // this user can read it, so the error is said at start (or reload).
    int fd = ::open(settings_.trust_anchor_file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      *error = fmt::format("trust anchor {}: {}", settings_.trust_anchor_file, std::strerror(errno));
      return false;
    }
    ::close(fd);
    // DS or DNSKEY records in zone-file format (/usr/share/dns/root.key is
    // one). An RFC 5011 auto-trust file would need ub_ctx_add_ta_autr and a
    // writable file: not offered.
    if (int e = ub_ctx_add_ta_file(ctx_, settings_.trust_anchor_file.c_str()))
      return fail(fmt::format("trust anchor {}", settings_.trust_anchor_file), e);
  }
  if (ub_fd(ctx_) < 0) {
    *error = "cannot watch libunbound's descriptor";
    return false;
  }
  return true;
}

std::string UnboundBackend::start(const std::string& key, const std::string& name, RrType type) {
  auto q = std::make_unique<Query>();
  q->self = this;
  q->key = key;
  q->name = name;
  q->type = type;
  int err = ub_resolve_async(ctx_, name.c_str(), int(type), 1 /* IN */, q.get(), &UnboundBackend::on_result,
                             &q->async_id);
  if (err) return fmt::format("libunbound: {}", ub_strerror(err));
  queries_[key] = std::move(q);
  return {};
}

void UnboundBackend::cancel(const std::string& key) {
  auto it = queries_.find(key);
  if (it == queries_.end()) return;
  ub_cancel(ctx_, it->second->async_id);
  queries_.erase(it);
}

void UnboundBackend::on_result(void* mydata, int err, ub_result* result) {
  auto* q = static_cast<Query*>(mydata);
  UnboundBackend* self = q->self;
  Clock::duration keep{};
  Resolver::Answer a = self->make_answer(*q, err, result, &keep);
  if (result) ub_resolve_free(result);
  std::string key = q->key;
  self->queries_.erase(key);  // frees q
  self->deliver_(key, std::move(a), keep);
}

Resolver::Answer UnboundBackend::make_answer(const Query& q, int err, ub_result* r, Clock::duration* keep) const {
  auto a = std::make_shared<DnsRecordSet>();
  a->name = q.name;
  a->type = rr_type_name(q.type);
  auto failure = std::chrono::seconds(settings_.failure_ttl);
  *keep = failure;
  if (err || !r) {
    a->error = fmt::format("libunbound: {}", ub_strerror(err));
    return a;
  }
  if (r->bogus) {
    a->security = DnsSecurity::bogus;
    a->error = fmt::format("DNSSEC validation failed (bogus): {}", r->why_bogus ? r->why_bogus : "no reason given");
    return a;
  }
  a->security = r->secure ? DnsSecurity::secure : DnsSecurity::insecure;
  if (r->rcode != 0 && !r->nxdomain) {
    a->error = fmt::format("{} (rcode {})", dns::rcode_name(r->rcode), r->rcode);
    return a;
  }
  if (r->nxdomain || !r->havedata) {
    a->status = r->nxdomain ? DnsStatus::nxdomain : DnsStatus::nodata;
    long neg = dns::negative_ttl(static_cast<const uint8_t*>(r->answer_packet), size_t(std::max(0, r->answer_len)));
    if (neg < 0) neg = std::max(0, r->ttl);
    neg = std::min<long>(neg, settings_.negative_ttl_max);
    a->ttl = uint32_t(neg);
    *keep = std::chrono::seconds(neg);
    return a;
  }
  a->status = DnsStatus::ok;
  a->ttl = uint32_t(std::max(0, r->ttl));
  *keep = std::chrono::seconds(a->ttl);
  for (int i = 0; r->data[i]; ++i) {
    auto t = dns::rdata_text(q.type, reinterpret_cast<const uint8_t*>(r->data[i]), size_t(r->len[i]));
    if (!t) {
      a->status = DnsStatus::failed;
      a->data.clear();
      a->error = fmt::format("malformed {} record", rr_type_name(q.type));
      *keep = failure;
      return a;
    }
    a->data.push_back(std::move(*t));
  }
  return a;
}

}  // namespace

std::unique_ptr<DnsBackend> make_unbound_backend(const DiscoverySettings& s, std::string* error) {
  auto b = std::make_unique<UnboundBackend>(s);
  if (!b->init(error)) return nullptr;
  return b;
}

}  // namespace tlspolicy
