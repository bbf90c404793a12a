# shellcheck shell=bash
# tests/dns/fixture.sh -- start and stop the DNS fixture (fixture.py) from a
# bash test. Source it, then:
#
#   dns_fixture_start DIR [FIXTURE_ARGS...]   # e.g. --resolver53 --tlsa-cert C
#   ... use $DNS_FORWARDER $DNS_ANCHOR $DNS_RESOLVER $DNS_TLSA_GOOD ...
#   dns_fixture_stop
#
# dns_fixture_start runs fixture.py --dir DIR in the background, waits until
# it has written DIR/fixture.env (every zone answers) and sources it, so the
# DNS_* variables of fixture.py's header are set. DNS_FIXTURE_PID is the
# fixture's pid; stop it only with dns_fixture_stop (SIGTERM to that pid; the
# fixture stops its own unbound by PID and exits).
#
# In an e2e test (tests/e2e/lib/postfix.sh), prefer
#   e2e_daemon_start dns /usr/bin/python3 "$DNS_FIXTURE_PY" --dir "$E2E_DIR/dns" ...
#   dns_fixture_wait "$E2E_DIR/dns" "$(e2e_daemon_pid dns)"
# so that e2e_cleanup stops it and a killed run's fixture is reaped.

DNS_FIXTURE_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fixture.py
DNS_FIXTURE_PID=

# dns_fixture_wait DIR PID [TIMEOUT]: wait for DIR/fixture.env while PID
# lives, then source it. Fails (printing the log hint) if PID exits first.
dns_fixture_wait() {
    local dir=$1 pid=$2 limit=${3:-60} i=0
    while [ ! -s "$dir/fixture.env" ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "dns fixture: exited before it was ready (see $dir/unbound.log)" >&2
            return 1
        fi
        i=$((i + 1))
        [ "$i" -le $((limit * 10)) ] || { echo "dns fixture: not ready after ${limit}s" >&2; return 1; }
        sleep 0.1
    done
    # shellcheck disable=SC1091
    . "$dir/fixture.env"
}

# dns_fixture_start DIR [ARGS...]: start the fixture (output in DIR.log).
dns_fixture_start() {
    local dir=$1
    shift
    mkdir -p "$dir"
    /usr/bin/python3 "$DNS_FIXTURE_PY" --dir "$dir" "$@" </dev/null >"$dir.log" 2>&1 &
    DNS_FIXTURE_PID=$!
    dns_fixture_wait "$dir" "$DNS_FIXTURE_PID" || { cat "$dir.log" >&2; return 1; }
}

# dns_fixture_stop: SIGTERM the fixture started by dns_fixture_start, wait.
dns_fixture_stop() {
    [ -n "$DNS_FIXTURE_PID" ] || return 0
    kill -TERM "$DNS_FIXTURE_PID" 2>/dev/null || true
    wait "$DNS_FIXTURE_PID" 2>/dev/null || true
    DNS_FIXTURE_PID=
}
