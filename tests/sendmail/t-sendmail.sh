#!/usr/bin/env bash
# tests/sendmail/t-sendmail.sh -- tlspolicyd's Sendmail access map (socket
# map "access") and its milter under a real Sendmail 8.17 from Debian 12.
#
# Usage: t-sendmail.sh [TLSPOLICYD]   (default build/tlspolicyd of this repo)
# Needs root, util-linux (unshare), openssl, /usr/bin/python3 with aiosmtpd,
# and Debian's archive for `apt-get download`. Loopback traffic only.
# Exit 0 = all passed, 1 = a check failed (a download failure of the
# Sendmail packages fails too: CI has Debian's archive, nothing is skipped).
#
# Sendmail is never installed (sendmail-bin conflicts with postfix):
#   apt-get download sendmail-bin sendmail-cf libwrap0 [m4]
# into tests/sendmail/.cache (or $SENDMAIL_DEB_CACHE; kept between runs, not
# committed), `dpkg -x` into a temp dir, sendmail.cf built with the
# extracted cf/m4 files from a generated sendmail.mc (see README.md here):
#   FEATURE(`access_db', `socket -T<TMPF> inet:PORT@127.0.0.1')
#   INPUT_MAIL_FILTER(`tlspolicy', `S=inet:PORT@127.0.0.1, F=T, T=C:10s;S:10s;R:10s;E:30s')
#   mailertable: enc-plain.test esmtp:[127.0.0.3] ... (every mailer: TCP $h SINK_PORT)
# Nothing touches /etc/mail: every path is in the temp dir. sendmail runs
# as root in its own mount + UTS namespace (unshare -m -u) with hostname
# mta.sm.test, a private /etc/hosts, /etc/resolv.conf (nameserver 127.0.0.1:
# no DNS query ever leaves loopback) and a private /dev whose /dev/log is
# our syslog_sink.py (sendmail logs only to syslog).
#
# Sinks (tests/e2e/lib/sink.py, one port): 127.0.0.2 "tls" and 127.0.0.5
# "tls2" offer STARTTLS, 127.0.0.3 "plain" does not; 127.0.0.6 "slow"
# (slow_sink.py here) answers the first RCPT of a session after IDLE+2 s.
# Policy (tlspolicy.conf written below):
#   enc-plain.test -> plain  encrypt       enc-tls.test  -> tls   encrypt
#   may-plain.test -> plain  may           rcpt.test     -> plain may,
#                                            vip@rcpt.test encrypt
#   none-tls.test  -> tls2   (IP entry 127.0.0.5 level none -> Try_TLS NO)
#   sub.enc-plain.test -> plain  may (exemption under an encrypt domain)
#   inbound: *@partner.test require tls (milter); client 127.0.0.4 require
#   tls min_cipher_bits 128 (access map TLS_Clt:); client ::1 require tls.
#   slow.test -> slow  may, vip@slow.test encrypt.
#   milter.outbound_daemons = [ "ORIG" ] (the second Sendmail daemon);
#   daemon.idle_timeout = 11 (its minimum: check 11 must not be cut by it).
#
# Checks (each prints "ok - ..." or "FAIL - ..."; every one can fail):
#   1. Sendmail's socket map client: -bt /map lookups of mixed-case keys
#      reach tlspolicyd as "access tls_srv:enc-plain.test" (map name
#      "access", key lower-cased) and answer ENCR:112 / ENCR:128 / NO / not
#      found as the policy says.
#   2. encrypt domain, sink without STARTTLS: Sendmail defers ("ruleset=
#      tls_rcpt ... reject=454 4.7.0 encryption too weak 0 less than 112";
#      queue file reason), sends no RCPT/DATA, still so after a queue run,
#      nothing at the sink.
#   3. encrypt domain, STARTTLS sink: delivered over TLS.
#   4. may domain without STARTTLS: delivered in plaintext.
#   5. vip@rcpt.test (address rule encrypt) deferred, other@rcpt.test of the
#      same message delivered.
#   6. Try_TLS: NO for a level-none next hop: delivered without STARTTLS
#      although the server offers it.
#   7. inbound client rule through the access map (TLS_Clt:127.0.0.4 ->
#      ENCR:128): MAIL without TLS gets "454 4.7.0 encryption too weak 0
#      less than 128"; with STARTTLS it is accepted and delivered.
#   8. milter inbound sender rule: x@partner.test without TLS gets the
#      milter's "530 5.7.0 Must issue a STARTTLS command first" at MAIL; with
#      STARTTLS ({tls_version}, {cipher_bits} from Sendmail) it passes.
#   9. milter outbound ({daemon_name} ORIG): X-TLSLevel: Require to an
#      encrypt domain (the client's two forged copies removed: exactly one), Try to a
#      may domain; mail through the inbound daemon gets none.
#  10. former gaps: a may subdomain under an encrypt domain is answered OK
#      (else Sendmail walks up to the parent on NOTFOUND) and IPv6 client
#      keys in Sendmail's form ("TLS_Clt:IPv6:0:0:0:0:0:0:0:1") are found.
#  11. a map connection that asked the access map is never closed for
#      idleness (Sendmail does not reconnect; its next lookup on a closed
#      connection would fail): with idle_timeout at its minimum and a server
#      that stalls IDLE+2 s, the may recipient looked up after the stall is
#      delivered, the encrypt one still not sent.
#  12. the plain (and slow) sink never got mail for an encrypt destination;
#      tlspolicyd logged no error and exits 0 on SIGTERM.
#  13. tlspolicyd stopped: new mail gets 451 4.3.0 at MAIL, a queue run
#      delivers nothing and the encrypt mail stays queued (fails closed).
# Runtime about 30 s (13 of them waiting on the slow sink in check 11).
# SENDMAIL_KEEP=1 keeps the work dir (maillog, traffic.log, sendmail.mc/cf,
# tlspolicyd.log with every lookup Sendmail made).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TLSPOLICYD=$(realpath -e "${1:-$ROOT/build/tlspolicyd}")
PY=/usr/bin/python3
SINK_PY=$ROOT/tests/e2e/lib/sink.py
CACHE=${SENDMAIL_DEB_CACHE:-$HERE/.cache}

