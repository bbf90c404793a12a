# shellcheck shell=bash
# tests/e2e/lib/postfix.sh -- end-to-end test harness for tlspolicy.
#
# Source it from a bash test script (runs as root, set -euo pipefail safe):
#
#   . "$(dirname "$0")/lib/postfix.sh"
#   e2e_init                              # temp dir, cert, ports, EXIT trap
#   e2e_host tls.test 127.0.0.2           # private hosts entries
#   sink_start tls 127.0.0.2 --starttls   # aiosmtpd sink with STARTTLS
#   sink_start plain 127.0.0.3            # aiosmtpd sink without STARTTLS
#   PF_MAIN_EXTRA='smtp_tls_policy_maps = socketmap:inet:127.0.0.1:10461:tlspolicy'
#   pf_start                              # private Postfix on 127.0.0.1:$PF_PORT
#   pf_send a@src.test u@tls.test -- --add-header 'X-Test: 1'
#   sink_wait tls 1 20 || e2e_fail "no mail at sink tls"
#   [ "$(sink_field "$(sink_last tls)" tls)" = true ] || e2e_fail "no TLS"
#   wait_for '[ "$(pf_queue_count)" -eq 0 ]' 20
#
# What it builds, all under E2E_DIR (/tmp/tlspolicy-e2e.XXXXXX):
#   tls/cert.pem tls/key.pem   self-signed EC cert (CN=e2e.test) for smtpd+sinks
#   hosts                      private /etc/hosts (see e2e_host)
#   sink-NAME/                 one JSON file per message received by sink NAME
#   sink-NAME.log              the sink's own log
#   pf/                        Postfix config_directory: main.cf, master.cf,
#                              maillog
#   pf-queue/ pf-data/         its queue_directory and data_directory
#
# The Postfix instance runs in its own mount namespace (unshare -m) where the
# private hosts file is bind-mounted over /etc/hosts and a resolv.conf that
# points at 127.0.0.1 (so unknown names fail at once and no DNS query ever
# leaves loopback) over /etc/resolv.conf. The machine's files are untouched.
# The smtp client uses native lookups (smtp_dns_support_level=disabled), so
# the policy key stays the plain recipient domain while delivery goes to a
# sink; all sinks share port $SINK_PORT because smtp_tcp_port is global.
# e2e_host may also be called after pf_start: the file is edited in place, and
# the bind mount shows the same inode, so new names resolve at once.
#
# Variables the caller may set:
#   before pf_start: PF_MAIN_EXTRA   main.cf lines; they replace the base
#                                    settings of the same name
#                    PF_MASTER_EXTRA lines appended to master.cf
#   any time:        E2E_KEEP=1      keep E2E_DIR after cleanup (debugging)
#                    E2E_DUMP=0      don't print logs when the script fails
# Variables the library sets: E2E_DIR E2E_LIB E2E_CERT E2E_KEY PF_DIR PF_PORT
#   SINK_PORT PF_QUEUE_DIR PF_DATA_DIR PF_MAILLOG.
#
# Changing config later: pf_postconf -e 'name = value' (edits in place; merely
# appending a parameter already set works, last wins, but makes every Postfix
# command warn "overriding earlier entry"), then pf_reload. Postfix tools that need a main.cf must be pointed at the
# instance: postmap -c "$PF_DIR" -q KEY TYPE:NAME (or pf_postmap -q KEY ...),
# postconf -c "$PF_DIR" (pf_postconf), postqueue -c "$PF_DIR", postsuper -c.
# Note: postmap/postconf run outside the namespace, so they see the real
# /etc/hosts; only the instance's daemons see the private one.
#
# Functions (see each one's comment): e2e_init e2e_cleanup e2e_host
#   sink_start sink_stop sink_count sink_files sink_last sink_wait sink_field
#   pf_start pf_stop pf_reload pf_send pf_flush pf_queue_json pf_queue_count
#   pf_queue_reason pf_queue_wait_empty pf_log pf_postconf pf_postmap
#   wait_for e2e_fail e2e_daemon_start e2e_daemon_stop e2e_daemon_pid
#   e2e_tlspolicyd_paths
#
# Other long-running helpers (e.g. tlspolicyd -f) should be started with
# e2e_daemon_start so e2e_cleanup stops them and a later run reaps them if
# this one was killed (their command line must name a file under E2E_DIR).

