"""The fleet rows of scripts/bench (opt-in: BENCH_FLEET=1; issue 17,
"Numbers"): `mito run` on an Ansible inventory of 50 loopback-ssh hosts
beside `xargs -P 50 ssh` (the floor) and Ansible (ansible-core from PyPI,
installed into the bench venv on first use), seconds per run.

- fleet_true: one `true` on every host. mito cold (`--no-control-master`:
  50 handshakes), mito warm (shared connections already up), `xargs -P 50
  ssh HOST true` (same key, port and options), `ansible all -f 50 -m
  command -a true` starting with no shared connections (cold) and again
  with them up (warm).
- fleet_10step: 10 commands on every host from no connection at all.
  mito library: examples/bench_fleet.rs, 50 `Router::ssh` contexts at once
  and 10 `exec`s on each over its one connection (what "10 steps over one
  connection per host" means; the ratios of this row are to it). mito run
  x10: `mito run` 10 times with sharing on (the first run opens one ssh
  connection per host, the nine others open sessions over it; each run is
  a new mito process and agent, as an operator's ten commands are), beside
  the same as a 10-task `ansible-playbook -f 50` (gather_facts off), and
  with mitogen's strategy (`ansible_mitogen`, mitogen_linear) when it loads.
- fleet_put8get: the issue's other 10-step run, a put of a 1 MiB file, 8
  commands and a get of the file back, over one connection per host:
  examples/bench_fleet.rs `put8get` (the ratios are to it) beside a
  playbook of copy, 8 command and fetch tasks, and ansible_mitogen. Each
  run starts with no copy on the hosts and none fetched (both tools skip
  an unchanged file).

The login user: BENCH_FLEET_USER, else mito-user when the bench runs as
root and scripts/test-become made that user, else BENCH_SSH's. Not root by
default, because this VM's root ~/.bashrc runs `pyenv init` (~80 ms of CPU
per ssh session: bash reads ~/.bashrc for every command sshd starts), which
made every column measure pyenv, not the tools (mito warm on 50 hosts:
4.1 s as root, 0.38 s as mito-user, same binary).

The 50 hosts are inventory aliases h01..h50 of the one private sshd of
scripts/test-sshd on 127.0.0.1 (BENCH_SSH: port, directory, user; its config
has MaxStartups/MaxSessions 200). Each alias has its own ControlPath, so
nothing is shared between "hosts": ssh's %C hashes the real host, port and
user, which the 50 aliases have in common. Every ssh master started here is
stopped with `ssh -O exit` on its socket.

Standalone: BENCH_SSH="PORT DIR USER" python3 scripts/bench_fleet.py
    --mito-cli target/release/mito --python target/bench-venv/bin/python [--rounds N]
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HOSTS = ["h%02d" % i for i in range(1, 51)]
STEPS = ["true", "uname -n", "id -un", "pwd", "date", "uptime", "ls /", "cat /etc/hostname", "echo step9", "true"]


def fleet_user(env, override="BENCH_FLEET_USER"):
    """The login user of the fleet rows (see the module doc); bench_sync.py
    picks its own the same way, with its own override variable."""
    if env.get(override):
        return env[override]
    return mito_user_if_root(env["BENCH_SSH"].split()[2])


def mito_user_if_root(otherwise):
    """mito-user when running as root and scripts/test-become made that user
    (its shell is /bin/sh: no ~/.bashrc work per login), else `otherwise`."""
    import pwd
    if os.getuid() == 0:
        try:
            pwd.getpwnam("mito-user")
            return "mito-user"
        except KeyError:
            pass
    return otherwise


class Fleet:
    def __init__(self, env, mito_cli, python):
        port, sshd_dir, _ = env["BENCH_SSH"].split()
        user = fleet_user(env)
        self.env = dict(env, BENCH_FLEET_USER=user, ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_NOCOLOR="1", NO_COLOR="1",
                        ANSIBLE_RETRY_FILES_ENABLED="False", ANSIBLE_DEPRECATION_WARNINGS="False")
        self.mito = mito_cli
        self.library_detail = []  # (slowest connect, slowest 10 steps) per library run
        self.bin = os.path.dirname(python)
        self.python = python
        self.dir = tempfile.mkdtemp(prefix="fleet.", dir=env.get("BENCH_DIR"))
        self.cp = os.path.join(self.dir, "cp")
        os.mkdir(self.cp, 0o700)
        self.env["ANSIBLE_LOCAL_TEMP"] = os.path.join(self.dir, "ansible-tmp")
        key = os.path.join(sshd_dir, "id_ed25519")
        kh = os.path.join(sshd_dir, "known_hosts")
        self.port, self.user, self.key, self.kh = port, user, key, kh
        base = "ansible_host=127.0.0.1 ansible_port=%s ansible_user=%s ansible_ssh_private_key_file=%s" % (port, user, key)
        common = "-o UserKnownHostsFile=%s -o IdentitiesOnly=yes -o Compression=no" % kh

        def write(name, line):
            path = os.path.join(self.dir, name)
            with open(path, "w") as f:
                f.write("[fleet]\n" + "".join(line(h) + "\n" for h in HOSTS))
            return path
        # mito, not shared: every connect its own handshake.
        self.inv_cold = write("cold.ini", lambda h: "%s %s ansible_ssh_common_args='%s'" % (h, base, common))
        # mito, shared: the host's own socket (the user's ControlPath wins over mito's %C).
        self.inv_shared = write("shared.ini", lambda h: "%s %s ansible_ssh_common_args='%s -o ControlMaster=auto -o ControlPath=%s -o ControlPersist=60s'"
                                % (h, base, common, self.sock("m", h)))
        # Ansible: its default ssh_args (-C, ControlMaster=auto, ControlPersist=60s) plus a ControlPath of the alias.
        self.inv_ansible = write("ansible.ini", lambda h: "%s %s ansible_python_interpreter=/usr/bin/python3 ansible_ssh_common_args='%s' "
                                 "ansible_ssh_args='-C -o ControlMaster=auto -o ControlPersist=60s -o ControlPath=%s'"
                                 % (h, base, common, self.sock("a", h)))
        self.playbook = os.path.join(self.dir, "10step.yml")
        with open(self.playbook, "w") as f:
            f.write("- hosts: all\n  gather_facts: false\n  tasks:\n")
            for i, s in enumerate(STEPS):
                f.write("    - name: step %d\n      command: \"%s\"\n" % (i + 1, s))
        # put + 8 commands + get: the file, and the playbook of copy, command x8, fetch.
        self.put_file = os.path.join(self.dir, "put1m")
        with open(self.put_file, "wb") as f:
            f.write(os.urandom(1 << 20))
        os.chmod(self.dir, 0o755)
        os.chmod(self.put_file, 0o644)
        self.fetched = os.path.join(self.dir, "fetched")
        self.playbook_put = os.path.join(self.dir, "put8get.yml")
        with open(self.playbook_put, "w") as f:
            f.write("- hosts: all\n  gather_facts: false\n  tasks:\n")
            f.write("    - name: put\n      copy:\n        src: %s\n        dest: /tmp/bench-fleet-ans.{{ inventory_hostname }}\n" % self.put_file)
            for i, s in enumerate(STEPS[1:9]):
                f.write("    - name: step %d\n      command: \"%s\"\n" % (i + 1, s))
            f.write("    - name: get\n      fetch:\n        src: /tmp/bench-fleet-ans.{{ inventory_hostname }}\n        dest: %s/\n" % self.fetched)
        self.ssh_cmd = ["ssh", "-F", "/dev/null", "-T", "-p", port, "-l", user, "-i", key, "-o", "IdentitiesOnly=yes",
                        "-o", "UserKnownHostsFile=" + kh, "-o", "LogLevel=ERROR", "-o", "Compression=no", "-o", "BatchMode=yes"]

    def sock(self, side, host):
        return os.path.join(self.cp, side + "-" + host)

    def close_masters(self):
        """Stops every ssh master of this bench by its socket (ssh -O exit)."""
        for name in os.listdir(self.cp):
            path = os.path.join(self.cp, name)
            subprocess.run(["ssh", "-F", "/dev/null", "-o", "ControlPath=" + path, "-O", "exit", "127.0.0.1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        for _ in range(100):
            if not os.listdir(self.cp):
                return
            time.sleep(0.05)
        for name in os.listdir(self.cp):  # a socket no master answers on
            os.unlink(os.path.join(self.cp, name))

    def timed(self, cmd, **kw):
        t = time.perf_counter()
        out = subprocess.run(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900, **kw)
        dt = time.perf_counter() - t
        if out.returncode != 0:
            raise RuntimeError("%s exited %d: %s" % (" ".join(cmd[:4]), out.returncode,
                                                    (out.stderr or out.stdout).decode(errors="replace")[-400:]))
        return dt

    def mito_run(self, inv, *args):
        return self.timed([self.mito, "-i", inv] + list(args))

    def xargs_true(self):
        return self.timed(["xargs", "-P", "50", "-I{}"] + self.ssh_cmd + ["127.0.0.1", "true"],
                          input="".join(h + "\n" for h in HOSTS).encode())

    def ansible_true(self):
        return self.timed([os.path.join(self.bin, "ansible"), "all", "-i", self.inv_ansible, "-f", "50", "-m", "command", "-a", "true"])

    def clean_put(self):
        """No copy on the hosts, none fetched: each put8get run sends and gets everything."""
        import glob
        for p in glob.glob("/tmp/bench-fleet-ans.*") + glob.glob("/tmp/bench-fleet-put.*"):
            os.unlink(p)
        shutil.rmtree(self.fetched, ignore_errors=True)

    def playbook_run(self, strategy=None, playbook=None):
        env = None
        if strategy:
            env = dict(self.env, ANSIBLE_STRATEGY="mitogen_linear", ANSIBLE_STRATEGY_PLUGINS=strategy)
        cmd = [os.path.join(self.bin, "ansible-playbook"), "-i", self.inv_ansible, "-f", "50", playbook or self.playbook]
        if env is None:
            return self.timed(cmd)
        saved, self.env = self.env, env
        try:
            return self.timed(cmd)
        finally:
            self.env = saved

    def library_10step(self, exe, *mode):
        """examples/bench_fleet.rs: 50 contexts over ssh, 10 execs (or `put8get FILE`) each over its connection."""
        import json
        out = subprocess.run([exe, str(len(HOSTS)), str(len(STEPS))] + list(mode), env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=900)
        if out.returncode != 0:
            raise RuntimeError("bench_fleet exited %d: %s" % (out.returncode, out.stderr.decode(errors="replace")[-400:]))
        r = json.loads(out.stdout.decode().strip().splitlines()[-1])
        self.library_detail.append((r["connect_max"], r["steps_max"]))
        return r["values"][0]

    def mito_10step(self):
        t = 0.0
        for s in STEPS:
            t += self.mito_run(self.inv_shared, "run", "all", "--", *s.split())
        return t


def library_binary(env):
    """examples/bench_fleet.rs (release), built on first use."""
    import json
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["cargo", "build", "--release", "--example", "bench_fleet", "--message-format=json-render-diagnostics"],
                         cwd=root, env=env, stdout=subprocess.PIPE, check=True, timeout=1800)
    for line in out.stdout.decode().splitlines():
        m = json.loads(line)
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "bench_fleet":
            return m["executable"]
    raise RuntimeError("cargo did not report examples/bench_fleet")


def ensure_ansible(python):
    """ansible-core in the bench venv (pip, first use). Returns an error string or None."""
    b = os.path.dirname(python)
    if os.path.exists(os.path.join(b, "ansible-playbook")):
        return None
    out = subprocess.run([os.path.join(b, "pip"), "install", "-q", "ansible-core"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if out.returncode != 0 or not os.path.exists(os.path.join(b, "ansible-playbook")):
        return "pip install ansible-core failed: " + out.stdout.decode(errors="replace")[-300:]
    return None


def mitogen_strategy(python):
    out = subprocess.run([python, "-c", "import ansible_mitogen.plugins.strategy as s, os; print(os.path.dirname(s.__file__))"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return out.stdout.decode().strip() if out.returncode == 0 else None


def version(python, dist):
    out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version(%r))" % dist], stdout=subprocess.PIPE)
    return out.stdout.decode().strip() or "?"


def run(env, mito_cli, python, only, rounds, out=None):
    """Runs the fleet rows, prints their table; returns a list of failures."""
    import json
    want = [w for w in ("fleet_true", "fleet_10step", "fleet_put8get") if not only or w in only]
    if not want:
        return []
    if not env.get("BENCH_SSH"):
        print("\nfleet rows: n/a (BENCH_SSH unset: no sshd)")
        return []
    err = ensure_ansible(python)
    f = Fleet(env, mito_cli, python)
    cols = {}  # (workload, column) -> [seconds]
    notes, failures = [], []
    if err:
        notes.append(err)

    def add(w, col, fn):
        try:
            v = fn()
            cols.setdefault((w, col), []).append(v)
        except Exception as e:  # report, never fake a figure
            failures.append("%s %s: %s" % (w, col, str(e).strip().splitlines()[-1] if str(e).strip() else e))
    strategy = mitogen_strategy(python)
    lib = None
    if "fleet_10step" in want or "fleet_put8get" in want:
        try:
            lib = library_binary(env)
        except Exception as e:
            failures.append("mito library (examples/bench_fleet.rs): build: %s" % e)
    try:
        for _ in range(rounds):
            if "fleet_true" in want:
                f.close_masters()
                add("fleet_true", "xargs -P 50 ssh", f.xargs_true)
                add("fleet_true", "mito cold", lambda: f.mito_run(f.inv_cold, "--no-control-master", "run", "all", "--", "true"))
                f.mito_run(f.inv_shared, "run", "all", "--", "true")  # opens the shared connections
                add("fleet_true", "mito warm", lambda: f.mito_run(f.inv_shared, "run", "all", "--", "true"))
                if not err:
                    add("fleet_true", "ansible cold", f.ansible_true)
                    add("fleet_true", "ansible warm", f.ansible_true)
                f.close_masters()
            if "fleet_10step" in want:
                f.close_masters()
                if lib:
                    add("fleet_10step", "mito library", lambda: f.library_10step(lib))
                add("fleet_10step", "mito run x10", f.mito_10step)
                f.close_masters()
                if not err:
                    add("fleet_10step", "ansible-playbook", f.playbook_run)
                    f.close_masters()
                    if strategy:
                        add("fleet_10step", "ansible_mitogen", lambda: f.playbook_run(strategy))
                        f.close_masters()
            if "fleet_put8get" in want:
                f.close_masters()
                f.clean_put()
                if lib:
                    add("fleet_put8get", "mito library", lambda: f.library_10step(lib, "put8get", f.put_file))
                f.clean_put()
                if not err:
                    add("fleet_put8get", "ansible-playbook", lambda: f.playbook_run(playbook=f.playbook_put))
                    f.close_masters()
                    f.clean_put()
                    if strategy:
                        add("fleet_put8get", "ansible_mitogen", lambda: f.playbook_run(strategy, f.playbook_put))
                        f.close_masters()
                        f.clean_put()
    finally:
        f.close_masters()
        f.clean_put()
        shutil.rmtree(f.dir, ignore_errors=True)
    print("\nfleet: 50 loopback-ssh hosts (login user %s), seconds, median (best) of %d rounds; ansible-core %s, mitogen %s"
          % (f.user, rounds, version(python, "ansible-core"), version(python, "mitogen")))
    for w in want:
        floor = {"fleet_true": "xargs -P 50 ssh", "fleet_10step": "mito library", "fleet_put8get": "mito library"}[w]
        for (ww, col), v in cols.items():
            if ww != w:
                continue
            med = statistics.median(v)
            ref = cols.get((w, floor))
            rel = "  %.2fx %s's" % (med / statistics.median(ref), floor) if ref and col != floor else ""
            print("%-14s %-18s %8.2f s (%.2f)%s" % (w, col, med, min(v), rel))
            if out:
                out.write(json.dumps({"workload": w, "column": col, "unit": "s", "median": med, "best": min(v),
                                      "time": int(time.time())}) + "\n")
    if f.library_detail:
        notes.append("mito library: slowest connect %s s, slowest 10 steps %s s" % (
            ", ".join("%.2f" % c for c, _ in f.library_detail), ", ".join("%.2f" % x for _, x in f.library_detail)))
    if "fleet_10step" in want and not strategy:
        notes.append("ansible_mitogen: not importable from the bench venv")
    for n in notes:
        print("  note: " + n)
    for x in failures:
        print("  failed: " + x)
    return failures


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--mito-cli", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--only")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    failures = run(dict(os.environ), os.path.abspath(a.mito_cli), a.python, set(a.only.split(",")) if a.only else None, a.rounds)
    for x in failures:
        print("failed: " + x, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
