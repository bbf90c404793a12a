// The compiled policy: rules, their entries indexed per lookup dimension, and
// the settings of the front ends. Built once by config.cpp, then immutable:
// lookups take no locks and do no I/O, so any number of threads may share one
// snapshot while a reload builds the next (see holder.hpp).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <memory>

#include "policy/level.hpp"
#include "policy/matcher.hpp"
#include "policy/stats.hpp"

namespace tlspolicy {

constexpr uint32_t kNone = UINT32_MAX;

enum class Direction { outbound, inbound };
enum class Action { reject, tempfail, monitor };
std::string_view action_name(Action a);
// What happens to mail when the partner cannot meet an enforcing rule: Postfix
// retries it (defer, its own behaviour) or returns it to the sender at the
// first failure (bounce: routed to Settings::bounce_transport, whose
// smtp_delivery_status_filter turns the 4.7.x TLS deferral into 5.7.x).
// inherit = the top-level on_failure.
enum class OnFailure { inherit, defer, bounce };

// TLS protocol versions as Postfix reports them in {tls_version}; 0 = unknown.
int protocol_rank(std::string_view version);

struct Rule {
  std::string name;  // from the config, or "outbound rule #N"
  uint32_t file = 0, line = 0;
  Direction direction = Direction::outbound;
  bool is_default = false;
  // enabled = false: the entries are parsed and checked, but indexed apart
  // (Snapshot::disabled) where lookups never look; only explain does.
  bool enabled = true;
  // outbound
  TlsPolicy policy;
  std::string transport;  // per-rule override of Settings::transport (and bounce_transport)
  OnFailure on_failure = OnFailure::inherit;
  // MX-aware entries (IP/CIDR matched against MX addresses, mx: names): when
  // DNS fails, defer (TEMP) or go on as if this rule did not match.
  bool dns_failure_defers = true;
  // Has MX-aware destination entries: IP/CIDR (when a discovery block is
  // configured) or mx: host names. Set while loading.
  bool mx_aware = false;
  // override = true: this rule's answer for the names it lists wins over
  // discovered DANE and MTA-STS even when weaker (an exception for a
  // partner whose DANE or MTA-STS is broken). Without it, where a rule and
  // a discovered policy both apply, the stricter wins. `check` lists them.
  bool override_discovery = false;
  bool has_to = false, has_from = false;  // destination / sender entries (for tlspolicy postfix-config)
  // inbound
  bool require_tls = true;
  int min_bits = 0;
  std::string min_protocol;  // "" or e.g. "TLSv1.2"
  Action action = Action::reject;
  std::string reply;  // custom reply template, "" for the standard ones