START=$(date +%s)
FAILS=0; PASSES=0
ok() { echo "ok - $*"; PASSES=$((PASSES + 1)); }
fail() { echo "FAIL - $*"; FAILS=$((FAILS + 1)); }
log() { echo "# $*"; }
die() { echo "FAIL - $*"; FAILS=$((FAILS + 1)); exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
for tool in unshare openssl apt-get dpkg "$PY"; do
    command -v "$tool" >/dev/null || die "missing $tool"
done
"$PY" -c 'import aiosmtpd' 2>/dev/null || die "$PY lacks aiosmtpd (python3-aiosmtpd)"

# ---------------------------------------------------------------- packages
# fetch_debs: the .debs in $CACHE (download the missing ones; apt-get update
# once if the lists are stale). Returns 1 when they cannot be had.
fetch_debs() {
    local pkgs=(sendmail-bin sendmail-cf libwrap0) need=() p tmp
    command -v m4 >/dev/null || pkgs+=(m4)
    mkdir -p "$CACHE"
    for p in "${pkgs[@]}"; do
        compgen -G "$CACHE/${p}_*.deb" >/dev/null || need+=("$p")
    done
    [ ${#need[@]} -eq 0 ] && return 0
    log "downloading ${need[*]} into $CACHE"
    tmp=$(mktemp -d "$CACHE/.dl.XXXXXX")
    chmod 755 "$tmp"                   # apt's _apt sandbox user writes here
    if ! (cd "$tmp" && apt-get download -q "${need[@]}" >"$tmp/apt.log" 2>&1); then
        apt-get update -qq >>"$tmp/apt.log" 2>&1 || true
        if ! (cd "$tmp" && apt-get download -q "${need[@]}" >>"$tmp/apt.log" 2>&1); then
            sed 's/^/#   /' "$tmp/apt.log"
            rm -rf "$tmp"
            return 1
        fi
    fi
    mv "$tmp"/*.deb "$CACHE"/
    rm -rf "$tmp"
}
fetch_debs || die "cannot download sendmail-bin/sendmail-cf/libwrap0 with apt-get from Debian's archive (log above)"

W=$(mktemp -d /tmp/tlspolicy-sendmail.XXXXXX)
chmod 755 "$W"
declare -A PIDS=()                     # name -> pid of what we started
TPD_PID=

# exited PID: true once the process is gone or a zombie.
exited() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
    [ -z "$st" ] || [ "$st" = Z ]
}

# stop_pid PID: SIGTERM, up to 3 s, then SIGKILL; reap if it is our child.
stop_pid() {
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 60); do exited "$1" && break; sleep 0.05; done
    exited "$1" || kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null || true
}

# stop_sendmail: SIGTERM to the process group of our sendmail daemon (setsid made it a
# group leader; its connection and delivery children stay in the group).
stop_sendmail() {
    local pid=${PIDS[sendmail]:-}
    [ -n "$pid" ] || return 0
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 60); do
        [ -z "$(ps -o pid= -g "$pid" 2>/dev/null | tr -d ' ')" ] && break
        sleep 0.05
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'PIDS[sendmail]'
}

cleanup() {
    local rc=$? name
    trap - EXIT
    trap '' INT TERM HUP
    set +e
    if [ "$rc" -ne 0 ] || [ "$FAILS" -gt 0 ]; then
        for f in maillog tlspolicyd.log sink-plain.log sink-tls.log sink-tls2.log sink-slow.log; do
            [ -s "$W/$f" ] || continue
            echo "---- $f (last 40 lines)"
            tail -n 40 "$W/$f"
        done
    fi
    stop_sendmail
    [ -n "$TPD_PID" ] && stop_pid "$TPD_PID"
    for name in "${!PIDS[@]}"; do stop_pid "${PIDS[$name]}"; done
    if [ "${SENDMAIL_KEEP:-0}" = 1 ]; then echo "# kept $W"; else rm -rf "$W"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for CMD SECONDS: poll CMD every 0.1 s; 0 once it succeeds.
wait_for() {
    local end=$(( $(date +%s%N) / 1000000 + $2 * 1000 ))
    while [ $(( $(date +%s%N) / 1000000 )) -lt "$end" ]; do
        eval "$1" && return 0
        sleep 0.1
    done
    eval "$1"
}

# free_ports N: N distinct free loopback TCP ports below the ephemeral range.
free_ports() {
    "$PY" "$HERE/../e2e/lib/free_ports.py" "$1"
}

# ---------------------------------------------------------------- extract
R=$W/root
mkdir -p "$R"
for d in "$CACHE"/sendmail-bin_*.deb "$CACHE"/sendmail-cf_*.deb "$CACHE"/libwrap0_*.deb; do
    dpkg -x "$d" "$R"
done
if command -v m4 >/dev/null; then M4=$(command -v m4); else
    dpkg -x "$(compgen -G "$CACHE/m4_*.deb" | head -n1)" "$R"; M4=$R/usr/bin/m4
fi
SENDMAIL=$R/usr/libexec/sendmail/sendmail
MAKEMAP=$R/usr/libexec/sendmail/makemap
CFDIR=$R/usr/share/sendmail/cf
# The package's sendmail is setgid smmsp/mail: the loader would ignore
# LD_LIBRARY_PATH (libwrap.so.0 is only in the extraction). We run as root.
chmod g-s "$SENDMAIL"
LIBS=$R/usr/lib/x86_64-linux-gnu:$R/lib/x86_64-linux-gnu
[ -x "$SENDMAIL" ] && [ -f "$CFDIR/m4/cf.m4" ] || die "extraction lacks sendmail or cf/m4"
missing=$(LD_LIBRARY_PATH=$LIBS ldd "$SENDMAIL" 2>&1 | grep 'not found' || true)
[ -z "$missing" ] || die "sendmail needs libraries that are not installed: $missing"

# ---------------------------------------------------------------- files
IDLE=11                                # tlspolicyd's minimum idle_timeout
read -r SM_PORT ORIG_PORT SINK_PORT SMAP_PORT MILTER_PORT < <(free_ports 5)
log "ports: sendmail $SM_PORT (MTA) $ORIG_PORT (ORIG), sinks $SINK_PORT, socketmap $SMAP_PORT, milter $MILTER_PORT"

mkdir -p "$W/tls" "$W/etc" "$W/queue" "$W/dev"
chmod 700 "$W/queue"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj /CN=sm.test -keyout "$W/tls/key.pem" -out "$W/tls/cert.pem" >"$W/tls/openssl.log" 2>&1 ||
    die "openssl: $(cat "$W/tls/openssl.log")"
chmod 600 "$W/tls/key.pem"; chmod 644 "$W/tls/cert.pem"

cat >"$W/tlspolicy.conf" <<EOF
default = "may";
outbound = (
  { name = "enc";     level = "encrypt"; to = [ "enc-plain.test", "enc-tls.test" ]; },
  { name = "may";     level = "may";     to = [ "may-plain.test", "rcpt.test" ]; },
  { name = "sub-may"; level = "may";     to = [ "sub.enc-plain.test" ]; },
  { name = "vip";     level = "encrypt"; to = [ "vip@rcpt.test" ]; },
  { name = "notls";   level = "none";    to = [ "127.0.0.5" ]; },
  { name = "slow";    level = "may";     to = [ "slow.test" ]; },
  { name = "slowvip"; level = "encrypt"; to = [ "vip@slow.test" ]; }
);
inbound = (
  { name = "partner"; from = [ "*@partner.test" ]; require = "tls"; action = "reject"; },
  { name = "lan";     clients = [ "127.0.0.4" ]; require = "tls"; min_cipher_bits = 128; action = "reject"; },
  { name = "v6";      clients = [ "::1" ]; require = "tls"; action = "reject"; }
);
milter = { outbound_daemons = [ "ORIG" ]; };
daemon = {
  socketmap = [ "inet:127.0.0.1:$SMAP_PORT" ];
  milter = "inet:127.0.0.1:$MILTER_PORT";
  log_all_lookups = true;
  idle_timeout = $IDLE;              # check 11 waits this out
};
EOF

# The namespace's view: hostname mta.sm.test, these hosts, no DNS server.
printf '127.0.0.1\tmta.sm.test localhost\n127.0.0.4\tlan.sm.test\n::1\tlocalhost\n' >"$W/hosts"
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$W/resolv.conf"
printf 'hosts files\naliases files\n' >"$W/etc/service.switch"
cp "$W/hosts" "$W/etc/hosts"
: >"$W/etc/aliases"
echo mta.sm.test >"$W/etc/local-host-names"
echo 127.0.0.4 >"$W/etc/relay-domains"     # may relay (like localhost)
cat >"$W/etc/mailertable.txt" <<'EOF'
enc-plain.test	esmtp:[127.0.0.3]
sub.enc-plain.test	esmtp:[127.0.0.3]
enc-tls.test	esmtp:[127.0.0.2]
may-plain.test	esmtp:[127.0.0.3]
rcpt.test	esmtp:[127.0.0.3]
none-tls.test	esmtp:[127.0.0.5]
slow.test	esmtp:[127.0.0.6]
EOF

# ns.sh CMD...: run CMD in a new mount+UTS namespace set up as above.
# Its first argument is the caller's mount namespace: it refuses to run in
# it (it would bind-mount over the machine's own /etc/hosts).
cat >"$W/ns.sh" <<EOF
#!/bin/sh
set -e
[ "\$(readlink /proc/self/ns/mnt)" != "\$1" ] || { echo "ns.sh: not in a new mount namespace" >&2; exit 99; }
shift
mount --bind "$W/resolv.conf" /etc/resolv.conf
mount --bind "$W/hosts" /etc/hosts
hostname mta.sm.test
# A private /dev whose log is our syslog socket (no syslogd here).
if [ -S "$W/devlog" ]; then
    mkdir -p "$W/realdev"
    mount --rbind /dev "$W/realdev"
    mount -t tmpfs -o mode=755 tmpfs /dev
    for n in null zero full random urandom tty; do
        [ -e "$W/realdev/\$n" ] || continue
        : >"/dev/\$n"; mount --bind "$W/realdev/\$n" "/dev/\$n"
    done
    ln -s /proc/self/fd /dev/fd
    ln -s "$W/devlog" /dev/log
    umount -l "$W/realdev"
fi
export LD_LIBRARY_PATH="$LIBS"
exec "\$@"
EOF
chmod 755 "$W/ns.sh"
MNTNS=$(readlink /proc/self/ns/mnt)
ns() { unshare -m -u "$W/ns.sh" "$MNTNS" "$@"; }
sm() { ns "$SENDMAIL" -C "$W/sendmail.cf" "$@"; }

# Version and compile options (-C /dev/null: it stops at the config).
ns "$SENDMAIL" -d0.1 -bt -C /dev/null </dev/null >"$W/version.txt" 2>&1 || true
SM_VERSION=$(sed -n 's/^Version //p' "$W/version.txt" | head -n1)
log "sendmail ${SM_VERSION:-?} from $(basename "$(compgen -G "$CACHE/sendmail-bin_*.deb" | head -n1)"), work dir $W"
grep -q 'SOCKETMAP' "$W/version.txt" && grep -q 'MILTER' "$W/version.txt" ||
    die "this sendmail lacks SOCKETMAP or MILTER: $(cat "$W/version.txt")"

# sendmail.mc: the lines README.md documents, with this run's paths/ports.
cat >"$W/sendmail.mc.in" <<'EOF'
divert(-1)
# tlspolicy t-sendmail.sh: generated, all paths in the test's temp dir.
divert(0)dnl
VERSIONID(`tlspolicy t-sendmail')dnl
OSTYPE(`linux')dnl
define(`MAIL_SETTINGS_DIR', `@W@/etc/')dnl
define(`QUEUE_DIR', `@W@/queue')dnl
define(`confPID_FILE', `@W@/sendmail.pid')dnl
define(`confHOSTS_FILE', `@W@/etc/hosts')dnl
define(`confSERVICE_SWITCH_FILE', `@W@/etc/service.switch')dnl
define(`confDOMAIN_NAME', `mta.sm.test')dnl
dnl /tmp is world writable (sticky): trust the sticky bit for our paths.
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl
define(`confDONT_PROBE_INTERFACES', `true')dnl
define(`confDELIVERY_MODE', `background')dnl
define(`confQUEUE_LA', `100')dnl
define(`confREFUSE_LA', `100')dnl
define(`confDELAY_LA', `0')dnl
define(`confTO_CONNECT', `5s')dnl
define(`confTO_ICONNECT', `5s')dnl
define(`confSERVER_CERT', `@W@/tls/cert.pem')dnl
define(`confSERVER_KEY', `@W@/tls/key.pem')dnl
define(`confCACERT_PATH', `@W@/tls')dnl
define(`confCACERT', `@W@/tls/cert.pem')dnl
dnl Sendmail's default HELO macro list plus {verify}.
define(`confMILTER_MACROS_HELO', ``{tls_version}, {cipher}, {cipher_bits}, {verify}, {cert_subject}, {cert_issuer}'')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`access_db', `socket -T<TMPF> inet:@SMAP_PORT@@127.0.0.1')dnl
FEATURE(`mailertable', `hash -o @W@/etc/mailertable')dnl
INPUT_MAIL_FILTER(`tlspolicy', `S=inet:@MILTER_PORT@@127.0.0.1, F=T, T=C:10s;S:10s;R:10s;E:30s')dnl
DAEMON_OPTIONS(`Port=@SM_PORT@, Addr=127.0.0.1, Name=MTA')dnl
DAEMON_OPTIONS(`Port=@ORIG_PORT@, Addr=127.0.0.1, Name=ORIG')dnl
define(`SMTP_MAILER_ARGS', `TCP $h @SINK_PORT@')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h @SINK_PORT@')dnl
define(`SMTP8_MAILER_ARGS', `TCP $h @SINK_PORT@')dnl
define(`DSMTP_MAILER_ARGS', `TCP $h @SINK_PORT@')dnl
define(`RELAY_MAILER_ARGS', `TCP $h @SINK_PORT@')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
EOF
sed -e "s|@W@|$W|g" -e "s|@SMAP_PORT@|$SMAP_PORT|g" -e "s|@MILTER_PORT@|$MILTER_PORT|g" \
    -e "s|@SM_PORT@|$SM_PORT|g" -e "s|@ORIG_PORT@|$ORIG_PORT|g" -e "s|@SINK_PORT@|$SINK_PORT|g" \
    "$W/sendmail.mc.in" >"$W/sendmail.mc"
"$M4" -D_CF_DIR_="$CFDIR/" "$CFDIR/m4/cf.m4" "$W/sendmail.mc" >"$W/sendmail.cf" 2>"$W/m4.err" ||
    die "m4 failed: $(cat "$W/m4.err")"
[ -s "$W/m4.err" ] && { sed 's/^/# m4: /' "$W/m4.err"; fail "m4 warned while building sendmail.cf"; }
grep -q "^Kaccess socket -T<TMPF> inet:$SMAP_PORT@127.0.0.1\$" "$W/sendmail.cf" &&
    grep -q "^Xtlspolicy, S=inet:$MILTER_PORT@127.0.0.1, F=T, T=C:10s;S:10s;R:10s;E:30s\$" "$W/sendmail.cf" &&
    grep -q '^O Milter.macros.helo=.*{verify}' "$W/sendmail.cf" ||
    fail "sendmail.cf lacks the Kaccess socket map, the Xtlspolicy milter or {verify}"
LD_LIBRARY_PATH=$LIBS "$MAKEMAP" -C "$W/sendmail.cf" hash "$W/etc/mailertable" \
    <"$W/etc/mailertable.txt" 2>"$W/makemap.err" || die "makemap failed: $(cat "$W/makemap.err")"

# ---------------------------------------------------------------- start
"$PY" "$HERE/syslog_sink.py" --socket "$W/devlog" --out "$W/maillog" --ready "$W/syslog.ready" \
    2>"$W/syslog.err" &
PIDS[syslog]=$!
wait_for "[ -s '$W/syslog.ready' ]" 10 || die "syslog sink did not start"

"$TLSPOLICYD" -f -c "$W/tlspolicy.conf" 2>"$W/tlspolicyd.log" &
TPD_PID=$!
wait_for "grep -q 'tlspolicyd: started:' '$W/tlspolicyd.log' || exited $TPD_PID" 20
grep -q 'tlspolicyd: started:' "$W/tlspolicyd.log" || die "tlspolicyd did not start: $(cat "$W/tlspolicyd.log")"

sink_start() {                         # NAME ADDR [--starttls]
    local name=$1 addr=$2; shift 2
    local tlsargs=()
    [ "${1:-}" = --starttls ] && tlsargs=(--starttls --cert "$W/tls/cert.pem" --key "$W/tls/key.pem")
    "$PY" "$SINK_PY" --addr "$addr" --port "$SINK_PORT" --store "$W/sink-$name" \
        --ready "$W/sink-$name.ready" "${tlsargs[@]}" 2>"$W/sink-$name.log" &
    PIDS[sink-$name]=$!
    wait_for "[ -s '$W/sink-$name.ready' ]" 15 || die "sink $name did not start: $(cat "$W/sink-$name.log")"
}
sink_start tls 127.0.0.2 --starttls
sink_start plain 127.0.0.3
sink_start tls2 127.0.0.5 --starttls
"$PY" "$HERE/slow_sink.py" --addr 127.0.0.6 --port "$SINK_PORT" --store "$W/sink-slow" \
    --delay $((IDLE + 2)) --ready "$W/sink-slow.ready" 2>"$W/sink-slow.log" &
PIDS[sink-slow]=$!
wait_for "[ -s '$W/sink-slow.ready' ]" 15 || die "slow sink did not start: $(cat "$W/sink-slow.log")"

setsid unshare -m -u "$W/ns.sh" "$MNTNS" "$SENDMAIL" -C "$W/sendmail.cf" -bD -X "$W/traffic.log" \
    >"$W/sendmail.out" 2>&1 &
PIDS[sendmail]=$!
wait_for "grep -q 'starting daemon' '$W/maillog' 2>/dev/null || exited ${PIDS[sendmail]}" 30
listening() { "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()" "$1" 2>/dev/null; }
if grep -q 'starting daemon' "$W/maillog" 2>/dev/null && wait_for "listening $SM_PORT && listening $ORIG_PORT" 10; then
    ok "sendmail $SM_VERSION runs from the dpkg -x extraction: daemons MTA :$SM_PORT and ORIG :$ORIG_PORT ($(grep -m1 'starting daemon' "$W/maillog" | sed 's/.*starting/starting/'))"
else
    cat "$W/sendmail.out"
    die "sendmail did not start"
fi

# ---------------------------------------------------------------- helpers
send() { "$PY" "$HERE/smtpc.py" "$@"; }                 # see smtpc.py
sink_count() { find "$W/sink-$1" -name '*.json' 2>/dev/null | wc -l; }
sink_files() { find "$W/sink-$1" -name '*.json' 2>/dev/null | sort; }
# sink_find NAME RCPT: the stored message whose rcpt_tos contains RCPT.
sink_find() {
    local f
    for f in $(sink_files "$1"); do
        "$PY" -c 'import json,sys; sys.exit(0 if sys.argv[2] in json.load(open(sys.argv[1]))["rcpt_tos"] else 1)' "$f" "$2" &&
            { echo "$f"; return 0; }
    done
    return 1
}
field() {                              # FILE KEY -> value (bool as true/false)
    "$PY" -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]
print(str(v).lower() if isinstance(v,bool) else (" ".join(v) if isinstance(v,list) else v))' "$1" "$2"
}
headers() {                            # FILE NAME -> every "Name: value" line of the header
    "$PY" -c 'import json,sys,email
m=email.message_from_string(json.load(open(sys.argv[1]))["data"])
for v in m.get_all(sys.argv[2]) or []: print(sys.argv[2]+": "+v)' "$1" "$2"
}
# maillog_to RCPT: the delivery status line(s) sendmail logged for RCPT
# (one line may list several: "to=<first@slow.test>,<may2@slow.test>").
maillog_to() { grep -F "<$1>" "$W/maillog" | grep -E ' to=(<[^>]*>,)*<' || true; }
# queue_has RCPT: a queue file (qf*) still holds RCPT; prints its reason.
queue_has() {
    local f
    for f in "$W"/queue/qf*; do
        [ -f "$f" ] || continue
        if grep -aqF ":<$1>" "$f"; then grep -a '^M' "$f" | tail -n1 | cut -c2-; return 0; fi
    done
    return 1
}

# ---------------------------------------------------------------- 1. map protocol
bt=$(printf '%s\n' \
    '/map access TLS_Srv:Enc-Plain.Test' \
    '/map access TLS_Rcpt:U@ENC-plain.test' \
    '/map access TLS_Rcpt:vip@rcpt.test' \
    '/map access TLS_Rcpt:other@rcpt.test' \
    '/map access Try_TLS:[127.0.0.5]' \
    '/map access TLS_Clt:127.0.0.4' \
    '/map access TLS_Srv:may-plain.test' \
    '/map access Connect:127.0.0.4' | sm -bt 2>&1)
grep -q 'unknown map name "access"' "$W/tlspolicyd.log" &&
    die "$TLSPOLICYD answers PERM unknown map name \"access\" (a build without the Sendmail access map?); Sendmail would treat that as not found"
expect_bt() {                          # KEY EXPECTED-RESULT
    if grep -qF "map_lookup: access ($1) $2" <<<"$bt"; then ok "sendmail -bt: access $1 $2"
    else fail "sendmail -bt: access $1: want '$2', got: $(grep -F "($1)" <<<"$bt")"; fi
}
expect_bt 'TLS_Srv:Enc-Plain.Test' 'returns TEMP+ENCR:112 (0)'
expect_bt 'TLS_Rcpt:U@ENC-plain.test' 'returns TEMP+ENCR:112 (0)'
expect_bt 'TLS_Rcpt:vip@rcpt.test' 'returns TEMP+ENCR:112 (0)'
expect_bt 'TLS_Rcpt:other@rcpt.test' 'returns OK (0)'
expect_bt 'Try_TLS:[127.0.0.5]' 'returns NO (0)'
expect_bt 'TLS_Clt:127.0.0.4' 'returns ENCR:128 (0)'
expect_bt 'TLS_Srv:may-plain.test' 'returns OK (0)'
expect_bt 'Connect:127.0.0.4' 'no match (68)'
if grep -qF 'lookup access tls_srv:enc-plain.test: OK TEMP+ENCR:112' "$W/tlspolicyd.log"; then
    ok "Sendmail's socket map request names the map \"access\" and lower-cases the key (\"access tls_srv:enc-plain.test\")"
else
    fail "tlspolicyd never logged 'lookup access tls_srv:enc-plain.test' (what did Sendmail send?): $(grep 'lookup' "$W/tlspolicyd.log" | tail -n 3)"
fi

# ---------------------------------------------------------------- 2-6. outbound
out=$(send --port "$SM_PORT" --from a@src.test --to u@enc-plain.test --subject enc-plain)
grep -q '^DATA 250' <<<"$out" || fail "submission for u@enc-plain.test: $out"
out=$(send --port "$SM_PORT" --from a@src.test --to u@enc-tls.test --subject enc-tls)
grep -q '^DATA 250' <<<"$out" || fail "submission for u@enc-tls.test: $out"
out=$(send --port "$SM_PORT" --from a@src.test --to u@may-plain.test --subject may-plain)
grep -q '^DATA 250' <<<"$out" || fail "submission for u@may-plain.test: $out"
out=$(send --port "$SM_PORT" --from a@src.test --to vip@rcpt.test --to other@rcpt.test --subject rcpt)
grep -q '^DATA 250' <<<"$out" || fail "submission for vip@/other@rcpt.test: $out"
out=$(send --port "$SM_PORT" --from a@src.test --to u@none-tls.test --subject none-tls)
grep -q '^DATA 250' <<<"$out" || fail "submission for u@none-tls.test: $out"
out=$(send --port "$SM_PORT" --from a@src.test --to u@sub.enc-plain.test --subject sub-may)
grep -q '^DATA 250' <<<"$out" || fail "submission for u@sub.enc-plain.test: $out"

for r in u@enc-plain.test u@enc-tls.test u@may-plain.test vip@rcpt.test other@rcpt.test \
         u@none-tls.test u@sub.enc-plain.test; do
    wait_for "maillog_to $r | grep -q 'stat='" 20 || fail "sendmail logged no delivery attempt for $r"
done

# 2. encrypt + no STARTTLS: deferred by tls_rcpt, nothing sent.
if grep -qF 'ruleset=tls_rcpt, arg1=u@enc-plain.test, relay=[127.0.0.3], reject=403 4.7.0 encryption too weak 0 less than 112' "$W/maillog" &&
        maillog_to u@enc-plain.test | grep -q 'stat=Deferred'; then
    ok "encrypt domain, server without STARTTLS: deferred (TEMP+), 'reject=403 4.7.0 encryption too weak 0 less than 112' (ruleset tls_rcpt)"
else
    fail "u@enc-plain.test not deferred by tls_rcpt: $(grep -F 'enc-plain.test' "$W/maillog")"
fi
reason=$(queue_has u@enc-plain.test) && [ "$reason" = "encryption too weak 0 less than 112" ] &&
    ok "queue holds u@enc-plain.test, reason: $reason" ||
    fail "queue entry for u@enc-plain.test: '${reason:-none}'"
if sink_find plain u@enc-plain.test >/dev/null; then
    fail "u@enc-plain.test reached the plain sink"
else
    ok "nothing for u@enc-plain.test at the plain sink"
fi
sm -q >"$W/queue-run.out" 2>&1 || true
if queue_has u@enc-plain.test >/dev/null && ! sink_find plain u@enc-plain.test >/dev/null &&
        [ "$(maillog_to u@enc-plain.test | grep -c 'stat=Deferred')" -ge 2 ]; then
    ok "after a queue run (sendmail -q) still deferred, still nothing at the sink"
else
    fail "queue run changed the encrypt mail: $(maillog_to u@enc-plain.test | tail -n1)"
fi

# 3. encrypt + STARTTLS: delivered over TLS.
if f=$(sink_find tls u@enc-tls.test) && [ "$(field "$f" tls)" = true ]; then
    ok "encrypt domain, STARTTLS server: delivered over $(field "$f" tls_version)"
else
    fail "u@enc-tls.test not delivered over TLS: $(maillog_to u@enc-tls.test)"
fi

# 4. may: delivered in plaintext.
if f=$(sink_find plain u@may-plain.test) && [ "$(field "$f" tls)" = false ]; then
    ok "may domain without STARTTLS: delivered in plaintext"
else
    fail "u@may-plain.test not delivered: $(maillog_to u@may-plain.test)"
fi

# 5. address rule.
if maillog_to vip@rcpt.test | grep -q 'stat=Deferred' && queue_has vip@rcpt.test >/dev/null &&
        f=$(sink_find plain other@rcpt.test) && [ "$(field "$f" rcpt_tos)" = other@rcpt.test ]; then
    ok "address rule: vip@rcpt.test deferred (TLS_Rcpt:vip@rcpt.test), other@rcpt.test of the same message delivered alone"
else
    fail "address rule: vip: $(maillog_to vip@rcpt.test); other: $(maillog_to other@rcpt.test)"
fi

# 6. Try_TLS: NO.
if f=$(sink_find tls2 u@none-tls.test) && [ "$(field "$f" tls)" = false ]; then
    ok "Try_TLS:[127.0.0.5] NO (level none): delivered without STARTTLS although the server offers it"
else
    fail "u@none-tls.test: $(maillog_to u@none-tls.test); sink: $(sink_files tls2)"
fi

# ---------------------------------------------------------------- 7. TLS_Clt
out=$(send --port "$SM_PORT" --src 127.0.0.4 --from a@lan.test --to u@may-plain.test --subject clt-plain)
if grep -q '^MAIL 454 4.7.0 encryption too weak 0 less than 128' <<<"$out"; then
    ok "inbound client rule via access map (TLS_Clt:127.0.0.4 ENCR:128): MAIL without TLS answered 454 4.7.0 encryption too weak 0 less than 128"
else
    fail "client 127.0.0.4 without TLS: $out"
fi
out=$(send --port "$SM_PORT" --src 127.0.0.4 --starttls --from b@lan.test --to w@may-plain.test --subject clt-tls)
if grep -q '^DATA 250' <<<"$out" && wait_for "sink_find plain w@may-plain.test >/dev/null" 20; then
    ok "client 127.0.0.4 with STARTTLS ($(sed -n 's/^TLS //p' <<<"$out") bits): accepted and delivered"
else
    fail "client 127.0.0.4 with STARTTLS: $out"
fi

# ---------------------------------------------------------------- 8. milter inbound
out=$(send --port "$SM_PORT" --from x@partner.test --to u@may-plain.test --subject partner-plain)
if grep -q '^MAIL 530 5.7.0 Must issue a STARTTLS command first' <<<"$out" &&
        grep -q 'milter: reject client=127.0.0.1 from=<x@partner.test> (no TLS): 530 5.7.0' "$W/tlspolicyd.log"; then
    ok "milter inbound sender rule: x@partner.test without TLS rejected at MAIL with 530 5.7.0 Must issue a STARTTLS command first"
else
    fail "milter inbound without TLS: $out; log: $(grep -F 'partner.test' "$W/tlspolicyd.log" | tail -n 2)"
fi
out=$(send --port "$SM_PORT" --starttls --from y@partner.test --to p@may-plain.test --subject partner-tls)
if grep -q '^DATA 250' <<<"$out" && wait_for "sink_find plain p@may-plain.test >/dev/null" 20 &&
        ! grep -q 'from=<y@partner.test>' "$W/tlspolicyd.log"; then
    ok "milter inbound sender rule: y@partner.test with STARTTLS ({tls_version} $(sed -n 's/^TLS //p' <<<"$out")) accepted and delivered"
else
    fail "milter inbound with TLS: $out; log: $(grep -F 'y@partner.test' "$W/tlspolicyd.log" | tail -n 2)"
fi

# ---------------------------------------------------------------- 9. milter outbound
out=$(send --port "$ORIG_PORT" --from me@ours.test --to out@enc-tls.test --subject out-enc \
      --header 'X-TLSLevel: Require' --header 'x-tlslevel: forged')
grep -q '^DATA 250' <<<"$out" || fail "outbound submission (ORIG) to out@enc-tls.test: $out"
out=$(send --port "$ORIG_PORT" --from me@ours.test --to out@may-plain.test --subject out-may)
grep -q '^DATA 250' <<<"$out" || fail "outbound submission (ORIG) to out@may-plain.test: $out"
out=$(send --port "$SM_PORT" --from ext@else.test --to in@may-plain.test --subject in-may)
grep -q '^DATA 250' <<<"$out" || fail "inbound submission (MTA) to in@may-plain.test: $out"
wait_for "sink_find tls out@enc-tls.test >/dev/null && sink_find plain out@may-plain.test >/dev/null && sink_find plain in@may-plain.test >/dev/null" 20 ||
    fail "outbound/inbound milter mails not all delivered"
if f=$(sink_find tls out@enc-tls.test) && [ "$(headers "$f" X-TLSLevel)" = "X-TLSLevel: Require" ]; then
    ok "milter outbound ({daemon_name} ORIG) to an encrypt domain: exactly one 'X-TLSLevel: Require' (the client's two copies removed), delivered over TLS"
else
    fail "out@enc-tls.test headers: $( [ -n "${f:-}" ] && headers "$f" X-TLSLevel)"
fi
if f=$(sink_find plain out@may-plain.test) && [ "$(headers "$f" X-TLSLevel)" = "X-TLSLevel: Try" ]; then
    ok "milter outbound to a may domain: 'X-TLSLevel: Try'"
else
    fail "out@may-plain.test headers: $( [ -n "${f:-}" ] && headers "$f" X-TLSLevel)"
fi
if f=$(sink_find plain in@may-plain.test) && [ -z "$(headers "$f" X-TLSLevel)" ]; then
    ok "mail through the inbound daemon (MTA) gets no X-TLSLevel"
else
    fail "in@may-plain.test has: $( [ -n "${f:-}" ] && headers "$f" X-TLSLevel)"
fi
grep -qE 'milter: [0-9A-Za-z]+: outbound from=<me@ours.test>: X-TLSLevel: Require' "$W/tlspolicyd.log" &&
    ok "tlspolicyd logged the outbound decision with Sendmail's queue ID ({i})" ||
    fail "no 'milter: QID: outbound from=<me@ours.test>' line: $(grep -F 'me@ours.test' "$W/tlspolicyd.log" | head -n 2)"

# ---------------------------------------------------------------- 10. former gaps
# A may subdomain under an encrypt domain: the access map must answer it
# (OK), not NOTFOUND, or Sendmail's LookUpDomain walks up to
# TLS_Rcpt:enc-plain.test -> ENCR:112 and defers mail the policy lets go.
if f=$(sink_find plain u@sub.enc-plain.test) && [ "$(field "$f" tls)" = false ] &&
        grep -qF 'lookup access tls_rcpt:u@sub.enc-plain.test: OK OK' "$W/tlspolicyd.log"; then
    ok "may subdomain sub.enc-plain.test under encrypt enc-plain.test: TLS_Rcpt answered OK (Sendmail does not walk up to the parent), delivered in plaintext as the policy says"
else
    fail "may subdomain sub.enc-plain.test: $(maillog_to u@sub.enc-plain.test); lookups: $(grep -o 'lookup access tls_rcpt:[^ ]*enc-plain.test[^(]*' "$W/tlspolicyd.log" | sort -u | tr '\n' ';')"
fi
# IPv6 clients: Sendmail's key is TLS_Clt:IPv6:0:0:0:0:0:0:0:1 (IPV6_FULL).
v6=$(printf '/map access TLS_Clt:IPv6:0:0:0:0:0:0:0:1\n' | sm -bt 2>&1 | grep 'map_lookup' || true)
if grep -qF 'map_lookup: access (TLS_Clt:IPv6:0:0:0:0:0:0:0:1) returns ENCR' <<<"$v6"; then
    ok "IPv6 client key TLS_Clt:IPv6:0:0:0:0:0:0:0:1 answers ENCR (client rule ::1)"
else
    fail "IPv6 client rule ::1 not found under Sendmail's key format: $v6"
fi

# ---------------------------------------------------------------- 11. idle map connection
# Sendmail keeps a map connection for the life of the process and neither
# notices a close nor retries: its next lookup on a closed connection reads
# EOF and fails (EX_TEMPFAIL, 451 4.3.0 with -T<TMPF>). tlspolicyd must not
# close a connection that asked the access map, whatever idle_timeout says
# (here its minimum). The slow sink answers the first RCPT after IDLE+2 s,
# so the next recipient's TLS_Rcpt lookup comes after that much idle time.
# Sendmail sends the RCPTs of one delivery in the reverse order of the
# envelope: first, may2, vip.
out=$(send --port "$SM_PORT" --from a@src.test --to vip@slow.test --to may2@slow.test --to first@slow.test --subject slow)
grep -q '^DATA 250' <<<"$out" || fail "submission to slow.test: $out"
for r in vip@slow.test may2@slow.test first@slow.test; do
    wait_for "maillog_to $r | grep -q 'stat='" $((IDLE + 15)) || fail "no delivery attempt for $r"
done
sink_slow_has() { for f in $(find "$W/sink-slow" -name '*.json' | sort); do field "$f" rcpt_tos; done | tr ' ' '\n' | grep -qx "$1"; }
if ! sink_slow_has vip@slow.test && maillog_to vip@slow.test | grep -q 'stat=Deferred'; then
    ok "after IDLE+2 s idle on the map connection, vip@slow.test (encrypt) is still not sent: deferred ($(grep -F 'arg1=vip@slow.test' "$W/maillog" | sed -n 's/.*reject=//p' | head -n1))"
else
    fail "vip@slow.test after IDLE+2 s idle: $(maillog_to vip@slow.test); at sink: $(sink_slow_has vip@slow.test && echo yes || echo no)"
fi
sink_slow_has first@slow.test && ok "first@slow.test (may) delivered by the slow server" ||
    fail "first@slow.test not delivered: $(maillog_to first@slow.test)"
if sink_slow_has may2@slow.test && maillog_to may2@slow.test | grep -q 'stat=Sent'; then
    ok "may2@slow.test (may) delivered: its TLS_Rcpt lookup came IDLE+2 s after the previous one on the same map connection, which tlspolicyd kept open (it asked the access map)"
else
    fail "may2@slow.test (may) not delivered after the map connection sat idle for more than idle_timeout (did tlspolicyd close Sendmail's connection? Sendmail does not reconnect): $(maillog_to may2@slow.test); $(grep -F 'may2@slow.test' "$W/maillog" | head -n 2)"
fi

# ---------------------------------------------------------------- 12. summary
bad=$(for f in $(sink_files plain) $(sink_files slow); do field "$f" rcpt_tos; done | tr ' ' '\n' | grep -E '^(u@enc-plain.test|vip@rcpt.test|vip@slow.test)$' || true)
[ -z "$bad" ] && ok "the plain sink never got mail for an encrypt destination" ||
    fail "the plain sink got: $bad"
if grep -q 'error:' "$W/tlspolicyd.log"; then fail "tlspolicyd logged errors: $(grep 'error:' "$W/tlspolicyd.log" | head -n 3)"; fi
NLOOKUPS=$(grep -c 'lookup access ' "$W/tlspolicyd.log" || true)
kill -TERM "$TPD_PID"
for _ in $(seq 100); do exited "$TPD_PID" && break; sleep 0.05; done
rc=0; wait "$TPD_PID" || rc=$?
TPD_PID=
[ "$rc" -eq 0 ] && ok "tlspolicyd exits 0 on SIGTERM" || fail "tlspolicyd exit status $rc"

# ---------------------------------------------------------------- 13. daemon down
# Socket map and milter gone: Sendmail must fail closed (-T<TMPF>: a refused
# connection is EX_TEMPFAIL; F=T: milter unavailable = tempfail).
out=$(send --port "$SM_PORT" --from a@src.test --to u2@enc-plain.test --subject down)
if grep -qE '^(MAIL|RCPT [^ ]+|EHLO|DATA) 4[0-9][0-9]' <<<"$out" && ! grep -q '^DATA 250' <<<"$out"; then
    ok "tlspolicyd down: new mail refused with a 4xx ($(grep -E ' 4[0-9][0-9] ' <<<"$out" | head -n1))"
else
    fail "tlspolicyd down, submission: $out"
fi
nplain=$(sink_count plain)
sm -q >"$W/queue-run2.out" 2>&1 || true
if queue_has u@enc-plain.test >/dev/null && queue_has vip@rcpt.test >/dev/null && [ "$(sink_count plain)" -eq "$nplain" ]; then
    ok "tlspolicyd down: a queue run delivers nothing and keeps the encrypt mail queued ($(queue_has u@enc-plain.test))"
else
    fail "tlspolicyd down, queue run: $(tail -n 5 "$W/queue-run2.out")"
fi
stop_sendmail
log "map lookups Sendmail made: ${NLOOKUPS:-0}; runtime $(( $(date +%s) - START )) s"
echo "$PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
