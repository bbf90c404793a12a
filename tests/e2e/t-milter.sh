#!/usr/bin/env bash
# tests/e2e/t-milter.sh -- end-to-end test of tlspolicyd's milter through a
# real (private) Postfix smtpd.
#
# Usage: t-milter.sh [TLSPOLICYD]   (default build/tlspolicyd of this
#        repository). Needs root. Loopback only (127.0.0.0/8), free ports.
#
# Setup: tlspolicyd (milter on 127.0.0.1:<free port>) with the policy below;
# Postfix (lib/postfix.sh) with
#   smtpd_milters = { inet:127.0.0.1:<port>, default_action=tempfail }
# and three smtpd listeners:
#   127.0.0.1:$PF_PORT   the normal one (inbound unless the client is
#                        127.0.0.9, which milter.outbound_clients lists)
#   127.0.0.1:$OUT_PORT  "outbound service": -o milter_macro_daemon_name=
#                        tlspolicy-out, listed in milter.outbound_daemons.
#                        NB: the milter's {daemon_name} is Postfix's
#                        milter_macro_daemon_name (default $myhostname), NOT
#                        the master.cf service name or its syslog_name.
#   127.0.0.1:$WEAK_PORT "weak service": -o smtpd_tls_ciphers=null with
#                        tls_null_cipherlist = eNULL:!aNULL:HIGH:@SECLEVEL=0,
#                        so a client can negotiate a NULL (0-bit) cipher
#                        (or a HIGH one, for the control case).
# ours.test, enc.test, may.test all resolve (private hosts file) to one
# aiosmtpd sink on 127.0.0.2 that stores every raw message.
#
# Cipher facts (Debian 12, OpenSSL 3.0): `openssl ciphers -v
# 'ALL:COMPLEMENTOFALL:@SECLEVEL=0'` lists no DES/3DES/RC4/IDEA/SEED/EXPORT
# suite at all: every encrypting cipher is 128 or 256 bits. The only suites
# below 112 bits are the NULL ones (Enc=None, 0 bits, TLSv1.2 and older,
# SECLEVEL=0 only). So "weak vs strong" is tested twice:
#   - really below 112: a NULL cipher (ECDHE-ECDSA-NULL-SHA, 0 bits) against
#     the 112-bit rule, via the weak service. swaks cannot do this (it
#     aborts: "empty response from get_cipher_bits()" when bits == 0), so a
#     small python smtplib client does the STARTTLS + MAIL FROM.
#   - 128 vs 256: a rule with min_cipher_bits = 256, swaks --tls-protocol
#     tlsv1_2 --tls-cipher AES128 (ECDHE-ECDSA-AES128-GCM-SHA256, 128) is
#     rejected, --tls-cipher AES256 (ECDHE-ECDSA-AES256-GCM-SHA384) passes.
#
# Checks (each prints "ok - ..." or "FAIL - ..."):
#   1. no STARTTLS, one transaction to protected@ours.test + other@ours.test:
#      RCPT protected -> "550 5.7.1 <protected@ours.test>: TLS required for
#      mail to this recipient", RCPT other -> "250 2.1.5 Ok", "250 2.0.0 Ok:
#      queued as"; the sink copy is addressed to other@ only.
#   2. the same with swaks --tls: both RCPTs 250, both delivered.
#   3. inbound sender rules: *@partner.test min_cipher_bits 112 and
#      *@strong.test min_cipher_bits 256. MAIL FROM replies:
#      no TLS -> "554 5.7.0 encryption too weak 0 less than 112";
#      NULL cipher -> "554 5.7.0 encryption too weak 0 less than 112" (and
#      the daemon logs "TLSv1.2 0 bits", i.e. TLS was on);
#      AES128 -> 250 for partner (128 >= 112), "554 5.7.0 encryption too
#      weak 128 less than 256" for strong; AES256 -> 250 for strong.
#      STARTTLS then MAIL without a second EHLO (python smtplib) -> 250 for
#      partner (the TLS facts come with the MAIL macros the milter asks
#      for); the same without STARTTLS -> 554.
#   4. outbound (client 127.0.0.9, or the outbound service): the delivered
#      message's FIRST header line is the one and only X-TLSLevel header
#      (above Postfix's Received:): Require for enc.test (encrypt), Try for
#      may.test, Require for both in one transaction; two forged headers
#      ("X-TLSLevel: Try", "x-tlslevel: Try") -> still exactly one, Require;
#      a forged "X-TLSLevel: Require" to may.test -> exactly one, Try;
#      inbound mail keeps none (a forged one is removed, none is added).
#   5. the queue ID from "250 2.0.0 Ok: queued as QID" is in the daemon's
#      "milter: QID: outbound from=<...>: X-TLSLevel: Require (strictest
#      level encrypt)" line (and in "QID: removed 2 X-TLSLevel header(s)").
#   6. messages with few or no headers, from the outbound client 127.0.0.9
#      (no local_header_rewrite_clients client, so Postfix adds none of its
#      own): no header at all, nothing at all, only a forged X-TLSLevel, a
#      header and an empty body; and no header from an inbound client. Each
#      gets "250 2.0.0 Ok: queued as" within 1 s of the end of DATA
#      (milter_content_timeout is 5 s here, so a dropped end-of-message
#      reply shows as 451 after 5 s), and each outbound copy arrives with
#      exactly one X-TLSLevel: Require on top.
#   7. tlspolicyd stopped (SIGTERM, exit 0): MAIL FROM gets "451 4.7.1
#      Service unavailable - try again later" (default_action=tempfail);
#      with swaks --tls already STARTTLS gets "454 4.3.0 Try again later"
#      (smtpd maps a milter 4xx before STARTTLS to 454); nothing is queued.
# Exit 0 only if every check holds.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TLSPOLICYD=$(realpath -e "${1:-$ROOT/build/tlspolicyd}")