  bool same_effect(const Rule& o) const {
    return direction == o.direction && policy == o.policy && transport == o.transport &&
           on_failure == o.on_failure && dns_failure_defers == o.dns_failure_defers &&
           override_discovery == o.override_discovery &&
           require_tls == o.require_tls && min_bits == o.min_bits &&
           min_protocol == o.min_protocol && action == o.action && reply == o.reply;
  }
};

struct EntryInfo {
  uint32_t rule, file, line, text_off, text_len;
};

struct DaemonSettings {
  std::vector<std::string> socketmap{"inet:127.0.0.1:10461"};
  std::string milter;  // "" = no milter
  std::string metrics;  // "" = no Prometheus endpoint; else inet:IP:PORT
  // The control socket (tlspolicy status, reload, query --daemon).
  std::string control = "/run/tlspolicyd/control.sock";
  std::string user, group;
  std::string socket_owner, socket_group;
  unsigned socket_mode = 0660;
  int idle_timeout = 60;  // seconds; longer than Postfix's 10 s client idle close
  int max_connections = 1024;
  bool log_all_lookups = false;
  bool log_rule_lookups = true;  // one line per lookup a rule (not the default) decided
  // A reload started by a file change that would remove more than this
  // percentage of the enforcing entries is refused (SIGHUP forces it); 100 = off.
  int reload_guard = 50;
};

struct MilterSettings {
  std::string header = "X-TLSLevel";
  std::string header_require = "Require";
  std::string header_try = "Try";
  bool authenticated_is_outbound = true;
  // {daemon_name} values: Postfix sends its milter_macro_daemon_name (default
  // $myhostname), so give the submission service -o milter_macro_daemon_name=NAME.
  std::vector<std::string> outbound_daemons;
  Action failure_action = Action::tempfail;
};

enum class Route { stricter, enforced };

// Discovery (discovery/): DNS for MX-aware rules and DANE. Off unless the
// configuration asks for it (an MX-aware entry, or dane != off), so a static
// policy never sends a DNS query.
enum class DaneMode { off, dane, dane_only };
// The discovered sources, in the order they are asked: the first with an
// answer is "the discovered policy" (RFC 8461 section 2: DANE first).
enum class DiscoveredSource { dane, mta_sts };

// discovery = { mta_sts = { ... }; }: MTA-STS (RFC 8461), off unless present.
struct MtaStsSettings {
  bool enabled = false;
  std::string ca_file;  // "" = the system CA store (libcurl's built-in path)
  // The persistent policy cache (SQLite), kept across restarts: RFC 8461
  // asks senders to keep a policy until max_age.
  std::string cache_file = "/var/lib/tlspolicy/mta-sts.db";
  size_t cache_entries = 100000;   // policies kept (LRU beyond)
  int connect_timeout_ms = 10000;
  int fetch_timeout_ms = 60000;    // per fetch (RFC 8461 3.3 suggests a minute)
  size_t max_size = 64 * 1024;     // policy file size limit
  size_t max_fetches = 1024;       // distinct domains fetched at once
  bool tlsrpt = false;             // add Postfix 3.10's TLSRPT attributes to the answer
  // Tests only: "mta-sts.a.test:443:127.0.0.1:4443" (CURLOPT_CONNECT_TO).
  std::vector<std::string> connect_to;
};
std::string_view dane_mode_name(DaneMode m);  // "off", "dane", "dane-only"
struct DiscoverySettings {
  // A discovery = { ... }; block is present. Without one, nothing is
  // discovered: IP/CIDR entries match only [ip] next hops, as before, and
  // mx: entries are an error (so an upgrade never starts sending DNS queries).
  bool configured = false;
  // Where libunbound sends its queries: "" = full recursion from the root;
  // else forwarders "IP[@PORT]" (a local validating resolver, the test fixture).
  std::vector<std::string> forwarders;
  // The DNSSEC trust anchor libunbound validates with (a file of DS/DNSKEY
  // records, or an RFC 5011 auto-trust-anchor file); "" = no validation of
  // our own: then trust_forwarder_ad decides.
  std::string trust_anchor_file = "/usr/share/dns/root.key";
  // Trust the AD bit of the forwarders' answers instead of validating
  // (a validating resolver on a trusted path, such as loopback).
  bool trust_forwarder_ad = false;
  int query_timeout_ms = 2000;  // per DNS question (libunbound's retries within)
  int deadline_ms = 5000;       // per socketmap request that waits for discovery
  int max_outstanding = 1000;   // destinations being discovered at once; beyond: TEMP
  size_t cache_entries = 100000;  // cached DNS answers (LRU beyond)
  int negative_ttl_max = 900;     // cap on negative caching (seconds)
  int failure_ttl = 30;           // a failed lookup is retried after this many seconds
  DaneMode dane = DaneMode::off;
  // When DNS fails for a destination an MX-aware rule might cover: defer
  // (TEMP; nothing leaves in plaintext) or go on as if no rule matched.
  // Per rule too (Rule::dns_failure_defers).
  bool dns_failure_defers = true;
  MtaStsSettings mta_sts;
  // prefer = "dane" (default) | "mta-sts": which discovered source is asked
  // first. Switch one off with dane = "off" or no mta_sts block.
  std::vector<DiscoveredSource> order{DiscoveredSource::dane, DiscoveredSource::mta_sts};
};


struct Settings {
  bool subdomains = true;
  std::string recipient_delimiter = "+";
  std::string transport = "smtp-tls-encrypt:";
  // The service for recipients under a rule with on_failure = "bounce".
  std::string bounce_transport = "smtp-tls-bounce:";
  OnFailure on_failure = OnFailure::defer;
  Route route = Route::stricter;
  int sendmail_min_bits = 112;  // the bits in Sendmail's "ENCR:<bits>" answers
  bool allow_empty = false;     // a config without any rule is an error unless this says so
  DaemonSettings daemon;
  MilterSettings milter;
  DiscoverySettings discovery;
};

// The entries of one disabled rule, indexed as they would be if it were on:
// for `query --explain` ("would match"). One set per rule, so a disabled
// rule never conflicts with enabled ones (only one of them is in force).
struct DisabledRule {
  uint32_t rule;
  Matcher destinations, senders, inbound_senders, inbound_recipients, clients;
  Matcher mx_names;  // mx: entries
};

struct Snapshot {
  std::vector<std::string> files;  // file names rules and entries point into
  std::vector<Rule> rules;
  std::vector<EntryInfo> entries;
  std::string entry_text;
  Matcher destinations, senders;                           // outbound
  // mx: entries of outbound rules, matched against the MX host names that
  // discovery found ("mx:aspmx.l.google.com" exact, "mx:.outlook.com" below).
  Matcher mx_names;
  Matcher inbound_senders, inbound_recipients, clients;    // inbound
  Matcher outbound_clients;                                // milter direction
  uint32_t default_rule = kNone;
  // The milter stages at which some enabled inbound rule can reject or
  // tempfail (not monitor, not an exemption): MAIL (sender and client
  // entries) and RCPT (recipient entries). The milter asks the MTA for a
  // reply only at those (SMFIP_NR_MAIL / SMFIP_NR_RCPT otherwise).
  struct {
    bool mail = false, rcpt = false;
  } inbound_stops;
  // Discovery is configured and something can use it (an enabled MX-aware
  // entry, or dane != off): the daemon creates a resolver only then, and a
  // snapshot without it never sends a DNS query.
  bool needs_dns = false;
  // Some enabled MX-aware rule defers when DNS fails (on_dns_failure = "defer").
  bool mx_aware_defers = false;
  std::vector<std::unique_ptr<DisabledRule>> disabled;
  Settings settings;
  // Lookups each rule decided, for the metrics (the one mutable part: counters).
  std::unique_ptr<Counter[]> rule_hits;

