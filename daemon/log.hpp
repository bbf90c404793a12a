// Logging for tlspolicyd: syslog (facility mail, ident tlspolicyd) or, in
// foreground mode, stderr. Thread-safe: the milter threads log too.
#pragma once
#include <string>
#include <syslog.h>

namespace tlspolicy {

void log_init(bool to_stderr);
void log_line(int priority, const std::string& text);

}  // namespace tlspolicy
