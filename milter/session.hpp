// The milter's logic, free of libmilter: one Session per SMTP connection,
// fed the envelope and headers, answering with decisions and header edits
// through the Mta interface (a thin wrapper over smfi_* in production, a
// fake in unit tests). Each transaction uses the snapshot current at MAIL
// FROM until it ends, so a reload never changes rules mid-message.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "policy/holder.hpp"
#include "policy/maps.hpp"

namespace tlspolicy {

// What the session needs from the MTA connection.
class Mta {
 public:
  virtual ~Mta() = default;
  virtual std::optional<std::string> macro(const char* name) = 0;  // smfi_getsymval
  virtual void set_reply(const std::string& reply) = 0;             // "550 5.7.1 text"
  virtual void insert_header(int index, const std::string& name, const std::string& value) = 0;
  virtual void delete_header(const std::string& name, int occurrence) = 0;  // 1-based
  virtual void log(int priority, const std::string& text) = 0;
};

enum class Verdict2 { go_on, reject, tempfail };  // maps to SMFIS_CONTINUE / REJECT / TEMPFAIL

class Session {
 public:
  explicit Session(const PolicyHolder& holder) : holder_(holder) {}

  // Whether the MTA waits for a reply at MAIL and RCPT (negotiated per
  // connection from the snapshot current then: SMFIP_NR_MAIL/NR_RCPT when no
  // inbound rule can stop mail there). A reject or tempfail that comes up at
  // a stage without a reply (a reload added such a rule while the
  // connection was open) is held and returned by data(): the message is
  // still refused, at DATA.
  void set_replies(bool at_mail, bool at_rcpt) { reply_mail_ = at_mail, reply_rcpt_ = at_rcpt; }

  void connect(const std::optional<IpAddr>& client, Mta& mta);  // ::ffff:a.b.c.d counts as a.b.c.d
  void helo(Mta& mta);
  Verdict2 mail(const std::string& sender, Mta& mta);
  Verdict2 rcpt(const std::string& rcpt, Mta& mta);
  Verdict2 data(Mta& mta);  // a decision held from a stage without a reply, else go_on
  void header(const std::string& name);
  void end_of_message(Mta& mta);
  void abort();  // ends the transaction, keeps the connection (STARTTLS resets too)
  bool outbound() const { return outbound_; }

 private:
  Verdict2 enforce(const Verdict& v, bool can_reply, const std::string& what, Mta& mta);
  void read_tls(Mta& mta);

  const PolicyHolder& holder_;
  // connection
  std::optional<IpAddr> client_;
  std::string client_text_;
  std::string daemon_name_;
  TlsFacts tls_;
  // transaction
  std::shared_ptr<const Snapshot> snap_;
  bool outbound_ = false;
  std::string sender_;
  Level strictest_ = Level::none;
  std::vector<std::string> notes_;  // per-recipient decisions, logged again with the queue ID
  int forged_headers_ = 0;
  Verdict2 held_ = Verdict2::go_on;  // see set_replies()
  std::string held_reply_;
  bool held_at_rcpt_ = false;  // held_ came from a recipient...
  int passed_rcpts_ = 0;       // ...and this many recipients were not refused
  bool reply_mail_ = true, reply_rcpt_ = true;
};

}  // namespace tlspolicy
