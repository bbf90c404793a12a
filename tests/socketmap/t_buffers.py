#!/usr/bin/python3
"""The socketmap server's buffers and connection life cycle, against the real
tlspolicyd over real loopback sockets.

Usage: t_buffers.py TLSPOLICYD

  pipelining  10,000 pipelined requests whose replies total ~6 MB, read by a
              fast reader and by a slow one (small reads with pauses): every
              reply arrives, in order, while another client keeps being
              answered (no stall once a round's replies pass 64 KiB)
  memory      clients that pipeline large-reply requests forever (one reads
              its answers, one never does): the daemon's VmRSS stays bounded
              (input backpressure, capped input buffer)
  mass close  300 connections with pending replies closing at once by
              reset, half-close, close, malformed frame and read-then-close:
              the daemon survives (under ASan this is where a use-after-free
              in the write path showed) and keeps answering
  warnings    10,000 unknown-map and malformed requests give a handful of
              rate-limited warning lines, not 10,000; no control character
              from a client reaches the log

Prints "ok - ..." / "FAIL - ..." and "# ..." figures; exits 1 on any failure.
"""
import fcntl
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from t_protocol import free_port, ns  # noqa: E402  (one copy of the socketmap client helpers)

DAEMON = sys.argv[1] if len(sys.argv) > 1 else "build/tlspolicyd"
failures = []
# A fingerprint policy with several match= values: a ~560-byte reply.
FP = ":".join(["AB"] * 32)
LONG_LEVEL = "fingerprint" + "".join(f" match={FP}" for _ in range(6))
LONG_REPLY = "OK " + LONG_LEVEL


def check(name, cond, detail=""):
    if cond:
        print(f"ok - {name}")
    else:
        print(f"FAIL - {name}" + (f"\n  {detail}" if detail else ""))
        failures.append(name)
    sys.stdout.flush()


def note(msg):
    print("# " + msg)
    sys.stdout.flush()


def parse(buf):
    """Complete netstrings at the start of buf: (list of bytes, rest)."""
    out = []
    while True:
        colon = buf.find(b":")
        if colon <= 0:
            return out, buf
        n = int(buf[:colon])
        if len(buf) < colon + n + 2:
            return out, buf
        if buf[colon + 1 + n:colon + 2 + n] != b",":
            raise ValueError("bad netstring from daemon: %r" % buf[:80])
        out.append(buf[colon + 1:colon + 1 + n])
        buf = buf[colon + n + 2:]


