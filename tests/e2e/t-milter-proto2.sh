#!/usr/bin/env bash
# tests/e2e/t-milter-proto2.sh -- Postfix speaking milter protocol 2 (no
# DATA command, no SMFIP_NR_*) to tlspolicyd, and a reload that adds an
# inbound recipient rule while an SMTP session is open.
#
# Usage: t-milter-proto2.sh [TLSPOLICYD]. Needs root; loopback only.
#
# libmilter offers the milter every SMFIP_NR_* flag and fakes the reply for
# an MTA without them, so tlspolicyd negotiates "no reply at RCPT" with this
# Postfix too when its policy has no recipient rule. A rule a reload adds
# under the open session is then held for DATA, which protocol 2 never
# sends: it must still refuse the message (at end of message).
# Checks:
#   0. TLS facts without HELO and without a MAIL macro list (protocol 2):
#      *@partner.test with STARTTLS -> 250 at MAIL, without -> 530.
#   1. session opened under v1 (sender rule only), SIGHUP to v2 (adds
#      legal@ours.test requires TLS), then without TLS MAIL, RCPT legal@,
#      DATA, message: refused (5xx somewhere), nothing queued.
#   2. a new session under v2: RCPT legal@ refused with 550 5.7.1.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TLSPOLICYD=$(realpath -e "${1:-$ROOT/build/tlspolicyd}")
# shellcheck source-path=SCRIPTDIR source=lib/postfix.sh
. "$HERE/lib/postfix.sh"
TIME_LIMIT=90
# shellcheck source-path=SCRIPTDIR source=lib/checks.sh
. "$HERE/lib/checks.sh"

e2e_init
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -z "${SUMMARY_DONE-}" ]; then
        echo "FAIL - t-milter-proto2 aborted (exit $rc); $FAILS check(s) had failed"
    fi
    (exit "$rc")
    e2e_cleanup
}
trap on_exit EXIT

mkdir -p "$E2E_DIR/bin"
cp "$TLSPOLICYD" "$E2E_DIR/bin/tlspolicyd"
TLSPOLICYD=$E2E_DIR/bin/tlspolicyd
TD_LOG=$E2E_DIR/daemon-tlspolicyd.log

while :; do
    read -r SM_PORT MILTER_PORT <<<"$(_e2e_free_ports 2)"
    case " $PF_PORT $SINK_PORT " in *" $SM_PORT "* | *" $MILTER_PORT "*) continue ;; esac
    break
done
TD_DIR=$E2E_DIR/tlspolicy
TD_CONF=$TD_DIR/tlspolicy.conf
mkdir -p "$TD_DIR"
policy() {  # policy EXTRA_INBOUND_RULE
    cat <<EOF
default = "may";
inbound = (
  { name = "partner"; from = [ "*@partner.test" ]; }$1
);
daemon = {
  socketmap = [ "inet:127.0.0.1:$SM_PORT" ];
  milter = "inet:127.0.0.1:$MILTER_PORT";
  control = "$TD_DIR/control.sock";
};
EOF
}
policy "" >"$TD_CONF"
policy ',
  { name = "legal"; to = [ "legal@ours.test" ]; }' >"$TD_DIR/next.conf"

e2e_daemon_start tlspolicyd "$TLSPOLICYD" -c "$TD_CONF" -f
wait_for "_e2e_listening 127.0.0.1 $MILTER_PORT" 10 || die "tlspolicyd not listening: $(tail -n 5 "$TD_LOG")"

e2e_host ours.test 127.0.0.2
sink_start out 127.0.0.2 --starttls
PF_MAIN_EXTRA="smtpd_milters = { inet:127.0.0.1:$MILTER_PORT, protocol=2, default_action=tempfail }
milter_content_timeout = 5s"
pf_start

# 0. Protocol 2 has no macro list request: the TLS facts come only with the
# HELO macros, which Postfix sends although the milter skips HELO.
mail_reply() {  # mail_reply NAME: the reply to MAIL FROM in swaks transcript NAME
    grep -A1 -E -- '^ [-~]> MAIL FROM' "$E2E_DIR/swaks-$1.log" | sed -n '2s/^<[-~*][* ] *//p'
}
timeout 40 swaks --server "127.0.0.1:$PF_PORT" --tls --from a@partner.test --to x@ours.test \
    --quit-after RCPT --timeout 15 </dev/null >"$E2E_DIR/swaks-tls.log" 2>&1 || true
expect_eq "0 protocol 2, STARTTLS: MAIL FROM partner" "$(mail_reply tls)" "250 2.1.0 Ok"
timeout 40 swaks --server "127.0.0.1:$PF_PORT" --from a@partner.test --to x@ours.test \
    --quit-after RCPT --timeout 15 </dev/null >"$E2E_DIR/swaks-plain.log" 2>&1 || true
expect_eq "0 protocol 2, no TLS: MAIL FROM partner" "$(mail_reply plain)" \
    "530 5.7.0 Must issue a STARTTLS command first"

# The SMTP session: EHLO, wait for the reload, then one message without TLS.
# Prints one line per reply: "mail CODE", "rcpt CODE", "data CODE", "end CODE".
client() {
    timeout 40 "$E2E_PYTHON" - "$PF_PORT" "$1" <<'EOF'
import smtplib, subprocess, sys
port, hook = int(sys.argv[1]), sys.argv[2]
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.e2e.test", timeout=15)
s.ehlo()
subprocess.run(["bash", "-c", hook], check=True)
def say(what, r):
    print("%s %d %s" % (what, r[0], r[1].decode(errors="replace")), flush=True)
    return r[0]
if say("mail", s.mail("y@other.test")) == 250 and say("rcpt", s.rcpt("legal@ours.test")) == 250:
    if say("data", s.docmd("DATA")) == 354:
        s.send(b"Subject: t\r\nX-E2E-ID: proto2\r\n\r\nbody\r\n.\r\n")
        say("end", s.getreply())
s.quit()
EOF
}

before=$(grep -c 'reloaded ' "$TD_LOG" || true)
out=$(client "cp '$TD_DIR/next.conf' '$TD_CONF.tmp' && mv '$TD_CONF.tmp' '$TD_CONF' && kill -HUP $(e2e_daemon_pid tlspolicyd) &&
      for i in \$(seq 100); do [ \"\$(grep -c 'reloaded .*2 inbound rules' '$TD_LOG')\" -gt $before ] && exit 0; sleep 0.1; done; exit 1" 2>&1) || true
sed 's/^/# /' <<<"$out"
check "1 reload seen by the daemon" grep -q 'reloaded .*2 inbound rules' "$TD_LOG"
check "1 open session, mail to legal@ without TLS after the reload: refused" \
    grep -qE '^(rcpt|data|end) 5[0-9][0-9] ' <<<"$out"
check "1 nothing queued for legal@" test -z "$(grep '^end 250' <<<"$out")"

out=$(client "true" 2>&1) || true
expect_eq "2 new session under v2: RCPT legal@" "$(sed -n 's/^rcpt //p' <<<"$out")" \
    "550 5.7.1 <legal@ours.test>: TLS required for mail to this recipient"

e2e_finish 3 t-milter-proto2
