// tlspolicyd: loads the policy, opens the listeners (as root), drops
// privileges, and serves the socketmap (and, when configured, the milter)
// from one event loop until SIGTERM. SIGHUP and file changes reload.
#include <fcntl.h>
#include <fmt/format.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <sys/eventfd.h>

#include <atomic>
#include <future>
#include <mutex>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "daemon/listen.hpp"
#include "discovery/destination.hpp"
#include "daemon/control.hpp"
#include "daemon/log.hpp"
#include "daemon/metrics.hpp"
#include "daemon/reload.hpp"
#include "policy/config.hpp"
#include "policy/holder.hpp"
#include "milter/milter.hpp"
#include "socketmap/server.hpp"

using namespace tlspolicy;

// libmilter's smfi_main() starts a thread that sigwait()s for SIGHUP,
// SIGTERM and SIGINT and shuts the milter down on any of them, so it would
// race the daemon for SIGHUP (reload) and stop the milter. Defining sigwait
// here overrides libc's for libmilter (the executable's symbol wins), and
// that thread waits forever instead: the daemon's signalfd is the one place
// signals are handled, and it stops the milter with smfi_stop().
extern "C" int sigwait(const sigset_t*, int*) {
  for (;;) pause();
}

namespace {

constexpr const char* kUsage =
    "usage: tlspolicyd [-c FILE] [-f] [-p PIDFILE]\n"
    "  -c FILE     configuration (default /etc/tlspolicy/tlspolicy.conf)\n"
    "  -f          stay in the foreground and log to stderr\n"
    "  -p PIDFILE  write the daemon's process ID there (stop it with kill $(cat PIDFILE))\n";

int g_ready_fd = -1;  // write end of the pipe the parent waits on (background mode)

[[noreturn]] void fatal(const std::string& msg) {
  // What is queued first, then this line, at once; with a stalled log,
  // one non-blocking attempt on stderr, and exit either way.
  if (log_stop()) {
    log_line(LOG_ERR, msg);
  } else {
    fcntl(2, F_SETFL, fcntl(2, F_GETFL) | O_NONBLOCK);
    std::string line = "tlspolicyd: error: " + msg + "\n";
    (void)!::write(2, line.data(), line.size());
  }
  if (g_ready_fd >= 0) (void)!::write(g_ready_fd, msg.data(), msg.size());
  _exit(1);
}

void ready() {
  if (g_ready_fd < 0) return;
  (void)!::write(g_ready_fd, "", 0);
  ::close(g_ready_fd);
  g_ready_fd = -1;
  int null = ::open("/dev/null", O_RDWR);
  dup2(null, 0), dup2(null, 1), dup2(null, 2);
  if (null > 2) ::close(null);
}

// Forks; the parent waits until the child is serving (exit 0) or has failed
// (prints the child's reason, exit 1), so a shell or init sees real status.
void daemonize() {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) fatal(fmt::format("pipe: {}", std::strerror(errno)));
  pid_t pid = fork();
  if (pid < 0) fatal(fmt::format("fork: {}", std::strerror(errno)));
  if (pid > 0) {
    ::close(p[1]);
    std::string msg;
    char buf[512];
    ssize_t n;
    while ((n = ::read(p[0], buf, sizeof buf)) > 0) msg.append(buf, size_t(n));
    if (!msg.empty()) {
      fmt::print(stderr, "tlspolicyd: {}\n", msg);
      _exit(1);
    }
    _exit(0);
  }
  ::close(p[0]);
  g_ready_fd = p[1];
  setsid();
  if (chdir("/") < 0) fatal("chdir /");
}

void drop_privileges(const DaemonSettings& d) {
  if (geteuid() != 0) return;
  if (d.user.empty()) {
    log_line(LOG_WARNING, "running as root: set daemon.user (e.g. \"tlspolicyd\") to drop privileges after binding");
    return;
  }
  passwd* pw = getpwnam(d.user.c_str());
  if (!pw) fatal(fmt::format("daemon.user \"{}\": no such user", d.user));
  gid_t gid = pw->pw_gid;
  if (!d.group.empty()) {
    group* gr = getgrnam(d.group.c_str());
    if (!gr) fatal(fmt::format("daemon.group \"{}\": no such group", d.group));
    gid = gr->gr_gid;
  }
  if (setgroups(0, nullptr) < 0 || setgid(gid) < 0 || setuid(pw->pw_uid) < 0)
    fatal(fmt::format("cannot drop privileges to {}: {}", d.user, std::strerror(errno)));
  if (setuid(0) == 0) fatal("privileges were not dropped (setuid(0) succeeded)");
}

