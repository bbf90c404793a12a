#!/usr/bin/env bash
# tests/e2e/t-socketmap.sh -- end-to-end test of tlspolicyd's socketmap maps
# through a real (private) Postfix instance.
#
# Usage: t-socketmap.sh [TLSPOLICYD [TLSPOLICY]]   (default build/tlspolicyd,
#        build/tlspolicy of this repository). Needs root. Loopback only.
#
# Postfix asks tlspolicyd (socketmap on 127.0.0.1:<free port>) through
#   smtp_tls_policy_maps                    = socketmap:...:tls-policy
#   transport_maps                          = socketmap:...:transport
#   sender_dependent_default_transport_maps = socketmap:...:sender-transport
# with master.cf service
#   smtp-tls-encrypt unix - - n - - smtp -o smtp_tls_security_level=encrypt
#       -o smtp_tls_policy_maps=
# Destinations (private hosts file): sink "tls" 127.0.0.2 offers STARTTLS,
# sink "plain" 127.0.0.3 does not.
#   enc-tls.test      -> tls sink,   rule encrypt
#   enc-plain.test    -> plain sink, rule encrypt (sub.enc-plain.test too)
#   may-plain.test    -> plain sink, rule may
#   rcpt.test         -> plain sink, rule may; vip@rcpt.test rule encrypt
#   send.test         -> plain sink, no rule (NOTFOUND: Postfix's may)
#   flip.test         -> plain sink, rule may, edited to encrypt in check 6
#   list.test         -> plain sink, added to the list file enc.list
#                        (rule encrypt) in check 6
#   sender finance@ourcorp.test: rule encrypt (sender-transport)
#
# Checks (each prints "ok - ..." or "FAIL - ..."):
#   0. postmap -q KEY socketmap:...:tls-policy == tlspolicy query KEY (value
#      and exit status, and the value we expect), and postmap -q - == tlspolicy
#      query - for batches of keys (tls-policy, transport, sender-transport):
#      mixed case, trailing dot, .parent, [ip]:port, host:port, +extension.
#   1. encrypt domain, server without STARTTLS: deferred "TLS is required, but
#      was not offered" (postqueue -j), still so after a flush, nothing at the
#      sink (also for a mixed-case subdomain recipient).
#   2. encrypt domain, server with STARTTLS: delivered, sink says tls=true.
#   3. may domain without STARTTLS: delivered in plaintext (tls=false).
#   4. one message, two recipients at rcpt.test (may): vip@ (address rule
#      encrypt) is routed via transport_maps to smtp-tls-encrypt and stays
#      deferred; other@ is delivered (the sink copy names only other@).
#   5. sender rule: finance@ -> send.test stays deferred, clerk@ -> the same
#      recipient is delivered.
#   6. live reload: flip.test may (delivered plaintext), config rewritten via
#      temp file + mv to encrypt, "reloaded" logged < 2 s later, postmap
#      answers encrypt, the next message is deferred. A broken config is
#      logged as a failed reload and the old policy keeps being served. Adding
#      list.test to a list file (temp + mv) reloads too: postmap flips from
#      NOTFOUND to encrypt and mail to list.test is deferred.
#   7. tlspolicyd killed (SIGKILL): smtpd answers 451 4.3.0 "Temporary lookup
#      failure" (the resolver asks the transport maps), mail queued by sendmail
#      is deferred ("address resolver failure"), nothing reaches a sink; after
#      a restart + flush the may mail is delivered in plaintext and the
#      encrypt one stays deferred ("TLS is required").
#   8. tlspolicyd stopped (SIGTERM, exits 0) with only smtp_tls_policy_maps
#      configured: mail even to a may domain or a STARTTLS server is deferred
#      "client TLS configuration problem" (fails closed), nothing is sent.
#   9. summary: the plain sink never got mail for an encrypt destination, the
#      queue holds exactly the mail that must not go out, and cleanup leaves
#      no process and no temp dir behind.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TLSPOLICYD=$(realpath -e "${1:-$ROOT/build/tlspolicyd}")
TLSPOLICY=$(realpath -e "${2:-$ROOT/build/tlspolicy}")

