// See reload.hpp.
#include "daemon/reload.hpp"

#include <fmt/format.h>
#include <malloc.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "daemon/log.hpp"

namespace tlspolicy {

namespace {
std::pair<std::string, std::string> split_path(const std::string& p) {
  auto slash = p.rfind('/');
  if (slash == std::string::npos) return {".", p};
  return {slash == 0 ? "/" : p.substr(0, slash), p.substr(slash + 1)};
}

// The worker's load, with the shrink guard applied unless forced. Never
// throws: anything thrown while loading (bad_alloc, a library's exception)
// becomes a load error, and the daemon keeps serving the old policy.
LoadResult guarded_load(const std::string& config, const std::shared_ptr<const Snapshot>& current, bool forced) {
  LoadResult r;
  try {
    r = load_policy(config);
    if (!r.snapshot || !current || forced) return r;
    // The guard in force is the one being served: an edit cannot switch
    // off the check that judges it.
    int guard = current->settings.daemon.reload_guard;
    if (guard >= 100) return r;
    std::vector<std::string> why;
    // Entries that go, by text: a list emptied while another grows by as
    // many entries counts as what it is, a loss.
    Shrink s = enforcing_shrink(*current, *r.snapshot, 10);
    if (s.gone > 0 && s.gone * 100 > s.before * size_t(guard)) {
      std::string gone;
      for (auto& e : s.examples) gone += (gone.empty() ? "" : ", ") + e;
      if (s.gone > s.examples.size()) gone += fmt::format(" and {} more", s.gone - s.examples.size());
      why.push_back(fmt::format("this change would remove {} of the {} entries that enforce TLS (more than "
                                "daemon.reload_guard = {}%): {}",
                                s.gone, s.before, guard, gone));
    }
    // A default that enforced TLS, weakened or removed, unenforces every
    // destination no rule names.
    auto default_level = [](const Snapshot& snap) {
      return snap.default_rule == kNone ? std::optional<Level>() : snap.rules[snap.default_rule].policy.level;
    };
    auto was = default_level(*current), now = default_level(*r.snapshot);
    if (was && enforces_tls(*was) && (!now || rank(*now) < rank(*was)))
      why.push_back(fmt::format("this change would weaken the default from {} to {}", level_name(*was),
                                now ? std::string(level_name(*now)) : "unset (Postfix's own level)"));
    if (why.empty()) return r;
    for (auto& w : why)
      r.errors.push_back({config, 0,
                          fmt::format("{}: refused, as a truncated or half-written file would look. If it is "
                                      "intended, reload with SIGHUP (systemctl reload tlspolicyd, or tlspolicy "
                                      "reload --force), which loads it anyway",
                                      w)});
    r.snapshot.reset();
  } catch (const std::exception& e) {
    r = LoadResult{};
    r.errors.push_back({config, 0, fmt::format("loading failed: {}", e.what())});
  } catch (...) {
    r = LoadResult{};
    r.errors.push_back({config, 0, "loading failed: unknown exception"});
  }
  return r;
}
}  // namespace

Reloader::Reloader(std::string config, std::function<void(LoadResult, double)> on_done)
    : config_(std::move(config)), on_done_(std::move(on_done)) {
  inotify_fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  done_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (inotify_fd_ < 0) log_line(LOG_WARNING, fmt::format("inotify: {}: reload on SIGHUP only", std::strerror(errno)));
  // One tick every 250 ms drives both the settle delay and the recheck.
  itimerspec ts{};
  ts.it_interval.tv_nsec = ts.it_value.tv_nsec = 250'000'000;
  if (timer_fd_ >= 0) timerfd_settime(timer_fd_, 0, &ts, nullptr);
  checker_ = std::thread([this] { recheck_loop(); });
}

Reloader::~Reloader() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  recheck_wake_.notify_all();
  if (checker_.joinable()) checker_.join();
  if (worker_.joinable()) worker_.join();
  if (reaper_.joinable()) reaper_.join();
  if (inotify_fd_ >= 0) ::close(inotify_fd_);
  if (timer_fd_ >= 0) ::close(timer_fd_);
  ::close(done_fd_);
}

