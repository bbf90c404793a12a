#!/usr/bin/python3
"""SMTP sink for t-sendmail.sh whose first RCPT of every session is answered
only after --delay seconds (no STARTTLS). Stores each message as JSON
(rcpt_tos, tls, data) in --store like tests/e2e/lib/sink.py; --ready FILE is
written once listening. Exits 0 on SIGTERM. Debian's /usr/bin/python3."""

import argparse
import asyncio
import json
import os
import signal
import sys
import time

from aiosmtpd.smtp import SMTP


class Handler:
    def __init__(self, store, delay):
        self.store, self.delay, self.seq = store, delay, 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if not envelope.rcpt_tos:
            await asyncio.sleep(self.delay)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        self.seq += 1
        name = "%d-%06d.json" % (time.time_ns(), self.seq)
        rec = {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
               "tls": server.transport.get_extra_info("ssl_object") is not None,
               "data": (envelope.original_content or b"").decode("utf-8", "replace")}
        tmp = os.path.join(self.store, "." + name)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec, f)
        os.rename(tmp, os.path.join(self.store, name))
        return "250 2.0.0 Ok: stored as " + name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--delay", type=float, required=True)
    ap.add_argument("--ready")
    a = ap.parse_args()
    os.makedirs(a.store, exist_ok=True)
    handler = Handler(a.store, a.delay)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, hostname="slow-%s.sm.test" % a.addr), host=a.addr,
        port=a.port, reuse_address=True))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if a.ready:
        with open(a.ready, "w") as f:
            f.write("%d\n" % os.getpid())
    loop.run_until_complete(stop.wait())
    server.close()
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
