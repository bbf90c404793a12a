// Listening sockets from "inet:IP:PORT" and "unix:/path" endpoints, opened
// (as root, before privileges are dropped) with the configured owner and mode.
#pragma once
#include <string>

#include "policy/snapshot.hpp"

namespace tlspolicy {

// Returns a non-blocking listening fd, or -1 with *error set.
int open_listener(const std::string& endpoint, const DaemonSettings& d, std::string* error);

}  // namespace tlspolicy
