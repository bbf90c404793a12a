#!/bin/sh
# Discovery benchmark (not a test; prints figures, asserts nothing):
# tlspolicyd with an MX-aware rule (CIDR entry: every destination needs its
# MX hosts' addresses from DNS) against tlspolicyd with a static rule set,
# same keys, same run, the DNS fixture of tests/dns (unbound on loopback,
# zone bulk.test: d0..dN MX 10 mx.bulk.test) as the forwarder.
#   1. cold miss: one connection asking names never asked before, against
#      the fixture's own time for the same kind of question (bench/dns_rtt,
#      MX of fresh names over UDP) and the static answer's time;
#   2. RSS of the daemon before and after NDEST (100k) destinations are
#      cached (warm-up by a 64-connection client);
#   3. cache hits: throughput and p99 at 1/32/256 connections, one request
#      in flight each (Postfix's pattern), interleaved with the static daemon,
#      best of ROUNDS rounds of SECONDS_PER_RUN s.
# Goals (issue #13): hits >= 0.9 of static; cold miss < 1 ms over the DNS
# time; the RSS figure is reported per destination.
# Usage: bench/discovery.sh [BUILD_DIR]   (needs tlspolicyd, socketmap_load,
#        dns_rtt built there). NDEST, NCOLD, ROUNDS, SECONDS_PER_RUN tune it;
#        TRUST_AD=1 runs the discovery daemon with trust_forwarder_ad = true
#        (the c-ares backend) instead of libunbound with the trust anchor.
# Stops only what it started, by PID.
set -eu
cd "$(dirname "$0")/.."
B=${1:-build}
SECS=${SECONDS_PER_RUN:-3}
ROUNDS=${ROUNDS:-3}
N=${NDEST:-100000}
NCOLD=${NCOLD:-5000}
for t in tlspolicyd socketmap_load dns_rtt; do
  [ -x "$B/$t" ] || { echo "discovery.sh: $B/$t missing (cmake --build $B)" >&2; exit 1; }
done
OUT=$(mktemp -d /tmp/tlspolicy-bench-dns.XXXXXX)
FPID='' SPID='' DPID=''
cleanup() {
  for p in $SPID $DPID $FPID; do kill "$p" 2>/dev/null || true; done
  for p in $SPID $DPID $FPID; do wait "$p" 2>/dev/null || true; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------- fixture --
/usr/bin/python3 tests/dns/fixture.py --dir "$OUT/dns" --bulk $((N + 2 * NCOLD)) >"$OUT/fixture.log" 2>&1 &
FPID=$!
i=0
while [ ! -s "$OUT/dns/fixture.env" ]; do
  kill -0 "$FPID" 2>/dev/null || { cat "$OUT/fixture.log" >&2; exit 1; }
  i=$((i + 1)); [ "$i" -lt 600 ] || { echo "fixture not ready" >&2; exit 1; }
  sleep 0.1
done
. "$OUT/dns/fixture.env"

# Keys: N for the cache, NCOLD never asked before the cold run, NCOLD for
# the fixture's own time (fresh for unbound too).
/usr/bin/python3 - "$OUT" "$N" "$NCOLD" <<'EOF'
import sys
out, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def w(f, a, b):
    with open(out + "/" + f, "w") as fh:
        fh.writelines("d%d.bulk.test\n" % i for i in range(a, b))
w("hit.keys", 0, n); w("cold.keys", n, n + c); w("fixture.keys", n + c, n + 2 * c)
EOF

# ------------------------------------------------------------- daemons --
free_port() { /usr/bin/python3 "$PWD/tests/e2e/lib/free_ports.py" 1; }
PS=$(free_port); PD=$(free_port)
while [ "$PD" = "$PS" ]; do PD=$(free_port); done
cat >"$OUT/static.conf" <<EOF
default = "may";
outbound = ( { name = "force-encrypt"; level = "encrypt"; to = [ "enc.plain.test" ]; } );
daemon = { socketmap = [ "inet:127.0.0.1:$PS" ]; max_connections = 2000; log_rule_lookups = false; };
EOF
cat >"$OUT/discovery.conf" <<EOF
default = "may";
discovery = {
  forwarders = [ "$DNS_FORWARDER" ];
  $(if [ "${TRUST_AD:-0}" = 1 ]; then echo 'trust_forwarder_ad = true;'; else echo "trust_anchor_file = \"$DNS_ANCHOR\";"; fi)
  query_timeout = 2000;
  deadline = 5000;
  max_outstanding = 1000;
  cache_entries = $((3 * N + 3 * NCOLD + 1000));
  dane = "off";
  on_dns_failure = "defer";
};
outbound = ( { name = "force-encrypt"; level = "encrypt"; to = [ "127.0.2.0/24" ]; } );
daemon = { socketmap = [ "inet:127.0.0.1:$PD" ]; max_connections = 2000; log_rule_lookups = false; };
EOF
ulimit -n 4096
"$B/tlspolicyd" -f -c "$OUT/static.conf" 2>"$OUT/static.log" & SPID=$!
"$B/tlspolicyd" -f -c "$OUT/discovery.conf" 2>"$OUT/discovery.log" & DPID=$!
listening() { ss -Hltn "src 127.0.0.1 and sport = :$1" 2>/dev/null | grep -q .; }
i=0
until listening "$PS" && listening "$PD"; do
  for p in $SPID $DPID; do
    kill -0 "$p" 2>/dev/null || { echo "tlspolicyd exited:" >&2; cat "$OUT/static.log" "$OUT/discovery.log" >&2; exit 1; }
  done
  i=$((i + 1)); [ "$i" -lt 100 ] || { echo "tlspolicyd not listening" >&2; exit 1; }
  sleep 0.1
done
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
# utime and stime of a process, in clock ticks (fields 14 and 15 of
# /proc/PID/stat, counted after the ")" that ends the command name).
cpu() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12, $13 }'; }
field() { echo "$2" | tr ' ' '\n' | sed -n "s|^$1=||p" | tr -d 'us'; }

