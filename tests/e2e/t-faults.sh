#!/usr/bin/env bash
# tests/e2e/t-faults.sh -- fault injection against tlspolicyd with a real
# (private) Postfix instance.
#
# Usage: t-faults.sh [TLSPOLICYD [SOCKETMAP_LOAD]]   (default build/tlspolicyd,
#        build/socketmap_load of this repository). Needs root. Loopback only.
#
# Postfix asks tlspolicyd ONLY through
#   smtp_tls_policy_maps = socketmap:inet:127.0.0.1:<free port>:tls-policy
# (no transport/sender maps, so smtpd keeps accepting mail while tlspolicyd
# is down; see t-socketmap.sh check 7 for what happens otherwise).
# Destinations (private hosts file): sink "tls" 127.0.0.2 offers STARTTLS,
# sink "plain" 127.0.0.3 does not.
#   enc-tls.test   -> tls sink,   rule encrypt
#   enc-plain.test -> plain sink, rule encrypt
#   may-plain.test -> plain sink, rule may
#   listed.test, new.test, again.test -> plain sink; encrypt while named in
#                     the list file enc.list (rule "enc-list")
#
# Checks (each prints "ok - ..." or "FAIL - ..."):
#   1. kill -9 during delivery: 60 messages (20 per domain, each with a
#      unique recipient fNN@domain and a unique X-Fault-Id header) are
#      submitted over one SMTP session, paced over FAULT_SEND_SECS (default
#      5 s) so deliveries run the whole time, while tlspolicyd is killed with
#      SIGKILL FAULT_KILLS times (default 3) at random moments (random gap
#      0.3-1.3 s, down 0.4-1.2 s, then restarted with e2e_daemon_start; a
#      postqueue -f right after each kill makes queued mail hit the outage).
#      Seed: FAULT_SEED (printed). Then flush until settled (bounded). Asserts:
#      - the outages did hit deliveries (maillog has "client TLS configuration
#        problem" deferrals), and every restart came up;
#      - the plain sink never received a message with an enc-*.test recipient
#        (every stored message's recipients are checked);
#      - all 20 enc-tls.test messages are at the tls sink, each with tls=true;
#      - all 20 may-plain.test messages are at the plain sink;
#      - all 20 enc-plain.test messages are still queued, each deferred with
#        "TLS is required, but was not offered" (after a retry with the daemon
#        up), and the maillog never says status=sent for one of them;
#      - nothing lost or duplicated: per domain, X-Fault-Id headers received
#        (sinks) + queued (postcat of each queued message) == sent, each
#        exactly once, and each header matches its envelope recipient.
#   2. invalid config under load: socketmap_load (8 connections, 6 s, keys
#      hitting rules, the default and NOTFOUND) runs while the config is
#      replaced (temp file + rename) by an invalid one (a syntax error, the
#      second time an unknown level), left 1 s, then restored. Asserts:
#      socketmap_load failed=0 with requests served; each cycle logged
#      "reload failed" and then "reloaded"; postmap probes during the whole
#      run always got the expected answers (the old policy kept serving); the
#      daemon is the same process.
#   3. list file (docs: tlspolicy.conf(5) "Changing list files while
#      tlspolicyd runs"): replaced by rename -> postmap answers change within
#      1 s; deleted -> "cannot open list file" + "reload failed" logged, the
#      previous entries keep answering and a message to a listed domain stays
#      deferred (TLS is required) at Postfix; recreated (written in place)
#      -> reloaded, new content answers within 1 s; moved away and back ->
#      the same.
#      3e: a list in a subdirectory (lists/dir.list) whose directory is
#      removed and recreated, or swapped by rename (mv lists.new lists), is
#      picked up within 1 s too (found by this test; fixed in
#      daemon/reload.cpp, which now watches each directory's parent and
#      re-watches after every reload). FAULT_DIR_CHECKS=0 skips it.
#   4. summary: the plain sink never got mail for an encrypt destination, the
#      queue holds exactly the mail that must not go out, cleanup leaves no
#      process and no temp dir behind.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TLSPOLICYD=$(realpath -e "${1:-$ROOT/build/tlspolicyd}")
SMLOAD=$(realpath -e "${2:-$ROOT/build/socketmap_load}")

# shellcheck source-path=SCRIPTDIR source=lib/postfix.sh
. "$HERE/lib/postfix.sh"

TIME_LIMIT=170              # seconds; a broken run gives up after this
# shellcheck source-path=SCRIPTDIR source=lib/checks.sh
. "$HERE/lib/checks.sh"
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

