#!/usr/bin/env bash
# tests/e2e/t-mta-sts.sh -- MTA-STS (RFC 8461) end to end: tlspolicyd
# discovering the _mta-sts TXT record through the DNS fixture (tests/dns,
# zone sts.test), fetching the policy over real HTTPS from the loopback
# fixture with a test CA (tests/sts/https_fixture.py run as a process), and a
# real private Postfix that resolves the MX hosts through the same DNS
# fixture and checks the MX certificate itself (smtp_tls_CAfile = the test
# CA) against the "secure match=..." answer.
#
# Usage: t-mta-sts.sh [TLSPOLICYD [TLSPOLICY]]   (default build/tlspolicyd,
#        build/tlspolicy of this repository). Needs root. Loopback only.
#
# Domains (tests/dns/README.md, tests/sts/README.md; every MX host is
# mx.<domain> at 127.0.0.2, the TLS sink):
#   enforce.sts.test   enforce, mx: mx.enforce.sts.test
#   wildcard.sts.test  enforce, mx: *.wildcard.sts.test
#   mismatch.sts.test  enforce, mx: mx.elsewhere.sts.test (does not cover its MX)
#   testing.sts.test   testing (reported, not enforced)
#   down.sts.test      enforce, mx: mx.down.sts.test; an admin rule "may"
#                      with override = true (a broken partner's exception)
#   idchange.sts.test  enforce, mx: mx.idchange.sts.test; an admin rule "may"
#                      without override (the stricter MTA-STS policy wins)
# HTTPS: reached by tlspolicyd through mta_sts.connect_to (libcurl
# CONNECT_TO: the certificate is still checked for mta-sts.<domain>, against
# mta_sts.ca_file = the test CA).
# Sink "tls" on 127.0.0.2: STARTTLS with a certificate from the same test CA
# naming mx.enforce/mx.wildcard/mx.mismatch.sts.test, so the only thing
# wrong with mismatch.sts.test is its policy's mx pattern (mx.testing,
# mx.down and mx.idchange are not named: mail to those domains is delivered
# only if their MTA-STS policy is not enforced).
# tlspolicyd: default may, discovery forwarding to the DNS fixture, mta_sts
# on, its persistent cache in the test directory.
#
# Checks:
#   0. the socketmap answers: enforce "secure match=mx.enforce.sts.test
#      servername=hostname", wildcard "secure match=.wildcard.sts.test ...",
#      mismatch "secure match=mx.elsewhere.sts.test ...", testing and a domain
#      without MTA-STS (open.plain.test) "may".
#   1. (a) u@mismatch.sts.test: deferred "Server certificate not verified",
#      maillog "server certificate verification failed for
#      mx.mismatch.sts.test...: num=62:hostname mismatch" (the chain is
#      trusted: only the policy's mx pattern is wrong), nothing at the sink.
#   2. (b) u@enforce.sts.test, u@wildcard.sts.test: delivered over TLS,
#      maillog "Verified TLS connection established to mx.<domain>";
#      u@testing.sts.test delivered too (testing mode enforces nothing).
#   2b. precedence: down.sts.test answers "may" (the override rule wins) and
#      its mail is delivered; idchange.sts.test answers MTA-STS's secure (a
#      weaker rule without override loses) and its mail is deferred.
#   3. (c) tlspolicyd stopped, the HTTPS fixture stopped, tlspolicyd started
#      again on the same cache: its log says the policies were loaded from
#      the cache file; the same answers (the fixture is down, so they come
#      from the cache); new mail to mismatch deferred, to enforce
#      and wildcard delivered with "Verified TLS connection".
#   4. after a flush nothing for mismatch.sts.test or idchange.sts.test
#      reached the sink.
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

e2e_start_script t-mta-sts
MSG_TIMEOUT=45
STS_HTTPS_PY=$ROOT/tests/sts/https_fixture.py

# shellcheck source-path=SCRIPTDIR source=lib/delivery.sh
. "$HERE/lib/delivery.sh"

