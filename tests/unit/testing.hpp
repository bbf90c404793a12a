// Test helpers: write a config (and list files) into a fresh temp directory
// and load it the way the daemon does.
#pragma once
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include "policy/config.hpp"

namespace testing {

inline std::string temp_dir() {
  char tmpl[] = "/tmp/tlspolicy-test-XXXXXX";
  const char* d = mkdtemp(tmpl);
  return d ? d : "/tmp";
}

// Writes tlspolicy.conf plus the given extra files; returns the load result.
inline tlspolicy::LoadResult load_text(const std::string& conf,
                                       const std::map<std::string, std::string>& files = {},
                                       std::string* dir_out = nullptr) {
  std::string dir = temp_dir();
  for (auto& [name, text] : files) std::ofstream(dir + "/" + name) << text;
  std::ofstream(dir + "/tlspolicy.conf") << conf;
  if (dir_out) *dir_out = dir;
  return tlspolicy::load_policy(dir + "/tlspolicy.conf");
}

}  // namespace testing
