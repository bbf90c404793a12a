#!/usr/bin/env bash
# tests/abuse/t_tsan.sh -- the daemon's concurrency under ThreadSanitizer.
#
# Usage: t_tsan.sh TSAN_TLSPOLICYD [SECONDS]
#   TSAN_TLSPOLICYD  a tlspolicyd built with -DSANITIZE=thread:
#     cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSANITIZE=thread
#     cmake --build build-tsan -j2 --target tlspolicyd
#   SECONDS          how long the mixed load runs (default 30)
#   env TSAN_KEEP=1  keep the work directory
#   env TSAN_EXTRA_SUPP=FILE  more suppressions, for exploration only (e.g. to
#                    look past a known report for further ones); the run then
#                    says so and cannot pass
#
# One daemon serves socketmap and milter on free loopback ports, and for
# SECONDS, all at once:
#   - 6 socketmap client processes (Python, stdlib), each with 4 connections
#     asking in turn, checking every answer, reconnecting now and then, and
#     sending a malformed frame every 200 requests (the error path logs from
#     the event loop while milter threads log too);
#   - 4 miltertest processes (tsan-milter.lua): outbound and inbound
#     sessions, two connections open at once, aborts, clients vanishing;
#     libmilter runs one thread per connection;
#   - a reload driver: every 0.25 s one of: the config rewritten (rename) with
#     the "flip" rule's level and log_all_lookups toggled, the list file
#     rewritten, SIGHUP, a broken config (the reload fails, the old policy
#     keeps serving) then fixed. Each is a reload on a worker thread, a
#     snapshot swap on the event loop and a retired snapshot freed on another
#     thread, while milter threads hold snapshots for their transactions.
# Then SIGTERM. TSAN_OPTIONS has halt_on_error=1 (the first report kills the
# daemon with status 66) and, if tests/abuse/tsan.supp exists, its
# suppressions (each explained there; only libmilter-internal reports may go
# there, never a tlspolicy:: frame).
#
# Passes when: the daemon's stderr (TSan writes there) has no "WARNING:
# ThreadSanitizer" (nor ERROR/FATAL/"reported"), SIGTERM stops it
# with status 0 and "stopped" logged, every socketmap and milter client
# reports no wrong answer, and reloads happened. Prints ok/FAIL lines and the
# counts; exits 1 on failure. Loopback only.
set -u

