// Logging for tlspolicyd: syslog (facility mail, ident tlspolicyd) or, in
// foreground mode, stderr. Thread-safe: the milter threads log too.
#pragma once
#include <string>
#include <syslog.h>

namespace tlspolicy {

void log_init(bool to_stderr);
void log_line(int priority, const std::string& text);
// For the event loop's per-lookup lines: on stderr (foreground, systemd's
// journal) they are buffered and written together by log_flush() at the end
// of each loop round, one write instead of one per lookup; syslog gets each
// line at once.
void log_deferred(int priority, const std::string& text);
void log_flush();

}  // namespace tlspolicy
