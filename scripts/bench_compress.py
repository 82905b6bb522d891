"""The compression rows of scripts/bench (opt-in: BENCH_COMPRESS=1; issue
18, "Compression where the link is slow"): `mito get/put` with and without
`--compress` beside their nearest peers, over a slow link made for the run.

The link: two network namespaces of this run's own (mitoz-c-PID, the
master's side, and mitoz-s-PID, the target's), one veth pair between them
on 10.203.18.0/30, and a token bucket (`tc qdisc ... tbf`) on both ends'
egress at each rate of BENCH_COMPRESS_RATES (Mbit/s; 0 = the veth unshaped;
default "0,1000,100,20"). BENCH_COMPRESS_TOOLS and BENCH_COMPRESS_DATA
narrow a run (see `run`). No delay is added: this kernel has no netem, so
the link is slow by rate, not by latency. The target's sshd is the test
sshd of scripts/test-sshd (its host key, authorized key and config, made by
`test-sshd start` run inside the target's namespace, then stopped) started
again in that namespace with `-D -o ListenAddress=10.203.18.2`; every tool
runs in the master's namespace, so all traffic crosses the shaped veth and
nothing leaves the two namespaces. At the end sshd is stopped by its pid,
the veth and both namespaces are deleted, the files removed.

Workloads (64 MiB each, BENCH_COMPRESS_MIB to change; in /dev/shm so no
disk is measured): `text`, syslog-like lines from a fixed seed (hosts,
daemons, pids, addresses, ids: compresses ~5-10x), and `random`, bytes
that do not compress. At rates below 100 Mbit/s only `text` runs (every
tool is link-bound on random bytes there, 27 s a transfer at 20 Mbit/s;
the faster rates show what trying to compress costs).

Tools, each a whole command (process start, ssh handshake, transfer), all
with the same key, user and cipher (aes128-gcm, pinned):
- down (target -> master): `mito get`, `mito get --compress` (the agent
  deflates each 1 MiB chunk that shrinks by an eighth: its own
  fixed-Huffman LZ77), `ssh host cat FILE` (Compression=no: the link's
  floor), `ssh -C host cat FILE` (zlib level 6 on the whole stream),
  `rsync -z` (whatever rsync negotiates: printed).
- up (master -> target): `mito put`, `mito put --compress` (the master
  deflates each chunk with miniz_oxide level 1), `ssh host 'cat > FILE'`,
  `scp -C`, `rsync -z`, and Python mitogen's FileService put (the child
  pulls the file from the master) with its ssh default `Compression yes`
  and with compression off. mitogen has no compression of its own for
  file data (it zlib-compresses module source only): ssh's -C is what it
  offers, so that is its row. It has no get.

Each run's destination is removed first and checked against the source
after (size and bytes, not timed). Bytes on the wire: what crossed the
master's veth both ways (IP packets, ssh and TCP overhead included).
Tools alternate within each round (A, B, C, ..., A, B, C, ...); medians
of the rounds (BENCH_COMPRESS_ROUNDS or --rounds, default 3).

The login user: BENCH_COMPRESS_USER, else mito-user when run as root and
scripts/test-become made it (root's ~/.bashrc on this VM runs pyenv init),
else root. Needs root (namespaces, tc). Standalone:
    python3 scripts/bench_compress.py --mito-cli target/release/mito --python target/bench-venv/bin/python
"""
import argparse
import ctypes
import filecmp
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time

MIB = 1 << 20
CIPHER = "aes128-gcm@openssh.com"
NET = "10.203.18.%d"
CLONE_NEWNET = 0x40000000


def sh(*cmd, check=True):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=check, timeout=60)


