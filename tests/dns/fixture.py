#!/usr/bin/python3
"""DNS fixture for the tlspolicy tests: a real unbound on loopback serving test zones.

Run with Debian's /usr/bin/python3 (python3-dnspython), as root or not. In
--dir (created if missing) it

  * writes zone files for the zones below, signs dnssec.test and bogus.test
    with ldns-keygen/ldns-signzone and writes their DS records to
    DIR/anchor.ds (the trust anchor for libunbound and for unbound itself);
  * starts a tiny dnspython server ("mini", on 127.0.0.1:<free port>) that
    plays the root (NXDOMAIN for unknown names under test., REFUSED for
    anything else, so no query ever leaves loopback), the SERVFAIL zone and
    the slow zone;
  * starts `unbound -d -c DIR/unbound.conf` as a validating resolver on
    127.0.0.1:<free port> (and, with --resolver53, also on a unique
    127.53.x.y:53 for a Postfix whose private resolv.conf names it), serving
    dnssec.test, bogus.test, plain.test (and bulk.test) as auth-zones
    (for-upstream only, so its own answers are validated like fetched ones)
    and stub-forwarding slow.test, servfail.test and "." to mini;
  * writes DIR/fixture.env (shell: DNS_PORT=..., see below) and
    DIR/fixture.json once every zone answers, then waits. SIGTERM/SIGINT stop
    unbound (by its PID) and exit 0. If this process is killed with SIGKILL,
    unbound gets SIGTERM too (PR_SET_PDEATHSIG).

Why a hand-written mini server: unbound cannot answer slowly on purpose, and
a stub to a dead address gives a slow timeout, not a fast SERVFAIL. It is the
smallest dnspython server that does those two things and nothing else.

Zones (addresses: --addr tls=IP enc=IP open=IP; defaults 127.0.0.2,
127.0.2.25, 127.0.0.3: the e2e TLS sink, an address inside the force-encrypt
CIDR 127.0.2.0/24, an address outside it):

  dnssec.test (signed, DS in anchor.ds; DNSSEC-secure)
    dane          MX 10 mx.dane;  mx.dane A tls, AAAA 2001:db8::2,
                  _25._tcp.mx.dane TLSA 3 1 1 <good: SHA-256 of the cert's SPKI>
    badtlsa       MX 10 mx.badtlsa; mx.badtlsa A tls; TLSA 3 1 1 <wrong hash>
    partial       MX 10 mx1.partial (good TLSA), MX 20 mx2.partial (no TLSA);
                  both A tls
    notlsa        MX 10 mx.notlsa; A tls; no TLSA
    nomx          A tls (no MX); _25._tcp.nomx TLSA 3 1 1 <good>
    nullmx        MX 0 .
    insecuremx    MX 10 mx.open.plain.test. (MX host in an unsigned zone)
    dangling      MX 10 missing.dnssec.test. (NXDOMAIN MX host)
  bogus.test (signed, DS in anchor.ds, then records altered: BOGUS)
    bogus.test MX 10 mx.bogus.test; mx A tls; TLSA 3 1 1 <good>; www A tls
  plain.test (unsigned: insecure)
    enc           MX 10 mx.enc;  mx.enc A enc          (inside 127.0.2.0/24)
    open          MX 10 mx.open; mx.open A open        (outside)
    multi         MX 10 mx.open, MX 20 mx.enc          (one of two inside)
    encnomx       A enc (no MX: the domain's own address is inside)
    hosted        MX 10 mx1.protect (A open)           (for mx:.protect.plain.test)
    v6            MX 10 mx.v6; mx.v6 AAAA 2001:db8:25::1 only
    nullmx        MX 0 .
    dangling      MX 10 missing.plain.test.
    halfv4        MX 10 aaaaonly.servfail.test.        (its A fails, its AAAA answers)
  servfail.test   every name answers SERVFAIL (fast), except AAAA of a name
                  whose first label starts with "aaaaonly": 2001:db8:25::4
  slow.test       answers after --slow-ms (default 400) ms, TTL 0 so every
                  query is slow; a first label "<N>ms" (e.g.
                  1200ms.slow.test) waits N ms instead. Names: any
                  X.slow.test MX 10 mx.slow.test; mx.slow.test (and any name
                  starting with "mx") A open. Keep delays under ~1.8 s: unbound
                  gives up on an upstream after that (discard-timeout is 0
                  here, so the client then gets SERVFAIL, not silence).
  sts.test        (unsigned) MTA-STS cases, STS_DOMAINS below: <d> MX 10
                  mx.<d> (A tls) and _mta-sts.<d> TXT "v=STSv1; id=..." for
                  enforce, wildcard, mismatch, testing, none, nopolicy,
                  redirect, big, slow, wrongname, expired, idchange (TTL 2),
                  split, twotxt, badtxt, notxt (no TXT), down; the policies
                  are tests/sts/https_fixture.py's sts_sites()
  bulk.test       with --bulk N: d0 .. d<N-1> MX 10 mx.bulk.test; mx A open
                  (TTL and negative TTL 86400; the other zones have 300)

--record 'OWNER. TTL TYPE DATA' (repeatable) adds a record to the zone that
owns OWNER (absolute name), before signing. --tlsa-port P (repeatable)
puts every TLSA record at _P._tcp.HOST instead of _25._tcp.HOST: Postfix
looks TLSA up at the port it connects to, so an e2e test whose sinks listen
on port P wants --tlsa-port 25 --tlsa-port P. --tlsa-cert PEM chooses the
certificate whose key the good TLSA records match (default: a fresh
self-signed cert written to DIR/tls/cert.pem and key.pem).

fixture.env (sourceable by sh) and fixture.json hold:
  DNS_PORT DNS_ADDR (127.0.0.1) DNS_FORWARDER (127.0.0.1@PORT, the syntax of
  libunbound forwarders), DNS_RESOLVER (127.53.x.y with --resolver53, else
  empty), DNS_ANCHOR (anchor.ds), DNS_TLSA_GOOD DNS_TLSA_BAD (hex),
  DNS_TLS_CERT DNS_TLS_KEY (key empty if --tlsa-cert given), DNS_ADDR_TLS
  DNS_ADDR_ENC DNS_ADDR_OPEN, DNS_SLOW_MS, DNS_MINI_PORT, DNS_UNBOUND_PID,
  DNS_FIXTURE_PID, DNS_DIR, DNS_CONTROL ("unbound-control -c DIR/unbound.conf":
  unbound's remote control on DIR/control.sock, e.g. $DNS_CONTROL local_data
  '_mta-sts.idchange.sts.test. 2 IN TXT "v=STSv1; id=2"'; from Python
  set_txt()).

--log-queries makes unbound log each query it receives ("info: 127.0.0.1
NAME. MX IN"), to count what a client really asked.

From shell, tests/dns/fixture.sh wraps this (dns_fixture_start/stop); from
Python, fixture.spawn(dir, *args) (see t_fixture.py).
"""

