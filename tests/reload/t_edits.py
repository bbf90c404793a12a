#!/usr/bin/python3
"""Live reload against the way admins really edit files, with the real daemon.

Usage: t_edits.py TLSPOLICYD TLSPOLICY

Each edit path an admin or a configuration-management tool uses must reach
the daemon (in-place write, truncate then write, rename, sed -i, ln -sfn,
rm + ln -s, rm + ln, a directory swap, an edit of a symlink's target), and
none may weaken the policy on the way: truncate-then-write under load gives
no answer but the enforced one; an empty config is an error; a reload that
would drop most enforcing entries at once is refused until SIGHUP; a list
file that is huge, sparse or a FIFO is an error, not a dead or stuck daemon;
an absolute @include works; a daemon that cannot read its files as
daemon.user refuses to start; the start's snapshot is freed after a reload.
Each check prints "ok - ..." or "FAIL - ..."; exit 1 if any failed.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "socketmap"))
from t_protocol import Client, free_port  # noqa: E402

DAEMON = sys.argv[1] if len(sys.argv) > 1 else "build/tlspolicyd"
CLI = sys.argv[2] if len(sys.argv) > 2 else "build/tlspolicy"
failures = []
# A change must be served within this (settle 0.5 s, backstop stat every 2 s,
# slack for a loaded CI machine and sanitizers).
DEADLINE = 8.0


def check(name, ok, detail=""):
    if ok:
        print(f"ok - {name}")
    else:
        print(f"FAIL - {name}" + (f"\n  {detail}" if detail else ""))
        failures.append(name)


def asan_build():
    out = subprocess.run(["ldd", DAEMON], capture_output=True, text=True).stdout
    return "libasan" in out or "libtsan" in out


class Daemon:
    """tlspolicyd in the foreground on a temp config; its stderr is the log."""

    def __init__(self, tmp, conf_text, env=None):
        self.tmp = tmp
        self.port = free_port()
        self.conf = os.path.join(tmp, "tlspolicy.conf")
        with open(self.conf, "w") as f:
            f.write(conf_text.replace("@PORT@", str(self.port)))
        self.logpath = os.path.join(tmp, "daemon.log")
        self.log = open(self.logpath, "w+")
        self.p = subprocess.Popen([DAEMON, "-f", "-c", self.conf], stderr=self.log, stdin=subprocess.DEVNULL,
                                  env=env)
        self.addr = ("127.0.0.1", self.port)
        self.c = None
        for _ in range(200):
            if self.p.poll() is not None:
                break
            try:
                self.c = Client(self.addr)
                break
            except OSError:
                time.sleep(0.05)

    def ask(self, key):
        try:
            if self.c is None:
                self.c = Client(self.addr)
            r = self.c.ask("tls-policy " + key)
            if r is None:
                self.c = None
            return r
        except OSError as e:
            self.c = None
            return f"error {e}"

    def wait_for(self, key, want, deadline=DEADLINE):
        t0 = time.time()
        got = None
        while time.time() - t0 < deadline:
            got = self.ask(key)
            if got == want:
                return True, got
            time.sleep(0.05)
        return False, got

    def logtext(self):
        with open(self.logpath) as f:
            return f.read()

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def conf(lists='"lists/force.list"', extra=""):
    return f"""