E2E_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_PYTHON=/usr/bin/python3            # Debian's python with aiosmtpd
declare -gA E2E_SINK_PIDS=()           # sink name -> pid
declare -gA E2E_DAEMON_PIDS=()         # e2e_daemon_start name -> pid
E2E_DAEMON_RC=                         # exit status from e2e_daemon_stop
E2E_DIR=${E2E_DIR-}
PF_MAIN_EXTRA=${PF_MAIN_EXTRA-}
PF_MASTER_EXTRA=${PF_MASTER_EXTRA-}
E2E_PF_MASTER_PID=

# e2e_fail MSG...: print "FAIL: MSG" to stderr and exit 1 (cleanup runs).
e2e_fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# _e2e_log MSG...: harness progress line on stderr.
_e2e_log() {
    echo "[e2e] $*" >&2
}

# _e2e_free_ports N: print N distinct TCP ports free on every local address
# (binding 0.0.0.0 fails if any address already uses the port). Chosen below
# the kernel's ephemeral range so outgoing connections won't take them.
_e2e_free_ports() {
    "$E2E_PYTHON" "$E2E_LIB/free_ports.py" "$1"
}

# e2e_tlspolicyd_paths: after pf_start, picks a free port for tlspolicyd's
# socketmap (not Postfix's nor the sinks') and sets TD_PORT, TD_DIR (its own
# directory, since the daemon watches it), TD_CONF, TD_LOG and SM (the
# socketmap: prefix for main.cf and postmap).
e2e_tlspolicyd_paths() {
    TD_PORT=$(_e2e_free_ports 1)
    while [ "$TD_PORT" = "$PF_PORT" ] || [ "$TD_PORT" = "$SINK_PORT" ]; do
        TD_PORT=$(_e2e_free_ports 1)
    done
    TD_DIR=$E2E_DIR/tlspolicy
    TD_CONF=$TD_DIR/tlspolicy.conf
    TD_LOG=$E2E_DIR/daemon-tlspolicyd.log
    SM=socketmap:inet:127.0.0.1:$TD_PORT
    mkdir -p "$TD_DIR"
}

