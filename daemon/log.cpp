// See log.hpp. stderr lines carry a timestamp and severity like syslog's.
#include "daemon/log.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>
#include <mutex>

namespace tlspolicy {
namespace {
bool g_stderr = true;
std::mutex g_mutex;
}  // namespace

void log_init(bool to_stderr) {
  g_stderr = to_stderr;
  if (!to_stderr) openlog("tlspolicyd", LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void log_line(int priority, const std::string& text) {
  if (!g_stderr) {
    syslog(priority, "%s", text.c_str());
    return;
  }
  const char* sev = priority <= LOG_ERR ? "error: " : priority == LOG_WARNING ? "warning: " : "";
  auto now = std::chrono::system_clock::now();
  std::lock_guard lock(g_mutex);
  fmt::print(stderr, "{:%Y-%m-%dT%H:%M:%S} tlspolicyd: {}{}\n", fmt::localtime(std::chrono::system_clock::to_time_t(now)),
             sev, text);
  fflush(stderr);
}

}  // namespace tlspolicy
