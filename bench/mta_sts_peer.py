#!/usr/bin/python3
"""MTA-STS cache-hit benchmark against Debian's postfix-mta-sts-resolver
(mta-sts-daemon 1.1.2), same load client (bench/socketmap_load), same keys,
same run, next to bench/const_responder (the IPC ceiling of this machine).

Runs inside a private mount and network namespace (bench/mta_sts_peer.sh
enters them): the peer has no resolver setting and no CA setting, so it gets
a private /etc/resolv.conf (bind-mounted) naming the DNS fixture
(tests/dns/fixture.py --resolver53), SSL_CERT_FILE naming the test CA, and an
HTTPS fixture (tests/sts/https_fixture.py) on 127.0.0.1:443 of the private
loopback. Every domain d<i>.plain.test has "_mta-sts TXT v=STSv1; id=1" and
an enforce policy; each peer is warmed with one lookup per domain (checked to
be the enforce answer) before it is measured, so the runs measure cache hits.

Servers: "const" (bench/const_responder: the ceiling), "tlspolicyd" (MTA-STS
on, its SQLite cache in a temp file, the same DNS and HTTPS fixtures: it
resolves mta-sts.<d> through the same resolv.conf and checks the certificate
against the test CA with mta_sts.ca_file; daemon.log_rule_lookups off, as the
peer logs nothing per lookup at -v warn), "tlspolicyd-static" (the same
daemon with one static rule per domain giving the same answer: what a cache
hit costs over a rule), "peer-internal" (cache type
internal, in memory) and "peer-sqlite" (the cache type Debian's
/etc/mta-sts-daemon.yml ships: sqlite, in a temp file). Every row is printed
with throughput and p99, then tlspolicyd's ratio to const and to each peer.

Cold miss: COLD further domains per client, never asked before: the time of
the first request for each (TXT lookup + HTTPS fetch + answer) for
tlspolicyd and for peer-internal, one request at a time, next to the
fixture's own time for the same work on a third fresh set (a TXT query over
UDP to the same resolver with dnspython, then a GET over a new TLS
connection with Python's http.client).

Usage (as root, from bench/mta_sts_peer.sh): mta_sts_peer.py BUILD_DIR
Environment: DOMAINS (100), COLD (30), SECONDS_PER_RUN (3), ROUNDS (3),
CONNS ("1 32 256"), DNS_FIXTURE_PY (tests/dns/fixture.py), KEEP=1 (keep the
temporary directory with the logs).
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
sys.path.insert(0, os.path.join(root, "tests", "sts"))
from https_fixture import HttpsFixture, Pki, Site, policy  # noqa: E402

build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "build"))
ndom = int(os.environ.get("DOMAINS", "100"))
secs = os.environ.get("SECONDS_PER_RUN", "3")
rounds = int(os.environ.get("ROUNDS", "3"))
conns = os.environ.get("CONNS", "1 32 256").split()
ncold = int(os.environ.get("COLD", "30"))
fixture_py = os.environ.get("DNS_FIXTURE_PY", os.path.join(root, "tests", "dns", "fixture.py"))

procs = []  # (name, Popen) we started; stopped by PID at the end


def die(msg):
    print("mta_sts_peer: " + msg, file=sys.stderr)
    stop_all()
    sys.exit(1)


def stop_all():
    for name, p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def netstring(s):
    b = s.encode()
    return b"%d:%s," % (len(b), b)


def query(port, key, timeout=30, name="postfix"):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(netstring(name + " " + key))
        buf = b""
        while True:
            m = re.match(rb"(\d+):", buf)
            if m and len(buf) >= m.end() + int(m.group(1)) + 1:
                return buf[m.end():m.end() + int(m.group(1))].decode()
            chunk = s.recv(65536)
            if not chunk:
                return "(closed) " + buf.decode(errors="replace")
            buf += chunk


def wait_port(port, proc, what, limit=30):
    end = time.time() + limit
    while time.time() < end:
        if proc.poll() is not None:
            die("%s exited (%s)" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    die("%s: port %d not open after %d s" % (what, port, limit))


for tool in ("mta-sts-daemon", "unbound", "openssl"):
    if not shutil.which(tool):
        die("%s not found (Debian packages postfix-mta-sts-resolver, unbound, openssl)" % tool)
for b in ("socketmap_load", "const_responder", "tlspolicyd"):
    if not os.access(os.path.join(build, b), os.X_OK):
        die("%s/%s missing: build first" % (build, b))
if not os.path.exists(fixture_py):
    die("DNS fixture %s missing (tests/dns/ from the fixture branch)" % fixture_py)

tmp = tempfile.mkdtemp(prefix="tlspolicy-stsbench-")
try:
    domains = ["d%d.plain.test" % i for i in range(ndom)]
    # Fresh domains for the cold-miss figures: one set per client.
    cold = {who: ["%s%d.plain.test" % (who[0], i) for i in range(ncold)]
            for who in ("tlspolicyd", "peer", "fixture")}
    every = domains + [d for v in cold.values() for d in v]
    # DNS: the TXT record and mta-sts.<d> -> 127.0.0.1 for every domain, and
    # an MX (tlspolicyd asks for it too; the peer does not).
    records = []
    for d in every:
        records += ["--record", '_mta-sts.%s. 300 TXT "v=STSv1; id=1"' % d,
                    "--record", "mta-sts.%s. 300 A 127.0.0.1" % d,
                    "--record", "%s. 300 MX 10 mx.%s." % (d, d),
                    "--record", "mx.%s. 300 A 127.0.0.3" % d]
    dns_dir = os.path.join(tmp, "dns")
    dns = subprocess.Popen(["/usr/bin/python3", fixture_py, "--dir", dns_dir, "--resolver53"] + records,
                           stdin=subprocess.DEVNULL, stdout=open(dns_dir + ".log", "w"), stderr=subprocess.STDOUT)
    procs.append(("dns fixture", dns))
    env_file = os.path.join(dns_dir, "fixture.env")
    end = time.time() + 120
    while not (os.path.exists(env_file) and os.path.getsize(env_file) > 0):
        if dns.poll() is not None or time.time() > end:
            die("DNS fixture did not start; see %s.log" % dns_dir)
        time.sleep(0.2)
    fx_env = dict(l.split("=", 1) for l in open(env_file).read().split("\n") if "=" in l)
    resolver = fx_env.get("DNS_RESOLVER", "").strip("'\"")
    if not resolver:
        die("the DNS fixture gave no DNS_RESOLVER (needs --resolver53)")
    # A private resolv.conf: this process is in its own mount namespace.
    rc = os.path.join(tmp, "resolv.conf")
    with open(rc, "w") as f:
        f.write("nameserver %s\n" % resolver)
    subprocess.run(["mount", "--bind", rc, os.path.realpath("/etc/resolv.conf")], check=True)

    # HTTPS on 443 of the private loopback, a certificate naming every host.
    pki_dir = os.path.join(tmp, "pki")
    os.makedirs(pki_dir)
    pki = Pki(pki_dir)
    cert = pki.issue("sts", ["mta-sts." + d for d in every])
    body = {d: policy("enforce", ["mx.%s" % d, "*.mx.%s" % d], max_age=86400) for d in every}
    https = HttpsFixture(cert, {d: Site(body=body[d]) for d in every}, port=443)
    https.__enter__()

    peer_env = dict(os.environ, SSL_CERT_FILE=pki.ca)
    for k in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        peer_env.pop(k, None)
    servers = {}
    p = free_port()
    cp = subprocess.Popen([os.path.join(build, "const_responder"), str(p)], stdin=subprocess.DEVNULL)
    procs.append(("const_responder", cp))
    wait_port(p, cp, "const_responder")
    servers["const"] = (p, "postfix")

    # tlspolicyd with MTA-STS: the same fixtures, its own cache file.
    tport = free_port()
    tconf = os.path.join(tmp, "tlspolicyd.conf")
    with open(tconf, "w") as f:
        f.write("""default = "may";
