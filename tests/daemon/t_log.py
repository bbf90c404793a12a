#!/usr/bin/python3
"""A log that stops reading must not stop the lookups.

Usage: t_log.py TLSPOLICYD

Runs tlspolicyd in the foreground with every lookup logged and its stderr
a pipe that nobody reads (a stalled journal or syslog looks the same to
the daemon). 40,000 lookups must all be answered; once the pipe is read
again, the daemon says how many log lines it had to drop.
Prints "ok - ..." or "FAIL - ..." per check; exit 1 if any failed.
"""
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "socketmap"))
from t_protocol import Client, free_port  # noqa: E402

DAEMON = sys.argv[1] if len(sys.argv) > 1 else "build/tlspolicyd"
failures = []


def check(name, ok, detail=""):
    print(f"ok - {name}" if ok else f"FAIL - {name}" + (f"\n  {detail}" if detail else ""))
    if not ok:
        failures.append(name)


def main():
    tmp = tempfile.mkdtemp(prefix="tlspolicy-log-")
    port = free_port()
    conf = os.path.join(tmp, "tlspolicy.conf")
    with open(conf, "w") as f:
        f.write(f"""
outbound = ( {{ name = "partner"; level = "encrypt"; to = [ "partner.test" ]; }} );
daemon = {{ socketmap = [ "inet:127.0.0.1:{port}" ]; log_all_lookups = true; control = ""; }};
""")
    r, w = os.pipe()
    d = subprocess.Popen([DAEMON, "-f", "-c", conf], stderr=w, stdin=subprocess.DEVNULL)
    os.close(w)
    c = None
    for _ in range(200):
        try:
            c = Client(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            time.sleep(0.05)
    answered = 0
    t0 = time.time()
    try:
        for i in range(40000):
            key = "partner.test" if i % 2 else f"host{i}.sub.partner.test"
            if c.ask("tls-policy " + key) != "OK encrypt":
                break
            answered += 1
    except OSError as e:
        print(f"# lookup {answered}: {e!r}")
    took = time.time() - t0
    check(f"stalled log: {answered} of 40000 lookups answered ({took:.1f} s) while nobody reads stderr",
          answered == 40000)
    check("stalled log: the daemon is alive", d.poll() is None)
    # Read the log again: the daemon must say it dropped lines.
    got = bytearray()
    done = threading.Event()

    def drain():
        while not done.is_set():
            chunk = os.read(r, 65536)
            if not chunk:
                break
            got.extend(chunk)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    deadline = time.time() + 5
    while time.time() < deadline and b"log lines dropped" not in got:
        time.sleep(0.1)
    # A lookup after the stall is logged again.
    c.ask("tls-policy after.partner.test")
    deadline = time.time() + 5
    while time.time() < deadline and b"after.partner.test" not in got:
        time.sleep(0.1)
    check("stalled log: the drop is logged with a count", b"log lines dropped" in got, bytes(got[-300:]))
    check("stalled log: lines are written again once the log reads", b"after.partner.test" in got)
    d.send_signal(signal.SIGTERM)
    try:
        d.wait(10)
    except subprocess.TimeoutExpired:
        d.kill()
        d.wait()
    done.set()
    check("stalled log: clean exit", d.returncode == 0, f"exit {d.returncode}")
    print(f"{len(failures)} failed" if failures else "all passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