# e2e_init: create E2E_DIR, the TLS cert, pick PF_PORT and SINK_PORT, write
# the base hosts file, and install traps so e2e_cleanup runs on any exit.
# If you need your own EXIT trap, call e2e_cleanup from it.
e2e_init() {
    [ "$(id -u)" -eq 0 ] || { echo "e2e: must run as root" >&2; return 1; }
    local tool
    for tool in postfix postqueue postconf swaks unshare openssl "$E2E_PYTHON"; do
        command -v "$tool" >/dev/null || { echo "e2e: missing $tool" >&2; return 1; }
    done
    "$E2E_PYTHON" -c 'import aiosmtpd' 2>/dev/null ||
        { echo "e2e: $E2E_PYTHON lacks aiosmtpd (python3-aiosmtpd)" >&2; return 1; }
    _e2e_reap_stale
    E2E_DIR=$(mktemp -d /tmp/tlspolicy-e2e.XXXXXX)
    chmod 755 "$E2E_DIR"               # postfix daemons traverse it
    echo $$ >"$E2E_DIR/owner.pid"      # lets a later run reap us if we die
    trap e2e_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP

    # Queue and data dirs live beside, not inside, the config dir: postfix
    # start warns about every file under config_directory not owned by root.
    PF_DIR=$E2E_DIR/pf
    PF_QUEUE_DIR=$E2E_DIR/pf-queue
    PF_DATA_DIR=$E2E_DIR/pf-data
    PF_MAILLOG=$PF_DIR/maillog
    local ports
    ports=$(_e2e_free_ports 2)
    PF_PORT=${ports% *}
    SINK_PORT=${ports#* }

    mkdir -p "$E2E_DIR/tls"
    E2E_CERT=$E2E_DIR/tls/cert.pem
    E2E_KEY=$E2E_DIR/tls/key.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -nodes -days 3650 -subj /CN=e2e.test \
        -keyout "$E2E_KEY" -out "$E2E_CERT" >"$E2E_DIR/tls/openssl.log" 2>&1 ||
        { cat "$E2E_DIR/tls/openssl.log" >&2; return 1; }
    chmod 644 "$E2E_CERT"; chmod 600 "$E2E_KEY"

    printf '127.0.0.1\tlocalhost\n127.0.0.1\tmta.e2e.test\n' >"$E2E_DIR/hosts"
    printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$E2E_DIR/resolv.conf"
    _e2e_log "dir=$E2E_DIR pf_port=$PF_PORT sink_port=$SINK_PORT"
}

# _e2e_reap_stale: stop instances/sinks left by an earlier run that was
# killed too hard to clean up (its owner shell is gone). Only touches
# /tmp/tlspolicy-e2e.* dirs whose owner.pid is not a live process.
_e2e_reap_stale() {
    local d owner pid f
    for d in /tmp/tlspolicy-e2e.*; do
        [ -f "$d/owner.pid" ] || continue
        owner=$(cat "$d/owner.pid" 2>/dev/null) || continue
        if [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; then
            continue                   # a live run (maybe concurrent)
        fi
        _e2e_log "reaping stale run $d"
        _e2e_stop_master "$d"
        for f in "$d"/daemon-*.pid; do
            [ -f "$f" ] || continue
            pid=$(tr -dc 0-9 <"$f")
            [ -n "$pid" ] || continue
            # only kill it if its command line names that run's dir
            if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" |
                    grep -qF -- "$d/"; then
                kill -9 "$pid" 2>/dev/null || true
            fi
        done
        for f in "$d"/sink-*.ready; do
            [ -f "$f" ] || continue
            pid=$(cat "$f")
            # only kill it if it really is that run's sink
            if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" |
                    grep -qF -- "--store $d/sink-"; then
                kill -9 "$pid" 2>/dev/null || true
            fi
        done
        rm -rf "$d"
    done
}

# _e2e_master_pid DIR: print the pid of the running master of the instance
# in E2E dir DIR, if there is one. Checks the process really is that master
# (its MAIL_CONFIG is DIR/pf) so a stale pid file never hits another process.
_e2e_master_pid() {
    local pid
    pid=$(tr -dc 0-9 2>/dev/null <"$1/pf-queue/pid/master.pid") || return 1
    [ -n "$pid" ] || return 1
    tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" |
        grep -qxF "MAIL_CONFIG=$1/pf" || return 1
    echo "$pid"
}

# _e2e_pgrp_alive PGID: print the pids in process group PGID that are not
# zombies. Dead Postfix processes are reparented to PID 1 and may stay
# zombies for a second or so until it reaps them; they count as gone.
_e2e_pgrp_alive() {
    ps -o pid=,stat= -g "$1" 2>/dev/null | awk '$2 !~ /^Z/ { print $1 }'
}

# _e2e_stop_master DIR: stop the Postfix instance of E2E dir DIR if running
# and make sure its whole process group is gone.
_e2e_stop_master() {
    local pid
    pid=$(_e2e_master_pid "$1") || return 0
    # What "postfix stop" does, minus its 1 s polling: SIGTERM to master,
    # which then terminates its children.
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do
        # master is a session leader; its children share its process group
        [ -n "$(_e2e_pgrp_alive "$pid")" ] || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null
    return 0
}

# e2e_cleanup: stop the Postfix instance and all sinks, remove E2E_DIR.
# Installed as EXIT trap by e2e_init; safe to call more than once. On a
# failing exit it first prints the tail of the maillog and sink logs.
e2e_cleanup() {
    local rc=$? name errexit=
    trap - EXIT
    [ -n "${E2E_DIR:-}" ] && [ -d "$E2E_DIR" ] || return "$rc"
    trap '' INT TERM HUP               # a second signal must not cut cleanup short
    case $- in *e*) errexit=1; set +e ;; esac
    if [ "$rc" -ne 0 ] && [ "${E2E_DUMP:-1}" = 1 ]; then
        {
            echo "---- e2e failed (exit $rc); last maillog lines ($PF_MAILLOG):"
            tail -n 60 "$PF_MAILLOG" 2>/dev/null
            for name in "${!E2E_SINK_PIDS[@]}"; do
                echo "---- sink $name log:"
                tail -n 20 "$E2E_DIR/sink-$name.log" 2>/dev/null
            done
            for f in "$E2E_DIR"/daemon-*.log; do
                [ -f "$f" ] || continue
                echo "---- $(basename "$f"):"
                tail -n 40 "$f" 2>/dev/null
            done
            echo "----"
        } >&2
    fi
    for name in "${!E2E_DAEMON_PIDS[@]}"; do
        e2e_daemon_stop "$name"
    done
    _e2e_stop_master "$E2E_DIR"
    for name in "${!E2E_SINK_PIDS[@]}"; do     # signal all, then reap each
        kill -TERM "${E2E_SINK_PIDS[$name]}" 2>/dev/null
    done
    for name in "${!E2E_SINK_PIDS[@]}"; do
        sink_stop "$name"
    done
    if [ "${E2E_KEEP:-0}" = 1 ]; then
        rm -f "$E2E_DIR/owner.pid"     # so later runs don't reap it
        _e2e_log "kept $E2E_DIR"
    else
        case $E2E_DIR in
            /tmp/tlspolicy-e2e.?*) rm -rf "$E2E_DIR" ;;
        esac
    fi
    E2E_DIR=
    trap - INT TERM HUP
    [ -z "$errexit" ] || set -e
    return "$rc"
}

