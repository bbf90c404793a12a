#!/usr/bin/python3
"""tlspolicyd's discovery against the DNS fixture (ctest discovery_fixture).

Usage: t_discovery.py TLSPOLICYD [TLSPOLICY]

Starts tests/dns/fixture.py (with --log-queries, so unbound's log says what
the daemon really asked) and two daemons forwarding to it:

  A: default may; discovery dane = "dane-only", query_timeout 500 ms,
     deadline 1000 ms, on_dns_failure = "defer"; rule force-encrypt
     (encrypt) to 127.0.2.0/24, mx:.protect.plain.test, mx:mx.exact.plain.test
  B: the same rule with on_dns_failure = "ignore" on the rule, dane off

and checks, over the socketmap (map tls-policy), a table of destinations
covering each branch: MX address inside/outside the CIDR, one of several MX
hosts inside, no MX (the domain's own address), AAAA only, mx: exact and
suffix entries (and a host under the exact name that must not match),
[host] and [ip] next hops, DANE (good, wrong, no TLSA, MX host in an
unsigned zone, no MX with TLSA at the domain), bogus, SERVFAIL, a name
slower than the deadline (TEMP, in time), per-rule on_dns_failure =
"ignore". Then: 40 concurrent requests for one new destination make unbound
see one MX question (coalesced), asking again makes none (cached); a slow
destination does not hold up another client (parked, not blocking); and
`tlspolicy query -c A KEY` gives what the socketmap gives.

Prints "ok - ..." / "FAIL - ..."; exit 1 if any check failed.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fixture  # noqa: E402

DAEMON = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else "build/tlspolicyd"
CLI = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else None
FAILS = 0


def ok(desc):
    print("ok - " + desc, flush=True)


def fail(desc):
    global FAILS
    FAILS += 1
    print("FAIL - " + desc, flush=True)


def expect(desc, got, want_re):
    if got is not None and re.fullmatch(want_re, got):
        ok("%s: %r" % (desc, got))
    else:
        fail("%s: got %r, want /%s/" % (desc, got, want_re))


def ns(s):
    b = s.encode()
    return b"%d:%s," % (len(b), b)


def ask(port, key, timeout=10.0, name="tls-policy"):
    """One socketmap request on its own connection; the reply's text."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(ns(name + " " + key))
        buf = b""
        while True:
            c = s.recv(65536)
            if not c:
                return "(closed: %r)" % buf
            buf += c
            n, sep, rest = buf.partition(b":")
            if sep and n.isdigit() and len(rest) >= int(n) + 1:
                return rest[:int(n)].decode(errors="replace")
    except socket.timeout:
        return "(no reply in %.0f s)" % timeout
    finally:
        s.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def start_daemon(d, name, conf):
    path = os.path.join(d, name + ".conf")
    with open(path, "w") as f:
        f.write(conf)
    log = open(os.path.join(d, name + ".log"), "w")
    p = subprocess.Popen([DAEMON, "-f", "-c", path], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT)
    port = int(re.search(r"inet:127\.0\.0\.1:(\d+)", conf).group(1))
    end = time.monotonic() + 10
    while time.monotonic() < end and p.poll() is None and not listening(port):
        time.sleep(0.05)
    if not listening(port):
        if p.poll() is None:
            p.kill()
        p.wait()
        with open(os.path.join(d, name + ".log")) as f:
            print(f.read()[-2000:])
        fail("daemon %s started" % name)
        return None, port
    return p, port


def unbound_queries(fx, qname, qtype):
    """How many times unbound logged receiving QNAME QTYPE."""
    with open(os.path.join(fx["DNS_DIR"], "unbound.log"), errors="replace") as f:
        pat = " %s. %s IN" % (qname, qtype)
        return sum(1 for line in f if pat in line)