import argparse
import ctypes
import hashlib
import json
import os
import random
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ADDRS = {"tls": "127.0.0.2", "enc": "127.0.2.25", "open": "127.0.0.3"}
SIGNED_ZONES = ("dnssec.test", "bogus.test")
# sts.test: (label, [TXT record data]) for the MTA-STS cases. The policy each
# one serves is in tests/sts/https_fixture.py (sts_sites); keep them in step.
STS_DOMAINS = [
    ("enforce", ['"v=STSv1; id=enforce1"']),        # enforce, mx: mx.enforce.sts.test
    ("wildcard", ['"v=STSv1; id=wild1"']),          # enforce, mx: *.wildcard.sts.test
    ("mismatch", ['"v=STSv1; id=mismatch1"']),      # enforce, mx: mx.elsewhere.sts.test
    ("testing", ['"v=STSv1; id=testing1"']),        # testing, mx: mx.testing.sts.test
    ("none", ['"v=STSv1; id=none1"']),              # mode none
    ("nopolicy", ['"v=STSv1; id=nopolicy1"']),      # HTTP 404: TXT without a policy file
    ("redirect", ['"v=STSv1; id=redirect1"']),      # HTTP 301 to enforce's policy (refused)
    ("big", ['"v=STSv1; id=big1"']),                # a body over 64 KiB
    ("slow", ['"v=STSv1; id=slow1"']),              # enforce, answered after a delay
    ("wrongname", ['"v=STSv1; id=wrongname1"']),    # certificate for another name
    ("expired", ['"v=STSv1; id=expired1"']),        # expired certificate
    ("idchange", ['"v=STSv1; id=idchange1"']),      # TTL 2: change it with set_txt()
    ("split", ['"v=STSv1; " "id=split1"']),         # one record in two character-strings
    ("twotxt", ['"v=STSv1; id=a1"', '"v=STSv1; id=a2"']),  # two STS records: no valid record
    ("badtxt", ['"v=STSv2; id=bad1"']),             # not an STSv1 record: no valid record
    ("notxt", []),                                  # MX only, no TXT record
    ("down", ['"v=STSv1; id=down1"']),              # enforce; for tests that stop the HTTPS server
]
STS_TXT_TTL = {"idchange": 2}


