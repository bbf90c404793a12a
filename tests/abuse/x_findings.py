#!/usr/bin/python3
"""Reproductions of what the abuse work found (figures, not a pass/fail test).

Usage: x_findings.py TLSPOLICYD [emfile|nonreaders|pipeliner|sweep|milterflood|reloadrss ...]
       (default: all)

  emfile      the daemon's RLIMIT_NOFILE below max_connections: once accept()
              fails with EMFILE the listener stays readable (level-triggered
              epoll), the loop spins and logs "accept: Too many open files"
              on every round. Prints log lines/s and the daemon's CPU.
  nonreaders  clients that pipeline requests and never read: the daemon keeps
              up to 1 MB of replies per connection (kMaxPendingOutput) plus
              the unread input. Prints RSS per such connection.
  pipeliner   one client keeping 64 kB of pipelined requests in flight (and
              reading the answers) next to a well-behaved client: prints the
              well-behaved client's p99 with and without it.
  sweep       4000 idle connections expiring in the same sweep (idle_timeout):
              prints the well-behaved client's worst latency around it.
  milterflood 1000 idle TCP connections to the milter port: the daemon's
              threads and RSS, and a real miltertest session meanwhile.
  reloadrss   RSS after each of X_RELOADS (env, default 30) SIGHUP reloads of
              an X_RULES-rule policy (env, default 100000;
              bench/gen_lookup_data.py): where it levels off.

Each prints "# finding: ..." lines with the figures and the command's
configuration. Loopback only; uses the probe of t_abuse.py.
"""
import json
import os
import socket
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import t_abuse as ta  # noqa: E402


def conf(tmp, name, port, extra=""):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write("""
default = "may";
recipient_delimiter = "+";
outbound = (
  { name = "partner"; level = "encrypt"; to = [ "partner.test" ]; },
  { name = "auditor"; level = "encrypt"; to = [ "auditor@bank.test" ]; }
);
daemon = { socketmap = [ "inet:127.0.0.1:%d" ]; %s };
""" % (port, extra))
    return path


STARTED = []  # every daemon started, stopped at the end even if a finding fails


def start(binary, tmp, name, extra="", nofile=None):
    port = ta.free_port()
    path = conf(tmp, name + ".conf", port, extra)
    if nofile:
        import resource
        import subprocess

        def pre():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            os.setpgid(0, 0)
        d = ta.Daemon.__new__(ta.Daemon)
        d.log_path = os.path.join(tmp, name + ".log")
        d.log = open(d.log_path, "w+")
        d.p = subprocess.Popen([binary, "-f", "-c", path], stdin=subprocess.DEVNULL, stdout=d.log, stderr=d.log,
                               preexec_fn=pre)
        d.pid = d.p.pid
    else:
        d = ta.Daemon(binary, path, os.path.join(tmp, name + ".log"))
    STARTED.append(d)
    if not ta.wait_serving(port, d):
        print("# could not start the daemon:\n" + d.log_text()[-1000:])
        sys.exit(1)
    return d, port


def probe(port, seconds=None, count=None, interval=0.001):
    p = ta.spawn("probe", {"port": port, "seconds": seconds, "count": count, "interval": interval})
    r, err = ta.collect(p, (seconds or 30) + 30)
    if r is None:
        print("# probe failed: " + err)
        sys.exit(1)
    return r


def finding_emfile(binary, tmp):
    d, port = start(binary, tmp, "emfile", "max_connections = 1000; idle_timeout = 60;", nofile=64)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    time.sleep(0.5)
    size0, cpu0, t0 = os.path.getsize(d.log_path), d.cpu_s(), time.monotonic()
    time.sleep(3)
    size1, cpu1, t1 = os.path.getsize(d.log_path), d.cpu_s(), time.monotonic()
    text = d.log_text()
    n = text.count("accept: Too many open files")
    line = len("2026-01-01T00:00:00 tlspolicyd: warning: accept: Too many open files\n")
    c = socket.create_connection(("127.0.0.1", port))
    c.settimeout(2)
    c.sendall(ta.ns("tls-policy partner.test"))
    try:
        newcomer = c.recv(100)
    except socket.timeout:
        newcomer = "no answer in 2 s"
    c.close()
    for h in held:
        h.close()
    time.sleep(0.5)
    ok = ta.Reader(socket.create_connection(("127.0.0.1", port)))
    ok.s.sendall(ta.ns("tls-policy partner.test"))
    after = ok.reply()
    rc = d.stop()
    os.truncate(d.log_path, min(os.path.getsize(d.log_path), 1 << 16))  # ~90 MB of the same line
    print("# finding emfile: RLIMIT_NOFILE 64, max_connections 1000, 100 clients connected: in 3 s the daemon "
          "logged %.0f kB (%.0f lines/s of 'accept: Too many open files'; %d such lines in all) and used %.2f s "
          "of CPU (%.0f%% of a core) while idle; a new client: %r; after the crowd left: %r; exit %s" % (
              (size1 - size0) / 1024, (size1 - size0) / line / (t1 - t0), n, cpu1 - cpu0,
              100 * (cpu1 - cpu0) / (t1 - t0), newcomer, after, rc))


