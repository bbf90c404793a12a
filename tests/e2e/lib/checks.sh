# shellcheck shell=bash
# tests/e2e/lib/checks.sh -- TAP-like check helpers shared by the e2e tests.
#
# Source after setting TIME_LIMIT (seconds; a broken run gives up after it,
# since later checks build on earlier ones). Provides START, FAILS, and:
#   ok DESC / fail DESC      print "ok - DESC" / "FAIL - DESC" (counts it)
#   die DESC                 print "FAIL - DESC" and exit 1 now
#   check DESC CMD...        run CMD; ok or fail DESC
#   expect_eq DESC GOT WANT  ok if GOT = WANT, else fail showing both

START=$(date +%s)
FAILS=0
: "${TIME_LIMIT:=150}"
ok() { echo "ok - $*"; }
fail() {
    echo "FAIL - $*"
    FAILS=$((FAILS + 1))
    if [ $(( $(date +%s) - START )) -gt "$TIME_LIMIT" ]; then
        die "giving up: over $TIME_LIMIT s"
    fi
}
die() {
    echo "FAIL - $*"
    SUMMARY_DONE=1
    exit 1
}
check() {
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else fail "$desc"; fi
}
expect_eq() {
    if [ "$2" = "$3" ]; then ok "$1: '$2'"; else fail "$1: got '$2', want '$3'"; fi
}

# e2e_finish STEP NAME [DETAIL]: cleanup (what the EXIT trap would do), then
# check that no process of this run is left and its directory is gone, and
# print the summary line; exits 1 if any check failed. STEP prefixes the
# cleanup checks' descriptions; DETAIL goes into the summary (e.g. a seed).
e2e_finish() {
    local step=$1 name=$2 detail=${3:+, $3}
    local dir=$E2E_DIR master=$E2E_PF_MASTER_PID
    local pids="$master ${E2E_SINK_PIDS[*]} ${E2E_DAEMON_PIDS[*]-}"
    set +e
    [ "$FAILS" -eq 0 ]          # cleanup dumps the logs when this is false
    e2e_cleanup
    trap - EXIT
    set -e
    local left= p
    for p in $pids; do
        if ps -o stat= -p "$p" 2>/dev/null | grep -qv '^Z'; then left+=" $p"; fi
    done
    left+=" $(_e2e_pgrp_alive "$master" | tr '\n' ' ') $(pgrep -f "$dir/" | tr '\n' ' ' || true)"
    check "$step cleanup: no process left${left// /}" test -z "${left// /}"
    if [ "${E2E_KEEP:-0}" != 1 ]; then
        check "$step cleanup: $dir removed" test ! -e "$dir"
    fi
    local secs=$(( $(date +%s) - START ))
    SUMMARY_DONE=1
    if [ "$FAILS" -gt 0 ]; then
        echo "FAIL $name: $FAILS check(s) failed (${secs}s$detail)"
        exit 1
    fi
    echo "PASS $name (${secs}s$detail)"
}

# e2e_start_script NAME: e2e_init, an EXIT trap that reports an aborted run
# and cleans up, and private copies of $TLSPOLICYD (and $TLSPOLICY, when
# set) that a rebuild of the tree cannot replace under a running test.
e2e_start_script() {
    E2E_SCRIPT=$1
    e2e_init
    trap _e2e_script_exit EXIT
    mkdir -p "$E2E_DIR/bin"
    cp "$TLSPOLICYD" "$E2E_DIR/bin/tlspolicyd"
    TLSPOLICYD=$E2E_DIR/bin/tlspolicyd
    if [ -n "${TLSPOLICY-}" ]; then
        cp "$TLSPOLICY" "$E2E_DIR/bin/tlspolicy"
        TLSPOLICY=$E2E_DIR/bin/tlspolicy
    fi
}
_e2e_script_exit() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ] && [ -z "${SUMMARY_DONE-}" ]; then
        echo "FAIL - $E2E_SCRIPT aborted (exit $rc) after $(( $(date +%s) - START ))s; $FAILS check(s) had failed"
    fi
    (exit "$rc")
    e2e_cleanup
}