def die(msg):
    print("dns fixture: " + msg, file=sys.stderr)
    sys.exit(1)


def run(argv, cwd=None):
    """Runs a tool; on failure exits with its output (a missing tool too)."""
    try:
        p = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True)
    except FileNotFoundError:
        die("missing tool %s (Debian packages: unbound, ldnsutils, openssl)" % argv[0])
    if p.returncode != 0:
        die("%s failed (%d): %s%s" % (" ".join(argv), p.returncode, p.stdout, p.stderr))
    return p.stdout


# ------------------------------------------------------------ certificates --

def spki_sha256(cert_pem):
    """TLSA 3 1 1 data: SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    pub = run(["openssl", "x509", "-in", cert_pem, "-noout", "-pubkey"])
    p = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"],
                       input=pub.encode(), capture_output=True)
    if p.returncode != 0:
        die("openssl pkey: " + p.stderr.decode(errors="replace"))
    return hashlib.sha256(p.stdout).hexdigest()


def make_cert(d):
    os.makedirs(d, exist_ok=True)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
         "-subj", "/CN=dane.dnssec.test", "-keyout", key, "-out", cert])
    os.chmod(cert, 0o644)
    return cert, key


# ------------------------------------------------------------------- zones --

def zone_records(a, good, bad, bulk, ports):
    """The zones' records (relative to their origin), SOA and NS excluded.
    TLSA lines are written "_25._tcp.HOST TLSA ..." and repeated per port."""
    tls, enc, opn = a["tls"], a["enc"], a["open"]
    z = {}
    z["dnssec.test"] = [
        "dane MX 10 mx.dane", "mx.dane A " + tls, "mx.dane AAAA 2001:db8::2",
        "_25._tcp.mx.dane TLSA 3 1 1 " + good,
        "badtlsa MX 10 mx.badtlsa", "mx.badtlsa A " + tls,
        "_25._tcp.mx.badtlsa TLSA 3 1 1 " + bad,
        "partial MX 10 mx1.partial", "partial MX 20 mx2.partial",
        "mx1.partial A " + tls, "mx2.partial A " + tls,
        "_25._tcp.mx1.partial TLSA 3 1 1 " + good,
        "notlsa MX 10 mx.notlsa", "mx.notlsa A " + tls,
        "nomx A " + tls, "_25._tcp.nomx TLSA 3 1 1 " + good,
        "nullmx MX 0 .",
        "insecuremx MX 10 mx.open.plain.test.",
        "dangling MX 10 missing.dnssec.test.",
    ]
    z["bogus.test"] = [
        "@ MX 10 mx", "mx A " + tls, "_25._tcp.mx TLSA 3 1 1 " + good,
        "www A " + tls,
    ]
    z["plain.test"] = [
        "enc MX 10 mx.enc", "mx.enc A " + enc,
        "open MX 10 mx.open", "mx.open A " + opn,
        "multi MX 10 mx.open", "multi MX 20 mx.enc",
        "encnomx A " + enc,
        "hosted MX 10 mx1.protect", "mx1.protect A " + opn,
        "v6 MX 10 mx.v6", "mx.v6 AAAA 2001:db8:25::1",
        "nullmx MX 0 .",
        "dangling MX 10 missing.plain.test.",
        "halfv4 MX 10 aaaaonly.servfail.test.",
    ]
    # MTA-STS (RFC 8461) domains: the _mta-sts TXT record and the MX; the
    # policy bodies are the HTTPS fixture's (tests/sts/https_fixture.py,
    # sts_sites() serves the matching ones). Every MX host has address tls.
    sts = []
    for d, txt in STS_DOMAINS:
        sts.append("%s MX 10 mx.%s" % (d, d))
        sts.append("mx.%s A %s" % (d, tls))
        for t in txt:
            sts.append(("_mta-sts.%s %d TXT " % (d, STS_TXT_TTL.get(d, 300))) + t)
    z["sts.test"] = sts
    if bulk:
        z["bulk.test"] = ["mx A " + opn] + ["d%d MX 10 mx" % i for i in range(bulk)]
    for zone, recs in z.items():
        out = []
        for r in recs:
            if r.startswith("_25._tcp.") and " TLSA " in r:
                out += ["_%d._tcp.%s" % (p, r[len("_25._tcp."):]) for p in ports]
            else:
                out.append(r)
        z[zone] = out
    return z


def write_zone(path, origin, records, extra, ttl=300):
    with open(path, "w") as f:
        f.write("$ORIGIN %s.\n$TTL %d\n" % (origin, ttl))
        f.write("@ SOA ns.%s. hostmaster.%s. 1 3600 600 86400 %d\n" % (origin, origin, ttl))
        f.write("@ NS ns.%s.\nns A 127.0.0.1\n" % origin)
        for r in records:
            f.write(r + "\n")
        for r in extra:
            f.write(r + "\n")


def sign_zone(zdir, origin):
    """Signs DIR/zones/ORIGIN.zone with a fresh ECDSA P-256 key (a KSK that
    signs everything); returns the DS record line."""
    base = run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", origin], cwd=zdir).strip()
    run(["ldns-signzone", "-o", origin, "-f", origin + ".zone.signed",
         origin + ".zone", base], cwd=zdir)
    with open(os.path.join(zdir, base + ".ds")) as f:
        return f.read().strip()


def tamper(path):
    """Makes a signed zone bogus: the data of every MX, A and TLSA record is
    changed after signing, so no RRSIG over them verifies any more."""
    out = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) >= 5 and p[3] == "MX":
                p[4] = str(int(p[4]) + 1)
            elif len(p) >= 5 and p[3] == "A":
                p[4] = "127.0.9.9"
            elif len(p) >= 7 and p[3] == "TLSA":
                p[-1] = p[-1][::-1]
            out.append("\t".join(p) + "\n")
    with open(path, "w") as f:
        f.writelines(out)


# ------------------------------------------------------------ mini server --

class Mini:
    """Root, SERVFAIL and slow zones over UDP and TCP on 127.0.0.1:port."""

    def __init__(self, slow_ms, open_addr):
        self.slow_ms = slow_ms
        self.open_addr = open_addr
        self.slow = dns.name.from_text("slow.test.")
        self.servfail = dns.name.from_text("servfail.test.")
        self.test = dns.name.from_text("test.")

    def delay_for(self, qname):
        rel = qname.relativize(self.slow).labels
        if rel:
            m = re.fullmatch(rb"(\d{1,5})ms", rel[-1])
            if m:
                return int(m.group(1)) / 1000.0
        return self.slow_ms / 1000.0

    def answer(self, wire):
        """Returns (reply wire or None, delay in seconds)."""
        try:
            q = dns.message.from_wire(wire)
        except Exception:          # garbage: no reply, like a real server
            return None, 0
        r = dns.message.make_response(q)
        if not q.question:
            r.set_rcode(dns.rcode.FORMERR)
            return r.to_wire(), 0
        qn, qt = q.question[0].name, q.question[0].rdtype
        if qn.is_subdomain(self.servfail):
            first = qn.relativize(self.servfail).labels
            if qt == dns.rdatatype.AAAA and first and first[0].lower().startswith(b"aaaaonly"):
                r.flags |= dns.flags.AA
                r.answer.append(dns.rrset.from_text(qn, 0, "IN", "AAAA", "2001:db8:25::4"))
                return r.to_wire(), 0
            r.set_rcode(dns.rcode.SERVFAIL)
            return r.to_wire(), 0
        if qn.is_subdomain(self.slow):
            r.flags |= dns.flags.AA
            first = qn.relativize(self.slow).labels
            is_mx_host = bool(first) and first[0].lower().startswith(b"mx")
            if qt == dns.rdatatype.MX and not is_mx_host:
                r.answer.append(dns.rrset.from_text(qn, 0, "IN", "MX", "10 mx.slow.test."))
            elif qt == dns.rdatatype.A and is_mx_host:
                r.answer.append(dns.rrset.from_text(qn, 0, "IN", "A", self.open_addr))
            elif qt == dns.rdatatype.NS and qn == self.slow:
                r.answer.append(dns.rrset.from_text(qn, 0, "IN", "NS", "ns.slow.test."))
            else:
                r.authority.append(self._soa(self.slow))
            return r.to_wire(), self.delay_for(qn)
        if qn.is_subdomain(self.test) or qn == dns.name.root:
            r.flags |= dns.flags.AA
            if qn == dns.name.root and qt == dns.rdatatype.NS:
                r.answer.append(dns.rrset.from_text(qn, 300, "IN", "NS", "ns.mini.test."))
            elif qn != dns.name.root and qn != self.test:
                r.set_rcode(dns.rcode.NXDOMAIN)
                r.authority.append(self._soa(dns.name.root))
            else:
                r.authority.append(self._soa(dns.name.root))
            return r.to_wire(), 0
        r.set_rcode(dns.rcode.REFUSED)
        return r.to_wire(), 0

    @staticmethod
    def _soa(zone):
        return dns.rrset.from_text(zone, 0, "IN", "SOA",
                                   "ns.mini.test. hostmaster.mini.test. 1 3600 600 86400 0")

    def start(self):
        mini = self

        class UDP(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                reply, delay = mini.answer(data)
                if reply is None:
                    return
                if delay:
                    time.sleep(delay)
                sock.sendto(reply, self.client_address)

        class TCP(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.settimeout(10)
                try:
                    while True:
                        hdr = self._read(2)
                        if not hdr:
                            return
                        wire = self._read(int.from_bytes(hdr, "big"))
                        reply, delay = mini.answer(wire)
                        if reply is None:
                            return
                        if delay:
                            time.sleep(delay)
                        self.request.sendall(len(reply).to_bytes(2, "big") + reply)
                except OSError:
                    return

            def _read(self, n):
                b = b""
                while len(b) < n:
                    c = self.request.recv(n - len(b))
                    if not c:
                        return None
                    b += c
                return b

        class TUDP(socketserver.ThreadingMixIn, socketserver.UDPServer):
            daemon_threads = True

        class TTCP(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

        for _ in range(50):
            port = random.randint(20000, 32000)
            try:
                u = TUDP(("127.0.0.1", port), UDP)
            except OSError:
                continue
            try:
                t = TTCP(("127.0.0.1", port), TCP)
            except OSError:
                u.server_close()
                continue
            self.port = port
            for s in (u, t):
                threading.Thread(target=s.serve_forever, daemon=True).start()
            return port
        die("no free port for the mini server")


# ----------------------------------------------------------------- unbound --

def free_port(addr):
    """A port free for both UDP and TCP on addr (unbound is told to use it;
    if another process takes it meanwhile, unbound fails and we retry)."""
    for _ in range(100):
        p = random.randint(20000, 32000)
        if bindable(addr, p):
            return p
    die("no free port on " + addr)


def bindable(addr, port):
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def resolver_addr():
    """A 127.53.x.y whose port 53 is free (UDP and TCP)."""
    for _ in range(100):
        a = "127.53.%d.%d" % (random.randint(1, 254), random.randint(1, 254))
        if bindable(a, 53):
            return a
    die("no 127.53.x.y address with a free port 53 (is something bound to 0.0.0.0:53?)")


def unbound_conf(d, port, r53, mini_port, zones, log_queries=False):
    lines = [
        "server:",
        "  verbosity: 1",
        "  log-queries: %s" % ("yes" if log_queries else "no"),
        "  interface: 127.0.0.1@%d" % port,
    ]
    if r53:
        lines.append("  interface: %s@53" % r53)
    lines += [
        "  port: %d" % port,
        "  do-ip4: yes", "  do-ip6: no", "  do-udp: yes", "  do-tcp: yes",
        "  interface-automatic: no",
        "  do-daemonize: no",
        '  chroot: ""', '  username: ""',
        '  directory: "%s"' % d,
        '  pidfile: "%s/unbound.pid"' % d,
        '  logfile: ""', "  use-syslog: no", "  log-time-ascii: yes",
        "  num-threads: 1",
        "  access-control: 127.0.0.0/8 allow",
        "  do-not-query-localhost: no",
        "  qname-minimisation: no",
        "  aggressive-nsec: no",
        "  prefetch: no",
        "  minimal-responses: no",
        "  module-config: \"validator iterator\"",
        '  trust-anchor-file: "%s/anchor.ds"' % d,
        "  val-log-level: 2",
        "  trust-anchor-signaling: no",
        "  root-key-sentinel: no",
        # unbound 1.17 drops the reply to a client whose query took longer
        # than ~1.9 s; 0 makes it answer SERVFAIL instead.
        "  discard-timeout: 0",
        # unbound times out an upstream after 376 ms at first and resends
        # from a new port, dropping the late first reply: the slow zone would
        # take about twice its delay. On loopback nothing is lost, so wait
        # ~1.9 s for every upstream (the mini server) before resending.
        "  unknown-server-time-limit: 1900",
        "  infra-cache-min-rtt: 1900",
        # test. is a default local zone (RFC 6761): let it resolve.
        '  local-zone: "test." transparent',
        "  rrset-cache-size: 64m", "  msg-cache-size: 32m",
        # Remote control on a unix socket in DIR (no certificates, reachable
        # only through the file system): set_txt() and tests change records at
        # run time with `unbound-control -c DIR/unbound.conf local_data ...`.
        "remote-control:",
        "  control-enable: yes",
        '  control-interface: "%s/control.sock"' % d,
        "  control-use-cert: no",
    ]
    for z in zones:
        lines += [
            "auth-zone:",
            '  name: "%s"' % z,
            '  zonefile: "%s/zones/%s"' % (d, zones[z]),
            "  for-downstream: no", "  for-upstream: yes", "  fallback-enabled: no",
        ]
    for z in ("slow.test", "servfail.test", "."):
        lines += ["stub-zone:", '  name: "%s"' % z, "  stub-addr: 127.0.0.1@%d" % mini_port]
    return "\n".join(lines) + "\n"


def set_pdeathsig():
    """In the child: SIGTERM when the fixture process dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def ready(port, timeout):
    """True once unbound answers the signed zone's SOA as secure (AD)."""
    q = dns.message.make_query("dnssec.test.", "SOA", want_dnssec=True)
    q.flags |= dns.flags.AD
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5)
            if r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AD:
                return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