# shellcheck source-path=SCRIPTDIR source=lib/postfix.sh
. "$HERE/lib/postfix.sh"

TIME_LIMIT=150              # seconds; a broken run gives up after this
# shellcheck source-path=SCRIPTDIR source=lib/checks.sh
. "$HERE/lib/checks.sh"

e2e_init
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -z "${SUMMARY_DONE-}" ]; then
        echo "FAIL - t-milter aborted (exit $rc) after $(( $(date +%s) - START ))s; $FAILS check(s) had failed"
    fi
    (exit "$rc")
    e2e_cleanup
}
trap on_exit EXIT

# A private copy: a rebuild of build/ during the run must not break us.
mkdir -p "$E2E_DIR/bin"
cp "$TLSPOLICYD" "$E2E_DIR/bin/tlspolicyd"
TLSPOLICYD=$E2E_DIR/bin/tlspolicyd
"$TLSPOLICYD" --help >/dev/null 2>&1 || die "cannot run $TLSPOLICYD (being rebuilt?)"

# ------------------------------------------------------------- helpers --

# SMTP clients are bounded twice: swaks' own per-command --timeout and an
# outer timeout(1) for the whole conversation.
SWAKS_TIMEOUT=15
CLIENT_LIMIT=40
MSG_TIMEOUT=20          # seconds for a queued message to reach the sink

# swx NAME PORT [SWAKS_ARGS...]: one swaks conversation with smtpd on
# 127.0.0.1:PORT; transcript in $E2E_DIR/swaks-NAME.log. Never fails (a
# rejection is what many checks want); the exit status goes to
# $E2E_DIR/swaks-NAME.rc.
swx() {
    local name=$1 port=$2 rc=0
    shift 2
    timeout "$CLIENT_LIMIT" swaks --server "127.0.0.1:$port" --helo client.e2e.test \
        --timeout "$SWAKS_TIMEOUT" "$@" </dev/null >"$E2E_DIR/swaks-$name.log" 2>&1 || rc=$?
    echo "$rc" >"$E2E_DIR/swaks-$name.rc"
    return 0
}

# reply NAME CMD: the server's reply (code and text, transcript markers
# stripped; last line of a multi-line reply) to the first client command
# line CMD (exact, e.g. "RCPT TO:<a@b>") in swaks transcript NAME.
reply() {
    awk -v cmd="$2" '
        !seen && ($0 == " -> " cmd || $0 == " ~> " cmd) { seen = 1; next }
        seen && /^<[-~*][* ] / {
            line = substr($0, 5)
            if (line ~ /^[0-9][0-9][0-9] /) { print line; exit }
            next
        }
        seen && /^ [-~]> / { exit }' "$E2E_DIR/swaks-$1.log"
}

