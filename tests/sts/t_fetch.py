#!/usr/bin/python3
"""discovery/sts_fetch against a real HTTPS server on loopback (https_fixture):
what RFC 8461 3.3 requires of the policy fetch, each case a row with the
outcome it must have. Runs the probe with the fetcher's own poll() loop and
with an epoll loop through LoopHooks. Usage: t_fetch.py PATH/sts_fetch_probe"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from https_fixture import HttpsFixture, Pki, Site, policy  # noqa: E402

probe = sys.argv[1]
failures = []


def check(what, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + what + ("" if cond else "\n     " + detail))
    if not cond:
        failures.append(what)


with tempfile.TemporaryDirectory(prefix="tlspolicy-sts-") as d:
    pki = Pki(d)
    # One certificate for every well-named site, separate ones for the bad cases.
    good_domains = ["enforce.test", "testing.test", "none.test", "redirect.test", "big.test",
                    "chunked.test", "slow.test", "notfound.test", "html.test", "garbage.test",
                    "coalesce.test", "lf.test", "charset.test"]
    good = pki.issue("good", ["mta-sts." + x for x in good_domains])
    wrong = pki.issue("wrong", ["mta-sts.other.test"])
    expired = pki.issue("expired", ["mta-sts.expired.test"], days=-1)
    os.makedirs(os.path.join(d, "other"))
    other_ca = Pki(os.path.join(d, "other"), "some other CA")
    untrusted = other_ca.issue("untrusted", ["mta-sts.untrusted.test"])

    enforce = policy("enforce", ["mx1.enforce.test", "*.mx.enforce.test"])
    sites = {
        "enforce.test": Site(body=enforce),
        "lf.test": Site(body=policy("enforce", ["mx.lf.test"], eol="\n")),
        "charset.test": Site(body=policy("enforce", ["mx.charset.test"]),
                             content_type="Text/Plain; charset=utf-8"),
        "testing.test": Site(body=policy("testing", ["mx.testing.test"], max_age=604800)),
        "none.test": Site(body=policy("none", max_age=0)),
        "redirect.test": Site(kind="redirect", status=301,
                              location="https://mta-sts.enforce.test/.well-known/mta-sts.txt"),
        "big.test": Site(kind="big", size=70000),
        "chunked.test": Site(kind="chunked", size=70000),
        "slow.test": Site(body=enforce, delay=6.0),
        "notfound.test": Site(kind="status", status=404, body="no such policy"),
        "html.test": Site(body=enforce, content_type="text/html"),
        "garbage.test": Site(body="<html>hello</html>\n"),
        "coalesce.test": Site(body=policy("enforce", ["mx.coalesce.test"])),
        "wrongname.test": Site(body=enforce, cert=wrong),
        "expired.test": Site(body=enforce, cert=expired),
        "untrusted.test": Site(body=enforce, cert=untrusted),
    }
    # domain -> (ok or fail, substring of the outcome)
    want = {
        "enforce.test": ("ok", "mode=enforce max_age=86400 answer=secure match=mx1.enforce.test:.mx.enforce.test "
                               "servername=hostname"),
        "lf.test": ("ok", "answer=secure match=mx.lf.test servername=hostname"),
        "charset.test": ("ok", "mode=enforce"),
        "testing.test": ("ok", "mode=testing max_age=604800"),
        "none.test": ("ok", "mode=none max_age=0"),
        "redirect.test": ("fail", "HTTP 301: redirects are not followed"),
        "big.test": ("fail", "policy larger than 65536 bytes"),
        "chunked.test": ("fail", "policy larger than 65536 bytes"),
        "slow.test": ("fail", "timed out"),
        "notfound.test": ("fail", "HTTP 404"),
        "html.test": ("fail", "Content-Type \"text/html\" is not text/plain"),
        "garbage.test": ("ok", "invalid policy: line 1"),
        "wrongname.test": ("fail", "certificate of mta-sts.wrongname.test not valid"),
        "expired.test": ("fail", "certificate of mta-sts.expired.test not valid"),
        "untrusted.test": ("fail", "certificate of mta-sts.untrusted.test not valid"),
    }
    # Environment variables that would point another client at another CA store.
    env = dict(os.environ, SSL_CERT_FILE="/nonexistent/ca.pem", CURL_CA_BUNDLE="/nonexistent/ca.pem",
               SSL_CERT_DIR="/nonexistent", https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")

    with HttpsFixture(good, sites) as fx:
        domains = list(want) + ["coalesce.test"] * 5
        all_names = set(domains)
        base = [probe, "--ca", pki.ca, "--timeout-ms", "2500", "--connect-timeout-ms", "3000"]
        for name in sorted(all_names):
            base += ["--connect-to", "mta-sts.%s:443:127.0.0.1:%d" % (name, fx.port)]
        for loop in ("poll", "epoll"):
            fx.hits.clear()
            r = subprocess.run(base + ["--loop", loop] + domains, capture_output=True, text=True, env=env,
                               timeout=60, stdin=subprocess.DEVNULL)
            check("%s: probe exits 0" % loop, r.returncode == 0, r.stdout + r.stderr)
            lines = [l.split("\t") for l in r.stdout.splitlines() if "\t" in l]
            got = {}
            for l in lines:
                got.setdefault(l[0], []).append(l)
            for dom, (status, text) in want.items():
                rows = got.get(dom, [])
                ok = len(rows) == 1 and rows[0][1] == status and text in rows[0][3]
                check("%s: %s -> %s %s" % (loop, dom, status, text), ok, "got %r" % rows)
            co = got.get("coalesce.test", [])
            check("%s: 5 requests for one domain get 5 answers" % loop,
                  len(co) == 5 and all(c[1] == "ok" and "mx.coalesce.test" in c[3] for c in co), repr(co))
            check("%s: ... from one HTTPS request (coalesced)" % loop, fx.hits.get("coalesce.test") == 1,
                  "server saw %r" % fx.hits.get("coalesce.test"))
            started = [l for l in r.stdout.splitlines() if l.startswith("started=")]
            check("%s: one transfer per distinct domain" % loop, started == ["started=%d" % len(all_names)],
                  repr(started))
            # The redirect target was never fetched: enforce.test saw exactly its own request.
            check("%s: the redirect is not followed" % loop, fx.hits.get("enforce.test") == 1,
                  "enforce.test hits %r" % fx.hits.get("enforce.test"))

        # Without the CA file the system store applies, and it does not know the test CA.
        r = subprocess.run([probe, "--timeout-ms", "3000", "--connect-to",
                            "mta-sts.enforce.test:443:127.0.0.1:%d" % fx.port, "enforce.test"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        check("system CA store: the test CA is not trusted",
              "enforce.test\tfail\t0\tcertificate of mta-sts.enforce.test not valid" in r.stdout, r.stdout + r.stderr)

        # A name that is not a host name never becomes a URL.
        r = subprocess.run([probe, "--ca", pki.ca, "a/b.test", "x.test@evil", "-a.test", ""],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        check("bad domain names are refused before any request",
              r.stdout.count("\trefused\t") == 4 and "started=0" in r.stdout, r.stdout + r.stderr)

        # A bound on distinct fetches at once; joining one under way is not refused.
        args = [probe, "--ca", pki.ca, "--max-pending", "2"]
        for x in ("enforce.test", "testing.test", "none.test"):
            args += ["--connect-to", "mta-sts.%s:443:127.0.0.1:%d" % (x, fx.port)]
        r = subprocess.run(args + ["enforce.test", "testing.test", "enforce.test", "none.test"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        check("max_pending: the third distinct domain is refused, a repeat joins",
              "none.test\trefused\t0\t2 policy fetches under way already" in r.stdout
              and r.stdout.count("enforce.test\tok\t") == 2 and "testing.test\tok\t" in r.stdout
              and "started=2" in r.stdout, r.stdout + r.stderr)

    # The fixture is gone: connection refused, a clear failure, no hang.
    r = subprocess.run([probe, "--ca", pki.ca, "--connect-to", "mta-sts.enforce.test:443:127.0.0.1:%d" % fx.port,
                        "enforce.test"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    check("server down: a failed fetch", "enforce.test\tfail\t0\t" in r.stdout, r.stdout + r.stderr)

if failures:
    print("%d check(s) failed" % len(failures))
    sys.exit(1)
print("all checks passed")
