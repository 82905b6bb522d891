"""The sync rows of scripts/bench (opt-in: BENCH_SYNC=1; issue 18,
"Numbers"): `mito sync` beside `rsync -a`, both over the private loopback
sshd of scripts/test-sshd (BENCH_SSH: port, directory, user), both whole
commands (ssh handshake, start-up, the work), no shared ssh connection.

- sync_1block: a 100 MiB file of random bytes at the destination, the
  source the same but for 4 KiB overwritten in the middle (new mtime).
  Before each run the destination gets the old file back (not timed).
  Seconds per run, and the bytes each tool sent (mito's summary line:
  what the master wrote on the stream; rsync's `--stats` "Total bytes
  sent"), so both count payload before ssh's encryption.
- sync_tree_same: a tree of 10,000 small files (100 directories of 100,
  100 to 2,000 bytes) already at the destination: the time to find that
  nothing changed.
- *_warm: the same with a shared ssh connection already up (mito's own
  ControlMaster, `--control-persist`; rsync's ssh with ControlMaster=auto
  and a ControlPath of its own), so the handshake is out of both; the
  masters are stopped at the end (`mito ssh-close`, `ssh -O exit`).

The login user: BENCH_SYNC_USER, else mito-user when the bench runs as
root and scripts/test-become made that user (its shell is /bin/sh), else
BENCH_SSH's. Not root by default: this VM's root ~/.bashrc runs `pyenv
init` (~80 ms of CPU per ssh session), which both tools pay on every
login and which is neither's work. Both tools log in as the same user,
over the same sshd, with the same cipher (aes128-gcm, pinned) and no
compression. The destinations are in a directory that user owns.

mito's summary line also gives its own split: the sync's wall time in a
connected context (`, N s`: what `Context::sync` costs a library caller)
and of it the listing (`listing N s`); the rest of the command's time is
process start, the ssh connect and the agent's start.

mito and rsync alternate (A, B, A, B); medians. Standalone:
    BENCH_SSH="PORT DIR USER" python3 scripts/bench_sync.py --mito-cli target/release/mito [--rounds N]
        [--only tree|big] [--warm-only] [--mito-cli-b OTHER]
(--mito-cli-b: a second mito binary timed in the same rounds, A/B/rsync
alternating, to compare two builds on a shared machine.)
"""
import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20