# queued NAME: the queue ID from "250 2.0.0 Ok: queued as QID" (or nothing).
queued() {
    sed -n 's/^<.. 250 2\.0\.0 Ok: queued as \([0-9A-Za-z]*\)$/\1/p' "$E2E_DIR/swaks-$1.log" | tail -n 1
}

# tls_cipher NAME: swaks' "TLS started with cipher VERSION:CIPHER:BITS".
tls_cipher() {
    sed -n 's/^=== TLS started with cipher //p' "$E2E_DIR/swaks-$1.log" | head -n 1
}

# sink_tagged TAG: the stored message file whose raw data has the header
# "X-E2E-ID: TAG" (every test message carries its own tag).
sink_tagged() {
    "$E2E_PYTHON" - "$E2E_DIR/sink-out" "$1" <<'EOF'
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    data = json.load(open(f, encoding="utf-8"))["data"]
    head = data.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
    if any(l.rstrip("\r") == "X-E2E-ID: " + sys.argv[2] for l in head.splitlines()):
        print(f)
EOF
}

# wait_tagged TAG [N]: wait for N (default 1) copies of the tagged message
# at the sink (Postfix makes one delivery per destination domain); print
# their files. Fails if fewer arrive, or more than N.
wait_tagged() {
    local f n=${2:-1}
    wait_for "[ \"\$(sink_tagged '$1' | grep -c .)\" -ge $n ]" "$MSG_TIMEOUT" || return 1
    f=$(sink_tagged "$1")
    [ "$(grep -c . <<<"$f")" -eq "$n" ] || { echo "e2e: $1 delivered $(grep -c . <<<"$f") times, want $n" >&2; return 1; }
    echo "$f"
}

# headers FILE: the header section of a stored message, unfolded, one
# header per line, in the order delivered.
headers() {
    "$E2E_PYTHON" - "$1" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1], encoding="utf-8"))["data"].replace("\r\n", "\n")
out = []
for line in data.split("\n\n", 1)[0].split("\n"):
    if line[:1] in (" ", "\t") and out:
        out[-1] += " " + line.strip()
    else:
        out.append(line)
print("\n".join(out))
EOF
}

# tlslevel_summary FILE: "<count of X-TLSLevel headers, any case>|<first
# header line of the message>".
tlslevel_summary() {
    local h
    h=$(headers "$1")
    printf '%s|%s\n' "$(grep -ci '^x-tlslevel:' <<<"$h" || true)" "$(head -n 1 <<<"$h")"
}

# second_is_received FILE: the second header is our Postfix's Received:.
second_is_received() {
    headers "$1" | sed -n 2p | grep -q '^Received: from .* by mta\.e2e\.test (Postfix) with E\?SMTPS\? id '
}

# td_log: the daemon's log (stderr of tlspolicyd -f).
TD_LOG=$E2E_DIR/daemon-tlspolicyd.log

# --------------------------------------------------------- tlspolicyd --

PORTS=" $PF_PORT $SINK_PORT "
while :; do
    read -r SM_PORT MILTER_PORT OUT_PORT WEAK_PORT <<<"$(_e2e_free_ports 4)"
    case $PORTS in *" $SM_PORT "* | *" $MILTER_PORT "* | *" $OUT_PORT "* | *" $WEAK_PORT "*) continue ;; esac
    break
done
TD_DIR=$E2E_DIR/tlspolicy
TD_CONF=$TD_DIR/tlspolicy.conf
mkdir -p "$TD_DIR"
cat >"$TD_CONF" <<EOF
# generated by t-milter.sh
default = "may";
outbound = (
  { name = "enc"; level = "encrypt"; to = [ "enc.test" ]; },
  { name = "may"; level = "may"; to = [ "may.test" ]; }
);
inbound = (
  { name = "protected"; to = [ "protected@ours.test" ]; },
  { name = "partner"; from = [ "*@partner.test" ]; min_cipher_bits = 112; },
  { name = "strong"; from = [ "*@strong.test" ]; min_cipher_bits = 256; }
);
milter = {
  outbound_clients = [ "127.0.0.9/32" ];
  outbound_daemons = [ "tlspolicy-out" ];
};
daemon = {
  socketmap = [ "inet:127.0.0.1:$SM_PORT" ];
  milter = "inet:127.0.0.1:$MILTER_PORT";
};
EOF

