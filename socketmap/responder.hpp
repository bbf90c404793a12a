// The socketmap request handler: "<map> <key>" in, "OK <value>" /
// "NOTFOUND " / "TEMP <reason>" / "PERM <reason>" out, answered by policy/maps (the same
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

// facts: what discovery learned about the request's discovery_target()
// (nullptr: the static answer). An answer with temp set is "TEMP <reason>".
// static_answer: the static answer discovery_target() already computed for
// this request (its static_out), used (and moved from) instead of looking
// the key up again; nullptr to look it up.
SocketmapReply answer_socketmap(const Snapshot& s, std::string_view request,
                                const DestinationFacts* facts = nullptr, Answer* static_answer = nullptr);
// "<map> <key>" of a known map, else false (answer_socketmap says why).
bool split_request(std::string_view request, MapName* map, std::string_view* key);

}  // namespace tlspolicy
