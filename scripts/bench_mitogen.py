"""The Python mitogen side of scripts/bench: same workloads as
examples/bench.rs, same output (one JSON line). Run with the venv's python:
    bench_mitogen.py WORKLOAD ITERATIONS
Environment as for the mito side (BENCH_DIR, BENCH_FILE, BENCH_SSH, BENCH_SUDO_USER).
Functions called in contexts are module-level so mitogen can ship them."""
import json
import os
import sys
import threading
import time

import mitogen.master
import mitogen.service
import mitogen.utils


def noop():
    return None


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def take(data):
    """The userfn rows' function: a 1 KiB bytes argument in, its length out
    (as mito's `bench.take` in examples/bench_userfn.rs)."""
    return len(data)


def getpid():
    return os.getpid()


def wchar():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def run_true():
    import subprocess
    return subprocess.call(["true"])


def fetch(parent, path, dest):
    """In the child: pull `path` from the master's FileService into `dest`."""
    with open(dest, "wb") as fp:
        ok, _ = mitogen.service.FileService.get(parent, path, fp)
    size = os.path.getsize(dest)
    os.unlink(dest)
    return size if ok else -1


def warm(path):
    # Read the source once first, as the mito side does: measure the
    # transfer, not a disk read of pages the host reclaimed.
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def ssh_kwargs():
    port, d, user = os.environ["BENCH_SSH"].split()
    return dict(
        hostname="127.0.0.1", port=int(port), username=user,
        identity_file=os.path.join(d, "id_ed25519"), check_host_keys="enforce",
        compression=False, python_path=["/usr/bin/python3"],
        ssh_args=["-F", "/dev/null", "-o", "UserKnownHostsFile=" + os.path.join(d, "known_hosts"),
                  "-o", "IdentitiesOnly=yes"],
    )


def rtt(ctx, n):
    for _ in range(1000):
        ctx.call(noop)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        ctx.call(noop)
        out.append((time.perf_counter() - t) * 1e6)
    return out


def userfn_rtt(ctx, n):
    arg = b"x" * 1024
    for _ in range(1000):
        ctx.call(take, arg)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        if ctx.call(take, arg) != 1024:
            raise RuntimeError("take did not see 1024 bytes")
        out.append((time.perf_counter() - t) * 1e6)
    return out


def big_module(n):
    """A new module of 1 MiB (a base64 string of random bytes, so about
    1 MiB of source) with a function that uses it, imported here so that
    mitogen's importer serves it; named for this process and `n`, so each
    round's module is new to every context and hop."""
    import base64
    import importlib
    d = os.path.join(os.environ["BENCH_DIR"], "mitogen-mods-%d" % os.getpid())
    os.makedirs(d, exist_ok=True)
    if d not in sys.path:
        sys.path.insert(0, d)
    name = "bigmod_%d_%d" % (os.getpid(), n)
    data = base64.b64encode(os.urandom(3 << 18)).decode()  # 1 MiB of text
    with open(os.path.join(d, name + ".py"), "w") as f:
        f.write("DATA = %r\n\n\ndef size():\n    return len(DATA)\n" % data)
    importlib.invalidate_caches()
    return importlib.import_module(name)