Reloader::Stamp Reloader::stamp(const std::string& path) {
  Stamp s;
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) s.link_ino = st.st_ino;
  if (::stat(path.c_str(), &st) != 0) return s;
  s.exists = true;
  s.dev = st.st_dev;
  s.ino = st.st_ino;
  s.size = st.st_size;
  s.mtime_ns = st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec;
  s.ctime_ns = st.st_ctim.tv_sec * 1'000'000'000LL + st.st_ctim.tv_nsec;
  return s;
}

// Watches the directory of every file (editors replace files by rename),
// the directory of a symlink's target (an edit there changes the file
// without touching the link), and each directory's parent for the
// directory's own name, so that a directory deleted and recreated, or
// swapped in by rename or symlink (common deploy steps), is noticed too.
// Called after every reload, so watches follow what exists now.
void Reloader::watch_files(const std::vector<std::string>& files, bool replace) {
  if (inotify_fd_ < 0) return;
  if (replace) names_.clear();
  std::set<std::string> dirs;
  auto add = [&](const std::string& f) {
    auto [dir, name] = split_path(f);
    names_.insert({dir, name});
    dirs.insert(dir);
    if (dir != "/") {
      auto [parent, base] = split_path(dir);
      names_.insert({parent, base});
      dirs.insert(parent);
    }
  };
  {
    std::lock_guard lock(mutex_);
    for (auto& f : files)
      if (!stamps_.count(f)) stamps_[f] = stamp(f);  // the start's load; the worker's own otherwise
  }
  for (auto& f : files) {
    add(f);
    char real[PATH_MAX];
    if (::realpath(f.c_str(), real) && f != real) add(real);
  }
  std::string appeared;
  for (auto& dir : dirs) {
    // Same inode: the same watch descriptor comes back; a replaced
    // directory gets a new one.
    int wd = inotify_add_watch(inotify_fd_, dir.c_str(),
                               IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE |
                                   IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF);
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
  if (!appeared.empty()) changed(fmt::format("{} is a new directory", appeared));
}

void Reloader::on_inotify() {
  alignas(inotify_event) char buf[8192];
  std::string changed_path;
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
        changed_path = dir->second;
        inotify_rm_watch(inotify_fd_, ev->wd);
        dirs_.erase(dir);
        continue;
      }
      if (ev->len == 0 || !names_.count({dir->second, ev->name})) continue;
      std::string path = dir->second + "/" + ev->name;
      if ((ev->mask & IN_CREATE) && !(ev->mask & IN_ISDIR)) {
        // A new regular file is empty at IN_CREATE (its IN_CLOSE_WRITE
        // follows); a symlink or a hard link is complete the moment it exists.
        struct stat st{};
        if (::lstat(path.c_str(), &st) != 0 || (S_ISREG(st.st_mode) && st.st_nlink < 2)) continue;
      }
      if ((ev->mask & IN_ATTRIB) && !(ev->mask & IN_ISDIR)) {
        // chmod/chown, and a hard link made or removed elsewhere: only a
        // change of what the last load saw counts.
        bool same;
        {
          std::lock_guard lock(mutex_);
          auto it = stamps_.find(path);
          same = it != stamps_.end() && it->second == stamp(path);
        }
        if (same) continue;
      }
      changed_path = path;
    }
  }
  if (!changed_path.empty()) changed(fmt::format("{} changed", changed_path));
}

void Reloader::changed(const std::string& why) {
  auto now = Clock::now();
  if (!settling_) {
    settling_ = true;
    settle_first_ = now;
    settle_why_ = why;
  }
  settle_last_ = now;
}

void Reloader::on_timer() {
  uint64_t ticks;
  if (::read(timer_fd_, &ticks, sizeof ticks) != sizeof ticks) return;
  auto now = Clock::now();
  if (!running_ && !settling_) {
    std::lock_guard lock(mutex_);
    if (!recheck_saw_.empty()) changed(fmt::format("{} changed (seen by the periodic check)", recheck_saw_));
    recheck_saw_.clear();
  }
  if (settling_ && (now - settle_last_ >= kSettle || now - settle_first_ >= kMaxSettle)) {
    settling_ = false;
    request(settle_why_);
  }
}

