// Live reload: SIGHUP or a change to the config file or any list file it
// read (inotify on their directories, so editors that replace files by
// rename are seen) builds a new snapshot on a worker thread; the event loop
// swaps it in when it is complete, or logs the errors and keeps the old one.
#pragma once
#include <functional>
#include <memory>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "policy/config.hpp"

namespace tlspolicy {

class Reloader {
 public:
  // on_done runs on the event loop's thread with the load result and its duration.
  Reloader(std::string config, std::function<void(LoadResult, double ms)> on_done);
  ~Reloader();
  int inotify_fd() const { return inotify_fd_; }
  int done_fd() const { return done_fd_; }

  // Watches these files (adding to those already watched unless replace).
  void watch_files(const std::vector<std::string>& files, bool replace = true);
  void request(const std::string& why);  // start a reload (or queue one behind the running one)
  void on_inotify();
  void on_done();
  // Frees a replaced snapshot off the event loop (a 1M-rule one takes a while).
  void retire(std::shared_ptr<const Snapshot> old);

 private:
  std::string config_;
  std::function<void(LoadResult, double)> on_done_;
  int inotify_fd_ = -1, done_fd_ = -1;
  std::map<int, std::string> dirs_;             // watch descriptor -> directory
  std::set<std::pair<std::string, std::string>> names_;  // (directory, file name) to react to
  std::set<std::string> unwatchable_;                    // missing directories, warned about once
  std::thread worker_, reaper_;
  bool running_ = false, pending_ = false;
  bool watching_ = false;  // the first watch_files() has run
  std::mutex mutex_;
  LoadResult result_;
  double ms_ = 0;
};

}  // namespace tlspolicy