def main():
    workload, n = sys.argv[1], int(sys.argv[2])
    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    values, baseline, unit = [], [], "ms"
    try:
        if workload == "local_warm":
            router.local().shutdown(wait=True)
            for _ in range(n):
                t = time.perf_counter()
                c = router.local()
                c.call(noop)
                values.append((time.perf_counter() - t) * 1e3)
                c.shutdown(wait=True)
        elif workload == "rtt_local":
            values, unit = rtt(router.local(), n), "us"
        elif workload == "via_connect":
            hop = router.local()
            router.local(via=hop).shutdown(wait=True)
            for _ in range(n):
                t = time.perf_counter()
                c = router.local(via=hop)
                c.call(noop)
                values.append((time.perf_counter() - t) * 1e3)
                c.shutdown(wait=True)
        elif workload == "rtt_via":
            values, unit = rtt(router.local(via=router.local()), n), "us"
        elif workload == "userfn_local":
            values, unit = userfn_rtt(router.local(), n), "us"
        elif workload == "userfn_hop":
            values, unit = userfn_rtt(router.local(via=router.local()), n), "us"
        elif workload == "pipelined":
            c, unit = router.local(), "calls/s"
            for _ in range(n):
                t = time.perf_counter()
                recvs = [c.call_async(noop) for _ in range(10000)]
                for r in recvs:
                    r.get().unpickle()
                values.append(10000 / (time.perf_counter() - t))
        elif workload in ("bulk_local", "bulk_ssh"):
            c = router.ssh(**ssh_kwargs()) if workload == "bulk_ssh" else router.local()
            unit = "MB/s"
            for _ in range(n):
                t = time.perf_counter()
                data = c.call(read_file, os.environ["BENCH_FILE"])
                values.append(len(data) / 1e6 / (time.perf_counter() - t))
        elif workload == "exec_true":
            c = router.local()
            c.call(run_true)
            for _ in range(n):
                t = time.perf_counter()
                c.call(run_true)
                values.append((time.perf_counter() - t) * 1e3)
        elif workload in ("put_local", "put_ssh"):
            src = os.environ["BENCH_GIB"]
            fs = mitogen.service.FileService(router)
            pool = mitogen.service.Pool(router, services=[fs])
            fs.register(src)
            c = router.ssh(**ssh_kwargs()) if workload == "put_ssh" else router.local()
            unit = "MB/s"
            dest = "/dev/shm/mitogen-bench-%d-%s" % (os.getpid(), workload)
            try:
                for _ in range(n):
                    warm(src)
                    t = time.perf_counter()
                    size = c.call(fetch, router.myself(), src, dest)
                    if size != os.path.getsize(src):
                        raise RuntimeError("FileService moved %s bytes" % size)
                    values.append(size / 1e6 / (time.perf_counter() - t))
            finally:
                pool.stop()
        elif workload in ("import_hop", "import_hop_bytes"):
            # 10 contexts behind one hop; each round a new 1 MiB module,
            # used by all 10 at once (its function called): mitogen's hop
            # forwards it (and caches it for the others). Time, or bytes
            # the master wrote (its only stream is the hop's: the first link).
            hop = router.local()
            kids = [router.local(via=hop) for _ in range(10)]
            for c in kids:
                c.call(noop)
            for i in range(n):
                mod = big_module(i)
                w0, t = wchar(), time.perf_counter()
                recvs = [c.call_async(mod.size) for c in kids]
                for r in recvs:
                    if r.get().unpickle() != 1 << 20:
                        raise RuntimeError("the module's data is not 1 MiB")
                dt, wrote = time.perf_counter() - t, wchar() - w0
                values.append(dt * 1e3 if workload == "import_hop" else wrote / 1024.0)
            unit = "ms" if workload == "import_hop" else "KiB"
        elif workload in ("put_hop", "put_hop_bytes"):
            # The mito row's workload with FileService: each of 10 contexts
            # behind one hop pulls a new 5 MiB file from the master, one
            # after the other (the hop only routes: nothing is cached).
            fs = mitogen.service.FileService(router)
            pool = mitogen.service.Pool(router, services=[fs])
            hop = router.local()
            kids = [router.local(via=hop) for _ in range(10)]
            for c in kids:
                c.call(noop)
            try:
                for i in range(n):
                    src = os.path.join(os.environ["BENCH_DIR"], "mitogen-put-hop-%d-%d" % (os.getpid(), i))
                    with open(src, "wb") as f:
                        f.write(os.urandom(5 << 20))
                    fs.register(src)
                    w0, t = wchar(), time.perf_counter()
                    for k, c in enumerate(kids):
                        dest = "/dev/shm/mitogen-bench-%d-put-hop-%d" % (os.getpid(), k)
                        if c.call(fetch, router.myself(), src, dest) != 5 << 20:
                            raise RuntimeError("FileService did not move 5 MiB")
                    dt, wrote = time.perf_counter() - t, wchar() - w0
                    values.append(dt * 1e3 if workload == "put_hop" else wrote / 1024.0)
                    os.unlink(src)
            finally:
                pool.stop()
            unit = "ms" if workload == "put_hop" else "KiB"
        elif workload in ("fanout", "fanout_threads"):
            for _ in range(n):
                t = time.perf_counter()
                if workload == "fanout":
                    ctxs = [router.local() for _ in range(50)]
                else:
                    ctxs, lock = [], threading.Lock()

                    def five():
                        mine = [router.local() for _ in range(5)]
                        with lock:
                            ctxs.extend(mine)
                    ts = [threading.Thread(target=five) for _ in range(10)]
                    for th in ts:
                        th.start()
                    for th in ts:
                        th.join()
                for c in ctxs:
                    c.call(noop)
                values.append((time.perf_counter() - t) * 1e3)
                for c in ctxs:
                    c.shutdown(wait=True)
        elif workload == "rss":
            c = router.local()
            pid = c.call(getpid)
            time.sleep(0.2)
            values, unit = [rss_mib(pid)], "MiB"
        elif workload in ("bytes_first", "bytes_repeat"):
            unit = "KiB"
            for _ in range(n):
                w0 = wchar()
                c = router.local()
                c.call(noop)
                values.append((wchar() - w0) / 1024.0)
                c.shutdown(wait=True)
        elif workload == "ssh_connect":
            import subprocess
            kw = ssh_kwargs()
            router.ssh(**kw).shutdown(wait=True)
            for _ in range(n):
                t = time.perf_counter()
                subprocess.check_call(["ssh", "-T", "-p", str(kw["port"]), "-l", kw["username"], "-i", kw["identity_file"],
                                       "-o", "LogLevel=ERROR", "-o", "Compression=no", "-o", "BatchMode=yes"]
                                      + kw["ssh_args"] + ["127.0.0.1", "true"], stdin=subprocess.DEVNULL)
                baseline.append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                c = router.ssh(**kw)
                c.call(noop)
                values.append((time.perf_counter() - t) * 1e3)
                c.shutdown(wait=True)
        elif workload == "rtt_ssh":
            values, unit = rtt(router.ssh(**ssh_kwargs()), n), "us"
        elif workload == "sudo_connect":
            user = os.environ["BENCH_SUDO_USER"]
            router.sudo(username=user, python_path=["/usr/bin/python3"]).shutdown(wait=True)
            for _ in range(n):
                t = time.perf_counter()
                c = router.sudo(username=user, python_path=["/usr/bin/python3"])
                c.call(noop)
                values.append((time.perf_counter() - t) * 1e3)
                c.shutdown(wait=True)
        else:
            raise SystemExit("unknown workload " + workload)
    finally:
        broker.shutdown()
        broker.join()
    print(json.dumps({"unit": unit, "values": values, "baseline": baseline}))


if __name__ == "__main__":
    main()
