#!/usr/bin/env bash
# tests/check/t-postconf.sh -- `tlspolicy check` compares `default` with
# Postfix's smtp_tls_security_level (read with the real postconf from a
# test main.cf) and the shipped configurations pass check.
# Usage: t-postconf.sh TLSPOLICY. Needs postconf (Debian's postfix) and, for
# the "postconf absent" case, root (unshare -m). Exit 0 = all passed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TP=$(realpath -e "$1")
FAILS=0
ok() { echo "ok - $*"; }
fail() { echo "FAIL - $*"; FAILS=$((FAILS + 1)); }
command -v postconf >/dev/null || PATH=$PATH:/usr/sbin
command -v postconf >/dev/null || { echo "FAIL - postconf not found (apt-get install postfix)"; exit 1; }

W=$(mktemp -d /tmp/tlspolicy-check-postconf.XXXXXX)
trap 'rm -rf "$W"' EXIT
for level in encrypt may dane-only empty; do
    mkdir -p "$W/pf-$level"
    printf 'compatibility_level = 3.6\n' >"$W/pf-$level/main.cf"
    [ "$level" = empty ] || printf 'smtp_tls_security_level = %s\n' "$level" >>"$W/pf-$level/main.cf"
done
printf '# default may (line 2)\ndefault = "may";\noutbound = ( { level = "encrypt"; to = [ "x.test" ]; } );\n' >"$W/may.conf"
printf 'default = "verify";\noutbound = ( { level = "encrypt"; to = [ "x.test" ]; } );\n' >"$W/verify.conf"
printf 'outbound = ( { level = "encrypt"; to = [ "x.test" ]; } );\n' >"$W/nodefault.conf"

WARN_MAY_ENC="may.conf:2: warning: default = \"may\" is weaker than Postfix's smtp_tls_security_level = encrypt ($W/pf-encrypt/main.cf)"
# case NAME WANT-EXIT GREP-STDERR|"" NOT-GREP-STDERR|"" GREP-STDOUT|"" -- CMD...
case_() {
    local name=$1 want=$2 want_err=$3 not_err=$4 want_out=$5; shift 6
    local rc=0
    "$@" >"$W/out" 2>"$W/err" || rc=$?
    local why=()
    [ "$rc" -eq "$want" ] || why+=("exit $rc, want $want")
    [ -z "$want_err" ] || grep -qF -- "$want_err" "$W/err" || why+=("stderr lacks '$want_err'")
    [ -z "$not_err" ] || ! grep -qF -- "$not_err" "$W/err" || why+=("stderr has '$not_err'")
    [ -z "$want_out" ] || grep -qF -- "$want_out" "$W/out" || why+=("stdout lacks '$want_out'")
    if [ ${#why[@]} -eq 0 ]; then ok "$name"; else
        fail "$name: ${why[*]}"; sed 's/^/#   out: /' "$W/out"; sed 's/^/#   err: /' "$W/err"
    fi
}
cd "$W"
case_ "main.cf encrypt, default may: warning names both levels and may.conf:2" 0 "$WARN_MAY_ENC" "" "configuration OK" -- \
    "$TP" check -c may.conf --postconf-dir "$W/pf-encrypt"
case_ "the warning says how to fix it" 0 "remove the default (Postfix's level then applies) or raise it" "" "" -- \
    "$TP" check -c may.conf --postconf-dir "$W/pf-encrypt"
case_ "MAIL_CONFIG is honoured like --postconf-dir" 0 "$WARN_MAY_ENC" "" "" -- \
    env MAIL_CONFIG="$W/pf-encrypt" "$TP" check -c may.conf
case_ "main.cf may, default may: no warning" 0 "" "warning" "note: default may is not weaker" -- \
    "$TP" check -v -c may.conf --postconf-dir "$W/pf-may"
case_ "main.cf without the level (none), default may: no warning" 0 "" "warning" "(empty: none)" -- \
    "$TP" check -v -c may.conf --postconf-dir "$W/pf-empty"
case_ "main.cf dane-only, default verify: warning (verify ranks below dane-only)" 0 \
    "verify.conf:1: warning: default = \"verify\" is weaker than Postfix's smtp_tls_security_level = dane-only" "" "" -- \
    "$TP" check -c verify.conf --postconf-dir "$W/pf-dane-only"
case_ "main.cf encrypt, default verify: no warning" 0 "" "warning" "" -- \
    "$TP" check -c verify.conf --postconf-dir "$W/pf-encrypt"
case_ "no default: nothing to compare, verbose says Postfix's level applies" 0 "" "warning" \
    "note: no default: Postfix's own smtp_tls_security_level applies" -- \
    "$TP" check -v -c nodefault.conf --postconf-dir "$W/pf-encrypt"
case_ "postconf fails (no main.cf in DIR): no warning, verbose says why" 0 "" "warning" \
    "note: default not compared with Postfix's smtp_tls_security_level: " -- \
    "$TP" check -v -c may.conf --postconf-dir "$W/none"
# postconf absent: hide /usr/sbin (and /sbin, a link to it) in a private mount namespace.
[ "$(id -u)" -eq 0 ] || fail "the postconf-absent case needs root (unshare -m)"
case_ "postconf absent: no warning, verbose says postconf was not found" 0 "" "warning" \
    "note: default not compared with Postfix's smtp_tls_security_level: postconf not found" -- \
    unshare -m sh -c 'mount -t tmpfs tmpfs /usr/sbin && exec env PATH=/usr/bin:/bin "$@"' sh \
    "$TP" check -v -c may.conf --postconf-dir "$W/pf-encrypt"

# The packaged configuration: no default (Postfix's level applies), passes
# check, and does not warn even against a main.cf at encrypt.
mkdir -p "$W/pkg" && cp "$ROOT"/debian/conf/* "$W/pkg/"
if grep -Eq '^[[:space:]]*default[[:space:]]*=' "$W/pkg/tlspolicy.conf"; then
    fail "debian/conf/tlspolicy.conf sets a default: $(grep -E '^[[:space:]]*default' "$W/pkg/tlspolicy.conf")"
else
    ok "debian/conf/tlspolicy.conf sets no default"
fi
case_ "the packaged config passes check, no warning against main.cf encrypt" 0 "" "warning" "configuration OK" -- \
    "$TP" check -c "$W/pkg/tlspolicy.conf" --postconf-dir "$W/pf-encrypt"
# The quick start's example still passes (it warns against an encrypt main.cf: it sets may).
case_ "conf/tlspolicy.conf (quick start) passes check" 0 "" "" "configuration OK" -- \
    "$TP" check -c "$ROOT/conf/tlspolicy.conf" --postconf-dir "$W/pf-may"
echo "$FAILS failed"
[ "$FAILS" -eq 0 ]