a=$(echo "tls-policy d0.bulk.test" | awk '{ printf "%d:%s,", length($0), $0 }')
first=$(/usr/bin/python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(sys.argv[2].encode()); r = s.recv(4096).decode(errors="replace"); print(r[r.find(":") + 1:].rstrip(","))' "$PD" "$a")
echo "discovery daemon answers d0.bulk.test with: $first (static: may)"
case $first in *OK*) ;; *) echo "(not an OK answer: the figures below measure failures)";; esac
echo

# ---------------------------------------------------------- cold miss --
echo "1. cold miss (one connection, $NCOLD names never asked; 1 s):"
fx=$("$B/dns_rtt" 127.0.0.1 "$DNS_PORT" MX "$OUT/fixture.keys")
cold=$("$B/socketmap_load" "$PD" tls-policy "$OUT/cold.keys" 1 1 | tail -1) || true
stat=$("$B/socketmap_load" "$PS" tls-policy "$OUT/cold.keys" 1 1 | tail -1) || true
echo "  fixture's DNS (MX, fresh names, UDP): $fx"
echo "  tlspolicyd, discovery:                $cold"
echo "  tlspolicyd, static:                   $stat"
creq=$(field requests "$cold")
[ "${creq:-0}" -le "$NCOLD" ] || echo "  (note: $creq requests > $NCOLD names: some were hits; raise NCOLD)"
awk -v c50="$(field p50 "$cold")" -v c99="$(field p99 "$cold")" -v f50="$(field p50 "$fx")" \
    -v f99="$(field p99 "$fx")" -v s50="$(field p50 "$stat")" 'BEGIN {
  a = c50 - f50
  printf "  added over the fixture'"'"'s DNS time: p50 %d us (p99 %d us vs %d us); over DNS + static answer: %d us (goal < 1000 us: %s)\n",
    a, c99, f99, c50 - f50 - s50, (a < 1000 ? "MET" : "MISSED") }'
echo

# ---------------------------------------------------------------- RSS --
echo "2. memory for $N cached destinations:"
r0s=$(rss "$SPID"); r0=$(rss "$DPID")
t0=$(date +%s%N)
/usr/bin/python3 - "$PD" "$OUT/hit.keys" <<'EOF' || true
import socket, sys, threading
port, keys = int(sys.argv[1]), [k.strip() for k in open(sys.argv[2]) if k.strip()]
bad = []
def work(ks):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rb")
    for k in ks:
        q = ("tls-policy " + k).encode()
        s.sendall(b"%d:%s," % (len(q), q))
        n = b""
        while (c := f.read(1)) not in (b":", b""):
            n += c
        body = f.read(int(n or 0)); f.read(1)
        if not body.startswith(b"OK "):
            bad.append(body)
