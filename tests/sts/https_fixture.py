#!/usr/bin/python3
"""An HTTPS fixture for MTA-STS tests: a test CA and server certificates made
with openssl at test time, and a threaded HTTPS server on 127.0.0.1 (a free
port) that serves https://mta-sts.<domain>/.well-known/mta-sts.txt for many
domains at once, each with its own behaviour, choosing the certificate by
SNI. Clients reach it for any mta-sts.<domain>:443 with libcurl's CONNECT_TO
(or a DNS fixture plus a network namespace), so the certificate is checked
against the real name.

Behaviours (Site.kind): "policy" (200 with body and content_type), "redirect",
"status" (any code), "big" (declared Content-Length), "chunked" (no length),
"slow" (delay before the answer). Every request is counted per host.

Used in-process by Python tests (`with HttpsFixture(cert, sites) as fx:`, or
fx.start() / fx.stop()); fx.set_site(domain, Site(...)) changes what a domain
serves while it runs. sts_sites(pki) gives the sites that match the DNS
fixture's sts.test zone (tests/dns/fixture.py, STS_DOMAINS).

As a process, for shell tests (see tests/sts/README.md):
  https_fixture.py --dir D [--port P] [--slow-s S]
makes the test CA and certificates in D, serves sts_sites() and writes
D/https.json (and D/https.env: STS_PORT STS_CA STS_CONNECT_TO STS_PID) once
it listens. SIGHUP rereads D/sites.json ({"domain": {"kind": ..., "body":
..., "mode": ..., "mx": [...], "max_age": N, "status": N, "delay": S}}, on
top of the standard sites; a null value removes a domain: 404); SIGTERM stops.
"""
import http.server
import os
import socketserver
import ssl
import subprocess
import sys
import threading
import time


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Pki:
    """A CA (ca.crt) and certificates signed by it, in directory d."""

    def __init__(self, d, ca_name="tlspolicy test CA"):
        self.dir = d
        self.ca = os.path.join(d, "ca.crt")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                 "-subj", "/CN=" + ca_name, cwd=d)

    def issue(self, stem, names, days=2):
        """A certificate for names (SANs), valid for days (negative: expired)."""
        cnf = os.path.join(self.dir, stem + ".ext")
        with open(cnf, "w") as f:
            f.write("subjectAltName=" + ",".join("DNS:" + n for n in names) + "\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", stem + ".key", "-out", stem + ".csr", "-subj", "/CN=" + names[0], cwd=self.dir)
        _openssl("x509", "-req", "-in", stem + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", str(days), "-extfile", cnf, "-out", stem + ".crt", cwd=self.dir)
        return (os.path.join(self.dir, stem + ".crt"), os.path.join(self.dir, stem + ".key"))


class Site:
    def __init__(self, kind="policy", body="", content_type="text/plain", status=200,
                 location="", size=0, delay=0.0, cert=None):
        self.kind, self.body, self.content_type = kind, body, content_type
        self.status, self.location, self.size, self.delay = status, location, size, delay
        self.cert = cert  # (crt, key) for this host; None: the server's default


def policy(mode, mx=(), max_age=86400, eol="\r\n"):
    lines = ["version: STSv1", "mode: " + mode] + ["mx: " + m for m in mx] + ["max_age: %d" % max_age]
    return eol.join(lines) + eol


class HttpsFixture:
    """sites: {"enforce.test": Site(...)}; the host served is mta-sts.<domain>.
    port 0 picks a free one; 443 only inside a network namespace of its own."""

    def __init__(self, default_cert, sites, port=0, addr="127.0.0.1"):
        self.sites = dict(sites)
        self.hits = {}
        self.lock = threading.Lock()
        self._contexts = {}
        self._default = self._context(default_cert)
        fixture = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0].lower()
                domain = host[len("mta-sts."):] if host.startswith("mta-sts.") else host
                with fixture.lock:
                    fixture.hits[domain] = fixture.hits.get(domain, 0) + 1
                site = fixture.sites.get(domain)
                if site is None or self.path != "/.well-known/mta-sts.txt":
                    return self._send(404, "text/plain", b"not found\n")
                if site.delay:
                    time.sleep(site.delay)
                if site.kind == "redirect":
                    self.send_response(site.status or 301)
                    self.send_header("Location", site.location)
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                elif site.kind == "status":
                    self._send(site.status, "text/plain", site.body.encode())
                elif site.kind == "big":
                    self._send(200, site.content_type, b"#" * site.size)
                elif site.kind == "chunked":
                    self.send_response(200)
                    self.send_header("Content-Type", site.content_type)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    left = site.size
                    try:
                        while left > 0:
                            n = min(left, 8192)
                            self.wfile.write(b"%x\r\n" % n + b"#" * n + b"\r\n")
                            left -= n
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError:
                        pass  # the client hung up at its limit: expected
                else:
                    self._send(site.status, site.content_type, site.body.encode())
                self.close_connection = True

            def _send(self, code, ctype, body):
                self.send_response(code)
                if ctype:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128  # every case connects at once

            def handle_error(self, request, client_address):
                pass  # failed handshakes are what several cases test

            def get_request(self):
                sock, addr = self.socket.accept()
                return fixture._default.wrap_socket(sock, server_side=True,
                                                     do_handshake_on_connect=False), addr

        self.server = Server((addr, port), Handler)
        self.port = self.server.server_address[1]
        self._default.sni_callback = self._pick
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _context(self, cert):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*cert)
        return ctx

    def _pick(self, sslsock, server_name, _ctx):
        if not server_name or not server_name.startswith("mta-sts."):
            return None
        site = self.sites.get(server_name[len("mta-sts."):])
        if site is not None and site.cert is not None:
            with self.lock:
                if site.cert not in self._contexts:
                    self._contexts[site.cert] = self._context(site.cert)
                ctx = self._contexts[site.cert]
            sslsock.context = ctx
        return None

    def set_site(self, domain, site):
        """What mta-sts.<domain> serves from now on (None: 404)."""
        with self.lock:
            if site is None:
                self.sites.pop(domain, None)
            else:
                self.sites[domain] = site

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        """Stops serving and closes the listening socket (connections are
        refused from now on)."""
        self.server.shutdown()
        self.server.server_close()

    def connect_to(self, domains):
        """libcurl CONNECT_TO entries sending mta-sts.<d>:443 here."""
        return ["mta-sts.%s:443:127.0.0.1:%d" % (d, self.port) for d in domains]

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()