e2e_init
on_exit() {
    local rc=$?
    set +e
    # background helpers of this script (load client, probe loop, submitter)
    for p in ${BG_PIDS-}; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    if [ "$rc" -ne 0 ] && [ -z "${SUMMARY_DONE-}" ]; then
        echo "FAIL - t-faults aborted (exit $rc) after $(( $(date +%s) - START ))s; $FAILS check(s) had failed"
    fi
    (exit "$rc")
    e2e_cleanup
}
trap on_exit EXIT
BG_PIDS=

# Private copies: a rebuild of build/ during the run must not break restarts.
mkdir -p "$E2E_DIR/bin"
cp "$TLSPOLICYD" "$E2E_DIR/bin/tlspolicyd"
cp "$SMLOAD" "$E2E_DIR/bin/socketmap_load"
TLSPOLICYD=$E2E_DIR/bin/tlspolicyd
SMLOAD=$E2E_DIR/bin/socketmap_load
"$TLSPOLICYD" --help >/dev/null 2>&1 || die "cannot run $TLSPOLICYD (being rebuilt?)"

SEED=${FAULT_SEED:-$(( $(date +%s%N) % 32768 ))}
RANDOM=$SEED
echo "# FAULT_SEED=$SEED"
# rand_ms LO HI: random integer in [LO, HI]
rand_ms() { echo $(( $1 + RANDOM % ($2 - $1 + 1) )); }
sleep_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }

# --------------------------------------------------------- tlspolicyd --

e2e_tlspolicyd_paths
TD_LIST=$TD_DIR/enc.list

# conf_text [LEVEL_OF_MAY_RULE]: the policy (the argument lets check 2 make
# an invalid one).
conf_text() {
    cat <<EOF
# generated by t-faults.sh
outbound = (
  { name = "enc-domains"; level = "encrypt"; to = [ "enc-plain.test", "enc-tls.test" ]; },
  { name = "may-domains"; level = "${1:-may}"; to = [ "may-plain.test" ]; },
  { name = "enc-list"; level = "encrypt"; to_lists = [ "enc.list" ]; },
  { name = "dir-list"; level = "encrypt"; to_lists = [ "lists/dir.list" ]; }
);
daemon = {
  socketmap = [ "inet:127.0.0.1:$TD_PORT" ];
};
EOF
}

# replace FILE TEXT: like an editor, temp file in the same dir + rename.
replace() {
    printf '%s\n' "$2" >"$1.swp"
    mv -f "$1.swp" "$1"
}

td_start() {
    e2e_daemon_start tlspolicyd "$TLSPOLICYD" -c "$TD_CONF" -f
    if ! wait_for "_e2e_listening 127.0.0.1 $TD_PORT || ! e2e_daemon_pid tlspolicyd >/dev/null" 10 ||
       ! e2e_daemon_pid tlspolicyd >/dev/null; then
        die "tlspolicyd did not start listening on 127.0.0.1:$TD_PORT: $(tail -n 5 "$TD_LOG")"
    fi
}

# td_off: current size of the daemon log (a mark for td_since).
td_off() { stat -c %s "$TD_LOG"; }
# td_since OFF: the daemon log from byte OFF on.
td_since() { tail -c +"$(( $1 + 1 ))" "$TD_LOG"; }
# td_count OFF ERE: lines matching ERE logged since OFF.
td_count() { td_since "$1" | grep -cE -- "$2" || true; }

RE_OK='tlspolicyd: reloaded '
RE_FAILED='tlspolicyd: (error: )?reload failed with'

# q: postmap -q KEY against tlspolicyd ("" = NOTFOUND or error).
q() { pf_postmap -q "$1" "$SM:tls-policy" 2>/dev/null || true; }

printf '%s\n' "$(conf_text)" >"$TD_CONF"
printf '# destinations that must be encrypted\nlisted.test\n' >"$TD_LIST"
mkdir -p "$TD_DIR/lists"
printf 'dir1.test\n' >"$TD_DIR/lists/dir.list"
td_start
ok "tlspolicyd listening on 127.0.0.1:$TD_PORT (pid $(e2e_daemon_pid tlspolicyd))"

# --------------------------------------------------------------- setup --

e2e_host enc-tls.test 127.0.0.2
for h in enc-plain.test may-plain.test listed.test new.test again.test; do
    e2e_host "$h" 127.0.0.3
done
sink_start tls 127.0.0.2 --starttls
sink_start plain 127.0.0.3
PF_MAIN_EXTRA="smtp_tls_policy_maps = $SM:tls-policy"
pf_start

