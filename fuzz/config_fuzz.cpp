// libFuzzer target: the config and list loader on arbitrary file contents.
// The input is split at the first NUL byte: before it the config file,
// after it a list file the config may name as "l".
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include "policy/config.hpp"
#include "policy/maps.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::string dir = [] {
    char d[] = "/tmp/tlspolicy-cfuzz-XXXXXX";
    return std::string(mkdtemp(d) ? d : "/tmp");
  }();
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto nul = in.find('\0');
  std::string_view conf = in.substr(0, nul);
  std::string_view list = nul == std::string_view::npos ? std::string_view() : in.substr(nul + 1);
  std::ofstream(dir + "/c.conf", std::ios::binary) << conf;
  std::ofstream(dir + "/l", std::ios::binary) << list;
  auto r = tlspolicy::load_policy(dir + "/c.conf");
  if (r.snapshot) {
    // A snapshot that loaded must answer without trouble.
    for (auto key : {"partner.test", "[10.1.2.3]:25", "a@b.test", ".x.y", "from=a@b to=c@d bits=0"})
      for (auto m : {tlspolicy::MapName::tls_policy, tlspolicy::MapName::transport,
                     tlspolicy::MapName::sender_transport, tlspolicy::MapName::inbound})
        (void)tlspolicy::query(*r.snapshot, m, key, true);
    // And merge with discovered facts: a failure, and a secure MX set
    // whose hosts span every TLSA state.
    using namespace tlspolicy;
    static const DestinationFacts facts[] = {
        [] {
          DestinationFacts f;
          f.destination = "partner.test";
          f.failed = true;
          f.error = "SERVFAIL";
          return f;
        }(),
        [] {
          DestinationFacts f;
          f.destination = "partner.test";
          f.mx_security = DnsSecurity::secure;
          TlsaState states[] = {TlsaState::usable, TlsaState::unusable, TlsaState::failed, TlsaState::none};
          const char* ips[] = {"10.1.2.3", "2001:db8::1", "192.0.2.1", "127.0.0.1"};
          for (int i = 0; i < 4; ++i) {
            MxHost h;
            h.name = "mx" + std::to_string(i) + ".partner.test";
            h.addrs.push_back(*parse_ip(ips[i]));
            h.tlsa = states[i];
            f.mx.push_back(h);
          }
          f.answers.push_back({"partner.test", "MX", DnsStatus::ok, DnsSecurity::secure, 300, {"10 mx0.partner.test"}, {}});
          return f;
        }(),
    };
    for (auto& f : facts) {
      (void)discovery_target(*r.snapshot, MapName::tls_policy, "partner.test", true);
      Answer a = query(*r.snapshot, MapName::tls_policy, "partner.test", true, &f);
      (void)explain_text(*r.snapshot, MapName::tls_policy, "partner.test", a);
    }
  } else if (r.errors.empty()) {
    __builtin_trap();  // no snapshot must mean at least one error
  }
  return 0;
}
