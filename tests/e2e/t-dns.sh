#!/usr/bin/env bash
# tests/e2e/t-dns.sh -- MX-aware rules and DANE end to end: tlspolicyd
# learning the destination from DNS (the fixture in tests/dns), a real
# private Postfix that resolves MX hosts and validates TLSA itself through
# the same fixture, and sinks on the loopback addresses the MX hosts have.
#
# Usage: t-dns.sh [TLSPOLICYD [TLSPOLICY]]   (default build/tlspolicyd,
#        build/tlspolicy of this repository). Needs root. Loopback only.
#
# DNS: tests/dns/fixture.py (unbound on 127.0.0.1@PORT for tlspolicyd's
# libunbound, and on a unique 127.53.x.y:53 for Postfix, whose private
# resolv.conf says "options trust-ad"), TLSA 3 1 1 records for the harness
# certificate at _25._tcp (what tlspolicyd checks) and _SINK_PORT._tcp (what
# Postfix checks: it connects to smtp_tcp_port).
# Postfix: smtp_dns_support_level = dnssec, smtp_host_lookup = dns,
# smtp_tls_policy_maps = socketmap to tlspolicyd.
# Sinks (port SINK_PORT): "tls" 127.0.0.2 (STARTTLS, harness cert), "enc"
# 127.0.2.25 (plain, inside the force-encrypt CIDR 127.0.2.0/24), "open"
# 127.0.0.3 (plain, outside).
# tlspolicyd: default may; discovery forwarding to the fixture with its
# trust anchor, dane = "dane-only", query_timeout 800 ms; rule force-encrypt
# (encrypt) to 127.0.2.0/24 and mx:.protect.plain.test.
#
# Checks:
#   0. the socketmap answers: dane.dnssec.test dane-only, enc/multi/encnomx/
#      hosted.plain.test encrypt, open.plain.test may, x.servfail.test TEMP.
#   1. enc.plain.test (MX address inside the CIDR, plain sink): deferred "TLS
#      is required", nothing at the sink; multi.plain.test (one of its two MX
#      hosts inside), encnomx.plain.test (no MX, own address inside) and
#      hosted.plain.test (MX host under mx:.protect.plain.test) likewise;
#      open.plain.test (unlisted, plain sink): delivered in plaintext.
#   2. dane.dnssec.test (MX = the TLS sink, good TLSA): delivered over TLS,
#      maillog "Verified TLS connection established to mx.dane.dnssec.test".
#   3. badtlsa.dnssec.test (same sink, wrong TLSA): deferred, nothing
#      received for it.
#   4. 1400ms.slow.test: Postfix (glibc, 3 s timeout) resolves it, tlspolicyd
#      (800 ms per question) cannot: its TEMP defers the mail ("client TLS
#      configuration problem"), nothing at the open sink.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TLSPOLICYD=$(realpath -e "${1:-$ROOT/build/tlspolicyd}")
TLSPOLICY=$(realpath -e "${2:-$ROOT/build/tlspolicy}")

# shellcheck source-path=SCRIPTDIR source=lib/postfix.sh
. "$HERE/lib/postfix.sh"
# shellcheck source-path=SCRIPTDIR source=../dns/fixture.sh
. "$HERE/../dns/fixture.sh"
TIME_LIMIT=240
# shellcheck source-path=SCRIPTDIR source=lib/checks.sh
. "$HERE/lib/checks.sh"

e2e_start_script t-dns
# The longest wait for one outcome (only a failing run waits it out): an
# ASan build on a loaded machine has taken over 20 s for the first deferral.
MSG_TIMEOUT=45

# sink_got SINK RCPT: "tls=<bool>" per message SINK got for RCPT.
sink_got() {
    "$E2E_PYTHON" - "$E2E_DIR/sink-$1" "$2" <<'PY'
import glob, json, os, sys
d, rcpt = sys.argv[1], sys.argv[2].lower()
for f in sorted(glob.glob(os.path.join(d, "*.json"))):
    m = json.load(open(f, encoding="utf-8"))
    if rcpt in [t.lower() for t in m["rcpt_tos"]]:
        print("tls=%s" % ("true" if m["tls"] else "false"))
PY
}

# sm_raw MAP KEY: tlspolicyd's raw socketmap reply (one request, one netstring).
sm_raw() {
    "$E2E_PYTHON" - "$TD_PORT" "$1" "$2" <<'PY'
import socket, sys
port, name, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
q = ("%s %s" % (name, key)).encode()
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"%d:%s," % (len(q), q))
buf = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    buf += c
    n, _, rest = buf.partition(b":")
    if n.isdigit() and len(rest) >= int(n) + 1:
        print(rest[:int(n)].decode(errors="replace"))
        break
