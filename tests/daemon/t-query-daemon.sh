#!/bin/bash
# `tlspolicy query --daemon` answers what the running daemon tells Postfix,
# discovery included: the daemon's own resolver and cache, through its
# control socket. Against the DNS fixture (tests/dns): an MX-aware CIDR rule
# (the static policy alone says "may"), a SERVFAIL destination (TEMP), and
# --explain showing the DNS answers; each compared with the socketmap's answer.
# Usage: t-query-daemon.sh TLSPOLICYD TLSPOLICY
set -u
daemon=$1 cli=$2
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
pid=
fail=0
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  dns_fixture_stop >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
. "$here/../dns/fixture.sh"
dns_fixture_start "$tmp/dns" >"$tmp/fixture.log" 2>&1 || { echo "FAIL: DNS fixture did not start"; cat "$tmp/fixture.log"; exit 1; }
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$tmp/t.conf" <<CONF
default = "may";
outbound = ( { name = "enc"; level = "encrypt"; to = [ "127.0.2.0/24" ]; } );
daemon = { socketmap = [ "inet:127.0.0.1:$port" ]; control = "$tmp/ctl.sock"; };
discovery = { forwarders = [ "$DNS_FORWARDER" ]; trust_anchor_file = "$DNS_ANCHOR"; dane = "dane-only"; };
CONF
"$daemon" -c "$tmp/t.conf" -p "$tmp/pid" 2>"$tmp/daemon.err" || { echo "FAIL: daemon did not start"; cat "$tmp/daemon.err"; exit 1; }
pid=$(cat "$tmp/pid")
for i in $(seq 50); do [ -S "$tmp/ctl.sock" ] && break; sleep 0.1; done

# The socketmap's answer for one key (netstring request, one reply).
socketmap() {
  /usr/bin/python3 - "$port" "$1" <<'PY'
import socket, sys
port, key = int(sys.argv[1]), sys.argv[2]
req = ("tls-policy " + key).encode()
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(str(len(req)).encode() + b":" + req + b",")
buf = b""
while not buf.endswith(b","):
    d = s.recv(4096)
    if not d: break
    buf += d
print(buf.split(b":", 1)[1][:-1].decode())
PY
}

check() {  # KEY EXPECTED-CLI-LINE EXPECTED-SOCKETMAP-REPLY
  local got sm
  got=$("$cli" query --daemon --socket "$tmp/ctl.sock" "$1" 2>&1)
  sm=$(socketmap "$1")
  if [ "$got" = "$2" ]; then echo "ok: query --daemon $1: $got"; else echo "FAIL: query --daemon $1: got \"$got\", want \"$2\""; fail=1; fi
  if [ "$sm" = "$3" ]; then echo "ok: socketmap $1: $sm"; else echo "FAIL: socketmap $1: got \"$sm\", want \"$3\""; fail=1; fi
}
check enc.plain.test "encrypt" "OK encrypt"
check open.plain.test "may" "OK may"
check dane.dnssec.test "dane-only" "OK dane-only"
temp=$("$cli" query --daemon --socket "$tmp/ctl.sock" x.servfail.test 2>&1)
case $temp in
  "TEMP DNS lookup for x.servfail.test failed"*) echo "ok: query --daemon x.servfail.test: TEMP" ;;
  *) echo "FAIL: query --daemon x.servfail.test: got \"$temp\", want TEMP ..."; fail=1 ;;
esac
case $(socketmap x.servfail.test) in
  "TEMP "*) echo "ok: socketmap x.servfail.test: TEMP" ;;
  *) echo "FAIL: socketmap x.servfail.test is not TEMP"; fail=1 ;;
esac
ex=$("$cli" query --daemon --socket "$tmp/ctl.sock" --explain enc.plain.test 2>&1)
if grep -q "MX mx.enc.plain.test \[127.0.2.25\] in 127.0.2.0/24" <<<"$ex" && grep -q "dns: A mx.enc.plain.test: 127.0.2.25" <<<"$ex"; then
  echo "ok: explain --daemon shows the MX chain and the DNS answers"
else
  echo "FAIL: explain --daemon lacks the MX chain or DNS answers:"; echo "$ex"; fail=1
fi
# The static policy alone (the file, no DNS) would say "may": the daemon's
# answer above is discovery's, not the file's.
static=$("$cli" query -c "$tmp/t.conf" --no-dns enc.plain.test 2>&1)
[ "$static" = "may" ] && echo "ok: --no-dns enc.plain.test: may (the static answer differs)" || { echo "FAIL: --no-dns gave \"$static\""; fail=1; }
exit $fail