# https_start: start the HTTPS fixture (tests/sts/https_fixture.py, its
# process mode) and source its https.env (STS_PORT STS_CA STS_CONNECT_TO
# STS_DIR).
https_start() {
    e2e_daemon_start https "$E2E_PYTHON" "$STS_HTTPS_PY" --dir "$E2E_DIR/https"
    wait_for "[ -s '$E2E_DIR/https/https.env' ] || ! e2e_daemon_pid https >/dev/null" 60 || true
    [ -s "$E2E_DIR/https/https.env" ] ||
        die "HTTPS fixture did not start: $(tail -n 20 "$E2E_DIR/daemon-https.log")"
    # shellcheck disable=SC1091
    . "$E2E_DIR/https/https.env"
}

# mx_cert: a certificate for the MX hosts from the HTTPS fixture's test CA
# (what a real MX with a public certificate is to a real MTA-STS domain);
# sets MX_CERT and MX_KEY.
mx_cert() {
    local d=$E2E_DIR/mx-tls
    mkdir -p "$d"
    printf 'subjectAltName=DNS:mx.enforce.sts.test,DNS:mx.wildcard.sts.test,DNS:mx.mismatch.sts.test\n' >"$d/ext"
    if ! openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=mx.enforce.sts.test \
            -keyout "$d/key.pem" -out "$d/csr.pem" >"$d/openssl.log" 2>&1 ||
       ! openssl x509 -req -in "$d/csr.pem" -CA "$STS_CA" -CAkey "$STS_DIR/ca.key" -CAcreateserial \
            -days 2 -extfile "$d/ext" -out "$d/cert.pem" >>"$d/openssl.log" 2>&1; then
        die "cannot issue the MX certificate: $(cat "$d/openssl.log")"
    fi
    chmod 644 "$d/cert.pem"
    MX_CERT=$d/cert.pem MX_KEY=$d/key.pem
}

# td_start: start tlspolicyd on TD_CONF and wait until it listens.
td_start() {
    e2e_daemon_start tlspolicyd "$TLSPOLICYD" -c "$TD_CONF" -f
    wait_for "_e2e_listening 127.0.0.1 $TD_PORT" 15 || die "tlspolicyd did not start: $(tail -n 5 "$TD_LOG")"
}

# answers STEP: check the socketmap answers for the three policies and a
# domain without MTA-STS.
answers() {
    local step=$1 got
    for c in "enforce.sts.test secure match=mx.enforce.sts.test servername=hostname" \
             "wildcard.sts.test secure match=.wildcard.sts.test servername=hostname" \
             "mismatch.sts.test secure match=mx.elsewhere.sts.test servername=hostname" \
             "testing.sts.test may" "open.plain.test may"; do
        read -r key want <<<"$c"
        got=$(sm_raw tls-policy "$key")
        case $got in
            "OK $want") ok "$step socketmap $key: $got" ;;
            *) fail "$step socketmap $key: '$got', want 'OK $want'" ;;
        esac
    done
}

# --------------------------------------------------------------- setup --

e2e_daemon_start dns "$E2E_PYTHON" "$DNS_FIXTURE_PY" --dir "$E2E_DIR/dns" --resolver53 \
    --addr tls=127.0.0.2 --addr enc=127.0.2.25 --addr open=127.0.0.3
dns_fixture_wait "$E2E_DIR/dns" "$(e2e_daemon_pid dns)" ||
    die "DNS fixture did not start: $(tail -n 20 "$E2E_DIR/daemon-dns.log")"
ok "DNS fixture: $DNS_FORWARDER for tlspolicyd, $DNS_RESOLVER:53 for Postfix"
printf 'nameserver %s\noptions timeout:3 attempts:1\n' "$DNS_RESOLVER" >"$E2E_DIR/resolv.conf"

https_start
ok "HTTPS fixture on 127.0.0.1:$STS_PORT, test CA $STS_CA"
mx_cert

