#!/usr/bin/python3
"""How long the idle sweep holds tlspolicyd's loop when many connections
expire at once (a measurement, not a test).

Usage: bench/sweep_stall.py TLSPOLICYD [CONNECTIONS]   (default 4000)

Opens CONNECTIONS idle connections to a daemon with idle_timeout = 11, then
asks one question every millisecond on another connection (which stays
active) until the idle ones have all been closed, and prints the slowest
answers around the expiry: the loop's stall is the worst one minus the
usual latency. About 15 s; loopback only.
"""
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

daemon = sys.argv[1] if len(sys.argv) > 1 else "build/tlspolicyd"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
tmp = tempfile.mkdtemp(prefix="tlspolicy-sweep-")
conf = os.path.join(tmp, "c.conf")
with open(conf, "w") as f:
    f.write(f'default = "may";\ndaemon = {{ socketmap = [ "inet:127.0.0.1:{port}" ]; idle_timeout = 11; '
            f'max_connections = {n + 100}; }};\n')
d = subprocess.Popen([daemon, "-f", "-c", conf], stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
time.sleep(0.5)
idle = []
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    idle.append(c)
probe = socket.create_connection(("127.0.0.1", port))
probe.settimeout(5)
req = b"23:tls-policy partner.test,"
lat = []
t_open = time.monotonic()
while time.monotonic() - t_open < 14:
    t0 = time.monotonic()
    probe.sendall(req)
    probe.recv(100)
    lat.append((time.monotonic() - t0, t0 - t_open))
    time.sleep(0.001)
left = len(os.listdir(f"/proc/{d.pid}/fd"))
d.send_signal(signal.SIGTERM)
d.wait()
lat.sort()
print(f"{n} connections expiring together; {len(lat)} probes; daemon fds left {left}")
print(f"median {1000 * lat[len(lat) // 2][0]:.2f} ms; slowest: " +
      ", ".join(f"{1000 * l:.1f} ms at {t:.1f} s" for l, t in lat[-5:][::-1]))
