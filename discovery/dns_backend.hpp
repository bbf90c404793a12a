// The part of a Resolver (discovery/resolver.hpp) that talks DNS: one query
// per (name, type) in flight at a time, its answer handed back as a
// DnsRecordSet. Two implementations:
//  * unbound_backend.cpp: libunbound, which validates DNSSEC itself with a
//    trust anchor (or not at all without one);
//  * forwarder_backend.cpp: trust_forwarder_ad = true, queries sent with the
//    AD bit to validating forwarders whose AD bit is the verdict.
// The cache, coalescing, timeouts and LRU live in Resolver, shared by both.
// Private to discovery/.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "discovery/resolver.hpp"

namespace tlspolicy {

class DnsBackend {
 public:
  using Clock = Resolver::Clock;
  // An answer for the query started with `key`, to be cached for `keep`.
  using Deliver = std::function<void(const std::string& key, Resolver::Answer a, Clock::duration keep)>;

  virtual ~DnsBackend() = default;
  // Readable when process() has something to do.
  virtual int fd() const = 0;
  // Starts the query for (name, type), known as `key` until delivered or
  // cancelled. Never delivers from inside start(): "" when started, else
  // why not (the caller fails the waiters).
  virtual std::string start(const std::string& key, const std::string& name, RrType type) = 0;
  // The answer for `key` is no longer wanted: deliver nothing for it.
  virtual void cancel(const std::string& key) = 0;
  // Delivers (through deliver_) the answers that arrived; returns at once
  // when none did. deliver_ may start new queries.
  virtual void process() = 0;
  virtual std::string_view name() const = 0;

  Deliver deliver_;
};

std::unique_ptr<DnsBackend> make_unbound_backend(const DiscoverySettings& s, std::string* error);
std::unique_ptr<DnsBackend> make_forwarder_backend(const DiscoverySettings& s, std::string* error);

// Shared by both, so that they give identical DnsRecordSet data.
namespace dns {
// The presentation form of one record's uncompressed rdata; nullopt when
// malformed. A/AAAA: the address; MX: "10 mx.example.org"; TLSA:
// "3 1 1 <hex>"; TXT: the character-strings concatenated.
std::optional<std::string> rdata_text(RrType type, const uint8_t* p, size_t n);
// One uncompressed wire-format name in presentation form (lower case, no
// trailing dot, "." for the root); the bytes read, 0 when malformed.
size_t wire_name(const uint8_t* p, size_t n, std::string* out);
// The negative-caching TTL of a NXDOMAIN/NODATA reply packet (RFC 2308 5);
// -1 when it has no SOA.
long negative_ttl(const uint8_t* p, size_t n);
std::string_view rcode_name(int rcode);
// The answer to (qname, qtype) in a forwarder's reply packet (the trusted-
// forwarder backend): secure when its AD bit is set, CNAMEs followed, a
// SERVFAIL or malformed packet failed; *keep is how long to cache it.
// Pure, so fuzz/dns_reply_fuzz.cpp can feed it hostile packets.
Resolver::Answer reply_answer(const std::string& qname, RrType qtype, const uint8_t* reply, size_t len,
                              const DiscoverySettings& settings, Resolver::Clock::duration* keep);
}  // namespace dns

}  // namespace tlspolicy