def control(fx, *args):
    """Runs unbound-control against the fixture in fx (the DNS_* dict);
    raises RuntimeError with its output when it fails."""
    conf = os.path.join(fx["DNS_DIR"], "unbound.conf")
    p = subprocess.run(["unbound-control", "-c", conf, *args], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=20)
    if p.returncode != 0 or p.stdout.strip() not in ("ok", ""):
        raise RuntimeError("unbound-control %s: %s%s" % (" ".join(args), p.stdout, p.stderr))
    return p.stdout


def set_txt(fx, owner, records, ttl=2):
    """Replaces the TXT records of owner (absolute or relative to nothing:
    "_mta-sts.idchange.sts.test") at run time: unbound answers local data
    before its auth-zones and its cache, so the next query sees it.
    records: list of TXT data in zone syntax ('"v=STSv1; id=2"'); [] leaves
    the name with no TXT record (NODATA). A client's own cache keeps the old
    answer for its TTL (2 s for the idchange record)."""
    owner = owner.rstrip(".") + "."
    control(fx, "local_data_remove", owner)
    if not records:
        # An empty TXT rrset is not expressible: a record of another type
        # makes the name exist with no TXT (NODATA).
        control(fx, "local_data", "%s %d IN NULL \\# 0" % (owner, ttl))
    for r in records:
        control(fx, "local_data", "%s %d IN TXT %s" % (owner, ttl, r))


