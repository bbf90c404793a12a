#!/usr/bin/python3
"""Discovery under abuse and lifecycle edges: never a plaintext guess, never a crash.

Usage: t_discovery_abuse.py TLSPOLICYD

Starts the DNS fixture and tlspolicyd with an MX-aware rule (127.0.2.0/24,
on_dns_failure defer), then checks:
  - beyond max_outstanding (2) distinct slow destinations: the refused ones
    answer TEMP (the rule might apply), not the default "may";
  - an MX host whose A lookup fails while its AAAA answers: TEMP;
  - messy next-hop keys (upper case, trailing dot, [host]:port, host:port)
    answer like the clean one;
  - a reload to a policy without MX-aware rules while a request is parked:
    no crash, the parked request answers, the daemon goes on;
  - SIGTERM while requests are parked: the daemon exits 0 (under ASan a
    use-after-free in a pending callback would make it exit non-zero).
Prints "ok - ..." / "FAIL - ..."; exit 1 if any failed.
"""
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from t_protocol import Client, check, failures, free_port, ns  # noqa: E402
import t_parking  # noqa: E402

DAEMON = sys.argv[1] if len(sys.argv) > 1 else "build/tlspolicyd"
t_parking.DAEMON = DAEMON


def write_conf(d, name, port, env, rules, extra=""):
    conf = os.path.join(d, name + ".conf")
    with open(conf + ".new", "w") as f:
        f.write(f"""
default = "may";
outbound = (
  {{ name = "static"; level = "verify"; to = [ "static.test" ]; }}{rules}
);
discovery = {{
  forwarders = [ "{env['DNS_FORWARDER']}" ];
  trust_anchor_file = "{env['DNS_ANCHOR']}";
  deadline = 1500;
  {extra}
}};
daemon = {{ socketmap = [ "inet:127.0.0.1:{port}" ]; }};
""")
    os.rename(conf + ".new", conf)
    return conf


def start(d, name, port, env, rules, extra=""):
    conf = write_conf(d, name, port, env, rules, extra)
    log = open(os.path.join(d, name + ".log"), "w+")
    import subprocess
    p = subprocess.Popen([DAEMON, "-f", "-c", conf], stderr=log, stdin=subprocess.DEVNULL)
    for _ in range(100):
        try:
            Client(("127.0.0.1", port)).s.close()
            return p
        except OSError:
            time.sleep(0.05)
    log.seek(0)
    sys.exit(f"{name}: daemon did not start:\n" + log.read())


def main():
    d = tempfile.mkdtemp(prefix="tlspolicy-dabuse-")
    fx, env = t_parking.start_fixture(d)
    daemons = []
    rule = (',\n  { name = "enc"; level = "encrypt"; to = [ "127.0.2.0/24" ]; }'
            ',\n  { name = "hosted"; level = "verify"; to = [ "mx:MX1.Protect.Plain.TEST." ]; }')
    try:
        port = free_port()
        p = start(d, "aware", port, env, rule, "max_outstanding = 2;")
        daemons.append(p)
        addr = ("127.0.0.1", port)

        # Beyond max_outstanding: 2 slow destinations in flight, the others refused.
        cs = []
        for i in range(5):
            c = Client(addr, timeout=10)
            c.send(ns(f"tls-policy over{i}.300ms.slow.test"))
            cs.append(c)
            time.sleep(0.05)
        full = [c.reply() or "" for c in cs]
        print("# answers:", full)
        got = [x.split(" ")[0] for x in full]
        check("beyond max_outstanding: TEMP (never the default while a rule might apply)",
              sorted(got), ["OK", "OK", "TEMP", "TEMP", "TEMP"])

        # Messy keys answer like the clean one.
        for key in ("enc.plain.test", "ENC.Plain.TEST", "enc.plain.test.", "enc.plain.test:25",
                    "[mx.enc.plain.test]", "[MX.enc.plain.test]:587",
                    "enc.plain.test:smtp", "[mx.enc.plain.test]:submission", "ENC.PLAIN.TEST.:25"):
            check(f"key {key!r}", Client(addr).ask("tls-policy " + key), "OK encrypt")

        check("an mx: entry written in upper case with a trailing dot matches",
              Client(addr).ask("tls-policy hosted.plain.test"), "OK verify")

        # The MX host's A lookup fails, its AAAA answers: its IPv4 address,
        # which 127.0.2.0/24 may cover, is unknown (Postfix, asking again,
        # may get it): TEMP, not the default.
        r = Client(addr, timeout=10).ask("tls-policy halfv4.plain.test") or ""
        check("an MX host with a failed A and an answered AAAA: TEMP", r.split(" ")[0], "TEMP")

        # A reload to a policy that needs no DNS while a request is parked.
        c = Client(addr, timeout=10)
        c.send(ns("tls-policy reload.900ms.slow.test") + ns("tls-policy later.700ms.slow.test") +
               ns("tls-policy static.test"))
        time.sleep(0.3)
        write_conf(d, "aware", port, env, "", "")
        p.send_signal(signal.SIGHUP)
        r = [c.reply() for _ in range(3)]
        print("# answers:", r)
        check("parked across a reload to a DNS-free policy: TEMP (discovery stopped)",
              (r[0] or "").split(" ")[0], "TEMP")
        # The requests behind it are answered by the new policy, which needs
        # no DNS: not TEMP "DNS resolver not available" from the old one.
        check("  the requests behind it: the new policy's answers", r[1:], ["OK may", "OK verify"])
        check("daemon alive after that reload", p.poll(), None)
        check("and answering statically", Client(addr).ask("tls-policy enc.plain.test"), "OK may")

        # SIGTERM while requests are parked.
        port2 = free_port()
        p2 = start(d, "term", port2, env, rule)
        daemons.append(p2)
        parked = []
        for i in range(10):
            c = Client(("127.0.0.1", port2), timeout=10)
            c.send(ns(f"tls-policy term{i}.1200ms.slow.test") + ns("tls-policy static.test"))
            parked.append(c)
        time.sleep(0.3)
        p2.send_signal(signal.SIGTERM)
        try:
            p2.wait(10)
        except Exception:
            p2.kill()
        check("SIGTERM with parked requests: exits 0", p2.returncode, 0)
        # Whatever reached a parked client is TEMP or nothing: never a guess.
        answers = set()
        for c in parked:
            try:
                answers.add((c.reply() or "").split(" ")[0])
            except OSError:
                answers.add("")
        check("  parked clients got TEMP or a closed connection", answers <= {"TEMP", ""}, True)
    finally:
        for p in daemons:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(10)
        fx.send_signal(signal.SIGTERM)
        fx.wait(30)
    for p in daemons:
        check("daemon exit status", p.returncode, 0)
    if failures:
        for name in ("aware", "term"):
            path = os.path.join(d, name + ".log")
            if os.path.exists(path):
                print(f"--- {name}.log\n" + open(path).read()[-3000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
