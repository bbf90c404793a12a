// libFuzzer target: the socketmap request path, bytes as a client sends them
// (netstring framing, then map name and key), in arbitrary chunks.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/policy_fixture.hpp"
#include "socketmap/netstring.hpp"
#include "socketmap/responder.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& snap = tlspolicy::fuzz::snapshot();
  tlspolicy::NetstringReader reader(tlspolicy::kMaxRequest);
  // The first byte picks a chunk size, so splits at every offset get tried.
  size_t chunk = size ? (data[0] % 16) + 1 : 1;
  std::string out;
  for (size_t i = size ? 1 : 0; i < size; i += chunk) {
    reader.append(std::string_view(reinterpret_cast<const char*>(data) + i, std::min(chunk, size - i)));
    std::string_view req;
    tlspolicy::NetstringReader::Status st;
    while ((st = reader.next(&req)) == tlspolicy::NetstringReader::Status::ok) {
      auto reply = tlspolicy::answer_socketmap(snap, req);
      if (reply.payload.size() > tlspolicy::kMaxReply) __builtin_trap();
      tlspolicy::append_netstring(out, reply.payload);
    }
    if (st == tlspolicy::NetstringReader::Status::error) break;
  }
  return 0;
}