daemon=${1:?usage: t_tsan.sh TSAN_TLSPOLICYD [SECONDS]}
secs=${2:-30}
here=$(cd "$(dirname "$0")" && pwd)
lib=$here/../milter/lib.lua
case $daemon in /*) ;; *) daemon=$PWD/$daemon ;; esac
[ -x "$daemon" ] || { echo "t_tsan.sh: $daemon: not executable" >&2; exit 2; }
command -v miltertest >/dev/null || { echo "t_tsan.sh: miltertest not found (apt-get install miltertest)" >&2; exit 2; }
if ! nm -D "$daemon" 2>/dev/null | grep -q __tsan_init && ! ldd "$daemon" 2>/dev/null | grep -q libtsan; then
    echo "t_tsan.sh: $daemon is not built with -fsanitize=thread" >&2; exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tlspolicy-tsan.XXXXXX")
daemon_pid=
bg_pids=()
failed=0
# shellcheck disable=SC2317
cleanup() {
    for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null; done
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then kill -KILL "$daemon_pid" 2>/dev/null; fi
    wait 2>/dev/null
    if [ -n "${TSAN_KEEP:-}" ] || [ "$failed" -ne 0 ]; then echo "# work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() { echo "ok - $*"; }
fail() { echo "FAIL - $*"; failed=$((failed + 1)); }
t0=$(date +%s%3N)

free_port() {
    local p hex
    while :; do
        p=$((20000 + RANDOM % 12000))
        printf -v hex ':%04X ' "$p"
        grep -qF "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null && continue
        [ "$p" = "${1:-}" ] && continue
        echo "$p"; return
    done
}

# write_conf LEVEL LOG_ALL [BROKEN]: the config, replaced by rename.
write_conf() {
    {
        echo 'default = "may";'
        echo 'recipient_delimiter = "+";'
        echo 'outbound = ('
        echo '  { name = "enc"; level = "encrypt"; to = [ "enc.test" ]; },'
        echo "  { name = \"flip\"; level = \"$1\"; to = [ \"flip.test\" ]; },"
        echo '  { name = "list"; level = "encrypt"; to_lists = [ "force.list" ]; },'
        echo '  { name = "auditor"; level = "encrypt"; to = [ "auditor@lawfirm.test" ]; }'
        echo ');'
        echo 'inbound = ( { name = "partner"; from = [ "*@partner.test" ]; require = "tls"; action = "reject"; } );'
        echo 'milter = { outbound_clients = [ "10.0.0.0/8" ]; };'
        [ -n "${3:-}" ] && echo 'outbound_typo = 1;'
        echo 'daemon = {'
        echo "  socketmap = [ \"inet:127.0.0.1:$p_sm\" ];"
        echo "  milter = \"inet:127.0.0.1:$p_milter\";"
        echo "  log_all_lookups = $2;"
        echo '  idle_timeout = 11;'
        echo '};'
    } > "$work/tlspolicy.conf.new"
    mv "$work/tlspolicy.conf.new" "$work/tlspolicy.conf"
}

write_list() {   # N: force.list with listed.test and N extra names
    { echo "listed.test"; for i in $(seq "$1"); do echo "l$i.list.test"; done; } > "$work/force.list.new"
    mv "$work/force.list.new" "$work/force.list"
}

tsan_opts="halt_on_error=1 exitcode=66 second_deadlock_stack=1 history_size=4"
supp_files=()
[ -f "$here/tsan.supp" ] && supp_files+=("$here/tsan.supp")
[ -n "${TSAN_EXTRA_SUPP:-}" ] && supp_files+=("$TSAN_EXTRA_SUPP")
if [ ${#supp_files[@]} -gt 0 ]; then
    cat "${supp_files[@]}" > "$work/tsan.supp"
    tsan_opts="$tsan_opts suppressions=$work/tsan.supp"
fi

started=
for _ in 1 2 3; do
    p_sm=$(free_port); p_milter=$(free_port "$p_sm")
    write_list 50
    write_conf encrypt false
    : > "$work/daemon.log"
    TSAN_OPTIONS="$tsan_opts" "$daemon" -f -c "$work/tlspolicy.conf" 2>> "$work/daemon.log" &
    daemon_pid=$!
    for _ in $(seq 400); do   # TSan start is slow
        grep -qs 'tlspolicyd: started:' "$work/daemon.log" && { started=1; break; }
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.05
    done
    [ -n "$started" ] && break
    kill -KILL "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null; daemon_pid=
    grep -qE 'in use|cannot (open|bind)|Address already' "$work/daemon.log" || break
done
if [ -z "$started" ]; then
    fail "the TSan daemon started"; sed 's/^/    /' "$work/daemon.log" | tail -40; exit 1
fi
ok "the TSan daemon started (pid $daemon_pid, socketmap $p_sm, milter $p_milter, TSAN_OPTIONS=$tsan_opts)"
echo "# threads at start: $(awk '/^Threads:/ {print $2}' "/proc/$daemon_pid/status")"

# --- socketmap clients
cat > "$work/sm_client.py" <<'EOF'
import socket, sys, time
port, secs, cid = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
def ns(s): s = s.encode(); return b"%d:%s," % (len(s), s)
CASES = [("tls-policy enc.test", {b"OK encrypt"}), ("tls-policy sub.flip.test", {b"OK encrypt", b"OK may"}),
         ("tls-policy listed.test", {b"OK encrypt"}), ("tls-policy other%d.test", {b"OK may"}),
         ("transport auditor+x@lawfirm.test", {b"OK smtp-tls-encrypt:"}), ("transport bob@enc.test", {b"NOTFOUND "}),
         ("tls-policy [10.1.2.%d]:25", {b"OK may"}), ("inbound from=a@partner.test to=b@ourcorp.test client=198.51.100.1", None)]
class C:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
    def reply(self):
        while True:
            c = self.buf.find(b":")
            if c > 0:
                n = int(self.buf[:c])
                if len(self.buf) >= c + n + 2:
                    r = self.buf[c + 1:c + 1 + n]; self.buf = self.buf[c + n + 2:]; return r
            d = self.s.recv(65536)
            if not d: return None
            self.buf += d
conns = [C() for _ in range(4)]
n = wrong = malformed = reconnects = 0
bad = []
end = time.monotonic() + secs
while time.monotonic() < end:
    for k, c in enumerate(conns):
        req, ok = CASES[n % len(CASES)]
        if "%d" in req: req = req % (n % 250)
        c.s.sendall(ns(req))
        r = c.reply()
        if r is None or (ok is not None and r not in ok) or (ok is None and not (r.startswith(b"OK") or r.startswith(b"NOTFOUND"))):
            wrong += 1
            if len(bad) < 5: bad.append("%s -> %r" % (req, r))
        n += 1
        if n % 200 == 0:   # a malformed frame on a throwaway connection
            m = C(); m.s.sendall(b"05:junk,"); r = m.reply(); m.s.close(); malformed += 1
            if not (r or b"").startswith(b"PERM"):
                wrong += 1; bad.append("malformed frame -> %r" % r)
        if n % 500 == 0:   # reconnect, like a Postfix process that exits
            c.s.close(); conns[k] = C(); reconnects += 1
print("socketmap client %d: %d requests, %d wrong, %d malformed, %d reconnects %s" % (cid, n, wrong, malformed, reconnects, bad))
sys.exit(1 if wrong else 0)
EOF
for i in 1 2 3 4 5 6; do
    python3 "$work/sm_client.py" "$p_sm" "$secs" "$i" > "$work/sm$i.out" 2>&1 &
    bg_pids+=($!); sm_pids+=($!)
done

# --- milter clients
for i in 1 2 3 4; do
    (cd "$work" && timeout $((secs + 120)) miltertest -D sock="inet:$p_milter@127.0.0.1" -D dir="$work" \
        -D conf="$work/tlspolicy.conf" -D log="$work/daemon.log" -D pid="$daemon_pid" -D lib="$lib" \
        -D secs="$secs" -D id="$i" -s "$here/tsan-milter.lua") > "$work/mt$i.out" 2>&1 &
    bg_pids+=($!); mt_pids+=($!)
done

# --- reloads
reloads_asked=0; broken=0
end=$(( $(date +%s) + secs ))
step=0
while [ "$(date +%s)" -lt "$end" ] && kill -0 "$daemon_pid" 2>/dev/null; do
    step=$((step + 1))
    case $((step % 6)) in
        0) write_conf encrypt false ;;
        1) write_list $((step % 40 + 10)) ;;
        2) write_conf may true ;;
        3) kill -HUP "$daemon_pid" ;;
        4) write_conf encrypt true broken; broken=$((broken + 1)) ;;
        5) write_conf may false ;;
    esac
    reloads_asked=$((reloads_asked + 1))
    # The daemon reads a change once the files have been quiet for 0.5 s:
    # each change stands long enough to be read on its own (the broken
    # config too, which must be refused while serving).
    sleep 0.7
done
echo "# reload driver: $reloads_asked changes or SIGHUPs ($broken broken configs)"

# --- collect
sm_bad=0
for p in "${sm_pids[@]}"; do wait "$p" || sm_bad=$((sm_bad + 1)); done
mt_bad=0
for p in "${mt_pids[@]}"; do wait "$p" || mt_bad=$((mt_bad + 1)); done
bg_pids=()
cat "$work"/sm*.out | sed 's/^/# /'
grep -h 'milter client' "$work"/mt*.out | sed 's/^/# /'
if [ "$sm_bad" -eq 0 ]; then ok "socketmap clients: every answer right"; else
    fail "socketmap clients: $sm_bad of 6 reported wrong answers or died"; cat "$work"/sm*.out | tail -20; fi
if [ "$mt_bad" -eq 0 ]; then ok "milter clients: every reply and header right"; else
    fail "milter clients: $mt_bad of 4 failed"; for f in "$work"/mt*.out; do grep -E 'FAILED|milter client' "$f" | head -3; tail -3 "$f"; done; fi

alive=1; kill -0 "$daemon_pid" 2>/dev/null || alive=0
echo "# threads at the end: $(awk '/^Threads:/ {print $2}' "/proc/$daemon_pid/status" 2>/dev/null)"
kill -TERM "$daemon_pid" 2>/dev/null
for _ in $(seq 600); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$daemon_pid" 2>/dev/null; then
    fail "the daemon did not exit within 30 s of SIGTERM (killed)"; kill -KILL "$daemon_pid"
fi
wait "$daemon_pid"; status=$?
daemon_pid=

reloaded=$(grep -c 'tlspolicyd: reloaded ' "$work/daemon.log")
reload_failed=$(grep -c 'reload failed with' "$work/daemon.log")
echo "# daemon: $reloaded reloads done, $reload_failed failed as meant (broken config), exit status $status"
if [ "$alive" -eq 1 ]; then ok "the daemon was alive at the end of the load"; else fail "the daemon died during the load (status $status)"; fi
if [ "$reloaded" -ge 10 ] && [ "$reload_failed" -ge 1 ]; then ok "reloads happened while serving ($reloaded, $reload_failed failed)"; else
    fail "too few reloads ($reloaded ok, $reload_failed failed)"; fi
if grep -qE 'WARNING: ThreadSanitizer|ERROR: ThreadSanitizer|ThreadSanitizer: reported|FATAL: ThreadSanitizer' "$work/daemon.log"; then
    fail "ThreadSanitizer reported:"
    sed -n '/WARNING: ThreadSanitizer\|ThreadSanitizer:/,/^SUMMARY: ThreadSanitizer/p' "$work/daemon.log" | head -150 | sed 's/^/    /'
else
    ok "no ThreadSanitizer report (no data race, no lock-order inversion, no signal-unsafe call)"
fi
if [ "$status" -eq 0 ] && grep -q 'tlspolicyd: stopped' "$work/daemon.log"; then ok "SIGTERM: exit 0, \"stopped\" logged"; else
    fail "SIGTERM: exit status $status (66 = TSan report)"; tail -20 "$work/daemon.log" | sed 's/^/    /'; fi
if grep -q 'terminate called\|tlspolicyd: error: milter' "$work/daemon.log"; then
    fail "the daemon logged a crash or a milter error"; grep -m5 'terminate called\|error: milter' "$work/daemon.log"; fi
if [ -n "${TSAN_EXTRA_SUPP:-}" ]; then
    fail "exploration run: extra suppressions from $TSAN_EXTRA_SUPP were in force"
    # TSan lists matched suppressions at exit(), which the daemon skips
    # (_exit) when libmilter's thread is slow to stop: there may be none.
    grep -A20 'ThreadSanitizer: Matched' "$work/daemon.log" | sed 's/^/#   /' | head -20
fi
echo "# $(( ($(date +%s%3N) - t0) / 1000 )) s"
[ "$failed" -eq 0 ] && echo "# all passed" || echo "# $failed failed"
[ "$failed" -eq 0 ]
