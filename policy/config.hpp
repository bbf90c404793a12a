// Loading the configuration: one libconfig file (with @include) plus the
// one-entry-per-line list files it names, compiled into a Snapshot. Every
// problem is reported as "file:line: message", and loading goes on to report
// them all; a snapshot is returned only when there were none.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "policy/snapshot.hpp"

namespace tlspolicy {

struct Diagnostic {
  std::string file;
  int line = 0;
  std::string message;
  std::string text(std::string_view severity = "error") const;  // "file:line: error: message"
  std::string located() const;                                   // "file:line: message"
};

struct LoadResult {
  std::shared_ptr<const Snapshot> snapshot;  // null when errors is not empty
  std::vector<Diagnostic> errors;
  std::vector<Diagnostic> warnings;
  std::vector<std::string> files;  // every file read, for the daemon's change watch
};

LoadResult load_policy(const std::string& path);

constexpr const char* kDefaultConfig = "/etc/tlspolicy/tlspolicy.conf";

}  // namespace tlspolicy
