// See log.hpp. stderr lines carry a timestamp and severity like syslog's.
// The queue is a mutex and a deque: one writer, a few producers, lines of a
// hundred bytes; a lock-free ring would buy nothing measurable here.
#include "daemon/log.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace tlspolicy {

namespace {

// Queue bound: beyond this many bytes of pending lines, new ones are dropped.
constexpr size_t kMaxQueuedBytes = 1 << 20;

struct Line {
  int priority;
  std::string text;
};

bool g_stderr = true;
std::mutex g_mutex;
std::condition_variable g_wake, g_idle;
std::deque<Line> g_queue;  // guarded by g_mutex, as are the fields below
size_t g_queued_bytes = 0;
unsigned long g_dropped = 0;
bool g_running = false, g_stopping = false, g_writing = false, g_stalled = false;
std::thread g_writer;

// The timestamp prefix is formatted once per second, not once per line
// (only the writer, or a caller holding g_mutex, formats).
time_t g_stamp_time = 0;
std::string g_stamp;

void append_line(std::string& out, int priority, const std::string& text) {
  const char* sev = priority <= LOG_ERR ? "error: " : priority == LOG_WARNING ? "warning: " : "";
  auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  if (now != g_stamp_time) {
    g_stamp_time = now;
    std::tm tm{};
    localtime_r(&now, &tm);
    g_stamp = fmt::format("{:%Y-%m-%dT%H:%M:%S} tlspolicyd: ", tm);
  }
  out += g_stamp;
  out += sev;
  out += text;
  out += '\n';
}

// Writes lines to the log; may block for as long as the log does.
void emit(std::deque<Line>& lines) {
  if (!g_stderr) {
    for (auto& l : lines) syslog(l.priority, "%s", l.text.c_str());
    return;
  }
  std::string out;
  for (auto& l : lines) append_line(out, l.priority, l.text);
  fwrite(out.data(), 1, out.size(), stderr);
  fflush(stderr);
}

void writer() {
  std::unique_lock lock(g_mutex);
  for (;;) {
    g_wake.wait(lock, [] { return !g_queue.empty() || g_dropped || g_stopping; });
    if (g_queue.empty() && !g_dropped && g_stopping) break;
    std::deque<Line> batch;
    batch.swap(g_queue);
    g_queued_bytes = 0;
    if (g_dropped) {
      batch.push_back({LOG_WARNING, fmt::format("{} log lines dropped: the log did not keep up (syslog or the "
                                                "journal stalled?)",
                                                g_dropped)});
      g_dropped = 0;
    }
    g_writing = true;
    lock.unlock();
    emit(batch);
    lock.lock();
    g_writing = false;
    g_idle.notify_all();
  }
}

void enqueue(int priority, const std::string& text, bool wake) {
  std::unique_lock lock(g_mutex);
  if (!g_running) {
    std::deque<Line> one{{priority, text}};
    emit(one);
    return;
  }
  if (g_queued_bytes + text.size() > kMaxQueuedBytes) {
    ++g_dropped;
    return;
  }
  g_queued_bytes += text.size();
  g_queue.push_back({priority, text});
  if (wake) g_wake.notify_one();
}

}  // namespace

void log_init(bool to_stderr) {
  g_stderr = to_stderr;
  if (!to_stderr) openlog("tlspolicyd", LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void log_start() {
  std::lock_guard lock(g_mutex);
  if (g_running) return;
  g_running = true;
  g_stopping = false;
  g_writer = std::thread(writer);
}

bool log_stop() {
  {
    std::unique_lock lock(g_mutex);
    if (!g_running) return !g_stalled;
    g_wake.notify_one();
    // A stalled log must not hold up the exit for long.
    g_idle.wait_for(lock, std::chrono::seconds(2), [] { return g_queue.empty() && !g_writing; });
    if (!g_queue.empty() || g_writing) {
      g_writer.detach();  // stuck in a write; exit without it
      g_running = false;
      g_stalled = true;
      return false;
    }
    g_stopping = true;
    g_running = false;
  }
  g_wake.notify_one();
  g_writer.join();
  return true;
}

void log_line(int priority, const std::string& text) { enqueue(priority, text, true); }

void log_deferred(int priority, const std::string& text) { enqueue(priority, text, false); }

void log_flush() {
  std::lock_guard lock(g_mutex);
  if (!g_queue.empty()) g_wake.notify_one();
}

}  // namespace tlspolicy
