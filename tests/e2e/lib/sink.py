#!/usr/bin/python3
"""SMTP sink for the tlspolicy end-to-end tests.

Accepts every message and stores each one as a JSON file in --store:
  mail_from, rcpt_tos, tls (was the session encrypted when DATA came),
  tls_version, cipher (null without TLS), helo, peer, received_at,
  data (the raw message, headers included, exactly as received after SMTP
  dot-unstuffing, decoded as UTF-8 with U+FFFD for invalid bytes) and
  data_b64 (the same bytes, base64, for byte-exact checks).
Files are named <ns-timestamp>-<seq>.json and written atomically (temp file
+ rename), so a reader never sees a partial file and sorting the names gives
arrival order.

With --starttls --cert F --key F it offers STARTTLS (not required).
--ready FILE is created once the socket listens. Exits 0 on SIGTERM/SIGINT.
Run with Debian's /usr/bin/python3 (python3-aiosmtpd), not a pyenv python.
"""

import argparse
import asyncio
import base64
import itertools
import json
import logging
import os
import signal
import ssl
import sys
import time

from aiosmtpd.smtp import SMTP


class StoreHandler:
    """aiosmtpd handler writing one JSON file per accepted message."""

    def __init__(self, store):
        self.store = store
        self.seq = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        ssl_obj = None
        if server.transport is not None:
            ssl_obj = server.transport.get_extra_info("ssl_object")
        raw = envelope.original_content or b""
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "tls": ssl_obj is not None,
            "tls_version": ssl_obj.version() if ssl_obj else None,
            "cipher": ssl_obj.cipher()[0] if ssl_obj else None,
            "helo": session.host_name,
            "peer": list(session.peer) if session.peer else None,
            "received_at": time.time(),
            "data": raw.decode("utf-8", errors="replace"),
            "data_b64": base64.b64encode(raw).decode("ascii"),
        }
        name = "%d-%06d.json" % (time.time_ns(), next(self.seq))
        tmp = os.path.join(self.store, "." + name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        os.rename(tmp, os.path.join(self.store, name))
        logging.info("stored %s from=%s rcpt=%s tls=%s %s",
                     name, envelope.mail_from, envelope.rcpt_tos,
                     record["tls"], record["tls_version"] or "")
        return "250 2.0.0 Ok: stored as " + name


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--starttls", action="store_true")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--hostname", default=None,
                    help="name in the greeting (default sink-<addr>.e2e.test)")
    ap.add_argument("--ready", help="file to create once listening")
    ap.add_argument("--ciphers", help="OpenSSL cipher list the STARTTLS side offers (TLS 1.2 and older)")
    ap.add_argument("--max-tls", choices=["1.2", "1.3"], help="highest TLS version offered")
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s sink[" + args.addr + "] %(message)s")
    # aiosmtpd logs every connection step at INFO: keep only warnings from it.
    logging.getLogger("mail.log").setLevel(logging.WARNING)

    os.makedirs(args.store, exist_ok=True)
    tls_context = None
    if args.starttls:
        if not (args.cert and args.key):
            ap.error("--starttls needs --cert and --key")
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.cert, args.key)
        if args.ciphers:
            tls_context.set_ciphers(args.ciphers)
        if args.max_tls == "1.2":
            tls_context.maximum_version = ssl.TLSVersion.TLSv1_2

    handler = StoreHandler(args.store)
    # An explicit hostname avoids socket.getfqdn(), which may hit DNS.
    hostname = args.hostname or "sink-%s.e2e.test" % args.addr

    def factory():
        return SMTP(handler, hostname=hostname, tls_context=tls_context,
                    require_starttls=False, enable_SMTPUTF8=True)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(factory, host=args.addr, port=args.port,
                           reuse_address=True))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.ready:
        with open(args.ready, "w") as f:
            f.write("%d\n" % os.getpid())
    logging.info("listening on %s:%d starttls=%s", args.addr, args.port,
                 args.starttls)
    loop.run_until_complete(stop.wait())
    logging.info("SIGTERM: shutting down")
    server.close()
    try:
        loop.run_until_complete(asyncio.wait_for(server.wait_closed(), 2))
    except asyncio.TimeoutError:
        pass
    loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
