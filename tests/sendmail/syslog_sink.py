#!/usr/bin/python3
"""Minimal syslog receiver for t-sendmail.sh: binds a UNIX datagram socket
(the private /dev/log of Sendmail's mount namespace points at it) and appends
each message as one line to a file. --ready FILE is written once bound.
Exits 0 on SIGTERM."""

import argparse
import os
import signal
import socket
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ready")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        os.unlink(a.socket)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(a.socket)
    os.chmod(a.socket, 0o666)
    if a.ready:
        with open(a.ready, "w") as f:
            f.write("%d\n" % os.getpid())
    with open(a.out, "a", buffering=1, encoding="utf-8") as f:
        while True:
            d = s.recv(65536)
            f.write(d.decode("utf-8", "replace").rstrip("\n\0") + "\n")


if __name__ == "__main__":
    sys.exit(main())