# ------------------------------------------------------------- helpers --

# q_count_reason DOMAIN ERE: queued recipients at DOMAIN whose reason
# matches ERE.
q_count_reason() {
    pf_queue_json | "$E2E_PYTHON" -c '
import json, re, sys
d, rx, n = sys.argv[1].lower(), re.compile(sys.argv[2]), 0
for line in sys.stdin:
    if line.strip():
        for x in json.loads(line).get("recipients", []):
            a = x.get("address", "").lower()
            if a.endswith("@" + d) and rx.search(x.get("delay_reason", "") or ""):
                n += 1
print(n)
' "$1" "$2"
}

# q_all: every queued recipient, lowercase, sorted.
q_all() {
    pf_queue_json | "$E2E_PYTHON" -c '
import json, sys
out = []
for line in sys.stdin:
    if line.strip():
        out += [x.get("address", "").lower() for x in json.loads(line).get("recipients", [])]
print("\n".join(sorted(out)))
'
}

# sink_rcpts NAME [DOMAIN]: number of messages at sink NAME with a recipient
# at DOMAIN (any message without DOMAIN).
sink_rcpts() {
    "$E2E_PYTHON" - "$E2E_DIR/sink-$1" "${2-}" <<'EOF'
import glob, json, os, sys
d, dom, n = sys.argv[1], sys.argv[2].lower(), 0
for f in glob.glob(os.path.join(d, "*.json")):
    tos = [t.lower() for t in json.load(open(f, encoding="utf-8"))["rcpt_tos"]]
    if not dom or any(t.endswith("@" + dom) for t in tos):
        n += 1
print(n)
EOF
}

WANT_TLS='TLS is required, but was not offered'

# ======================================= 1. kill -9 during deliveries ==

FAULT_KILLS=${FAULT_KILLS:-3}
FAULT_SEND_SECS=${FAULT_SEND_SECS:-5}
PER_DOMAIN=20
DOMAINS=(enc-tls.test enc-plain.test may-plain.test)
RUN_TAG=$(printf 'r%05d' "$SEED")
SENT=$E2E_DIR/sent.txt            # "fault-id rcpt qid" per accepted message

# submitter: one SMTP session, PER_DOMAIN messages per domain, interleaved,
# paced evenly over FAULT_SEND_SECS seconds.
"$E2E_PYTHON" - "$PF_PORT" "$FAULT_SEND_SECS" "$PER_DOMAIN" "$RUN_TAG" "${DOMAINS[@]}" \
        >"$SENT" 2>"$E2E_DIR/submit.log" <<'EOF' &
import smtplib, sys, time
port, secs, n, tag, doms = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]
msgs = [(d, i) for i in range(1, n + 1) for d in doms]
gap = secs / len(msgs)
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.e2e.test", timeout=30)
t0, bad = time.time(), 0
for k, (d, i) in enumerate(msgs):
    wait = t0 + k * gap - time.time()
    if wait > 0:
        time.sleep(wait)
    rcpt = "f%02d@%s" % (i, d)
    fid = "%s-%s-%02d" % (tag, d, i)
    msg = ("From: <s@src.test>\r\nTo: <%s>\r\nSubject: t-faults %s\r\n"
           "X-Fault-Id: %s\r\nMessage-ID: <%s@src.test>\r\n\r\nt-faults\r\n"
           % (rcpt, fid, fid, fid))
    try:
        c, r = s.mail("s@src.test")
        if c != 250: raise Exception("MAIL %d %s" % (c, r))
        c, r = s.rcpt(rcpt)
        if c != 250: raise Exception("RCPT %d %s" % (c, r))
        c, r = s.data(msg)
        if c != 250: raise Exception("DATA %d %s" % (c, r))
        qid = r.decode().rsplit(" ", 1)[-1]
        print(fid, rcpt, qid, flush=True)
    except Exception as e:
        bad += 1
        print("not accepted: %s: %s" % (fid, e), file=sys.stderr, flush=True)
        try: s.rset()
        except Exception: pass
s.quit()
sys.exit(1 if bad else 0)
EOF
SUBMIT_PID=$!
BG_PIDS="$BG_PIDS $SUBMIT_PID"
T1=$(now_ms)