e2e_tlspolicyd_paths
mkdir -p "$E2E_DIR/sts-cache"   # not in TD_DIR: the daemon watches that one
connect_to=
for c in $STS_CONNECT_TO; do connect_to+="${connect_to:+, }\"$c\""; done
cat >"$TD_CONF" <<EOF
# generated by t-mta-sts.sh
default = "may";
discovery = {
  forwarders = [ "$DNS_FORWARDER" ];
  trust_anchor_file = "$DNS_ANCHOR";
  query_timeout = 800;
  deadline = 10000;   # the first request waits for TXT + fetch: room for an ASan build on a loaded machine
  mta_sts = {
    ca_file = "$STS_CA";
    cache = "$E2E_DIR/sts-cache/mta-sts.db";
    connect_to = [ $connect_to ];
  };
};
outbound = (
  { name = "partners"; level = "encrypt"; to = [ "partner.test" ]; },
  { name = "broken-partner"; level = "may"; override = true; to = [ "down.sts.test" ]; },
  { name = "weak-rule"; level = "may"; to = [ "idchange.sts.test" ]; }
);
daemon = { socketmap = [ "inet:127.0.0.1:$TD_PORT" ]; };
EOF
"$TLSPOLICY" check -c "$TD_CONF" >/dev/null 2>&1 ||
    die "tlspolicy check rejects the config: $("$TLSPOLICY" check -c "$TD_CONF" 2>&1 | head -n 5)"
td_start

# The TLS sink presents a certificate for the MX names from the test CA.
E2E_CERT=$MX_CERT E2E_KEY=$MX_KEY sink_start tls 127.0.0.2 --starttls

PF_MAIN_EXTRA="smtp_dns_support_level = enabled
smtp_host_lookup = dns
smtp_tls_CAfile = $STS_CA
smtp_tls_policy_maps = $SM:tls-policy"
pf_start

# ------------------------------------------------------- 0. the answers --

answers 0

send s@src.test u@mismatch.sts.test
send s@src.test u@enforce.sts.test
send s@src.test u@wildcard.sts.test
send s@src.test u@testing.sts.test
send s@src.test u@down.sts.test
send s@src.test u@idchange.sts.test

