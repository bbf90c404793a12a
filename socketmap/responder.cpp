// See responder.hpp.
#include "socketmap/responder.hpp"

#include <fmt/format.h>

namespace tlspolicy {

SocketmapReply answer_socketmap(const Snapshot& s, std::string_view request) {
  SocketmapReply r;
  auto space = request.find(' ');
  if (space == std::string_view::npos) {
    r.payload = "PERM malformed request: expected \"<map> <key>\"";
    return r;
  }
  auto name = request.substr(0, space);
  auto map = parse_map_name(name);
  if (!map) {
    // Printable only: the name came from the client.
    std::string shown;
    for (char c : name.substr(0, 64)) shown += (c >= ' ' && c <= '~') ? c : '?';
    r.payload = fmt::format("PERM unknown map name \"{}\" (known: {})", shown, kMapNames);
    return r;
  }
  r.map = *map;
  r.known_map = true;
  r.answer = query(s, *map, request.substr(space + 1));
  if (!r.answer.found)
    r.payload = "NOTFOUND ";
  else if (r.answer.value.size() + 3 > kMaxReply)
    r.payload = "PERM reply too long";
  else
    r.payload = "OK " + r.answer.value;
  return r;
}

}  // namespace tlspolicy