def spawn(d, *args, timeout=60):
    """For Python tests: starts this fixture with --dir D and ARGS as a child
    process, waits until it is ready and returns (Popen, dict of the DNS_*
    values). Raises RuntimeError with the fixture's output if it fails. Stop
    it with p.send_signal(SIGTERM); p.wait()."""
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--dir", d, *args],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    env = os.path.join(d, "fixture.json")
    end = time.monotonic() + timeout
    while time.monotonic() < end and not os.path.exists(env) and p.poll() is None:
        time.sleep(0.05)
    if not os.path.exists(env):
        if p.poll() is None:
            p.kill()
        p.wait()
        raise RuntimeError("dns fixture did not start: " + p.stdout.read())
    with open(env) as f:
        return p, json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--dir", required=True, help="work directory (created)")
    ap.add_argument("--port", type=int, default=0, help="unbound port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--resolver53", action="store_true",
                    help="also listen on a unique 127.53.x.y:53 (for resolv.conf)")
    ap.add_argument("--addr", action="append", default=[], metavar="NAME=IP",
                    help="tls=, enc=, open= addresses of the MX hosts")
    ap.add_argument("--tlsa-cert", help="PEM certificate the good TLSA records match")
    ap.add_argument("--tlsa-port", type=int, action="append", metavar="PORT",
                    help="TLSA records at _PORT._tcp (repeatable; default 25 only)")
    ap.add_argument("--record", action="append", default=[], metavar="'OWNER. TTL TYPE DATA'")
    ap.add_argument("--slow-ms", type=int, default=400)
    ap.add_argument("--bulk", type=int, default=0, help="bulk.test names d0..d<N-1>")
    ap.add_argument("--ready-timeout", type=float, default=20)
    ap.add_argument("--log-queries", action="store_true",
                    help="unbound logs every query it gets (count them in DIR/unbound.log)")
    args = ap.parse_args()

    d = os.path.abspath(args.dir)
    zdir = os.path.join(d, "zones")
    os.makedirs(zdir, exist_ok=True)
    os.chmod(d, 0o755)
    addrs = dict(DEFAULT_ADDRS)
    for a in args.addr:
        k, _, v = a.partition("=")
        if k not in addrs or not v:
            die("--addr %r: want tls=IP, enc=IP or open=IP" % a)
        socket.inet_aton(v)
        addrs[k] = v

    if args.tlsa_cert:
        cert, key = os.path.abspath(args.tlsa_cert), ""
    else:
        cert, key = make_cert(os.path.join(d, "tls"))
    good = spki_sha256(cert)
    bad = hashlib.sha256(b"not the key of " + good.encode()).hexdigest()

    zones = zone_records(addrs, good, bad, args.bulk, args.tlsa_port or [25])
    extra = {z: [] for z in zones}
    for rec in args.record:
        owner = rec.split()[0] if rec.split() else ""
        if not owner.endswith("."):
            die("--record %r: the owner must be an absolute name (ending in '.')" % rec)
        owner = owner.lower()
        zs = [z for z in zones if owner == z + "." or owner.endswith("." + z + ".")]
        if not zs:
            die("--record %r: no fixture zone holds %s (zones: %s)" % (rec, owner, ", ".join(zones)))
        extra[max(zs, key=len)].append(rec)

    files, anchors = {}, []
    for z in zones:
        # bulk.test is for cache benchmarks: a day, so nothing expires mid-run.
        write_zone(os.path.join(zdir, z + ".zone"), z, zones[z], extra[z],
                   86400 if z == "bulk.test" else 300)
        if z in SIGNED_ZONES:
            anchors.append(sign_zone(zdir, z))
            files[z] = z + ".zone.signed"
        else:
            files[z] = z + ".zone"
    tamper(os.path.join(zdir, "bogus.test.zone.signed"))
    anchor = os.path.join(d, "anchor.ds")
    with open(anchor, "w") as f:
        f.write("\n".join(anchors) + "\n")
    os.chmod(anchor, 0o644)

    mini = Mini(args.slow_ms, addrs["open"])
    mini_port = mini.start()

    r53 = resolver_addr() if args.resolver53 else ""
    conf = os.path.join(d, "unbound.conf")
    proc = None
    log = open(os.path.join(d, "unbound.log"), "ab")
    for attempt in range(5):
        port = args.port or free_port("127.0.0.1")
        with open(conf, "w") as f:
            f.write(unbound_conf(d, port, r53, mini_port, files, args.log_queries))
        run(["unbound-checkconf", conf])
        proc = subprocess.Popen(["unbound", "-d", "-c", conf], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, preexec_fn=set_pdeathsig)
        if ready(port, args.ready_timeout):
            break
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        proc = None
        if args.port:
            break
        if r53 and attempt >= 1:
            r53 = resolver_addr()
    if proc is None:
        with open(os.path.join(d, "unbound.log"), errors="replace") as f:
            sys.stderr.write(f.read()[-3000:])
        die("unbound did not start or does not validate dnssec.test (see %s/unbound.log)" % d)

    class Stop(Exception):
        pass

    def on_signal(*_):
        raise Stop()

    def stop_unbound():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    env = {
        "DNS_DIR": d, "DNS_PORT": port, "DNS_ADDR": "127.0.0.1",
        "DNS_FORWARDER": "127.0.0.1@%d" % port, "DNS_RESOLVER": r53,
        "DNS_ANCHOR": anchor, "DNS_TLSA_GOOD": good, "DNS_TLSA_BAD": bad,
        "DNS_TLS_CERT": cert, "DNS_TLS_KEY": key,
        "DNS_ADDR_TLS": addrs["tls"], "DNS_ADDR_ENC": addrs["enc"],
        "DNS_ADDR_OPEN": addrs["open"], "DNS_SLOW_MS": args.slow_ms,
        "DNS_MINI_PORT": mini_port, "DNS_UNBOUND_PID": proc.pid,
        "DNS_FIXTURE_PID": os.getpid(),
        "DNS_CONTROL": "unbound-control -c %s" % conf,
    }
    with open(os.path.join(d, "fixture.json.tmp"), "w") as f:
        json.dump(env, f, indent=1)
    with open(os.path.join(d, "fixture.env.tmp"), "w") as f:
        for k, v in env.items():
            f.write("%s='%s'\n" % (k, v))
    os.rename(os.path.join(d, "fixture.json.tmp"), os.path.join(d, "fixture.json"))
    os.rename(os.path.join(d, "fixture.env.tmp"), os.path.join(d, "fixture.env"))
    print("dns fixture ready: unbound pid %d on 127.0.0.1@%d%s, anchor %s"
          % (proc.pid, port, (" and %s@53" % r53) if r53 else "", anchor), flush=True)

    # Poll instead of proc.wait(): a signal handler must not interrupt a
    # blocking wait that holds the Popen's lock and then wait again.
    try:
        while proc.poll() is None:
            time.sleep(0.1)
    except Stop:
        stop_unbound()
        sys.exit(0)
    die("unbound exited unexpectedly (status %d), see %s/unbound.log" % (proc.returncode, d))

if __name__ == "__main__":
    main()
