#!/usr/bin/env bash
# tests/e2e/t-idn.sh -- internationalised domains through a real (private)
# Postfix: SMTPUTF8 mail makes Postfix ask the maps with the UTF-8 name
# (bücher.test, jürgen@straße.test), whatever form the rule is written in.
#
# Usage: t-idn.sh [TLSPOLICYD [TLSPOLICY]]   (default build/tlspolicyd,
#        build/tlspolicy of this repository). Needs root. Loopback only.
#
# Postfix (smtputf8_enable = yes) asks tlspolicyd through
#   smtp_tls_policy_maps = socketmap:...:tls-policy
#   transport_maps       = socketmap:...:transport
# with master.cf service smtp-tls-encrypt (smtp_tls_security_level=encrypt).
# The private hosts file knows the destinations only by their A-labels
# (xn--bcher-kva.test, xn--strae-oqa.test): Postfix converts the UTF-8 next
# hop to ASCII for the host lookup, and mail to a may destination arriving
# at the sink proves that it does. One sink, 127.0.0.3, without STARTTLS.
# Mail is sent with SMTPUTF8 by Python's smtplib (swaks 20201014 has no
# SMTPUTF8 option).
#
# Checks:
#   1. rules written as A-labels (xn--bcher-kva.test encrypt,
#      vip@xn--strae-oqa.test encrypt): postmap -q with the UTF-8 key ==
#      tlspolicy query == encrypt; SMTPUTF8 mail to user1@bücher.test stays
#      deferred "TLS is required, but was not offered" (on the code before
#      IDN support it was delivered in plaintext), also after a retry;
#      vip@straße.test is routed to smtp-tls-encrypt and stays deferred;
#      other@straße.test (no rule, default may) is delivered in plaintext;
#      the daemon's log shows Postfix asked with the UTF-8 names.
#   2. the same rules rewritten as U-labels (bücher.test, vip@straße.test,
#      jürgen@straße.test), reloaded: user2@BÜCHER.test and
#      Jürgen@straße.test stay deferred, other2@straße.test is delivered.
#   3. summary: the sink never got mail for an enforced recipient; cleanup.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TLSPOLICYD=$(realpath -e "${1:-$ROOT/build/tlspolicyd}")
TLSPOLICY=$(realpath -e "${2:-$ROOT/build/tlspolicy}")

# shellcheck source-path=SCRIPTDIR source=lib/postfix.sh
. "$HERE/lib/postfix.sh"
TIME_LIMIT=120
# shellcheck source-path=SCRIPTDIR source=lib/checks.sh
. "$HERE/lib/checks.sh"

e2e_init
on_exit() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ] && [ -z "${SUMMARY_DONE-}" ]; then
        echo "FAIL - t-idn aborted (exit $rc) after $(( $(date +%s) - START ))s; $FAILS check(s) had failed"
    fi
    (exit "$rc")
    e2e_cleanup
}
trap on_exit EXIT

mkdir -p "$E2E_DIR/bin"
cp "$TLSPOLICYD" "$E2E_DIR/bin/tlspolicyd"
cp "$TLSPOLICY" "$E2E_DIR/bin/tlspolicy"
TLSPOLICYD=$E2E_DIR/bin/tlspolicyd
TLSPOLICY=$E2E_DIR/bin/tlspolicy

# ------------------------------------------------------------- helpers --

# send_utf8 FROM TO...: submit one message with MAIL FROM ... SMTPUTF8.
send_utf8() {
    "$E2E_PYTHON" - "$PF_PORT" "$@" <<'EOF' || die "smtpd did not accept SMTPUTF8 mail from $1 to ${*:2}"
import smtplib, sys
port, sender, rcpts = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
msg = ("From: <%s>\r\nTo: %s\r\nSubject: t-idn\r\nX-E2E-Test: t-idn\r\n\r\nIDN test.\r\n"
       % (sender, ", ".join("<%s>" % r for r in rcpts))).encode("utf-8")
with smtplib.SMTP("127.0.0.1", port, local_hostname="client.e2e.test", timeout=20) as s:
    s.ehlo()
    if not s.has_extn("smtputf8"):
        sys.exit("smtpd does not offer SMTPUTF8")
    s.sendmail(sender, rcpts, msg, mail_options=["SMTPUTF8"])
EOF
}

