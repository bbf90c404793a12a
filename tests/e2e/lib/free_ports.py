#!/usr/bin/python3
"""free_ports.py N: print N distinct TCP ports free on every local address
(binding 0.0.0.0 fails if any address already uses one), chosen below the
kernel's ephemeral range so outgoing connections won't take them. Shared
by the e2e, Sendmail and benchmark scripts."""
import random
import socket
import sys

want, got = int(sys.argv[1]), []
while len(got) < want:
    p = random.randint(20000, 32000)
    if p in got:
        continue
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", p))
        got.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(" ".join(map(str, got)))
