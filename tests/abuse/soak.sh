#!/usr/bin/env bash
# tests/abuse/soak.sh -- 10 million socketmap requests against a 100k-rule
# policy, with reloads, and the daemon's memory watched all along.
#
# Usage: soak.sh [TLSPOLICYD [SOCKETMAP_LOAD [TOTAL]]]
#   defaults: build/tlspolicyd, build/socketmap_load, 10000000 (run from the repo root)
#   env SOAK_CONNS=8        socketmap_load connections (one request in flight each)
#   env SOAK_CHUNK=15       seconds per socketmap_load run
#   env SOAK_RULES=100000   policy size (bench/gen_lookup_data.py)
#   env SOAK_HUP_EVERY=2    seconds between SIGHUPs in the reload phase
#   env SOAK_KEEP=1         keep the work directory
# Not part of the test suite (minutes); a script for the reliability report.
#
# Phases (by requests served):
#   warm-up 1   the first 10% of TOTAL, no reloads: the daemon's serving
#               working set (buffers, the log buffer, hash tables) settles
#   warm-up 2   40 reloads back to back (SIGHUP, wait for "reloaded"), no
#               load: each reload builds the snapshot on a new thread, so
#               glibc's per-thread malloc arenas fill up with freed
#               snapshots; RSS rises to a plateau (measured: reached by ~40)
#   reloads     serve with a SIGHUP every SOAK_HUP_EVERY s until 50% of TOTAL
#   steady      serve, no reloads, until TOTAL
# socketmap_load runs for a duration, so it runs in chunks of SOAK_CHUNK s
# until the total reaches TOTAL. VmRSS is sampled every 2 s (rss.tsv in the
# work directory) and at each phase boundary.
#
# Fails (exit 1) if any request failed, the daemon died or did not stop
# cleanly on SIGTERM, a reload failed, or RSS after the warm-ups grew by more
# than 10%: max(RSS during "reloads" and "steady") > 1.10 x RSS at the end of
# warm-up 2. The growth from start to the end of warm-up 2 is reported.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
daemon=${1:-$root/build/tlspolicyd}
load=${2:-$root/build/socketmap_load}
total_goal=${3:-10000000}
conns=${SOAK_CONNS:-8}
chunk=${SOAK_CHUNK:-15}
rules=${SOAK_RULES:-100000}
hup_every=${SOAK_HUP_EVERY:-2}
for x in "$daemon" "$load"; do [ -x "$x" ] || { echo "soak.sh: $x: not executable" >&2; exit 2; }; done

work=$(mktemp -d "${TMPDIR:-/tmp}/tlspolicy-soak.XXXXXX")
daemon_pid='' sampler_pid='' hup_pid=''
# shellcheck disable=SC2317
cleanup() {
    for p in $hup_pid $sampler_pid; do kill "$p" 2>/dev/null; done
    [ -n "$daemon_pid" ] && kill -KILL "$daemon_pid" 2>/dev/null
    wait 2>/dev/null
    if [ -n "${SOAK_KEEP:-}" ]; then echo "# work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t_start=$(date +%s)
now() { echo $(( $(date +%s) - t_start )); }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$daemon_pid/status" 2>/dev/null || echo -1; }
fds() { find "/proc/$daemon_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
reloads() { grep -c 'tlspolicyd: reloaded ' "$work/daemon.log"; }
failures=0
fail() { echo "FAIL - $*"; failures=$((failures + 1)); }

echo "# generating a $rules-rule policy ..."
/usr/bin/python3 "$root/bench/gen_lookup_data.py" "$work" 100000 "$rules" > /dev/null || exit 2
keys=$work/dom-$rules.keys

port=
for _ in 1 2 3; do
    port=$((20000 + RANDOM % 12000))
    printf -v hex ':%04X ' "$port"
    grep -qF "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null && continue
    cat > "$work/tlspolicy.conf" <<EOF
default = "may";
outbound = ( { name = "list"; level = "encrypt"; to_lists = [ "dom-$rules.list" ]; } );
daemon = { socketmap = [ "inet:127.0.0.1:$port" ]; max_connections = 1000; };
EOF
    # Every rule hit is logged (one line per lookup: ~5M lines here); keep
    # everything else. The filter is a separate process on its own CPU time.
    "$daemon" -f -c "$work/tlspolicy.conf" 2> >(grep --line-buffered -v ': lookup ' > "$work/daemon.log") &
    daemon_pid=$!
    for _ in $(seq 200); do grep -qs 'tlspolicyd: started:' "$work/daemon.log" && break; sleep 0.05; done
    grep -qs 'tlspolicyd: started:' "$work/daemon.log" && break
    kill "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null; daemon_pid=
done
[ -n "$daemon_pid" ] || { echo "soak.sh: the daemon did not start"; cat "$work/daemon.log"; exit 1; }
grep 'started:' "$work/daemon.log" | sed 's/^/# /'

( while kill -0 "$daemon_pid" 2>/dev/null; do
      printf '%s\t%s\t%s\t%s\n' "$(now)" "$(rss)" "$(fds)" "$(reloads)"; sleep 2
  done ) > "$work/rss.tsv" &
sampler_pid=$!
printf 'elapsed_s\trss_kb\tfds\treloads\n' > "$work/rss.header"

rss_start=$(rss)
echo "# RSS at start (policy loaded, no request yet): $rss_start kB; fds $(fds); socketmap_load: $conns connections, $chunk s chunks"

served=0 failed=0 chunks=0
run_chunk() {   # one socketmap_load run; adds to served/failed
    local out req f rate p99
    out=$("$load" "$port" tls-policy "$keys" "$conns" "$chunk" 2>&1 | tail -1)
    req=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<< "$out")
    f=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<< "$out")
    rate=$(sed -n 's/.* req\/s=\([0-9]*\).*/\1/p' <<< "$out")
    p99=$(sed -n 's/.* p99=\([0-9]*us\).*/\1/p' <<< "$out")
    if [ -z "$req" ] || [ -z "$f" ]; then
        fail "socketmap_load said: $out"; req=0; f=1
    fi
    served=$((served + req)); failed=$((failed + f)); chunks=$((chunks + 1))
    printf '# %4ss chunk %2d %-8s %9d req %7s req/s p99 %-7s failed %d | total %9d | RSS %6s kB | fds %s | reloads %s\n' \
        "$(now)" "$chunks" "$phase" "$req" "$rate" "$p99" "$f" "$served" "$(rss)" "$(fds)" "$(reloads)"
    kill -0 "$daemon_pid" 2>/dev/null || { fail "the daemon died"; exit 1; }
}

