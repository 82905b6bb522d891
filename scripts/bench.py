"""Orchestrates scripts/bench: runs each workload for mito and for Python
mitogen, alternating, several rounds, and prints one table (median and best
of each, and the ratio: how many times better mito is). Also writes JSON
lines with --json PATH. Started by scripts/bench, which builds, makes the
venv and the private sshd."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MITOGEN_TREE = "a Python interpreter of ~20 MB per context: ~20 GB for 1,000"

# name, label, mito has it, mitogen has it (or the reason it does not), higher is better
WORKLOADS = [
    ("local_warm", "local connect + first call (warm)", True, True, False),
    ("local_cold_cache", "local connect + first call, empty agent cache", True, "no agent cache to be empty", False),
    ("cold_process", "whole process: start, connect, call, exit", True, True, False),
    ("rtt_local", "no-op round trip, local", True, True, False),
    ("pipelined", "pipelined no-op calls, 10k in flight", True, True, True),
    ("bulk_local", "bulk 64 MiB as one call result, local", True, True, True),
    ("stream_local", "bulk 256 MiB streamed (mito: exec cat)", True, "FileService needs a service pool; not wired here", True),
    ("exec_true", "exec `true`, warm local context", True, True, False),
    ("put_local", "put 1 GiB file, local (mitogen: FileService)", True, True, True),
    ("get_local", "get 1 GiB file, local", True, "no get in FileService (it serves master files to children)", True),
    ("hash_xxh3", "hash 1 GiB here, per CPU second: XXH3-128 (put/get's digest)", True, "FileService checks nothing", True),
    ("hash_agent", "the agent hashes 1 GiB (file_hash, XXH3-128, size-built code)", True, "FileService checks nothing", False),
    ("reput_local", "re-put of an unchanged 1 GiB file, local", True, "FileService sends it again", False),
    ("via_connect", "local via a local hop: connect + first call (warm)", True, True, False),
    ("rtt_via", "no-op round trip via one local hop", True, True, False),
    ("putmany_via", "64 MiB put to 4 contexts behind one hop (delivered)", True, "PushFileService needs a service pool in every hop; not wired here", True),
    ("fanout", "50 local contexts + one call each (sequential)", True, True, False),
    ("fanout_threads", "50 local contexts + one call each (10 threads)", True, True, False),
    ("facts", "facts (host inventory), local", True, "no facts call without Ansible's setup module", False),
    ("rss", "idle agent/child RSS after one call", True, True, False),
    ("ssh_connect", "ssh connect + first call", True, True, False),
    ("rtt_ssh", "no-op round trip over ssh", True, True, False),
    ("bulk_ssh", "bulk 64 MiB over ssh (call result)", True, True, True),
    ("put_ssh", "put 1 GiB file over ssh (mitogen: FileService)", True, True, True),
    ("get_ssh", "get 1 GiB file over ssh", True, "no get in FileService (it serves master files to children)", True),
    ("reput_ssh", "re-put of an unchanged 1 GiB file over ssh", True, "FileService sends it again", False),
    ("sudo_connect", "sudo connect + first call (root -> test user)", True, True, False),
    ("bytes_first", "bytes written by the master: first connect", True, True, False),
    ("bytes_repeat", "bytes written by the master: repeat connect", True, True, False),
    ("userfn_local", "user function, 1 KiB argument: round trip, local", True, True, False),
    ("userfn_hop", "user function, 1 KiB argument: round trip via a hop", True, True, False),
    ("import_hop", "first use of 1 MiB by 10 contexts behind a hop (mitogen: a 1 MiB module)", True, True, False),
    ("import_hop_bytes", "  ... bytes on the first link (mitogen: master's wchar)", True, True, False),
    ("put_hop", "put 5 MiB to 10 contexts behind a hop, one by one (mitogen: FileService)", True, True, False),
    ("put_hop_bytes", "  ... bytes on the first link (mitogen: master's wchar)", True, True, False),
    # BENCH_TREE=HxC (e.g. 100x100: 10,100 local contexts; opt-in, too heavy for CI): examples/bench_tree.rs;
    # tree_direct_*: BENCH_TREE_DIRECT (default 1000) direct local contexts. Not for mitogen: each of its
    # contexts is a Python interpreter of ~20 MB RSS (measured here: 20.7 MB, 135 ms a connect), so 1,000
    # would take ~20 GB and the 100x100 tree ~200 GB.
    ("tree_connect", "tree of H local hops x C children: connect all", True, MITOGEN_TREE, False),
    ("tree_broadcast", "  ... info to every leaf, one broadcast (call_many)", True, MITOGEN_TREE, False),
    ("tree_call", "  ... info to every leaf, one call each, sent then gathered", True, MITOGEN_TREE, False),
    ("tree_rss", "  ... master RSS per context", True, MITOGEN_TREE, False),
    ("tree_direct_connect", "N direct local contexts: connect all", True, MITOGEN_TREE, False),
    ("tree_direct_broadcast", "  ... info to each, one broadcast (call_many)", True, MITOGEN_TREE, False),
    ("tree_direct_call", "  ... info to each, one call each, sent then gathered", True, MITOGEN_TREE, False),
    ("tree_direct_rss", "  ... master RSS per context", True, MITOGEN_TREE, False),
    # ... and at a size mitogen can afford (~2 GB of interpreters): 100 direct contexts, 16 connecting threads each
    ("tree_small_connect", "100 direct local contexts: connect all", True, True, False),
    ("tree_small_broadcast", "  ... a call to each, gathered (mito: call_many info; mitogen: call_async getpid + Select)", True, True, False),
    # BENCH_CONTAINERS=1 (opt-in: root; podman_connect also podman + runc): examples/bench_containers.rs
    # mitogen starts python inside: its containers hold the host's root (scripts/bench_mitogen_containers.py)
    ("setns_connect", "setns connect + first call (mito: nothing inside)", True, True, False),
    ("podman_connect", "podman exec connect + first call", True, True, False),
    ("containers_hop", "20 setns containers behind one local hop: connect + call", True, True, False),
    ("containers_hop_bytes", "  ... KiB on the first link (mitogen: master's wchar)", True, True, False),
]

# What the "... / plain ssh" row of a workload compares with (same options).
BASELINE = {
    "ssh_connect": "`ssh host true`",
    "rtt_ssh": "1-byte echo via `ssh host cat`",
    "bulk_ssh": "`ssh host cat FILE` (login incl.)",
    "put_ssh": "`ssh host cat FILE` (login incl.)",
    "get_ssh": "`ssh host cat FILE` (login incl.)",
    "hash_xxh3": "SHA-256 in the same loop",
    "reput_local": "hashing it once here (XXH3-128)",
    "hash_agent": "the same hash here",
    "reput_ssh": "hashing it once here (XXH3-128)",
    "podman_connect": "`podman exec CT true`",
}

ITER = {  # iterations per round: (quick, full)
    "local_warm": (10, 40), "local_cold_cache": (5, 20), "cold_process": (5, 15), "rtt_local": (5000, 20000),
    "pipelined": (2, 5), "bulk_local": (2, 5), "stream_local": (1, 3), "fanout": (1, 2), "fanout_threads": (1, 2),
    "rss": (1, 1), "facts": (20, 100), "ssh_connect": (3, 8), "rtt_ssh": (2000, 5000), "bulk_ssh": (2, 4), "sudo_connect": (5, 20),
    "bytes_first": (2, 3), "bytes_repeat": (2, 3), "exec_true": (200, 1000),
    "put_local": (1, 2), "get_local": (1, 2), "put_ssh": (1, 2), "get_ssh": (1, 2),
    "hash_xxh3": (1, 3), "hash_agent": (1, 3), "reput_local": (1, 3), "reput_ssh": (1, 3),
    "via_connect": (10, 40), "rtt_via": (3000, 10000), "putmany_via": (2, 5),
    "userfn_local": (5000, 20000), "userfn_hop": (3000, 10000),
    "import_hop": (2, 5), "import_hop_bytes": (1, 2), "put_hop": (2, 5), "put_hop_bytes": (1, 2),
    "tree_connect": (1, 1), "tree_broadcast": (1, 1), "tree_call": (1, 1), "tree_rss": (1, 1),
    "tree_direct_connect": (1, 1), "tree_direct_broadcast": (1, 1), "tree_direct_call": (1, 1), "tree_direct_rss": (1, 1),
    "tree_small_connect": (1, 1), "tree_small_broadcast": (1, 1),
    "setns_connect": (10, 40), "podman_connect": (3, 10), "containers_hop": (1, 3), "containers_hop_bytes": (1, 1),
}


def run(cmd, env):
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    if out.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd[:3]), out.stderr.decode(errors="replace")[-500:]))
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def cold_process(cmd, env, n):
    vals = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=60)
        vals.append((time.perf_counter() - t) * 1e3)
    return {"unit": "ms", "values": vals, "baseline": []}


def userfn_binaries(mito_cli, env, cache={}):
    """The mito side of the userfn rows, built on first use (other runs do
    not pay for it): examples/bench_userfn.rs as the master (release, host)
    and as the custom agent it uploads (`mito build-agent`, static musl).
    Returns (master executable, agent path)."""
    if not cache:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["cargo", "build", "--release", "--example", "bench_userfn",
                              "--message-format=json-render-diagnostics"],
                             cwd=root, env=env, stdout=subprocess.PIPE, check=True, timeout=1800)
        for line in out.stdout.decode().splitlines():
            m = json.loads(line)
            if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "bench_userfn":
                cache["master"] = m["executable"]
        out = subprocess.run([mito_cli, "build-agent", "--manifest-path", os.path.join(root, "Cargo.toml"),
                              "--example", "bench_userfn", "--no-default-features", "--features", "agent,std", "--json"],
                             cwd=root, env=env, stdout=subprocess.PIPE, check=True, timeout=1800)
        cache["agent"] = json.loads(out.stdout.decode())["path"]
        print("bench_userfn agent: %s" % out.stdout.decode().replace("\n", " "), file=sys.stderr)
    return cache["master"], cache["agent"]


def tree_binary(env, example="bench_tree", cache={}):
    """examples/<example>.rs (release; bench_tree by default), built on first use."""
    if example not in cache:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["cargo", "build", "--release", "--example", example,
                              "--message-format=json-render-diagnostics"],
                             cwd=root, env=env, stdout=subprocess.PIPE, check=True, timeout=1800)
        for line in out.stdout.decode().splitlines():
            m = json.loads(line)
            if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == example:
                cache[example] = m["executable"]
    return cache[example]


# The tree_small_* rows for mitogen: 100 local contexts connected from 16 threads, then five times a
# call to each, all sent then gathered (mitogen's own fan-out idiom), as bench_tree does for mito.
MITOGEN_SMALL = """
import json, os, sys, threading, time
import mitogen.master as m, mitogen.select
b = m.Broker(); r = m.Router(b); n = 100
ctxs, lock, left = [], threading.Lock(), [n]
def connect():
    while True:
        with lock:
            if left[0] == 0: return
            left[0] -= 1
        c = r.local()
        with lock: ctxs.append(c)
