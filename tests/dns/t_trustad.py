#!/usr/bin/python3
"""trust_forwarder_ad = true end to end (ctest discovery_trustad).

Usage: t_trustad.py TLSPOLICYD TLSPOLICY

Starts tests/dns/fixture.py with --plain-forwarder and two daemons, both
with trust_forwarder_ad = true, no trust anchor of their own, dane-only and
the force-encrypt rule to 127.0.2.0/24:

  V: forwarding to the fixture's validating unbound (AD for dnssec.test,
     SERVFAIL for bogus.test): DANE answers for dnssec.test, TEMP for bogus,
     nothing DANE for plain.test;
  N: forwarding to the NON-validating forwarder: no AD on any answer, so no
     DANE answer ever, while MX-aware rules still work (they use insecure
     answers, as Postfix does).

Then `tlspolicy check` accepts V's configuration, warns about a forwarder
off loopback and refuses one without forwarders, `tlspolicy query -c V`
answers what the socketmap answers, and `tlspolicy query -c V -` (keys on
stdin) discovers like `query KEY` (--no-dns: static only). "ok - " / "FAIL - " lines; exit 1 on a
failed check.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fixture  # noqa: E402
import t_discovery as td  # noqa: E402  (ask, start_daemon, expect, ok, fail)

CLI = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else None


def conf(forwarder, port):
    return """default = "may";
