// See responder.hpp.
#include "socketmap/responder.hpp"

#include <fmt/format.h>

namespace tlspolicy {

bool split_request(std::string_view request, MapName* map, std::string_view* key) {
  auto space = request.find(' ');
  if (space == std::string_view::npos) return false;
  auto m = parse_map_name(request.substr(0, space));
  if (!m) return false;
  *map = *m;
  *key = request.substr(space + 1);
  return true;
}

SocketmapReply answer_socketmap(const Snapshot& s, std::string_view request, const DestinationFacts* facts,
                                Answer* static_answer) {
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
  auto key = request.substr(space + 1);
  if (static_answer && !facts)
    r.answer = std::move(*static_answer);
  else
    r.answer = facts ? query(s, *map, key, false, facts, static_answer) : query(s, *map, key);
  if (r.answer.temp) {
    r.payload = "TEMP ";
    r.payload += printable(std::string_view(r.answer.value).substr(0, 1000));
  }
  else if (!r.answer.found)
    r.payload = "NOTFOUND ";
  else if (r.answer.value.size() + 3 > kMaxReply)
    r.payload = "PERM reply too long";
  else
    r.payload = "OK " + r.answer.value;
  return r;
}

}  // namespace tlspolicy
