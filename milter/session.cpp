// See session.hpp.
#include "milter/session.hpp"

#include "policy/stats.hpp"

#include <fmt/format.h>
#include <syslog.h>

#include <algorithm>
#include <iterator>

namespace tlspolicy {

namespace {
std::string strip_brackets(std::string s) {
  if (s.size() >= 2 && s.front() == '<' && s.back() == '>') s = s.substr(1, s.size() - 2);
  return s;
}
bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}
std::string rule_where(const Snapshot& s, uint32_t rule) {
  if (rule == kNone) return "no rule";
  const Rule& r = s.rules[rule];
  return r.is_default ? fmt::format("default at {}", s.where(r)) : fmt::format("rule \"{}\" at {}", r.name, s.where(r));
}
// An IPv4 client that reached an IPv6 socket shows up as ::ffff:a.b.c.d:
// to the rules (and in the log) it is a.b.c.d.
std::optional<IpAddr> unmap_v4(const std::optional<IpAddr>& a) {
  static constexpr uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (!a || !a->v6 || !std::equal(std::begin(kPrefix), std::end(kPrefix), a->bytes.begin())) return a;
  IpAddr v4;
  std::copy(a->bytes.begin() + 12, a->bytes.end(), v4.bytes.begin());
  return v4;
}
}  // namespace

void Session::connect(const std::optional<IpAddr>& client, Mta& mta) {
  client_ = unmap_v4(client);
  client_text_ = client_ ? format_ip(*client_) : "unknown";
  daemon_name_ = mta.macro("{daemon_name}").value_or("");
}

// {tls_version}, {cipher_bits} arrive with HELO (again after STARTTLS);
// absent means no TLS. Only these macros are trusted, never headers.
void Session::read_tls(Mta& mta) {
  auto version = mta.macro("{tls_version}");
  auto bits = mta.macro("{cipher_bits}");
  if (!version && !bits) return;
  tls_.version = version.value_or("");
  tls_.bits = bits ? parse_cipher_bits(*bits) : 0;
}

void Session::helo(Mta& mta) { read_tls(mta); }

Verdict2 Session::mail(const std::string& sender, Mta& mta) {
  abort();
  snap_ = holder_.load();
  read_tls(mta);
  sender_ = strip_brackets(sender);
  const MilterSettings& m = snap_->settings.milter;
  bool authenticated = mta.macro("{auth_authen}").has_value();
  bool listed_client = false;
  if (client_)
    snap_->outbound_clients.visit_ip(*client_, [&](const Hit&) {
      listed_client = true;
      return false;
    });
  bool listed_daemon =
      std::find(m.outbound_daemons.begin(), m.outbound_daemons.end(), daemon_name_) != m.outbound_daemons.end();
  outbound_ = (authenticated && m.authenticated_is_outbound) || listed_client || listed_daemon;
  if (outbound_) {
    uint32_t rule;
    Level l = sender_level(*snap_, sender_, &rule);
    strictest_ = std::max(strictest_, l, [](Level a, Level b) { return rank(a) < rank(b); });
    if (rule != kNone)
      notes_.push_back(fmt::format("sender <{}>: {} ({})", sender_, level_name(l), rule_where(*snap_, rule)));
    return Verdict2::go_on;
  }
  Verdict v = check_inbound_sender(*snap_, sender_, client_ ? &*client_ : nullptr, tls_);
  if (!v.matched || v.pass) return Verdict2::go_on;
  return enforce(v, reply_mail_, fmt::format("client={} from=<{}>", client_text_, sender_), mta);
}

Verdict2 Session::rcpt(const std::string& rcpt_arg, Mta& mta) {
  if (!snap_) return Verdict2::go_on;
  std::string rcpt = strip_brackets(rcpt_arg);
  if (outbound_) {
    uint32_t rule;
    Level l = recipient_level(*snap_, rcpt, &rule);
    if (rank(l) > rank(strictest_)) strictest_ = l;
    notes_.push_back(fmt::format("rcpt <{}>: {} ({})", rcpt, level_name(l), rule_where(*snap_, rule)));
    return Verdict2::go_on;
  }
  Verdict v = check_inbound_recipient(*snap_, rcpt, sender_, tls_);
  bool refused = v.matched && !v.pass && v.action != Action::monitor;
  if (!refused) ++passed_rcpts_;
  if (!v.matched || v.pass) return Verdict2::go_on;
  bool held_before = held_ != Verdict2::go_on;
  Verdict2 r = enforce(v, reply_rcpt_, fmt::format("client={} from=<{}> to=<{}>", client_text_, sender_, rcpt), mta);
  if (!held_before && held_ != Verdict2::go_on) held_at_rcpt_ = true;
  return r;
}