e2e_daemon_start tlspolicyd "$TLSPOLICYD" -c "$TD_CONF" -f
if ! wait_for "_e2e_listening 127.0.0.1 $MILTER_PORT || ! e2e_daemon_pid tlspolicyd >/dev/null" 10 ||
   ! e2e_daemon_pid tlspolicyd >/dev/null; then
    die "tlspolicyd did not start listening on 127.0.0.1:$MILTER_PORT: $(tail -n 5 "$TD_LOG")"
fi
ok "tlspolicyd milter listening on 127.0.0.1:$MILTER_PORT (pid $(e2e_daemon_pid tlspolicyd))"

# --------------------------------------------------------------- setup --

for h in ours.test enc.test may.test; do
    e2e_host "$h" 127.0.0.2
done
sink_start out 127.0.0.2 --starttls

# milter_content_timeout: a dropped end-of-message reply (check 6) shows as
# 451 after 5 s instead of the default 300 s.
PF_MAIN_EXTRA="smtpd_milters = { inet:127.0.0.1:$MILTER_PORT, default_action=tempfail }
milter_content_timeout = 5s"
PF_MASTER_EXTRA="127.0.0.1:$OUT_PORT inet n - n - - smtpd
  -o syslog_name=postfix-e2e/out -o milter_macro_daemon_name=tlspolicy-out
127.0.0.1:$WEAK_PORT inet n - n - - smtpd
  -o syslog_name=postfix-e2e/weak -o smtpd_tls_ciphers=null
  -o tls_null_cipherlist=eNULL:!aNULL:HIGH:@SECLEVEL=0 -o smtpd_tls_protocols=<=TLSv1.2"
pf_start
wait_for "_e2e_listening 127.0.0.1 $OUT_PORT && _e2e_listening 127.0.0.1 $WEAK_PORT" 10 ||
    die "extra smtpd listeners on $OUT_PORT/$WEAK_PORT not up"

# ------------------------------------------- 1. no STARTTLS, two RCPTs --

swx c1 "$PF_PORT" --from s1@src.test --to protected@ours.test,other@ours.test \
    --add-header "X-E2E-ID: c1"
expect_eq "1 no TLS: RCPT protected@ours.test" "$(reply c1 'RCPT TO:<protected@ours.test>')" \
    "550 5.7.1 <protected@ours.test>: TLS required for mail to this recipient"
expect_eq "1 no TLS: RCPT other@ours.test" "$(reply c1 'RCPT TO:<other@ours.test>')" "250 2.1.5 Ok"
QID1=$(queued c1)
check "1 no TLS: message accepted for the other recipient (queued as ${QID1:-?})" test -n "$QID1"
if f=$(wait_tagged c1); then
    expect_eq "1 no TLS: sink copy addressed to" "$(sink_field "$f" rcpt_tos | sort | paste -sd,)" \
        "other@ours.test"
    check "1 no TLS: Postfix's Received: says ESMTP (no TLS inbound)" \
        grep -q "^Received: from client.e2e.test .* with ESMTP id $QID1" <<<"$(headers "$f")"
else
    fail "1 no TLS: nothing at the sink for other@ours.test"
fi

# ------------------------------------------------ 2. with STARTTLS ------

swx c2 "$PF_PORT" --tls --from s2@src.test --to protected@ours.test,other@ours.test \
    --add-header "X-E2E-ID: c2"
check "2 TLS: swaks negotiated TLS ($(tls_cipher c2))" test -n "$(tls_cipher c2)"
expect_eq "2 TLS: RCPT protected@ours.test" "$(reply c2 'RCPT TO:<protected@ours.test>')" "250 2.1.5 Ok"
expect_eq "2 TLS: RCPT other@ours.test" "$(reply c2 'RCPT TO:<other@ours.test>')" "250 2.1.5 Ok"
QID2=$(queued c2)
if [ -n "$QID2" ] && f=$(wait_tagged c2); then
    expect_eq "2 TLS: sink copy ($QID2) addressed to" "$(sink_field "$f" rcpt_tos | sort | paste -sd,)" \
        "other@ours.test,protected@ours.test"