KILLS=0
RESTARTS=0
FAULT_LOG=
for k in $(seq "$FAULT_KILLS"); do
    sleep_ms "$(rand_ms 300 1300)"
    at=$(( $(now_ms) - T1 ))
    inflight=$(sink_count tls)/$(sink_count plain)
    e2e_daemon_stop tlspolicyd KILL
    [ "$E2E_DAEMON_RC" = 137 ] && KILLS=$((KILLS + 1))
    pf_flush 2>/dev/null || true     # queued mail retries into the outage
    down=$(rand_ms 400 1200)
    sleep_ms "$down"
    td_start
    RESTARTS=$((RESTARTS + 1))
    FAULT_LOG+="kill $k at +${at} ms (sinks tls/plain had $inflight), down ${down} ms+restart; "
done
echo "# $FAULT_LOG"
check "1 tlspolicyd killed with SIGKILL $KILLS/$FAULT_KILLS times (exit 137) and restarted $RESTARTS times" \
    test "$KILLS/$RESTARTS" = "$FAULT_KILLS/$FAULT_KILLS"

rc=0
wait_for "! kill -0 $SUBMIT_PID 2>/dev/null" 60 || true
wait "$SUBMIT_PID" || rc=$?
BG_PIDS=${BG_PIDS/ $SUBMIT_PID/}
nsent=$(grep -c . "$SENT" || true)
check "1 smtpd accepted all $((PER_DOMAIN * 3)) messages during the faults (sent $nsent in $(( ($(now_ms) - T1) / 1000 )) s, submitter exit $rc)" \
    test "$nsent/$rc" = "$((PER_DOMAIN * 3))/0"
[ "$rc" -eq 0 ] || cat "$E2E_DIR/submit.log"

# Settle: retry until everything deliverable is delivered and every
# enc-plain.test message has been retried with the daemon up.
settled() {
    [ "$(sink_rcpts tls enc-tls.test)" -ge $PER_DOMAIN ] &&
    [ "$(sink_rcpts plain may-plain.test)" -ge $PER_DOMAIN ] &&
    [ "$(q_count_reason enc-plain.test "$WANT_TLS")" -ge $PER_DOMAIN ] &&
    [ "$(pf_queue_count)" -eq $PER_DOMAIN ]
}
T2=$(now_ms)
settle_ok=0
for _ in $(seq 20); do
    pf_flush 2>/dev/null || true
    if wait_for settled 3; then settle_ok=1; break; fi
done
check "1 settled $(( $(now_ms) - T2 )) ms after the submission ended (tls sink $(sink_rcpts tls enc-tls.test), plain sink may $(sink_rcpts plain may-plain.test), queue $(pf_queue_count), of which TLS-deferred $(q_count_reason enc-plain.test "$WANT_TLS"))" \
    test "$settle_ok" = 1

# How often the outages hit a delivery attempt.
hits_defer=$(grep -c 'status=deferred (client TLS configuration problem)' "$PF_MAILLOG" || true)
hits_susp=$(grep -c 'status=deferred (delivery temporarily suspended: client TLS configuration problem)' "$PF_MAILLOG" || true)
hits_warn=$(grep -cE 'warning: .*(socketmap|127\.0\.0\.1:'"$TD_PORT"')' "$PF_MAILLOG" || true)
check "1 the outages hit deliveries: $hits_defer deliveries deferred 'client TLS configuration problem' (+$hits_susp 'delivery temporarily suspended'), $hits_warn Postfix warnings about the socketmap" \
    test "$hits_defer" -gt 0

# Full accounting, per domain and per message.
"$E2E_PYTHON" - "$SENT" "$E2E_DIR/sink-tls" "$E2E_DIR/sink-plain" "$PF_DIR" "$PER_DOMAIN" "${DOMAINS[@]}" \
        >"$E2E_DIR/account.txt" 2>&1 <<'EOF' || true
import collections, email, glob, json, os, subprocess, sys
sent_f, tls_d, plain_d, pf_dir, n, doms = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6:]
sent = {}                                   # fid -> rcpt
for line in open(sent_f):
    fid, rcpt, qid = line.split()
    sent[fid] = rcpt.lower()
dom_of = lambda a: a.rsplit("@", 1)[-1].lower()
res = []
def out(ok, msg): res.append(("PASS|" if ok else "FAIL|") + msg)

def fid_of(raw):
    m = email.message_from_string(raw)
    return (m.get("X-Fault-Id") or "").strip()

