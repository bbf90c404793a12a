#!/usr/bin/python3
"""MTA-STS discovery in tlspolicyd (ctest mta_sts_daemon), end to end on
loopback: the DNS fixture (tests/dns/fixture.py, zone sts.test) answers the
_mta-sts TXT and MX records, the HTTPS fixture (tests/sts/https_fixture.py,
a test CA made now) serves the policies, and a real tlspolicyd answers over
the socketmap. No rule and DANE off: the MTA-STS answer is the answer.

Usage: t_daemon.py TLSPOLICYD TLSPOLICY

Checks: enforce, a wildcard pattern, an MX outside the patterns (still
enforced: Postfix then finds no matching certificate and defers), a record
split in two character-strings -> "secure match=... servername=hostname";
testing -> not enforced, counted as would_enforce; none, 404, redirect,
oversize, wrong-name and expired certificates, two STS TXT records, a
non-STSv1 record, no TXT -> nothing (NOTFOUND); a slow server -> answered by
the deadline without a policy, the fetch goes on and a later request gets
the policy; one fetch per domain while the TXT id stays; an id change ->
refetch and the new policy; `tlspolicy query` gives the same answer and
never creates the cache file; a restart with the HTTPS fixture stopped ->
policies still enforced from the persistent cache; a corrupt cache file ->
logged, moved aside, the daemon serves; an unopenable cache path -> logged,
memory only, the daemon serves.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "dns"))
import fixture  # noqa: E402  (the DNS fixture)
import t_discovery as td  # noqa: E402  (socketmap client and daemon helpers)
from https_fixture import HttpsFixture, Pki, Site, policy, sts_domains, sts_sites  # noqa: E402

DAEMON = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else "build/tlspolicyd"
CLI = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else "build/tlspolicy"
td.DAEMON = DAEMON
FAILS = 0
DEADLINE_MS = 1500
SLOW_S = 3.0


def ok(desc):
    print("ok - " + desc, flush=True)


def fail(desc):
    global FAILS
    FAILS += 1
    print("FAIL - " + desc, flush=True)


def check(desc, cond, detail=""):
    if cond:
        ok(desc)
    else:
        fail(desc + ("" if not detail else ": " + detail))


def expect(desc, got, want_re):
    check("%s: %r" % (desc, got), got is not None and re.fullmatch(want_re, got) is not None,
          "want /%s/" % want_re)


def secure(mx):
    return r"OK secure match=%s servername=hostname" % re.escape(mx)


def conf(fx, port, mport, ca, cache, connect_to):
    return """allow_empty = true;