else
    fail "2 TLS: not queued (${QID2:-no queue id}) or nothing at the sink"
fi

# --------------------------------------------- 3. minimum cipher bits --

# 3a no TLS at all
swx c3a "$PF_PORT" --from a@partner.test --to x@ours.test --quit-after RCPT
expect_eq "3a partner, no TLS: MAIL FROM" "$(reply c3a 'MAIL FROM:<a@partner.test>')" \
    "554 5.7.0 encryption too weak 0 less than 112"

# 3b a NULL cipher (0 bits, really below 112) on the weak service
weak_client() {
    timeout "$CLIENT_LIMIT" "$E2E_PYTHON" - "$WEAK_PORT" "$1" "$2" <<'EOF'
import smtplib, ssl, sys
port, sender, ciphers = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2   # TLS 1.3 has no NULL suites
ctx.set_ciphers(ciphers)
s = smtplib.SMTP("127.0.0.1", port, local_hostname="weak.e2e.test", timeout=15)
s.starttls(context=ctx)
s.ehlo()
name, _, bits = s.sock.cipher()
print("cipher %s %s %s" % (s.sock.version(), name, bits))
code, msg = s.mail(sender)
print("mail %d %s" % (code, msg.decode()))
s.quit()
EOF
}
out=$(weak_client a@partner.test 'eNULL:!aNULL:@SECLEVEL=0' 2>&1) || true
expect_eq "3b partner, NULL cipher: negotiated" "$(sed -n 's/^cipher //p' <<<"$out")" \
    "TLSv1.2 ECDHE-ECDSA-NULL-SHA 0"
expect_eq "3b partner, NULL cipher: MAIL FROM" "$(sed -n 's/^mail //p' <<<"$out")" \
    "554 5.7.0 encryption too weak 0 less than 112"
check "3b daemon saw TLS with 0 bits (not 'no TLS') for the NULL cipher" \
    grep -qF "reject client=127.0.0.1 from=<a@partner.test> (TLSv1.2 0 bits): 554 5.7.0 encryption too weak 0 less than 112" "$TD_LOG"
# control: the same service with a real cipher lets partner mail through
out=$(weak_client a@partner.test 'AES256' 2>&1) || true
expect_eq "3b control, weak service with AES256: negotiated" "$(sed -n 's/^cipher //p' <<<"$out")" \
    "TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384 256"
expect_eq "3b control, weak service with AES256: MAIL FROM" "$(sed -n 's/^mail //p' <<<"$out")" \
    "250 2.1.0 Ok"

# 3c AES128 (128 bits): enough for partner (112), too weak for strong (256)
swx c3c "$PF_PORT" --tls --tls-protocol tlsv1_2 --tls-cipher AES128 \
    --from a@partner.test --to x@ours.test --quit-after RCPT
expect_eq "3c partner, AES128: cipher" "$(tls_cipher c3c)" "TLSv1.2:ECDHE-ECDSA-AES128-GCM-SHA256:128"
expect_eq "3c partner, AES128 (min 112): MAIL FROM" "$(reply c3c 'MAIL FROM:<a@partner.test>')" "250 2.1.0 Ok"
swx c3d "$PF_PORT" --tls --tls-protocol tlsv1_2 --tls-cipher AES128 \
    --from a@strong.test --to x@ours.test --quit-after RCPT
expect_eq "3d strong, AES128: cipher" "$(tls_cipher c3d)" "TLSv1.2:ECDHE-ECDSA-AES128-GCM-SHA256:128"
expect_eq "3d strong, AES128 (min 256): MAIL FROM" "$(reply c3d 'MAIL FROM:<a@strong.test>')" \
    "554 5.7.0 encryption too weak 128 less than 256"
# 3e AES256: enough for strong, delivered
swx c3e "$PF_PORT" --tls --tls-protocol tlsv1_2 --tls-cipher AES256 \
    --from a@strong.test --to x@ours.test --add-header "X-E2E-ID: c3e"
