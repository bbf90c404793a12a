#!/usr/bin/python3
"""Runs discovery_tests (C++, Catch2) against the real DNS fixture.

Usage: t_discovery.py DISCOVERY_TESTS [CATCH_ARGS...]

Starts tests/dns/fixture.py in a temp dir (fixture.spawn()), runs
the test binary with the fixture's variables in its environment, stops the
fixture by its PID. The binary's status is the test's.
"""
import os
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "dns"))
import fixture  # noqa: E402  (the DNS fixture's own spawn())


def start_fixture(d):
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
    # The binary reads the fixture's variables from its environment: strings.
    p, env = fixture.spawn(os.path.join(d, "dns"), *args)
    return p, {k: str(v) for k, v in env.items()}


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
