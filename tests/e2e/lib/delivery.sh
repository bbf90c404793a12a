# Helpers shared by the e2e scripts that check where mail went and what
# tlspolicyd answered (t-dns.sh, t-mta-sts.sh). Source after lib/checks.sh
# (needs E2E_PYTHON, E2E_DIR, q_reasons, pf_send, die) and set TD_PORT, the
# daemon's socketmap port, before calling sm_raw.

# sink_got SINK RCPT: "tls=<bool>" per message SINK got for RCPT.
sink_got() {
    "$E2E_PYTHON" - "$E2E_DIR/sink-$1" "$2" <<'PY'
import glob, json, os, sys
d, rcpt = sys.argv[1], sys.argv[2].lower()
for f in sorted(glob.glob(os.path.join(d, "*.json"))):
    m = json.load(open(f, encoding="utf-8"))
    if rcpt in [t.lower() for t in m["rcpt_tos"]]:
        print("tls=%s" % ("true" if m["tls"] else "false"))
PY
}

# sm_raw MAP KEY: tlspolicyd's raw socketmap reply (one request, one netstring).
sm_raw() {
    "$E2E_PYTHON" - "$TD_PORT" "$1" "$2" <<'PY'
import socket, sys
port, name, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
q = ("%s %s" % (name, key)).encode()
s = socket.create_connection(("127.0.0.1", port), timeout=15)
s.sendall(b"%d:%s," % (len(q), q))
buf = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    buf += c
    n, _, rest = buf.partition(b":")
    if n.isdigit() and len(rest) >= int(n) + 1:
        print(rest[:int(n)].decode(errors="replace"))
        break
else:
    print("(connection closed: %r)" % buf)
PY
}

# deferred_for RCPT: true once RCPT's queue entry has a deferral reason.
deferred_for() {
    local r
    r=$(q_reasons "$1" | head -n1)
    [ -n "$r" ] && [ "$r" != "(no reason yet)" ]
}

send() { pf_send "$@" >/dev/null || die "smtpd did not accept mail from $1 to ${*:2}"; }
