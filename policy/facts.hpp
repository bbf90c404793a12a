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

// MTA-STS (RFC 8461) for one next-hop domain, as discovery found it: the
// _mta-sts TXT record, the policy fetched over HTTPS or kept in the
// persistent cache, and what it means for Postfix. Filled by discovery/
// (the TXT lookup, the fetch, the cache, RFC 8461 section 5's rules);
// policy/maps.cpp merges it with DANE and the admin's rules.
enum class StsMode { none, testing, enforce };
struct StsFacts {
  // MTA-STS is on and the next hop is a domain (not "[host]"): the rest
  // means something. False: MTA-STS was not asked.
  bool asked = false;
  // A policy applies: enforce (answer set) or testing (no enforcement,
  // reported as "would enforce"). False: no TXT record and nothing cached,
  // a "none" policy, or nothing could be fetched and nothing is cached
  // (RFC 8461 section 5: deliver as if the domain had no MTA-STS).
  bool in_force = false;
  StsMode mode = StsMode::none;
  std::string id;                // the policy's id (the TXT record's when it was fetched)
  std::vector<std::string> mx;   // the policy's mx patterns, as written ("mail.example", "*.example")
  int64_t max_age = 0;           // seconds, from the policy
  int64_t expires = 0;           // unix time the (cached) policy expires
  // enforce: Postfix's answer, "secure match=mail.example:.example
  // servername=hostname" (with the 3.10 TLSRPT attributes when configured).
  std::string answer;
  // For --explain and the log, one line each: where the policy came from
  // ("fetched https://mta-sts.partner.example/.well-known/mta-sts.txt",
  // "cache (id 2026...; TXT id unchanged)", "cache: the refetch failed
  // (HTTP 404); kept until it expires") and why there is none, if none.
  std::string source;
  std::string note;
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
  StsFacts sts;             // MTA-STS, when asked
  // Every DNS answer used, in the order asked, for --explain.
  std::vector<DnsRecordSet> answers;
};

}  // namespace tlspolicy