else:
    print("(connection closed: %r)" % buf)
PY
}

# deferred_for RCPT: true once RCPT's queue entry has a deferral reason.
deferred_for() {
    local r
    r=$(q_reasons "$1" | head -n1)
    [ -n "$r" ] && [ "$r" != "(no reason yet)" ]
}

send() { pf_send "$@" >/dev/null || die "smtpd did not accept mail from $1 to ${*:2}"; }

# --------------------------------------------------------------- setup --

# SINK_PORT is known after e2e_init: the fixture publishes TLSA at it too.
e2e_daemon_start dns "$E2E_PYTHON" "$DNS_FIXTURE_PY" --dir "$E2E_DIR/dns" --resolver53 \
    --tlsa-cert "$E2E_CERT" --tlsa-port 25 --tlsa-port "$SINK_PORT" --slow-ms 200 \
    --addr tls=127.0.0.2 --addr enc=127.0.2.25 --addr open=127.0.0.3
dns_fixture_wait "$E2E_DIR/dns" "$(e2e_daemon_pid dns)" ||
    die "DNS fixture did not start: $(tail -n 20 "$E2E_DIR/daemon-dns.log")"
ok "DNS fixture: $DNS_FORWARDER for tlspolicyd, $DNS_RESOLVER:53 for Postfix"
printf 'nameserver %s\noptions trust-ad timeout:3 attempts:1\n' "$DNS_RESOLVER" >"$E2E_DIR/resolv.conf"

e2e_tlspolicyd_paths
cat >"$TD_CONF" <<EOF
# generated by t-dns.sh
default = "may";
discovery = {
  forwarders = [ "$DNS_FORWARDER" ];
  trust_anchor_file = "$DNS_ANCHOR";
  trust_forwarder_ad = false;
  query_timeout = 800;
  deadline = 3000;
  max_outstanding = 1000;
  cache_entries = 100000;
  dane = "dane-only";
  on_dns_failure = "defer";
};
outbound = (
  { name = "force-encrypt"; level = "encrypt"; to = [ "127.0.2.0/24", "mx:.protect.plain.test" ]; }
);
daemon = { socketmap = [ "inet:127.0.0.1:$TD_PORT" ]; };
EOF
"$TLSPOLICY" check -c "$TD_CONF" >/dev/null 2>&1 ||
    die "tlspolicy check rejects the config: $("$TLSPOLICY" check -c "$TD_CONF" 2>&1 | head -n 5)"
e2e_daemon_start tlspolicyd "$TLSPOLICYD" -c "$TD_CONF" -f
wait_for "_e2e_listening 127.0.0.1 $TD_PORT" 10 || die "tlspolicyd did not start: $(tail -n 5 "$TD_LOG")"

sink_start tls 127.0.0.2 --starttls
sink_start enc 127.0.2.25
sink_start open 127.0.0.3

PF_MAIN_EXTRA="smtp_dns_support_level = dnssec
smtp_host_lookup = dns
dnssec_probe = ns:dnssec.test
smtp_tls_policy_maps = $SM:tls-policy"
pf_start

# ------------------------------------------------------- 0. the answers --

for c in "dane.dnssec.test dane-only" "enc.plain.test encrypt" "multi.plain.test encrypt" \
         "encnomx.plain.test encrypt" "hosted.plain.test encrypt" "open.plain.test may"; do
    read -r key want <<<"$c"
    got=$(sm_raw tls-policy "$key")
    case $got in
        "OK $want" | "OK $want "*) ok "0 socketmap $key: $got" ;;
        *) fail "0 socketmap $key: '$got', want 'OK $want...'" ;;
    esac
done
got=$(sm_raw tls-policy x.servfail.test)
case $got in
    TEMP*) ok "0 socketmap x.servfail.test (SERVFAIL, rule may apply): $got" ;;
    *) fail "0 socketmap x.servfail.test: '$got', want TEMP <reason>" ;;
esac

send s@src.test u@enc.plain.test
send s@src.test u@multi.plain.test
send s@src.test u@encnomx.plain.test
send s@src.test u@hosted.plain.test
send s@src.test u@open.plain.test
send s@src.test u@dane.dnssec.test
send s@src.test u@badtlsa.dnssec.test
send s@src.test u@1400ms.slow.test