# q_reasons RCPT: delay_reason of every queued copy for RCPT (case-insensitive).
q_reasons() {
    pf_queue_json | "$E2E_PYTHON" -c '
import json, sys
r = sys.argv[1].lower()
for line in sys.stdin:
    if line.strip():
        for x in json.loads(line).get("recipients", []):
            if x.get("address", "").lower() == r:
                print(x.get("delay_reason", "") or "(no reason yet)")
' "$1"
}

# sink_to RCPT: "tls=<bool> to=<rcpts>" per message the sink got for RCPT.
sink_to() {
    "$E2E_PYTHON" - "$E2E_DIR/sink-plain" "$1" <<'EOF'
import glob, json, os, sys
d, rcpt = sys.argv[1], sys.argv[2].lower()
for f in sorted(glob.glob(os.path.join(d, "*.json"))):
    m = json.load(open(f, encoding="utf-8"))
    tos = [t.lower() for t in m["rcpt_tos"]]
    if rcpt in tos:
        print("tls=%s to=%s" % ("true" if m["tls"] else "false", ",".join(tos)))
EOF
}

WANT_TLS='TLS is required, but was not offered'
MSG_TIMEOUT=15

# wait_deferred RCPT DESC: a "TLS is required" deferral and nothing at the sink.
wait_deferred() {
    if wait_for "q_reasons '$1' | grep -qF '$WANT_TLS'" "$MSG_TIMEOUT" && [ -z "$(sink_to "$1")" ]; then
        ok "$2: deferred: $(q_reasons "$1" | head -n1)"
    else
        fail "$2: no '$WANT_TLS' deferral; queue: '$(q_reasons "$1" | head -n1)' sink: '$(sink_to "$1")'"
    fi
}

# wait_plain RCPT DESC: delivered to the sink without TLS.
wait_plain() {
    if wait_for "[ -n \"\$(sink_to '$1')\" ]" "$MSG_TIMEOUT"; then
        expect_eq "$2: at the sink" "$(sink_to "$1" | head -n1 | cut -d' ' -f1)" tls=false
    else
        fail "$2: nothing at the sink; queue: '$(q_reasons "$1" | head -n1)'"
    fi
}

# same_answer KEY MAP WANT: postmap -q over the socketmap == tlspolicy query == WANT.
same_answer() {
    local pout qout
    pout=$(pf_postmap -q "$1" "$SM:$2" 2>&1) || true
    qout=$("$TLSPOLICY" query -c "$TD_CONF" -m "$2" "$1" 2>&1) || true
    if [ "$pout" = "$3" ] && [ "$qout" = "$3" ]; then
        ok "postmap -q '$1' $2 = tlspolicy query = '$3'"
    else
        fail "postmap -q '$1' $2: '$pout'; tlspolicy query: '$qout'; want '$3'"
    fi
}

# --------------------------------------------------------------- setup --

e2e_tlspolicyd_paths
# conf_text DOMAIN_ENTRY ADDRESS_ENTRIES (a list's inside: "a", "b")
conf_text() {
    cat <<EOF
# generated by t-idn.sh
default = "may";
outbound = (
  { name = "idn-domain"; level = "encrypt"; to = [ "$1" ]; },
  { name = "idn-address"; level = "encrypt"; to = [ $2 ]; }
);
daemon = {
  socketmap = [ "inet:127.0.0.1:$TD_PORT" ];
  log_all_lookups = true;
};
EOF
}
write_conf() {
    printf '%s\n' "$1" >"$TD_CONF.swp"
    mv -f "$TD_CONF.swp" "$TD_CONF"
}
write_conf "$(conf_text xn--bcher-kva.test '"vip@xn--strae-oqa.test"')"
"$TLSPOLICY" check -c "$TD_CONF" >/dev/null || die "tlspolicy check rejects the A-label config"
e2e_daemon_start tlspolicyd "$TLSPOLICYD" -c "$TD_CONF" -f
wait_for "_e2e_listening 127.0.0.1 $TD_PORT" 10 || die "tlspolicyd did not start: $(tail -n 5 "$TD_LOG")"

