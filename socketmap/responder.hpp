// The socketmap request handler: "<map> <key>" in, "OK <value>" /
// "NOTFOUND " / "PERM <reason>" out, answered by policy/maps (the same
// query() as `tlspolicy query`). Pure function of snapshot and request.
#pragma once
#include <string>
#include <string_view>

#include "policy/maps.hpp"

namespace tlspolicy {

constexpr size_t kMaxRequest = 10000;  // Postfix 3.12's own query limit
constexpr size_t kMaxReply = 100000;   // Postfix's reply limit

struct SocketmapReply {
  std::string payload;
  MapName map = MapName::tls_policy;
  bool known_map = false;
  Answer answer;
};

SocketmapReply answer_socketmap(const Snapshot& s, std::string_view request);

}  // namespace tlspolicy