def finding_nonreaders(binary, tmp, n=50):
    d, port = start(binary, tmp, "nonreaders", "max_connections = 4000; idle_timeout = 60;")
    rss0 = d.rss_kb()
    batch = b"".join(ta.ns("tls-policy x%d.test" % i) for i in range(2000))
    socks, sent = [], 0
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    deadline = time.monotonic() + 20
    offset = [0] * n  # where each socket is in the (endlessly repeated) batch
    progress = True
    while progress and time.monotonic() < deadline:
        progress = False
        for i, s in enumerate(socks):
            try:
                while True:
                    k = s.send(batch[offset[i]:])
                    offset[i] = (offset[i] + k) % len(batch)
                    sent += k
                    progress = True
            except BlockingIOError:
                pass
        time.sleep(0.2)
    time.sleep(1)
    rss1 = d.rss_kb()
    cpu = d.cpu_s()
    for s in socks:
        s.close()
    time.sleep(1)
    rss2 = d.rss_kb()
    d.stop()
    print("# finding nonreaders: %d connections pipelining without reading (%.0f MB of requests accepted by the "
          "kernel and daemon): daemon RSS %d -> %d kB (+%.2f MB per connection); after they left %d kB; "
          "daemon CPU %.1f s" % (n, sent / 1e6, rss0, rss1, (rss1 - rss0) / 1024 / n, rss2, cpu))


def role_pipeliner(a):
    port, seconds = a["port"], a["seconds"]
    s = socket.create_connection(("127.0.0.1", port))
    batch = b"".join(ta.ns("tls-policy x%d.test" % i) for i in range(2400))  # ~64 kB
    r = ta.Reader(s)
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.sendall(batch)
        for _ in range(2400):
            r.reply()
        n += 2400
    return {"requests": n}


def finding_pipeliner(binary, tmp, seconds=10):
    d, port = start(binary, tmp, "pipeliner", "max_connections = 100;")
    alone = probe(port, seconds=seconds)
    import subprocess
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", "pipeliner",
                          json.dumps({"port": port, "seconds": seconds})], stdout=subprocess.PIPE, text=True)
    loaded = probe(port, seconds=seconds)
    out, _ = p.communicate(timeout=seconds + 30)
    fl = json.loads(out.strip().splitlines()[-1])
    d.stop()
    print("# finding pipeliner: well-behaved client alone: %s" % ta.lat_summary(alone["lat_us"]))
    print("# finding pipeliner: next to one client pipelining 2400 requests (64 kB) at a time (%d requests, %.0f/s): "
          "%s" % (fl["requests"], fl["requests"] / seconds, ta.lat_summary(loaded["lat_us"])))


def finding_sweep(binary, tmp, n=4000):
    d, port = start(binary, tmp, "sweep", "max_connections = 5000; idle_timeout = 11;")
    held = []
    for i in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_IP, ta.IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind(("127.0.0.31", 0))
        s.connect(("127.0.0.1", port))
        held.append(s)
    r = probe(port, seconds=15)
    slow = sorted(r["slow"], key=lambda x: -x[1])[:5]
    for s in held:
        s.close()
    d.stop()
    print("# finding sweep: %d idle connections cut in the same second (idle_timeout 11): well-behaved client %s; "
          "worst (s into the run, us): %s" % (n, ta.lat_summary(r["lat_us"]),
                                              " ".join("%s:%s" % (t, l) for t, l in slow)))