Verdict2 Session::data(Mta& mta) {
  if (held_ == Verdict2::go_on) return Verdict2::go_on;
  Verdict2 v = held_;
  if (held_at_rcpt_ && passed_rcpts_ > 0) {
    // Refusing the message refuses its other recipients too: a 5xx would
    // bounce their mail, a 4xx has the client retry on a new connection,
    // where the recipient rule refuses only its recipient, at RCPT.
    v = Verdict2::tempfail;
    mta.set_reply("451 4.7.1 a recipient of this message now requires TLS (policy reloaded): try again");
  } else {
    mta.set_reply(held_reply_);
  }
  held_ = Verdict2::go_on;
  return v;
}

Verdict2 Session::enforce(const Verdict& v, bool can_reply, const std::string& what, Mta& mta) {
  std::string why = rule_where(*snap_, v.rule);
  std::string tls = tls_.version.empty() ? "no TLS" : fmt::format("{} {} bits", tls_.version, tls_.bits);
  if (v.action == Action::monitor) {
    std::string line = fmt::format("monitor: would reject {} ({}): {} ({})", what, tls, v.reply, why);
    mta.log(LOG_NOTICE, line);
    notes_.push_back(line);
    stats().milter_would_reject.add();
    return Verdict2::go_on;
  }
  (v.action == Action::reject ? stats().milter_reject : stats().milter_tempfail).add();
  Verdict2 verdict = v.action == Action::reject ? Verdict2::reject : Verdict2::tempfail;
  if (!can_reply) {
    mta.log(LOG_NOTICE, fmt::format("{} {} ({}): {} ({}); applied at DATA: this connection was opened "
                                    "when no rule could stop mail at this stage",
                                    action_name(v.action), what, tls, v.reply, why));
    if (held_ == Verdict2::go_on) held_ = verdict, held_reply_ = v.reply;
    return Verdict2::go_on;
  }
  mta.log(LOG_NOTICE, fmt::format("{} {} ({}): {} ({})", action_name(v.action), what, tls, v.reply, why));
  mta.set_reply(v.reply);
  return verdict;
}

void Session::header(const std::string& name) {
  if (snap_ && iequals(name, snap_->settings.milter.header)) ++forged_headers_;
}

void Session::end_of_message(Mta& mta) {
  if (!snap_) return;
  const MilterSettings& m = snap_->settings.milter;
  std::string qid = mta.macro("i").value_or("NOQUEUE");
  // Delete from the last occurrence down so indexes stay valid either way
  // the MTA counts deleted headers.
  for (int i = forged_headers_; i >= 1; --i) mta.delete_header(m.header, i);
  if (forged_headers_ > 0)
    mta.log(LOG_NOTICE, fmt::format("{}: removed {} {} header(s) the client sent", qid, forged_headers_, m.header));
  if (outbound_) {
    std::string value = enforces_tls(strictest_)       ? m.header_require
                        : strictest_ == Level::none    ? std::string()
                                                        : m.header_try;
    if (!value.empty()) mta.insert_header(0, m.header, value);
    if (!value.empty()) (enforces_tls(strictest_) ? stats().milter_require : stats().milter_try).add();
    mta.log(LOG_INFO, fmt::format("{}: outbound from=<{}>: {}: {} (strictest level {})", qid, sender_, m.header,
                                  value.empty() ? "none added" : value, level_name(strictest_)));
  }
  for (auto& n : notes_) mta.log(LOG_INFO, fmt::format("{}: {}", qid, n));
  abort();
}

void Session::abort() {
  snap_.reset();
  outbound_ = false;
  sender_.clear();
  strictest_ = Level::none;
  notes_.clear();
  forged_headers_ = 0;
  held_ = Verdict2::go_on;
  held_reply_.clear();
  held_at_rcpt_ = false;
  passed_rcpts_ = 0;
}

}  // namespace tlspolicy
