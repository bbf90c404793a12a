// See reload.hpp.
#include "daemon/reload.hpp"

#include <fmt/format.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>

#include "daemon/log.hpp"

namespace tlspolicy {

namespace {
std::pair<std::string, std::string> split_path(const std::string& p) {
  auto slash = p.rfind('/');
  if (slash == std::string::npos) return {".", p};
  return {slash == 0 ? "/" : p.substr(0, slash), p.substr(slash + 1)};
}
}  // namespace

Reloader::Reloader(std::string config, std::function<void(LoadResult, double)> on_done)
    : config_(std::move(config)), on_done_(std::move(on_done)) {
  inotify_fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  done_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (inotify_fd_ < 0) log_line(LOG_WARNING, fmt::format("inotify: {}: reload on SIGHUP only", std::strerror(errno)));
}

Reloader::~Reloader() {
  if (worker_.joinable()) worker_.join();
  if (reaper_.joinable()) reaper_.join();
  if (inotify_fd_ >= 0) ::close(inotify_fd_);
  ::close(done_fd_);
}

// Watches the directory of every file (editors replace files by rename) and
// each directory's parent for the directory's own name, so that a directory
// deleted and recreated, or swapped in by rename (a common deploy step), is
// noticed too. Called after every reload, so watches follow the directories
// that exist now.
void Reloader::watch_files(const std::vector<std::string>& files, bool replace) {
  if (inotify_fd_ < 0) return;
  if (replace) names_.clear();
  std::set<std::string> dirs;
  for (auto& f : files) {
    auto [dir, name] = split_path(f);
    names_.insert({dir, name});
    dirs.insert(dir);
    if (dir != "/") {
      auto [parent, base] = split_path(dir);
      names_.insert({parent, base});
      dirs.insert(parent);
    }
  }
  std::string appeared;
  for (auto& dir : dirs) {
    // Same inode: the same watch descriptor comes back; a replaced
    // directory gets a new one.
    int wd = inotify_add_watch(inotify_fd_, dir.c_str(),
                               IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE |
                                   IN_DELETE_SELF | IN_MOVE_SELF);
    if (wd >= 0) {
      if (watching_ && !dirs_.count(wd)) appeared = dir;
      dirs_[wd] = dir;
      unwatchable_.erase(dir);
    } else if (unwatchable_.insert(dir).second) {
      log_line(LOG_WARNING, fmt::format("cannot watch {}: {}: reloading when it reappears", dir, std::strerror(errno)));
    }
  }
  watching_ = true;
  // Files written into a new directory before this watch existed sent no
  // event to us: read everything once more.
  if (!appeared.empty()) request(fmt::format("{} is a new directory", appeared));
}

void Reloader::on_inotify() {
  alignas(inotify_event) char buf[8192];
  std::string changed;
  for (;;) {
    ssize_t n = ::read(inotify_fd_, buf, sizeof buf);
    if (n <= 0) break;
    for (char* p = buf; p < buf + n;) {
      auto* ev = reinterpret_cast<inotify_event*>(p);
      p += sizeof(inotify_event) + ev->len;
      auto dir = dirs_.find(ev->wd);
      if (dir == dirs_.end()) continue;
      if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
        // The watched directory itself went away or moved: drop this watch
        // (a moved directory would keep reporting under its old name) and
        // reload, which watches whatever is at that path now.
        changed = dir->second;
        inotify_rm_watch(inotify_fd_, ev->wd);
        dirs_.erase(dir);
        continue;
      }
      if (ev->len == 0) continue;
      // A new file is empty at IN_CREATE (its IN_CLOSE_WRITE follows); a new
      // directory is complete and may be one we watch files in.
      if ((ev->mask & IN_CREATE) && !(ev->mask & IN_ISDIR)) continue;
      if (names_.count({dir->second, ev->name})) changed = dir->second + "/" + ev->name;
    }
  }
  if (!changed.empty()) request(fmt::format("{} changed", changed));
}

void Reloader::request(const std::string& why) {
  log_line(LOG_INFO, fmt::format("reloading: {}", why));
  if (running_) {
    pending_ = true;
    return;
  }
  running_ = true;
  if (worker_.joinable()) worker_.join();
  worker_ = std::thread([this] {
    // Lower priority than the event loop: lookups go first, the build waits.
    setpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)), 10);
    auto t0 = std::chrono::steady_clock::now();
    LoadResult r = load_policy(config_);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    {
      std::lock_guard lock(mutex_);
      result_ = std::move(r);
      ms_ = ms;
    }
    uint64_t one = 1;
    (void)!::write(done_fd_, &one, sizeof one);
  });
}

void Reloader::retire(std::shared_ptr<const Snapshot> old) {
  if (reaper_.joinable()) reaper_.join();
  reaper_ = std::thread([old = std::move(old)]() mutable {
    setpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)), 10);
    old.reset();
  });
}

void Reloader::on_done() {
  uint64_t v;
  if (::read(done_fd_, &v, sizeof v) != sizeof v) return;
  worker_.join();
  LoadResult r;
  double ms;
  {
    std::lock_guard lock(mutex_);
    r = std::move(result_);
    ms = ms_;
  }
  running_ = false;
  watch_files(r.files, r.snapshot != nullptr);  // a failed load keeps watching the old files too
  on_done_(std::move(r), ms);
  if (pending_) {
    pending_ = false;
    request("another change arrived during the reload");
  }
}

}  // namespace tlspolicy
