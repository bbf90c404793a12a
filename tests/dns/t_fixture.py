#!/usr/bin/python3
"""Self-test of the DNS fixture (ctest dns_fixture).

Starts tests/dns/fixture.py in a temp dir and checks every zone through two
real clients: dnspython asking unbound directly (rcode, AD bit, records, how
long the slow zone takes) and libunbound (through ctypes, configured the way
tlspolicyd's resolver is: forwarder 127.0.0.1@PORT, the fixture's
anchor.ds, test. transparent) for the secure / insecure / bogus verdicts.
Then it stops the fixture with SIGTERM and checks unbound is gone, and kills
a second fixture with SIGKILL and checks its unbound follows.

Prints "ok - ..." / "FAIL - ..." per check and exits 1 if any failed.
"""

import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FAILS = 0


def ok(desc):
    print("ok - " + desc, flush=True)


def fail(desc):
    global FAILS
    FAILS += 1
    print("FAIL - " + desc, flush=True)


def check(desc, cond, got=None):
    if cond:
        ok(desc)
    else:
        fail(desc + ("" if got is None else ": got %r" % (got,)))


def start(d, *args):
    try:
        return fixture.spawn(d, *args)
    except RuntimeError as e:
        print(e)
        fail("fixture started")
        sys.exit(1)


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------- dnspython --

def ask(fx, name, rtype, cd=False, server=None, port=None):
    q = dns.message.make_query(name, rtype, want_dnssec=True)
    q.flags |= dns.flags.AD
    if cd:
        q.flags |= dns.flags.CD
    t = time.monotonic()
    r = dns.query.udp(q, server or "127.0.0.1", port=port or fx["DNS_PORT"], timeout=5)
    return r, (time.monotonic() - t) * 1000


def rdatas(r, rtype):
    out = []
    for rr in r.answer:
        if dns.rdatatype.to_text(rr.rdtype) == rtype:
            out += sorted(x.to_text() for x in rr)
    return out


# --------------------------------------------------------------- libunbound --

class UbResult(ctypes.Structure):
    _fields_ = [("qname", ctypes.c_char_p), ("qtype", ctypes.c_int), ("qclass", ctypes.c_int),
                ("data", ctypes.POINTER(ctypes.POINTER(ctypes.c_char))),
                ("len", ctypes.POINTER(ctypes.c_int)), ("canonname", ctypes.c_char_p),
                ("rcode", ctypes.c_int), ("answer_packet", ctypes.c_void_p),
                ("answer_len", ctypes.c_int), ("havedata", ctypes.c_int),
                ("nxdomain", ctypes.c_int), ("secure", ctypes.c_int), ("bogus", ctypes.c_int),
                ("why_bogus", ctypes.c_char_p), ("was_ratelimited", ctypes.c_int),
                ("ttl", ctypes.c_int)]


class Libunbound:
    """Just enough of libunbound's API (unbound.h) for verdicts."""

    def __init__(self, fx):
        name = ctypes.util.find_library("unbound") or "libunbound.so.8"
        self.lib = ctypes.CDLL(name)
        L = self.lib
        L.ub_ctx_create.restype = ctypes.c_void_p
        L.ub_ctx_set_fwd.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        L.ub_ctx_add_ta_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        L.ub_ctx_set_option.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        L.ub_resolve.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                 ctypes.POINTER(ctypes.POINTER(UbResult))]
        L.ub_resolve_free.argtypes = [ctypes.POINTER(UbResult)]
        L.ub_strerror.restype = ctypes.c_char_p
        L.ub_ctx_delete.argtypes = [ctypes.c_void_p]
        self.ctx = L.ub_ctx_create()
        for rc in (L.ub_ctx_set_fwd(self.ctx, fx["DNS_FORWARDER"].encode()),
                   L.ub_ctx_add_ta_file(self.ctx, fx["DNS_ANCHOR"].encode()),
                   L.ub_ctx_set_option(self.ctx, b"local-zone:", b"test. transparent")):
            if rc != 0:
                raise RuntimeError("libunbound setup: " + L.ub_strerror(rc).decode())

    def resolve(self, name, rtype):
        res = ctypes.POINTER(UbResult)()
        rc = self.lib.ub_resolve(self.ctx, name.encode(), dns.rdatatype.from_text(rtype), 1,
                                 ctypes.byref(res))
        if rc != 0:
            return {"error": self.lib.ub_strerror(rc).decode()}
        r = res.contents
        out = {"rcode": r.rcode, "havedata": r.havedata, "nxdomain": r.nxdomain,
               "secure": r.secure, "bogus": r.bogus,
               "why_bogus": (r.why_bogus or b"").decode(errors="replace")}
        self.lib.ub_resolve_free(res)
        return out

    def close(self):
        self.lib.ub_ctx_delete(self.ctx)