discovery = {
  forwarders = [ "%s" ];
  trust_forwarder_ad = true;
  query_timeout = 800;
  deadline = 1500;
  dane = "dane-only";
};
outbound = (
  { name = "force-encrypt"; level = "encrypt"; to = [ "127.0.2.0/24" ]; }
);
daemon = { socketmap = [ "inet:127.0.0.1:%d" ]; };
""" % (forwarder, port)


def check(tmp, name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    p = subprocess.run([CLI, "check", "-c", path], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout + p.stderr


def main():
    if not CLI or not os.path.exists(td.DAEMON) or not os.path.exists(CLI):
        td.fail("usage: t_trustad.py TLSPOLICYD TLSPOLICY (binaries missing)")
        sys.exit(1)
    tmp = tempfile.mkdtemp(prefix="tlspolicy-trustad.")
    os.chmod(tmp, 0o755)
    procs = []
    try:
        try:
            fxp, fx = fixture.spawn(os.path.join(tmp, "dns"), "--plain-forwarder")
        except RuntimeError as e:
            td.fail(str(e))
            sys.exit(1)
        procs.append(fxp)
        if not fx.get("DNS_PLAIN_FORWARDER"):
            td.fail("fixture gave no DNS_PLAIN_FORWARDER")
            sys.exit(1)
        td.ok("fixture: validating %s, non-validating %s" % (fx["DNS_FORWARDER"], fx["DNS_PLAIN_FORWARDER"]))
        pv, pn = td.free_port(), td.free_port()
        v, pv = td.start_daemon(tmp, "v", conf(fx["DNS_FORWARDER"], pv))
        n, pn = td.start_daemon(tmp, "n", conf(fx["DNS_PLAIN_FORWARDER"], pn))
        procs += [p for p in (v, n) if p]
        if not v or not n:
            sys.exit(1)

        dane, enc, may, temp = r"OK dane-only( .*)?", r"OK encrypt( .*)?", r"OK may( .*)?|NOTFOUND ?", r"TEMP .+"
        for key, want, why in [
            ("dane.dnssec.test", dane, "secure MX (AD), usable TLSA"),
            ("nomx.dnssec.test", dane, "no MX, TLSA at the domain, AD"),
            ("partial.dnssec.test", r"OK (dane|dane-only|may)( .*)?", "one of two MX hosts with TLSA"),
            ("notlsa.dnssec.test", may, "secure MX without TLSA"),
            ("insecuremx.dnssec.test", may, "MX host in the unsigned zone"),
            ("bogus.test", temp, "bogus: the validator says SERVFAIL"),
            ("x.servfail.test", temp, "SERVFAIL"),
            ("enc.plain.test", enc, "unsigned, MX address inside the CIDR"),
            ("open.plain.test", may, "unsigned, MX address outside"),
        ]:
            td.expect("V %s (%s)" % (key, why), td.ask(pv, key), want)
        for key, want, why in [
            ("dane.dnssec.test", may, "no AD from a non-validating forwarder: no DANE"),
            ("nomx.dnssec.test", may, "no AD: no DANE"),
            ("badtlsa.dnssec.test", may, "no AD: no DANE"),
            ("enc.plain.test", enc, "MX-aware rules still use insecure answers"),
            ("bogus.test", temp, "the validating upstream's SERVFAIL passed on"),
        ]:
            td.expect("N %s (%s)" % (key, why), td.ask(pn, key), want)

        rc, out = check(tmp, "v-check.conf", conf(fx["DNS_FORWARDER"], pv))
        if rc == 0 and "warning" not in out:
            td.ok("tlspolicy check accepts trust_forwarder_ad = true on loopback, no warning")
        else:
            td.fail("tlspolicy check (loopback forwarder): exit %d: %s" % (rc, out))
        rc, out = check(tmp, "far.conf", conf("192.0.2.53", pv))
        if rc == 0 and "not on loopback" in out:
            td.ok("tlspolicy check warns about a trusted forwarder off loopback")
        else:
            td.fail("tlspolicy check (192.0.2.53): exit %d: %s" % (rc, out))
        rc, out = check(tmp, "none.conf", conf(fx["DNS_FORWARDER"], pv).replace(
            'forwarders = [ "%s" ];' % fx["DNS_FORWARDER"], ""))
        if rc != 0 and "needs forwarders" in out:
            td.ok("tlspolicy check refuses trust_forwarder_ad without forwarders")
        else:
            td.fail("tlspolicy check (no forwarders): exit %d: %s" % (rc, out))

        for key in ("dane.dnssec.test", "enc.plain.test", "bogus.test"):
            sm = td.ask(pv, key)
            p = subprocess.run([CLI, "query", "-c", os.path.join(tmp, "v.conf"), key],
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            q = p.stdout.strip()
            want = sm[3:] if sm.startswith("OK ") else sm if sm.startswith("TEMP ") else ""
            if q == want:
                td.ok("tlspolicy query %s = socketmap (%r)" % (key, q))
            else:
                td.fail("tlspolicy query %s: %r (exit %d, %s), socketmap %r"
                        % (key, q, p.returncode, p.stderr.strip()[:200], sm))
        # `tlspolicy query -`: the same discovery, keys from stdin, several
        # at once (a slow one among them), answers in input order.
        keys = ["dane.dnssec.test", "300ms.slow.test", "enc.plain.test", "static.example",
                "bogus.test", "open.plain.test", "dane.dnssec.test", "[127.0.2.25]"]
        want = []
        for key in keys:
            p = subprocess.run([CLI, "query", "-c", os.path.join(tmp, "v.conf"), key],
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            if p.stdout.strip():
                want.append("%s\t%s" % (key, p.stdout.strip()))
        t0 = time.monotonic()
        p = subprocess.run([CLI, "query", "-c", os.path.join(tmp, "v.conf"), "-"], input="\n".join(keys) + "\n",
                           capture_output=True, text=True, timeout=30)
        took = time.monotonic() - t0
        got = p.stdout.strip().split("\n")
        if got == want and p.returncode == 0 and any("dane-only" in g for g in got):
            td.ok("tlspolicy query - discovers like query KEY, in input order (%d answers, %.2f s)"
                  % (len(got), took))
        else:
            td.fail("tlspolicy query -: exit %d, got %r, want %r (%s)" % (p.returncode, got, want, p.stderr[:300]))
        p = subprocess.run([CLI, "query", "--no-dns", "-c", os.path.join(tmp, "v.conf"), "-"],
                           input="dane.dnssec.test\nenc.plain.test\n", capture_output=True, text=True, timeout=30)
        if p.stdout == "dane.dnssec.test\tmay\nenc.plain.test\tmay\n" and p.returncode == 0:
            td.ok("tlspolicy query --no-dns -: the static policy alone (the default, no DANE, no MX rule)")
        else:
            td.fail("tlspolicy query --no-dns -: exit %d, %r" % (p.returncode, p.stdout))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if td.FAILS:
            for name in ("v.log", "n.log"):
                path = os.path.join(tmp, name)
                if os.path.exists(path):
                    with open(path, errors="replace") as f:
                        print("---- %s (tail)\n%s" % (name, f.read()[-3000:]))
        shutil.rmtree(tmp, ignore_errors=True)
    print("%s discovery_trustad: %d check(s) failed" % ("FAIL" if td.FAILS else "PASS", td.FAILS))
    sys.exit(1 if td.FAILS else 0)


if __name__ == "__main__":
    main()
