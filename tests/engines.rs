//! The container engines' CLIs as methods (`docker:NAME`, `podman:NAME`,
//! `nerdctl:NAME`, `kubectl:NS/POD/CT`, `lxc:NAME`, `incus:NAME`).
//!
//! - **podman for real** (Debian's 4.3 with runc, rootful, a private
//!   `CONTAINERS_CONF` with the settings this machine kind needs): images
//!   imported from tarballs built here (a static sleeper; plus a static
//!   busybox for the shell path), the shell-less path (cp + direct start)
//!   and the shell path, behind a hop, a stopped and an unknown container,
//!   the CLI with `-v`. Containers and images are removed by name at the
//!   end, failure or not.
//! - **the docker client for real** (where it is installed; no daemon
//!   runs here): its "cannot connect" and, through a `sudo:nobody` hop,
//!   its "permission denied" on a root-only socket.
//! - **a shim** (`tests/engine-shim/engine`, under each tool's name) for the
//!   engines that cannot run here: real namespaces made by
//!   `scripts/test-container` (one with a static busybox, one with nothing
//!   but a static sleeper), entered with nsenter, and each tool's error
//!   words; plus hostile output (escape sequences, a password prompt, MiBs
//!   of text).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{is_root, skip_loudly, TempDir};
use mito::{ConnectError, Context, Engine, EngineFailure, EngineOptions, LocalOptions, Router, SudoOptions, Upload};

const TOOLS: [Engine; 6] =
    [Engine::Docker, Engine::Podman, Engine::Nerdctl, Engine::Kubectl, Engine::Lxc, Engine::Incus];

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A static busybox (Debian's `busybox-static`), for an image with a shell.
fn static_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"].into_iter().map(PathBuf::from).find(|p| {
        // A dynamic one names its loader (PT_INTERP); it would not run in
        // an image without libc.
        std::fs::read(p).is_ok_and(|b| !b.windows(7).any(|w| w == b"/lib64/" || w == b"ld-musl"))
    })
}

/// A root filesystem in `root`: the sleeper (scripts/test-container builds
/// it when missing), `/tmp`, and with `shell` a static busybox as `/bin/sh`
/// and its other applets.
fn make_rootfs(root: &Path, shell: bool) {
    std::fs::create_dir_all(root.join("tmp")).expect("rootfs");
    if shell {
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        let bb = static_busybox().expect("a static busybox (busybox-static)");
        std::fs::copy(&bb, bin.join("busybox")).expect("copy busybox");
        let list = Command::new(&bb).arg("--list").output().expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        // stage0 redirects to /dev/null; an engine mounts a /dev, the
        // shim's plain namespaces have none.
        std::fs::create_dir_all(root.join("dev")).expect("dev");
        let st = Command::new("mknod").arg("-m").arg("666").arg(root.join("dev/null")).args(["c", "1", "3"]).status();
        assert!(st.is_ok_and(|s| s.success()), "mknod dev/null");
    }
}