  std::string_view text(uint32_t entry) const {
    return std::string_view(entry_text).substr(entries[entry].text_off, entries[entry].text_len);
  }
  std::string where(const Rule& r) const;
  std::string where_entry(uint32_t entry) const;
  size_t rule_count(Direction d) const;  // enabled rules only
  size_t entry_count(uint32_t rule) const;
  // "4 outbound rules (5 destination entries, ...), 2 inbound rules (...), default may"
  // (and ", 1 disabled rule (3 entries not in force)" when there are some)
  // "4 outbound rules (5 destination entries, ...), 2 inbound rules (...), default may"
  std::string summary() const;
  // Does this entry demand TLS (an outbound rule whose level enforces it, an
  // inbound rule that requires it and is not in monitor mode)?
  bool entry_enforces(uint32_t entry) const;
  // Does mail under this outbound rule go back to the sender at the first TLS
  // failure (the rule enforces TLS and its on_failure, or the top level's, is bounce)?
  bool bounces(uint32_t rule) const;
  size_t enforcing_entries() const;
};

// What a reload would take away: enforcing entries of `before` whose text no
// enforcing entry of `after` has, with up to `limit` of them named ("text
// (file:line)"). For the reload guard's log line.
struct Shrink {
  size_t before = 0, after = 0, gone = 0;
  std::vector<std::string> examples;
};
Shrink enforcing_shrink(const Snapshot& before, const Snapshot& after, size_t limit);

}  // namespace tlspolicy