outbound = (
  {{ name = "force"; level = "encrypt"; to_lists = [ {lists} ]; }},
  {{ name = "partner"; level = "encrypt"; to = [ "partner.test" ]; }}
);
{extra}
daemon = {{ socketmap = [ "inet:127.0.0.1:@PORT@" ]; log_rule_lookups = false; control = ""; }};
"""


BASE = [f"keep{i}.test" for i in range(20)]


def list_text(*extra):
    return "".join(x + "\n" for x in BASE + list(extra))


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def edit_paths(tmp):
    """Every edit path reaches the daemon: new key becomes encrypt, old one goes."""
    lists = os.path.join(tmp, "lists")
    os.makedirs(lists)
    f = os.path.join(lists, "force.list")
    write(f, list_text("start.test"))
    d = Daemon(tmp, conf())
    try:
        ok, got = d.wait_for("start.test", "OK encrypt", 3)
        check("edit paths: daemon serves the list", ok, f"got {got!r}")
        n = [0]

        def step(name, do, old_goes=True):
            n[0] += 1
            key = f"p{n[0]}.test"
            do(key)
            ok, got = d.wait_for(key, "OK encrypt")
            check(f"edit path {name}: {key} served as encrypt within {DEADLINE:.0f} s", ok, f"got {got!r}")
            rest = [d.ask(f"keep{i}.test") for i in (0, 3, 19)]
            check(f"edit path {name}: the rest of the list still encrypt", rest == ["OK encrypt"] * 3, f"got {rest!r}")
            if old_goes and n[0] > 1:
                prev = d.ask(f"p{n[0] - 1}.test")
                check(f"edit path {name}: the previous key p{n[0] - 1}.test is gone", prev == "NOTFOUND ", f"got {prev!r}")

        step("in-place write", lambda k: write(f, list_text(k)))

        def truncate_write(k):
            open(f, "w").close()
            time.sleep(0.02)
            write(f, list_text(k))
        step("truncate then write", truncate_write)

        def rename(k):
            write(f + ".tmp", list_text(k))
            os.rename(f + ".tmp", f)
        step("rename over (editors' save)", rename)

        def vim_backup(k):
            os.rename(f, f + "~")
            write(f, list_text(k))
            os.unlink(f + "~")
        step("rename away, write anew (vim backup)", vim_backup)

        step("sed -i", lambda k: subprocess.run(["sed", "-i", f"s/^keep19.test$/keep19.test\\n{k}/", f], check=True),
             old_goes=False)  # (sed adds a line: the previous key stays)

        # From here the list is a symlink into versions/.
        vers = os.path.join(tmp, "versions")
        os.makedirs(vers)

        def ln_sfn(k):
            v = os.path.join(vers, k + ".list")
            write(v, list_text(k))
            subprocess.run(["ln", "-sfn", v, f], check=True)
        step("ln -sfn to a new version", ln_sfn)

        for i in range(8):  # 2 ms apart: used to stay stale in half the tries
            def rm_ln_s(k):
                v = os.path.join(vers, k + ".list")
                write(v, list_text(k))
                os.unlink(f)
                time.sleep(0.002)
                os.symlink(v, f)
            step(f"rm + ln -s (try {i + 1})", rm_ln_s)

        def edit_target(k):
            target = os.path.realpath(f)
            write(target, list_text(k))
        step("in-place write to the symlink's target", edit_target)

        def rm_ln(k):
            v = os.path.join(vers, k + ".hard")
            write(v, list_text(k))
            os.unlink(f)
            time.sleep(0.002)
            os.link(v, f)
        step("rm + ln (hard link)", rm_ln)
    finally:
        d.stop()
    check("edit paths: daemon alive to the end", d.p.returncode == 0, f"exit {d.p.returncode}")


def dir_swap(tmp):
    """Configuration management: lists -> releases/N, swapped atomically."""
    rel = os.path.join(tmp, "releases")
    os.makedirs(os.path.join(rel, "1"))
    write(os.path.join(rel, "1", "force.list"), list_text("r1.test"))
    os.symlink(os.path.join(rel, "1"), os.path.join(tmp, "lists"))
    d = Daemon(tmp, conf())
    try:
        ok, got = d.wait_for("r1.test", "OK encrypt", 3)
        check("dir swap: release 1 served", ok, f"got {got!r}")
        for r in (2, 3):
            os.makedirs(os.path.join(rel, str(r)))
            write(os.path.join(rel, str(r), "force.list"), list_text(f"r{r}.test"))
            tmpl = os.path.join(tmp, "lists.new")
            os.symlink(os.path.join(rel, str(r)), tmpl)
            os.rename(tmpl, os.path.join(tmp, "lists"))
            ok, got = d.wait_for(f"r{r}.test", "OK encrypt")
            check(f"dir swap: release {r} served after the symlink swap", ok, f"got {got!r}")
            ok, got = d.wait_for(f"r{r - 1}.test", "NOTFOUND ", 2)
            check(f"dir swap: release {r - 1}'s own entry gone", ok, f"got {got!r}")
    finally:
        d.stop()


def truncate_under_load(tmp):
    """The regression: ': > file' then a write, under load, never unenforces."""
    lists = os.path.join(tmp, "lists")
    os.makedirs(lists)
    f = os.path.join(lists, "force.list")
    write(f, list_text())
    text = conf()
    d = Daemon(tmp, text)
    conf_full = open(d.conf).read()
    stop = threading.Event()
    bad = []
    count = [0]

    def load():
        c = Client(d.addr)
        keys = ["keep1.test", "keep17.test", "partner.test", "x.partner.test"]
        i = 0
        while not stop.is_set():
            r = c.ask("tls-policy " + keys[i % len(keys)])
            count[0] += 1
            if r != "OK encrypt":
                bad.append((keys[i % len(keys)], r))
                if r is None:
                    c = Client(d.addr)
            i += 1

    t = threading.Thread(target=load)
    t.start()
    try:
        for cycle in range(6):
            # The config: truncated, then written (at once, and 0.8 s later).
            with open(d.conf, "w"):
                pass
            time.sleep(0.01 if cycle % 2 == 0 else 0.8)
            write(d.conf, conf_full)
            # The list: the same.
            with open(f, "w"):
                pass
            time.sleep(0.01 if cycle % 2 == 0 else 0.8)
            write(f, list_text())
            time.sleep(0.3)
        time.sleep(1.5)
    finally:
        stop.set()
        t.join()
    log = d.logtext()
    d.stop()
    check(f"truncate then write under load: {count[0]} lookups, every one OK encrypt", not bad and count[0] > 100,
          f"{len(bad)} others, first {bad[:3]}")
    check("truncated config: refused with 'no rules' in the log", "no rules and no default" in log,
          log[-2000:])
    check("truncated list: the shrink guard refused it in the log", "would remove 20 of the 21 entries" in log,
          log[-2000:])


def empty_and_guard(tmp):
    lists = os.path.join(tmp, "lists")
    os.makedirs(lists)
    f = os.path.join(lists, "force.list")
    empty = os.path.join(tmp, "empty.conf")
    write(empty, "")
    r = subprocess.run([CLI, "check", "-c", empty], capture_output=True, text=True)
    check("tlspolicy check: an empty config is an error", r.returncode != 0 and "no rules" in r.stdout + r.stderr,
          f"exit {r.returncode}: {r.stdout}{r.stderr}")
    write(empty, "allow_empty = true;\n")
    r = subprocess.run([CLI, "check", "-c", empty], capture_output=True, text=True)
    check("tlspolicy check: allow_empty = true accepts it", r.returncode == 0, f"exit {r.returncode}: {r.stdout}{r.stderr}")
    write(empty, "")
    p = subprocess.run([DAEMON, "-f", "-c", empty], capture_output=True, text=True, timeout=20)
    check("tlspolicyd refuses to start on an empty config", p.returncode != 0 and "no rules" in p.stderr,
          f"exit {p.returncode}: {p.stderr[-500:]}")

    write(f, list_text())
    d = Daemon(tmp, conf())
    try:
        check("guard: start", d.wait_for("keep5.test", "OK encrypt", 3)[0])
        write(f, "keep1.test\nkeep2.test\n")  # 18 of 21 enforcing entries go
        time.sleep(3)
        ok, got = d.wait_for("keep5.test", "OK encrypt", 1)
        log = d.logtext()
        check("guard: a change dropping 18 of 21 enforcing entries is refused, old policy serves", ok,
              f"got {got!r}")
        check("guard: the log says what would have gone", "would remove 18 of the 21" in log and "keep5.test (" in log,
              log[-1500:])
        d.p.send_signal(signal.SIGHUP)
        ok, got = d.wait_for("keep5.test", "NOTFOUND ")
        check("guard: SIGHUP loads it anyway", ok, f"got {got!r}")
        check("guard: kept entries still encrypt after SIGHUP", d.ask("keep2.test") == "OK encrypt")
        write(f, list_text("grow.test"))  # growing is never refused
        check("guard: a growing list reloads", d.wait_for("grow.test", "OK encrypt")[0])
        # reload_guard = 100 switches it off.
        with open(d.conf, "a") as c:
            c.write("\n")
        write(d.conf, conf(extra="").replace("log_rule_lookups = false;", "log_rule_lookups = false; reload_guard = 100;")
              .replace("@PORT@", str(d.port)))
        time.sleep(1.5)
        write(f, "keep1.test\n")
        ok, got = d.wait_for("keep5.test", "NOTFOUND ")
        check("guard: reload_guard = 100 lets a file change drop entries", ok, f"got {got!r}")
    finally:
        d.stop()


def guard_cases(tmp):
    """What the shrink guard must see: losses by text, a weaker default, its own switch."""
    lists = os.path.join(tmp, "lists")
    os.makedirs(lists)
    a, b = os.path.join(lists, "a.list"), os.path.join(lists, "b.list")
    write(a, "".join(f"old{i}.test\n" for i in range(20)))
    write(b, "")
    text = """
