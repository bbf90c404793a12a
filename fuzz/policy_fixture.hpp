// A fixed policy with every entry kind, loaded once per fuzzing process.
#pragma once
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "policy/config.hpp"

namespace tlspolicy::fuzz {

inline std::shared_ptr<const Snapshot> snapshot_ptr() {
  static std::shared_ptr<const Snapshot> snap = [] {
    char dir[] = "/tmp/tlspolicy-fuzz-XXXXXX";
    if (!mkdtemp(dir)) abort();
    std::string path = std::string(dir) + "/f.conf";
    std::ofstream(path) << R"(
default = "may";
outbound = (
  { level = "encrypt"; to = [ "partner.test", ".subs.test", "*@exact.test", "a@b.test", "10.0.0.0/8", "2001:db8::/32" ]; },
  { level = "verify match=hostname"; to = [ "deep.partner.test" ]; },
  { level = "encrypt"; from = [ "finance@ours.test", "payroll.test" ]; }
);
inbound = (
  { from = [ "*@partner.test" ]; min_cipher_bits = 112; },
  { to = [ "legal", "*" ]; action = "monitor"; reply = "550 5.7.1 {rcpt} {sender} {bits} {version}"; },
  { clients = [ "192.0.2.0/24" ]; min_protocol = "TLSv1.2"; action = "tempfail"; }
);
)";
    auto r = load_policy(path);
    unlink(path.c_str());
    rmdir(dir);
    if (!r.snapshot) abort();
    return r.snapshot;
  }();
  return snap;
}

inline const Snapshot& snapshot() { return *snapshot_ptr(); }

}  // namespace tlspolicy::fuzz