t = time.perf_counter(); ts = [threading.Thread(target=connect) for _ in range(16)]
for th in ts: th.start()
for th in ts: th.join()
connect_s = time.perf_counter() - t
calls = []
for _ in range(5):
    t = time.perf_counter(); sel = mitogen.select.Select([c.call_async(os.getpid) for c in ctxs], oneshot=False)
    pids = set(msg.unpickle() for _, msg in zip(ctxs, sel))
    assert len(pids) == n, len(pids)
    calls.append((time.perf_counter() - t) * 1e3)
b.shutdown(); b.join()
w = sys.argv[1]
print(json.dumps({"unit": "s" if w.endswith("connect") else "ms", "values": [connect_s] if w.endswith("connect") else calls, "baseline": []}))
"""

COLD_MITOGEN = ("import os,mitogen.master as m\n"
                "b=m.Broker();r=m.Router(b);c=r.local();c.call(os.getpid);b.shutdown();b.join()\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--only", help="comma-separated workload names")
    ap.add_argument("--mito", required=True, help="the mito bench binary")
    ap.add_argument("--mito-cli", required=True)
    ap.add_argument("--python", required=True, help="the venv python with mitogen")
    ap.add_argument("--mitogen-version", default="?")
    ap.add_argument("--rounds", type=int)
    a = ap.parse_args()
    rounds = a.rounds or (2 if a.quick else 3)
    only = set(a.only.split(",")) if a.only else None
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    rows = []
    failures = []  # a side that should have run and did not: the run fails
    for name, label, mito_ok, mitogen_ok, higher in WORKLOADS:
        if only and name not in only:
            continue
        n = ITER[name][0 if a.quick else 1]
        needs = {"ssh": "BENCH_SSH", "sudo": "BENCH_SUDO_USER", "tree": "BENCH_TREE",
                 "setns": "BENCH_CONTAINERS", "podman": "BENCH_CONTAINERS", "containers": "BENCH_CONTAINERS"}
        missing = [v for k, v in needs.items() if k in name.split("_") and not env.get(v)]
        if missing:
            rows.append((name, label, None, None, "n/a: not available (%s unset)" % missing[0]))
            continue
        res = {"mito": {"values": [], "baseline": []}, "mitogen": {"values": [], "baseline": []}}
        unit, err = "?", None
        for _ in range(rounds):
            for tool in ("mito", "mitogen"):
                if (tool == "mito" and mito_ok is not True) or (tool == "mitogen" and mitogen_ok is not True):
                    continue
                try:
                    if name == "cold_process":
                        cmd = [a.mito_cli, "ping", "local"] if tool == "mito" else [a.python, "-c", COLD_MITOGEN]
                        r = cold_process(cmd, env, n)
                    elif tool == "mito" and name.startswith("userfn_"):
                        master, agent = userfn_binaries(a.mito_cli, env)
                        r = run([master, name, str(n)], dict(env, BENCH_USERFN_AGENT=agent))
                    elif tool == "mito" and name.startswith("tree_small_"):
                        r = run([tree_binary(env), name.replace("tree_small_", "tree_direct_"), str(n)], dict(env, BENCH_TREE_DIRECT="100"))
                    elif name.startswith("tree_small_"):
                        r = run([a.python, "-c", MITOGEN_SMALL, name], env)
                    elif tool == "mito" and name.startswith("tree_"):
                        r = run([tree_binary(env), name, str(n)], env)
                    elif tool == "mito" and name in ("setns_connect", "podman_connect", "containers_hop", "containers_hop_bytes"):
                        r = run([tree_binary(env, "bench_containers"), name, str(n)], env)
                    elif tool == "mito":
                        r = run([a.mito, name, str(n)], env)
                    elif name in ("setns_connect", "podman_connect", "containers_hop", "containers_hop_bytes"):
                        r = run([a.python, os.path.join(here, "bench_mitogen_containers.py"), name, str(n)], env)
                    else:
                        r = run([a.python, os.path.join(here, "bench_mitogen.py"), name, str(n)], env)
                except Exception as e:  # report, never fake a figure
                    err = "%s: %s" % (tool, str(e).strip().splitlines()[-1] if str(e).strip() else e)
                    failures.append("%s (%s)" % (name, err))
                    continue
                unit = r["unit"]
                res[tool]["values"] += r["values"]
                res[tool]["baseline"] += r["baseline"]
        rows.append((name, label, unit, res, err if not isinstance(mitogen_ok, str) else err or "mitogen: n/a: " + mitogen_ok, higher))
    print("\nmito vs Python mitogen %s (same machine, same run, %d rounds alternating)\n" % (a.mitogen_version, rounds))
    print("%-48s %26s %26s %9s" % ("workload", "mito median (best)", "mitogen median (best)", "ratio"))
    out = open(a.json, "a") if a.json else None
    for row in rows:
        name, label = row[0], row[1]
        if row[3] is None:
            print("%-48s %s" % (label, row[4]))
            continue
        unit, res, note, higher = row[2], row[3], row[4], row[5]
        stats = {}
        for tool in ("mito", "mitogen"):
            v = res[tool]["values"]
            if v:
                stats[tool] = (statistics.median(v), max(v) if higher else min(v))
        def num(x):
            return "%.0f" % x if x >= 1000 else "%.3g" % x

        def cell(t):
            return "%s %s (%s)" % (num(stats[t][0]), unit, num(stats[t][1])) if t in stats else "n/a"
        ratio = ""
        if "mito" in stats and "mitogen" in stats and stats["mito"][0] > 0 and stats["mitogen"][0] > 0:
            r = stats["mito"][0] / stats["mitogen"][0] if higher else stats["mitogen"][0] / stats["mito"][0]
            ratio = "%.1fx" % r
        print("%-48s %26s %26s %9s%s" % (label, cell("mito"), cell("mitogen"), ratio, ("  [" + note + "]") if note else ""))
        extra = {}
        for tool in ("mito", "mitogen"):
            b = res[tool]["baseline"]
            if b and tool in stats:
                extra[tool + "_vs_plain_ssh"] = stats[tool][0] / statistics.median(b)
        if extra:
            what = BASELINE.get(name, "plain ssh")
            shown = ["%.2f" % extra[t + "_vs_plain_ssh"] if t + "_vs_plain_ssh" in extra else "-" for t in ("mito", "mitogen")]
            print("%-48s %26s %26s" % ("  ... / " + what, shown[0], shown[1]))
        if out:
            rec = {"workload": name, "label": label, "unit": unit, "time": int(time.time()), "mitogen_version": a.mitogen_version}
            for tool in stats:
                rec[tool + "_median"], rec[tool + "_best"] = stats[tool]
            rec.update(extra)
            if ratio:
                rec["ratio"] = float(ratio[:-1])
            if note:
                rec["note"] = note
            out.write(json.dumps(rec) + "\n")
    # BENCH_FLEET=1 (opt-in, minutes): fleet_true, fleet_10step on 50 ssh hosts vs xargs ssh, ansible (scripts/bench_fleet.py)
    if env.get("BENCH_FLEET"):
        import bench_fleet
        failures += bench_fleet.run(env, a.mito_cli, a.python, only, rounds, out)
    if out:
        out.close()
    if failures:
        print("\nbench: %d workload run(s) failed:\n  %s" % (len(failures), "\n  ".join(failures)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
