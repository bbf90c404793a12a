// Logging for tlspolicyd: syslog (facility mail, ident tlspolicyd) or, in
// foreground mode, stderr (systemd's journal). Thread-safe: the milter
// threads log too.
//
// Once log_start() has run, lines go through a bounded in-memory queue to
// one writer thread, so neither the event loop nor a milter thread ever
// waits for the log: a stalled syslog or journal used to stall every lookup.
// When the queue is full, lines are dropped and counted, and the count is
// logged as soon as there is room again.
#pragma once
#include <string>
#include <syslog.h>

namespace tlspolicy {

void log_init(bool to_stderr);
// Starts the writer thread (after daemonizing: threads do not survive fork).
// Before it, and after log_stop(), lines are written at once.
void log_start();
// Writes what is queued (waiting at most about two seconds for a stalled
// log) and stops the writer thread. False when the log is stalled: the
// writer is left blocked, and nothing more should be written to the log.
bool log_stop();
void log_line(int priority, const std::string& text);
// For the event loop's per-lookup lines: queued without waking the writer,
// which log_flush() does once per loop round (one write for many lines).
void log_deferred(int priority, const std::string& text);
void log_flush();

}  // namespace tlspolicy
