// What discovery (discovery/: DNS, DANE, later MTA-STS) learned about one
// next-hop destination, as plain data. policy/ never does I/O: the merge of
// the admin's rules with these facts is a pure function of (snapshot, facts)
// in maps.cpp, so `tlspolicy query`, the daemon and the unit tests share it
// and the tests need no network.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "policy/names.hpp"

namespace tlspolicy {

// DNSSEC status of one answer, as a validating resolver reports it.
enum class DnsSecurity { insecure, secure, bogus };

// The outcome of one DNS question.
enum class DnsStatus {
  ok,        // an answer with records
  nodata,    // the name exists, no records of this type
  nxdomain,  // the name does not exist
  failed,    // SERVFAIL, timeout, refused, or over the deadline: nothing known
};

// One DNS answer as --explain shows it:
// "MX partner.example: 10 mx1.partner.example (secure, ttl 300)".
struct DnsRecordSet {
  std::string name;  // the question's name (A-label, no trailing dot)
  std::string type;  // "MX", "A", "AAAA", "TLSA"
  DnsStatus status = DnsStatus::failed;
  DnsSecurity security = DnsSecurity::insecure;
  uint32_t ttl = 0;                 // of the records or of the negative answer
  std::vector<std::string> data;    // presentation form of each record
  std::string error;                // why, when status == failed
};

// TLSA state of one MX host (_25._tcp.<host>).
enum class TlsaState {
  none,      // no TLSA records (NXDOMAIN/NODATA), or the lookup was insecure
  usable,    // secure, at least one record of a usage Postfix honours (2 or 3)
  unusable,  // secure records, none usable: TLS still mandatory, unauthenticated (RFC 7672 2.2)
  failed,    // lookup failed or bogus: RFC 7672 says do not deliver in the clear
};

struct MxHost {
  std::string name;  // A-label host name, lower case, no trailing dot
  int preference = 0;
  std::vector<IpAddr> addrs;         // A and AAAA
  DnsSecurity addr_security = DnsSecurity::insecure;
  bool addr_failed = false;          // A/AAAA lookup failed (SERVFAIL/timeout)
  TlsaState tlsa = TlsaState::none;
};

struct DestinationFacts {
  std::string destination;  // the next hop as asked: "partner.example" or "[mx.example]"
  bool literal = false;     // "[host]" or "[ip]": no MX lookup, host itself
  // The MX answer (or, for a literal, the host's address answer) failed:
  // nothing is known, and a rule that might apply must not be assumed away.
  bool failed = false;
  std::string error;        // the reason, for the TEMP answer and the log
  bool implicit_mx = false; // no MX records: the domain itself is the host (RFC 5321 5.1)
  bool null_mx = false;     // "MX 0 ." (RFC 7505): the domain accepts no mail
  DnsSecurity mx_security = DnsSecurity::insecure;
  std::vector<MxHost> mx;   // by preference
  // Every DNS answer used, in the order asked, for --explain.
  std::vector<DnsRecordSet> answers;
};

}  // namespace tlspolicy
