// Live reload: SIGHUP or a change to the config file or any list file it
// read builds a new snapshot on a worker thread; the event loop swaps it in
// when it is complete, or logs the errors and keeps the old one.
//
// What counts as a change, and when it is acted on, is about admins' edit
// habits: inotify on the files' directories (editors replace files by rename,
// config management swaps directories and symlinks), on symlink targets too,
// a settle delay so that "truncate, then write" is read once, complete, and
// a periodic stat of every file as the backstop for any path inotify misses.
// A reload started by a file change that would drop a large share of the
// enforcing entries at once is refused (a truncated list); SIGHUP forces it.
#pragma once
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "policy/config.hpp"

namespace tlspolicy {

class Reloader {
 public:
  using Clock = std::chrono::steady_clock;
  // How long the files must be quiet before a change is read, and the most a
  // stream of changes can postpone it.
  static constexpr auto kSettle = std::chrono::milliseconds(500);
  static constexpr auto kMaxSettle = std::chrono::seconds(5);
  // The backstop: every file is stat()ed this often.
  static constexpr auto kRecheck = std::chrono::seconds(2);

  // on_done runs on the event loop's thread with the load result and its duration.
  Reloader(std::string config, std::function<void(LoadResult, double ms)> on_done);
  ~Reloader();
  int inotify_fd() const { return inotify_fd_; }
  int done_fd() const { return done_fd_; }
  int timer_fd() const { return timer_fd_; }

  // Watches these files (adding to those already watched unless replace).
  void watch_files(const std::vector<std::string>& files, bool replace = true);
  // Told the outcome of the reload a request led to: whether the new policy
  // is served, and the log's words for it. Runs on the event loop.
  using Waiter = std::function<void(bool ok, const std::string& text)>;
  // Starts a reload now (or queues one behind the running one). forced skips
  // the shrink guard: for SIGHUP, the admin's explicit request.
  void request(const std::string& why, bool forced = false, Waiter waiter = {});
  // A file changed: reload once the files have been quiet for kSettle.
  void changed(const std::string& why);
  void on_inotify();
  void on_timer();
  void on_done();
  // The snapshot being served: the shrink guard's baseline.
  void set_current(std::shared_ptr<const Snapshot> s);
  // Frees a replaced snapshot off the event loop (a 1M-rule one takes a while).
  void retire(std::shared_ptr<const Snapshot> old);

 private:
  // What stat() says of a file; a change in any field means "read it again".
  struct Stamp {
    bool exists = false;
    dev_t dev = 0;
    ino_t ino = 0, link_ino = 0;
    off_t size = 0;
    long long mtime_ns = 0, ctime_ns = 0;
    bool operator==(const Stamp&) const = default;
  };
  static Stamp stamp(const std::string& path);
  void recheck_loop();
  void start_next();

  std::string config_;
  std::function<void(LoadResult, double)> on_done_;
  int inotify_fd_ = -1, done_fd_ = -1, timer_fd_ = -1;
  std::map<int, std::string> dirs_;             // watch descriptor -> directory
  std::set<std::pair<std::string, std::string>> names_;  // (directory, file name) to react to
  std::set<std::string> unwatchable_;                    // missing directories, warned about once
  std::map<std::string, Stamp> stamps_;  // every file read, as the last load saw it (mutex_)
  std::thread worker_, reaper_, checker_;
  bool running_ = false;
  // Reloads asked for while one runs: forced and guarded ones kept apart.
  bool want_forced_ = false, want_plain_ = false;
  std::vector<Waiter> forced_waiters_, plain_waiters_, running_waiters_;
  // The periodic check's thread (all under mutex_).
  std::condition_variable recheck_wake_;
  bool stopping_ = false, loading_ = false;
  std::string recheck_saw_;  // a file it saw change
  bool watching_ = false;  // the first watch_files() has run
  // A change waiting for the files to settle.
  bool settling_ = false;
  std::string settle_why_;
  Clock::time_point settle_first_{}, settle_last_{};
  std::mutex mutex_;  // guards the worker's hand-over below
  LoadResult result_;
  std::map<std::string, Stamp> result_stamps_;
  std::shared_ptr<const Snapshot> current_;
  double ms_ = 0;
};

}  // namespace tlspolicy
