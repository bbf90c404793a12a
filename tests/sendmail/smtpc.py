#!/usr/bin/python3
"""Tiny SMTP client for t-sendmail.sh: one transaction, every reply printed.

  smtpc.py --port P [--src 127.0.0.4] [--starttls] --from A --to B [--to C]
           [--header 'Name: value'] [--subject S]

Prints one line per step, "STEP CODE TEXT" (RCPT lines name the recipient):
  EHLO 250 ... / STARTTLS 220 ... / TLS TLSv1.3 256 / MAIL 250 ... /
  RCPT u@x.test 250 ... / DATA 250 ...
and stops after a MAIL that is not 250 or when no RCPT was accepted.
Exit 0 when the session ran (whatever the codes), 2 when it could not.
"""

import argparse
import smtplib
import ssl
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--src", default=None, help="source address to bind")
    ap.add_argument("--helo", default="client.sm.test")
    ap.add_argument("--starttls", action="store_true")
    ap.add_argument("--from", dest="sender", required=True)
    ap.add_argument("--to", action="append", required=True)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--subject", default="t-sendmail")
    a = ap.parse_args()

    def out(*parts):
        print(" ".join(str(p) for p in parts), flush=True)

    def text(b):
        return b.decode("utf-8", "replace").replace("\n", " ")

    try:
        s = smtplib.SMTP(a.host, a.port, local_hostname=a.helo, timeout=30,
                         source_address=(a.src, 0) if a.src else None)
        code, msg = s.ehlo()
        out("EHLO", code, text(msg).split(" ")[0])
        if a.starttls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            code, msg = s.starttls(context=ctx)
            out("STARTTLS", code, text(msg))
            out("TLS", s.sock.version(), s.sock.cipher()[2])
            s.ehlo()
        code, msg = s.mail(a.sender)
        out("MAIL", code, text(msg))
        if code != 250:
            s.quit()
            return 0
        accepted = 0
        for r in a.to:
            code, msg = s.rcpt(r)
            out("RCPT", r, code, text(msg))
            accepted += code in (250, 251)
        if not accepted:
            s.quit()
            return 0
        body = "".join(h + "\r\n" for h in a.header)
        body += "Subject: %s\r\nFrom: <%s>\r\nTo: <%s>\r\n\r\nt-sendmail body\r\n" % (
            a.subject, a.sender, a.to[0])
        try:
            code, msg = s.data(body.encode())
        except smtplib.SMTPDataError as e:
            code, msg = e.smtp_code, e.smtp_error
        out("DATA", code, text(msg))
        s.quit()
    except (OSError, smtplib.SMTPException) as e:
        out("ERROR", type(e).__name__, e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
