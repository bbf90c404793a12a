#!/usr/bin/env bash
# tests/e2e/t-harness.sh -- smoke test of the e2e harness (lib/postfix.sh).
#
# Starts a STARTTLS sink (tls.test -> 127.0.0.2) and a plain sink
# (plain.test -> 127.0.0.3) and a private Postfix, then checks:
#   1. smtpd offers STARTTLS (swaks --tls if Net::SSLeay is there, else
#      openssl s_client),
#   2. mail to tls.test arrives over TLS, mail to plain.test in clear, and the
#      sink keeps the raw message (our header, Postfix's Received:),
#   3. with smtp_tls_policy_maps = inline:{ plain.test=encrypt } + reload,
#      mail to plain.test stays deferred with "TLS is required, but was not
#      offered" in postqueue -j and never reaches the sink, even after a flush,
#   4. cleanup leaves no process and no temp dir behind.
# Exit 0 only if every check holds. Needs root. No network beyond 127/8.
set -euo pipefail

. "$(dirname "$0")/lib/postfix.sh"

start=$(date +%s)
ok() { echo "ok - $*"; }

e2e_init
e2e_host tls.test 127.0.0.2
e2e_host plain.test 127.0.0.3
sink_start tls 127.0.0.2 --starttls
sink_start plain 127.0.0.3
pf_start

# 1. inbound STARTTLS on the instance's smtpd
in_tls=()
if perl -MNet::SSLeay -e1 2>/dev/null; then
    in_tls=(--tls)         # the tls.test message below is submitted over TLS
    ok "swaks has Net::SSLeay: submitting over STARTTLS"
else
    out=$(openssl s_client -starttls smtp -connect "127.0.0.1:$PF_PORT" \
        -brief </dev/null 2>&1) || true
    grep -q 'Protocol version: TLS' <<<"$out" ||
        e2e_fail "smtpd did not negotiate STARTTLS: $out"
    ok "smtpd offers STARTTLS ($(grep -m1 'Protocol version' <<<"$out"))" \
        "[swaks --tls unavailable: no libnet-ssleay-perl]"
fi

# 2. delivery to both sinks with the default smtp_tls_security_level=may
qid=$(pf_send sender@src.test user@tls.test -- "${in_tls[@]}" \
    --add-header "X-E2E-Check: tls-one")
ok "queued $qid for user@tls.test"
if [ ${#in_tls[@]} -gt 0 ]; then
    grep -q 'smtpd.*TLS connection established from' "$PF_MAILLOG" ||
        e2e_fail "swaks --tls: no inbound TLS in maillog"
    ok "smtpd logged the inbound TLS session"
fi
qid=$(pf_send sender@src.test user@plain.test -- --add-header "X-E2E-Check: plain-one")
ok "queued $qid for user@plain.test"

sink_wait tls 1 20 || e2e_fail "tls.test message did not reach sink tls"
sink_wait plain 1 20 || e2e_fail "plain.test message did not reach sink plain"
f=$(sink_last tls)
[ "$(sink_field "$f" tls)" = true ] || e2e_fail "tls.test message arrived without TLS"
ok "tls.test delivered with tls=true ($(sink_field "$f" tls_version) $(sink_field "$f" cipher))"
[ "$(sink_field "$f" rcpt_tos)" = user@tls.test ] || e2e_fail "wrong rcpt at sink tls"
[ "$(sink_field "$f" mail_from)" = sender@src.test ] || e2e_fail "wrong sender at sink tls"
data=$(sink_field "$f" data)
grep -q '^X-E2E-Check: tls-one' <<<"$data" || e2e_fail "X-E2E-Check header missing in raw data"
grep -q '^Received: from client.e2e.test' <<<"$data" || e2e_fail "Postfix Received: missing"
ok "raw message kept (X-E2E-Check and Received: headers present)"
f=$(sink_last plain)
[ "$(sink_field "$f" tls)" = false ] || e2e_fail "plain.test message arrived with TLS"
grep -q '^X-E2E-Check: plain-one' <<<"$(sink_field "$f" data)" ||
    e2e_fail "X-E2E-Check header missing at sink plain"
ok "plain.test delivered with tls=false"
pf_queue_wait_empty 10 || e2e_fail "queue not empty: $(pf_queue_json)"
ok "queue empty"

# 3. static policy: plain.test must be encrypted -> stays deferred
pf_postconf -e 'smtp_tls_policy_maps = inline:{ plain.test=encrypt }'
pf_reload
ok "reloaded with smtp_tls_policy_maps = $(pf_postconf -h smtp_tls_policy_maps)"
qid=$(pf_send sender@src.test user2@plain.test)
ok "queued $qid for user2@plain.test"
want="TLS is required, but was not offered"
wait_for "pf_queue_reason user2@plain.test | grep -qF '$want'" 20 ||
    e2e_fail "no deferral '$want' in postqueue -j: $(pf_queue_json)"
ok "deferred: $(pf_queue_reason user2@plain.test)"
grep -q "to=<user2@plain.test>.*status=deferred" "$PF_MAILLOG" ||
    e2e_fail "no status=deferred line in maillog"
ok "maillog has status=deferred for user2@plain.test"
# One more delivery attempt must fail the same way.
attempts() { grep -c "to=<user2@plain.test>.*status=deferred" "$PF_MAILLOG" || true; }
n=$(attempts)
pf_flush
wait_for "[ \$(attempts) -gt $n ]" 15 || e2e_fail "no retry after postqueue -f"
pf_queue_reason user2@plain.test | grep -qF "$want" ||
    e2e_fail "message left the queue after retry: $(pf_queue_json)"
[ "$(sink_count plain)" -eq 1 ] || e2e_fail "sink plain got $(sink_count plain) messages, want 1"
ok "still deferred after retry; sink plain still has 1 message"

# 4. cleanup leaves nothing behind
dir=$E2E_DIR
master=$E2E_PF_MASTER_PID
pids="$master ${E2E_SINK_PIDS[*]}"
e2e_cleanup
trap - EXIT
for p in $pids; do      # zombies waiting for PID 1 to reap them are gone
    ! ps -o stat= -p "$p" | grep -qv '^Z' ||
        { echo "FAIL: process $p still running" >&2; exit 1; }
done
left="$(_e2e_pgrp_alive "$master") $(pgrep -f "$dir" || true)"
if [ -n "${left// /}" ]; then
    echo "FAIL: processes left: $left" >&2
    exit 1
fi
if [ "${E2E_KEEP:-0}" != 1 ] && [ -e "$dir" ]; then
    echo "FAIL: $dir not removed" >&2
    exit 1
fi
ok "cleanup: no processes left, temp dir removed"
echo "PASS t-harness ($(( $(date +%s) - start ))s)"