default = "encrypt";
outbound = ( { name = "force"; level = "encrypt"; to_lists = [ "lists/a.list", "lists/b.list" ]; } );
daemon = { socketmap = [ "inet:127.0.0.1:@PORT@" ]; log_rule_lookups = false; control = ""; };
"""
    d = Daemon(tmp, text)
    try:
        check("guard cases: start", d.wait_for("old5.test", "OK encrypt", 3)[0])
        # 20 entries go from a.list while 20 new ones arrive in b.list: same count, 20 lost.
        write(b, "".join(f"new{i}.test\n" for i in range(20)))
        write(a, "")
        time.sleep(2.5)
        check("guard cases: a list emptied while another grows as much is refused (old5.test still encrypt)",
              d.ask("old5.test") == "OK encrypt" and "would remove 20 of the 20 entries" in d.logtext(),
              d.logtext()[-800:])
        d.p.send_signal(signal.SIGHUP)
        # (new5.test answers encrypt by the default before too: wait for the reload itself.)
        t0 = time.time()
        while time.time() - t0 < DEADLINE and "reloaded" not in d.logtext():
            time.sleep(0.05)
        check("guard cases: ... SIGHUP loads it", "reloaded" in d.logtext() and "20 destination entries" in d.logtext())
        # The default that enforced TLS, removed.
        conf_text = open(d.conf).read()
        write(d.conf, conf_text.replace('default = "encrypt";', ""))
        time.sleep(2.5)
        check("guard cases: removing default = encrypt is refused (unlisted.test still encrypt)",
              d.ask("unlisted.test") == "OK encrypt" and "would weaken the default from encrypt" in d.logtext(),
              d.logtext()[-800:])
        write(d.conf, conf_text)
        time.sleep(1.5)
        # One edit that switches the guard off and drops the entries: the
        # guard being served judges it.
        write(d.conf, conf_text.replace("log_rule_lookups = false;", "log_rule_lookups = false; reload_guard = 100;"))
        write(b, "")
        time.sleep(2.5)
        check("guard cases: an edit cannot switch off the guard that judges it (new5.test still encrypt)",
              d.ask("new5.test") == "OK encrypt", d.logtext()[-800:])
    finally:
        d.stop()


def bad_files(tmp):
    """Huge sparse list, FIFO list: errors, and the daemon keeps serving."""
    lists = os.path.join(tmp, "lists")
    os.makedirs(lists)
    f = os.path.join(lists, "force.list")
    write(f, list_text())
    d = Daemon(tmp, conf())
    try:
        check("bad files: start", d.wait_for("keep5.test", "OK encrypt", 3)[0])
        sparse = os.path.join(lists, "sparse")
        with open(sparse, "w") as s:
            s.truncate(1 << 40)  # 1 TiB of nothing
        os.rename(sparse, f)
        time.sleep(3)
        log = d.logtext()
        check("bad files: a 1 TiB sparse list does not kill the daemon", d.alive(), log[-1500:])
        check("bad files: ... it is a load error naming the file", "is larger than" in log, log[-1500:])
        check("bad files: ... the old policy serves", d.ask("keep5.test") == "OK encrypt")
        os.unlink(f)
        os.mkfifo(f)
        time.sleep(3)
        log = d.logtext()
        check("bad files: a FIFO list is a load error", "is not a regular file" in log, log[-1500:])
        os.unlink(f)
        write(f, list_text("after.test"))
        ok, got = d.wait_for("after.test", "OK encrypt")
        check("bad files: the next good list reloads (the loader is not stuck)", ok, f"got {got!r}")
    finally:
        d.stop()


def fifo_include(tmp):
    """A FIFO where an @include file was: an error, and the loader is not stuck."""
    os.makedirs(os.path.join(tmp, "lists"))
    write(os.path.join(tmp, "lists", "force.list"), list_text())
    inc = os.path.join(tmp, "inc.conf")
    write(inc, 'default = "encrypt";\n')
    d = Daemon(tmp, conf(extra='@include "inc.conf"\n'))
    try:
        check("fifo include: start", d.wait_for("unlisted.test", "OK encrypt", 3)[0])
        os.unlink(inc)
        os.mkfifo(inc)
        time.sleep(3)
        log = d.logtext()
        check("fifo include: a FIFO as an @include file is a load error", 'inc.conf": not a regular file' in log,
              log[-800:])
        os.unlink(inc)
        write(inc, 'default = "verify";\n')
        ok, got = d.wait_for("unlisted.test", "OK verify")
        check("fifo include: the next good file reloads (the loader is not stuck)", ok, f"got {got!r}")
    finally:
        d.stop()
    check("fifo include: the daemon stops cleanly", d.p.returncode == 0, f"exit {d.p.returncode}")


def absolute_include(tmp):
    other = tempfile.mkdtemp(prefix="tlspolicy-inc-")
    try:
        inc = os.path.join(other, "extra.conf")
        # Relative @include paths, in the main file or an included one, are
        # relative to the main config's directory (libconfig's include dir).
        write(inc, 'default = "encrypt";\n@include "nested.conf"\n')
        write(os.path.join(tmp, "nested.conf"), "subdomains = true;\n")
        os.makedirs(os.path.join(tmp, "lists"))
        write(os.path.join(tmp, "lists", "force.list"), list_text())
        write(os.path.join(tmp, "rel.conf"), "recipient_delimiter = \"+\";\n")
        text = conf(extra=f'@include "{inc}"\n@include "rel.conf"\n')
        write(os.path.join(tmp, "c.conf"), text.replace("@PORT@", "1"))
        r = subprocess.run([CLI, "check", "-c", os.path.join(tmp, "c.conf")], capture_output=True, text=True)
        check("absolute @include: tlspolicy check accepts it", r.returncode == 0, f"{r.stdout}{r.stderr}")
        d = Daemon(tmp, text)
        try:
            ok, got = d.wait_for("anything.test", "OK encrypt", 3)
            check("absolute @include: the daemon serves its default", ok, f"got {got!r} {d.logtext()[-800:]}")
            write(inc, 'default = "verify";\n@include "nested.conf"\n')
            ok, got = d.wait_for("anything.test", "OK verify")
            check("absolute @include: a change to it reloads", ok, f"got {got!r}")
        finally:
            d.stop()
    finally:
        shutil.rmtree(other)


def unreadable_as_user(tmp):
    if os.geteuid() != 0:
        check("unreadable as daemon.user: needs root (CI runs as root)", False)
        return
    os.chmod(tmp, 0o755)
    lists = os.path.join(tmp, "lists")
    os.makedirs(lists)
    os.chmod(lists, 0o755)
    f = os.path.join(lists, "force.list")
    write(f, list_text())
    os.chmod(f, 0o600)
    c = os.path.join(tmp, "tlspolicy.conf")
    write(c, conf().replace("@PORT@", str(free_port())).replace("log_rule_lookups = false;",
                                                                  'log_rule_lookups = false; user = "nobody";'))
    os.chmod(c, 0o644)
    p = subprocess.run([DAEMON, "-f", "-c", c], capture_output=True, text=True, timeout=20)
    check("a list daemon.user cannot read: tlspolicyd refuses to start and names it",
          p.returncode != 0 and "force.list" in p.stderr and "nobody" in p.stderr,
          f"exit {p.returncode}: {p.stderr[-600:]}")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_snapshot_freed(tmp):
    if asan_build():
        print("ok - start snapshot freed: not measured on a sanitizer build (its allocator keeps freed memory "
              "in quarantine); the plain build's run checks it")
        return
    lists = os.path.join(tmp, "lists")
    os.makedirs(lists)
    f = os.path.join(lists, "force.list")
    with open(f, "w") as out:
        for i in range(300000):
            out.write(f"host{i}.big{i % 97}.test\n")
    d = Daemon(tmp, conf())
    try:
        check("start snapshot: 300k entries served", d.wait_for("host5.big5.test", "OK encrypt", 10)[0])
        big = rss_kb(d.p.pid)
        write(f, "one.test\n")
        d.p.send_signal(signal.SIGHUP)
        ok, _ = d.wait_for("host5.big5.test", "NOTFOUND ", 10)
        time.sleep(1)
        small = rss_kb(d.p.pid)
        check(f"start snapshot freed after a reload: RSS {big // 1024} MB -> {small // 1024} MB", ok and small < big / 3,
              f"big {big} kB, small {small} kB")
    finally:
        d.stop()


def main():
    for name, fn in [("edits", edit_paths), ("dirswap", dir_swap), ("truncate", truncate_under_load),
                     ("empty", empty_and_guard), ("guard", guard_cases), ("badfiles", bad_files), ("fifoinclude", fifo_include), ("include", absolute_include),
                     ("user", unreadable_as_user), ("rss", start_snapshot_freed)]:
        if len(sys.argv) > 3 and name not in sys.argv[3:]:
            continue
        tmp = tempfile.mkdtemp(prefix=f"tlspolicy-{name}-")
        try:
            fn(tmp)
        except Exception as e:  # a crashed check is a failed check
            check(f"{name}: ran to the end", False, repr(e))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failed" if failures else "all passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