e2e_host xn--bcher-kva.test 127.0.0.3
e2e_host xn--strae-oqa.test 127.0.0.3
sink_start plain 127.0.0.3

PF_MAIN_EXTRA="smtputf8_enable = yes
smtp_tls_policy_maps = $SM:tls-policy
transport_maps = $SM:transport"
PF_MASTER_EXTRA='smtp-tls-encrypt unix - - n - - smtp -o smtp_tls_security_level=encrypt -o smtp_tls_policy_maps='
pf_start

# ------------------------------------------------ 1. A-label rules --

same_answer bücher.test tls-policy encrypt
same_answer BÜCHER.test tls-policy encrypt
same_answer .bücher.test tls-policy encrypt
same_answer vip@straße.test transport smtp-tls-encrypt:

send_utf8 s1@src.test user1@bücher.test vip@straße.test other@straße.test
wait_deferred user1@bücher.test "1 user1@bücher.test, rule written xn--bcher-kva.test"
wait_deferred vip@straße.test "1 vip@straße.test, address rule written vip@xn--strae-oqa.test (transport_maps)"
wait_plain other@straße.test "1 other@straße.test (no rule): Postfix resolved the A-label"
# Postfix asked with the UTF-8 names (the daemon logs them with '?' for bytes >= 0x80).
check "1 Postfix asked tls-policy with the UTF-8 name ($(grep -m1 -o 'lookup tls-policy b??cher.test[^(]*' "$TD_LOG" || echo none))" \
    grep -q 'lookup tls-policy b??cher.test: OK encrypt' "$TD_LOG"
check "1 Postfix asked transport with the UTF-8 address" \
    grep -q 'lookup transport vip@stra??e.test: OK smtp-tls-encrypt:' "$TD_LOG"
n=$(grep -c 'status=deferred' "$PF_MAILLOG" || true)
pf_flush
wait_for "[ \$(grep -c 'status=deferred' '$PF_MAILLOG') -gt $n ]" "$MSG_TIMEOUT" || true
wait_deferred user1@bücher.test "1 user1@bücher.test after a retry"

# ------------------------------------------------ 2. U-label rules --

before=$(grep -c 'reloaded' "$TD_LOG" || true)
write_conf "$(conf_text bücher.test '"jürgen@straße.test", "vip@straße.test"')"
"$TLSPOLICY" check -c "$TD_CONF" >/dev/null || fail "2 tlspolicy check rejects the U-label config"
wait_for "[ \$(grep -c 'reloaded' '$TD_LOG') -gt $before ]" 5 || fail "2 no reload after the edit: $(tail -n 3 "$TD_LOG")"
same_answer bücher.test tls-policy encrypt
same_answer xn--bcher-kva.test tls-policy encrypt
same_answer Jürgen+x@straße.test transport smtp-tls-encrypt:
same_answer vip@xn--strae-oqa.test transport smtp-tls-encrypt:

send_utf8 s2@src.test user2@BÜCHER.test Jürgen@straße.test other2@straße.test
wait_deferred user2@bücher.test "2 user2@BÜCHER.test, rule written bücher.test"
wait_deferred jürgen@straße.test "2 Jürgen@straße.test, address rule written jürgen@straße.test (transport_maps)"
wait_plain other2@straße.test "2 other2@straße.test (no rule)"

# --------------------------------------------------------- 3. summary --

leaks=$(for r in user1@bücher.test vip@straße.test user2@bücher.test jürgen@straße.test; do sink_to "$r"; done)
check "3 the sink never got mail for an enforced recipient${leaks:+: $leaks}" test -z "$leaks"

e2e_finish 3 t-idn