expect_eq "3e strong, AES256: cipher" "$(tls_cipher c3e)" "TLSv1.2:ECDHE-ECDSA-AES256-GCM-SHA384:256"
expect_eq "3e strong, AES256 (min 256): MAIL FROM" "$(reply c3e 'MAIL FROM:<a@strong.test>')" "250 2.1.0 Ok"
if [ -n "$(queued c3e)" ] && wait_tagged c3e >/dev/null; then
    ok "3e strong, AES256: delivered to the sink (queued as $(queued c3e))"
else
    fail "3e strong, AES256: not queued or not delivered"
fi
# 3f STARTTLS, then MAIL without a second EHLO (RFC 3207: SHOULD, not MUST).
# smtplib's mail() would send EHLO again after starttls(), so the MAIL
# command goes out with docmd(). STARTTLS=0: the same without STARTTLS.
no_ehlo_client() {
    timeout "$CLIENT_LIMIT" "$E2E_PYTHON" - "$PF_PORT" "$1" "$2" <<'PY'
import smtplib, ssl, sys
port, sender, starttls = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
s = smtplib.SMTP("127.0.0.1", port, local_hostname="noehlo.e2e.test", timeout=15)
s.ehlo()
if starttls:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx)
    print("tls %s %s" % (s.sock.version(), s.sock.cipher()[2]))
code, msg = s.docmd("MAIL FROM:<%s>" % sender)
print("mail %d %s" % (code, msg.decode()))
s.docmd("QUIT")
PY
}
out=$(no_ehlo_client a@partner.test 1 2>&1) || true
check "3f STARTTLS, no second EHLO: TLS negotiated ($(sed -n 's/^tls //p' <<<"$out"))" \
    grep -q '^tls TLSv1' <<<"$out"
expect_eq "3f STARTTLS, no second EHLO, partner (min 112): MAIL FROM" "$(sed -n 's/^mail //p' <<<"$out")" \
    "250 2.1.0 Ok"
out=$(no_ehlo_client a@partner.test 0 2>&1) || true
expect_eq "3f control, no STARTTLS, partner: MAIL FROM" "$(sed -n 's/^mail //p' <<<"$out")" \
    "554 5.7.0 encryption too weak 0 less than 112"

# ------------------------------------------------ 4. outbound header --

# out_check TAG DESC WANT_VALUE [COPIES]: the tagged message is delivered
# (COPIES times, default 1: one per destination domain), and each copy has
# exactly one X-TLSLevel header, as its first header line, with WANT_VALUE.
out_check() {
    local files f got='' want=''
    if [ -z "$(queued "$1")" ]; then
        fail "$2: not queued: $(grep -E '^<\*\*' "$E2E_DIR/swaks-$1.log" | head -n 1)"
        return 0
    fi
    if ! files=$(wait_tagged "$1" "${4:-1}"); then
        fail "$2: not delivered ${4:-1} time(s)"
        return 0
    fi
    for f in $files; do
        got+="${got:+, }$(tlslevel_summary "$f")"
        second_is_received "$f" || got+=" (2nd header is not Postfix's Received:)"
        want+="${want:+, }1|X-TLSLevel: $3"
    done
    expect_eq "$2: X-TLSLevel count|first header (per copy)" "$got" "$want"
}

# via milter.outbound_clients: swaks binds 127.0.0.9
OUTC=(--local-interface 127.0.0.9 --from user@ours.test)
swx c4a "$PF_PORT" "${OUTC[@]}" --to u@enc.test --add-header "X-E2E-ID: c4a"
out_check c4a "4a outbound client -> encrypt domain" Require
swx c4b "$PF_PORT" "${OUTC[@]}" --to u@may.test --add-header "X-E2E-ID: c4b"
out_check c4b "4b outbound client -> may domain" Try
swx c4c "$PF_PORT" "${OUTC[@]}" --to u@may.test,u@enc.test --add-header "X-E2E-ID: c4c"
out_check c4c "4c outbound client -> may + encrypt domains in one transaction" Require 2
swx c4d "$PF_PORT" "${OUTC[@]}" --to u@enc.test --add-header "X-E2E-ID: c4d" \
    --add-header "X-TLSLevel: Try" --add-header "x-tlslevel: Try"
