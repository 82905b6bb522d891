"""The Python mitogen side of the container rows of scripts/bench
(examples/bench_containers.rs is mito's); same output (one JSON line):
    bench_mitogen_containers.py WORKLOAD ITERATIONS
Root only (BENCH_CONTAINERS=1 in scripts/bench.py).

mitogen's setns and podman methods start Python inside the container (setns:
/bin/sh and python after chrooting to the container's root; podman: `podman
exec -i CT python -c ...`), so mito's containers (one static binary; a
busybox image) cannot take them. Here the containers hold the host's root:
- setns_connect, containers_hop(_bytes): new mount, pid, uts, ipc and net
  namespaces around `sleep` with the host's root (unshare, a private /proc),
  resolved by mitogen's kind='docker' through a stand-in for `docker inspect`
  that prints the pid (mitogen parses `--format={{.State.Pid}}` output);
- podman_connect: a real podman container of the host's root through an
  overlay (`podman run --rootfs /:O`, private CONTAINERS_CONF, --network none),
  removed by name at the end; baseline: `podman exec CT true`.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import mitogen.master


def wchar():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def hostname():
    import socket
    return socket.gethostname()


class HostRootContainer(object):
    """`sleep` as pid 1 of new namespaces, the host's root as its root."""

    def __init__(self, name):
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--uts", "--ipc", "--net", "--fork", "sh", "-c",
             'hostname "$1" && mount -t proc proc /proc && exec sleep 100000', "sh", name],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = None
        for _ in range(200):
            try:
                with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                    kids = f.read().split()
            except OSError:
                kids = []
            if kids:
                self.pid = int(kids[0])
                # Its hostname is set before sleep runs: wait for the exec.
                with open("/proc/%d/comm" % self.pid) as f:
                    if f.read().strip() == "sleep":
                        return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("the container did not start")

    def stop(self):
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.kill()
        self.proc.wait()


def docker_shim(dir, pids):
    """A stand-in for `docker inspect --format={{.State.Pid}} NAME`."""
    path = os.path.join(dir, "docker")
    cases = "".join("%s) echo %d ;; " % (n, p) for n, p in pids.items())
    with open(path, "w") as f:
        f.write('#!/bin/sh\neval "n=\\${$#}"\ncase "$n" in %s*) exit 1 ;; esac\n' % cases)
    os.chmod(path, 0o755)
    return path


def main():
    workload, n = sys.argv[1], int(sys.argv[2])
    work = tempfile.mkdtemp(prefix="mitogen-ct-", dir=os.environ.get("BENCH_DIR"))
    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    cts, podman = [], None
    values, baseline, unit = [], [], "ms"
    try:
        if workload == "setns_connect":
            cts.append(HostRootContainer("bench-mg"))
            shim = docker_shim(work, {"bench-mg": cts[0].pid})
            for _ in range(n):
                t = time.perf_counter()
                c = router.setns(container="bench-mg", kind="docker", docker_path=shim,
                                 python_path=sys.executable)
                assert c.call(hostname) == "bench-mg"
                values.append((time.perf_counter() - t) * 1e3)
                c.shutdown(wait=True)
        elif workload in ("containers_hop", "containers_hop_bytes"):
            for i in range(20):
                cts.append(HostRootContainer("bench-mg%d" % i))
            shim = docker_shim(work, dict(("bench-mg%d" % i, ct.pid) for i, ct in enumerate(cts)))
            for _ in range(n):
                hop = router.local()
                hop.call(os.getpid)
                w0 = wchar()
                t = time.perf_counter()
                kids = [router.setns(via=hop, container="bench-mg%d" % i, kind="docker", docker_path=shim,
                                     python_path=sys.executable) for i in range(20)]
                for i, k in enumerate(kids):
                    assert k.call(hostname) == "bench-mg%d" % i
                if workload == "containers_hop":
                    values.append((time.perf_counter() - t) * 1e3)
                else:
                    unit = "KiB"
                    values.append((wchar() - w0) / 1024.0)
                for k in kids:
                    k.shutdown(wait=True)
                hop.shutdown(wait=True)
        elif workload == "podman_connect":
            conf = os.path.join(work, "containers.conf")
            with open(conf, "w") as f:
                f.write('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]\n'
                        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n')
            wrapper = os.path.join(work, "podman")
            with open(wrapper, "w") as f:
                f.write("#!/bin/sh\nCONTAINERS_CONF='%s' exec podman \"$@\"\n" % conf)
            os.chmod(wrapper, 0o755)
            podman = (wrapper, "mitogen-bench-%d" % os.getpid())
            subprocess.check_call([wrapper, "run", "-d", "--network", "none", "--name", podman[1],
                                   "--rootfs", "/:O", "sleep", "100000"], stdout=subprocess.DEVNULL)
            for _ in range(n):
                t = time.perf_counter()
                c = router.podman(container=podman[1], podman_path=wrapper, python_path="/usr/bin/python3")
                c.call(os.getpid)
                values.append((time.perf_counter() - t) * 1e3)
                c.shutdown(wait=True)
                t = time.perf_counter()
                subprocess.check_call([wrapper, "exec", podman[1], "true"])
                baseline.append((time.perf_counter() - t) * 1e3)
        else:
            raise SystemExit("unknown workload %r" % workload)
    finally:
        broker.shutdown()
        broker.join()
        for ct in cts:
            ct.stop()
        if podman:
            subprocess.call([podman[0], "rm", "-f", "-t", "0", podman[1]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"unit": unit, "values": values, "baseline": baseline}))


if __name__ == "__main__":
    main()