discovery = {
  forwarders = [ "%s" ];
  trust_anchor_file = "%s";
  mta_sts = {
    ca_file = "%s";
    cache = "%s";
  };
};
outbound = ( { name = "partners"; level = "encrypt"; to = [ "partner.test" ]; } );
daemon = { socketmap = [ "inet:127.0.0.1:%d" ]; max_connections = 2000; log_rule_lookups = false; };
""" % (fx_env["DNS_FORWARDER"].strip("'\""), fx_env["DNS_ANCHOR"].strip("'\""), pki.ca,
       os.path.join(tmp, "tlspolicyd-mta-sts.db"), tport))
    td = subprocess.Popen([os.path.join(build, "tlspolicyd"), "-f", "-c", tconf], stdin=subprocess.DEVNULL,
                          stdout=open(os.path.join(tmp, "tlspolicyd.log"), "w"), stderr=subprocess.STDOUT)
    procs.append(("tlspolicyd", td))
    wait_port(tport, td, "tlspolicyd")
    servers["tlspolicyd"] = (tport, "tls-policy")

    # The same daemon with static rules giving the same answers: what an
    # MTA-STS cache hit costs over a rule, in the same run.
    sport = free_port()
    sconf = os.path.join(tmp, "tlspolicyd-static.conf")
    with open(sconf, "w") as f:
        f.write('default = "may";\noutbound = (\n%s\n);\n'
                'daemon = { socketmap = [ "inet:127.0.0.1:%d" ]; max_connections = 2000; log_rule_lookups = false; };\n'
                % (",\n".join('  { name = "r%d"; level = "secure match=mx.%s:.mx.%s servername=hostname"; to = [ "%s" ]; }'
                              % (i, d, d, d) for i, d in enumerate(domains)), sport))
    ts = subprocess.Popen([os.path.join(build, "tlspolicyd"), "-f", "-c", sconf], stdin=subprocess.DEVNULL,
                          stdout=open(os.path.join(tmp, "tlspolicyd-static.log"), "w"), stderr=subprocess.STDOUT)
    procs.append(("tlspolicyd-static", ts))
    wait_port(sport, ts, "tlspolicyd-static")
    servers["tlspolicyd-static"] = (sport, "tls-policy")
    for name, cache in (("peer-internal", "  type: internal\n  options:\n    cache_size: 10000\n"),
                        ("peer-sqlite", "  type: sqlite\n  options:\n    filename: \"%s\"\n"
                         % os.path.join(tmp, "peer-cache.db"))):
        port = free_port()
        conf = os.path.join(tmp, name + ".yml")
        # reuse_port stays true: 1.1.2 fails to start with false (responder.py
        # builds its listen options only in the reuse_port branch).
        with open(conf, "w") as f:
            f.write("host: 127.0.0.1\nport: %d\nreuse_port: true\nshutdown_timeout: 2\ncache:\n%s"
                    "default_zone:\n  strict_testing: false\n  timeout: 4\n" % (port, cache))
        pr = subprocess.Popen(["mta-sts-daemon", "-c", conf, "-v", "warn", "-l", os.path.join(tmp, name + ".log")],
                              env=peer_env, stdin=subprocess.DEVNULL)
        procs.append((name, pr))
        wait_port(port, pr, name)
        servers[name] = (port, "postfix")
    for name, (port, mapname) in servers.items():
        if name == "const":
            continue
        # Warm the cache and check the answers: a bench of wrong answers is worthless.
        bad = []
        for d in domains:
            got = query(port, d, name=mapname)
            want = "OK secure match="
            if not got.startswith(want) or "mx.%s" % d not in got:
                bad.append((d, got))
        if bad:
            die("%s: %d of %d warm-up answers are not the enforce policy, e.g. %r (log %s)"
                % (name, len(bad), len(domains), bad[0], os.path.join(tmp, name + ".log")))
        print("%s: %d domains warmed, e.g. %s -> %s"
              % (name, len(domains), domains[0], query(port, domains[0], name=mapname)))

    keys = os.path.join(tmp, "keys")
    with open(keys, "w") as f:
        f.write("\n".join(domains) + "\n")
    print("\n%-5s %-18s %10s %9s %9s %7s   (best of %d interleaved rounds of %s s, %d keys, all cache hits)"
          % ("conns", "server", "req/s", "p50_us", "p99_us", "failed", rounds, secs, len(domains)))
    table = {}
    for c in conns:
        best = {}
        for _ in range(rounds):
            for name, (port, mapname) in servers.items():
                out = subprocess.run([os.path.join(build, "socketmap_load"), str(port), mapname, keys, c, secs],
                                     capture_output=True, text=True, stdin=subprocess.DEVNULL)
                last = (out.stdout.strip().splitlines() or [""])[-1]
                m = re.search(r"req/s=([\d.]+)", last)
                rps = float(m.group(1)) if m else 0.0
                if name not in best or rps > best[name][0]:
                    best[name] = (rps, last)
        for name in servers:
            rps, last = best[name]
            f = dict(re.findall(r"(\w+)=([\d.]+)", last))
            table[(c, name)] = (rps, f.get("p99", "?"))
            print("%-5s %-18s %10.0f %9s %9s %7s" % (c, name, rps, f.get("p50", "?"), f.get("p99", "?"),
                                                     f.get("failed", "?")))
    print("\n%-5s %18s %22s %20s %20s" % ("conns", "tlspolicyd/const", "tlspolicyd/peer-int", "tlspolicyd/peer-sql",
                                         "tlspolicyd/static"))
    for c in conns:
        t = table[(c, "tlspolicyd")][0]

        def r(n):
            v = table[(c, n)][0]
            return "%.2f" % (t / v) if v else "-"
        print("%-5s %18s %22s %20s %20s" % (c, r("const"), r("peer-internal"), r("peer-sqlite"),
                                             r("tlspolicyd-static")))

    # Cold misses: the first request for a domain, one at a time.
    def pcts(v):
        v = sorted(v)
        return v[len(v) // 2], v[min(len(v) - 1, int(len(v) * 0.99))]

    def cold_client(port, mapname, names):
        t, bad = [], []
        for d in names:
            t0 = time.perf_counter()
            got = query(port, d, name=mapname)
            t.append((time.perf_counter() - t0) * 1e6)
            if not got.startswith("OK secure match=") or "mx.%s" % d not in got:
                bad.append((d, got))
        return t, bad

    def fixture_own(names):
        import http.client
        import ssl
        import dns.message
        import dns.query
        ctx = ssl.create_default_context(cafile=pki.ca)
        addr = fx_env["DNS_ADDR"].strip("'\"")
        port = int(fx_env["DNS_PORT"].strip("'\""))
        t = []
        for d in names:
            t0 = time.perf_counter()
            a = dns.query.udp(dns.message.make_query("_mta-sts." + d, "TXT"), addr, port=port, timeout=5)
            conn = http.client.HTTPSConnection("mta-sts." + d, 443, context=ctx, timeout=10)
            conn.request("GET", "/.well-known/mta-sts.txt")
            resp = conn.getresponse()
            b = resp.read()
            conn.close()
            t.append((time.perf_counter() - t0) * 1e6)
            if not a.answer or resp.status != 200 or b"enforce" not in b:
                die("fixture's own fetch of %s failed (%s, HTTP %s)" % (d, a.answer, resp.status))
        return t

    print("\ncold miss (%d fresh domains per client, one request at a time; us):" % ncold)
    fx_t = fixture_own(cold["fixture"])
    f50, f99 = pcts(fx_t)
    print("  %-40s p50 %8.0f  p99 %8.0f" % ("fixture's own (TXT over UDP + HTTPS GET)", f50, f99))
    for who, (port, mapname) in (("tlspolicyd", servers["tlspolicyd"]), ("peer", servers["peer-internal"])):
        t, bad = cold_client(port, mapname, cold[who])
        c50, c99 = pcts(t)
        print("  %-40s p50 %8.0f  p99 %8.0f   p50 over the fixture's own: %+.0f%s"
              % (who + " first request", c50, c99, c50 - f50,
                 "" if not bad else "   (%d answers not the enforce policy, e.g. %r)" % (len(bad), bad[0])))
finally:
    try:
        https.__exit__(None, None, None)
    except NameError:
        pass
    stop_all()
    if os.environ.get("KEEP") == "1":
        print("kept %s (the daemons' logs are there)" % tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
