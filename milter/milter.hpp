// The libmilter front end of tlspolicyd: registers the callbacks, opens the
// socket (as root, before privileges are dropped) and runs smfi_main() on a
// thread of its own. libmilter is a process-wide singleton, hence the free
// functions.
#pragma once
#include <functional>
#include <string>

#include "policy/holder.hpp"

namespace tlspolicy {

using LogFn = void (*)(int priority, const std::string& text);

// Opens the listening socket; returns false with *error set on failure.
// log writes a line; log_deferred queues one that log_flush() then writes
// (the milter logs a callback's lines with one wake of the log writer).
bool milter_open(const std::string& endpoint, const DaemonSettings& d, const PolicyHolder& holder, LogFn log,
                 LogFn log_deferred, void (*log_flush)(), std::string* error);
// Runs the milter until milter_stop(); call on its own thread.
void milter_run();
void milter_stop();

}  // namespace tlspolicy