# shellcheck source-path=SCRIPTDIR source=lib/postfix.sh
. "$HERE/lib/postfix.sh"

TIME_LIMIT=90              # seconds; a broken run gives up after this
# shellcheck source-path=SCRIPTDIR source=lib/checks.sh
. "$HERE/lib/checks.sh"

e2e_init
# Own EXIT trap: say why an aborted run ended, then the harness cleanup.
on_exit() {
    local rc=$?
    set +e                  # (exit 1) below must not end the trap early
    if [ "$rc" -ne 0 ] && [ -z "${SUMMARY_DONE-}" ]; then
        echo "FAIL - t-socketmap aborted (exit $rc) after $(( $(date +%s) - START ))s; $FAILS check(s) had failed"
    fi
    (exit "$rc")
    e2e_cleanup
}
trap on_exit EXIT

# Run private copies: a rebuild of build/ during the run (relinking makes the
# file briefly non-executable) must not break the restart in check 7.
mkdir -p "$E2E_DIR/bin"
cp "$TLSPOLICYD" "$E2E_DIR/bin/tlspolicyd"
cp "$TLSPOLICY" "$E2E_DIR/bin/tlspolicy"
TLSPOLICYD=$E2E_DIR/bin/tlspolicyd
TLSPOLICY=$E2E_DIR/bin/tlspolicy
if ! "$TLSPOLICYD" --help >/dev/null || ! "$TLSPOLICY" --help >/dev/null 2>&1; then
    die "cannot run $TLSPOLICYD / $TLSPOLICY (being rebuilt?)"
fi

# ------------------------------------------------------------- helpers --

# q_reasons SENDER RCPT: delay_reason of every queued recipient RCPT of mail
# from SENDER (both case-insensitive; SENDER "*" = any), one per line.
q_reasons() {
    pf_queue_json | "$E2E_PYTHON" -c '
import json, sys
s, r = sys.argv[1].lower(), sys.argv[2].lower()
for line in sys.stdin:
    if not line.strip():
        continue
    m = json.loads(line)
    if s != "*" and m.get("sender", "").lower() != s:
        continue
    for x in m.get("recipients", []):
        if x.get("address", "").lower() == r:
            print(x.get("delay_reason", "") or "(no reason yet)")
' "$1" "$2"
}

# q_has SENDER RCPT REGEX: true if that recipient is queued with a reason
# matching the extended REGEX.
q_has() {
    q_reasons "$1" "$2" | grep -qE -- "$3"
}

# q_all: "sender rcpt" for every queued recipient, lowercase, sorted.
q_all() {
    pf_queue_json | "$E2E_PYTHON" -c '
import json, sys
out = set()
for line in sys.stdin:
    if line.strip():
        m = json.loads(line)
        for x in m.get("recipients", []):
            out.add("%s %s" % (m.get("sender", "").lower(), x.get("address", "").lower()))
print("\n".join(sorted(out)))
'
}

# sink_msgs NAME [RCPT [SENDER]]: one line per message in sink NAME (for
# RCPT / from SENDER if given): "tls=<true|false> from=<s> to=<r1,r2>".
sink_msgs() {
    "$E2E_PYTHON" - "$E2E_DIR/sink-$1" "${2-}" "${3-}" <<'EOF'
import glob, json, os, sys
d, rcpt, sender = sys.argv[1], sys.argv[2].lower(), sys.argv[3].lower()
for f in sorted(glob.glob(os.path.join(d, "*.json"))):
    m = json.load(open(f, encoding="utf-8"))
    tos = [t.lower() for t in m["rcpt_tos"]]
    if rcpt and rcpt not in tos:
        continue
    if sender and (m["mail_from"] or "").lower() != sender:
        continue
    print("tls=%s from=%s to=%s" % ("true" if m["tls"] else "false",
                                    (m["mail_from"] or "").lower(), ",".join(tos)))
EOF
}