check "4d swaks sent both forged headers" \
    test "$(grep -ciE $'^ [-~]> x-tlslevel: Try\r?$' "$E2E_DIR/swaks-c4d.log")" -eq 2
out_check c4d "4d forged 'X-TLSLevel: Try' + 'x-tlslevel: Try' -> encrypt domain" Require
swx c4e "$PF_PORT" "${OUTC[@]}" --to u@may.test --add-header "X-E2E-ID: c4e" \
    --add-header "X-TLSLevel: Require"
out_check c4e "4e forged 'X-TLSLevel: Require' -> may domain" Try
# via milter.outbound_daemons (the service's milter_macro_daemon_name)
swx c4f "$OUT_PORT" --from user@ours.test --to u@enc.test --add-header "X-E2E-ID: c4f"
out_check c4f "4f outbound service (daemon_name tlspolicy-out) -> encrypt domain" Require
# inbound (normal port, client 127.0.0.1): forged header removed, none added
swx c4g "$PF_PORT" --from s@src.test --to u@enc.test --add-header "X-E2E-ID: c4g" \
    --add-header "X-TLSLevel: Require"
if [ -n "$(queued c4g)" ] && f=$(wait_tagged c4g); then
    expect_eq "4g inbound with a forged header: X-TLSLevel headers delivered" \
        "$(tlslevel_summary "$f" | cut -d'|' -f1)" 0
else
    fail "4g inbound: not queued or not delivered"
fi

# ------------------------------------------- 5. queue ID in the log --

QID=$(queued c4a)
check "5 daemon logged '$QID: outbound from=<user@ours.test>: X-TLSLevel: Require (strictest level encrypt)'" \
    grep -qF "milter: $QID: outbound from=<user@ours.test>: X-TLSLevel: Require (strictest level encrypt)" "$TD_LOG"
check "5 daemon logged '$QID: rcpt <u@enc.test>: encrypt (rule \"enc\" ...)'" \
    grep -qF "milter: $QID: rcpt <u@enc.test>: encrypt (rule \"enc\"" "$TD_LOG"
QID=$(queued c4d)
check "5 daemon logged '$QID: removed 2 X-TLSLevel header(s) the client sent'" \
    grep -qF "milter: $QID: removed 2 X-TLSLevel header(s) the client sent" "$TD_LOG"

# ------------------------------- 6. messages without (usual) headers --

# raw_msg NAME LOCAL_ADDR FROM RCPT DATA: one SMTP transaction from
# LOCAL_ADDR with DATA sent byte for byte (DATA is the inside of a Python
# string literal: \r\n escapes), bounded by the client's timeout; writes
# "<final reply>|<seconds from the end of DATA to it>" as the last line of
# $E2E_DIR/raw-NAME.out.
raw_msg() {
    timeout "$CLIENT_LIMIT" "$E2E_PYTHON" - "$PF_PORT" "$2" "$3" "$4" "$5" >"$E2E_DIR/raw-$1.out" 2>&1 <<'PY' || true
import ast, smtplib, sys, time
port, local, sender, rcpt, data = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
body = ast.literal_eval('"' + data + '"').encode()
s = smtplib.SMTP("127.0.0.1", port, local_hostname="raw.e2e.test", source_address=(local, 0), timeout=15)
s.ehlo()
s.mail(sender)
s.rcpt(rcpt)
code, _ = s.docmd("DATA")
assert code == 354, code
t0 = time.monotonic()
s.send(body + b".\r\n")
code, msg = s.getreply()
print("%d %s|%.2f" % (code, msg.decode(), time.monotonic() - t0))
s.quit()
PY
}

