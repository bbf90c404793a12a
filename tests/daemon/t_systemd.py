#!/usr/bin/python3
"""systemd integration without PID 1: readiness notification and socket activation.

Usage: t_systemd.py TLSPOLICYD

Readiness: the test plays systemd's part, a datagram socket in
NOTIFY_SOCKET, and checks READY=1 (with a STATUS= line) once the daemon
answers, RELOADING=1 then READY=1 around a SIGHUP reload, STOPPING=1 on
SIGTERM. Socket activation: systemd's own systemd-socket-activate holds a
TCP and a unix socket and starts the daemon on the first connection; the
daemon must answer on those and not bind daemon.socketmap.
Prints "ok - ..." or "FAIL - ..." per check; exit 1 if any failed.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "socketmap"))
from t_protocol import Client, free_port  # noqa: E402

DAEMON = sys.argv[1] if len(sys.argv) > 1 else "build/tlspolicyd"
failures = []


def check(name, ok, detail=""):
    print(f"ok - {name}" if ok else f"FAIL - {name}" + (f"\n  {detail}" if detail else ""))
    if not ok:
        failures.append(name)


def conf_text(port):
    return f"""
outbound = ( {{ name = "partner"; level = "encrypt"; to = [ "partner.test" ]; }} );
daemon = {{ socketmap = [ "inet:127.0.0.1:{port}" ]; control = ""; }};
"""


def notifications(sock, until, deadline=10):
    """Datagrams received until one contains `until` (or the deadline)."""
    got = []
    end = time.time() + deadline
    while time.time() < end:
        sock.settimeout(max(0.05, end - time.time()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        got.append(msg)
        if until in msg:
            break
    return got


def readiness(tmp):
    port = free_port()
    conf = os.path.join(tmp, "tlspolicy.conf")
    with open(conf, "w") as f:
        f.write(conf_text(port))
    path = os.path.join(tmp, "notify.sock")
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.bind(path)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    d = subprocess.Popen([DAEMON, "-f", "-c", conf], env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got = notifications(n, "READY=1")
        ready = [m for m in got if "READY=1" in m]
        check("notify: READY=1 sent", bool(ready), f"got {got}")
        check("notify: ... with a STATUS= line naming what is served",
              bool(ready) and "STATUS=serving: 1 outbound rules" in ready[0], f"got {got}")
        # Ready means answering.
        c = Client(("127.0.0.1", port))
        check("notify: answering when READY=1 arrives", c.ask("tls-policy partner.test") == "OK encrypt")
        d.send_signal(signal.SIGHUP)
        got = notifications(n, "READY=1")
        joined = "|".join(got)
        check("notify: SIGHUP sends RELOADING=1, then READY=1",
              "RELOADING=1" in joined and joined.index("RELOADING=1") < joined.rindex("READY=1"), f"got {got}")
        d.send_signal(signal.SIGTERM)
        got = notifications(n, "STOPPING=1")
        check("notify: SIGTERM sends STOPPING=1", any("STOPPING=1" in m for m in got), f"got {got}")
        d.wait(10)
        check("notify: exit 0", d.returncode == 0, f"exit {d.returncode}")
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()
        n.close()


def activation(tmp):
    tool = shutil.which("systemd-socket-activate")
    if not tool:
        check("socket activation: systemd-socket-activate is installed (package systemd)", False)
        return
    conf_port, act_port = free_port(), free_port()
    conf = os.path.join(tmp, "tlspolicy.conf")
    with open(conf, "w") as f:
        f.write(conf_text(conf_port))
    usock = os.path.join(tmp, "sm.sock")
    a = subprocess.Popen([tool, "-l", f"127.0.0.1:{act_port}", "-l", usock, DAEMON, "-f", "-c", conf],
                         stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if os.path.exists(usock):
                break
            time.sleep(0.05)
        c = None
        for _ in range(100):
            try:
                c = Client(("127.0.0.1", act_port), timeout=10)
                break
            except OSError:
                time.sleep(0.05)
        check("socket activation: the daemon answers on systemd's TCP socket",
              c is not None and c.ask("tls-policy partner.test") == "OK encrypt")
        u = Client(usock, timeout=10)
        check("socket activation: ... and on systemd's unix socket", u.ask("tls-policy partner.test") == "OK encrypt")
        try:
            Client(("127.0.0.1", conf_port), timeout=1).close()
            bound = True
        except OSError:
            bound = False
        check("socket activation: daemon.socketmap is not bound then", not bound)
    finally:
        a.send_signal(signal.SIGTERM)
        try:
            a.wait(10)
        except subprocess.TimeoutExpired:
            a.kill()
            a.wait()
    err = a.stderr.read().decode(errors="replace")
    check("socket activation: the log says where the sockets came from", "socket(s) from systemd" in err, err[-600:])


def main():
    for fn in (readiness, activation):
        tmp = tempfile.mkdtemp(prefix="tlspolicy-sd-")
        try:
            fn(tmp)
        except Exception as e:
            check(f"{fn.__name__}: ran to the end", False, repr(e))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failed" if failures else "all passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