def sync_user(env):
    """The login user of the sync rows (see the module doc): chosen as the
    fleet rows choose theirs."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_fleet import fleet_user

    return fleet_user(env, override="BENCH_SYNC_USER")


CIPHER = "aes128-gcm@openssh.com"


class Sync:
    def __init__(self, env, mito_cli, mito_cli_b=None):
        port, sshd_dir, _ = env["BENCH_SSH"].split()
        user = sync_user(env)
        key = os.path.join(sshd_dir, "id_ed25519")
        kh = os.path.join(sshd_dir, "known_hosts")
        self.env = env
        self.dir = tempfile.mkdtemp(prefix="sync.", dir=env.get("BENCH_DIR"))
        # The login user writes the destinations (in self.dst, its own).
        os.chmod(self.dir, 0o755)
        self.dst = os.path.join(self.dir, "dst")
        os.mkdir(self.dst, 0o755)
        if os.getuid() == 0:
            import pwd
            pw = pwd.getpwnam(user)
            os.chown(self.dst, pw.pw_uid, pw.pw_gid)
        self.host = "127.0.0.1"
        self.user = user
        self.port = port
        self.cli = {"mito": mito_cli, "mito_b": mito_cli_b}
        self.mito_base = [mito_cli, "-F", "/dev/null", "--private-key", key, "-o", "UserKnownHostsFile=" + kh,
                          "-o", "IdentitiesOnly=yes", "-o", "Compression=no", "-o", "Ciphers=" + CIPHER]
        self.cp_dir = os.path.join(self.dir, "cp")
        os.mkdir(self.cp_dir, 0o700)
        self.warm = False
        self.split = {}
        self.target = "ssh://%s@%s:%s" % (user, self.host, port)
        ssh = "ssh -F /dev/null -p %s -i %s -o UserKnownHostsFile=%s -o IdentitiesOnly=yes -o Compression=no -o BatchMode=yes -c %s" % (
            port, key, kh, CIPHER)
        self.rsync_ssh = ssh
        self.rs_sock = os.path.join(self.cp_dir, "rsync-%C")

    @property
    def mito(self):
        if self.warm:
            return self.mito_base + ["--control-path-dir", self.cp_dir, "--control-persist", "120"]
        return self.mito_base + ["--no-control-master"]

    @property
    def rsync(self):
        ssh = self.rsync_ssh
        if self.warm:
            ssh += " -o ControlMaster=auto -o ControlPersist=120 -o ControlPath=" + self.rs_sock
        return ["rsync", "-a", "--stats", "-e", ssh]

    def close_masters(self):
        subprocess.run(self.mito_base + ["--control-path-dir", self.cp_dir, "ssh-close", self.target],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        for name in os.listdir(self.cp_dir):
            subprocess.run(["ssh", "-F", "/dev/null", "-o", "ControlPath=" + os.path.join(self.cp_dir, name), "-O", "exit",
                            self.host], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def run(self, cmd):
        t = time.perf_counter()
        out = subprocess.run(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
        dt = time.perf_counter() - t
        if out.returncode != 0:
            raise RuntimeError("%s exited %d: %s" % (" ".join(cmd[:3]), out.returncode,
                                                    (out.stderr or out.stdout).decode(errors="replace")[-400:]))
        return dt, out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")

    def mito_sync(self, src, dst, recursive, tool="mito"):
        cmd = [self.cli[tool]] + self.mito[1:] + ["sync", "-q"] + (["-r"] if recursive else []) + [src, "%s:%s" % (self.target, dst)]
        dt, text = self.run(cmd)
        m = re.search(r"(\d+) bytes sent on the wire", text)
        # The library's share: the sync in the connected context, and of it the listing.
        lib = re.search(r"literal\), ([\d.]+) s", text)
        listed = re.search(r"listing ([\d.]+) s", text)
        self.split.setdefault(tool, []).append((dt, float(lib.group(1)) if lib else None, float(listed.group(1)) if listed else None))
        return dt, int(m.group(1)) if m else None

    def rsync_sync(self, src, dst, recursive):
        src = src + "/" if recursive else src
        dt, text = self.run(self.rsync + [src, "%s@%s:%s" % (self.user, self.host, dst + ("/" if recursive else ""))])
        m = re.search(r"Total bytes sent: ([\d,.]+)", text)
        return dt, int(re.sub(r"[,.]", "", m.group(1))) if m else None


def make_big(d):
    old = os.path.join(d, "old")
    new = os.path.join(d, "new")
    with open(old, "wb") as f:
        f.write(os.urandom(100 * MIB))
    shutil.copyfile(old, new)
    with open(new, "r+b") as f:
        f.seek(50 * MIB + 12345)
        f.write(os.urandom(4096))
    os.utime(old, (1_600_000_000, 1_600_000_000))
    os.utime(new, (1_600_000_100, 1_600_000_100))
    return old, new


def make_tree(d):
    rng = random.Random(18)
    src = os.path.join(d, "tree")
    for i in range(100):
        sub = os.path.join(src, "d%03d" % i)
        os.makedirs(sub)
        for j in range(100):
            with open(os.path.join(sub, "f%03d" % j), "wb") as f:
                f.write(rng.randbytes(rng.randint(100, 2000)))
    return src


def run(env, mito_cli, rounds, out=None, only=None, warm_only=False, mito_cli_b=None):
    """Runs both rows; prints them; returns the failures (a list)."""
    if not env.get("BENCH_SSH") or not shutil.which("rsync"):
        print("sync rows: need the test sshd (BENCH_SSH) and rsync (apt-get install -y rsync)", file=sys.stderr)
        return ["sync: no sshd or rsync"]
    s = Sync(env, mito_cli, mito_cli_b)
    failures = []
    try:
        for warm in (True,) if warm_only else (False, True):
            s.warm = warm
            failures += rows(s, rounds, out, only)
    except Exception as e:  # a failed tool is a failed row, reported, not a crash
        failures.append("sync: %s" % e)
        print("sync rows failed: %s" % e, file=sys.stderr)
    finally:
        s.close_masters()
        shutil.rmtree(s.dir, ignore_errors=True)
    return failures


def rows(s, rounds, out, only=None):
    failures = []
    suffix = ", warm" if s.warm else ""
    tag = "_warm" if s.warm else ""
    tools = ["mito", "rsync"] + (["mito_b"] if s.cli["mito_b"] else [])
    if only in (None, "big"):
        old, new = make_big(s.dir)
        dst = {t: os.path.join(s.dst, "big." + t) for t in tools}
        # First runs (not timed): the agent reaches the target's cache, rsync's dest exists.
        for tool in dst:
            shutil.copy2(old, dst[tool])
        for tool in tools:
            sync_with(s, tool)(old, dst[tool], False)
        times = {t: [] for t in tools}
        sent = {t: [] for t in tools}
        s.split = {}
        for _ in range(rounds):
            for tool in tools:
                shutil.copy2(old, dst[tool])
                subprocess.run(["sync"])
                dt, b = sync_with(s, tool)(new, dst[tool], False)
                if open(dst[tool], "rb").read() != open(new, "rb").read():
                    failures.append("sync_1block: %s left a different file" % tool)
                times[tool].append(dt)
                sent[tool].append(b)
        row("sync_1block" + tag, "sync 100 MiB, one 4 KiB block changed (ssh%s)" % suffix, times, sent, out)
        split(s.split)
        for p in list(dst.values()) + [old, new]:
            os.unlink(p)
    if only in (None, "tree"):
        tree = make_tree(s.dir)
        tdst = {t: os.path.join(s.dst, "tree." + t) for t in tools}
        for tool in tools:
            sync_with(s, tool)(tree, tdst[tool], True)
        times = {t: [] for t in tools}
        sent = {t: [] for t in tools}
        s.split = {}
        for _ in range(rounds):
            for tool in tools:
                dt, b = sync_with(s, tool)(tree, tdst[tool], True)
                times[tool].append(dt)
                sent[tool].append(b)
        row("sync_tree_same" + tag, "sync unchanged tree, 10,000 files (ssh%s)" % suffix, times, sent, out)
        split(s.split)
        shutil.rmtree(tree)
        for p in tdst.values():
            shutil.rmtree(p)
    return failures


def sync_with(s, tool):
    """The timed sync of one tool: rsync, mito or the second mito build."""
    if tool == "rsync":
        return s.rsync_sync
    return lambda src, dst, recursive: s.mito_sync(src, dst, recursive, tool)


def split(by_tool):
    """mito's medians (each mito build's): whole command, the sync in a
    connected context (the library's cost), of it the listing; command
    minus sync is process start + ssh connect + agent start."""
    for tool, runs in sorted(by_tool.items()):
        split_one(tool, runs)


def split_one(tool, runs):
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    total = med([t for t, _, _ in runs])
    lib = med([x for _, x, _ in runs if x is not None])
    listed = med([x for _, _, x in runs if x is not None])
    print("    %s split: command %.3f s = start+connect %.3f s + sync in a connected context %.3f s (listing %.3f s, "
          "compare+changes %.3f s)" % (tool, total, total - lib, lib, listed, lib - listed))


def row(name, label, times, sent, out):
    m = {t: statistics.median(v) for t, v in times.items()}
    b = {t: statistics.median([x for x in v if x is not None] or [0]) for t, v in sent.items()}
    ratio = m["mito"] / m["rsync"] if m["rsync"] else float("nan")
    print("%-48s mito %7.3f s (%d bytes sent)   rsync -a %7.3f s (%d bytes sent)   %.2fx rsync's time   runs: mito %s rsync %s"
          % (label, m["mito"], b["mito"], m["rsync"], b["rsync"], ratio,
             " ".join("%.3f" % x for x in times["mito"]), " ".join("%.3f" % x for x in times["rsync"])))
    if "mito_b" in m:
        print("%-48s mito B %7.3f s   %.2fx rsync's time, %.2fx mito A's   runs: %s"
              % ("", m["mito_b"], m["mito_b"] / m["rsync"], m["mito_b"] / m["mito"],
                 " ".join("%.3f" % x for x in times["mito_b"])))
    if out:
        import json
        out.write(json.dumps({"workload": name, "label": label, "unit": "s", "time": int(time.time()),
                              "mito_median": m["mito"], "rsync_median": m["rsync"], "ratio": ratio,
                              "mito_bytes_sent": b["mito"], "rsync_bytes_sent": b["rsync"]}) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mito-cli", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", choices=["tree", "big"], help="one workload only")
    p.add_argument("--warm-only", action="store_true", help="only the shared-connection rows")
    p.add_argument("--mito-cli-b", help="a second mito build timed in the same rounds (A/B)")
    a = p.parse_args()
    return 1 if run(dict(os.environ), a.mito_cli, a.rounds, only=a.only, warm_only=a.warm_only,
                    mito_cli_b=a.mito_cli_b) else 0


if __name__ == "__main__":
    sys.exit(main())