// The backstop for every edit path inotify does not report (a symlink
// target in a directory swapped under us, a bind mount, NFS): every file
// stat()ed every kRecheck, on a thread of its own, so that a hung network
// file system holds up this thread, never the lookups.
void Reloader::recheck_loop() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    recheck_wake_.wait_for(lock, kRecheck, [this] { return stopping_; });
    if (stopping_ || loading_) continue;
    auto files = stamps_;
    lock.unlock();
    std::string saw;
    for (auto& [path, was] : files)
      if (stamp(path) != was) {
        saw = path;
        break;
      }
    lock.lock();
    // A load that ran meanwhile has seen the files as they are now.
    if (!saw.empty() && !loading_ && stamps_ == files) recheck_saw_ = saw;
  }
}

void Reloader::request(const std::string& why, bool forced, Waiter waiter) {
  log_line(LOG_INFO, fmt::format("reloading: {}", why));
  if (waiter) (forced ? forced_waiters_ : plain_waiters_).push_back(std::move(waiter));
  (forced ? want_forced_ : want_plain_) = true;
  if (!running_) start_next();
}

// Starts the next reload asked for: a forced one first (it skips the shrink
// guard for the admin who asked), then a guarded one. A forced request never
// lifts the guard from a file change waiting behind it.
void Reloader::start_next() {
  bool forced;
  if (want_forced_) {
    forced = true;
    want_forced_ = false;
    running_waiters_ = std::move(forced_waiters_);
    forced_waiters_.clear();
  } else if (want_plain_) {
    forced = false;
    want_plain_ = false;
    running_waiters_ = std::move(plain_waiters_);
    plain_waiters_.clear();
  } else {
    return;
  }
  running_ = true;
  sd_notify(0, "RELOADING=1\nSTATUS=reloading");
  if (worker_.joinable()) worker_.join();
  std::shared_ptr<const Snapshot> current;
  std::vector<std::string> known;
  {
    std::lock_guard lock(mutex_);
    current = current_;
    loading_ = true;
    for (auto& [f, st] : stamps_) known.push_back(f);
  }
  worker_ = std::thread([this, forced, current = std::move(current), known = std::move(known)] {
    // Lower priority than the event loop: lookups go first, the build waits.
    setpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)), 10);
    // Files are stat()ed before they are read: a change during the load
    // then differs from what is recorded, and the periodic check sees it.
    std::map<std::string, Stamp> stamps;
    for (auto& f : known) stamps[f] = stamp(f);
    auto t0 = Clock::now();
    LoadResult r = guarded_load(config_, current, forced);
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    for (auto& f : r.files)
      if (!stamps.count(f)) stamps[f] = stamp(f);
    {
      std::lock_guard lock(mutex_);
      result_ = std::move(r);
      result_stamps_ = std::move(stamps);
      ms_ = ms;
    }
    uint64_t one = 1;
    (void)!::write(done_fd_, &one, sizeof one);
  });
}

void Reloader::set_current(std::shared_ptr<const Snapshot> s) {
  std::lock_guard lock(mutex_);
  current_ = std::move(s);
}

void Reloader::retire(std::shared_ptr<const Snapshot> old) {
  if (reaper_.joinable()) reaper_.join();
  reaper_ = std::thread([old = std::move(old)]() mutable {
    setpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)), 10);
    old.reset();
    // Hand the freed pages back: a 1M-rule start reloaded down to a few
    // rules would otherwise keep its resident size.
    malloc_trim(0);
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
    loading_ = false;
    // A failed load keeps the files it did read in view too.
    if (r.snapshot) {
      stamps_.clear();
      for (auto& f : r.files) stamps_[f] = result_stamps_[f];
    } else {
      for (auto& [f, st] : result_stamps_) stamps_[f] = st;
    }
  }
  running_ = false;
  watch_files(r.files, r.snapshot != nullptr);  // a failed load keeps watching the old files too
  bool ok = r.snapshot != nullptr;
  std::string text;
  if (!running_waiters_.empty()) {
    if (ok) {
      text = fmt::format("reloaded {}: {}; {:.1f} ms\n", config_, r.snapshot->summary(), ms);
    } else {
      for (auto& e : r.errors) text += e.located() + "\n";
      text += fmt::format("reload failed with {} error(s): still serving the previous policy\n", r.errors.size());
    }
    for (auto& w : r.warnings) text = w.text("warning") + "\n" + text;
  }
  on_done_(std::move(r), ms);
  for (auto& w : running_waiters_) w(ok, text);
  running_waiters_.clear();
  start_next();  // what arrived during this reload
}

}  // namespace tlspolicy
