// libmilter glue only: C callbacks -> Session -> smfi_* actions.
//
// Every callback goes through one exception barrier (call()) that turns any
// exception into the configured failure action, so no try/catch is pasted
// into each callback. Two speed fixes for loopback TCP (see "Milter speed"
// in the project notes): a DATA callback is registered so Postfix's DATA
// macro packet is answered instead of waiting for a delayed ACK, and the
// listening socket gets TCP_NODELAY (inherited by accepted sockets) so the
// header change and the final reply are not held back by Nagle.
#include "milter/milter.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <grp.h>
#include <libmilter/mfapi.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <cstring>

#include "milter/session.hpp"
#include "policy/stats.hpp"

namespace tlspolicy {

namespace {

const PolicyHolder* g_holder = nullptr;
LogFn g_log = nullptr;
LogFn g_log_deferred = nullptr;  // queued without waking the log writer...
void (*g_log_flush)() = nullptr;  // ...which this does once per callback

// The production Mta: smfi_* calls on one SMFICTX.
class SmfiMta final : public Mta {
 public:
  explicit SmfiMta(SMFICTX* ctx) : ctx_(ctx) {}
  std::optional<std::string> macro(const char* name) override {
    const char* v = smfi_getsymval(ctx_, const_cast<char*>(name));
    if (!v || !*v) return std::nullopt;
    return std::string(v);
  }
  void set_reply(const std::string& reply) override {
    // "550 5.7.1 text": code, enhanced code, text (libmilter wants them apart).
    std::string code = reply.substr(0, 3), xcode, text;
    size_t p = reply.find(' ', 4);
    if (reply.size() > 5 && std::isdigit(static_cast<unsigned char>(reply[4])) && reply[5] == '.' &&
        p != std::string::npos) {
      xcode = reply.substr(4, p - 4);
      text = reply.substr(p + 1);
    } else {
      text = reply.size() > 4 ? reply.substr(4) : "";
    }
    if (smfi_setreply(ctx_, code.data(), xcode.empty() ? nullptr : xcode.data(), text.data()) != MI_SUCCESS)
      g_log(LOG_WARNING, fmt::format("milter: libmilter refused the reply \"{}\": the MTA sends its default text", reply));
  }
  void insert_header(int index, const std::string& name, const std::string& value) override {
    if (smfi_insheader(ctx_, index, const_cast<char*>(name.c_str()), const_cast<char*>(value.c_str())) != MI_SUCCESS)
      throw std::runtime_error("smfi_insheader failed");
  }
  void delete_header(const std::string& name, int occurrence) override {
    if (smfi_chgheader(ctx_, const_cast<char*>(name.c_str()), occurrence, nullptr) != MI_SUCCESS)
      throw std::runtime_error("smfi_chgheader failed");
  }
  // A callback's lines (end of message: up to one per recipient) wake the
  // log writer once, when the callback is done, not once per line.
  void log(int priority, const std::string& text) override {
    std::string line = "milter: ";
    line += text;
    g_log_deferred(priority, line);
    logged_ = true;
  }
  ~SmfiMta() override {
    if (logged_) g_log_flush();
  }

