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
