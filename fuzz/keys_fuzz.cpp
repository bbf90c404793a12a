// libFuzzer target: key, address, domain, CIDR and policy parsers, and every
// map's query() with --explain, on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/policy_fixture.hpp"
#include "policy/level.hpp"
#include "policy/maps.hpp"
#include "policy/names.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tlspolicy;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const Snapshot& s = fuzz::snapshot();
  for (auto m : {MapName::tls_policy, MapName::transport, MapName::sender_transport, MapName::inbound}) {
    Answer a = query(s, m, in, true);
    (void)explain_text(s, m, in, a);
    if (a.found && a.value.empty()) __builtin_trap();  // "OK " with nothing is a Postfix error
  }
  std::string err;
  for (auto d : {Dimension::destination, Dimension::sender, Dimension::inbound_sender,
                 Dimension::inbound_recipient, Dimension::client}) {
    auto e = parse_entry(in, d, true, &err);
    if (!e && err.empty()) __builtin_trap();  // refusals always say why
  }
  auto p = parse_tls_policy(in, &err);
  if (p) {
    // A valid policy re-parses to itself.
    std::string again;
    auto q = parse_tls_policy(p->value(), &again);
    if (!q || !(*q == *p)) __builtin_trap();
  }
  (void)normalize_address(in, "+-");
  (void)parse_ip(in);
  return 0;
}
