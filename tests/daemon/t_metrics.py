#!/usr/bin/python3
"""The metrics endpoint and the control socket, against the real daemon.

Usage: t_metrics.py TLSPOLICYD TLSPOLICY

Drives known traffic (socketmap lookups of every answer kind, malformed and
unknown-map requests, milter sessions through miltertest: Require, Try, a
reject, a monitor-mode would-reject; a reload), scrapes /metrics with curl
(a real HTTP scrape), parses it with prometheus_client's parser (the
exposition format must be valid) and checks each counter moved by exactly
what was sent. Then `tlspolicy status`, `tlspolicy query --daemon` (the
live snapshot, not the file on disk) and `tlspolicy reload [--force]`.
Prints "ok - ..." or "FAIL - ..." per check; exit 1 if any failed.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "socketmap"))
from t_protocol import Client, free_port, ns  # noqa: E402

DAEMON = sys.argv[1] if len(sys.argv) > 1 else "build/tlspolicyd"
CLI = sys.argv[2] if len(sys.argv) > 2 else "build/tlspolicy"
LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "milter", "lib.lua")
failures = []


def check(name, ok, detail=""):
    print(f"ok - {name}" if ok else f"FAIL - {name}" + (f"\n  {detail}" if detail else ""))
    if not ok:
        failures.append(name)


CONF = """
outbound = (
  {{ name = "partner"; level = "encrypt"; to = [ "partner.test", "enc.test" ]; }},
  {{ name = "maybe"; level = "may"; to = [ "may.test" ]; }}
);
inbound = (
  {{ name = "strict"; from = [ "*@strict.test" ]; require = "tls"; action = "reject"; }},
  {{ name = "watch"; from = [ "*@watch.test" ]; require = "tls"; action = "monitor"; }}
);
milter = {{ outbound_daemons = [ "submission" ]; }};
daemon = {{
  socketmap = [ "inet:127.0.0.1:{sm}" ]; milter = "inet:127.0.0.1:{mi}";
  metrics = "inet:127.0.0.1:{me}"; control = "{ctl}";
}};
"""

MILTER_SCRIPT = """
dofile(lib)
step("outbound Require")
local c = connect({ daemon_name = "submission" })
helo(c)
mail(c, "a@ours.test", { auth = "alice" })
rcpt(c, "x@enc.test")
message(c)
expect_one_header(c, "X-TLSLevel", "Require")
mt.disconnect(c)
step("outbound Try")
c = connect({ daemon_name = "submission" })
helo(c)
mail(c, "a@ours.test", { auth = "alice" })
rcpt(c, "x@may.test")
message(c)
expect_one_header(c, "X-TLSLevel", "Try")
mt.disconnect(c)
step("inbound reject, no TLS")
c = connect()
helo(c)
check(mail(c, "x@strict.test") == SMFIR_REPLYCODE, "MAIL from strict.test without TLS rejected")
mt.disconnect(c)
step("inbound monitor: would reject")
c = connect()
helo(c)
check(mail(c, "x@watch.test") == SMFIR_CONTINUE, "MAIL from watch.test accepted (monitor)")
mt.disconnect(c)
print("all four sessions done")
"""


def scrape(port):
    r = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{port}/metrics"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr
    samples = {}
    for fam in text_string_to_metric_families(r.stdout):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, r.stdout


def get(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def cli(*args):
    r = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def main():
    tmp = tempfile.mkdtemp(prefix="tlspolicy-metrics-")
    sm, mi, me = free_port(), free_port(), free_port()
    ctl = os.path.join(tmp, "control.sock")
    conf = os.path.join(tmp, "tlspolicy.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(sm=sm, mi=mi, me=me, ctl=ctl))
    log = open(os.path.join(tmp, "daemon.log"), "w+")
    d = subprocess.Popen([DAEMON, "-f", "-c", conf], stderr=log, stdin=subprocess.DEVNULL)
    try:
        c = None
        for _ in range(200):
            try:
                c = Client(("127.0.0.1", sm))
                break
            except OSError:
                time.sleep(0.05)
        c.ask("tls-policy warmup.test")  # the first client is accepted and counted before the first scrape
        before, text = scrape(me)
        check("metrics: the endpoint answers and parses", before is not None, str(text)[-300:])
        # Known traffic: 7 rule OKs (5 partner, 2 maybe), 3 NOTFOUND (the warm-up's came before).
        for k in ["partner.test", "a.partner.test", "enc.test", "b.enc.test", "partner.test"]:
            c.ask("tls-policy " + k)
        for k in ["may.test", "x.may.test"]:
            c.ask("tls-policy " + k)
        for k in ["nowhere.test", "x.nowhere.test", "y.nowhere.test"]:
            c.ask("tls-policy " + k)
        c.ask("no-such-map x")
        bad = Client(("127.0.0.1", sm))
        bad.send(b"x5:abc,")  # not a netstring: malformed
        bad.reply()
        script = os.path.join(tmp, "sessions.lua")
        with open(script, "w") as f:
            f.write(MILTER_SCRIPT)
        r = subprocess.run(["miltertest", "-D", f"sock=inet:{mi}@127.0.0.1", "-D", f"lib={LIB}", "-D", f"dir={tmp}",
                            "-D", f"conf={conf}", "-D", f"log={log.name}", "-D", f"pid={d.pid}", "-s", script],
                           capture_output=True, text=True, timeout=60)
        check("metrics: the miltertest sessions ran as expected",
              r.returncode == 0 and "all four sessions done" in r.stdout, r.stdout[-500:] + r.stderr[-500:])
        d.send_signal(signal.SIGHUP)
        for _ in range(400):
            if "reloaded" in open(log.name).read():
                break
            time.sleep(0.05)
        after, text = scrape(me)
        if after is None:
            check("metrics: second scrape", False, text)
            return

        def moved(name, want, **labels):
            b = get(before, name, **labels) or 0
            a = get(after, name, **labels)
            check(f"metrics: {name}{labels} moved by {want}", a is not None and a - b == want, f"before {b}, after {a}")

        moved("tlspolicy_lookups_total", 7, map="tls-policy", answer="ok")
        moved("tlspolicy_lookups_total", 3, map="tls-policy", answer="notfound")
        moved("tlspolicy_lookups_total", 1, map="unknown", answer="perm")
        moved("tlspolicy_lookup_duration_seconds_count", 10, map="tls-policy")
        moved("tlspolicy_rule_hits_total", 5, rule="partner")
        moved("tlspolicy_rule_hits_total", 2, rule="maybe")
        moved("tlspolicy_client_errors_total", 1, kind="malformed")
        # (The first client connected before the first scrape; the malformed one after, and was closed.)
        moved("tlspolicy_connections_total", 1, event="accepted")
        moved("tlspolicy_connections_total", 1, event="closed")
        moved("tlspolicy_milter_decisions_total", 1, decision="header_require")
        moved("tlspolicy_milter_decisions_total", 1, decision="header_try")
        moved("tlspolicy_milter_decisions_total", 1, decision="reject")
        moved("tlspolicy_milter_decisions_total", 1, decision="would_reject")
        moved("tlspolicy_milter_sessions_total", 4)
        moved("tlspolicy_reloads_total", 1, result="ok")
        rules = get(after, "tlspolicy_policy_rules", direction="outbound")
        check("metrics: the loaded policy's size", rules == 2, f"outbound rules {rules}")
        age = get(after, "tlspolicy_policy_loaded_timestamp_seconds")
        check("metrics: the policy's load time is recent", age is not None and abs(time.time() - age) < 60, f"{age}")
        bucket_inf = get(after, "tlspolicy_lookup_duration_seconds_bucket", map="tls-policy", le="+Inf")
        check("metrics: the latency histogram's +Inf bucket equals its count",
              bucket_inf == get(after, "tlspolicy_lookup_duration_seconds_count", map="tls-policy"))

        # Every metric the shipped Grafana dashboard queries exists.
        import json
        import re
        dash = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "contrib", "grafana-tlspolicyd.json")
        exprs = [t["expr"] for p in json.load(open(dash))["panels"] for t in p["targets"]]
        used = set(re.findall(r"tlspolicy_[a-z_]+", " ".join(exprs)))
        names = {n for (n, _) in after}
        missing = sorted(u for u in used if u not in names)
        check(f"metrics: the {len(used)} metrics contrib/grafana-tlspolicyd.json uses are all exported", not missing,
              f"missing {missing}")

        # The control socket, through the tlspolicy command.
        rc, out = cli("status", "-c", conf)
        check("control: tlspolicy status answers", rc == 0 and "serving since" in out and "2 outbound rules" in out,
              out[-600:])
        # Change the file on disk so that the shrink guard refuses it: the
        # partner rule (2 of the 3 enforcing entries) goes from encrypt to may.
        with open(conf, "w") as f:
            f.write(CONF.format(sm=sm, mi=mi, me=me, ctl=ctl).replace('name = "partner"; level = "encrypt"',
                                                                      'name = "partner"; level = "may"'))
        time.sleep(2.5)
        rc, out = cli("query", "--daemon", "-c", conf, "-m", "tls-policy", "partner.test")
        check("control: query --daemon answers from the live policy (partner.test still encrypt)",
              rc == 0 and out.strip() == "encrypt", out)
        rc, out = cli("query", "-c", conf, "-m", "tls-policy", "partner.test")
        check("control: plain query reads the file on disk (partner.test now may)", rc == 0 and out.strip() == "may",
              out)
        rc, out = cli("reload", "-c", conf)
        check("control: tlspolicy reload reports the refusal and fails", rc != 0 and "would remove 2 of the" in out,
              out[-600:])
        rc, out = cli("reload", "--force", "-c", conf)
        check("control: tlspolicy reload --force loads it", rc == 0 and "reloaded" in out, out[-600:])
        rc, out = cli("query", "--daemon", "-c", conf, "-m", "tls-policy", "partner.test")
        check("control: ... and the live policy changed", rc == 0 and out.strip() == "may", out)
        check("control: the socket is private (mode 0600)", (os.stat(ctl).st_mode & 0o777) == 0o600)
        # A second daemon with the same daemon.control must not take it over.
        conf2 = os.path.join(tmp, "second.conf")
        with open(conf2, "w") as f:
            f.write(f'default = "may"; daemon = {{ socketmap = [ "inet:127.0.0.1:{free_port()}" ]; control = "{ctl}"; }};\n')
        log2 = os.path.join(tmp, "second.log")
        with open(log2, "w") as f2:
            d2 = subprocess.Popen([DAEMON, "-f", "-c", conf2], stdin=subprocess.DEVNULL, stderr=f2)
        for _ in range(400):  # until it has started (and so tried the control socket)
            if "started" in open(log2).read() or d2.poll() is not None:
                break
            time.sleep(0.05)
        rc, out = cli("status", "--socket", ctl)
        d2.send_signal(signal.SIGTERM)
        d2.wait(10)
        err2 = open(log2).read()
        check("control: a second daemon does not steal the socket (status still names the first)",
              rc == 0 and f"pid: {d.pid};" in out and "another tlspolicyd answers there" in err2, out + err2[-400:])
    finally:
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(10)
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait()
        check("metrics: clean exit", d.returncode == 0, f"exit {d.returncode}: {open(log.name).read()[-800:]}")
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failed" if failures else "all passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