def log_text(path, size):
    """`size` bytes of syslog-like lines, the same for a given size."""
    rng = random.Random(18)
    hosts = ["web%02d" % i for i in range(1, 9)] + ["db1", "db2", "cache1", "lb1"]
    daemons = ["sshd", "nginx", "postgres", "kernel", "systemd", "cron", "dockerd", "haproxy"]
    users = ["deploy", "root", "alice", "bob", "backup", "ci"]
    paths = ["/api/v1/users", "/api/v1/orders", "/static/app.js", "/healthz", "/login", "/api/v2/search"]
    templates = [
        lambda: "Accepted publickey for %s from 10.%d.%d.%d port %d ssh2: ED25519 SHA256:%s" % (
            rng.choice(users), rng.randrange(256), rng.randrange(256), rng.randrange(256),
            rng.randrange(1024, 65536), "%032x" % rng.getrandbits(128)),
        lambda: '10.%d.%d.%d - - "GET %s?id=%d HTTP/1.1" %d %d "-" "Mozilla/5.0 (X11; Linux x86_64)" rt=%.3f' % (
            rng.randrange(256), rng.randrange(256), rng.randrange(256), rng.choice(paths), rng.randrange(10 ** 6),
            rng.choice([200, 200, 200, 304, 404, 500]), rng.randrange(100, 90000), rng.random()),
        lambda: "LOG:  duration: %.3f ms  statement: SELECT * FROM orders WHERE customer_id = %d AND state = '%s'" % (
            rng.random() * 500, rng.randrange(10 ** 7), rng.choice(["open", "paid", "shipped"])),
        lambda: "Started Session %d of user %s." % (rng.randrange(10 ** 5), rng.choice(users)),
        lambda: "(%s) CMD (/usr/local/bin/rotate --keep %d /var/log/app/%s.log)" % (
            rng.choice(users), rng.randrange(2, 30), rng.choice(daemons)),
        lambda: "container %012x health_status: %s, exec_id %016x" % (
            rng.getrandbits(48), rng.choice(["healthy", "healthy", "unhealthy"]), rng.getrandbits(64)),
        lambda: "[%d.%06d] TCP: request_sock_TCP: Possible SYN flooding on port %d. Sending cookies." % (
            rng.randrange(10 ** 6), rng.randrange(10 ** 6), rng.choice([80, 443, 8080])),
    ]
    t = 1_700_000_000
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    out, n = [], 0
    while n < size:
        t += rng.randrange(0, 3)
        tm = time.gmtime(t)
        line = "%s %2d %02d:%02d:%02d %s %s[%d]: %s\n" % (
            months[tm.tm_mon - 1], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, rng.choice(hosts),
            rng.choice(daemons), rng.randrange(100, 40000), rng.choice(templates)())
        out.append(line)
        n += len(line)
    data = "".join(out).encode()[:size]
    with open(path, "wb") as f:
        f.write(data)


