#!/usr/bin/env bash
# tests/milter/run.sh -- the milter in the real tlspolicyd, driven by miltertest.
#
# Usage: run.sh TLSPOLICYD [MILTERTEST]
#   env MILTER_TESTS="t-in-* t-out-auth"  run only the scripts matching these globs
#   env MILTER_KEEP=1                      keep the work directory
#
# For each t-NAME.lua here:
#   1. the configuration: t-NAME.conf, or the file the script names in a line
#      `-- conf: FILE.conf`; its @SOCKETMAP@ and @MILTER@ placeholders become
#      free loopback ports. Files named in `-- extra-conf: FILE.conf` lines are
#      filled in the same way next to it (the script finds them in `dir`).
#   2. tlspolicyd -f -c DIR/tlspolicy.conf, stderr (its log) to DIR/daemon.log;
#      wait for its "started:" line.
#   3. miltertest -s t-NAME.lua with -D sock=inet:PORT@127.0.0.1 dir= conf= log=
#      pid= lib= (see lib.lua); the script exits non-zero on any failed check.
#   4. SIGTERM, wait for the daemon to exit (it must exit 0 and log "stopped").
#   5. the daemon log must hold no "error:" line (unless t-NAME.log-expect
#      has a line "@allow-errors"), and, when t-NAME.log-expect exists, each
#      of its lines (a fixed string; a leading "!" = must NOT occur; "#"
#      lines are comments).
# Prints "ok - NAME" or "FAIL - NAME" with the miltertest output and the
# daemon log; exits 1 if any script failed. Needs only loopback TCP.
set -u