phase=warm-up
while [ "$served" -lt $((total_goal / 10)) ]; do run_chunk; done
rss_warm1=$(rss)
echo "# end of warm-up 1: $served requests, RSS $rss_warm1 kB"

r0=$(reloads)
for i in $(seq 40); do
    kill -HUP "$daemon_pid"
    for _ in $(seq 400); do [ "$(reloads)" -ge $((r0 + i)) ] && break; sleep 0.05; done
done
rss_warm2=$(rss)
echo "# end of warm-up 2: $(( $(reloads) - r0 )) reloads back to back, RSS $rss_warm2 kB"
rss_max_after=0
track_max() { local r; r=$(rss); [ "$r" -gt "$rss_max_after" ] && rss_max_after=$r; }

phase=reloads
( while :; do sleep "$hup_every"; kill -HUP "$daemon_pid" 2>/dev/null || break; done ) &
hup_pid=$!
r1=$(reloads)
while [ "$served" -lt $((total_goal / 2)) ]; do run_chunk; track_max; done
kill "$hup_pid" 2>/dev/null; wait "$hup_pid" 2>/dev/null; hup_pid=
sleep 1
reloads_during=$(( $(reloads) - r1 ))
rss_after_reloads=$(rss)
echo "# end of the reload phase: $reloads_during reloads while serving, RSS $rss_after_reloads kB"

phase=steady
while [ "$served" -lt "$total_goal" ]; do run_chunk; track_max; done
rss_end=$(rss)
track_max

fds_end=$(fds)
threads_end=$(awk '/^Threads:/ {print $2}' "/proc/$daemon_pid/status")
kill -TERM "$daemon_pid"
for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.05; done
wait "$daemon_pid"; status=$?
daemon_pid=
kill "$sampler_pid" 2>/dev/null; wait "$sampler_pid" 2>/dev/null; sampler_pid=
cat "$work/rss.header" "$work/rss.tsv" > "$work/rss.out"
rss_max=$(awk 'NR > 1 && $2 > m {m = $2} END {print m}' "$work/rss.out")

echo "#"
echo "# requests served: $served in $chunks socketmap_load runs ($conns connections each), failed: $failed"
echo "# reloads: $(grep -c 'tlspolicyd: reloaded ' "$work/daemon.log") done ($((40)) back to back, $reloads_during while serving), $(grep -c 'reload failed' "$work/daemon.log") failed"
echo "# RSS kB: start $rss_start, after warm-up 1 $rss_warm1, after warm-up 2 $rss_warm2, end of reloads $rss_after_reloads, end $rss_end; max $rss_max (sampled every 2 s), max after warm-up $rss_max_after"
echo "# at the end: $fds_end fds, $threads_end threads; SIGTERM exit status $status; $(( $(date +%s) - t_start )) s in all"
limit=$(( rss_warm2 * 110 / 100 ))
if [ "$failed" -eq 0 ]; then echo "ok - no failed request"; else fail "$failed requests failed"; fi
if [ "$served" -ge "$total_goal" ]; then echo "ok - $served >= $total_goal requests"; else fail "only $served requests"; fi
if [ "$rss_max_after" -le "$limit" ]; then
    echo "ok - RSS flat after warm-up: max $rss_max_after kB <= 1.10 x $rss_warm2 kB = $limit kB"
else
    fail "RSS grew after warm-up: max $rss_max_after kB > 1.10 x $rss_warm2 kB = $limit kB"
fi
if [ "$(grep -c 'reload failed' "$work/daemon.log")" -eq 0 ]; then echo "ok - every reload succeeded"; else fail "a reload failed"; fi
if [ "$status" -eq 0 ] && grep -q 'tlspolicyd: stopped' "$work/daemon.log"; then echo "ok - SIGTERM: exit 0"; else
    fail "SIGTERM: exit status $status"; fi
echo "# RSS samples: $work/rss.out$( [ -n "${SOAK_KEEP:-}" ] || echo ' (set SOAK_KEEP=1 to keep)')"
[ "$failures" -eq 0 ] && echo "# all passed" || echo "# $failures failed"
[ "$failures" -eq 0 ]