# e2e_host NAME IP: make NAME resolve to IP inside the Postfix namespace.
e2e_host() {
    printf '%s\t%s\n' "$2" "$1" >>"$E2E_DIR/hosts"
}

# wait_for CMD TIMEOUT: eval CMD every 0.2 s until it succeeds (return 0) or
# TIMEOUT seconds pass (return 1). CMD is a string run with eval, e.g.
# wait_for '[ "$(sink_count tls)" -ge 2 ]' 20
wait_for() {
    local cmd=$1 timeout=${2:-10} end
    end=$(( $(date +%s%N) + timeout * 1000000000 ))
    while :; do
        if eval "$cmd"; then return 0; fi
        [ "$(date +%s%N)" -lt "$end" ] || return 1
        sleep 0.2
    done
}

# -------------------------------------------------------------- daemons --

# e2e_daemon_start NAME CMD [ARGS...]: run CMD in the background (stdin
# /dev/null, stdout and stderr appended to $E2E_DIR/daemon-NAME.log) and
# record its pid in $E2E_DIR/daemon-NAME.pid. CMD must stay in the
# foreground, and its arguments should name a file under E2E_DIR so stale
# reaping can recognise it. Returns at once; wait for readiness yourself.
e2e_daemon_start() {
    local name=$1 pid
    shift
    [ -z "${E2E_DAEMON_PIDS[$name]-}" ] || { echo "e2e: daemon $name already started" >&2; return 1; }
    "$@" </dev/null >>"$E2E_DIR/daemon-$name.log" 2>&1 &
    pid=$!
    E2E_DAEMON_PIDS[$name]=$pid
    echo "$pid" >"$E2E_DIR/daemon-$name.pid"
    _e2e_log "daemon $name started (pid $pid): $*"
}