# The sts.test domains of the DNS fixture (tests/dns/fixture.py, STS_DOMAINS)
# and what each serves. MX host of every domain: mx.<domain> (address tls).
STS_ZONE = "sts.test"
STS_LABELS = ["enforce", "wildcard", "mismatch", "testing", "none", "nopolicy", "redirect", "big",
              "slow", "wrongname", "expired", "idchange", "split", "twotxt", "badtxt", "notxt", "down"]


def sts_domains():
    return ["%s.%s" % (l, STS_ZONE) for l in STS_LABELS]


def sts_sites(pki, slow_s=6.0):
    """{domain: Site} for the sts.test zone; certificates issued by pki (one
    for every well-named site, one for another name, one expired)."""
    z = STS_ZONE
    good = pki.issue("sts-good", ["mta-sts.%s.%s" % (l, z) for l in STS_LABELS
                                  if l not in ("wrongname", "expired")])
    wrong = pki.issue("sts-wrong", ["mta-sts.other.%s" % z])
    expired = pki.issue("sts-expired", ["mta-sts.expired.%s" % z], days=-1)

    def enf(label, mx=None, cert_override=None, **kw):
        return Site(body=policy("enforce", mx or ["mx.%s.%s" % (label, z)]),
                    cert=cert_override or good, **kw)
    return {
        "enforce." + z: enf("enforce"),
        "wildcard." + z: enf("wildcard", ["*.wildcard." + z]),
        "mismatch." + z: enf("mismatch", ["mx.elsewhere." + z]),
        "testing." + z: Site(body=policy("testing", ["mx.testing." + z]), cert=good),
        "none." + z: Site(body=policy("none", max_age=86400), cert=good),
        # nopolicy: absent, 404
        "redirect." + z: Site(kind="redirect", status=301, cert=good,
                              location="https://mta-sts.enforce.%s/.well-known/mta-sts.txt" % z),
        "big." + z: Site(kind="big", size=70000, cert=good),
        "slow." + z: enf("slow", delay=slow_s),
        "wrongname." + z: enf("wrongname", cert_override=wrong),
        "expired." + z: enf("expired", cert_override=expired),
        "idchange." + z: enf("idchange"),
        "split." + z: enf("split"),
        "twotxt." + z: enf("twotxt"),
        "badtxt." + z: enf("badtxt"),
        "notxt." + z: enf("notxt"),
        "down." + z: enf("down"),
    }, good


def _site_from_json(v, cert):
    if "body" not in v and "mode" in v:
        v = dict(v, body=policy(v["mode"], v.get("mx", []), v.get("max_age", 86400)))
    return Site(kind=v.get("kind", "policy"), body=v.get("body", ""),
                content_type=v.get("content_type", "text/plain"), status=v.get("status", 200),
                location=v.get("location", ""), size=v.get("size", 0), delay=v.get("delay", 0.0),
                cert=cert)


def main():
    import argparse
    import json
    import signal
    ap = argparse.ArgumentParser(description="HTTPS fixture for MTA-STS tests (sts.test sites)")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--slow-s", type=float, default=6.0, help="delay of slow.sts.test")
    args = ap.parse_args()
    d = os.path.abspath(args.dir)
    os.makedirs(d, exist_ok=True)
    pki = Pki(d)
    sites, good = sts_sites(pki, args.slow_s)
    fx = HttpsFixture(good, sites, port=args.port)
    base = dict(sites)

    def reload(*_):
        path = os.path.join(d, "sites.json")
        try:
            with open(path) as f:
                over = json.load(f)
        except (OSError, ValueError) as e:
            print("https fixture: %s: %s" % (path, e), file=sys.stderr, flush=True)
            return
        for dom, site in base.items():
            fx.set_site(dom, site)
        for dom, v in over.items():
            fx.set_site(dom, None if v is None else _site_from_json(v, good))
        print("https fixture: reloaded %s" % path, flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGHUP, reload)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    fx.start()
    env = {"STS_PORT": fx.port, "STS_CA": pki.ca, "STS_PID": os.getpid(),
           "STS_CONNECT_TO": " ".join(fx.connect_to(sts_domains())), "STS_DIR": d}
    with open(os.path.join(d, "https.json.tmp"), "w") as f:
        json.dump(env, f, indent=1)
    with open(os.path.join(d, "https.env.tmp"), "w") as f:
        for k, v in env.items():
            f.write("%s='%s'\n" % (k, v))
    os.rename(os.path.join(d, "https.json.tmp"), os.path.join(d, "https.json"))
    os.rename(os.path.join(d, "https.env.tmp"), os.path.join(d, "https.env"))
    print("https fixture ready on 127.0.0.1:%d, CA %s" % (fx.port, pki.ca), flush=True)
    while not stop.wait(0.2):
        pass
    fx.stop()


if __name__ == "__main__":
    main()