 private:
  SMFICTX* ctx_;
  bool logged_ = false;
};

sfsistat failure_status() {
  auto snap = g_holder->load();
  switch (snap ? snap->settings.milter.failure_action : Action::tempfail) {
    case Action::reject: return SMFIS_REJECT;
    case Action::tempfail: return SMFIS_TEMPFAIL;
    case Action::monitor: return SMFIS_ACCEPT;
  }
  return SMFIS_TEMPFAIL;
}

sfsistat status(Verdict2 v) {
  switch (v) {
    case Verdict2::go_on: return SMFIS_CONTINUE;
    case Verdict2::reject: return SMFIS_REJECT;
    case Verdict2::tempfail: return SMFIS_TEMPFAIL;
  }
  return SMFIS_CONTINUE;
}

// Per-connection state: the session and what negotiation settled.
struct Conn {
  Session session{*g_holder};
  unsigned long no_reply = 0;  // the SMFIP_NR_* flags negotiated
  // A callback failed at a stage the MTA expects no reply for: the failure
  // action is applied at the next stage that replies (DATA or end of message).
  bool failed = false;
};

Conn& conn(SMFICTX* ctx) {
  auto* c = static_cast<Conn*>(smfi_getpriv(ctx));
  if (!c) {
    c = new Conn;
    smfi_setpriv(ctx, c);
  }
  return *c;
}

void report_failure(const char* stage, const char* what) noexcept {
  stats().milter_errors.add();
  try {
    g_log(LOG_ERR, fmt::format("milter: {}: {}: applying failure_action", stage, what));
  } catch (...) {
  }
}

// The exception barrier at the C boundary: runs f() and maps any exception
// to the configured failure action. Every callback's body runs inside it.
template <class F>
sfsistat guarded(const char* stage, F&& f) noexcept {
  try {
    return f();
  } catch (const std::exception& e) {
    report_failure(stage, e.what());
  } catch (...) {
    report_failure(stage, "unknown error");
  }
  return failure_status();
}

// A session callback: f(session, mta) inside the barrier. nr_flag: the
// SMFIP_NR_* flag of this stage (0: always replies); when it was negotiated
// the MTA reads no reply, so none is sent, and a failure waits for the next
// stage that replies.
template <class F>
sfsistat call(SMFICTX* ctx, const char* stage, unsigned long nr_flag, F&& f) noexcept {
  Conn* c = nullptr;
  sfsistat r = guarded(stage, [&] {
    c = &conn(ctx);
    SmfiMta mta(ctx);
    return f(c->session, mta);
  });
  if (!c || !(c->no_reply & nr_flag)) return r;
  if (r != SMFIS_CONTINUE && r != SMFIS_NOREPLY) c->failed = true;
  return SMFIS_NOREPLY;
}

// At a stage that replies: the failure action if an earlier stage without
// a reply failed, else what f says.
template <class F>
sfsistat call_replying(SMFICTX* ctx, const char* stage, F&& f) noexcept {
  return call(ctx, stage, 0, [&](Session& s, Mta& mta) {
    Conn& c = conn(ctx);
    if (c.failed) {
      c.failed = false;
      return failure_status();
    }
    return f(s, mta);
  });
}

// Macros asked for at MAIL, replacing Postfix's milter_mail_macros for this
// milter only: the TLS facts too, for a client that sends MAIL right after
// STARTTLS without a second EHLO (RFC 3207 only says SHOULD), whose TLS
// state would otherwise reach us with no stage at all.
constexpr const char* kMailMacros = "{auth_authen} {tls_version} {cipher} {cipher_bits}";

sfsistat on_negotiate(SMFICTX* ctx, unsigned long f0, unsigned long f1, unsigned long, unsigned long,
                      unsigned long* pf0, unsigned long* pf1, unsigned long* pf2, unsigned long* pf3) {
  return guarded("negotiate", [&] {
    const unsigned long need = SMFIF_ADDHDRS | SMFIF_CHGHDRS;
    if ((f0 & need) != need) {
      g_log(LOG_ERR, fmt::format("milter: the MTA does not offer the header actions tlspolicyd needs (offered "
                                 "actions 0x{:x}, need 0x{:x}): refusing this connection",
                                 f0, need));
      return SMFIS_REJECT;
    }
    *pf0 = need;
    if (f0 & SMFIF_SETSYMLIST) {
      if (smfi_setsymlist(ctx, SMFIM_ENVFROM, const_cast<char*>(kMailMacros)) == MI_SUCCESS)
        *pf0 |= SMFIF_SETSYMLIST;
      else
        g_log(LOG_WARNING, "milter: libmilter refused the MAIL macro list: TLS facts come from HELO only");
    }
    // Every round trip costs smtpd time: skip the stages we never look at
    // and answer none of those that never stop mail (connect, HELO,
    // headers, end of headers), nor MAIL and RCPT when no inbound rule of
    // the snapshot current now can stop mail there (read per connection: a
    // reload that adds or drops such a rule applies to new connections; a
    // rule a reload adds under an open connection is applied at DATA, see
    // Session::set_replies). DATA keeps its reply: it is what stops
    // Postfix's DATA macro packet from waiting for a delayed ACK. End of
    // headers is NOT skipped (no SMFIP_NOEOH): libmilter's state table then
    // has no way from DATA to end of message for a message without headers,
    // drops that command unanswered, and the MTA waits
    // milter_content_timeout.
    // HELO is skipped altogether (SMFIP_NOHELO, one packet less per
    // connection): the TLS macros Postfix sends with it are still stored by
    // libmilter, and the session reads them at MAIL, where smfi_getsymval
    // finds the newest of the MAIL and HELO ones (MAIL's own when the MTA
    // honoured our MAIL macro list, e.g. after STARTTLS with no new EHLO).
    auto snap = g_holder->load();
    unsigned long want = SMFIP_NOBODY | SMFIP_NOUNKNOWN | SMFIP_NOHELO | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_CONN |
                         SMFIP_NR_HELO;
    if (snap && !snap->inbound_stops.mail) want |= SMFIP_NR_MAIL;
    if (snap && !snap->inbound_stops.rcpt) want |= SMFIP_NR_RCPT;
    *pf1 = f1 & want;
    Conn& c = conn(ctx);
    c.no_reply = *pf1 & (SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT);
    c.session.set_replies(!(*pf1 & SMFIP_NR_MAIL), !(*pf1 & SMFIP_NR_RCPT));
    *pf2 = 0;
    *pf3 = 0;
    return SMFIS_CONTINUE;
  });
}

sfsistat on_connect(SMFICTX* ctx, char*, _SOCK_ADDR* sa) {
  stats().milter_sessions.add();
  return call(ctx, "connect", SMFIP_NR_CONN, [&](Session& s, Mta& mta) {
    std::optional<IpAddr> ip;
    if (sa && sa->sa_family == AF_INET) {
      IpAddr a;
      std::memcpy(a.bytes.data(), &reinterpret_cast<sockaddr_in*>(sa)->sin_addr, 4);
      ip = a;
    } else if (sa && sa->sa_family == AF_INET6) {
      IpAddr a;
      a.v6 = true;
      std::memcpy(a.bytes.data(), &reinterpret_cast<sockaddr_in6*>(sa)->sin6_addr, 16);
      ip = a;
    }
    s.connect(ip, mta);
    return SMFIS_CONTINUE;
  });
}

sfsistat on_helo(SMFICTX* ctx, char*) {
  return call(ctx, "helo", SMFIP_NR_HELO, [&](Session& s, Mta& mta) {
    s.helo(mta);
    return SMFIS_CONTINUE;
  });
}

sfsistat on_envfrom(SMFICTX* ctx, char** argv) {
  return call(ctx, "mail", SMFIP_NR_MAIL, [&](Session& s, Mta& mta) { return status(s.mail(argv && argv[0] ? argv[0] : "", mta)); });
}

sfsistat on_envrcpt(SMFICTX* ctx, char** argv) {
  return call(ctx, "rcpt", SMFIP_NR_RCPT, [&](Session& s, Mta& mta) { return status(s.rcpt(argv && argv[0] ? argv[0] : "", mta)); });
}

sfsistat on_data(SMFICTX* ctx) {
  return call_replying(ctx, "data", [](Session& s, Mta& mta) { return status(s.data(mta)); });
}

sfsistat on_header(SMFICTX* ctx, char* name, char*) {
  return call(ctx, "header", SMFIP_NR_HDR, [&](Session& s, Mta&) {
    s.header(name ? name : "");
    return SMFIS_CONTINUE;
  });
}

sfsistat on_eoh(SMFICTX* ctx) {
  return call(ctx, "eoh", SMFIP_NR_EOH, [](Session&, Mta&) { return SMFIS_CONTINUE; });
}

sfsistat on_eom(SMFICTX* ctx) {
  return call_replying(ctx, "eom", [&](Session& s, Mta& mta) {
    // A decision held for DATA that no DATA took: an MTA speaking milter
    // protocol 2 or 3 never sends DATA, and libmilter offers us the
    // SMFIP_NR_* flags (faking the reply) whatever the MTA supports.
    Verdict2 held = s.data(mta);
    if (held != Verdict2::go_on) {
      s.abort();
      return status(held);
    }
    s.end_of_message(mta);
    return SMFIS_CONTINUE;
  });
}

sfsistat on_abort(SMFICTX* ctx) {
  return call(ctx, "abort", 0, [&](Session& s, Mta&) {
    // A failure held from this transaction's MAIL or RCPT ends with it: the
    // next message on the connection (after RSET) is judged on its own.
    conn(ctx).failed = false;
    s.abort();
    return SMFIS_CONTINUE;
  });
}

sfsistat on_close(SMFICTX* ctx) {
  delete static_cast<Conn*>(smfi_getpriv(ctx));
  smfi_setpriv(ctx, nullptr);
  return SMFIS_CONTINUE;
}

struct smfiDesc g_desc = {
    const_cast<char*>("tlspolicyd"),
    SMFI_VERSION,
    SMFIF_ADDHDRS | SMFIF_CHGHDRS,
    on_connect,
    on_helo,
    on_envfrom,
    on_envrcpt,
    on_header,
    on_eoh,
    nullptr,  // body
    on_eom,
    on_abort,
    on_close,
    nullptr,  // unknown
    on_data,
    on_negotiate,
};

// libmilter keeps its listening fd to itself; find it by address: to set
// TCP_NODELAY on it (Linux copies the option to accepted sockets) and to
// wake libmilter's accept loop at shutdown instead of waiting for its poll
// timeout.
int find_listener(const std::string& endpoint) {
  bool is_unix = endpoint.starts_with("unix:");
  std::string path = is_unix ? endpoint.substr(5) : "";
  int port = -1;  // stays -1 (matches nothing) unless the endpoint ends in a port
  if (!is_unix) {
    std::string_view p = std::string_view(endpoint).substr(endpoint.rfind(':') + 1);
    std::from_chars(p.data(), p.data() + p.size(), port);
  }
  for (int fd = 0; fd < 4096; ++fd) {
    int listening = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening) continue;
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl) < 0) continue;
    if (is_unix && ss.ss_family == AF_UNIX && path == reinterpret_cast<sockaddr_un*>(&ss)->sun_path) return fd;
    if (!is_unix && ss.ss_family == AF_INET && ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port) == port)
      return fd;
    if (!is_unix && ss.ss_family == AF_INET6 && ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port) == port)
      return fd;
  }
  return -1;
}