def connect(addr, timeout=5.0, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(addr)
    return s


def ask(s, req):
    s.sendall(ns(req))
    buf = b""
    while True:
        got, buf = parse(buf)
        if got:
            return got[0].decode()
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Daemon:
    def __init__(self, tmp):
        self.port = free_port()
        self.addr = ("127.0.0.1", self.port)
        self.unix = os.path.join(tmp, "sm.sock")
        conf = os.path.join(tmp, "tlspolicy.conf")
        with open(conf, "w") as f:
            f.write(f"""
default = "may";
outbound = (
  {{ name = "partner"; level = "encrypt"; to = [ "partner.test" ]; }},
  {{ name = "long"; level = "{LONG_LEVEL}"; to = [ "fp.test" ]; }}
);
daemon = {{
  socketmap = [ "inet:127.0.0.1:{self.port}", "unix:{self.unix}" ];
  max_connections = 2000;
  log_rule_lookups = false;
}};
""")
        self.logpath = os.path.join(tmp, "daemon.log")
        self.log = open(self.logpath, "w+")
        env = dict(os.environ)
        # Under ASan the quarantine of freed memory (256 MB by default) would
        # count as RSS; keep it small enough for the memory bound to mean
        # something (harmless for a build without ASan).
        env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=1").lstrip(":")
        self.p = subprocess.Popen([DAEMON, "-f", "-c", conf], stderr=self.log, stdin=subprocess.DEVNULL, env=env)
        for _ in range(200):
            try:
                connect(self.addr).close()
                return
            except OSError:
                time.sleep(0.05)

    def alive(self):
        return self.p.poll() is None

    def text(self):
        self.log.flush()
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return "hung"


class Bystander(threading.Thread):
    """Asks one question every 10 ms on its own connection; records latency."""

    def __init__(self, addr):
        super().__init__(daemon=True)
        self.addr, self.stop, self.lat, self.wrong = addr, False, [], 0

    def run(self):
        s = connect(self.addr, timeout=10)
        while not self.stop:
            t0 = time.monotonic()
            try:
                r = ask(s, "tls-policy partner.test")
            except OSError:
                r = None
            self.lat.append(time.monotonic() - t0)
            if r != "OK encrypt":
                self.wrong += 1
                return
            time.sleep(0.01)
        s.close()


def pipelined(d, n, chunk, pause):
    """Sends n pipelined requests (from a writer thread) and reads replies in
    `chunk`-byte reads with `pause` seconds between them. Returns (replies in
    order, first wrong index or None, seconds)."""
    keys = ["fp.test" if i % 4 else f"n{i}.test" for i in range(n)]
    want = [LONG_REPLY if i % 4 else "OK may" for i in range(n)]
    data = b"".join(ns("tls-policy " + k) for k in keys)
    s = connect(d.addr, timeout=5)

    def writer():
        try:
            s.sendall(data)
        except OSError:
            pass

    w = threading.Thread(target=writer, daemon=True)
    t0 = time.monotonic()
    w.start()
    buf, got = b"", []
    try:
        while len(got) < n:
            chunk_data = s.recv(chunk)
            if not chunk_data:
                break
            buf += chunk_data
            replies, buf = parse(buf)
            got.extend(r.decode() for r in replies)
            if pause:
                time.sleep(pause)
    except socket.timeout:
        pass
    secs = time.monotonic() - t0
    s.close()
    w.join(1)
    bad = next((i for i, (g, wv) in enumerate(zip(got, want)) if g != wv), None)
    return got, want, bad, secs


def test_pipelining(d):
    by = Bystander(d.addr)
    by.start()
    n = 10000
    for label, chunk, pause in (("fast reader", 65536, 0), ("slow reader (4 KiB reads, 1 ms pauses)", 4096, 0.001)):
        got, want, bad, secs = pipelined(d, n, chunk, pause)
        total = sum(len(w) for w in want)
        note(f"{label}: {len(got)} of {n} replies ({total / 1e6:.1f} MB) in {secs:.2f} s")
        check(f"{n} pipelined requests, {label}: every reply arrives", len(got) == n, f"got {len(got)} replies")
        check(f"{n} pipelined requests, {label}: replies in order and right", bad is None and len(got) == n,
              f"first wrong at {bad}: {got[bad][:60] if bad is not None else ''!r}")
    by.stop = True
    by.join(5)
    worst = max(by.lat) if by.lat else None
    note(f"bystander: {len(by.lat)} answers meanwhile, worst {1000 * (worst or 0):.1f} ms")
    check("another client is answered meanwhile, every answer right", by.wrong == 0 and len(by.lat) >= 20,
          f"{len(by.lat)} answers, {by.wrong} wrong or missing")
    check("another client is answered meanwhile within 1 s each", worst is not None and worst < 1.0,
          f"worst {worst}")


def test_memory(d):
    """Pipelines large-reply requests forever; the daemon's RSS must stay bounded."""
    base = rss_kb(d.p.pid)
    d.first_bad = time.monotonic()  # the unknown-map client below starts the warnings' 10 s window
    stop = threading.Event()
    block = b"".join(ns("tls-policy fp.test") for _ in range(2000))  # ~1.1 MB of replies
    unknown = b"".join(ns("x" * 60 + f"{i} k") for i in range(1000))  # PERM unknown map name ...

    def reader_client(payload):
        s = connect(d.addr, timeout=2)

        def drain():
            while not stop.is_set():
                try:
                    if not s.recv(1 << 20):
                        return
                except OSError:
                    return

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        try:
            while not stop.is_set():
                s.sendall(payload)
        except OSError:
            pass
        t.join(2)
        s.close()

    def nonreader_client():
        s = connect(d.addr, timeout=0.5)
        try:
            while not stop.is_set():
                try:
                    s.sendall(block)
                except socket.timeout:
                    pass
        except OSError:
            pass
        s.close()

    threads = [threading.Thread(target=reader_client, args=(block,), daemon=True),
               threading.Thread(target=reader_client, args=(unknown,), daemon=True),
               threading.Thread(target=nonreader_client, daemon=True)]
    for t in threads:
        t.start()
    # Warm-up (buffers reach their working size; under ASan the quarantine of
    # freed memory fills), then the RSS must stay flat: without a bound it
    # grows by megabytes a second.
    time.sleep(1.5)
    warm = peak = rss_kb(d.p.pid)
    end = time.monotonic() + 4
    while time.monotonic() < end and d.alive():
        time.sleep(0.2)
        peak = max(peak, rss_kb(d.p.pid))
    stop.set()
    for t in threads:
        t.join(5)
    note(f"VmRSS {base} kB at rest, {warm} kB after 1.5 s of 3 clients pipelining, peak {peak} kB 4 s later")
    # Unbounded, a RelWithDebInfo daemon grew 37 MB in these 4 s (ASan's,
    # slower, 5 MB); bounded it stays within a few hundred kB (ASan's
    # allocator adds a few MB of its own).
    check("daemon RSS stays flat (< 8 MB growth in 4 s) under endless pipelining", peak - warm < 8 * 1024,
          f"grew by {(peak - warm) // 1024} MB")
    s = connect(d.addr)
    check("daemon answers after the pipelining clients leave", ask(s, "tls-policy partner.test"), "OK encrypt")
    s.close()


def test_mass_close(d):
    """Hundreds of connections with replies pending close at once, every way.

    Over the unix socket: its send buffer (~200 KB) fills with a few hundred
    KB of unread replies, so the daemon holds replies of its own for each
    connection (over loopback TCP the kernel would take megabytes first)."""
    n_req = 4000  # ~88 KB of requests, ~2.2 MB of replies
    one = ns("tls-policy fp.test")
    kinds = [0, 1, 2, 3, 4, 5] * 40  # 240 connections
    conns = []
    for kind in kinds:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(d.unix)
        except OSError as e:
            check(f"{len(kinds)} connections open", False, repr(e))
            return
        conns.append((kind, s))

    def queued(s):
        return struct.unpack("i", fcntl.ioctl(s, termios.FIONREAD, b"\0\0\0\0"))[0]

    # First the clients that will leave (0, 1, 2) send 50 requests at a time
    # until their socket stops taking all of the replies (FIONREAD: what the
    # daemon managed to send them): the daemon then holds a few KB of
    # replies for each, the state where closing used to free a connection
    # still in use.
    step = 50
    per_step = step * len(ns(LONG_REPLY))
    filling = {i: 0 for i, (kind, s) in enumerate(conns) if kind < 3}
    for _ in range(30):
        if not filling:
            break
        for i in filling:
            conns[i][1].sendall(one * step)
        last, end = None, time.monotonic() + 5
        while time.monotonic() < end:  # until the daemon is done with this step
            time.sleep(0.02)
            now = [queued(conns[i][1]) for i in filling]
            if now == last:
                break
            last = now
        for i in list(filling):
            q = queued(conns[i][1])
            if q < filling[i] + per_step:
                del filling[i]  # full: the rest waits in the daemon
            else:
                filling[i] = q
    # And 60 loopback TCP clients with a tiny receive buffer and ~56 KB of
    # replies each, which will reset (SO_LINGER 0).
    resetters = []
    for _ in range(60):
        s = connect(d.addr, rcvbuf=2048)
        s.sendall(one * 100)
        resetters.append(s)
    # Then the others send 4000 requests each (the daemon is busy answering
    # them) while the leavers go, every way at once.
    for kind, s in conns:
        if kind >= 3:
            s.sendall(one * n_req + (b"garbage!" if kind == 4 else b""))
    for s in resetters:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    for kind, s in conns:
        try:
            if kind == 0:    # close with replies unread
                s.close()
            elif kind == 1:  # half-close, then never read
                s.shutdown(socket.SHUT_WR)
            elif kind == 2:  # read a little, then close
                s.recv(1000)
                s.close()
            elif kind == 3:  # half-close, then read everything (kind 3 is checked below)
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    # Kinds 3 (half-closed), 4 (malformed frame last) and 5 (well-behaved)
    # now read everything; the daemon closes 3 and 4 once all is out.
    ok = {3: 0, 4: 0, 5: 0}
    for kind, s in conns:
        if kind not in ok:
            continue
        buf, got, eof = b"", [], False
        try:
            while len(got) < n_req + (kind == 4) or kind in (3, 4):
                chunk = s.recv(1 << 16)
                if not chunk:
                    eof = True
                    break
                buf += chunk
                r, buf = parse(buf)
                got.extend(r)
        except OSError:
            pass
        right = len(got) == n_req + (kind == 4) and all(g.decode() == LONG_REPLY for g in got[:n_req])
        if kind == 4:
            right = right and got[-1].startswith(b"PERM malformed")
        if right and (eof or kind == 5):
            ok[kind] += 1
    for kind, s in conns:
        if kind in (1, 3, 4, 5):
            s.close()
    check(f"daemon survives {len(kinds)} connections closing at once with replies pending", d.alive())
    check(f"half-closed clients get all {n_req} replies, then the close", ok[3] == 40, f"{ok[3]} of 40")
    check(f"malformed-frame clients get all {n_req} replies, then PERM, then the close", ok[4] == 40,
          f"{ok[4]} of 40")
    check(f"well-behaved clients among them get all {n_req} replies", ok[5] == 40, f"{ok[5]} of 40")
    if d.alive():
        try:
            s = connect(d.addr)
            r = ask(s, "tls-policy partner.test")
            s.close()
        except OSError as e:
            r = repr(e)
        check("daemon answers after the mass close", r == "OK encrypt", repr(r))
        fds = len(os.listdir(f"/proc/{d.p.pid}/fd"))
        end = time.monotonic() + 5
        while time.monotonic() < end and fds > 20:
            time.sleep(0.1)
            fds = len(os.listdir(f"/proc/{d.p.pid}/fd"))
        check("every closed connection's descriptor is released", fds <= 20, f"{fds} open")


def test_warnings(d):
    s = connect(d.addr, timeout=10)
    reqs = [ns(f"nosuch{i}\x1b[31m\n map") if i % 2 else ns("tls-policy") for i in range(10000)]
    s.sendall(b"".join(reqs))
    buf, got = b"", []
    try:
        while len(got) < len(reqs):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
            r, buf = parse(buf)
            got.extend(r)
    except socket.timeout:
        pass
    check("10,000 unknown-map and malformed requests all answered with PERM",
          len(got) == len(reqs) and all(g.startswith(b"PERM ") for g in got), f"{len(got)} replies")
    # Once the memory test's 10 s window is over, one more: whichever line
    # came last must give the count of those left out (thousands).
    time.sleep(max(0.0, getattr(d, "first_bad", 0) + 10.5 - time.monotonic()))
    ask(s, "nosuchmap x")
    s.close()
    time.sleep(0.5)
    text = d.text()
    # Over the whole run: the memory test's unknown-map client sent many
    # thousands more before these 10,000.
    lines = [ln for ln in text.splitlines() if "unknown map name" in ln or "malformed request" in ln]
    note(f"{len(lines)} warning lines for over 10,000 bad requests")
    check("client-triggered warnings are rate-limited (1..4 lines for over 10,000)", 1 <= len(lines) <= 4,
          f"{len(lines)} lines: {lines[:3]!r}")
    last = lines[-1] if lines else ""
    m = re.search(r"\((\d+) more like this in the last \d+ s, not logged\)$", last)
    check("the next warning line gives the count of those left out (thousands)",
          m is not None and int(m.group(1)) >= 1000, repr(last[-120:]))
    check("no control character from a client reaches the log",
          "\x1b" not in text and not any(ch < " " and ch != "\t" for ln in lines for ch in ln), repr(lines[:2]))


def main():
    tmp = tempfile.mkdtemp(prefix="tlspolicy-buffers-")
    d = Daemon(tmp)
    try:
        check("daemon started", d.alive())
        test_pipelining(d)
        if d.alive():
            test_memory(d)
        if d.alive():
            test_mass_close(d)
        if d.alive():
            test_warnings(d)
    finally:
        alive = d.alive()
        rc = d.stop()
        check("daemon alive at the end of the run", alive)
        check("SIGTERM stops the daemon cleanly (exit 0)", rc == 0, f"exit {rc}")
        text = d.text()
        if failures:
            print("--- daemon log (tail) ---\n" + text[-3000:])
        check("the daemon logged no sanitizer report or crash",
              "ERROR: AddressSanitizer" not in text and "runtime error:" not in text
              and "terminate called" not in text)


if __name__ == "__main__":
    main()
    print(f"# {len(failures)} failed" if failures else "# all passed")
    sys.exit(1 if failures else 0)