// Whether this policy needs DNS at all: a static policy never sends a query.
bool needs_dns(const Snapshot& s) { return s.needs_dns; }

// The daemon's discovery: a Discoverer (discovery/) made from the snapshot's
// settings, its descriptor on the event loop, and the server's view of it.
// A reload that changes the settings replaces it: discoveries in flight on
// the old one fail ("discovery stopped"), so their requests answer TEMP
// where the rules say to defer, never a guess. When the resolver cannot be
// made (an unreadable trust anchor after a reload), every request that
// needs DNS gets failed facts with that reason.
class DaemonDiscovery {
 public:
  explicit DaemonDiscovery(SocketmapServer& server) : server_(server) {}
  ~DaemonDiscovery() { set(nullptr); }
  // Returns false with *error when the snapshot needs DNS and the resolver
  // could not be made (the previous one, if any, stays).
  bool configure(const Snapshot& s, std::string* error) {
    if (!needs_dns(s)) {
      set(nullptr);
      server_.set_discovery(nullptr);
      return true;
    }
    server_.set_discovery([this](const std::string& dest, DiscoverDone done) -> FactsPtr {
      if (!d_) return failed_facts(dest, "DNS resolver not available: " + error_);
      return d_->discover(dest, std::move(done));
    });
    if (d_ && same_resolver_settings(d_->settings(), s.settings.discovery)) return true;
    // The MTA-STS policy store outlives the Discoverers a reload replaces
    // (and a reload that switches discovery off and on): its policies stay,
    // its file is opened once. A new cache path opens a new store.
    const auto& m = s.settings.discovery.mta_sts;
    if (m.enabled && (!sts_store_ || sts_store_->path() != m.cache_file))
      sts_store_ = std::make_shared<sts::PolicyStore>(m.cache_file, m.cache_entries, false,
                                                      [](bool err, std::string_view msg) {
                                                        log_line(err ? LOG_WARNING : LOG_INFO, std::string(msg));
                                                      });
    auto d = Discoverer::create(s.settings.discovery, error, sts_store_);
    if (!d) {
      if (!d_) error_ = *error;
      return false;
    }
    set(std::move(d));
    return true;
  }

 private:
  void set(std::unique_ptr<Discoverer> d) {
    if (d_) server_.unwatch(d_->fd());
    auto old = std::move(d_);
    d_ = std::move(d);
    if (d_) server_.watch(d_->fd(), [this] { d_->process(); });
    old.reset();  // fails its discoveries in flight; their connections resume
  }
  SocketmapServer& server_;
  std::shared_ptr<sts::PolicyStore> sts_store_;  // before d_: the Discoverer goes first
  std::unique_ptr<Discoverer> d_;
  std::string error_;
};