recv = collections.defaultdict(list)        # fid -> [(sink, tls, rcpts)]
bad_hdr, leaks = [], []
for sink, d in (("tls", tls_d), ("plain", plain_d)):
    for f in sorted(glob.glob(os.path.join(d, "*.json"))):
        m = json.load(open(f, encoding="utf-8"))
        tos = [t.lower() for t in m["rcpt_tos"]]
        fid = fid_of(m["data"])
        if sink == "plain" and any(dom_of(t).startswith("enc-") for t in tos):
            leaks.append("%s %s tls=%s" % (fid, ",".join(tos), m["tls"]))
        if fid not in sent:
            continue
        if tos != [sent[fid]]:
            bad_hdr.append("%s at %s rcpt %s" % (fid, sink, tos))
        recv[fid].append((sink, m["tls"], tos))

queued = collections.defaultdict(list)      # fid -> [rcpts]
q = subprocess.run(["postqueue", "-c", pf_dir, "-j"], capture_output=True, text=True).stdout
for line in q.splitlines():
    if not line.strip():
        continue
    m = json.loads(line)
    hdr = subprocess.run(["postcat", "-c", pf_dir, "-h", "-q", m["queue_id"]],
                         capture_output=True, text=True).stdout
    fid = ""
    for h in hdr.splitlines():
        if h.lower().startswith("x-fault-id:"):
            fid = h.split(":", 1)[1].strip()
    rc = sorted(x["address"].lower() for x in m["recipients"])
    if fid in sent:
        if rc != [sent[fid]]:
            bad_hdr.append("%s queued rcpt %s" % (fid, rc))
        queued[fid].append(rc)

out(not leaks, "the plain sink got no message for an enc-*.test recipient (checked %d messages)%s"
    % (len(glob.glob(os.path.join(plain_d, "*.json"))), ": " + "; ".join(leaks) if leaks else ""))
out(not bad_hdr, "every X-Fault-Id header matches its envelope recipient%s" % (": " + "; ".join(bad_hdr) if bad_hdr else ""))
for d in doms:
    fids = [f for f in sent if dom_of(sent[f]) == d]
    r = [f for f in fids if recv.get(f)]
    qd = [f for f in fids if queued.get(f)]
    dup = [f for f in fids if len(recv.get(f, [])) + len(queued.get(f, [])) > 1]
    lost = [f for f in fids if not recv.get(f) and not queued.get(f)]
    out(len(fids) == n and not dup and not lost,
        "%s: sent %d = received %d + queued %d, none lost%s, none duplicated%s"
        % (d, len(fids), len(r), len(qd), (" (LOST: %s)" % " ".join(lost)) if lost else "",
           (" (TWICE: %s)" % " ".join(dup)) if dup else ""))
    if d == "enc-tls.test":
        notls = [f for f in r if any(s != "tls" or not t for s, t, _ in recv[f])]
        out(len(r) == n and not notls,
            "enc-tls.test: all %d at the tls sink with tls=true%s" % (len(r), (" (NOT: %s)" % " ".join(notls)) if notls else ""))
    elif d == "may-plain.test":
        out(len(r) == n and all(s == "plain" for f in r for s, _, _ in recv[f]),
            "may-plain.test: all %d delivered to the plain sink" % len(r))
    elif d == "enc-plain.test":
        out(len(qd) == n and not r, "enc-plain.test: all %d still queued, %d delivered" % (len(qd), len(r)))
print("\n".join(res))
EOF
while IFS='|' read -r st msg; do
    case $st in
        PASS) ok "1 $msg" ;;
        FAIL) fail "1 $msg" ;;
        *) fail "1 accounting script: $st${msg:+|$msg}" ;;
    esac
done <"$E2E_DIR/account.txt"