# sink_n NAME [RCPT [SENDER]]: number of such messages.
sink_n() {
    sink_msgs "$@" | grep -c . || true
}

# deferred_attempts RCPT: how many status=deferred lines maillog has for RCPT.
deferred_attempts() {
    grep -iF "to=<$1>" "$PF_MAILLOG" 2>/dev/null | grep -c 'status=deferred' || true
}

# send FROM TO... : pf_send, die if smtpd does not accept it.
send() {
    local qid
    qid=$(pf_send "$@" -- --add-header "X-E2E-Test: t-socketmap") ||
        die "smtpd did not accept mail from $1 to ${*:2}"
    echo "$qid"
}

TLSPOLICY_MSG_TIMEOUT=15   # seconds for any single delivery/deferral

# wait_deferred_tls SENDER RCPT DESC: wait for a "TLS is required" deferral.
WANT_TLS='TLS is required, but was not offered'
wait_deferred_tls() {
    if wait_for "q_has '$1' '$2' '$WANT_TLS'" "$TLSPOLICY_MSG_TIMEOUT"; then
        ok "$3: deferred: $(q_reasons "$1" "$2" | head -n1)"
        return 0
    fi
    fail "$3: no '$WANT_TLS' deferral; queue: $(q_reasons "$1" "$2" | head -n1) " \
        "sink plain: $(sink_msgs plain "$2" | head -n1)"
    return 0
}

# wait_delivered SINK RCPT SENDER TLS DESC: wait for the message at SINK and
# check its tls flag.
wait_delivered() {
    local got
    if ! wait_for "[ \"\$(sink_n '$1' '$2' '$3')\" -ge 1 ]" "$TLSPOLICY_MSG_TIMEOUT"; then
        fail "$5: nothing at sink $1 for $2; queue: $(q_reasons "$3" "$2" | head -n1)"
        return 0
    fi
    got=$(sink_msgs "$1" "$2" "$3")
    if [ "$(grep -c "^tls=$4 " <<<"$got")" -ge 1 ] && ! grep -qv "^tls=$4 " <<<"$got"; then
        ok "$5: delivered to sink $1 with tls=$4 ($got)"
    else
        fail "$5: sink $1 got tls != $4: $got"
        return 0
    fi
}

# still_deferred_after_retry SENDER RCPT DESC: flush, wait for one more
# deferred attempt, check the reason and that the plain sink has nothing from
# SENDER for RCPT. (While qmgr moves the message from the active back to the
# deferred queue, postqueue -j shows it without a delay_reason: poll.)
still_deferred_after_retry() {
    local n
    n=$(deferred_attempts "$2")
    pf_flush
    if ! wait_for "[ \"\$(deferred_attempts '$2')\" -gt $n ]" "$TLSPOLICY_MSG_TIMEOUT"; then
        fail "$3: no new delivery attempt after postqueue -f"
        return 0
    fi
    if wait_for "q_has '$1' '$2' '$WANT_TLS'" 10 && [ "$(sink_n plain "$2" "$1")" -eq 0 ]; then
        ok "$3: still deferred after a retry, nothing at the plain sink"
    else
        fail "$3: after retry: queue '$(q_reasons "$1" "$2")' sink '$(sink_msgs plain "$2" "$1")'"
    fi
}

# --------------------------------------------------------- tlspolicyd --

e2e_tlspolicyd_paths

# conf_text FLIP_LEVEL: the policy; flip.test gets FLIP_LEVEL.
conf_text() {
    cat <<EOF
# generated by t-socketmap.sh
recipient_delimiter = "+";
transport = "smtp-tls-encrypt:";
outbound = (
  { name = "enc-domains"; level = "encrypt";
    to = [ "enc-plain.test", "enc-tls.test", "192.0.2.0/24" ]; },
  { name = "may-domains"; level = "may"; to = [ "may-plain.test", "rcpt.test" ]; },
  { name = "flip"; level = "$1"; to = [ "flip.test" ]; },
  { name = "vip"; level = "encrypt"; to = [ "vip@rcpt.test" ]; },
  { name = "finance"; level = "encrypt"; from = [ "finance@ourcorp.test" ]; },
  { name = "enc-list"; level = "encrypt"; to_lists = [ "enc.list" ]; }
);
daemon = {
  socketmap = [ "inet:127.0.0.1:$TD_PORT" ];
  log_all_lookups = true;
};
EOF
}