# e2e_daemon_pid NAME: print the pid of daemon NAME (fails if not running).
e2e_daemon_pid() {
    local pid=${E2E_DAEMON_PIDS[$1]-}
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# e2e_daemon_stop NAME [SIGNAL]: send SIGNAL (default TERM) to daemon NAME,
# wait up to 5 s for it to exit (then SIGKILL) and reap it. Prints nothing;
# sets E2E_DAEMON_RC to its exit status (128+N for a signal).
# shellcheck disable=SC2034  # E2E_DAEMON_RC is for the caller
e2e_daemon_stop() {
    local name=$1 sig=${2:-TERM} pid
    E2E_DAEMON_RC=
    pid=${E2E_DAEMON_PIDS[$name]-}
    [ -n "$pid" ] || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    E2E_DAEMON_RC=0
    wait "$pid" 2>/dev/null || E2E_DAEMON_RC=$?
    unset "E2E_DAEMON_PIDS[$name]"
    rm -f "$E2E_DIR/daemon-$name.pid"
    return 0
}

# q_reasons RCPT: the delay_reason of every queued copy for RCPT (any case),
# "(no reason yet)" before the first attempt.
q_reasons() {
    pf_queue_json | "$E2E_PYTHON" -c '
import json, sys
r = sys.argv[1].lower()
for line in sys.stdin:
    if line.strip():
        for x in json.loads(line).get("recipients", []):
            if x.get("address", "").lower() == r:
                print(x.get("delay_reason", "") or "(no reason yet)")
' "$1"
}

# ---------------------------------------------------------------- sinks --

# sink_start NAME IP [--starttls]: start an aiosmtpd sink on IP:$SINK_PORT
# storing messages in $E2E_DIR/sink-NAME/; returns once it listens.
sink_start() {
    local name=$1 ip=$2 tls=${3-} args=() pid
    [ -z "${E2E_SINK_PIDS[$name]-}" ] || { echo "e2e: sink $name already started" >&2; return 1; }
    [ -z "$tls" ] || [ "$tls" = --starttls ] || { echo "e2e: sink_start: bad option $tls" >&2; return 1; }
    [ -n "$tls" ] && args=(--starttls --cert "$E2E_CERT" --key "$E2E_KEY")
    # SINK_TLS_ARGS (e.g. "--ciphers AES128-SHA --max-tls 1.2"): what the STARTTLS side offers.
    # shellcheck disable=SC2206  # word splitting wanted
    [ -n "$tls" ] && [ -n "${SINK_TLS_ARGS-}" ] && args+=($SINK_TLS_ARGS)
    mkdir -p "$E2E_DIR/sink-$name"
    rm -f "$E2E_DIR/sink-$name.ready"
    "$E2E_PYTHON" "$E2E_LIB/sink.py" --addr "$ip" --port "$SINK_PORT" \
        --store "$E2E_DIR/sink-$name" --ready "$E2E_DIR/sink-$name.ready" \
        "${args[@]}" </dev/null >>"$E2E_DIR/sink-$name.log" 2>&1 &
    pid=$!
    E2E_SINK_PIDS[$name]=$pid
    if ! wait_for "[ -s '$E2E_DIR/sink-$name.ready' ] || ! kill -0 $pid 2>/dev/null" 10 ||
       [ ! -s "$E2E_DIR/sink-$name.ready" ]; then
        echo "e2e: sink $name on $ip:$SINK_PORT did not start:" >&2
        cat "$E2E_DIR/sink-$name.log" >&2
        return 1
    fi
    _e2e_log "sink $name listening on $ip:$SINK_PORT${tls:+ (STARTTLS)}"
}

# sink_stop NAME: stop sink NAME (SIGTERM, then SIGKILL after 3 s).
sink_stop() {
    local name=$1 pid
    pid=${E2E_SINK_PIDS[$name]-}
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "E2E_SINK_PIDS[$name]"
    return 0
}

# sink_count NAME: print how many messages sink NAME has stored.
sink_count() {
    local f n=0
    for f in "$E2E_DIR/sink-$1"/*.json; do
        [ -e "$f" ] && n=$((n + 1))
    done
    echo "$n"
}

# sink_files NAME: print the message files of sink NAME, oldest first.
sink_files() {
    local f
    for f in "$E2E_DIR/sink-$1"/*.json; do
        [ -e "$f" ] && echo "$f"
    done
    return 0
}

# sink_last NAME: print the newest message file of sink NAME (fails if none).
sink_last() {
    local last
    last=$(sink_files "$1" | tail -n 1)
    [ -n "$last" ] || return 1
    echo "$last"
}

# sink_wait NAME COUNT [TIMEOUT]: wait until sink NAME holds >= COUNT messages.
sink_wait() {
    wait_for "[ \$(sink_count '$1') -ge $2 ]" "${3:-20}"
}

# sink_field FILE KEY: print one field of a stored message. Booleans print as
# true/false, null as empty, lists one item per line; KEY "data" prints the
# raw message. E.g. sink_field "$(sink_last tls)" tls  ->  true
sink_field() {
    "$E2E_PYTHON" - "$1" "$2" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1], encoding="utf-8"))[sys.argv[2]]
if isinstance(v, bool):
    print("true" if v else "false")
elif v is None:
    pass
elif isinstance(v, list):
    print("\n".join(map(str, v)))
else:
    sys.stdout.write(str(v) if sys.argv[2] == "data" else str(v) + "\n")
EOF
}

# -------------------------------------------------------------- postfix --

# _pf_write_config: write main.cf and master.cf into PF_DIR.
_pf_write_config() {
    cat >"$PF_DIR/main.cf" <<EOF
# Private Postfix instance for tlspolicy e2e tests (generated by postfix.sh).
compatibility_level = 3.6
queue_directory = $PF_QUEUE_DIR
data_directory = $PF_DATA_DIR
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-e2e
maillog_file = $PF_MAILLOG
maillog_file_prefixes = $E2E_DIR

myhostname = mta.e2e.test
mydomain = e2e.test
myorigin = \$myhostname
mydestination =
local_transport = error:5.1.1 local delivery is disabled in the e2e instance
alias_maps =
alias_database =
local_recipient_maps =
relayhost =
append_dot_mydomain = no
biff = no
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no

# Inbound: STARTTLS offered with the self-signed cert.
smtpd_tls_security_level = may
smtpd_tls_cert_file = $E2E_CERT
smtpd_tls_key_file = $E2E_KEY
smtpd_tls_loglevel = 1

# Outbound: no DNS; names come from the private hosts file; all sinks
# listen on SINK_PORT.
smtp_dns_support_level = disabled
smtp_tcp_port = $SINK_PORT
smtp_tls_security_level = may
smtp_tls_loglevel = 1
smtp_connect_timeout = 5s

# Fast retries so deferred mail is tried again within seconds.
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
transport_retry_time = 2s
delay_warning_time = 0
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
EOF
    if [ -n "$PF_MAIN_EXTRA" ]; then
        # Drop base lines for parameters PF_MAIN_EXTRA sets: a parameter set
        # twice works (last wins) but every Postfix command then warns
        # "overriding earlier entry".
        local names
        names=$(sed -n 's/^\([A-Za-z0-9_]\{1,\}\)[[:space:]]*=.*/\1/p' <<<"$PF_MAIN_EXTRA")
        awk -v names="$names" '
            BEGIN { n = split(names, a, "\n"); for (i = 1; i <= n; i++) drop[a[i]] = 1 }
            { key = $1; sub(/=.*/, "", key) }
            !(key in drop)' "$PF_DIR/main.cf" >"$PF_DIR/main.cf.tmp"
        mv "$PF_DIR/main.cf.tmp" "$PF_DIR/main.cf"
        printf '\n# PF_MAIN_EXTRA\n%s\n' "$PF_MAIN_EXTRA" >>"$PF_DIR/main.cf"
    fi

    # Every service unchrooted (chroot column n), smtpd on 127.0.0.1:PF_PORT.
    cat >"$PF_DIR/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:$PF_PORT inet n   -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    if [ -n "$PF_MASTER_EXTRA" ]; then
        printf '# PF_MASTER_EXTRA\n%s\n' "$PF_MASTER_EXTRA" >>"$PF_DIR/master.cf"
    fi
}

# _pf_backdate FILE...: set mtime 10 s in the past. Postfix reads main.cf
# (util/load_file.c) again every 0.3 s until the file is 2 s old, so each
# postconf/postfix command and daemon start right after an edit stalls up to
# 2 s. Backdating skips that; call it after editing a file Postfix loads.
_pf_backdate() {
    touch -d "@$(( $(date +%s) - 10 ))" "$@"
}

# pf_start: write the config and start the instance inside a private mount
# namespace; returns once smtpd listens on 127.0.0.1:$PF_PORT.
pf_start() {
    [ -z "$E2E_PF_MASTER_PID" ] || { echo "e2e: pf already started" >&2; return 1; }
    mkdir -p "$PF_DIR" "$PF_QUEUE_DIR" "$PF_DATA_DIR"
    chown postfix "$PF_DATA_DIR"
    _pf_write_config
    _pf_backdate "$PF_DIR/main.cf" "$PF_DIR/master.cf"
    # "postfix check"-style sanity: postconf complains about bad syntax.
    postconf -c "$PF_DIR" >/dev/null 2>"$E2E_DIR/pf-check.log" || {
        cat "$E2E_DIR/pf-check.log" >&2; return 1; }
    # shellcheck disable=SC2016  # expanded by the inner sh
    local mounts='mount --bind "$1" /etc/hosts || exit 1
        if [ -e /etc/resolv.conf ]; then mount --bind "$2" /etc/resolv.conf || exit 1; fi
        exec postfix -c "$3" start'
    if ! unshare --mount --propagation private -- /bin/sh -c "$mounts" sh \
            "$E2E_DIR/hosts" "$E2E_DIR/resolv.conf" "$PF_DIR" \
            </dev/null >"$E2E_DIR/pf-start.log" 2>&1; then
        echo "e2e: postfix start failed:" >&2
        cat "$E2E_DIR/pf-start.log" >&2
        tail -n 20 "$PF_MAILLOG" >&2 2>/dev/null
        return 1
    fi
    E2E_PF_MASTER_PID=$(_e2e_master_pid "$E2E_DIR") || {
        echo "e2e: postfix master not running after start" >&2; return 1; }
    if ! wait_for "_e2e_listening 127.0.0.1 $PF_PORT" 10; then
        echo "e2e: smtpd not listening on 127.0.0.1:$PF_PORT" >&2
        return 1
    fi
    _e2e_log "postfix master $E2E_PF_MASTER_PID, smtpd on 127.0.0.1:$PF_PORT"
}

# _e2e_listening IP PORT: true if a TCP socket listens on IP:PORT.
_e2e_listening() {
    if command -v ss >/dev/null; then
        ss -Hltn "src $1 and sport = :$2" 2>/dev/null | grep -q .
    else
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
    fi
}

# pf_stop: stop the instance (e2e_cleanup does this too).
pf_stop() {
    _e2e_stop_master "$E2E_DIR"
    E2E_PF_MASTER_PID=
}

# pf_reload: re-read main.cf/master.cf (append to them first). Waits until
# master has logged the reload. master keeps its mount namespace: reload only
# signals it, and the daemons it respawns inherit the namespace.
pf_reload() {
    local before
    before=$(grep -c 'reload -- version' "$PF_MAILLOG" 2>/dev/null || true)
    _pf_backdate "$PF_DIR/main.cf" "$PF_DIR/master.cf"
    postfix -c "$PF_DIR" reload >"$E2E_DIR/pf-reload.log" 2>&1 || {
        cat "$E2E_DIR/pf-reload.log" >&2; return 1; }
    wait_for "[ \$(grep -c 'reload -- version' '$PF_MAILLOG') -gt ${before:-0} ]" 10 || {
        echo "e2e: postfix reload not seen in maillog" >&2; return 1; }
}

# pf_send FROM TO... [-- SWAKS_ARGS...]: submit one message to the instance's
# smtpd with swaks. Prints the queue ID on success; on failure prints the
# swaks transcript to stderr and returns swaks' exit code. Recipients may
# also be given comma-separated. swaks --tls needs libnet-ssleay-perl.
pf_send() {
    local from=$1 to=() rc=0 log
    shift
    while [ $# -gt 0 ] && [ "$1" != -- ]; do to+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    [ ${#to[@]} -gt 0 ] || { echo "e2e: pf_send FROM TO..." >&2; return 2; }
    log=$(mktemp "$E2E_DIR/swaks.XXXXXX")
    swaks --server "127.0.0.1:$PF_PORT" --helo client.e2e.test \
        --from "$from" --to "$(IFS=,; echo "${to[*]}")" "$@" \
        </dev/null >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "e2e: swaks failed (exit $rc):" >&2
        cat "$log" >&2
        if grep -q 'Net::SSLeay' "$log"; then
            echo "e2e: swaks TLS options need package libnet-ssleay-perl" >&2
        fi
        return "$rc"
    fi
    sed -n 's/.*queued as \([0-9A-Za-z]*\).*/\1/p' "$log" | tail -n 1
}

# pf_flush: ask Postfix to retry all deferred mail now (postqueue -f).
pf_flush() {
    postqueue -c "$PF_DIR" -f
}

# pf_queue_json: print the queue, one JSON object per message (postqueue -j):
# {"queue_name":"deferred","queue_id":...,"sender":...,
#  "recipients":[{"address":...,"delay_reason":...}],...}
pf_queue_json() {
    postqueue -c "$PF_DIR" -j
}

# pf_queue_count: print the number of messages in the queue.
pf_queue_count() {
    pf_queue_json | grep -c . || true
}

# pf_queue_reason ADDR: print the delay_reason of recipient ADDR for each
# queued message that has it (nothing if ADDR is not queued).
pf_queue_reason() {
    pf_queue_json | "$E2E_PYTHON" -c '
import json, sys
for line in sys.stdin:
    if line.strip():
        for r in json.loads(line).get("recipients", []):
            if r.get("address", "").lower() == sys.argv[1].lower():
                print(r.get("delay_reason", ""))
' "$1"
}

# pf_queue_wait_empty [TIMEOUT]: wait until the queue is empty.
pf_queue_wait_empty() {
    # shellcheck disable=SC2016  # wait_for evals it
    wait_for '[ "$(pf_queue_count)" -eq 0 ]' "${1:-20}"
}

# pf_log: print the instance's maillog.
pf_log() {
    cat "$PF_MAILLOG"
}

# pf_postconf ARGS...: postconf against the instance (e.g. -e 'k = v', -n).
pf_postconf() {
    postconf -c "$PF_DIR" "$@"
}

# pf_postmap ARGS...: postmap with the instance's main.cf, e.g.
# pf_postmap -q tls.test socketmap:inet:127.0.0.1:10461:tlspolicy
pf_postmap() {
    postmap -c "$PF_DIR" "$@"
}