reasons=$(pf_queue_json | "$E2E_PYTHON" -c '
import json, sys, collections
c = collections.Counter()
for line in sys.stdin:
    if line.strip():
        for x in json.loads(line).get("recipients", []):
            c[x.get("delay_reason", "") or "(none)"] += 1
print("; ".join("%d x %s" % (v, k) for k, v in c.items()))')
check "1 the 20 queued enc-plain.test messages are deferred for the TLS reason: $reasons" \
    test "$(q_count_reason enc-plain.test "$WANT_TLS")" -eq $PER_DOMAIN
sent_plain=$(grep -iE 'to=<f[0-9]+@enc-plain\.test>.*status=sent' "$PF_MAILLOG" || true)
check "1 the maillog never says status=sent for enc-plain.test${sent_plain:+: $sent_plain}" test -z "$sent_plain"
ntls_ok=$(grep -ciE 'to=<f[0-9]+@enc-tls\.test>.*status=sent' "$PF_MAILLOG" || true)
check "1 the maillog has status=sent for the $PER_DOMAIN enc-tls.test messages (got $ntls_ok)" \
    test "$ntls_ok" -eq $PER_DOMAIN
starts=$(grep -c 'tlspolicyd: started:' "$TD_LOG" || true)
check "1 tlspolicyd log: started $starts times (1 + $FAULT_KILLS restarts)" test "$starts" -eq $((FAULT_KILLS + 1))

# ================================== 2. invalid config under load ==

KEYS=$E2E_DIR/load.keys
printf '%s\n' enc-plain.test enc-tls.test may-plain.test listed.test \
    sub.enc-tls.test Enc-Plain.TEST unknown.test .test '[127.0.0.1]:25' \
    x.listed.test may-plain.test:2525 >"$KEYS"
# What the valid policy answers (postmap -q - prints found keys only).
PROBE_KEYS=$'enc-plain.test\nmay-plain.test\nlisted.test\nunknown.test'
PROBE_WANT=$'enc-plain.test\tencrypt\nmay-plain.test\tmay\nlisted.test\tencrypt'
got=$(pf_postmap -q - "$SM:tls-policy" <<<"$PROBE_KEYS" 2>&1 || true)
check "2 before: postmap -q - answers the valid policy" test "$got" = "$PROBE_WANT"

LOAD_CONNS=${LOAD_CONNS:-8}
LOAD_SECS=${LOAD_SECS:-6}
td_pid=$(e2e_daemon_pid tlspolicyd)
off0=$(td_off)
"$SMLOAD" "$TD_PORT" tls-policy "$KEYS" "$LOAD_CONNS" "$LOAD_SECS" >"$E2E_DIR/load.out" 2>&1 &
LOAD_PID=$!
BG_PIDS="$BG_PIDS $LOAD_PID"

# Probe loop: postmap -q - every ~0.1 s while the load runs.
PROBE_OUT=$E2E_DIR/probe.out
: >"$PROBE_OUT"
(
    end=$(( $(date +%s) + LOAD_SECS + 1 ))
    while [ "$(date +%s)" -lt "$end" ] && kill -0 "$LOAD_PID" 2>/dev/null; do
        g=$(postmap -c "$PF_DIR" -q - "$SM:tls-policy" <<<"$PROBE_KEYS" 2>&1 || true)
        if [ "$g" = "$PROBE_WANT" ]; then echo good; else echo "bad: ${g//$'\n'/ | }"; fi
        sleep 0.1
    done
) >>"$PROBE_OUT" 2>&1 &
PROBE_PID=$!
BG_PIDS="$BG_PIDS $PROBE_PID"

sleep 0.5
CYCLE_LOG=
for cycle in 1 2; do
    off=$(td_off)
    t0=$(now_ms)
    if [ "$cycle" = 1 ]; then
        replace "$TD_CONF" "$(conf_text | sed 's/^);$/(;/')"     # syntax error
    else
        replace "$TD_CONF" "$(conf_text encrytp)"               # unknown level
    fi
    if wait_for "[ \"\$(td_count $off '$RE_FAILED')\" -ge 1 ]" 3; then
        t_fail=$(( $(now_ms) - t0 ))
    else
        t_fail=never
    fi
    ans=$(q enc-plain.test)/$(q may-plain.test)
    rest=$(( 1000 - ($(now_ms) - t0) ))
    [ "$rest" -le 0 ] || sleep_ms "$rest"
    off2=$(td_off)
    t1=$(now_ms)
    replace "$TD_CONF" "$(conf_text)"
    if wait_for "[ \"\$(td_count $off2 '$RE_OK')\" -ge 1 ]" 3; then
        t_ok=$(( $(now_ms) - t1 ))
    else
        t_ok=never
    fi
    errs=$(td_since "$off" | grep -v 'reload failed' | grep -m1 -E 'tlspolicyd: error: ' | sed 's/.*tlspolicyd: //' || true)
    check "2 cycle $cycle: invalid config -> 'reload failed' after $t_fail ms ($errs), old policy answers '$ans' while invalid" \
        test "$t_fail" != never -a "$ans" = encrypt/may
    check "2 cycle $cycle: restored config -> 'reloaded' after $t_ok ms" test "$t_ok" != never
    CYCLE_LOG+="cycle $cycle: failed after $t_fail ms, reloaded $t_ok ms after restore; "
done

wait_for "! kill -0 $LOAD_PID 2>/dev/null" $((LOAD_SECS + 10)) || true
lrc=0
wait "$LOAD_PID" || lrc=$?
wait "$PROBE_PID" || true
BG_PIDS=
load=$(tail -n 1 "$E2E_DIR/load.out")
lfailed=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<<"$load")
lreq=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$load")
check "2 socketmap_load during the invalid reloads: $load (exit $lrc)" \
    test "${lfailed:-x}/$lrc" = "0/0" -a "${lreq:-0}" -gt 0