# verified_to STEP HOST FROM_LINE: maillog (from line FROM_LINE on) has
# "Verified TLS connection established to HOST[127.0.0.2]".
verified_to() {
    local h=${2//./\\.}
    if tail -n +"$3" "$PF_MAILLOG" | grep -q "Verified TLS connection established to $h\[127\.0\.0\.2\]"; then
        ok "$1 maillog: Verified TLS connection established to $2"
    else
        fail "$1 maillog has no 'Verified TLS connection established to $2': $(grep -F "$2" "$PF_MAILLOG" | tail -n 2)"
    fi
}

# delivered STEP RCPT FROM_LINE: RCPT reached the TLS sink over TLS, through a
# verified connection to its MX.
delivered() {
    local dom=${2#*@}
    if wait_for "[ -n \"\$(sink_got tls $2)\" ]" "$MSG_TIMEOUT"; then
        expect_eq "$1 $2 delivered to the TLS sink" "$(sink_got tls "$2" | head -n1)" "tls=true"
        verified_to "$1" "mx.$dom" "$3"
    else
        fail "$1 $2: nothing at the tls sink; queue: '$(q_reasons "$2" | head -n1)'"
    fi
}

# deferred STEP RCPT: RCPT deferred because the MX certificate does not match.
deferred() {
    local dom=${2#*@} why
    if wait_for "deferred_for $2" "$MSG_TIMEOUT"; then
        why=$(q_reasons "$2" | head -n1)
        case $why in
            *"not verified"* | *"certificate verification failed"*) ok "$1 $2 deferred: $why" ;;
            *) fail "$1 $2 deferred for another reason: '$why'" ;;
        esac
    else
        fail "$1 $2: not deferred; queue '$(q_reasons "$2" | head -n1)'"
    fi
}

# ------------------------------------- 1. enforce, MX not in the policy --

deferred 1 u@mismatch.sts.test
# The certificate chains to the CA Postfix trusts; only the name is wrong.
if grep -q 'server certificate verification failed for mx\.mismatch\.sts\.test\[127\.0\.0\.2\]:[0-9]*: num=62:hostname mismatch' "$PF_MAILLOG"; then
    ok "1 maillog: $(grep 'verification failed for mx\.mismatch\.sts\.test' "$PF_MAILLOG" | head -n1 | sed 's/^.*postfix-e2e\///')"
else
    fail "1 maillog has no 'hostname mismatch' for mx.mismatch.sts.test: $(grep mismatch "$PF_MAILLOG" | tail -n 3)"
fi

# ------------------------------------------- 2. enforce, MX matches --

delivered 2 u@enforce.sts.test 1
delivered 2 u@wildcard.sts.test 1
if wait_for "[ -n \"\$(sink_got tls u@testing.sts.test)\" ]" "$MSG_TIMEOUT"; then
    ok "2 u@testing.sts.test (testing: not enforced) delivered"
else
    fail "2 u@testing.sts.test: nothing at the tls sink; queue: '$(q_reasons u@testing.sts.test | head -n1)'"
fi

# ------------------------------------------------ 2b. precedence --

for c in "down.sts.test may" "idchange.sts.test secure match=mx.idchange.sts.test servername=hostname"; do
    read -r key want <<<"$c"
    got=$(sm_raw tls-policy "$key")
    case $got in
        "OK $want") ok "2b socketmap $key: $got" ;;
        *) fail "2b socketmap $key: '$got', want 'OK $want'" ;;
    esac
done
if wait_for "[ -n \"\$(sink_got tls u@down.sts.test)\" ]" "$MSG_TIMEOUT"; then
    ok "2b u@down.sts.test (override = true: may) delivered"
else
    fail "2b u@down.sts.test: nothing at the tls sink; queue: '$(q_reasons u@down.sts.test | head -n1)'"
fi
deferred 2b u@idchange.sts.test

# ------------------------- 3. restart with the HTTPS fixture down --

e2e_daemon_stop tlspolicyd
e2e_daemon_stop https
expect_eq "3 HTTPS fixture stopped" "$(_e2e_listening 127.0.0.1 "$STS_PORT" && echo listening || echo down)" down
from=$(( $(wc -l <"$PF_MAILLOG") + 1 ))
td_from=$(( $(wc -l <"$TD_LOG") + 1 ))
td_start
# The restarted daemon read the policies back from its cache file.
loaded=$(tail -n +"$td_from" "$TD_LOG" | sed -n 's/.*MTA-STS cache .*: \([0-9]*\) policies loaded.*/\1/p' | head -n1)
if [ "${loaded:-0}" -ge 5 ]; then
    ok "3 tlspolicyd log after the restart: $loaded policies loaded from the cache"
else
    fail "3 tlspolicyd log after the restart: '${loaded:-no line}' policies loaded from the cache, want >= 5: $(tail -n +"$td_from" "$TD_LOG" | head -n 3)"
fi
answers 3
send s@src.test u2@mismatch.sts.test
send s@src.test u2@enforce.sts.test
send s@src.test u2@wildcard.sts.test
delivered 3 u2@enforce.sts.test "$from"
delivered 3 u2@wildcard.sts.test "$from"
deferred 3 u2@mismatch.sts.test

# ---------------------------------------------------- nothing leaked --

pf_flush >/dev/null 2>&1 || true
sleep 3
for r in u@mismatch.sts.test u2@mismatch.sts.test u@idchange.sts.test; do
    check "4 after a flush: nothing for $r at the sink, still queued" \
        test -z "$(sink_got tls "$r")" -a -n "$(q_reasons "$r")"
done

e2e_finish 5 t-mta-sts