ts = [threading.Thread(target=work, args=(keys[i::64],)) for i in range(64)]
for t in ts: t.start()
for t in ts: t.join()
print("  warm-up: %d names asked over 64 connections, %d not OK%s" % (len(keys), len(bad), (": e.g. %r" % bad[0]) if bad else ""))
EOF
t1=$(date +%s%N)
sleep 1
r1=$(rss "$DPID"); r1s=$(rss "$SPID")
awk -v n="$N" -v t="$(( (t1 - t0) / 1000000 ))e-3" -v r0="$r0" -v r1="$r1" -v s0="$r0s" -v s1="$r1s" 'BEGIN {
  printf "  warm-up took %.1f s (%.0f cold misses/s at 64 connections)\n", t, (t > 0 ? n / t : 0)
  printf "  RSS static %.1f -> %.1f MiB; discovery %.1f -> %.1f MiB: %.0f bytes per cached destination\n",
    s0 / 1024, s1 / 1024, r0 / 1024, r1 / 1024, (r1 - r0) * 1024 / n }'
echo

# --------------------------------------------------------- cache hits --
echo "3. cache hits ($N destinations cached), best of $ROUNDS interleaved rounds of $SECS s:"
printf '  %-5s %-10s %10s %9s %9s %7s %15s\n' conns server req/s p50_us p99_us failed cpu_us/req_usr/sys
: >"$OUT/runs.txt"
for c in 1 32 256; do
  for _ in $(seq "$ROUNDS"); do
    for server in static discovery; do
      port=$PS; [ $server = discovery ] && port=$PD
      pid=$SPID; [ $server = discovery ] && pid=$DPID
      c0=$(cpu "$pid")
      line=$("$B/socketmap_load" "$port" tls-policy "$OUT/hit.keys" "$c" "$SECS" | tail -1) || true
      c1=$(cpu "$pid")
      # The daemon's own CPU (user, system) per request over the run: less
      # at the mercy of other load than req/s.
      cpr=$(awk -v a="$c0" -v b="$c1" -v n="$(field requests "$line")" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        if (n > 0) printf "cpu_us=%.1f/%.1f", (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) * 1e6 / hz / n }')
      echo "$server $line $cpr" >>"$OUT/runs.txt"
    done
  done
  for server in static discovery; do
    line=$(grep "^$server connections=$c " "$OUT/runs.txt" | awk -F'req/s=' '{ split($2, a, " "); print a[1], $0 }' | sort -n -r | head -1 | cut -d' ' -f2-)
    rps=$(field 'req/s' "$line"); p50=$(field p50 "$line"); p99=$(field p99 "$line"); failed=$(field failed "$line")
    cpr=$(echo "$line" | tr ' ' '\n' | sed -n 's|^cpu_us=||p')
    printf '  %-5s %-10s %10s %9s %9s %7s %15s\n' "$c" "$server" "$rps" "$p50" "$p99" "$failed" "$cpr"
    eval "${server}_rps_$c=$rps ${server}_p99_$c=$p99"
  done
done
for c in 1 32 256; do
  eval "a=\$discovery_rps_$c b=\$static_rps_$c pa=\$discovery_p99_$c pb=\$static_p99_$c"
  awk -v c="$c" -v a="$a" -v b="$b" -v pa="$pa" -v pb="$pb" 'BEGIN {
    r = (b > 0 ? a / b : 0); q = (pb > 0 ? pa / pb : 0)
    printf "  C=%-4s hits/static req/s %.2f (goal >= 0.90: %s), p99 %.2fx static\n", c, r, (r >= 0.9 ? "MET" : "MISSED"), q }'
done
# Mean over every round: the daemon's CPU per request, user + system.
for c in 1 32 256; do
  grep " connections=$c " "$OUT/runs.txt" | sed 's|cpu_us=\([0-9.]*\)/\([0-9.]*\)|cpu \1 \2|' | awk -v c="$c" '
    { for (i = 1; i < NF; i++) if ($i == "cpu") { u[$1] += $(i + 1); k[$1] += $(i + 2); n[$1]++ } }
    END { if (n["static"] && n["discovery"]) {
      su = u["static"] / n["static"]; sk = k["static"] / n["static"]; du = u["discovery"] / n["discovery"]; dk = k["discovery"] / n["discovery"]
      printf "  C=%-4s daemon CPU per request (user+sys, mean of the rounds): static %.1f+%.1f us, hits %.1f+%.1f us (%.2fx)\n",
        c, su, sk, du, dk, (su + sk > 0 ? (du + dk) / (su + sk) : 0) } }'
done
echo "  RSS after the runs: discovery $(($(rss "$DPID") / 1024)) MiB, static $(($(rss "$SPID") / 1024)) MiB"
