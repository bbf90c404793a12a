#!/usr/bin/python3
"""Runs discovery_tests (C++, Catch2) against the real DNS fixture.

Usage: t_discovery.py DISCOVERY_TESTS [CATCH_ARGS...]

Starts tests/dns/fixture.py in a temp dir, waits for its fixture.env, runs
the test binary with the fixture's variables in its environment, stops the
fixture by its PID. The binary's status is the test's.
"""
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "dns", "fixture.py")


def start_fixture(d):
    log = open(os.path.join(d, "fixture.log"), "w")
    # --plain-forwarder: the non-validating forwarder of the
    # trust_forwarder_ad cases; the records: CNAME chains (one secure, one
    # insecure, one from the signed zone into the unsigned one) and TXT.
    records = [
        "alias.dnssec.test. 300 CNAME mx.dane.dnssec.test.",
        "alias2.dnssec.test. 300 CNAME alias.dnssec.test.",
        "alias.plain.test. 300 CNAME mx.enc.plain.test.",
        "crosszone.dnssec.test. 300 CNAME alias.plain.test.",
        'txt.dnssec.test. 300 TXT "v=STSv1; " "id=20240101"',
        'txt.dnssec.test. 300 TXT "x y"',
    ]
    args = ["--plain-forwarder"]
    for r in records:
        args += ["--record", r]
    p = subprocess.Popen(["/usr/bin/python3", FIXTURE, "--dir", os.path.join(d, "dns"), *args],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    env_file = os.path.join(d, "dns", "fixture.env")
    deadline = time.time() + 60
    while not (os.path.exists(env_file) and os.path.getsize(env_file) > 0):
        if p.poll() is not None or time.time() > deadline:
            p.kill()
            sys.exit("dns fixture did not start:\n" + open(os.path.join(d, "fixture.log")).read())
        time.sleep(0.1)
    env = {}
    for line in open(env_file):
        if "=" in line:
            k, v = line.strip().split("=", 1)
            env[k] = shlex.split(v)[0] if v else ""
    return p, env


def main():
    with tempfile.TemporaryDirectory() as d:
        fx, env = start_fixture(d)
        try:
            rc = subprocess.call(sys.argv[1:], env={**os.environ, **env}, stdin=subprocess.DEVNULL)
        finally:
            fx.send_signal(signal.SIGTERM)
            fx.wait(30)
    sys.exit(rc)


if __name__ == "__main__":
    main()