def conf(fx, port, dane, rule_extra, dns_failure):
    return """default = "may";
discovery = {
  forwarders = [ "%s" ];
  trust_anchor_file = "%s";
  trust_forwarder_ad = false;
  query_timeout = 500;
  deadline = 1000;
  max_outstanding = 1000;
  cache_entries = 100000;
  dane = "%s";
  on_dns_failure = "%s";
};
outbound = (
  { name = "force-encrypt"; level = "encrypt";
    to = [ "127.0.2.0/24", "mx:.protect.plain.test", "mx:mx.exact.plain.test" ];%s }
);
daemon = { socketmap = [ "inet:127.0.0.1:%d" ]; };
""" % (fx["DNS_FORWARDER"], fx["DNS_ANCHOR"], dane, dns_failure, rule_extra, port)


def main():
    if not os.path.exists(DAEMON):
        fail("tlspolicyd %s missing" % DAEMON)
        sys.exit(1)
    tmp = tempfile.mkdtemp(prefix="tlspolicy-disc.")
    os.chmod(tmp, 0o755)
    procs = []
    try:
        try:
            fxp, fx = fixture.spawn(os.path.join(tmp, "dns"), "--log-queries", "--slow-ms", "200",
                                    "--record", "exact.plain.test. 300 MX 10 mx.exact.plain.test.",
                                    "--record", "mx.exact.plain.test. 300 A 127.0.0.3",
                                    "--record", "notexact.plain.test. 300 MX 10 a.mx.exact.plain.test.",
                                    "--record", "a.mx.exact.plain.test. 300 A 127.0.0.3",
                                    "--record", "coalesce.plain.test. 300 MX 10 mx.open.plain.test.",
                                    "--record", "again.plain.test. 300 MX 10 mx.open.plain.test.")
        except RuntimeError as e:
            fail(str(e))
            sys.exit(1)
        procs.append(fxp)
        ok("fixture on %s" % fx["DNS_FORWARDER"])
        pa, pb = free_port(), free_port()
        a, pa = start_daemon(tmp, "a", conf(fx, pa, "dane-only", "", "defer"))
        b, pb = start_daemon(tmp, "b", conf(fx, pb, "off", ' on_dns_failure = "ignore";', "defer"))
        procs += [p for p in (a, b) if p]
        if not a or not b:
            sys.exit(1)

        enc, may, temp = r"OK encrypt( .*)?", r"OK may( .*)?|NOTFOUND ?", r"TEMP .+"
        cases = [
            ("open.plain.test", may, "MX address outside the CIDR"),
            ("enc.plain.test", enc, "MX address inside the CIDR"),
            ("Enc.Plain.TEST", enc, "mixed case key"),
            ("multi.plain.test", enc, "one of two MX hosts inside"),
            ("encnomx.plain.test", enc, "no MX, the domain's own address inside"),
            ("v6.plain.test", may, "AAAA only, outside"),
            ("hosted.plain.test", enc, "MX host under mx:.protect.plain.test"),
            ("exact.plain.test", enc, "MX host is mx:mx.exact.plain.test"),
            ("notexact.plain.test", may, "MX host under, not equal to, mx:mx.exact.plain.test"),
            ("[mx.enc.plain.test]", enc, "[host] whose address is inside"),
            ("[mx.open.plain.test]", may, "[host] whose address is outside"),
            ("[127.0.2.25]", enc, "[ip] inside"),
            ("dane.dnssec.test", r"OK dane-only( .*)?", "DANE: secure MX, usable TLSA"),
            ("badtlsa.dnssec.test", r"OK dane-only( .*)?", "DANE: TLSA usable but wrong (Postfix finds out)"),
            ("nomx.dnssec.test", r"OK dane-only( .*)?", "DANE: no MX, TLSA at the domain"),
            ("notlsa.dnssec.test", may, "secure MX without TLSA: no DANE"),
            ("insecuremx.dnssec.test", may, "MX host in an unsigned zone: no DANE"),
            ("bogus.test", temp, "bogus signatures"),
            ("x.servfail.test", temp, "SERVFAIL"),
            ("halfv4.plain.test", temp, "MX host's A failed, its AAAA answered: its IPv4 address unknown"),
            ("a.slow.test", may, "slow (200 ms) but within the deadline"),
        ]
        for key, want, why in cases:
            expect("A %s (%s)" % (key, why), ask(pa, key), want)

        t0 = time.monotonic()
        got = ask(pa, "1700ms.slow.test")
        took = time.monotonic() - t0
        if re.fullmatch(temp, got) and took < 2.5:
            ok("A 1700ms.slow.test (slower than query_timeout 500 / deadline 1000): %r after %.2f s"
               % (got, took))
        else:
            fail("A 1700ms.slow.test: %r after %.2f s, want TEMP within the 1 s deadline (+1.5 s slack)"
                 % (got, took))

        for key, want, why in [
            ("x.servfail.test", may, "SERVFAIL, rule on_dns_failure = ignore"),
            ("bogus.test", may, "bogus, rule on_dns_failure = ignore"),
            ("enc.plain.test", enc, "MX address inside"),
            ("dane.dnssec.test", may, "dane = off"),
        ]:
            expect("B %s (%s)" % (key, why), ask(pb, key), want)

        # Coalescing and cache: 40 clients at once for one new destination.
        before = unbound_queries(fx, "coalesce.plain.test", "MX")
        res = [None] * 40
        def one(i):
            res[i] = ask(pa, "coalesce.plain.test")
        ts = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        bad = [r for r in res if not re.fullmatch(may, r or "")]
        if not bad:
            ok("40 concurrent requests for coalesce.plain.test all answered may")
        else:
            fail("40 concurrent requests: %d wrong answers, e.g. %r" % (len(bad), bad[0]))
        n = unbound_queries(fx, "coalesce.plain.test", "MX") - before
        if n == 1:
            ok("... and unbound saw one MX question for them (coalesced)")
        else:
            fail("... unbound saw %d MX questions for coalesce.plain.test, want 1" % n)
        ask(pa, "again.plain.test")
        n1 = unbound_queries(fx, "again.plain.test", "MX")
        for _ in range(5):
            ask(pa, "again.plain.test")
        n2 = unbound_queries(fx, "again.plain.test", "MX")
        if n1 == 1 and n2 == 1:
            ok("again.plain.test asked 6 times: one MX question (cached)")
        else:
            fail("again.plain.test: %d MX questions after the first ask, %d after 6, want 1 and 1" % (n1, n2))

        # A slow destination is parked: another client is answered meanwhile.
        slow = {}
        def slow_ask():
            slow["r"] = ask(pa, "800ms.slow.test")
            slow["t"] = time.monotonic()
        th = threading.Thread(target=slow_ask)
        th.start()
        time.sleep(0.1)
        fast = ask(pa, "open.plain.test")
        t_fast = time.monotonic()
        th.join()
        if re.fullmatch(may, fast) and "t" in slow and t_fast < slow["t"]:
            ok("while 800ms.slow.test waits (%r), open.plain.test is answered first" % slow["r"])
        else:
            fail("parking: fast answer %r at %.3f, slow %r at %s" % (
                fast, t_fast, slow.get("r"), slow.get("t")))

        # tlspolicy query does the same DNS work.
        if CLI:
            for key in ("dane.dnssec.test", "enc.plain.test", "hosted.plain.test", "open.plain.test",
                        "x.servfail.test", "halfv4.plain.test", "bogus.test"):
                sm = ask(pa, key)
                p = subprocess.run([CLI, "query", "-c", os.path.join(tmp, "a.conf"), key],
                                   capture_output=True, text=True, timeout=30)
                q = p.stdout.strip()
                want = sm[3:] if sm.startswith("OK ") else sm if sm.startswith("TEMP ") else ""
                if q == want:
                    ok("tlspolicy query %s = socketmap (%r)" % (key, q))
                else:
                    fail("tlspolicy query %s: %r (exit %d, %s), socketmap %r"
                         % (key, q, p.returncode, p.stderr.strip()[:200], sm))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if FAILS:
            for name in ("a.log", "b.log"):
                path = os.path.join(tmp, name)
                if os.path.exists(path):
                    with open(path, errors="replace") as f:
                        print("---- %s (tail)\n%s" % (name, f.read()[-3000:]))
        shutil.rmtree(tmp, ignore_errors=True)
    print("%s discovery_fixture: %d check(s) failed" % ("FAIL" if FAILS else "PASS", FAILS))
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
