// MTA-STS (RFC 8461) as text: the _mta-sts TXT record, the policy file, the
// MX pattern match and the answer Postfix understands. Pure functions, no
// I/O: discovery/sts_fetch.* gets the bytes, discovery/sts_cache.* keeps
// them, and these decide what they mean. Errors are text for the log.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tlspolicy::sts {

// The TXT record of _mta-sts.<domain> (RFC 8461 3.1).
struct TxtRecord {
  enum class Status {
    found,    // exactly one STSv1 record, syntactically valid: id is set
    none,     // no STSv1 record: the domain has no MTA-STS policy
    invalid,  // several STSv1 records or a malformed one: no policy (3.1), error says why
  };
  Status status = Status::none;
  std::string id;     // 1 to 32 letters and digits
  std::string error;  // for none (when there were records) and invalid
};

// Decides from all TXT records of _mta-sts.<domain>, each one already the
// concatenation of its character-strings. Records that do not start with
// "v=STSv1" are discarded; more than one remaining is invalid (RFC 8461 3.1).
TxtRecord parse_txt_records(const std::vector<std::string>& records);
// One record, strictly by the ABNF of RFC 8461 3.1.
TxtRecord parse_txt_record(std::string_view record);

enum class Mode { enforce, testing, none };
std::string_view mode_name(Mode m);

constexpr uint32_t max_max_age = 31557600;  // RFC 8461 3.2: one year
constexpr size_t max_policy_size = 64 * 1024;  // RFC 8461 3.3's suggested limit

// A policy file (RFC 8461 3.2) that parsed.
struct Policy {
  Mode mode = Mode::none;
  std::vector<std::string> mx;  // patterns as published, lower case: "mx1.example.net", "*.example.net"
  uint32_t max_age = 0;         // seconds
  // The policy's non-empty lines without line ends, in order, for the
  // TLSRPT policy_string attributes (RFC 8460 4.4).
  std::vector<std::string> lines;
};

struct PolicyResult {
  std::optional<Policy> policy;
  std::string error;  // when policy is empty: "line 3: ..." or "no \"mode\" field"
};

// Parses a policy file strictly: lines end in LF or CRLF; each is
// "key: value"; version must be STSv1, mode enforce/testing/none, max_age
// 0..31557600 in at most 10 digits, mx a host name, "*." allowed only as
// the whole leftmost label; at least one mx unless mode is none. Unknown keys
// are ignored and a repeated key other than mx keeps its first value
// (RFC 8461 3.2). Empty lines are skipped (they carry no field; refusing
// them would drop a domain's protection over a cosmetic slip). Field names
// and values are case-sensitive, as the ABNF (%s"...") says.
PolicyResult parse_policy(std::string_view text);

// RFC 8461 4.1: a pattern matches a host name exactly, or "*.example.net"
// matches exactly one label in its place ("mx1.example.net", not
// "example.net" nor "a.b.example.net"). Case-insensitive; a trailing dot on
// the host is ignored.
bool mx_matches(std::string_view pattern, std::string_view host);
// Whether any of the policy's patterns matches the MX host.
bool policy_allows_mx(const Policy& p, std::string_view host);

// The smtp_tls_policy_maps answer for an enforce policy:
//   secure match=mx1.example.net:.example.net servername=hostname
// "*.example.net" is written ".example.net": Postfix's match pattern
// ".example.net" accepts certificate names with one or more labels before
// example.net, so it is laxer than MTA-STS's one label, as with
// postfix-mta-sts-resolver and postfix-tlspol, which answer the same. The
// MX host name itself is checked against the patterns with mx_matches()
// where the MX answer is known.
struct AnswerOptions {
  // Add the Postfix 3.10 TLSRPT attributes (TLSRPT_README): policy_type=sts
  // policy_domain=<domain> [policy_ttl=<n>] mx_host_pattern=<p>...
  // { policy_string = <line> }... Older Postfix refuses these.
  bool tlsrpt = false;
  std::string domain;               // the policy domain, for policy_domain=
  std::optional<uint32_t> ttl;      // policy_ttl=, seconds Postfix may cache the answer
};
std::string postfix_answer(const Policy& p, const AnswerOptions& opt = {});

}  // namespace tlspolicy::sts
