#!/usr/bin/python3
"""Socketmap protocol tests against the real tlspolicyd over real sockets.

Usage: t_protocol.py TLSPOLICYD

Starts the daemon on a free loopback port and a unix socket with a temp
config, then checks framing (split to single bytes, pipelining, every
malformed netstring, oversize), robustness (slow, stuck, vanishing and many
clients, idle timeout, connection cap, backpressure) and live reload.
Each check prints "ok - ..." or "FAIL - ..."; exit status 1 if any failed.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

DAEMON = sys.argv[1] if len(sys.argv) > 1 else "build/tlspolicyd"
failures = []


def check(name, got, want):
    if got == want:
        print(f"ok - {name}")
    else:
        print(f"FAIL - {name}\n  got:  {got!r}\n  want: {want!r}")
        failures.append(name)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ns(payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return b"%d:%s," % (len(payload), payload)


class Client:
    """A socketmap client that reads replies with a deadline (never hangs)."""

    def __init__(self, addr, timeout=5.0):
        fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
        self.s = socket.socket(fam, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(addr)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def reply(self):
        """One netstring reply as str, or None if the server closed."""
        while True:
            colon = self.buf.find(b":")
            if colon > 0:
                n = int(self.buf[:colon])
                if len(self.buf) >= colon + n + 2:
                    body = self.buf[colon + 1:colon + 1 + n]
                    assert self.buf[colon + 1 + n:colon + 2 + n] == b",", self.buf
                    self.buf = self.buf[colon + n + 2:]
                    return body.decode()
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def ask(self, req):
        self.send(ns(req))
        return self.reply()

    def closed(self):
        """True if the server closed the connection (after any pending replies)."""
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.s.close()


def main():
    tmp = tempfile.mkdtemp(prefix="tlspolicy-proto-")
    port = free_port()
    sock = os.path.join(tmp, "sm.sock")
    conf = os.path.join(tmp, "tlspolicy.conf")
    listfile = os.path.join(tmp, "force.list")

    def write_conf(level, extra=""):
        with open(conf + ".new", "w") as f:
            f.write(f"""