def finding_milterflood(binary, tmp, n=1000):
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    mport = ta.free_port()
    path = os.path.join(tmp, "milterflood.conf")
    with open(os.path.join(here, "..", "milter", "outbound.conf")) as f:
        text = f.read()
    sport = ta.free_port()
    with open(path, "w") as f:
        f.write(text.replace("@SOCKETMAP@", "inet:127.0.0.1:%d" % sport).replace("@MILTER@", "inet:127.0.0.1:%d" % mport))
    d = ta.Daemon(binary, path, os.path.join(tmp, "milterflood.log"))
    STARTED.append(d)
    for _ in range(100):
        if "started:" in d.log_text():
            break
        time.sleep(0.05)
    script = os.path.join(tmp, "one.lua")
    with open(script, "w") as f:
        f.write('dofile(lib)\none_message({ auth = "alice" }, "alice@ourcorp.test", { "bob@enc.test" }, '
                'function(c) expect_one_header(c, "X-TLSLevel", "Require") end)\nmt.echo("one message ok")\n')

    def status(key):
        with open("/proc/%d/status" % d.pid) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])

    t0 = status("Threads:")
    held = [socket.create_connection(("127.0.0.1", mport)) for _ in range(n)]
    time.sleep(2)
    threads, rss, fds = status("Threads:"), d.rss_kb(), d.fds()
    t = time.monotonic()
    r = subprocess.run(["miltertest", "-D", "sock=inet:%d@127.0.0.1" % mport, "-D", "dir=" + tmp, "-D", "conf=" + path,
                        "-D", "log=" + d.log_path, "-D", "pid=%d" % d.pid,
                        "-D", "lib=" + os.path.join(here, "..", "milter", "lib.lua"), "-s", script],
                       capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t
    for h in held:
        h.close()
    time.sleep(2)
    fds_after = d.fds()
    rc = d.stop()
    print("# finding milterflood: %d idle connections to the milter: threads %d -> %d, RSS %d kB, fds %d; a real "
          "session meanwhile: %s in %.2f s; fds after they left %d; exit %s" % (
              n, t0, threads, rss, fds, "ok" if r.returncode == 0 else "FAILED: " + r.stdout[-300:], took,
              fds_after, rc))


def finding_reloadrss(binary, tmp):
    import subprocess
    rules = int(os.environ.get("X_RULES", "100000"))
    reloads = int(os.environ.get("X_RELOADS", "30"))
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, os.path.join(here, "..", "..", "bench", "gen_lookup_data.py"), tmp, "10",
                    str(rules)], check=True, stdout=subprocess.DEVNULL)
    port = ta.free_port()
    path = os.path.join(tmp, "reloadrss.conf")
    with open(path, "w") as f:
        f.write('outbound = ( { name = "list"; level = "encrypt"; to_lists = [ "dom-%d.list" ]; } );\n'
                'daemon = { socketmap = [ "inet:127.0.0.1:%d" ]; };\n' % (rules, port))
    d = ta.Daemon(binary, path, os.path.join(tmp, "reloadrss.log"))
    STARTED.append(d)
    for _ in range(600):
        if "started:" in d.log_text():
            break
        time.sleep(0.1)
    rss = [d.rss_kb()]
    for i in range(1, reloads + 1):
        d.p.send_signal(__import__("signal").SIGHUP)
        for _ in range(600):
            if d.log_text().count("tlspolicyd: reloaded ") >= i:
                break
            time.sleep(0.05)
        rss.append(d.rss_kb())
    d.stop()
    print("# finding reloadrss: %d rules, VmRSS kB at start and after each of %d reloads: %s" % (
        rules, reloads, " ".join(str(r) for r in rss)))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        print(json.dumps({"pipeliner": role_pipeliner}[sys.argv[2]](json.loads(sys.argv[3]))))
        return 0
    binary = os.path.abspath(sys.argv[1])
    which = sys.argv[2:] or ["emfile", "nonreaders", "pipeliner", "sweep", "milterflood", "reloadrss"]
    ta.raise_nofile()
    tmp = tempfile.mkdtemp(prefix="tlspolicy-findings-")
    try:
        for w in which:
            globals()["finding_" + w](binary, tmp)
    finally:
        for d in STARTED:
            if d.alive():
                d.stop()
    print("# logs in " + tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