def verdict(u):
    if "error" in u:
        return "error " + u["error"]
    if u["bogus"]:
        return "bogus"
    if u["rcode"] == dns.rcode.SERVFAIL:
        return "servfail"
    state = "secure" if u["secure"] else "insecure"
    if u["nxdomain"]:
        return state + " nxdomain"
    return state + (" data" if u["havedata"] else " nodata")


# -------------------------------------------------------------------- main --

def main():
    if os.geteuid() != 0:
        print("note: not root; --resolver53 needs root (or CAP_NET_BIND_SERVICE)")
    tmp = tempfile.mkdtemp(prefix="tlspolicy-dnsfx.")
    procs = []
    try:
        d = os.path.join(tmp, "a")
        p, fx = start(d, "--resolver53", "--slow-ms", "300",
                      "--record", "extra.dnssec.test. 300 MX 10 mx.dane.dnssec.test.",
                      "--record", "extra.plain.test. 300 A 127.0.0.77",
                      "--addr", "enc=127.0.2.30", "--tlsa-port", "25", "--tlsa-port", "2525")
        procs.append(p)
        ok("fixture started: unbound pid %s on %s, resolver %s"
           % (fx["DNS_UNBOUND_PID"], fx["DNS_FORWARDER"], fx["DNS_RESOLVER"]))
        tls, enc, opn = fx["DNS_ADDR_TLS"], fx["DNS_ADDR_ENC"], fx["DNS_ADDR_OPEN"]
        good, bad = fx["DNS_TLSA_GOOD"], fx["DNS_TLSA_BAD"]
        check("--addr enc= taken", enc == "127.0.2.30", enc)

        # name, type, rcode, AD, answer data (None: don't care)
        cases = [
            ("dane.dnssec.test", "MX", "NOERROR", True, ["10 mx.dane.dnssec.test."]),
            ("mx.dane.dnssec.test", "A", "NOERROR", True, [tls]),
            ("mx.dane.dnssec.test", "AAAA", "NOERROR", True, ["2001:db8::2"]),
            ("_25._tcp.mx.dane.dnssec.test", "TLSA", "NOERROR", True, ["3 1 1 " + good]),
            ("_25._tcp.mx.badtlsa.dnssec.test", "TLSA", "NOERROR", True, ["3 1 1 " + bad]),
            ("_2525._tcp.mx.dane.dnssec.test", "TLSA", "NOERROR", True, ["3 1 1 " + good]),
            ("_2525._tcp.mx.badtlsa.dnssec.test", "TLSA", "NOERROR", True, ["3 1 1 " + bad]),
            ("_587._tcp.mx.dane.dnssec.test", "TLSA", "NXDOMAIN", True, []),
            ("partial.dnssec.test", "MX", "NOERROR", True,
             ["10 mx1.partial.dnssec.test.", "20 mx2.partial.dnssec.test."]),
            ("_25._tcp.mx1.partial.dnssec.test", "TLSA", "NOERROR", True, ["3 1 1 " + good]),
            ("_25._tcp.mx2.partial.dnssec.test", "TLSA", "NXDOMAIN", True, []),
            ("mx2.partial.dnssec.test", "A", "NOERROR", True, [tls]),
            ("_25._tcp.mx.notlsa.dnssec.test", "TLSA", "NXDOMAIN", True, []),
            ("nomx.dnssec.test", "MX", "NOERROR", True, []),
            ("nomx.dnssec.test", "A", "NOERROR", True, [tls]),
            ("_25._tcp.nomx.dnssec.test", "TLSA", "NOERROR", True, ["3 1 1 " + good]),
            ("nullmx.dnssec.test", "MX", "NOERROR", True, ["0 ."]),
            ("insecuremx.dnssec.test", "MX", "NOERROR", True, ["10 mx.open.plain.test."]),
            ("_mta-sts.enforce.sts.test", "TXT", "NOERROR", False, ['"v=STSv1; id=enforce1"']),
            ("_mta-sts.split.sts.test", "TXT", "NOERROR", False, ['"v=STSv1; " "id=split1"']),
            ("_mta-sts.twotxt.sts.test", "TXT", "NOERROR", False, ['"v=STSv1; id=a1"', '"v=STSv1; id=a2"']),
            ("_mta-sts.notxt.sts.test", "TXT", "NXDOMAIN", False, []),
            ("enforce.sts.test", "MX", "NOERROR", False, ["10 mx.enforce.sts.test."]),
            ("mx.enforce.sts.test", "A", "NOERROR", False, [tls]),
            ("mx.open.plain.test", "A", "NOERROR", False, [opn]),
            ("dangling.dnssec.test", "MX", "NOERROR", True, ["10 missing.dnssec.test."]),
            ("missing.dnssec.test", "A", "NXDOMAIN", True, []),
            ("extra.dnssec.test", "MX", "NOERROR", True, ["10 mx.dane.dnssec.test."]),
            ("enc.plain.test", "MX", "NOERROR", False, ["10 mx.enc.plain.test."]),
            ("mx.enc.plain.test", "A", "NOERROR", False, [enc]),
            ("open.plain.test", "MX", "NOERROR", False, ["10 mx.open.plain.test."]),
            ("multi.plain.test", "MX", "NOERROR", False,
             ["10 mx.open.plain.test.", "20 mx.enc.plain.test."]),
            ("encnomx.plain.test", "MX", "NOERROR", False, []),
            ("encnomx.plain.test", "A", "NOERROR", False, [enc]),
            ("hosted.plain.test", "MX", "NOERROR", False, ["10 mx1.protect.plain.test."]),
            ("mx1.protect.plain.test", "A", "NOERROR", False, [opn]),
            ("mx.v6.plain.test", "AAAA", "NOERROR", False, ["2001:db8:25::1"]),
            ("mx.v6.plain.test", "A", "NOERROR", False, []),
            ("nullmx.plain.test", "MX", "NOERROR", False, ["0 ."]),
            ("missing.plain.test", "A", "NXDOMAIN", False, []),
            ("extra.plain.test", "A", "NOERROR", False, ["127.0.0.77"]),
            ("bogus.test", "MX", "SERVFAIL", False, []),
            ("mx.bogus.test", "A", "SERVFAIL", False, []),
            ("x.servfail.test", "MX", "SERVFAIL", False, []),
            ("servfail.test", "A", "SERVFAIL", False, []),
            ("unknown.test", "A", "NXDOMAIN", False, []),
            ("example.com", "A", "SERVFAIL", False, []),
        ]
        for name, rtype, rcode, ad, want in cases:
            try:
                r, ms = ask(fx, name, rtype)
            except Exception as e:
                fail("%s %s: %s" % (name, rtype, e))
                continue
            got = (dns.rcode.to_text(r.rcode()), bool(r.flags & dns.flags.AD), rdatas(r, rtype))
            check("%s %s -> %s AD=%s %s" % (name, rtype, rcode, ad, want),
                  got == (rcode, ad, want), got)

        # The bogus zone's data is there (CD: checking disabled), it only fails validation.
        r, _ = ask(fx, "bogus.test", "MX", cd=True)
        check("bogus.test MX with CD: the tampered data, not validated",
              dns.rcode.to_text(r.rcode()) == "NOERROR" and rdatas(r, "MX") == ["11 mx.bogus.test."],
              (dns.rcode.to_text(r.rcode()), rdatas(r, "MX")))
        blog = open(os.path.join(d, "unbound.log"), errors="replace").read()
        check("unbound logged the validation failure for bogus.test",
              "validation failure <bogus.test. MX IN>" in blog, blog[-500:])

        # Slow zone: answers, and not before its delay.
        for name, want_ms in (("a.slow.test", 300), ("1200ms.slow.test", 1200)):
            r, ms = ask(fx, name, "MX")
            check("%s MX answers after >= %d ms (took %.0f ms)" % (name, want_ms, ms),
                  r.rcode() == dns.rcode.NOERROR and rdatas(r, "MX") == ["10 mx.slow.test."]
                  and ms >= want_ms * 0.95, (dns.rcode.to_text(r.rcode()), rdatas(r, "MX"), ms))
        r, ms = ask(fx, "mx.slow.test", "A")
        check("mx.slow.test A -> open address (TTL 0, %.0f ms)" % ms,
              rdatas(r, "A") == [opn] and r.answer[0].ttl == 0 and ms >= 280,
              (rdatas(r, "A"), ms))
        r, ms = ask(fx, "a.slow.test", "MX")
        check("slow zone not cached: asked again, slow again (%.0f ms)" % ms, ms >= 280, ms)
        r, ms = ask(fx, "y.servfail.test", "MX")
        check("servfail is fast (%.0f ms < 1000)" % ms, ms < 1000 and r.rcode() == dns.rcode.SERVFAIL,
              (dns.rcode.to_text(r.rcode()), ms))

        # The port-53 resolver address for a resolv.conf.
        r, _ = ask(fx, "dane.dnssec.test", "MX", server=fx["DNS_RESOLVER"], port=53)
        check("%s:53 answers dane.dnssec.test MX with AD" % fx["DNS_RESOLVER"],
              r.rcode() == dns.rcode.NOERROR and bool(r.flags & dns.flags.AD)
              and rdatas(r, "MX") == ["10 mx.dane.dnssec.test."],
              (dns.rcode.to_text(r.rcode()), r.flags, rdatas(r, "MX")))

        # libunbound with the anchor, forwarding to the fixture.
        ub = Libunbound(fx)
        ucases = [
            ("dane.dnssec.test", "MX", "secure data"),
            ("_25._tcp.mx.dane.dnssec.test", "TLSA", "secure data"),
            ("_25._tcp.mx2.partial.dnssec.test", "TLSA", "secure nxdomain"),
            ("nomx.dnssec.test", "MX", "secure nodata"),
            ("nullmx.dnssec.test", "MX", "secure data"),
            ("enc.plain.test", "MX", "insecure data"),
            ("mx.open.plain.test", "A", "insecure data"),
            ("bogus.test", "MX", "bogus"),
            ("_25._tcp.mx.bogus.test", "TLSA", "bogus"),
            ("x.servfail.test", "MX", "servfail"),
            ("unknown.test", "A", "insecure nxdomain"),
            ("b.slow.test", "MX", "insecure data"),
        ]
        for name, rtype, want in ucases:
            u = ub.resolve(name, rtype)
            check("libunbound %s %s -> %s" % (name, rtype, want), verdict(u) == want, u)
        ub.close()

        # A TXT record changed at run time (remote control, local_data).
        r, _ = ask(fx, "_mta-sts.idchange.sts.test", "TXT")
        check("idchange TXT before", rdatas(r, "TXT") == ['"v=STSv1; id=idchange1"'], rdatas(r, "TXT"))
        fixture.set_txt(fx, "_mta-sts.idchange.sts.test", ['"v=STSv1; id=idchange2"'])
        r, _ = ask(fx, "_mta-sts.idchange.sts.test", "TXT")
        check("set_txt: the new TXT at once", rdatas(r, "TXT") == ['"v=STSv1; id=idchange2"'], rdatas(r, "TXT"))
        fixture.set_txt(fx, "_mta-sts.idchange.sts.test", [])
        r, _ = ask(fx, "_mta-sts.idchange.sts.test", "TXT")
        check("set_txt []: NODATA", r.rcode() == dns.rcode.NOERROR and not rdatas(r, "TXT"), r.to_text())
        fixture.control(fx, "local_data_remove", "_mta-sts.idchange.sts.test.")
        r, _ = ask(fx, "_mta-sts.idchange.sts.test", "TXT")
        check("local_data_remove: the zone's record again", rdatas(r, "TXT") == ['"v=STSv1; id=idchange1"'],
              rdatas(r, "TXT"))

        # Stop by SIGTERM: exit 0, unbound gone.
        upid = fx["DNS_UNBOUND_PID"]
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(10)
        except subprocess.TimeoutExpired:
            rc = "still running"
        check("SIGTERM: fixture exits 0", rc == 0, rc)
        check("SIGTERM: unbound %d stopped" % upid, not alive(upid))

        # A second fixture killed with SIGKILL takes its unbound along.
        d2 = os.path.join(tmp, "b")
        p2, fx2 = start(d2)
        procs.append(p2)
        upid2 = fx2["DNS_UNBOUND_PID"]
        r, _ = ask(fx2, "dane.dnssec.test", "MX")
        check("second fixture (other port %s) answers with AD" % fx2["DNS_PORT"],
              bool(r.flags & dns.flags.AD) and fx2["DNS_PORT"] != fx["DNS_PORT"])
        p2.kill()
        p2.wait()
        end = time.monotonic() + 5
        while alive(upid2) and time.monotonic() < end:
            time.sleep(0.05)
        check("SIGKILL of the fixture: its unbound %d stops too" % upid2, not alive(upid2))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print("%s dns_fixture: %d check(s) failed" % ("FAIL" if FAILS else "PASS", FAILS))
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