int g_listener = -1;

}  // namespace

bool milter_open(const std::string& endpoint, const DaemonSettings& d, const PolicyHolder& holder, LogFn log,
                 LogFn log_deferred, void (*log_flush)(), std::string* error) {
  g_holder = &holder;
  g_log = log;
  g_log_deferred = log_deferred;
  g_log_flush = log_flush;
  // Our endpoint syntax -> libmilter's: inet:IP:PORT -> inet:PORT@IP, unix:/p -> unix:/p.
  std::string conn = endpoint;
  if (endpoint.starts_with("inet:")) {
    auto rest = endpoint.substr(5);
    auto colon = rest.rfind(':');
    std::string host = rest.substr(0, colon);
    bool v6 = host.find(':') != std::string::npos;
    if (host.starts_with("[")) host = host.substr(1, host.size() - 2), v6 = true;
    conn = fmt::format("{}:{}@{}", v6 ? "inet6" : "inet", rest.substr(colon + 1), host);
  }
  if (smfi_register(g_desc) != MI_SUCCESS) return *error = "smfi_register failed", false;
  if (smfi_setconn(conn.data()) != MI_SUCCESS) return *error = fmt::format("smfi_setconn {} failed", conn), false;
  if (smfi_opensocket(true) != MI_SUCCESS)
    return *error = fmt::format("cannot open milter socket {} (in use, or no permission?)", endpoint), false;
  g_listener = find_listener(endpoint);
  int one = 1;
  if (g_listener >= 0 && !endpoint.starts_with("unix:"))
    setsockopt(g_listener, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  else if (g_listener < 0)
    log(LOG_WARNING, "milter: could not find libmilter's listening socket: TCP_NODELAY not set");
  if (endpoint.starts_with("unix:")) {
    std::string path = endpoint.substr(5);
    uid_t uid = uid_t(-1);
    gid_t gid = gid_t(-1);
    if (!d.socket_owner.empty()) {
      passwd* pw = getpwnam(d.socket_owner.c_str());
      if (!pw) return *error = fmt::format("socket_owner \"{}\": no such user", d.socket_owner), false;
      uid = pw->pw_uid;
    }
    if (!d.socket_group.empty()) {
      group* gr = getgrnam(d.socket_group.c_str());
      if (!gr) return *error = fmt::format("socket_group \"{}\": no such group", d.socket_group), false;
      gid = gr->gr_gid;
    }
    if ((uid != uid_t(-1) || gid != gid_t(-1)) && chown(path.c_str(), uid, gid) < 0)
      return *error = fmt::format("chown {}: {}", path, std::strerror(errno)), false;
    if (chmod(path.c_str(), d.socket_mode) < 0)
      return *error = fmt::format("chmod {}: {}", path, std::strerror(errno)), false;
  }
  return true;
}

std::atomic<bool> g_stopping{false};

void milter_run() {
  if (smfi_main() != MI_SUCCESS && !g_stopping) g_log(LOG_ERR, "milter: smfi_main failed");
}

void milter_stop() {
  // Shutting the listening socket wakes libmilter's accept loop, which then
  // stops by itself (TCP: the poll reports the socket hung up, libmilter
  // aborts and smfi_main returns) or keeps failing its accept until the
  // daemon exits (unix socket). smfi_stop() is called only when the socket
  // was not found: it takes libmilter's listener and stop mutexes from this
  // thread, racing with smfi_main's startup (no happens-before with their
  // pthread_mutex_init) and with its exit, which destroys them (TSan:
  // "use of an invalid mutex" in mi_closener).
  g_stopping = true;
  if (g_listener >= 0)
    shutdown(g_listener, SHUT_RDWR);
  else
    smfi_stop();
}

}  // namespace tlspolicy