default = "may";
outbound = (
  {{ name = "partner"; level = "{level}"; to = [ "partner.test" ]; }},
  {{ name = "list"; level = "encrypt"; to_lists = [ "force.list" ]; }},
  {{ name = "auditor"; level = "encrypt"; to = [ "auditor@bank.test" ]; }}
);
{extra}
daemon = {{
  socketmap = [ "inet:127.0.0.1:{port}", "unix:{sock}" ];
  socket_owner = "nobody";
  socket_mode = "0640";
  idle_timeout = 11;
  max_connections = 300;
}};
""")
        os.rename(conf + ".new", conf)  # the way editors save

    with open(listfile, "w") as f:
        f.write("listed.test\n")
    write_conf("encrypt")
    log = open(os.path.join(tmp, "daemon.log"), "w+")
    d = subprocess.Popen([DAEMON, "-f", "-c", conf], stderr=log, stdin=subprocess.DEVNULL)
    addr = ("127.0.0.1", port)
    for _ in range(100):
        try:
            Client(addr).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        run_checks(addr, sock, write_conf, listfile, d)
    finally:
        d.send_signal(signal.SIGTERM)
        try:
            rc = d.wait(timeout=5)
        except subprocess.TimeoutExpired:
            d.kill()
            rc = "hung"
        check("SIGTERM stops the daemon cleanly (exit 0)", rc, 0)
        check("SIGTERM removes the unix socket", os.path.exists(sock), False)
        log.seek(0)
        text = log.read()
        if failures:
            print("--- daemon log ---\n" + text[-4000:])
        check("the daemon logged no crash", "terminate called" in text, False)


def run_checks(addr, sock, write_conf, listfile, d):
    c = Client(addr)
    check("simple lookup", c.ask("tls-policy partner.test"), "OK encrypt")
    check("case-insensitive key, trailing dot", c.ask("tls-policy Sub.PARTNER.Test."), "OK encrypt")
    check(".parent key", c.ask("tls-policy .partner.test"), "OK encrypt")
    check("[ip]:port key falls to the default", c.ask("tls-policy [192.0.2.1]:25"), "OK may")
    check("transport map, +extension and case", c.ask("transport Auditor+x@Bank.Test"), "OK smtp-tls-encrypt:")
    check("transport map NOTFOUND", c.ask("transport other@bank.test"), "NOTFOUND ")
    check("transport map '*' key", c.ask("transport *"), "NOTFOUND ")
    check("unknown map name is PERM", c.ask("nosuchmap x").startswith("PERM unknown map name"), True)
    check("connection stays open after PERM for unknown map", c.ask("tls-policy partner.test"), "OK encrypt")
    check("request without a key is PERM", c.ask("tls-policy").startswith("PERM malformed request"), True)
    c.close()

    st = os.stat(sock)
    import pwd
    check("unix socket has the configured mode (socket_mode)", oct(st.st_mode & 0o777), "0o640")
    check("unix socket has the configured owner (socket_owner)", pwd.getpwuid(st.st_uid).pw_name, "nobody")
    u = Client(sock)
    check("unix socket lookup", u.ask("tls-policy listed.test"), "OK encrypt")
    u.close()

    # One request split down to single bytes.
    c = Client(addr)
    for b in ns("tls-policy partner.test"):
        c.send(bytes([b]))
        time.sleep(0.002)
    check("request sent one byte at a time", c.reply(), "OK encrypt")
    # Pipelined: many requests in one write, answers in order.
    keys = [f"d{i}.test" if i % 3 else "partner.test" for i in range(500)]
    c.send(b"".join(ns("tls-policy " + k) for k in keys))
    got = [c.reply() for _ in keys]
    want = ["OK encrypt" if k == "partner.test" else "OK may" for k in keys]
    check("500 pipelined requests answered in order", got, want)
    # Replies split across requests: half a request, then the rest with a whole one.
    c.send(b"23:tls-policy part")
    time.sleep(0.05)
    c.send(b"ner.test," + ns("tls-policy listed.test"))
    check("request split across writes, 1", c.reply(), "OK encrypt")
    check("request split across writes, 2", c.reply(), "OK encrypt")
    c.close()

    # Malformed framing: PERM, then that connection (only) is closed.
    bad = {
        "letters in length": b"abc:tls-policy x,",
        "no colon, garbage": b"tls-policy partner.test\n",
        "empty length": b":x,",
        "leading zero": b"05:hello,",
        "negative length": b"-1:x,",
        "missing comma": b"3:abcd",
        "wrong length (short)": b"5:tls-policy x,",
        "huge length": b"99999999999999999999:x,",
        "request over 10000 bytes": ns("tls-policy " + "a" * 9990),
    }
    bystander = Client(addr)
    for name, data in bad.items():
        m = Client(addr)
        m.send(data)
        r = m.reply()
        check(f"malformed ({name}) gets PERM", (r or "").startswith("PERM"), True)
        check(f"malformed ({name}) closes the connection", m.closed(), True)
        m.close()
    check("other connections unaffected by malformed ones", bystander.ask("tls-policy partner.test"), "OK encrypt")
    exact = "tls-policy " + "a" * (10000 - len("tls-policy "))
    check("a request of exactly 10000 bytes is answered", bystander.ask(exact), "OK may")

    # Slow, stuck and vanishing clients never delay anyone else.
    stuck = Client(addr)
    stuck.send(b"40:tls-policy half")  # never finished
    silent = Client(addr)                # connects, sends nothing
    nonreader = Client(addr)
    nonreader.send(b"".join(ns("tls-policy partner.test") for _ in range(20000)))  # never reads
    for _ in range(20):
        v = Client(addr)
        v.send(ns("tls-policy partner.test"))
        v.close()  # vanishes before reading its answer
        v = Client(addr)
        v.send(b"10:tls-")
        v.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        v.close()  # reset mid-request
    t0 = time.monotonic()
    check("lookups go on while others are stuck", bystander.ask("tls-policy listed.test"), "OK encrypt")
    print(f"#   answered in {1000 * (time.monotonic() - t0):.1f} ms with stuck clients around")
    # Backpressure: the non-reader's 20000 answers are all there, in order, once it reads.
    got = [nonreader.reply() for _ in range(20000)]
    check("client that pipelined 20000 requests before reading gets all answers", got.count("OK encrypt"), 20000)
    nonreader.close()

    # Many clients at once.
    results = []

    def worker(i):
        try:
            w = Client(addr, timeout=10)
            ok = all(w.ask(f"tls-policy {'partner.test' if j % 2 else f'x{i}.test'}") ==
                     ("OK encrypt" if j % 2 else "OK may") for j in range(50))
            w.close()
            results.append(ok)
        except OSError as e:
            results.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check("200 concurrent clients x 50 requests all answered right", results.count(True), 200)

    # Connection cap (300): idle extra connections beyond the cap are closed at once.
    held = [Client(addr) for _ in range(310)]
    closed_now = sum(1 for h in held if h.s.settimeout(0.5) or h.closed())
    check("connections over max_connections are refused", closed_now >= 10, True)
    for h in held:
        h.close()
    time.sleep(0.2)
    check("after the crowd leaves new clients are served", Client(addr).ask("tls-policy partner.test"), "OK encrypt")

    # Live reload: file change (rename), bad config keeps the old policy, SIGHUP.
    rc = Client(addr)

    def wait_answer(key, want, seconds=2.0):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            r = rc.ask(key)
            if r == want:
                return r, time.monotonic()
            time.sleep(0.02)
        return rc.ask(key), None

    t0 = time.monotonic()
    write_conf("may")
    got, t1 = wait_answer("tls-policy partner.test", "OK may")
    check("config edit (rename) is live within 1 s, no restart", (got, t1 is not None and t1 - t0 < 1.0), ("OK may", True))
    if t1:
        print(f"#   change live after {1000 * (t1 - t0):.0f} ms")
    with open(listfile + ".tmp", "w") as f:
        f.write("listed.test\nnewly.test\n")
    os.rename(listfile + ".tmp", listfile)
    got, _ = wait_answer("tls-policy newly.test", "OK encrypt")
    check("list file replaced by rename is picked up", got, "OK encrypt")
    write_conf("encrypt", extra='outbound_typo = 1;')
    time.sleep(0.8)
    check("bad config: old policy keeps serving", rc.ask("tls-policy partner.test"), "OK may")
    write_conf("encrypt")
    got, _ = wait_answer("tls-policy partner.test", "OK encrypt")
    check("fixed config is picked up", got, "OK encrypt")
    os.unlink(listfile)
    time.sleep(0.8)
    check("deleted list file: old policy keeps serving", rc.ask("tls-policy newly.test"), "OK encrypt")
    with open(listfile, "w") as f:
        f.write("listed.test\n")
    got, _ = wait_answer("tls-policy newly.test", "OK may")
    check("list file restored: reloaded", got, "OK may")
    with open(listfile, "a") as f:
        f.write("hup.test\n")  # in place (close_write also fires); SIGHUP must work too
    d.send_signal(signal.SIGHUP)
    got, _ = wait_answer("tls-policy hup.test", "OK encrypt")
    check("SIGHUP reloads", got, "OK encrypt")
    check("reload left the connection open and working", rc.ask("tls-policy listed.test"), "OK encrypt")

    # Idle timeout (11 s in this config) and slow partial requests.
    idle = Client(addr, timeout=20)
    slow = Client(addr, timeout=20)
    slow.send(b"30:tls-")
    t0 = time.monotonic()
    check("idle connection is closed after idle_timeout", idle.closed(), True)
    waited = time.monotonic() - t0
    check("idle close came after more than Postfix's 10 s", waited > 10, True)
    check("a request trickling in forever is cut off too", slow.closed(), True)
    check("daemon still running at the end", d.poll(), None)


if __name__ == "__main__":
    main()
    print(f"# {len(failures)} failed" if failures else "# all passed")
    sys.exit(1 if failures else 0)