# Order in the log: failed, reloaded, failed, reloaded. A repeat of the same
# outcome is squeezed: on a loaded machine the 2 s stat backstop can notice
# the restored file after inotify's reload did and load it once more (the
# same policy, harmless); what must not happen is a failure left standing.
order=$(td_since "$off0" | grep -oE 'tlspolicyd: (error: )?(reload failed|reloaded)' | sed 's/tlspolicyd: //; s/error: //' | uniq | tr '\n' ',')
check "2 log order since the load started: ${order%,}" test "$order" = 'reload failed,reloaded,reload failed,reloaded,'
nbad=$(grep -c '^bad' "$PROBE_OUT" || true)
ngood=$(grep -c '^good' "$PROBE_OUT" || true)
check "2 postmap probes during the load: $ngood right, $nbad wrong$( [ "$nbad" -eq 0 ] || echo ": $(grep -m1 '^bad' "$PROBE_OUT")")" \
    test "$nbad" -eq 0 -a "$ngood" -gt 0
check "2 tlspolicyd is the same process (pid $td_pid)" test "$(e2e_daemon_pid tlspolicyd || true)" = "$td_pid"
echo "# $CYCLE_LOG"

# ================================================== 3. list file ==

check "3 before: listed.test=encrypt, new.test NOTFOUND" test "$(q listed.test)/$(q new.test)" = encrypt/

# wait_answer KEY WANT TIMEOUT_MS: poll postmap until KEY answers WANT;
# prints the elapsed ms, or "never".
wait_answer() {
    local t0 end
    t0=$(now_ms)
    end=$((t0 + $3))
    while :; do
        if [ "$(q "$1")" = "$2" ]; then echo $(( $(now_ms) - t0 )); return 0; fi
        [ "$(now_ms)" -lt "$end" ] || { echo never; return 1; }
        sleep 0.02
    done
}

# 3a. replaced by rename
off=$(td_off)
replace "$TD_LIST" $'# replaced\nnew.test'
el=$(wait_answer new.test encrypt 1000 || true)
check "3a list replaced by rename: new.test answers encrypt after $el ms (limit 1000)" test "$el" != never
check "3a ... and listed.test (dropped from the list) is NOTFOUND (got '$(q listed.test)')" test -z "$(q listed.test)"
check "3a ... one 'reloaded', no failure logged" \
    test "$(td_count "$off" "$RE_OK")/$(td_count "$off" "$RE_FAILED")" = 1/0

# 3b. deleted
off=$(td_off)
rm -f "$TD_LIST"
wait_for "[ \"\$(td_count $off '$RE_FAILED')\" -ge 1 ]" 3 || true
err=$(td_since "$off" | grep -m1 -i 'cannot open list file' | sed 's/.*tlspolicyd: //' || true)
check "3b list deleted: reload error logged: ${err:-none}" test -n "$err"
check "3b ... 'reload failed' logged: $(td_since "$off" | grep -m1 -E "$RE_FAILED" | sed 's/.*tlspolicyd: //' || true)" \
    test "$(td_count "$off" "$RE_FAILED")" -ge 1
check "3b ... previous policy still answers: new.test='$(q new.test)' listed.test='$(q listed.test)'" \
    test "$(q new.test)/$(q listed.test)" = encrypt/
qid=$(pf_send s3@src.test n3@new.test -- --add-header "X-Fault-Id: $RUN_TAG-list-deleted") ||
    die "smtpd did not accept mail to n3@new.test"
if wait_for "q_reasons n3@new.test | grep -qF '$WANT_TLS'" 15; then
    ok "3b ... mail to new.test while the list is deleted ($qid): deferred: $(q_reasons n3@new.test | head -n1)"
else
    fail "3b ... mail to new.test while the list is deleted: '$(q_reasons n3@new.test)', plain sink $(sink_rcpts plain new.test)"
fi
check "3b ... nothing at the plain sink for new.test" test "$(sink_rcpts plain new.test)" -eq 0
check "3b ... tlspolicyd is the same process" test "$(e2e_daemon_pid tlspolicyd || true)" = "$td_pid"

# 3c. recreated, written in place (not by rename)
off=$(td_off)
printf '# recreated\nnew.test\nagain.test\n' >"$TD_LIST"
el=$(wait_answer again.test encrypt 1000 || true)
check "3c list recreated in place: again.test answers encrypt after $el ms (limit 1000), new.test='$(q new.test)'" \
    test "$el" != never -a "$(q new.test)" = encrypt
