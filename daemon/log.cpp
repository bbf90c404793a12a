// See log.hpp. stderr lines carry a timestamp and severity like syslog's.
#include "daemon/log.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>
#include <iterator>
#include <mutex>

namespace tlspolicy {

namespace {

bool g_stderr = true;
std::mutex g_mutex;
std::string g_pending;  // stderr lines not yet written, guarded by g_mutex

// The timestamp prefix is formatted once per second, not once per line.
time_t g_stamp_time = 0;
std::string g_stamp;

void append_line(std::string& out, int priority, const std::string& text) {
  const char* sev = priority <= LOG_ERR ? "error: " : priority == LOG_WARNING ? "warning: " : "";
  auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  if (now != g_stamp_time) {
    g_stamp_time = now;
    g_stamp = fmt::format("{:%Y-%m-%dT%H:%M:%S} tlspolicyd: ", fmt::localtime(now));
  }
  out += g_stamp;
  out += sev;
  out += text;
  out += '\n';
}

void write_out() {
  if (g_pending.empty()) return;
  fwrite(g_pending.data(), 1, g_pending.size(), stderr);
  fflush(stderr);
  g_pending.clear();
}

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
  std::lock_guard lock(g_mutex);
  append_line(g_pending, priority, text);  // after any deferred lines: order kept
  write_out();
}

void log_deferred(int priority, const std::string& text) {
  if (!g_stderr) {
    syslog(priority, "%s", text.c_str());
    return;
  }
  std::lock_guard lock(g_mutex);
  append_line(g_pending, priority, text);
  if (g_pending.size() > (64 << 10)) write_out();
}

void log_flush() {
  if (!g_stderr) return;
  std::lock_guard lock(g_mutex);
  write_out();
}

}  // namespace tlspolicy
