#!/bin/sh
# MTA-STS benchmark (not a test): cache hits of tlspolicyd with MTA-STS and of
# Debian's postfix-mta-sts-resolver (in-memory cache and its shipped sqlite
# default) next to bench/const_responder, same client (bench/socketmap_load),
# same keys, same run; then cold misses (first request: TXT + fetch) against
# the fixture's own time for the same work. The peer reads
# /etc/resolv.conf and fetches from port 443, so the run happens in a private
# mount and network namespace (root): a bind-mounted resolv.conf naming the DNS
# fixture, and the HTTPS fixture on port 443 of a private loopback. Nothing
# outside the namespace is touched; everything started is stopped by PID.
# Usage: bench/mta_sts_peer.sh [BUILD_DIR]
#   DOMAINS=100 COLD=30 SECONDS_PER_RUN=3 ROUNDS=3 CONNS="1 32 256"
#   DNS_FIXTURE_PY=tests/dns/fixture.py
set -eu
cd "$(dirname "$0")/.."
B=$(cd "${1:-build}" && pwd)
[ "$(id -u)" -eq 0 ] || { echo "mta_sts_peer.sh: needs root (unshare -m -n)" >&2; exit 1; }
ulimit -n 4096
exec unshare -m -n -- sh -c '
  set -eu
  mount --make-rprivate /
  ip link set lo up
  exec /usr/bin/python3 bench/mta_sts_peer.py "$1"' mta_sts_peer "$B"