std::string absolute(const std::string& path) {
  if (path.starts_with("/")) return path;
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd)) return path;
  return std::string(cwd) + "/" + path;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config = kDefaultConfig;
  bool foreground = false;
  std::string pidfile;  // so that a script stops this daemon, not every tlspolicyd on the host
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-c" && i + 1 < argc) {
      config = argv[++i];
    } else if (a == "-f") {
      foreground = true;
    } else if (a == "-p" && i + 1 < argc) {
      pidfile = argv[++i];
    } else if (a == "-h" || a == "--help") {
      fmt::print("{}", kUsage);
      return 0;
    } else {
      fmt::print(stderr, "tlspolicyd: unknown argument \"{}\"\n{}", a, kUsage);
      return 2;
    }
  }
  config = absolute(config);
  if (!pidfile.empty()) pidfile = absolute(pidfile);
  // Blocked from the start: a SIGHUP or SIGTERM during a long first load
  // waits for the signalfd instead of killing the process, and every thread
  // started later inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  for (int s : {SIGHUP, SIGTERM, SIGINT}) sigaddset(&sigs, s);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  log_init(true);
  auto t0 = std::chrono::steady_clock::now();
  LoadResult first = load_policy(config);
  double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (auto& w : first.warnings) log_line(LOG_WARNING, w.located());
  if (!first.snapshot) {
    for (auto& e : first.errors) log_line(LOG_ERR, e.located());
    log_line(LOG_ERR, fmt::format("{}: configuration has errors, not starting", config));
    return 1;
  }
  if (!foreground) {
    daemonize();
    log_init(false);
  }
  if (!pidfile.empty()) {
    FILE* f = fopen(pidfile.c_str(), "w");
    if (!f) fatal(fmt::format("pid file {}: {}", pidfile, std::strerror(errno)));
    fmt::print(f, "{}\n", getpid());
    fclose(f);
  }
  signal(SIGPIPE, SIG_IGN);
  log_start();
  int sigfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);

  const DaemonSettings d = first.snapshot->settings.daemon;  // a copy: the snapshot goes at the next reload
  // Room for max_connections plus the milter's and our own descriptors:
  // raise the soft limit to the hard one, and say so if it is still short.
  {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
      getrlimit(RLIMIT_NOFILE, &rl);
      if (rl.rlim_cur != RLIM_INFINITY && rlim_t(d.max_connections) + 64 > rl.rlim_cur)
        log_line(LOG_WARNING, fmt::format("open file limit {} is below daemon.max_connections {} plus 64: "
                                          "raise it (LimitNOFILE= in systemd) or lower max_connections",
                                          rl.rlim_cur, d.max_connections));
    }
  }
  std::vector<std::string> unix_paths;
  std::string where_metrics;
  // Socket activation (tlspolicyd.socket): systemd passes the socketmap
  // listeners, already bound; daemon.socketmap is then not bound here. The
  // milter always binds its own (libmilter opens its socket from a string).
  int activated = sd_listen_fds(1);
  if (activated < 0) fatal(fmt::format("sd_listen_fds: {}", std::strerror(-activated)));
  PolicyHolder holder;
  holder.store(first.snapshot);
  SocketmapServer server(
      {d.max_connections, std::chrono::seconds(d.idle_timeout), d.log_all_lookups, d.log_rule_lookups, log_line,
       log_deferred, log_flush});
  std::string where;
  for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + activated; ++fd) {
    if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0)
      fatal(fmt::format("descriptor {} from systemd is not a listening stream socket (ListenStream= only)", fd));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    server.add_listener(fd);
  }
  if (activated > 0) {
    where = fmt::format("{} socket(s) from systemd", activated);
  } else {
    for (auto& ep : d.socketmap) {
      std::string err;
      int fd = open_listener(ep, d, &err);
      if (fd < 0) fatal(fmt::format("socketmap {}: {}", ep, err));
      server.add_listener(fd);
      if (ep.starts_with("unix:")) unix_paths.push_back(ep.substr(5));
      where += (where.empty() ? "" : ", ") + ep;
    }
  }
  if (!d.milter.empty()) {
    std::string err;
    if (!milter_open(d.milter, d, holder, log_line, log_deferred, log_flush, &err)) fatal(fmt::format("milter {}: {}", d.milter, err));
  }
  std::unique_ptr<Metrics> metrics;
  if (!d.metrics.empty()) {
    try {
      metrics = std::make_unique<Metrics>(d.metrics, holder);
    } catch (const std::exception& e) {
      fatal(fmt::format("metrics {}: {}", d.metrics, e.what()));
    }
    where_metrics = "; metrics on http://" + d.metrics.substr(5) + "/metrics";
  }
  ControlServer control;
  if (!d.control.empty()) {
    std::string err;
    uid_t uid = 0;
    gid_t gid = 0;
    if (passwd* pw = d.user.empty() ? nullptr : getpwnam(d.user.c_str())) uid = pw->pw_uid, gid = pw->pw_gid;
    if (!control.open(d.control, uid, gid, &err))
      log_line(LOG_WARNING, fmt::format("control socket {}: {}: tlspolicy status and reload will not reach this "
                                        "daemon (daemon.control)",
                                        d.control, err));
  }
  drop_privileges(d);
  // Every later reload runs as this user: a file it cannot read now would
  // make each of them fail, so say so before serving anything.
  for (auto& f : first.files) {
    int fd = ::open(f.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT)
      fatal(fmt::format("{}: {}{}: every reload would fail; make it readable by that user", f, std::strerror(errno),
                        d.user.empty() ? "" : fmt::format(" as daemon.user \"{}\"", d.user)));
    if (fd >= 0) ::close(fd);
  }
  server.set_policy(first.snapshot);
  // After dropping privileges: libunbound's thread runs as that user, and
  // the trust anchor must be readable by it at every reload too.
  DaemonDiscovery discovery(server);
  {
    std::string err;
    if (!discovery.configure(*first.snapshot, &err)) fatal(fmt::format("discovery: {}", err));
  }
  std::thread milter_thread;
  std::atomic<bool> milter_done{false};
  if (!d.milter.empty())
    milter_thread = std::thread([&] {
      milter_run();
      milter_done = true;
    });

  Reloader reloader(config, [&](LoadResult r, double ms) {
    for (auto& w : r.warnings) log_line(LOG_WARNING, w.located());
    if (!r.snapshot) {
      for (auto& e : r.errors) log_line(LOG_ERR, e.located());
      log_line(LOG_ERR, fmt::format("reload failed with {} error(s): still serving the previous policy", r.errors.size()));
      sd_notifyf(0, "READY=1\nSTATUS=reload failed with %zu error(s): still serving the previous policy",
                 r.errors.size());
      stats().reloads_failed.add();
      return;
    }
    const auto& nd = r.snapshot->settings.daemon;
    if (nd.socketmap != d.socketmap || nd.milter != d.milter || nd.user != d.user || nd.group != d.group ||
        nd.socket_owner != d.socket_owner || nd.socket_group != d.socket_group || nd.socket_mode != d.socket_mode)
      log_line(LOG_WARNING, "listening addresses, sockets' owner and mode, user and group are read at start "
                            "only: restart to change them");
    server.set_options(nd.log_all_lookups, nd.log_rule_lookups, nd.max_connections,
                       std::chrono::seconds(nd.idle_timeout));
    // The policy first: replacing the resolver resumes the requests parked
    // on the old one, and the requests pipelined behind them are answered
    // at once, with the server's policy: the new one, with the new resolver.
    auto old = server.set_policy(r.snapshot);
    if (std::string err; !discovery.configure(*r.snapshot, &err))
      log_line(LOG_ERR, fmt::format("discovery: {}: DNS answers come from the previous settings' resolver, or, "
                                    "with none, lookups that need DNS fail (TEMP where the rules defer)",
                                    err));
    if (metrics)
      metrics->publish(holder, r.snapshot, *old);
    else
      holder.store(r.snapshot);
    reloader.set_current(r.snapshot);
    stats().reloads_ok.add();
    stats().loaded_unix = ::time(nullptr);
    reloader.retire(std::move(old));
    log_line(LOG_INFO, fmt::format("reloaded {}: {}; {:.1f} ms", config, r.snapshot->summary(), ms));
    sd_notifyf(0, "READY=1\nSTATUS=serving: %s", r.snapshot->summary().c_str());
  });
  reloader.set_current(first.snapshot);
  reloader.watch_files(first.files);
  server.watch(reloader.done_fd(), [&] { reloader.on_done(); });
  if (reloader.inotify_fd() >= 0) server.watch(reloader.inotify_fd(), [&] { reloader.on_inotify(); });
  if (reloader.timer_fd() >= 0) server.watch(reloader.timer_fd(), [&] { reloader.on_timer(); });
  // The control socket's requests: status is read under a lock; a reload is
  // handed to the event loop through an eventfd, its outcome comes back
  // through a promise.
  struct ReloadAsk {
    bool forced;
    std::promise<std::pair<bool, std::string>> done;
  };
  std::mutex asks_mutex;
  std::vector<std::shared_ptr<ReloadAsk>> asks;
  std::atomic<bool> stopping{false};
  int ask_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  server.watch(ask_fd, [&] {
    uint64_t v;
    (void)!::read(ask_fd, &v, sizeof v);
    std::vector<std::shared_ptr<ReloadAsk>> taken;
    {
      std::lock_guard lock(asks_mutex);
      taken.swap(asks);
    }
    for (auto& a : taken)
      reloader.request(a->forced ? "tlspolicy reload --force (the shrink guard does not apply)" : "tlspolicy reload",
                       a->forced, [a](bool ok, const std::string& text) { a->done.set_value({ok, text}); });
  });
  auto started_at = ::time(nullptr);
  ControlServer::Hooks hooks;
  hooks.status = [&]() -> std::string {
    auto snap = holder.load();
    const Stats& st = stats();
    auto loaded = time_t(st.loaded_unix.load());
    char when[64];
    std::tm tm{};
    localtime_r(&loaded, &tm);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    std::string out = fmt::format("config: {}\npid: {}; up {} s\nserving since: {} ({} s ago)\npolicy: {}\n", config,
                                  getpid(), ::time(nullptr) - started_at, when, ::time(nullptr) - loaded,
                                  snap ? snap->summary() : "none");
    if (snap) {
      out += "files:\n";
      for (auto& f : snap->files) out += "  " + f + "\n";
    }
    uint64_t ok = 0, nf = 0, temp = 0, perm = st.unknown_map.get();
    for (size_t m = 0; m < kMapCount; ++m)
      ok += st.lookups[m][0].get(), nf += st.lookups[m][1].get(), temp += st.lookups[m][2].get(),
          perm += st.lookups[m][3].get();
    out += fmt::format("reloads: {} ok, {} failed\n", st.reloads_ok.get(), st.reloads_failed.get());
    uint64_t closed = st.connections_closed.get(), accepted = st.connections_accepted.get();  // (in this order)
    out += fmt::format("socketmap: {} connections open ({} accepted, {} refused at the limit); lookups {} OK, {} "
                       "NOTFOUND, {} TEMP, {} PERM; {} malformed\n",
                       accepted - std::min(closed, accepted), accepted,
                       st.connections_refused.get(), ok, nf, temp, perm, st.malformed_requests.get());
    out += fmt::format("milter: {} sessions; headers {} Require, {} Try; {} rejected, {} tempfailed, {} would-reject "
                       "(monitor), {} errors\n",
                       st.milter_sessions.get(), st.milter_require.get(), st.milter_try.get(), st.milter_reject.get(),
                       st.milter_tempfail.get(), st.milter_would_reject.get(), st.milter_errors.get());
    return out;
  };
  hooks.reload = [&](bool forced) -> std::pair<bool, std::string> {
    auto a = std::make_shared<ReloadAsk>();
    a->forced = forced;
    auto f = a->done.get_future();
    {
      std::lock_guard lock(asks_mutex);
      asks.push_back(a);
    }
    uint64_t one = 1;
    (void)!::write(ask_fd, &one, sizeof one);
    for (int i = 0; i < 1200; ++i) {  // two minutes: a 1M-rule list loads in one second
      if (f.wait_for(std::chrono::milliseconds(100)) == std::future_status::ready) return f.get();
      if (stopping) break;
    }
    return {false, "no outcome: the daemon is stopping or the reload takes too long\n"};
  };
  control.start(holder, std::move(hooks));
  server.watch(sigfd, [&] {
    signalfd_siginfo si;
    while (::read(sigfd, &si, sizeof si) == sizeof si) {
      if (si.ssi_signo == SIGHUP)
        reloader.request("SIGHUP (forced: the shrink guard does not apply)", true);
      else {
        sd_notify(0, "STOPPING=1\nSTATUS=stopping");
        server.stop();
      }
    }
  });

  if (!d.milter.empty()) where += "; milter on " + d.milter;
  where += where_metrics;
  stats().loaded_unix = ::time(nullptr);
  log_line(LOG_INFO, fmt::format("started: {}; {:.1f} ms; socketmap on {}", first.snapshot->summary(), load_ms, where));
  // The server, the milter's holder and the reloader hold the start's
  // snapshot now; this reference would keep it alive after every reload.
  sd_notifyf(0, "READY=1\nSTATUS=serving: %s", first.snapshot->summary().c_str());
  first.snapshot.reset();
  ready();
  try {
    server.run();
  } catch (const std::exception& e) {
    fatal(e.what());
  }
  stopping = true;
  control.stop();
  for (auto& p : unix_paths) ::unlink(p.c_str());
  if (!pidfile.empty()) ::unlink(pidfile.c_str());  // fails quietly once privileges are dropped
  if (milter_thread.joinable()) {
    // libmilter notices smfi_stop() only at its next poll timeout (seconds);
    // give running sessions a moment, then leave without waiting for it.
    milter_stop();
    for (int i = 0; i < 20 && !milter_done; ++i) usleep(50000);
    if (!milter_done) {
      log_line(LOG_INFO, "stopped");
      log_stop();
      _exit(0);
    }
    milter_thread.join();
  }
  log_line(LOG_INFO, "stopped");
  log_stop();
  return 0;
}
