//! The container rows of scripts/bench (opt-in: root, and podman for
//! `podman_connect`; `BENCH_CONTAINERS=1`).
//!
//! `bench_containers WORKLOAD N` prints one JSON line for scripts/bench.py:
//!
//! - `setns_connect`: ms for `router.setns(pid)` + a first call (`info`)
//!   into a container made by `scripts/test-container` (new mount, pid,
//!   uts, ipc, net namespaces around a root holding one static binary),
//!   N times with one warm router.
//! - `podman_connect`: ms for `router.engine(podman)` + `info` into a real
//!   podman container (an image imported from a tarball: a static busybox
//!   and the sleeper; private `CONTAINERS_CONF`, `--network none`, as
//!   tests/engines.rs makes it), N times; baseline: `podman exec CT true`.
//! - `containers_hop`: ms to start 20 setns contexts behind one local hop
//!   (20 containers, one host) and call each once; `containers_hop_bytes`:
//!   KiB the master sent the hop meanwhile (`hop.bytes_sent()`: the hop
//!   starts its own executable, so no agent crosses that link).
//!
//! Containers and images it makes are removed by name before it exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod bench_common;

use bench_common::{ms, wchar};
use mito::{Engine, EngineOptions, LocalOptions, Router, SetnsOptions};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Res<Scratch> {
        let base = std::env::var_os("BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("bench-ct-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A container of scripts/test-container, stopped when dropped.
struct TestContainer {
    pid: u32,
}

impl TestContainer {
    fn start(root: &Path, hostname: &str) -> Res<TestContainer> {
        std::fs::create_dir_all(root)?;
        let out =
            Command::new(manifest().join("scripts/test-container")).arg("start").arg(root).arg(hostname).output()?;
        if !out.status.success() {
            return Err(format!("test-container: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        Ok(TestContainer { pid })
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = Command::new(manifest().join("scripts/test-container")).arg("stop").arg(self.pid.to_string()).status();
    }
}

fn local(cache: &Path) -> LocalOptions {
    LocalOptions { env: vec![("XDG_CACHE_HOME".into(), cache.as_os_str().to_owned())], ..LocalOptions::default() }
}

fn setns_connect(n: usize) -> Res<(Vec<f64>, Vec<f64>)> {
    let dir = Scratch::new("setns")?;
    let root = dir.0.join("rootfs");
    let ct = TestContainer::start(&root, "bench-ct")?;
    let router = Router::new()?;
    let mut values = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let ctx = router.setns(SetnsOptions::new(ct.pid))?;
        ctx.info()?;
        values.push(ms(t0.elapsed()));
        ctx.shutdown();
    }
    Ok((values, Vec::new()))
}

/// Podman with the settings of tests/engines.rs; what it made is removed
/// by name when dropped.
struct Podman {
    wrapper: PathBuf,
    name: String,
    image: String,
}

impl Podman {
    fn run(&self, args: &[&str]) -> Res<String> {
        let o = Command::new(&self.wrapper).args(args).output()?;
        if !o.status.success() {
            return Err(format!("podman {args:?}: {}", String::from_utf8_lossy(&o.stderr)).into());
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// An image of a static busybox (`/bin/sh`, `true`) and the sleeper,
    /// imported from a tarball, and a container of it running the sleeper.
    fn start(dir: &Path) -> Res<Podman> {
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1000:1000\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n",
        )?;
        let wrapper = dir.join("podman");
        std::fs::write(&wrapper, format!("#!/bin/sh\nCONTAINERS_CONF='{}' exec podman \"$@\"\n", conf.display()))?;
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let root = dir.join("rootfs");
        // The sleeper, built by scripts/test-container (then stopped).
        drop(TestContainer::start(&root, "bench-build")?);
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(root.join("tmp"))?;
        let bb =
            ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists()).ok_or("no busybox")?;
        std::fs::copy(bb, bin.join("busybox"))?;
        for applet in ["sh", "true", "cat", "rm", "chmod", "mkdir", "exec"] {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        let tar = dir.join("image.tar");
        let st = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status()?;
        if !st.success() {
            return Err("tar".into());
        }
        let tag = format!("mito-bench-{}", std::process::id());
        let pm = Podman { wrapper, name: tag.clone(), image: format!("localhost/{tag}:1") };
        pm.run(&["import", "-q", &tar.to_string_lossy(), &pm.image])?;
        pm.run(&["run", "-d", "--network", "none", "--name", &pm.name, &pm.image, "/sleeper"])?;
        Ok(pm)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new(&self.wrapper).args(["rm", "-f", "-t", "0", &self.name]).output();
        let _ = Command::new(&self.wrapper).args(["rmi", "-f", &self.image]).output();
    }
}

fn podman_connect(n: usize) -> Res<(Vec<f64>, Vec<f64>)> {
    let dir = Scratch::new("podman")?;
    let pm = Podman::start(&dir.0)?;
    let router = Router::new()?;
    let mut opts = EngineOptions::new(Engine::Podman, &pm.name);
    opts.tool_path = Some(pm.wrapper.clone());
    let (mut values, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..n {
        // Alternating, so that both see the same load.
        let t0 = Instant::now();
        let ctx = router.engine(opts.clone())?;
        ctx.info()?;
        values.push(ms(t0.elapsed()));
        ctx.shutdown();
        let t0 = Instant::now();
        pm.run(&["exec", &pm.name, "true"])?;
        baseline.push(ms(t0.elapsed()));
    }
    Ok((values, baseline))
}

/// Containers behind one hop: (ms to connect all and call each, KiB the
/// master sent the hop meanwhile) per round.
fn containers_hop(n: usize, count: usize) -> Res<(Vec<f64>, Vec<f64>)> {
    let dir = Scratch::new("hop")?;
    let mut cts = Vec::new();
    for i in 0..count {
        cts.push(TestContainer::start(&dir.0.join(format!("ct{i}")), &format!("bench-ct{i}"))?);
    }
    let router = Router::new()?;
    let (mut times, mut kib) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let hop = router.local(local(&dir.0.join("cache")))?;
        hop.info()?;
        let (b0, w0) = (hop.bytes_sent(), wchar());
        let t0 = Instant::now();
        let mut ctxs = Vec::new();
        for ct in &cts {
            ctxs.push(hop.setns(SetnsOptions::new(ct.pid))?);
        }
        for c in &ctxs {
            c.info()?;
        }
        times.push(ms(t0.elapsed()));
        kib.push((hop.bytes_sent() - b0) as f64 / 1024.0);
        // mitogen's row counts all the master wrote: the same measure here,
        // on stderr, for a like-for-like look.
        eprintln!("master wchar meanwhile: {:.1} KiB", (wchar() - w0) as f64 / 1024.0);
        drop(ctxs);
        hop.shutdown();
    }
    Ok((times, kib))
}

fn main() -> Res<()> {
    let workload = std::env::args().nth(1).unwrap_or_default();
    let n: usize = std::env::args().nth(2).unwrap_or_else(|| "1".into()).parse()?;
    let (unit, values, baseline) = match workload.as_str() {
        "setns_connect" => {
            let (v, b) = setns_connect(n)?;
            ("ms", v, b)
        }
        "podman_connect" => {
            let (v, b) = podman_connect(n)?;
            ("ms", v, b)
        }
        "containers_hop" => ("ms", containers_hop(n, 20)?.0, Vec::new()),
        "containers_hop_bytes" => ("KiB", containers_hop(n, 20)?.1, Vec::new()),
        w => return Err(format!("unknown workload {w:?}").into()),
    };
    println!("{}", serde_json::json!({"unit": unit, "values": values, "baseline": baseline}));
    Ok(())
}