daemon=${1:?usage: run.sh TLSPOLICYD [MILTERTEST]}
miltertest=${2:-miltertest}
here=$(cd "$(dirname "$0")" && pwd)
case $daemon in /*) ;; *) daemon=$PWD/$daemon ;; esac
[ -x "$daemon" ] || { echo "run.sh: $daemon: not executable" >&2; exit 2; }
command -v "$miltertest" >/dev/null || { echo "run.sh: $miltertest not found (apt-get install miltertest)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/tlspolicy-milter.XXXXXX")
daemon_pid=
# shellcheck disable=SC2317  # (called by the EXIT trap)
cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -KILL "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null
    fi
    if [ -n "${MILTER_KEEP:-}" ]; then echo "# work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }

# Two free loopback TCP ports: random ones below Linux's ephemeral range
# (32768+) that nothing listens on or uses (/proc/net/tcp); start_daemon
# retries with new ones should one be taken before the daemon binds it.
free_ports() {
    local out=() p hex
    while [ ${#out[@]} -lt 2 ]; do
        p=$((20000 + RANDOM % 12000))
        printf -v hex ':%04X ' "$p"
        grep -qF "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null && continue
        [ ${#out[@]} -eq 1 ] && [ "${out[0]}" = "$p" ] && continue
        out+=("$p")
    done
    echo "${out[@]}"
}

# fill SRC DST SOCKETMAP_PORT MILTER_PORT
fill() {
    sed -e "s|@SOCKETMAP@|inet:127.0.0.1:$3|g" -e "s|@MILTER@|inet:127.0.0.1:$4|g" "$1" > "$2"
}

# exited PID: true once the process is gone or a zombie (then `wait` reaps it).
exited() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
    [ -z "$st" ] || [ "$st" = Z ]
}

# stop_daemon: SIGTERM, at most 5 s, then SIGKILL. Sets daemon_status.
stop_daemon() {
    daemon_status=
    kill -TERM "$daemon_pid" 2>/dev/null
    for _ in $(seq 100); do exited "$daemon_pid" && break; sleep 0.05; done
    if ! exited "$daemon_pid"; then
        problems+=("the daemon did not exit within 5 s of SIGTERM (killed)")
        kill -KILL "$daemon_pid" 2>/dev/null
    fi
    wait "$daemon_pid"; daemon_status=$?
    daemon_pid=
}

# start_daemon CONF LOG: starts it, waits for "started:". 0 = serving.
start_daemon() {
    : > "$2"
    "$daemon" -f -c "$1" 2>> "$2" &
    daemon_pid=$!
    for _ in $(seq 200); do
        grep -qs 'tlspolicyd: started:' "$2" && return 0
        if exited "$daemon_pid"; then wait "$daemon_pid"; daemon_pid=; return 1; fi
        sleep 0.025
    done
    return 1
}

selected() {
    [ -z "${MILTER_TESTS:-}" ] && return 0
    local g found=1
    set -f                      # the globs are for test names, not files
    for g in $MILTER_TESTS; do
        # shellcheck disable=SC2254
        case $1 in $g) found=0 ;; esac
    done
    set +f
    return $found
}

indent() { sed 's/^/    /'; }

total=0; failed=0; failed_names=()
t_all=$(now_ms)
for script in "$here"/t-*.lua; do
    name=$(basename "$script" .lua)
    selected "$name" || continue
    total=$((total + 1))
    problems=()
    t0=$(now_ms)
    dir=$work/$name
    mkdir -p "$dir"
    conf_src=$(sed -n 's/^-- conf: *//p' "$script" | head -n1)
    conf_src=$here/${conf_src:-$name.conf}
    extras=$(sed -n 's/^-- extra-conf: *//p' "$script")

    started=
    for _ in 1 2 3; do       # a port taken between free_ports and bind: retry
        read -r p_sm p_milter < <(free_ports)
        if [ ! -f "$conf_src" ]; then problems+=("no configuration $conf_src"); break; fi
        fill "$conf_src" "$dir/tlspolicy.conf" "$p_sm" "$p_milter"
        for x in $extras; do fill "$here/$x" "$dir/$x" "$p_sm" "$p_milter"; done
        if start_daemon "$dir/tlspolicy.conf" "$dir/daemon.log"; then started=1; break; fi
        grep -qE 'in use|cannot (open|bind|listen)|Address already' "$dir/daemon.log" || break
    done

    mt_status=
    if [ -n "$started" ]; then
        (cd "$dir" && timeout 120 "$miltertest" \
            -D sock="inet:$p_milter@127.0.0.1" -D dir="$dir" -D conf="$dir/tlspolicy.conf" \
            -D log="$dir/daemon.log" -D pid="$daemon_pid" -D lib="$here/lib.lua" \
            -s "$script") > "$dir/miltertest.out" 2>&1
        mt_status=$?
        if [ "$mt_status" -ne 0 ]; then
            if grep -q '^FAILED ' "$dir/miltertest.out"; then
                problems+=("miltertest exited $mt_status: $(grep -m1 '^FAILED ' "$dir/miltertest.out")")
            elif [ "$mt_status" -eq 124 ]; then
                problems+=("miltertest timed out (120 s)")
            else
                problems+=("miltertest exited $mt_status without a FAILED line: a Lua error in the script (Debian's miltertest does not print it; it stopped after the last \"--\" step shown)")
            fi
        fi
        stop_daemon
        [ "$daemon_status" -eq 0 ] || problems+=("tlspolicyd exited with status $daemon_status")
        grep -q 'tlspolicyd: stopped' "$dir/daemon.log" || problems+=("tlspolicyd did not log \"stopped\"")
        if grep -q 'tlspolicyd: error: ' "$dir/daemon.log" &&
           ! grep -qx '@allow-errors' "$here/$name.log-expect" 2>/dev/null; then
            problems+=("the daemon logged an error: $(grep -m1 'tlspolicyd: error: ' "$dir/daemon.log")")
        fi
        if [ -f "$here/$name.log-expect" ]; then
            while IFS= read -r pat || [ -n "$pat" ]; do
                case $pat in ''|'#'*|@allow-errors) continue ;; esac
                if [ "${pat#!}" != "$pat" ]; then
                    grep -qF -- "${pat#!}" "$dir/daemon.log" && problems+=("daemon log has \"${pat#!}\" (must not)")
                else
                    grep -qF -- "$pat" "$dir/daemon.log" || problems+=("daemon log lacks \"$pat\"")
                fi
            done < "$here/$name.log-expect"
        fi
    else
        [ ${#problems[@]} -gt 0 ] || problems+=("tlspolicyd did not start")
    fi

    ms=$(( $(now_ms) - t0 ))
    if [ ${#problems[@]} -eq 0 ]; then
        printf 'ok - %s (%d.%02d s)\n' "$name" $((ms / 1000)) $((ms % 1000 / 10))
    else
        failed=$((failed + 1)); failed_names+=("$name")
        printf 'FAIL - %s (%d.%02d s)\n' "$name" $((ms / 1000)) $((ms % 1000 / 10))
        for p in "${problems[@]}"; do echo "  * $p"; done
        echo "  miltertest output:"; indent < "$dir/miltertest.out" 2>/dev/null
        echo "  daemon log:"; indent < "$dir/daemon.log" 2>/dev/null
    fi
done

ms=$(( $(now_ms) - t_all ))
if [ "$total" -eq 0 ]; then echo "run.sh: no test selected" >&2; exit 2; fi
printf '# %d scripts, %d failed, %d.%02d s\n' "$total" "$failed" $((ms / 1000)) $((ms % 1000 / 10))
[ "$failed" -eq 0 ] || { echo "# failed: ${failed_names[*]}"; exit 1; }
exit 0