/// Builds the sleeper into `root` (as scripts/test-container does).
fn build_sleeper(root: &Path) {
    let target = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    let st = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args([
            "--edition",
            "2021",
            "--target",
            &target,
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .arg("-o")
        .arg(root.join("sleeper"))
        .arg(manifest().join("examples/sleeper.rs"))
        .status()
        .expect("rustc");
    assert!(st.success(), "building the sleeper");
}

fn names(ctx: &Context, path: &str) -> Vec<String> {
    ctx.list_dir(path).expect("list_dir").iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect()
}

fn failure_of(r: Result<Context, ConnectError>) -> (EngineFailure, String) {
    match r {
        Err(e @ ConnectError::Engine { .. }) => {
            let text = e.to_string();
            let ConnectError::Engine { failure, container, .. } = e else { unreachable!() };
            assert!(text.contains(&format!("{container:?}")), "the error names the container: {text}");
            (failure, text)
        }
        Err(e) => panic!("expected an engine failure, got {e:?}"),
        Ok(c) => panic!("expected an engine failure, connected {}", c.name()),
    }
}

// ---------------------------------------------------------------- podman

/// Podman with this machine's settings, and what the test made with it:
/// removed by name on drop (containers first, then images).
struct Podman {
    dir: TempDir,
    /// A wrapper that runs podman with the private CONTAINERS_CONF.
    wrapper: PathBuf,
    tag: String,
    containers: Vec<String>,
    images: Vec<String>,
}

impl Podman {
    fn new() -> Podman {
        let dir = TempDir::new("podman");
        let conf = dir.path().join("containers.conf");
        // runc and cgroupfs (crun refuses this machine's hybrid cgroups),
        // limits root may set here (no CAP_SYS_RESOURCE).
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1000:1000\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n",
        )
        .expect("containers.conf");
        let wrapper = dir.path().join("podman");
        std::fs::write(&wrapper, format!("#!/bin/sh\nCONTAINERS_CONF='{}' exec podman \"$@\"\n", conf.display()))
            .expect("wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let tag = format!("mito-test-{}", std::process::id());
        Podman { dir, wrapper, tag, containers: Vec::new(), images: Vec::new() }
    }

    fn podman(&self, args: &[&str]) -> String {
        let o = Command::new(&self.wrapper).args(args).output().expect("podman");
        assert!(o.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Imports `root` as image `<tag>-<kind>`.
    fn import(&mut self, root: &Path, kind: &str) -> String {
        let image = format!("localhost/{}-{kind}:1", self.tag);
        let tar = self.dir.path().join(format!("{kind}.tar"));
        let st = Command::new("tar").arg("-C").arg(root).arg("-cf").arg(&tar).arg(".").status().expect("tar");
        assert!(st.success());
        self.images.push(image.clone());
        self.podman(&["import", "-q", &tar.to_string_lossy(), &image]);
        image
    }

    /// A container of `image` running the sleeper (`run -d`), or only
    /// created (never started).
    fn container(&mut self, image: &str, kind: &str, start: bool) -> String {
        let name = format!("{}-{kind}", self.tag);
        self.containers.push(name.clone());
        let verb = if start { ["run", "-d"].as_slice() } else { ["create"].as_slice() };
        let mut args = verb.to_vec();
        // No network: nothing here needs one, and no bridge, netavark or
        // iptables need to work on the test machine.
        args.extend(["--network", "none", "--name", &name, image, "/sleeper"]);
        self.podman(&args);
        name
    }

    fn opts(&self, name: &str) -> EngineOptions {
        let mut o = EngineOptions::new(Engine::Podman, name);
        o.tool_path = Some(self.wrapper.clone());
        o.connect_timeout = Duration::from_secs(20);
        o
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new(&self.wrapper).args(["rm", "-f", "-t", "0", c]).output();
        }
        for i in &self.images {
            let _ = Command::new(&self.wrapper).args(["rmi", "-f", i]).output();
        }
    }
}

#[test]
fn podman_for_real() {
    if !is_root() || Command::new("podman").arg("--version").output().is_err() {
        skip_loudly("podman_for_real", "needs root and podman, runc (apt-get install podman runc uidmap)");
        return;
    }
    let mut pm = Podman::new();
    let noshell_root = pm.dir.path().join("noshell");
    let shell_root = pm.dir.path().join("shell");
    for (root, shell) in [(&noshell_root, false), (&shell_root, true)] {
        make_rootfs(root, shell);
        build_sleeper(root);
    }
    let noshell_image = pm.import(&noshell_root, "noshell");
    let shell_image = pm.import(&shell_root, "shell");
    let bare = pm.container(&noshell_image, "bare", true);
    let sh = pm.container(&shell_image, "sh", true);
    let stopped = pm.container(&noshell_image, "stopped", false);
    let router = Router::new().expect("router");

    // No shell: the agent is copied in and started directly.
    let t0 = Instant::now();
    let ctx = router.engine(pm.opts(&bare)).expect("podman: a container without a shell");
    let info = ctx.info().expect("info");
    let first = t0.elapsed();
    assert_eq!(ctx.connect_info().upload, Upload::Direct);
    assert_eq!(info.uid, 0);
    let root = names(&ctx, "/");
    assert!(root.contains(&"sleeper".to_string()) && !root.contains(&"bin".to_string()), "{root:?}");
    // The copy is removed once the agent runs: nothing is left inside.
    assert!(names(&ctx, "/tmp").is_empty(), "{:?}", names(&ctx, "/tmp"));
    ctx.write_file("/tmp/written", b"from mito", None).expect("write_file");
    // Behind a hop: the hop runs podman, and copies its own executable.
    let hop = router.local(LocalOptions::default()).expect("local");
    let inner = hop.engine(pm.opts(&bare)).expect("podman behind a hop");
    assert_eq!(inner.connect_info().upload, Upload::Direct);
    assert_eq!(inner.read_file("/tmp/written").expect("read"), b"from mito");
    assert_eq!(inner.info().expect("info").hostname, info.hostname);
    assert!(inner.name().ends_with(&format!(",podman:{bare}")), "{}", inner.name());

    // A shell: stage0, as everywhere else; commands run inside.
    let t0 = Instant::now();
    let shell = router.engine(pm.opts(&sh)).expect("podman: a container with a shell");
    shell.ping().expect("ping");
    let shell_first = t0.elapsed();
    assert_ne!(shell.connect_info().upload, Upload::Direct);
    let out = shell.exec(&["sh", "-c", "echo $((6 * 7)); ls /bin/sh"]).expect("exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n/bin/sh\n");
    let t0 = Instant::now();
    pm.podman(&["exec", &sh, "true"]);
    let plain = t0.elapsed();
    eprintln!(
        "podman: no shell connect + info {first:?}; shell connect + ping {shell_first:?}; `podman exec CT true` {plain:?}"
    );

    // Typed errors, each at once.
    let t0 = Instant::now();
    let (f, e) = failure_of(router.engine(pm.opts(&stopped)));
    assert_eq!(f, EngineFailure::NotRunning, "{e}");
    let (f, e) = failure_of(router.engine(pm.opts("mito-test-no-such-container")));
    assert_eq!(f, EngineFailure::NotFound, "{e}");
    let (f, e) = failure_of(hop.engine(pm.opts("mito-test-no-such-container")));
    assert_eq!(f, EngineFailure::NotFound, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    // The CLI, with -v saying which path was taken.
    let conf = pm.dir.path().join("containers.conf");
    for (target, path) in
        [(bare.clone(), "no shell in the image"), (format!("local,podman:{sh}"), "through podman exec and sh")]
    {
        let target = if target.contains(':') { target } else { format!("podman:{target}") };
        let o = Command::new(env!("CARGO_BIN_EXE_mito"))
            .args(["-v", "info", &target])
            .env("CONTAINERS_CONF", &conf)
            .output()
            .expect("mito");
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{target}: {err}");
        assert!(out.contains(&format!("context:   {target}")), "{out}");
        assert!(err.contains(path), "{target}: {err}");
    }
    drop((inner, shell, ctx, hop, router));
}

// ------------------------------------------------------------ the shim

/// A "container" of real namespaces (scripts/test-container), killed on drop.
struct Namespaces {
    pid: u32,
    root: PathBuf,
    _dir: TempDir,
}

impl Namespaces {
    fn start(tag: &str, hostname: &str, shell: bool) -> Namespaces {
        let dir = TempDir::new(tag);
        let root = dir.path().join("rootfs");
        make_rootfs(&root, shell);
        let out = Command::new(manifest().join("scripts/test-container"))
            .arg("start")
            .arg(&root)
            .arg(hostname)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("scripts/test-container");
        assert!(out.status.success(), "scripts/test-container start failed");
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a pid");
        Namespaces { pid, root, _dir: dir }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = Command::new(manifest().join("scripts/test-container")).arg("stop").arg(self.pid.to_string()).status();
        let _ = common::wait_reaped(self.pid, Duration::from_secs(5));
    }
}

/// The shim under every tool's name in `bin/`, its state in `state/`.
struct Shim {
    dir: TempDir,
}

impl Shim {
    fn new() -> Shim {
        let dir = TempDir::new("shim");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::create_dir_all(dir.path().join("state/containers")).expect("state");
        for t in TOOLS {
            std::os::unix::fs::symlink(manifest().join("tests/engine-shim/engine"), bin.join(t.name())).expect("link");
        }
        Shim { dir }
    }

    fn add(&self, name: &str, pid: u32) {
        std::fs::write(self.dir.path().join("state/containers").join(name), pid.to_string()).expect("container");
    }

    fn mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("state/mode"), mode).expect("mode");
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// Options for `name` (kubectl: a pod in namespace `ns1`, container
    /// `app`), the tool being the shim.
    fn opts(&self, engine: Engine, name: &str) -> EngineOptions {
        let mut o = match engine {
            Engine::Kubectl => EngineOptions::kubectl(&format!("ns1/{name}/app")).expect("kubectl form"),
            _ => EngineOptions::new(engine, name),
        };
        o.tool_path = Some(self.bin().join(engine.name()));
        o.connect_timeout = Duration::from_secs(15);
        o
    }
}

fn root_or_skip(test: &str) -> bool {
    if !is_root() {
        skip_loudly(test, "the shim enters namespaces (nsenter) as root");
        return false;
    }
    if static_busybox().is_none() {
        skip_loudly(test, "needs a static busybox (apt-get install busybox-static) for the image with a shell");
        return false;
    }
    true
}

#[test]
fn shim_every_tool_through_sh_and_without_a_shell() {
    if !root_or_skip("shim_every_tool_through_sh_and_without_a_shell") {
        return;
    }
    let with_sh = Namespaces::start("eng-sh", "mito-eng-sh", true);
    let bare = Namespaces::start("eng-bare", "mito-eng-bare", false);
    let shim = Shim::new();
    shim.add("web", with_sh.pid);
    shim.add("bare", bare.pid);
    let router = Router::new().expect("router");
    for t in TOOLS {
        let ctx = router.engine(shim.opts(t, "web")).unwrap_or_else(|e| panic!("{t:?} with sh: {e}"));
        assert_eq!(ctx.info().expect("info").hostname, "mito-eng-sh", "{t:?}");
        assert_ne!(ctx.connect_info().upload, Upload::Direct, "{t:?}: stage0 ran");
        let out = ctx.exec(&["echo", "inside"]).expect("exec");
        assert_eq!(out.stdout, b"inside\n");
        drop(ctx);
        let r = router.engine(shim.opts(t, "bare"));
        if t.can_copy() {
            let ctx = r.unwrap_or_else(|e| panic!("{t:?} without sh: {e}"));
            assert_eq!(ctx.connect_info().upload, Upload::Direct, "{t:?}");
            assert_eq!(ctx.info().expect("info").hostname, "mito-eng-bare");
            assert!(ctx.connect_info().exe.starts_with("/tmp/mito-agent-"), "{t:?}: copied in");
            assert_eq!(std::fs::read_dir(bare.root.join("tmp")).expect("tmp").count(), 0, "{t:?}: and removed");
        } else {
            // kubectl cp needs tar inside: no way in, said so.
            let (f, e) = failure_of(r);
            assert_eq!(f, EngineFailure::NoShell, "{t:?}: {e}");
            assert!(e.contains("kubectl container \"ns1/bare/app\""), "{e}");
        }
    }
    // The argument forms reached the tools as each expects them.
    let calls = std::fs::read_to_string(shim.dir.path().join("state/calls")).expect("calls");
    assert!(calls.contains("kubectl exec -i -n ns1 web -c app -- sh -c "), "{calls}");
    assert!(calls.contains("lxc exec -T web -- sh -c "), "{calls}");
    assert!(calls
        .lines()
        .any(|l| l.starts_with("incus file push --mode 0755 ") && l.contains(" bare/tmp/mito-agent-")));
    assert!(calls.lines().any(|l| l.starts_with("docker cp ") && l.contains(" bare:/tmp/mito-agent-")));
}

#[test]
fn shim_behind_a_hop_and_from_the_cli() {
    if !root_or_skip("shim_behind_a_hop_and_from_the_cli") {
        return;
    }
    let with_sh = Namespaces::start("eng-hop-sh", "mito-eng-hop-sh", true);
    let bare = Namespaces::start("eng-hop-bare", "mito-eng-hop-bare", false);
    let shim = Shim::new();
    shim.add("web", with_sh.pid);
    shim.add("bare", bare.pid);
    let router = Router::new().expect("router");
    let hop = router.local(LocalOptions::default()).expect("local");
    for (name, host, direct) in [("web", "mito-eng-hop-sh", false), ("bare", "mito-eng-hop-bare", true)] {
        let ctx = hop.engine(shim.opts(Engine::Docker, name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ctx.info().expect("info").hostname, host);
        assert_eq!(ctx.connect_info().upload == Upload::Direct, direct, "{name}");
        // Behind a hop nothing of the agent crosses the first link: the
        // hop sends (or copies) its own executable.
        assert_eq!(ctx.connect_info().agent_bytes_sent, 0, "{name}");
    }
    // A user inside: behind a hop the copy is of a 0755 file made from the
    // hop's own (which is 0700), removed after.
    let mut as_user = shim.opts(Engine::Podman, "bare");
    as_user.user = Some("0".into());
    let ctx = hop.engine(as_user).expect("podman -u behind a hop");
    assert_eq!(ctx.connect_info().upload, Upload::Direct);
    let calls = std::fs::read_to_string(shim.dir.path().join("state/calls")).expect("calls");
    let cp = calls.lines().rfind(|l| l.starts_with("podman cp ")).expect("a copy");
    let source = cp.split(' ').nth(2).expect("its source");
    assert!(source.ends_with("/mito-agent") && !Path::new(source).exists(), "{cp}");
    drop(ctx);
    let (f, _) = failure_of(hop.engine(shim.opts(Engine::Lxc, "nothere")));
    assert_eq!(f, EngineFailure::NotFound);
    let mut missing = shim.opts(Engine::Docker, "web");
    missing.tool_path = Some("/nonexistent/docker".into());
    let (f, _) = failure_of(hop.engine(missing));
    assert_eq!(f, EngineFailure::ToolMissing);

    // The CLI: the shim first in PATH; -v names the path taken.
    let path = format!("{}:{}", shim.bin().display(), std::env::var("PATH").unwrap_or_default());
    let mito = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_mito")).args(args).env("PATH", &path).output();
    for (target, host, says) in [
        ("docker:bare", "mito-eng-hop-bare", "no shell in the image: copying the agent in (docker)"),
        ("local,kubectl:ns1/web/app", "mito-eng-hop-sh", "through kubectl exec and sh"),
        ("incus:bare", "mito-eng-hop-bare", "started directly from /tmp/mito-agent-"),
    ] {
        let o = mito(&["-v", "info", target]).expect("mito");
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{target}: {err}");
        assert!(out.contains(&format!("host:      {host}")), "{target}: {out}");
        assert!(err.contains(says), "{target}: {err}");
    }
    let o = mito(&["info", "kubectl:ns1/bare/app"]).expect("mito");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("has no shell (sh), and this tool cannot copy"), "{err}");
    let o = mito(&["info", "lxc:"]).expect("mito");
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected lxc:CONTAINER"));
}

#[test]
fn shim_errors_are_typed_for_every_tool() {
    if !is_root() {
        skip_loudly("shim_errors_are_typed_for_every_tool", "the shim's state is made as root");
        return;
    }
    let shim = Shim::new();
    shim.add("stopped", 0);
    let router = Router::new().expect("router");
    let t0 = Instant::now();
    for t in TOOLS {
        let (f, e) = failure_of(router.engine(shim.opts(t, "nothere")));
        assert_eq!(f, EngineFailure::NotFound, "{t:?}: {e}");
        let (f, e) = failure_of(router.engine(shim.opts(t, "stopped")));
        assert_eq!(f, EngineFailure::NotRunning, "{t:?}: {e}");
        let mut o = shim.opts(t, "stopped");
        o.tool_path = Some(shim.dir.path().join("missing").join(t.name()));
        let (f, e) = failure_of(router.engine(o));
        assert_eq!(f, EngineFailure::ToolMissing, "{t:?}: {e}");
    }
    shim.mode("denied");
    for t in TOOLS {
        let (f, e) = failure_of(router.engine(shim.opts(t, "stopped")));
        assert_eq!(f, EngineFailure::PermissionDenied, "{t:?}: {e}");
    }
    shim.mode("down");
    for t in [Engine::Docker, Engine::Kubectl] {
        let (f, e) = failure_of(router.engine(shim.opts(t, "stopped")));
        assert_eq!(f, EngineFailure::Unreachable, "{t:?}: {e}");
    }
    let mut o = shim.opts(Engine::Kubectl, "stopped");
    o.user = Some("app".into());
    assert!(matches!(router.engine(o), Err(ConnectError::Unsupported { .. })));
    assert!(t0.elapsed() < Duration::from_secs(20), "every failure at once: {:?}", t0.elapsed());
}

#[test]
fn hostile_tool_output_is_escaped_and_never_answered() {
    if !is_root() {
        skip_loudly("hostile_tool_output_is_escaped_and_never_answered", "the shim's state is made as root");
        return;
    }
    let shim = Shim::new();
    shim.add("web", 1);
    let router = Router::new().expect("router");
    shim.mode("hostile");
    let mut o = shim.opts(Engine::Docker, "web");
    o.connect_timeout = Duration::from_secs(2);
    let t0 = Instant::now();
    let e = router.engine(o).expect_err("a fake prompt is no connection");
    let took = t0.elapsed();
    let text = e.to_string();
    assert!(matches!(e, ConnectError::Timeout { .. }), "{e:?}");
    assert!(took < Duration::from_secs(5), "within the connect timeout (and the 1 s drain): {took:?}");
    assert!(!text.contains('\x1b') && !text.contains('\x07') && !text.contains('\x01'), "{text:?}");
    assert!(text.contains("\\u{1b}]0;owned") && text.contains("Password:"), "{text}");
    assert!(!shim.dir.path().join("state/answered").exists(), "nothing was typed into the fake prompt");

    shim.mode("huge");
    let t0 = Instant::now();
    let e = router.engine(shim.opts(Engine::Podman, "web")).expect_err("MiBs of text are no agent");
    let text = e.to_string();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(text.len() < 4096, "the error is cut: {} bytes", text.len());
    assert!(text.contains("more than 1 MiB of text") || text.contains("more characters"), "{text}");
}

/// Docker's own client (28.2 here; no daemon runs on this machine): its
/// words for a daemon that is down, and, as a user who may not open the
/// socket (`sudo:nobody` as a hop), for a refused socket.
#[test]
fn docker_client_for_real() {
    if Command::new("docker").arg("--version").output().is_err() {
        // .ci/run installs docker.io where the machine has no client.
        skip_loudly("docker_client_for_real", "no docker client here (apt-get install docker.io)");
        return;
    }
    if !is_root() || Command::new("sudo").arg("--version").output().is_err() {
        skip_loudly("docker_client_for_real", "needs root and sudo (the permission check runs as nobody)");
        return;
    }
    let dir = TempDir::new("docker");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = dir.path().join("docker.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let router = Router::new().expect("router");
    let with_host = |host: String| {
        let mut o = EngineOptions::new(Engine::Docker, "web");
        o.extra_args = vec!["-H".into(), host];
        o.connect_timeout = Duration::from_secs(15);
        o
    };
    let (f, e) = failure_of(router.engine(with_host(format!("unix://{}/absent.sock", dir.path().display()))));
    assert_eq!(f, EngineFailure::Unreachable, "{e}");
    let nobody = router.sudo(SudoOptions::new("nobody")).expect("sudo:nobody");
    let (f, e) = failure_of(nobody.engine(with_host(format!("unix://{}", sock.display()))));
    assert_eq!(f, EngineFailure::PermissionDenied, "{e}");
    assert!(e.starts_with("sudo:nobody,docker:web: docker container \"web\": permission denied"), "{e}");
}