# write_conf TEXT [FILE]: replace the config (or list FILE) like an editor:
# temp file + rename.
write_conf() {
    local f=${2:-$TD_CONF}
    printf '%s\n' "$1" >"$f.swp"
    mv -f "$f.swp" "$f"
}

td_start() {
    e2e_daemon_start tlspolicyd "$TLSPOLICYD" -c "$TD_CONF" -f
    if ! wait_for "_e2e_listening 127.0.0.1 $TD_PORT || ! e2e_daemon_pid tlspolicyd >/dev/null" 10 ||
       ! e2e_daemon_pid tlspolicyd >/dev/null; then
        die "tlspolicyd did not start listening on 127.0.0.1:$TD_PORT: $(tail -n 5 "$TD_LOG")"
    fi
}

td_reloads() { grep -c 'reloaded' "$TD_LOG" || true; }

printf '%s\n' "$(conf_text may)" >"$TD_CONF"
printf '# destinations that must be encrypted\nlisted.test\n' >"$TD_DIR/enc.list"
"$TLSPOLICY" check -c "$TD_CONF" >/dev/null || die "tlspolicy check rejects the test config"
td_start
ok "tlspolicyd listening on 127.0.0.1:$TD_PORT (pid $(e2e_daemon_pid tlspolicyd))"

# --------------------------------------------------------------- setup --

e2e_host enc-tls.test 127.0.0.2
for h in enc-plain.test sub.enc-plain.test may-plain.test rcpt.test send.test flip.test list.test; do
    e2e_host "$h" 127.0.0.3
done
sink_start tls 127.0.0.2 --starttls
sink_start plain 127.0.0.3

MAPS_ALL="smtp_tls_policy_maps = $SM:tls-policy
transport_maps = $SM:transport
sender_dependent_default_transport_maps = $SM:sender-transport"
PF_MAIN_EXTRA=$MAPS_ALL
PF_MASTER_EXTRA='smtp-tls-encrypt unix - - n - - smtp -o smtp_tls_security_level=encrypt -o smtp_tls_policy_maps='
pf_start

# ------------------------------------------ 0. postmap == tlspolicy query --