# ------------------------------------------------ 1. MX-aware encrypt --

for c in "enc.plain.test enc" "multi.plain.test open" "encnomx.plain.test enc" "hosted.plain.test open"; do
    read -r dom sink <<<"$c"
    if wait_for "deferred_for u@$dom" "$MSG_TIMEOUT" &&
       q_reasons "u@$dom" | head -n1 | grep -q 'TLS is required, but was not offered'; then
        ok "1 $dom: deferred: $(q_reasons "u@$dom" | head -n1)"
    else
        fail "1 $dom: queue '$(q_reasons "u@$dom" | head -n1)', want 'TLS is required, but was not offered'"
    fi
done
if wait_for "[ -n \"\$(sink_got open u@open.plain.test)\" ]" "$MSG_TIMEOUT"; then
    expect_eq "1 open.plain.test (unlisted) delivered to the plain sink" \
        "$(sink_got open u@open.plain.test | head -n1)" "tls=false"
else
    fail "1 open.plain.test: nothing at the open sink; queue: '$(q_reasons u@open.plain.test | head -n1)'"
fi

# ----------------------------------------------------------- 2. DANE --

if wait_for "[ -n \"\$(sink_got tls u@dane.dnssec.test)\" ]" "$MSG_TIMEOUT"; then
    expect_eq "2 dane.dnssec.test delivered to the TLS sink" \
        "$(sink_got tls u@dane.dnssec.test | head -n1)" "tls=true"
else
    fail "2 dane.dnssec.test: nothing at the tls sink; queue: '$(q_reasons u@dane.dnssec.test | head -n1)'"
fi
if grep -q 'Verified TLS connection established to mx\.dane\.dnssec\.test\[127\.0\.0\.2\]' "$PF_MAILLOG"; then
    ok "2 maillog: Verified TLS connection established to mx.dane.dnssec.test"
else
    fail "2 maillog has no 'Verified TLS connection established to mx.dane.dnssec.test': $(grep 'mx.dane' "$PF_MAILLOG" | tail -n 2)"
fi

# ------------------------------------------------------ 3. wrong TLSA --

if wait_for "deferred_for u@badtlsa.dnssec.test" "$MSG_TIMEOUT"; then
    ok "3 badtlsa.dnssec.test: deferred: $(q_reasons u@badtlsa.dnssec.test | head -n1)"
else
    fail "3 badtlsa.dnssec.test: not deferred; queue '$(q_reasons u@badtlsa.dnssec.test | head -n1)'"
fi
if grep -q 'mx\.badtlsa\.dnssec\.test.*no matching DANE TLSA records' "$PF_MAILLOG"; then
    ok "3 maillog: no matching DANE TLSA records for mx.badtlsa.dnssec.test"
else
    fail "3 maillog: no DANE verification failure for mx.badtlsa.dnssec.test: $(grep 'badtlsa' "$PF_MAILLOG" | tail -n 2)"
fi

# ------------------------------------------------------ 4. DNS failure --

if wait_for "deferred_for u@1400ms.slow.test" "$MSG_TIMEOUT" &&
   q_reasons u@1400ms.slow.test | head -n1 | grep -q 'client TLS configuration problem'; then
    ok "4 1400ms.slow.test (tlspolicyd's DNS too slow): deferred: $(q_reasons u@1400ms.slow.test | head -n1)"
else
    fail "4 1400ms.slow.test: queue '$(q_reasons u@1400ms.slow.test | head -n1)', want 'client TLS configuration problem'"
fi
got=$(sm_raw tls-policy 1400ms.slow.test)
case $got in
    TEMP*) ok "4 socketmap 1400ms.slow.test: $got" ;;
    *) fail "4 socketmap 1400ms.slow.test: '$got', want TEMP <reason>" ;;
esac

# ---------------------------------------------------- nothing leaked --

pf_flush >/dev/null 2>&1 || true
sleep 3
for c in "enc u@enc.plain.test" "enc u@multi.plain.test" "open u@multi.plain.test" "enc u@encnomx.plain.test" \
         "open u@hosted.plain.test" "tls u@badtlsa.dnssec.test" "open u@1400ms.slow.test"; do
    read -r sink rcpt <<<"$c"
    check "after a flush: nothing for $rcpt at the $sink sink" test -z "$(sink_got "$sink" "$rcpt")"
done

e2e_finish 4 t-dns