discovery = {
  forwarders = [ "%s" ];
  trust_anchor_file = "%s";
  query_timeout = 1000;
  deadline = %d;
  failure_ttl = 2;
  dane = "off";
  mta_sts = {
    ca_file = "%s";
    cache = "%s";
    connect_timeout = 2000;
    fetch_timeout = 8000;
    connect_to = [ %s ];
  };
};
daemon = { socketmap = [ "inet:127.0.0.1:%d" ]; metrics = "inet:127.0.0.1:%d"; };
""" % (fx["DNS_FORWARDER"], fx["DNS_ANCHOR"], DEADLINE_MS, ca, cache,
       ", ".join('"%s"' % c for c in connect_to), port, mport)


def metrics(mport):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5) as r:
            text = r.read().decode()
    except OSError as e:
        return {"error": str(e)}
    out = {}
    for line in text.splitlines():
        if line.startswith("tlspolicy_mta_sts"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def m(ms, name, **labels):
    key = name + ("{" + ",".join('%s="%s"' % kv for kv in labels.items()) + "}" if labels else "")
    return ms.get(key)


def start(d, name, cfg):
    p, port = td.start_daemon(d, name, cfg)
    if p is None:
        fail("daemon %s started (see %s/%s.log)" % (name, d, name))
    return p


def stop(p):
    if p and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def log_of(d, name):
    with open(os.path.join(d, name + ".log"), errors="replace") as f:
        return f.read()


def main():
    for tool in (DAEMON, CLI):
        if not os.path.exists(tool):
            fail("missing %s" % tool)
            return
    with tempfile.TemporaryDirectory(prefix="tlspolicy-sts-daemon-") as d:
        fxp, fx = fixture.spawn(os.path.join(d, "dns"))
        daemons = []
        https = None
        try:
            pki = Pki(d)
            sites, good = sts_sites(pki, slow_s=SLOW_S)
            https = HttpsFixture(good, sites).start()
            connect_to = https.connect_to(sts_domains())
            cache = os.path.join(d, "sts.db")
            port, mport = td.free_port(), td.free_port()
            a_conf = conf(fx, port, mport, pki.ca, cache, connect_to)
            a = start(d, "a", a_conf)
            daemons.append(a)
            if a is None:
                return

            # The slow server first: its fetch runs in the background meanwhile.
            t0 = time.monotonic()
            got = td.ask(port, "slow.sts.test")
            took = time.monotonic() - t0
            expect("slow server: answered without a policy", got, r"NOTFOUND ?")
            check("slow server: answered by the deadline (%.2f s, deadline %.1f s)" % (took, DEADLINE_MS / 1000),
                  took < DEADLINE_MS / 1000 + 1.0)

            cases = [
                ("enforce.sts.test", secure("mx.enforce.sts.test")),
                ("wildcard.sts.test", secure(".wildcard.sts.test")),
                ("mismatch.sts.test", secure("mx.elsewhere.sts.test")),
                ("split.sts.test", secure("mx.split.sts.test")),
                ("testing.sts.test", r"NOTFOUND ?"),
                ("none.sts.test", r"NOTFOUND ?"),
                ("nopolicy.sts.test", r"NOTFOUND ?"),
                ("redirect.sts.test", r"NOTFOUND ?"),
                ("big.sts.test", r"NOTFOUND ?"),
                ("wrongname.sts.test", r"NOTFOUND ?"),
                ("expired.sts.test", r"NOTFOUND ?"),
                ("twotxt.sts.test", r"NOTFOUND ?"),
                ("badtxt.sts.test", r"NOTFOUND ?"),
                ("notxt.sts.test", r"NOTFOUND ?"),
                ("idchange.sts.test", secure("mx.idchange.sts.test")),
            ]
            # Proactive refresh: max_age 8 s, so due 2 s before it expires.
            https.set_site("down.sts.test", Site(body=policy("enforce", ["mx.down.sts.test"], max_age=8), cert=good))
            t_down = time.monotonic()
            expect("refresh: down.sts.test (max_age 8)", td.ask(port, "down.sts.test"), secure("mx.down.sts.test"))
            for dom, want in cases:
                expect(dom, td.ask(port, dom), want)
            # Asked again (facts cache or TXT id unchanged): no second fetch.
            for dom in ("enforce.sts.test", "wildcard.sts.test"):
                expect(dom + " again", td.ask(port, dom), secure("mx." + dom if dom.startswith("enforce")
                                                                 else ".wildcard.sts.test"))
            time.sleep(2.5)  # past failure_ttl and the idchange TXT TTL
            expect("enforce.sts.test after its facts expired", td.ask(port, "enforce.sts.test"),
                   secure("mx.enforce.sts.test"))
            check("one HTTPS fetch per domain while the TXT id stays (enforce: %r)" % https.hits.get("enforce.sts.test"),
                  https.hits.get("enforce.sts.test") == 1)
            check("redirect not followed (the target was fetched once, for enforce itself)",
                  https.hits.get("enforce.sts.test") == 1)
            check("TXT without STSv1 / two records / none: nothing fetched",
                  not any(https.hits.get(x) for x in ("twotxt.sts.test", "badtxt.sts.test", "notxt.sts.test")),
                  repr(https.hits))

            ms = metrics(mport)
            check("metrics: would_enforce counted for the testing policy (%r)"
                  % m(ms, "tlspolicy_mta_sts_policies_applied_total", mode="would_enforce"),
                  (m(ms, "tlspolicy_mta_sts_policies_applied_total", mode="would_enforce") or 0) >= 1, repr(ms))
            check("log: the testing policy's would-enforce line",
                  "testing.sts.test has a testing policy" in log_of(d, "a"))
            # A lookup MTA-STS decided is logged with its reason (log_rule_lookups).
            check("log: the lookup MTA-STS decided names MTA-STS and the policy id",
                  re.search(r"lookup tls-policy enforce\.sts\.test: OK secure match=\S+ servername=hostname "
                            r"\(no rule\): MTA-STS enforce \(id ", log_of(d, "a")) is not None,
                  "\n".join(l for l in log_of(d, "a").splitlines() if "enforce.sts.test" in l)[-800:])

            # The slow fetch has finished by now (3 s): the policy is used.
            time.sleep(max(0.0, SLOW_S + 0.5 - (time.monotonic() - t0)))
            expect("slow server: a later request gets the policy", td.ask(port, "slow.sts.test"),
                   secure("mx.slow.sts.test"))
            check("slow server: fetched once (%r)" % https.hits.get("slow.sts.test"),
                  https.hits.get("slow.sts.test") == 1)

            # 6.5 s after the fetch: due for refresh, not expired; the answer
            # comes from the cache at once and a background fetch renews it.
            time.sleep(max(0.0, 6.5 - (time.monotonic() - t_down)))
            expect("refresh: in use near its expiry, still enforced", td.ask(port, "down.sts.test"),
                   secure("mx.down.sts.test"))
            end = time.monotonic() + 5
            while time.monotonic() < end and https.hits.get("down.sts.test", 0) < 2:
                time.sleep(0.1)
            time.sleep(0.3)
            ms = metrics(mport)
            check("refresh: refetched in the background (hits %r, refresh counter %r)"
                  % (https.hits.get("down.sts.test"), m(ms, "tlspolicy_mta_sts_fetches_total", result="refresh")),
                  https.hits.get("down.sts.test") == 2
                  and m(ms, "tlspolicy_mta_sts_fetches_total", result="refresh") == 1)
            time.sleep(max(0.0, 9 - (time.monotonic() - t_down)))
            expect("refresh: past the first policy's expiry, the refreshed one applies", td.ask(port, "down.sts.test"),
                   secure("mx.down.sts.test"))
            check("refresh: no further fetch (%r)" % https.hits.get("down.sts.test"),
                  https.hits.get("down.sts.test") == 2)

            # Id change: a new policy is served and the TXT id moves on.
            before = metrics(mport)
            https.set_site("idchange.sts.test", Site(body=policy("enforce", ["mx2.idchange.sts.test"]), cert=good))
            fixture.set_txt(fx, "_mta-sts.idchange.sts.test", ['"v=STSv1; id=idchange2"'])
            time.sleep(2.5)  # the old TXT answer's TTL (2 s) and the facts cache
            expect("id change: the new policy", td.ask(port, "idchange.sts.test"), secure("mx2.idchange.sts.test"))
            after = metrics(mport)
            started = lambda ms_: m(ms_, "tlspolicy_mta_sts_fetches_total", result="started") or 0  # noqa: E731
            check("id change: one more fetch (started %r -> %r)" % (started(before), started(after)),
                  started(after) - started(before) == 1 and https.hits.get("idchange.sts.test") == 2)
            # A refetch that fails keeps the unexpired policy (RFC 8461 5).
            https.set_site("idchange.sts.test", None)
            fixture.set_txt(fx, "_mta-sts.idchange.sts.test", ['"v=STSv1; id=idchange3"'])
            time.sleep(2.5)
            expect("id change with a failed refetch: the cached policy stays", td.ask(port, "idchange.sts.test"),
                   secure("mx2.idchange.sts.test"))
            # A "none" policy under a new id drops the cached one (RFC 8461 5).
            cached_before = m(metrics(mport), "tlspolicy_mta_sts_policies_cached") or 0
            https.set_site("idchange.sts.test", Site(body=policy("none", max_age=86400), cert=good))
            fixture.set_txt(fx, "_mta-sts.idchange.sts.test", ['"v=STSv1; id=idchange4"'])
            time.sleep(2.5)
            expect("id change to a none policy: no policy any more", td.ask(port, "idchange.sts.test"), r"NOTFOUND ?")
            cached_after = m(metrics(mport), "tlspolicy_mta_sts_policies_cached") or 0
            check("none: the cached policy is dropped (policies cached %r -> %r)" % (cached_before, cached_after),
                  cached_after == cached_before - 1)
            # ... and later requests stay without one (served from the facts, or re-decided: nothing cached).
            expect("none: asked again", td.ask(port, "idchange.sts.test"), r"NOTFOUND ?")
            # Back to an enforce policy for the checks below (restart from the cache).
            https.set_site("idchange.sts.test", Site(body=policy("enforce", ["mx2.idchange.sts.test"]), cert=good))
            fixture.set_txt(fx, "_mta-sts.idchange.sts.test", ['"v=STSv1; id=idchange5"'])
            time.sleep(2.5)
            expect("id change back to enforce", td.ask(port, "idchange.sts.test"), secure("mx2.idchange.sts.test"))

            ms = metrics(mport)
            check("metrics: fetches ok and failed, policies cached (%r)" % ms,
                  (m(ms, "tlspolicy_mta_sts_fetches_total", result="ok") or 0) >= 6
                  and (m(ms, "tlspolicy_mta_sts_fetches_total", result="failed") or 0) >= 5
                  and (m(ms, "tlspolicy_mta_sts_policies_cached") or 0) >= 6)

            # A reload that changes an MTA-STS setting replaces the Discoverer
            # (and its facts cache) but keeps the policy store: no refetch.
            hits = dict(https.hits)
            with open(os.path.join(d, "a.conf"), "w") as f:
                f.write(a_conf.replace("fetch_timeout = 8000;", "fetch_timeout = 7000;"))
            a.send_signal(signal.SIGHUP)
            end = time.monotonic() + 10
            while time.monotonic() < end and log_of(d, "a").count("reloaded") < 1:
                time.sleep(0.1)
            check("reload with a changed mta_sts setting", "reloaded" in log_of(d, "a"))
            for dom, mx in (("enforce.sts.test", "mx.enforce.sts.test"), ("wildcard.sts.test", ".wildcard.sts.test")):
                expect("after the reload: " + dom, td.ask(port, dom), secure(mx))
            check("after the reload: the policies are still known, no new fetch (%r -> %r)"
                  % (hits.get("enforce.sts.test"), https.hits.get("enforce.sts.test")),
                  all(https.hits.get(x) == hits.get(x) for x in ("enforce.sts.test", "wildcard.sts.test")))

            # Review: an enforce policy with max_age 0 (valid: "do not cache")
            # must not turn every request for the domain into an HTTPS fetch
            # (and a synchronous SQLite write on the event loop): the facts
            # are kept failure_ttl like any other, so at most one fetch per
            # failure_ttl. Before: one fetch per request.
            https.set_site("nopolicy.sts.test", Site(body=policy("enforce", ["mx.nopolicy.sts.test"], max_age=0),
                                                     cert=good))
            time.sleep(2.2)  # past failure_ttl: the earlier failed fetch's facts are gone
            h0 = https.hits.get("nopolicy.sts.test", 0)
            for i in range(6):
                expect("max_age 0: enforced (request %d)" % i, td.ask(port, "nopolicy.sts.test"),
                       secure("mx.nopolicy.sts.test"))
            check("max_age 0: not one fetch per request (fetches for 6 requests: %d)"
                  % (https.hits.get("nopolicy.sts.test", 0) - h0),
                  https.hits.get("nopolicy.sts.test", 0) - h0 <= 2)

            # The CLI: the same discovery; reads the cache, never creates one.
            cli_conf = os.path.join(d, "cli.conf")
            missing = os.path.join(d, "none", "nocache.db")
            with open(cli_conf, "w") as f:
                f.write(conf(fx, td.free_port(), td.free_port(), pki.ca, missing, connect_to))
            r = subprocess.run([CLI, "query", "-c", cli_conf, "enforce.sts.test"], capture_output=True, text=True,
                               timeout=30, stdin=subprocess.DEVNULL)
            expect("tlspolicy query enforce.sts.test", r.stdout.strip(), r"secure match=mx\.enforce\.sts\.test "
                   r"servername=hostname")
            check("tlspolicy query did not create the cache file", not os.path.exists(missing))
            st = os.stat(cache)
            r = subprocess.run([CLI, "query", "-c", os.path.join(d, "a.conf"), "idchange.sts.test"],
                               capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            expect("tlspolicy query with the daemon's cache (read only)", r.stdout.strip(),
                   r"secure match=mx2\.idchange\.sts\.test servername=hostname")
            check("tlspolicy query left the daemon's cache file alone", os.stat(cache).st_mtime == st.st_mtime)

            # Restart with the HTTPS fixture down: the persistent cache applies.
            stop(a)
            https.stop()
            https = None
            b = start(d, "b", a_conf)
            daemons.append(b)
            if b is None:
                return
            for dom, mx in (("enforce.sts.test", "mx.enforce.sts.test"), ("slow.sts.test", "mx.slow.sts.test"),
                            ("idchange.sts.test", "mx2.idchange.sts.test")):
                expect("after a restart, HTTPS down: %s from the cache" % dom, td.ask(port, dom), secure(mx))
            end = time.monotonic() + 5
            while time.monotonic() < end and "policies loaded" not in log_of(d, "b"):
                time.sleep(0.1)
            check("log: policies loaded from the cache", re.search(r"MTA-STS cache .*: \d+ policies loaded",
                                                                   log_of(d, "b")) is not None)
            stop(b)

            # A corrupt cache file: logged, moved aside, the daemon serves.
            bad = os.path.join(d, "bad.db")
            with open(bad, "wb") as f:
                f.write(b"this is not an SQLite database\n" * 200)
            c = start(d, "c", conf(fx, port, mport, pki.ca, bad, connect_to))
            daemons.append(c)
            if c is None:
                return
            expect("corrupt cache: the daemon serves (HTTPS down, nothing cached)", td.ask(port, "enforce.sts.test"),
                   r"NOTFOUND ?")
            end = time.monotonic() + 5
            while time.monotonic() < end and "moved it to" not in log_of(d, "c"):
                time.sleep(0.1)
            log = log_of(d, "c")
            check("corrupt cache: logged and moved aside", "moved it to" in log and any(
                n.startswith("bad.db.corrupt-") for n in os.listdir(d)), log[-800:])
            ms = metrics(mport)
            check("metrics: cache error counted", (m(ms, "tlspolicy_mta_sts_cache_errors_total") or 0) >= 1, repr(ms))
            stop(c)

            # A cache path that cannot be opened (no such directory): logged,
            # policies kept in memory, the daemon serves.
            nodir = os.path.join(d, "no-such-dir", "sts.db")
            e = start(d, "e", conf(fx, port, mport, pki.ca, nodir, connect_to))
            daemons.append(e)
            if e is None:
                return
            expect("unopenable cache: the daemon serves", td.ask(port, "enforce.sts.test"), r"NOTFOUND ?")
            end = time.monotonic() + 5
            while time.monotonic() < end and "memory only" not in log_of(d, "e"):
                time.sleep(0.1)
            check("unopenable cache: logged (kept in memory only)", "memory only" in log_of(d, "e"),
                  log_of(d, "e")[-800:])
            check("unopenable cache: nothing created", not os.path.exists(os.path.dirname(nodir)))

            # Review: a cached enforce policy must survive a _mta-sts TXT
            # lookup that does not answer by the deadline (RFC 8461 5: an
            # attacker who blocks the TXT lookup cannot strip the policy).
            # 2500ms.slow.test: every answer (MX, TXT) comes after 2.5 s, past
            # the 1.5 s deadline; its policy is in the persistent cache. (With
            # query_timeout under the deadline the TXT answer fails in time and
            # the cached policy applies: that path was right already.)
            # Before: the timed-out discovery carried no MTA-STS facts and the
            # answer was NOTFOUND (Postfix's may: plaintext possible).
            stop(e)
            import sqlite3
            seeded = os.path.join(d, "seeded.db")
            db = sqlite3.connect(seeded)
            now = int(time.time())
            db.executescript(
                "CREATE TABLE policies(domain TEXT PRIMARY KEY, id TEXT NOT NULL, text BLOB NOT NULL,"
                " fetched INTEGER NOT NULL, expires INTEGER NOT NULL, last_used INTEGER NOT NULL);"
                "CREATE INDEX policies_last_used ON policies(last_used);"
                "PRAGMA application_id=%d; PRAGMA user_version=1;" % 0x544c5350)
            db.execute("INSERT INTO policies VALUES(?, ?, ?, ?, ?, ?)",
                       ("2500ms.slow.test", "slow1", policy("enforce", ["mx.slow.test"]).encode(), now,
                        now + 86400, now))
            db.commit()
            db.close()
            # query_timeout past the deadline: the deadline, not a failed TXT
            # answer, ends the discovery (a resolver that keeps waiting).
            g = start(d, "g", conf(fx, port, mport, pki.ca, seeded, connect_to)
                      .replace("query_timeout = 1000;", "query_timeout = 4000;"))
            daemons.append(g)
            if g is None:
                return
            expect("TXT lookup past the deadline: the cached enforce policy still applies",
                   td.ask(port, "2500ms.slow.test"), secure("mx.slow.test"))
            stop(g)
        finally:
            for p in daemons:
                stop(p)
            if https:
                https.stop()
            fxp.send_signal(signal.SIGTERM)
            fxp.wait()


if __name__ == "__main__":
    main()
    if td.FAILS:
        FAILS += td.FAILS
    print("%d check(s) failed" % FAILS if FAILS else "all checks passed")
    sys.exit(1 if FAILS else 0)