# sink_for RCPT: the stored message addressed to RCPT (waits for it).
sink_for() {
    wait_for "grep -qlF '\"$1\"' \"\$E2E_DIR\"/sink-out/*.json 2>/dev/null" "$MSG_TIMEOUT" || return 1
    grep -lF "\"$1\"" "$E2E_DIR"/sink-out/*.json
}

# raw_check NAME DESC: the final reply is "250 2.0.0 Ok: queued as ..." and
# came within a second of the end of DATA (a dropped end-of-message reply
# shows as 451 after milter_content_timeout instead).
raw_check() {
    local out reply secs
    out=$(tail -n 1 "$E2E_DIR/raw-$1.out")
    reply=${out%|*} secs=${out##*|}
    case $reply in
        "250 2.0.0 Ok: queued as "*) ;;
        *) fail "$2: final reply '$reply' after ${secs}s ($(head -c 300 "$E2E_DIR/raw-$1.out"))"; return 0 ;;
    esac
    if awk -v s="$secs" 'BEGIN { exit !(s < 1.0) }'; then
        ok "$2: '$reply' after ${secs}s"
    else
        fail "$2: '$reply' only after ${secs}s (want < 1 s)"
    fi
}

# 127.0.0.9 is outbound (milter.outbound_clients) and, not being an address
# of inet_interfaces, no local_header_rewrite_clients client: Postfix adds
# no Date:/Message-ID:/From: of its own, so the milter sees exactly the
# header section the client sent (Postfix's own Received: is hidden).
raw_msg c6a 127.0.0.9 user@ours.test u6a@enc.test '\r\nno headers, only a body\r\n'
raw_check c6a "6a no headers (blank line, then body)"
raw_msg c6b 127.0.0.9 user@ours.test u6b@enc.test ''
raw_check c6b "6b nothing at all (DATA, then the dot)"
raw_msg c6c 127.0.0.9 user@ours.test u6c@enc.test 'X-TLSLevel: Try\r\n\r\nonly a forged header\r\n'
raw_check c6c "6c the only header a forged X-TLSLevel"
raw_msg c6d 127.0.0.9 user@ours.test u6d@enc.test 'Subject: empty body\r\n'
raw_check c6d "6d headers, empty body"
raw_msg c6e 127.0.0.1 s6r@src.test u6e@ours.test '\r\nno headers, inbound\r\n'
raw_check c6e "6e no headers, inbound client"
for c in a b c d; do
    if f=$(sink_for "u6$c@enc.test"); then
        expect_eq "6$c delivered: X-TLSLevel count|first header" "$(tlslevel_summary "$f")" "1|X-TLSLevel: Require"
    else
        fail "6$c: nothing at the sink for u6$c@enc.test"
    fi
done

# ------------------------------------------- 7. tlspolicyd stopped --

e2e_daemon_stop tlspolicyd
expect_eq "7 tlspolicyd exit status after SIGTERM" "$E2E_DAEMON_RC" 0
wait_for "! _e2e_listening 127.0.0.1 $MILTER_PORT" 10 || fail "7 milter port still listening"
swx c6 "$PF_PORT" --from s6@src.test --to other@ours.test --add-header "X-E2E-ID: c6"
expect_eq "7 daemon down: MAIL FROM" "$(reply c6 'MAIL FROM:<s6@src.test>')" \
    "451 4.7.1 Service unavailable - try again later"
check "7 daemon down: nothing queued (no 'queued as', queue empty)" \
    test -z "$(queued c6)" -a "$(pf_queue_count)" -eq 0
swx c6t "$PF_PORT" --tls --from s6@src.test --to other@ours.test --add-header "X-E2E-ID: c6t"
# smtpd asks the milters before STARTTLS too and maps a 4xx answer to 454
# ("Sendmail compatibility", smtpd.c), so the TLS client stops there.
expect_eq "7 daemon down, with TLS: STARTTLS" "$(reply c6t 'STARTTLS')" "454 4.3.0 Try again later"
check "7 daemon down, with TLS: nothing queued" test -z "$(queued c6t)" -a "$(pf_queue_count)" -eq 0
check "7 maillog shows smtpd failing to reach the milter" \
    grep -qE "warning: connect to Milter service inet:127\.0\.0\.1:$MILTER_PORT: Connection refused" "$PF_MAILLOG"

# -------------------------------------------------------------- summary --

SUMMARY_DONE=1
if [ "$FAILS" -ne 0 ]; then
    echo "FAIL - t-milter: $FAILS check(s) failed ($(( $(date +%s) - START ))s)"
    exit 1
fi
echo "PASS t-milter ($(( $(date +%s) - START ))s)"