# KEY|EXPECTED (empty = NOTFOUND)
TLS_KEYS=(
    "enc-plain.test|encrypt"
    "Enc-Plain.TEST|encrypt"
    "enc-plain.test.|encrypt"
    ".enc-plain.test|encrypt"
    "Sub.Enc-Plain.test|encrypt"
    "may-plain.test|may"
    "may-plain.test:2525|may"
    "[192.0.2.7]:2525|encrypt"
    "[192.0.2.7]|encrypt"
    "[127.0.0.9]:25|"
    "unknown.test|"
    ".test|"
    "vip+tag@rcpt.test|encrypt"
)
for kv in "${TLS_KEYS[@]}"; do
    key=${kv%%|*} want=${kv#*|}
    prc=0 qrc=0
    pout=$(pf_postmap -q "$key" "$SM:tls-policy" 2>&1) || prc=$?
    qout=$("$TLSPOLICY" query -c "$TD_CONF" "$key" 2>&1) || qrc=$?
    if [ "$pout" = "$qout" ] && [ "$prc" = "$qrc" ] && [ "$pout" = "$want" ] &&
       [ "$prc" = "$([ -n "$want" ] && echo 0 || echo 1)" ]; then
        ok "postmap -q '$key' tls-policy = tlspolicy query = '${want:-NOTFOUND}' (exit $prc)"
    else
        fail "postmap -q '$key' tls-policy: '$pout' (exit $prc); tlspolicy query: '$qout' (exit $qrc); want '${want:-NOTFOUND}'"
    fi
done

# batch_check MAP KEY|EXPECTED...: postmap -q - == tlspolicy query -m MAP - ==
# expected "key<TAB>value" lines for the found keys.
batch_check() {
    local map=$1 kv keys='' want='' pout qout prc=0 qrc=0
    shift
    for kv in "$@"; do
        keys+="${kv%%|*}"$'\n'
        [ -z "${kv#*|}" ] || want+="${kv%%|*}"$'\t'"${kv#*|}"$'\n'
    done
    want=${want%$'\n'}
    pout=$(pf_postmap -q - "$SM:$map" <<<"${keys%$'\n'}" 2>&1) || prc=$?
    qout=$("$TLSPOLICY" query -c "$TD_CONF" -m "$map" - <<<"${keys%$'\n'}" 2>&1) || qrc=$?
    if [ "$pout" = "$qout" ] && [ "$pout" = "$want" ] && [ "$prc" = "$qrc" ]; then
        ok "postmap -q - $map = tlspolicy query -m $map - over $# keys ($(grep -c . <<<"$want") found, exit $prc)"
    else
        fail "postmap -q - $map (exit $prc):"$'\n'"$pout"$'\n'"tlspolicy query - (exit $qrc):"$'\n'"$qout"$'\n'"want:"$'\n'"$want"
    fi
}
batch_check tls-policy "${TLS_KEYS[@]}"
batch_check transport \
    "vip@rcpt.test|smtp-tls-encrypt:" \
    "VIP@Rcpt.TEST|smtp-tls-encrypt:" \
    "vip+tag@rcpt.test|smtp-tls-encrypt:" \
    "Vip+Q4@RCPT.test.|smtp-tls-encrypt:" \
    "other@rcpt.test|" \
    "user@enc-plain.test|" \
    "rcpt.test|" \
    ".rcpt.test|" \
    "*|"
batch_check sender-transport \
    "finance@ourcorp.test|smtp-tls-encrypt:" \
    "Finance+Q4@OurCorp.TEST|smtp-tls-encrypt:" \
    "clerk@ourcorp.test|" \
    "ourcorp.test|"

# ------------------------------------ 1. encrypt domain, no STARTTLS --

send s1@src.test u1@enc-plain.test u1@Sub.Enc-Plain.TEST >/dev/null
wait_deferred_tls s1@src.test u1@enc-plain.test "1 encrypt domain, server without STARTTLS"
wait_deferred_tls s1@src.test u1@sub.enc-plain.test "1 encrypt subdomain in mixed case (Sub.Enc-Plain.TEST)"
still_deferred_after_retry s1@src.test u1@enc-plain.test "1 encrypt domain"
check "1 nothing at the plain sink for u1@enc-plain.test or u1@Sub.Enc-Plain.TEST" \
    test "$(sink_n plain u1@enc-plain.test)$(sink_n plain u1@sub.enc-plain.test)" = 00

# -------------------------------------- 2. encrypt domain with STARTTLS --

send s2@src.test u2@enc-tls.test >/dev/null
wait_delivered tls u2@enc-tls.test s2@src.test true "2 encrypt domain, server with STARTTLS"

# ------------------------------------------- 3. may domain, plaintext --

send s3@src.test u3@may-plain.test >/dev/null
wait_delivered plain u3@may-plain.test s3@src.test false "3 may domain without STARTTLS"

# -------------------------------------------- 4. per-recipient rule --

send s4@src.test vip@rcpt.test other@rcpt.test >/dev/null
wait_delivered plain other@rcpt.test s4@src.test false "4 other@rcpt.test (domain may)"
wait_deferred_tls s4@src.test vip@rcpt.test "4 vip@rcpt.test (address rule encrypt, via smtp-tls-encrypt)"
check "4 the delivered copy is addressed to other@rcpt.test only" \
    test "$(sink_msgs plain other@rcpt.test s4@src.test)" = "tls=false from=s4@src.test to=other@rcpt.test"
# shellcheck disable=SC2016  # wait_for evals it
check "4 queue holds vip@rcpt.test only (not other@)" \
    wait_for '[ -z "$(q_reasons s4@src.test other@rcpt.test)" ]' 10
still_deferred_after_retry s4@src.test vip@rcpt.test "4 vip@rcpt.test"

# ------------------------------------------------------ 5. sender rule --

send finance@ourcorp.test pay@send.test >/dev/null
send clerk@ourcorp.test pay@send.test >/dev/null
wait_delivered plain pay@send.test clerk@ourcorp.test false "5 clerk@ourcorp.test -> pay@send.test"
wait_deferred_tls finance@ourcorp.test pay@send.test "5 finance@ourcorp.test -> pay@send.test (sender rule encrypt)"
still_deferred_after_retry finance@ourcorp.test pay@send.test "5 finance@ourcorp.test -> pay@send.test"

# ----------------------------------------------------- 6. live reload --

send s6@src.test f1@flip.test >/dev/null
wait_delivered plain f1@flip.test s6@src.test false "6 flip.test while may"

before=$(td_reloads)
t0=$(date +%s%N)
write_conf "$(conf_text encrypt)"
if wait_for "[ \"\$(td_reloads)\" -gt $before ]" 2; then
    ok "6 tlspolicyd logged 'reloaded' $(( ($(date +%s%N) - t0) / 1000000 )) ms after the mv: $(grep 'reloaded' "$TD_LOG" | tail -n1)"
else
    fail "6 no 'reloaded' in the tlspolicyd log within 2 s of the mv"
fi
ans=$(pf_postmap -q flip.test "$SM:tls-policy" 2>&1) || true
check "6 postmap -q flip.test now answers encrypt (got '$ans')" test "$ans" = encrypt
check "6 tlspolicyd still the same process (no restart)" \
    test "$(e2e_daemon_pid tlspolicyd)" = "${E2E_DAEMON_PIDS[tlspolicyd]}"
send s6@src.test f2@flip.test >/dev/null
wait_deferred_tls s6@src.test f2@flip.test "6 flip.test after the edit to encrypt"
check "6 nothing at the plain sink for f2@flip.test" test "$(sink_n plain f2@flip.test)" -eq 0

# A broken edit keeps the old policy.
fails_before=$(grep -ciE 'reload failed|previous policy' "$TD_LOG" || true)
write_conf "$(conf_text encrytp)"
if wait_for "[ \"\$(grep -ciE 'reload failed|previous policy' '$TD_LOG' || true)\" -gt $fails_before ]" 2; then
    ok "6 broken config: $(grep -iE 'reload failed|previous policy' "$TD_LOG" | tail -n1)"
else
    fail "6 broken config: no failed reload logged within 2 s"
fi
ans=$(pf_postmap -q flip.test "$SM:tls-policy" 2>&1) || true
check "6 broken config: still serving the old policy (flip.test = '$ans')" test "$ans" = encrypt
before=$(td_reloads)
write_conf "$(conf_text encrypt)"
wait_for "[ \"\$(td_reloads)\" -gt $before ]" 2 ||
    fail "6 no 'reloaded' after restoring the config"

# A list file edit reloads as well.
ans=$(pf_postmap -q list.test "$SM:tls-policy" 2>&1) || true
check "6 list.test not listed yet: postmap NOTFOUND (got '$ans')" test -z "$ans"
before=$(td_reloads)
t0=$(date +%s%N)
write_conf "$(printf '# destinations that must be encrypted\nlisted.test\nlist.test')" "$TD_DIR/enc.list"
if wait_for "[ \"\$(td_reloads)\" -gt $before ]" 2; then
    ok "6 list file edit: 'reloaded' $(( ($(date +%s%N) - t0) / 1000000 )) ms after the mv"
else
    fail "6 list file edit: no 'reloaded' in the tlspolicyd log within 2 s of the mv"
fi
ans=$(pf_postmap -q list.test "$SM:tls-policy" 2>&1) || true
check "6 list.test now answers encrypt (got '$ans')" test "$ans" = encrypt
send s6@src.test l1@list.test >/dev/null
wait_deferred_tls s6@src.test l1@list.test "6 list.test after the list edit"

# ------------------------------------------------- 7. tlspolicyd down --

plain_before=$(sink_n plain)
tls_before=$(sink_n tls)
e2e_daemon_stop tlspolicyd KILL
# shellcheck disable=SC2016  # eval'd by check
check "7 tlspolicyd killed (SIGKILL), port $TD_PORT closed" \
    eval '! _e2e_listening 127.0.0.1 $TD_PORT'

# Over SMTP: smtpd resolves each recipient, the resolver asks the maps.
if pf_send s7@src.test d7@enc-plain.test m7@may-plain.test >/dev/null 2>&1; then
    fail "7 smtpd accepted mail while tlspolicyd was down"
else
    ok "7 smtpd did not accept mail while tlspolicyd was down"
fi
for r in d7@enc-plain.test m7@may-plain.test; do
    if grep -E "NOQUEUE: reject: RCPT .* 4[0-9][0-9] 4\.[0-9.]+ <$r>: Temporary lookup failure" "$PF_MAILLOG" >/dev/null; then
        ok "7 RCPT $r: $(grep -oE "4[0-9][0-9] 4\.[0-9.]+ <$r>: Temporary lookup failure" "$PF_MAILLOG" | tail -n1)"
    else
        fail "7 no 'Temporary lookup failure' reject for $r in the maillog"
    fi
done

# Through the pickup service the mail gets queued and waits.
for r in q7@enc-plain.test q7@may-plain.test; do
    printf 'Subject: queued while tlspolicyd is down\n\nt-socketmap\n' |
        sendmail -C "$PF_DIR" -f s7@src.test "$r" || die "sendmail -C $PF_DIR failed"
done
DOWN_RE='address resolver failure|lookup fail|TLS configuration problem'
for r in q7@enc-plain.test q7@may-plain.test; do
    if wait_for "q_has s7@src.test $r '$DOWN_RE'" "$TLSPOLICY_MSG_TIMEOUT"; then
        ok "7 $r deferred while tlspolicyd is down: $(q_reasons s7@src.test "$r" | head -n1)"
    else
        fail "7 $r: no lookup-failure deferral: '$(q_reasons s7@src.test "$r")'"
    fi
done
n=$(deferred_attempts q7@enc-plain.test)
pf_flush
wait_for "[ \"\$(deferred_attempts q7@enc-plain.test)\" -gt $n ]" "$TLSPOLICY_MSG_TIMEOUT" || true
check "7 nothing reached a sink while tlspolicyd was down (plain $plain_before -> $(sink_n plain), tls $tls_before -> $(sink_n tls))" \
    test "$(sink_n plain)/$(sink_n tls)" = "$plain_before/$tls_before"

log_mark=$(wc -l <"$PF_MAILLOG")
td_start
ok "7 tlspolicyd started again (pid $(e2e_daemon_pid tlspolicyd))"
pf_flush
wait_delivered plain q7@may-plain.test s7@src.test false "7 may mail queued during the outage"
wait_deferred_tls s7@src.test q7@enc-plain.test "7 encrypt mail queued during the outage"
check "7 the encrypt mail never reached the plain sink" test "$(sink_n plain q7@enc-plain.test)" -eq 0
# Everything deferred earlier is retried after the restart (new maillog
# lines) and deferred again because TLS is required.
retried_for_tls() {
    tail -n +"$((log_mark + 1))" "$PF_MAILLOG" | grep -iF "to=<$1>" |
        grep -qF "status=deferred ($WANT_TLS"
}
for r in u1@enc-plain.test vip@rcpt.test pay@send.test f2@flip.test l1@list.test; do
    if wait_for "retried_for_tls $r" "$TLSPOLICY_MSG_TIMEOUT"; then
        ok "7 after the restart $r was retried and deferred again: $WANT_TLS"
    else
        fail "7 after the restart $r: no new 'status=deferred ($WANT_TLS' line; queue: '$(q_reasons '*' "$r")'"
    fi
done

# ---------------------- 8. only smtp_tls_policy_maps, tlspolicyd stopped --

e2e_daemon_stop tlspolicyd TERM
check "8 tlspolicyd exits 0 on SIGTERM (exit $E2E_DAEMON_RC)" test "$E2E_DAEMON_RC" = 0
plain_before=$(sink_n plain)
tls_before=$(sink_n tls)
pf_stop
PF_MAIN_EXTRA="smtp_tls_policy_maps = $SM:tls-policy"
pf_start
ok "8 Postfix restarted with only smtp_tls_policy_maps = $(pf_postconf -h smtp_tls_policy_maps)"
send s8@src.test e8@enc-tls.test m8@may-plain.test >/dev/null
for r in e8@enc-tls.test m8@may-plain.test; do
    if wait_for "q_has s8@src.test $r 'client TLS configuration problem'" "$TLSPOLICY_MSG_TIMEOUT"; then
        ok "8 $r deferred: $(q_reasons s8@src.test "$r" | head -n1)"
    else
        fail "8 $r: want 'client TLS configuration problem', got '$(q_reasons s8@src.test "$r")'"
    fi
done
if grep -q 'dsn=4\.7\.5, status=deferred (client TLS configuration problem)' "$PF_MAILLOG"; then
    ok "8 maillog: dsn=4.7.5, status=deferred (client TLS configuration problem)"
else
    fail "8 no 'dsn=4.7.5 ... client TLS configuration problem' in the maillog"
fi
# The mail routed by the (now absent) transport maps must not leak either.
n=$(deferred_attempts vip@rcpt.test)
pf_flush
wait_for "[ \"\$(deferred_attempts vip@rcpt.test)\" -gt $n ]" "$TLSPOLICY_MSG_TIMEOUT" || true
if wait_for "q_has s4@src.test vip@rcpt.test 'client TLS configuration problem'" 10; then
    ok "8 vip@rcpt.test without transport_maps: $(q_reasons s4@src.test vip@rcpt.test | head -n1)"
else
    fail "8 vip@rcpt.test without transport_maps: '$(q_reasons s4@src.test vip@rcpt.test)'"
fi
check "8 nothing reached a sink (plain $plain_before -> $(sink_n plain), tls $tls_before -> $(sink_n tls))" \
    test "$(sink_n plain)/$(sink_n tls)" = "$plain_before/$tls_before"

# ---------------------------------------------------------- 9. summary --

leaks=$(sink_msgs plain | grep -iE 'to=[^ ]*(enc-plain\.test|enc-tls\.test|vip@rcpt\.test|f2@flip\.test|list\.test)|from=finance@' || true)
check "9 the plain sink never got mail for an encrypt destination${leaks:+: $leaks}" test -z "$leaks"
notls=$(sink_msgs tls | grep -v '^tls=true ' || true)
check "9 every message at the STARTTLS sink came over TLS${notls:+: $notls}" test -z "$notls"
want_q=$(printf '%s\n' "finance@ourcorp.test pay@send.test" "s1@src.test u1@enc-plain.test" \
    "s1@src.test u1@sub.enc-plain.test" "s4@src.test vip@rcpt.test" "s6@src.test f2@flip.test" \
    "s6@src.test l1@list.test" \
    "s7@src.test q7@enc-plain.test" "s8@src.test e8@enc-tls.test" "s8@src.test m8@may-plain.test" | sort)
got_q=$(q_all)
check "9 the queue holds exactly the 9 recipients that must not go out in plaintext" \
    test "$got_q" = "$want_q"
[ "$got_q" = "$want_q" ] || printf '# queue:\n%s\n# want:\n%s\n' "$got_q" "$want_q"

e2e_finish 9 t-socketmap