class Link:
    """The two namespaces, the veth between them, and the shaping."""

    def __init__(self):
        pid = os.getpid()
        self.cli, self.srv = "mitoz-c-%d" % pid, "mitoz-s-%d" % pid
        self.vc, self.vs = "mzc%d" % pid, "mzs%d" % pid
        self.made = []

    def up(self):
        for ns in (self.cli, self.srv):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
        sh("ip", "link", "add", self.vc, "netns", self.cli, "type", "veth", "peer", "name", self.vs, "netns", self.srv)
        for ns, dev, host in ((self.cli, self.vc, 1), (self.srv, self.vs, 2)):
            sh("ip", "-n", ns, "addr", "add", NET % host + "/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def rate(self, mbit):
        """Both directions at `mbit` Mbit/s (0: unshaped)."""
        for ns, dev in ((self.cli, self.vc), (self.srv, self.vs)):
            sh("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
            if mbit:
                # A bucket of 10 ms at the rate (at least 64 KiB): a GSO
                # packet of 64 KiB passes whole; 50 ms of queue.
                burst = max(64 * 1024, mbit * 1_000_000 // 8 // 100)
                sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", "%dmbit" % mbit,
                   "burst", str(burst), "latency", "50ms")

    def enter(self):
        """This process (and so every tool it starts) into the master's namespace."""
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/run/netns/" + self.cli) as f:
            if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns " + self.cli)

    def wire_bytes(self):
        """rx + tx of the master's veth (this process is in its namespace)."""
        with open("/proc/self/net/dev") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.strip() == self.vc:
                    v = rest.split()
                    return int(v[0]) + int(v[8])
        raise RuntimeError("no %s in /proc/self/net/dev" % self.vc)

    def down(self):
        sh("ip", "-n", self.cli, "link", "del", self.vc, check=False)
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)


class Bench:
    def __init__(self, a, work, link):
        self.a, self.work, self.link = a, work, link
        self.user = os.environ.get("BENCH_COMPRESS_USER") or self.default_user()
        self.host = NET % 2
        self.sshd_dir = os.path.join(work, "sshd")
        self.key = os.path.join(self.sshd_dir, "id_ed25519")
        self.kh = os.path.join(self.sshd_dir, "known_hosts")
        self.sshd = None
        self.remote = os.path.join(work, "remote")  # the target's side (the login user's)
        self.local = os.path.join(work, "local")
        os.mkdir(self.remote, 0o755)
        os.mkdir(self.local, 0o755)
        import pwd
        pw = pwd.getpwnam(self.user)
        os.chown(self.remote, pw.pw_uid, pw.pw_gid)
        self.ssh_opts = ["-F", "/dev/null", "-i", self.key, "-o", "UserKnownHostsFile=" + self.kh,
                         "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-c", CIPHER]
        self.mito = [a.mito_cli, "-F", "/dev/null", "--private-key", self.key, "-o", "UserKnownHostsFile=" + self.kh,
                     "-o", "IdentitiesOnly=yes", "-o", "Compression=no", "-o", "Ciphers=" + CIPHER,
                     "--no-control-master"]
        self.target = "ssh://%s@%s:22" % (self.user, self.host)

    @staticmethod
    def default_user():
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_fleet import mito_user_if_root

        return mito_user_if_root("root")

    def start_sshd(self, root):
        # test-sshd makes the keys and the config (and starts an sshd on the
        # target namespace's own 127.0.0.1, stopped at once); the one the
        # bench uses listens on the veth's address too.
        ts = os.path.join(root, "scripts", "test-sshd")
        sh("ip", "netns", "exec", self.link.srv, ts, "start", self.sshd_dir, "22")
        sh(ts, "stop", self.sshd_dir)
        with open(os.path.join(self.sshd_dir, "host_ed25519.pub")) as f:
            hostkey = " ".join(f.read().split()[:2])
        with open(self.kh, "w") as f:
            f.write("%s %s\n" % (self.host, hostkey))
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.sshd = subprocess.Popen(["ip", "netns", "exec", self.link.srv, sshd, "-D", "-f",
                                      os.path.join(self.sshd_dir, "sshd_config"), "-E",
                                      os.path.join(self.sshd_dir, "sshd.log"), "-o", "ListenAddress=" + self.host])
        for _ in range(100):
            r = subprocess.run(["ssh"] + self.ssh_opts + ["%s@%s" % (self.user, self.host), "true"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("the bench sshd on %s did not answer; see %s/sshd.log" % (self.host, self.sshd_dir))

    def stop_sshd(self):
        if self.sshd and self.sshd.poll() is None:
            self.sshd.terminate()  # by pid: the Popen's (ip netns exec execs sshd)
            try:
                self.sshd.wait(10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait()

    # Each tool: (name, direction, argv(src, dst), stdin path, stdout path)
    def tools(self):
        login = "%s@%s" % (self.user, self.host)
        ssh = lambda comp: ["ssh"] + self.ssh_opts + ["-o", "Compression=" + comp, login]
        rsync_e = " ".join(["ssh"] + self.ssh_opts + ["-o", "Compression=no"])
        mitogen = lambda comp: lambda s, d: [self.a.python, os.path.abspath(__file__), "--mitogen-put", self.host,
                                             self.user, self.sshd_dir, s, d, comp]
        t = [
            ("mito get", "down", lambda s, d: self.mito + ["get", "--force", "%s:%s" % (self.target, s), d], None, None),
            ("mito get --compress", "down",
             lambda s, d: self.mito + ["get", "--force", "--compress", "%s:%s" % (self.target, s), d], None, None),
            ("ssh host cat", "down", lambda s, d: ssh("no") + ["cat", s], None, "dst"),
            ("ssh -C host cat", "down", lambda s, d: ssh("yes") + ["cat", s], None, "dst"),
            ("rsync -z", "down", lambda s, d: ["rsync", "-z", "-e", rsync_e, "%s:%s" % (login, s), d], None, None),
            ("mito put", "up", lambda s, d: self.mito + ["put", "--force", s, "%s:%s" % (self.target, d)], None, None),
            ("mito put --compress", "up",
             lambda s, d: self.mito + ["put", "--force", "--compress", s, "%s:%s" % (self.target, d)], None, None),
            ("ssh host 'cat > f'", "up", lambda s, d: ssh("no") + ["cat > " + d], "src", None),
            ("scp -C", "up", lambda s, d: ["scp", "-q", "-C"] + self.ssh_opts + [s, "%s:%s" % (login, d)], None, None),
            ("rsync -z", "up", lambda s, d: ["rsync", "-z", "-e", rsync_e, s, "%s:%s" % (login, d)], None, None),
        ]
        if self.a.python:
            t += [("mitogen put (ssh -C, its default)", "up", mitogen("yes"), None, None),
                  ("mitogen put (no ssh -C)", "up", mitogen("no"), None, None)]
        return t

    def run_once(self, tool, src):
        name, direction, argv, stdin, stdout = tool
        base = os.path.basename(src)
        dst = os.path.join(self.local if direction == "down" else self.remote, base + ".copy")
        if os.path.exists(dst):
            os.unlink(dst)
        cmd = argv(src, dst)
        fin = open(src, "rb") if stdin else subprocess.DEVNULL
        fout = open(dst, "wb") if stdout else subprocess.PIPE
        before = self.link.wire_bytes()
        t = time.perf_counter()
        r = subprocess.run(cmd, stdin=fin, stdout=fout, stderr=subprocess.PIPE, timeout=1800)
        dt = time.perf_counter() - t
        wire = self.link.wire_bytes() - before
        for f in (fin, fout):
            if hasattr(f, "close"):
                f.close()
        if r.returncode != 0:
            raise RuntimeError("%s exited %d: %s" % (name, r.returncode, r.stderr.decode(errors="replace")[-400:]))
        if not filecmp.cmp(src, dst, shallow=False):
            raise RuntimeError("%s: the copy differs from the source" % name)
        os.unlink(dst)
        return dt, wire

    def rsync_choice(self, src):
        """What `rsync -z` negotiates here (rsync >= 3.2 picks zstd, lz4 or zlib)."""
        r = subprocess.run(["rsync", "-z", "--debug=NSTR", "-n", "-e",
                            " ".join(["ssh"] + self.ssh_opts), src,
                            "%s@%s:%s" % (self.user, self.host, os.path.join(self.remote, "probe"))],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        m = re.search(r"compress:?\s*(\S+)", r.stdout.decode(errors="replace"))
        return m.group(1) if m else "?"


def table(results, size, out):
    """results: {(rate, workload): {tool: [(s, wire)]}}"""
    print("\nmito --compress beside ssh -C, scp -C, rsync -z and mitogen over a shaped veth "
          "(%d MiB files, whole commands, medians)\n" % (size // MIB))
    print("%-8s %-7s %-5s %-36s %12s %10s %14s %9s" % ("link", "data", "dir", "tool", "median s", "MB/s",
                                                         "wire MB", "runs"))
    for (rate, workload), tools in results.items():
        floor = {}
        for (name, direction), runs in tools.items():
            if name.startswith("ssh host"):
                floor[direction] = statistics.median([s for s, _ in runs])
        for (name, direction), runs in tools.items():
            if not runs:
                continue
            s = statistics.median([x for x, _ in runs])
            wire = statistics.median([w for _, w in runs])
            vs = " %.2fx ssh" % (floor[direction] / s) if direction in floor and not name.startswith("ssh host") else ""
            print("%-8s %-7s %-5s %-36s %12.2f %10.1f %14.1f %s%s" % (
                "%d Mbit" % rate if rate else "veth", workload, direction, name, s, size / 1e6 / s, wire / 1e6,
                " ".join("%.2f" % x for x, _ in runs), vs))
            if out:
                out.write(json.dumps({"workload": "compress", "rate_mbit": rate, "data": workload, "direction": direction,
                                      "tool": name, "unit": "s", "median": s, "mb_s": size / 1e6 / s,
                                      "wire_bytes": wire, "time": int(time.time())}) + "\n")
        gain = []
        for verb, d in (("get", "down"), ("put", "up")):
            plain, comp = tools.get(("mito " + verb, d)), tools.get(("mito %s --compress" % verb, d))
            if plain and comp:
                gain.append("%s %.2fx" % (verb, statistics.median([x for x, _ in plain]) /
                                          statistics.median([x for x, _ in comp])))
        if gain:
            print("%-8s %-7s --compress vs without (time without / time with): %s" % (
                "%d Mbit" % rate if rate else "veth", workload, ", ".join(gain)))
        print()


def run(a):
    if os.getuid() != 0:
        print("compress rows: need root (network namespaces, tc)", file=sys.stderr)
        return ["compress: not root"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    size = int(os.environ.get("BENCH_COMPRESS_MIB", "64")) * MIB
    rates = [int(x) for x in os.environ.get("BENCH_COMPRESS_RATES", "0,1000,100,20").split(",")]
    work = "/dev/shm/mitoz-%d" % os.getpid()
    os.mkdir(work, 0o755)
    link = Link()
    b = None
    failures = []
    out = open(a.json, "a") if a.json else None
    try:
        files = {"text": os.path.join(work, "text.log"), "random": os.path.join(work, "random.bin")}
        log_text(files["text"], size)
        with open(files["random"], "wb") as f:
            f.write(random.Random(18).randbytes(size))
        for p in files.values():
            os.chmod(p, 0o644)
        link.up()
        # In the master's namespace before any tool runs: nothing reaches
        # the host's network, not even a probe.
        link.enter()
        b = Bench(a, work, link)
        b.start_sshd(root)
        tools = b.tools()
        # BENCH_COMPRESS_TOOLS: only the tools whose names start with one of these (e.g. "mito ,ssh host").
        if os.environ.get("BENCH_COMPRESS_TOOLS"):
            keep = os.environ["BENCH_COMPRESS_TOOLS"].split(",")
            tools = [t for t in tools if any(t[0].startswith(k) for k in keep)]
        # BENCH_COMPRESS_DATA: "text", "random" or both (the default).
        wanted = os.environ.get("BENCH_COMPRESS_DATA", "text,random").split(",")
        print("rsync -z negotiates: %s; login user %s; machine: %s" % (
            b.rsync_choice(files["text"]), b.user, os.getloadavg()), file=sys.stderr)
        # First runs, not timed: the agent reaches the target's cache.
        for tool in tools:
            if tool[0].startswith("mito "):
                b.run_once(tool, files["text"])
        results = {}
        for rate in rates:
            link.rate(rate)
            for workload, src in files.items():
                if workload not in wanted or (workload == "random" and rate and rate < 100):
                    continue
                res = results.setdefault((rate, workload), {(t[0], t[1]): [] for t in tools})
                for r in range(a.rounds):
                    # Alternate, and start each round one tool further on.
                    order = tools[r % len(tools):] + tools[:r % len(tools)]
                    for tool in order:
                        try:
                            res[(tool[0], tool[1])].append(b.run_once(tool, src))
                        except Exception as e:  # a failed tool is a failed row, reported
                            failures.append("compress %s %s %s: %s" % (rate, workload, tool[0], e))
                            print("compress: %s" % failures[-1], file=sys.stderr)
                print("  done: %s, %s (load %.1f)" % ("%d Mbit/s" % rate if rate else "veth", workload,
                                                     os.getloadavg()[0]), file=sys.stderr)
        table(results, size, out)
    except Exception as e:
        failures.append("compress: %s" % e)
        print("compress rows failed: %s" % e, file=sys.stderr)
    finally:
        if b:
            b.stop_sshd()
        link.down()
        shutil.rmtree(work, ignore_errors=True)
        if out:
            out.close()
    return failures


def mitogen_put(host, user, sshd_dir, src, dst, compression):
    """Run by the venv's python in the master's namespace: a FileService put
    (the child pulls `src` into `dst`) over ssh with or without -C."""
    import mitogen.master
    import mitogen.service

    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    try:
        fs = mitogen.service.FileService(router)
        pool = mitogen.service.Pool(router, services=[fs])
        fs.register(src)
        c = router.ssh(hostname=host, port=22, username=user, identity_file=os.path.join(sshd_dir, "id_ed25519"),
                       check_host_keys="enforce", compression=compression == "yes", python_path=["/usr/bin/python3"],
                       ssh_args=["-F", "/dev/null", "-o", "UserKnownHostsFile=" + os.path.join(sshd_dir, "known_hosts"),
                                 "-o", "IdentitiesOnly=yes", "-c", CIPHER])
        size = c.call(fetch, router.myself(), src, dst)
        if size != os.path.getsize(src):
            raise RuntimeError("FileService moved %s bytes" % size)
        pool.stop()
    finally:
        broker.shutdown()
        broker.join()


def fetch(parent, path, dest):
    """In mitogen's child: pull `path` from the master's FileService into `dest`."""
    import mitogen.service

    with open(dest, "wb") as fp:
        ok, _ = mitogen.service.FileService.get(parent, path, fp)
    return os.path.getsize(dest) if ok else -1


def main():
    if len(sys.argv) == 8 and sys.argv[1] == "--mitogen-put":
        mitogen_put(*sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mito-cli", required=True)
    p.add_argument("--python", help="the bench venv's python with mitogen (no mitogen rows without it)")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_COMPRESS_ROUNDS", "3")))
    p.add_argument("--json")
    a = p.parse_args()
    return 1 if run(a) else 0


if __name__ == "__main__":
    sys.exit(main())