sleep 0.3     # a late second reload (e.g. of a half-written file) would show now
check "3c ... reloaded $(td_count "$off" "$RE_OK") time(s), failed $(td_count "$off" "$RE_FAILED") time(s)" \
    test "$(td_count "$off" "$RE_OK")" -ge 1 -a "$(td_count "$off" "$RE_FAILED")" -eq 0

# 3d. moved away, then moved back
off=$(td_off)
mv "$TD_LIST" "$TD_LIST.away"
wait_for "[ \"\$(td_count $off '$RE_FAILED')\" -ge 1 ]" 3 || true
check "3d list moved away: reload failed ($(td_count "$off" 'cannot open list file') 'cannot open list file'), again.test still '$(q again.test)'" \
    test "$(td_count "$off" "$RE_FAILED")" -ge 1 -a "$(q again.test)" = encrypt
off=$(td_off)
printf '# back\nnew.test\nagain.test\nlisted.test\n' >"$TD_LIST.away"
mv "$TD_LIST.away" "$TD_LIST"
el=$(wait_answer listed.test encrypt 1000 || true)
check "3d list moved back (with listed.test added): listed.test answers encrypt after $el ms (limit 1000)" test "$el" != never
check "3d ... tlspolicyd is the same process" test "$(e2e_daemon_pid tlspolicyd || true)" = "$td_pid"

# 3e. the list's directory removed and recreated, or swapped by rename.
# Opt-in: fails with tlspolicyd as of this writing (see the header comment).
if [ "${FAULT_DIR_CHECKS:-1}" = 1 ]; then
    off=$(td_off)
    rm -r "$TD_DIR/lists"
    wait_for "[ \"\$(td_count $off '$RE_FAILED')\" -ge 1 ]" 3 || true
    check "3e list dir removed: reload failed, dir1.test still '$(q dir1.test)'" \
        test "$(td_count "$off" "$RE_FAILED")" -ge 1 -a "$(q dir1.test)" = encrypt
    mkdir "$TD_DIR/lists"
    printf 'dir2.test\n' >"$TD_DIR/lists/dir.list"
    el=$(wait_answer dir2.test encrypt 1000 || true)
    check "3e list dir recreated, list written: dir2.test answers encrypt after $el ms (limit 1000)" test "$el" != never
    mkdir "$TD_DIR/lists.new"
    printf 'dir3.test\n' >"$TD_DIR/lists.new/dir.list"
    mv "$TD_DIR/lists" "$TD_DIR/lists.old"
    mv "$TD_DIR/lists.new" "$TD_DIR/lists"
    el=$(wait_answer dir3.test encrypt 1000 || true)
    check "3e list dir swapped by rename: dir3.test answers encrypt after $el ms (limit 1000)" test "$el" != never
else
    echo "# skip 3e (list directory removed/recreated or swapped by rename): FAULT_DIR_CHECKS=0 was set"
fi

# The message queued while the list was missing: still deferred after a retry.
n=$(grep -ciF 'to=<n3@new.test>' "$PF_MAILLOG" | tr -d ' ' || true)
pf_flush
wait_for "[ \$(grep -ciF 'to=<n3@new.test>' '$PF_MAILLOG') -gt $n ]" 15 || true
if wait_for "q_reasons n3@new.test | grep -qF '$WANT_TLS'" 10; then
    ok "3d n3@new.test still deferred after a retry: $WANT_TLS"
else
    fail "3d n3@new.test after a retry: '$(q_reasons n3@new.test)'"
fi

# ========================================================= 4. summary ==

leaks=$(sink_rcpts plain enc-plain.test)/$(sink_rcpts plain enc-tls.test)/$(sink_rcpts plain new.test)
check "4 the plain sink never got mail for enc-plain.test/enc-tls.test/new.test ($leaks)" test "$leaks" = 0/0/0
want_q=$( { for i in $(seq -w 1 $PER_DOMAIN); do echo "f$i@enc-plain.test"; done; echo n3@new.test; } | sort)
got_q=$(q_all)
check "4 the queue holds exactly the $((PER_DOMAIN + 1)) messages that must not go out in plaintext" \
    test "$got_q" = "$want_q"
[ "$got_q" = "$want_q" ] || printf '# queue:\n%s\n# want:\n%s\n' "$got_q" "$want_q"

e2e_finish 4 t-faults "FAULT_SEED=$SEED"
