// libFuzzer target: a forwarder's reply packet (trust_forwarder_ad = true,
// discovery/forwarder_backend.cpp) is network input: whatever bytes arrive,
// dns::reply_answer must not crash, loop or read out of bounds, and what it
// returns must be consistent (records only in an "ok" answer).
// The first byte picks the question's type; the rest is the packet.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "discovery/dns_backend.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tlspolicy;
  if (size < 1) return 0;
  static const RrType types[] = {RrType::MX, RrType::A, RrType::AAAA, RrType::TLSA, RrType::TXT};
  RrType type = types[data[0] % 5];
  static const DiscoverySettings settings;
  Resolver::Clock::duration keep{};
  auto a = dns::reply_answer("dane.dnssec.test", type, data + 1, size - 1, settings, &keep);
  if (!a) std::abort();
  if (a->status != DnsStatus::ok && !a->data.empty()) std::abort();
  if (a->status == DnsStatus::failed && a->error.empty()) std::abort();
  return 0;
}
