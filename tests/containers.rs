//! The container methods against real namespaces: `setns` into a
//! "container" that `scripts/test-container` builds (new mount, pid, uts,
//! ipc and net namespaces around a root directory holding one static
//! binary: no shell, no libc), and `chroot` into a directory tree; each
//! directly and behind a hop, and their typed errors (no such process or
//! directory, not root). No command can run inside (there is nothing to
//! run), so the checks are built-in calls: info, facts, listings, files.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{is_root, skip_loudly, TempDir};
use mito::{ChrootOptions, ConnectError, Context, EnterFailure, Router, SetnsOptions};

/// A running test container: its sleeper's pid (pid 1 inside), killed on
/// drop (its namespaces and its private /proc mount go with it).
struct Container {
    pid: u32,
    root: PathBuf,
    _dir: TempDir,
    /// A cgroup made for it ([`Container::own_cgroup`]), removed on drop.
    cgroup: Option<PathBuf>,
}

impl Container {
    fn start(tag: &str, hostname: &str) -> Container {
        Container::start_with(tag, hostname, &[])
    }

    /// `extra`: `["userns"]` for a user namespace of its own.
    fn start_with(tag: &str, hostname: &str, extra: &[&str]) -> Container {
        let dir = TempDir::new(tag);
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(&root).expect("rootfs");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-container");
        let out = std::process::Command::new(script)
            .arg("start")
            .arg(&root)
            .arg(hostname)
            .args(extra)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/test-container");
        assert!(out.status.success(), "scripts/test-container start failed");
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the script prints a pid");
        Container { pid, root, _dir: dir, cgroup: None }
    }

    /// Moves the container into a cgroup of its own (v1 `pids`, else the
    /// v2 root's child), as engines do; its path in `/proc/PID/cgroup`, or
    /// None where cgroupfs cannot be changed here (read-only).
    fn own_cgroup(&mut self) -> Option<String> {
        let name = format!("mito-test-ct-{}", self.pid);
        let base = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|b| b.join("cgroup.procs").exists())?;
        let dir = base.join(&name);
        std::fs::create_dir(&dir).ok()?;
        self.cgroup = Some(dir.clone());
        std::fs::write(dir.join("cgroup.procs"), self.pid.to_string()).ok()?;
        Some(format!("/{name}"))
    }

    /// The names in the container's root, as the host sees them.
    fn host_listing(&self) -> BTreeSet<String> {
        std::fs::read_dir(&self.root)
            .expect("read rootfs")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-container"))
            .arg("stop")
            .arg(self.pid.to_string())
            .status();
        let _ = common::wait_reaped(self.pid, Duration::from_secs(5));
        if let Some(dir) = &self.cgroup {
            // Empty once its processes are gone (the agent too: callers
            // drop their routers first).
            let t0 = Instant::now();
            while std::fs::remove_dir(dir).is_err() && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn names(ctx: &Context, path: &str) -> BTreeSet<String> {
    ctx.list_dir(path).expect("list_dir").iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn root_or_skip(test: &str) -> bool {
    if !is_root() {
        skip_loudly(test, "setns and chroot need root (CAP_SYS_ADMIN, CAP_SYS_CHROOT)");
        return false;
    }
    true
}

/// What both the direct and the hop tests check inside the container.
fn check_inside(ctx: &Context, ct: &Container, hostname: &str) {
    let info = ctx.info().expect("info");
    assert_eq!(info.hostname, hostname, "the container's uts namespace");
    // The agent is in the container's pid namespace: pid 1 is the sleeper,
    // the agent one of the next few; its host pid is another.
    assert!(info.pid > 1 && info.pid < 100, "pid inside the container: {}", info.pid);
    let status = String::from_utf8(ctx.read_file("/proc/self/status").expect("status")).expect("text");
    assert!(status.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().count() == 2), "{status}");
    assert_eq!(info.uid, 0);
    assert_eq!(info.cwd, "/");
    assert_eq!(names(ctx, "/"), set(&["proc", "sleeper"]), "the container's root, nothing else");
    let st = ctx.stat("/sleeper").expect("stat");
    assert_eq!(st.size, std::fs::metadata(ct.root.join("sleeper")).expect("host stat").len());
    let facts = ctx.facts().expect("facts");
    assert_eq!(facts.hostname, hostname);
    // Its mount namespace and root: /proc is the container's own mount.
    let mounts = String::from_utf8(ctx.read_file("/proc/self/mounts").expect("mounts")).expect("text");
    assert!(mounts.lines().any(|l| l.starts_with("proc /proc proc ")), "{mounts}");
    // A net namespace of its own: only lo.
    assert!(facts.interfaces.iter().all(|i| i.name == "lo"), "{:?}", facts.interfaces);
    // Writes land inside, and go again: nothing is left behind.
    let before = ct.host_listing();
    ctx.write_file("/probe", b"inside\n", Some(0o600)).expect("write inside");
    assert_eq!(std::fs::read(ct.root.join("probe")).expect("seen from the host"), b"inside\n");
    assert_eq!(ctx.read_file("/probe").expect("read inside"), b"inside\n");
    ctx.remove("/probe").expect("remove");
    assert_eq!(ct.host_listing(), before, "nothing written into the container stays");
    assert_eq!(before, set(&["proc", "sleeper"]), "the agent wrote nothing into the container");
}

#[test]
fn setns_enters_a_container_with_nothing_inside() {
    if !root_or_skip("setns_enters_a_container_with_nothing_inside") {
        return;
    }
    let mut ct = Container::start("setns", "mito-ct1");
    let cgroup = ct.own_cgroup();
    let router = Router::new().expect("router");
    let t0 = Instant::now();
    let ctx = router.setns(SetnsOptions::new(ct.pid)).expect("setns");
    ctx.ping().expect("ping");
    let first = t0.elapsed();
    // A second one: no first inflate of the embedded agent in this process.
    let t1 = Instant::now();
    router.setns(SetnsOptions::new(ct.pid)).expect("setns again").ping().expect("ping");
    eprintln!("setns connect + first call: {first:?} (first in this process), {:?} (next)", t1.elapsed());
    assert_eq!(ctx.name(), format!("setns:{}", ct.pid));
    assert_eq!(ctx.connect_info().upload, mito::Upload::Direct);
    let host_pid = ctx.connect_info().transport_pid.expect("the agent is the master's child");
    assert_ne!(host_pid, ctx.info().expect("info").pid);
    check_inside(&ctx, &ct, "mito-ct1");
    // Its cgroup is the container's (one of its own where cgroupfs may be
    // changed here, so that joining it is seen).
    let cg = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert_eq!(cg(host_pid), cg(ct.pid));
    match cgroup {
        Some(path) => assert!(cg(host_pid).lines().any(|l| l.ends_with(&format!(":{path}"))), "{}", cg(host_pid)),
        None => eprintln!("cgroupfs cannot be changed here: the agent's cgroup was compared with the container's only"),
    }
    drop(ctx);
    drop(router);
    common::wait_reaped(host_pid, Duration::from_secs(5)).expect("the agent is gone with its router");
}

#[test]
fn setns_takes_the_containers_user_namespace_ids_and_capabilities() {
    if !root_or_skip("setns_takes_the_containers_user_namespace_ids_and_capabilities") {
        return;
    }
    // Its root is host uid 100000: the agent is that root, not the host's.
    let ct = Container::start_with("setns-userns", "mito-ct6", &["userns"]);
    let router = Router::new().expect("router");
    let ctx = router.setns(SetnsOptions::new(ct.pid)).expect("setns");
    let info = ctx.info().expect("info");
    assert_eq!((info.uid, info.gid, info.euid, info.hostname.as_str()), (0, 0, 0, "mito-ct6"));
    assert_eq!(names(&ctx, "/"), set(&["proc", "sleeper"]));
    let host_pid = ctx.connect_info().transport_pid.expect("agent pid");
    let status = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |s: &str, k: &str| s.lines().find(|l| l.starts_with(k)).map(str::to_string);
    let (agent, sleeper) = (status(host_pid), status(ct.pid));
    for k in ["Uid:", "Gid:", "CapEff:", "CapBnd:", "CapPrm:"] {
        assert_eq!(field(&agent, k), field(&sleeper, k), "{k}");
    }
    assert_eq!(
        std::fs::read_link(format!("/proc/{host_pid}/ns/user")).ok(),
        std::fs::read_link(format!("/proc/{}/ns/user", ct.pid)).ok()
    );
    // The tree belongs to the host's root: the container's may not write.
    let e = ctx.write_file("/probe", b"x", None).expect_err("the container's root may not write there");
    assert!(e.to_string().contains("ermission denied"), "{e}");
    assert!(!ct.root.join("probe").exists());
}

#[test]
fn setns_behind_a_hop_starts_the_hops_own_agent() {
    if !root_or_skip("setns_behind_a_hop_starts_the_hops_own_agent") {
        return;
    }
    let ct = Container::start("setns-hop", "mito-ct2");
    let dir = TempDir::new("setns-hop-cache");
    let router = Router::new().expect("router");
    let hop = router.local(common::local_in(&dir.path().join("cache"))).expect("hop");
    let ctx = hop.setns(SetnsOptions::new(ct.pid)).expect("setns through the hop");
    assert_eq!(ctx.connect_info().upload, mito::Upload::Direct);
    assert_eq!(ctx.connect_info().agent_hash, hop.connect_info().agent_hash);
    check_inside(&ctx, &ct, "mito-ct2");
    // Its host pid: the hop's child (CLONE_PARENT), in the container's pid ns.
    let hop_pid = hop.info().expect("hop info").pid;
    let agent = common::children_of(hop_pid)
        .into_iter()
        .map(|(p, _)| p)
        .find(|p| std::fs::read_link(format!("/proc/{p}/root")).ok().as_deref() == Some(ct.root.as_path()))
        .expect("the agent is the hop's child, rooted in the container");
    drop(ctx);
    drop(hop);
    drop(router);
    common::wait_reaped(agent, Duration::from_secs(5)).expect("the agent is gone with its router");
}

/// Set in the copy of this test binary that plays the master of
/// [`the_agent_dies_with_its_master`]: the container's pid.
const MASTER_ENV: &str = "MITO_TEST_CONTAINER_MASTER";

#[test]
fn the_agent_dies_with_its_master() {
    if let Ok(pid) = std::env::var(MASTER_ENV) {
        // The master: connect, say the agent's host pid, wait to be killed.
        let router = Router::new().expect("router");
        let ctx = router.setns(SetnsOptions::new(pid.parse().expect("pid"))).expect("setns");
        ctx.ping().expect("ping");
        let agent = ctx.connect_info().transport_pid.expect("agent pid");
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), "agent {agent}");
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    if !root_or_skip("the_agent_dies_with_its_master") {
        return;
    }
    let ct = Container::start("setns-die", "mito-ct3");
    let mut master = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "the_agent_dies_with_its_master", "--nocapture", "--test-threads=1"])
        .env(MASTER_ENV, ct.pid.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("master");
    let mut out = std::io::BufReader::new(master.stdout.take().expect("stdout"));
    let mut agent = None;
    for _ in 0..50 {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap_or(0) == 0 {
            break;
        }
        // After libtest's "test … ... " on the same line.
        if let Some((_, p)) = line.trim().rsplit_once("agent ") {
            agent = p.parse::<u32>().ok();
            break;
        }
    }
    let Some(agent) = agent else {
        let _ = master.kill();
        let _ = master.wait();
        panic!("the master did not connect");
    };
    assert!(common::alive(agent));
    // SIGKILL: no shutdown, no goodbye; the agent sees its stdin end.
    common::kill9(master.id());
    let _ = master.wait();
    common::wait_gone(agent, Duration::from_secs(5)).expect("the agent exits when its master dies");
}

#[test]
fn chroot_runs_the_agent_in_a_tree_directly_and_behind_a_hop() {
    if !root_or_skip("chroot_runs_the_agent_in_a_tree_directly_and_behind_a_hop") {
        return;
    }
    let dir = TempDir::new("chroot");
    let tree = dir.path().join("tree");
    for d in ["etc", "srv/data"] {
        std::fs::create_dir_all(tree.join(d)).expect("mkdir");
    }
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0::/:/nonexistent\napp:x:1234:2345::/:/nonexistent\n")
        .expect("passwd");
    std::fs::write(tree.join("etc/group"), "app:x:2345:\nextra:x:3456:app\n").expect("group");
    let router = Router::new().expect("router");
    let ctx = router.chroot(ChrootOptions::new(&tree)).expect("chroot");
    assert_eq!(names(&ctx, "/"), set(&["etc", "srv"]));
    assert_eq!(ctx.read_file("/etc/group").expect("read"), b"app:x:2345:\nextra:x:3456:app\n");
    ctx.write_file("/srv/data/x", b"1", None).expect("write");
    assert!(tree.join("srv/data/x").exists());
    // As a user of the tree's own passwd, with its groups.
    let mut o = ChrootOptions::new(&tree);
    o.user = Some("app".into());
    let app = router.chroot(o).expect("chroot as app");
    let i = app.info().expect("info");
    assert_eq!((i.uid, i.gid, i.euid, i.user.as_str()), (1234, 2345, 1234, "app"));
    let status = String::from_utf8(app.read_file("/proc/self/status").unwrap_or_default()).unwrap_or_default();
    if !status.is_empty() {
        assert!(status.contains("Groups:\t2345 3456"), "{status}");
    }
    // Behind a hop.
    let hop = router.local(common::local_in(&dir.path().join("cache"))).expect("hop");
    let behind = hop.chroot(ChrootOptions::new(&tree)).expect("chroot through the hop");
    assert_eq!(names(&behind, "/srv/data"), set(&["x"]));
}

fn enter_failure(r: Result<Context, ConnectError>) -> EnterFailure {
    match r {
        Err(ConnectError::Enter { failure, .. }) => failure,
        Err(other) => panic!("not an Enter error: {other}"),
        Ok(c) => panic!("connected to {}", c.name()),
    }
}

#[test]
fn bad_targets_are_typed_errors_at_once() {
    if !root_or_skip("bad_targets_are_typed_errors_at_once") {
        return;
    }
    let dir = TempDir::new("enter-bad");
    let router = Router::new().expect("router");
    let hop = router.local(common::local_in(&dir.path().join("cache"))).expect("hop");
    // Above pid_max (at most 2^22): no such process.
    let missing = 4_194_304 + 17;
    for (from, c) in [("master", router.connector()), ("hop", hop.connector())] {
        let t0 = Instant::now();
        let f = enter_failure(c.setns(SetnsOptions::new(missing)));
        assert!(matches!(f, EnterFailure::NoSuchProcess(p) if p == missing), "{from}: {f}");
        let f = enter_failure(c.chroot(ChrootOptions::new("/nonexistent/mito")));
        assert!(matches!(f, EnterFailure::NoSuchDirectory(_)), "{from}: {f}");
        let mut o = ChrootOptions::new("/");
        o.user = Some("no-such-user-here".into());
        let f = enter_failure(c.chroot(o));
        assert!(matches!(f, EnterFailure::NoSuchUser(_)), "{from}: {f}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{from}: {:?}", t0.elapsed());
    }
}

#[test]
fn setns_as_a_user_is_refused_as_not_root() {
    if !root_or_skip("setns_as_a_user_is_refused_as_not_root") {
        return;
    }
    let ct = Container::start("setns-user", "mito-ct4");
    let dir = TempDir::new("setns-user");
    // A hop as nobody: its sh drops to uid 65534 before stage0 runs.
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).expect("cache");
    std::os::unix::fs::chown(&cache, Some(65534), Some(65534)).expect("chown");
    let sh = dir.path().join("sh-as-nobody");
    std::fs::write(&sh, "#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups /bin/sh \"$@\"\n")
        .expect("wrapper");
    std::fs::set_permissions(&sh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut o = common::local_in(&cache);
    o.sh = sh;
    o.env.push(("HOME".into(), "/nonexistent".into()));
    let router = Router::new().expect("router");
    let nobody = router.local(o).expect("hop as nobody");
    assert_eq!(nobody.info().expect("info").uid, 65534);
    let t0 = Instant::now();
    let r = nobody.setns(SetnsOptions::new(ct.pid));
    let f = enter_failure(r);
    assert!(matches!(f, EnterFailure::NotRoot(_)), "{f}");
    assert!(f.to_string().contains("setns needs root (CAP_SYS_ADMIN) on the container's host"), "{f}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    let f = enter_failure(nobody.chroot(ChrootOptions::new("/")));
    assert!(matches!(f, EnterFailure::NotRoot(_)), "{f}");
}

#[test]
fn cli_setns_and_chroot_hops() {
    if !root_or_skip("cli_setns_and_chroot_hops") {
        return;
    }
    let ct = Container::start("setns-cli", "mito-ct5");
    let mito = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mito")).args(args).output().expect("mito");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let target = format!("setns:{}", ct.pid);
    for t in [target.clone(), format!("local,{target}")] {
        let (code, out, err) = mito(&["info", &t]);
        assert_eq!(code, Some(0), "{t}: {err}");
        assert!(out.contains("host:      mito-ct5"), "{t}: {out}");
    }
    let dest = ct._dir.path().join("copied");
    let (code, _, err) =
        mito(&["get", &format!("local,chroot:{}:/sleeper", ct.root.display()), &dest.to_string_lossy()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        std::fs::metadata(&dest).expect("copied").len(),
        std::fs::metadata(ct.root.join("sleeper")).expect("src").len()
    );
    let (code, _, err) = mito(&["info", "setns:"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("expected setns:PID or setns:CONTAINER"), "{err}");
    let (code, _, err) = mito(&["info", "chroot:/nonexistent/mito"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no directory /nonexistent/mito"), "{err}");
}

/// The container stops between the look at /proc and the fork into it:
/// its pid namespace takes no process any more, reported as ESRCH at the
/// fork (the master's `ProcessGone`), at once.
#[test]
fn a_container_gone_before_the_start_is_reported_gone() {
    use mito::core::nsenter::{launch, Failure, Plan, Step};
    use std::os::fd::AsFd;
    if !root_or_skip("a_container_gone_before_the_start_is_reported_gone") {
        return;
    }
    let ct = Container::start("setns-gone", "mito-ct7");
    let plan = Plan::container(ct.pid).expect("plan");
    common::kill9(ct.pid);
    common::wait_reaped(ct.pid, Duration::from_secs(5)).expect("the container stopped");
    let exe = std::fs::File::open("/bin/true").expect("/bin/true");
    let null = std::fs::File::options().read(true).write(true).open("/dev/null").expect("null");
    let argv = [std::ffi::CString::new("true").expect("argv")];
    let stdio = [null.as_fd(), null.as_fd(), null.as_fd()];
    let t0 = Instant::now();
    let r = launch(&plan, exe.as_fd(), &argv, &[], stdio, 5000);
    assert_eq!(r, Err(Failure { step: Step::Fork, errno: libc::ESRCH }));
    assert!(t0.elapsed() < Duration::from_secs(2));
    // And as the master says it.
    let f = enter_failure(Router::new().expect("router").setns(SetnsOptions::new(ct.pid)));
    assert!(matches!(f, EnterFailure::NoSuchProcess(_) | EnterFailure::ProcessGone(_)), "{f}");
}

/// A stand-in for `podman`/`docker inspect --format '{{.State.Pid}}' NAME`
/// (no engine runs in the tests): `web` is the container of `pid`,
/// `stopped` exists but does not run, anything else is unknown.
fn fake_engine(dir: &Path, program: &str, pid: u32) -> PathBuf {
    let path = dir.join(program);
    let script = format!(
        "#!/bin/sh\n[ \"$1 $2 $3\" = 'inspect --format {{{{.State.Pid}}}}' ] || exit 2\n\
         case \"$4\" in web) echo {pid} ;; stopped) echo 0 ;; \
         *) echo \"Error: no such container $4\" >&2; exit 125 ;; esac\n"
    );
    std::fs::write(&path, script).expect("write the fake engine");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn setns_by_container_name_asks_the_engine() {
    if !root_or_skip("setns_by_container_name_asks_the_engine") {
        return;
    }
    let ct = Container::start("setns-name", "mito-ct8");
    let dir = TempDir::new("setns-name-engine");
    let engine = fake_engine(dir.path(), "podman", ct.pid).to_string_lossy().into_owned();
    let router = Router::new().expect("router");
    let hop = router.local(common::local_in(&dir.path().join("cache"))).expect("hop");
    for (from, c) in [("master", router.connector()), ("hop", hop.connector())] {
        // The first engine is missing; the second knows the name.
        let opts = |name: &str| SetnsOptions {
            engines: vec!["/nonexistent/docker".into(), engine.clone()],
            ..SetnsOptions::container(name)
        };
        let ctx = c.setns(opts("web")).expect("setns:web");
        assert!(ctx.name().ends_with("setns:web"), "{from}: {}", ctx.name());
        assert_eq!(ctx.info().expect("info").hostname, "mito-ct8", "{from}");
        let f = enter_failure(c.setns(opts("stopped")));
        assert!(matches!(&f, EnterFailure::NotRunning(n) if n == "stopped"), "{from}: {f}");
        let f = enter_failure(c.setns(opts("db")));
        let text = f.to_string();
        assert!(matches!(f, EnterFailure::NoSuchContainer { .. }), "{from}: {text}");
        assert!(text.contains("/nonexistent/docker: ") && text.contains("podman: no such container"), "{from}: {text}");
    }
    // The CLI: setns:NAME asks podman, then docker, from PATH.
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mito"))
        .args(["info", "setns:web"])
        .env("PATH", path)
        .output()
        .expect("mito");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("host:      mito-ct8"), "{out}{}", String::from_utf8_lossy(&o.stderr));
}

/// Stand-ins for `crictl inspect NAME`, `lxc info NAME` and `incus info
/// NAME`, printing what the real tools print (formats followed: crictl
/// 1.28 against containerd 1.7 — JSON `.status.state` and `.info.pid`,
/// trimmed here of fields not read; LXD 5.21's and Incus 6.0's `info`
/// header lines): `web` runs as `pid`, `stopped` exists but does not run,
/// anything else is unknown, with each tool's own words and exit code.
fn fake_resolvers(dir: &Path, pid: u32) {
    let crictl = format!(
        r#"#!/bin/sh
[ "$1" = inspect ] || exit 2
case "$2" in
web|stopped)
    if [ "$2" = web ]; then state=CONTAINER_RUNNING; p={pid}; else state=CONTAINER_EXITED; p=0; fi
    cat <<JSON
{{
  "status": {{
    "id": "4b1fd9a6c2e0d7a1",
    "metadata": {{ "attempt": 0, "name": "$2" }},
    "state": "$state",
    "createdAt": "2026-11-28T09:00:00.000000000Z",
    "exitCode": 0,
    "image": {{ "image": "docker.io/library/busybox:latest" }}
  }},
  "info": {{
    "sandboxID": "9f2d0c1e5b7a3d4c",
    "pid": $p,
    "removing": false,
    "snapshotter": "overlayfs",
    "runtimeType": "io.containerd.runc.v2"
  }}
}}
JSON
    ;;
*)
    echo "E1128 09:00:00.000000    4242 remote_runtime.go:432] \"ContainerStatus from runtime service failed\" err=\"rpc error: code = NotFound desc = an error occurred when try to find container \\\"$2\\\": not found\" containerID=\"$2\"" >&2
    echo "FATA[0000] getting the status of the container \"$2\": rpc error: code = NotFound desc = an error occurred when try to find container \"$2\": not found" >&2
    exit 1
    ;;
esac
"#
    );
    let info = |tool: &str, unknown: &str| {
        format!(
            r#"#!/bin/sh
# {tool}
[ "$1" = info ] || exit 2
case "$2" in
web) printf 'Name: web\nStatus: RUNNING\nType: container\nArchitecture: x86_64\nPID: {pid}\nCreated: 2026/11/28 09:00 UTC\nLast Used: 2026/11/28 09:00 UTC\n\nResources:\n  Processes: 1\n  Disk usage:\n    root: 1.00MiB\n  Network usage:\n    lo:\n      Type: loopback\n      State: UP\n' ;;
stopped) printf 'Name: stopped\nStatus: STOPPED\nType: container\nArchitecture: x86_64\nCreated: 2026/11/28 09:00 UTC\nLast Used: 2026/11/28 09:00 UTC\n' ;;
*) echo "{unknown}" >&2; exit 1 ;;
esac
"#
        )
    };
    let lxc = info("lxc (LXD 5.21)", "Error: Not Found");
    let incus = info(
        "incus (6.0)",
        "Error: Failed to fetch instance \\\"$2\\\" in project \\\"default\\\": Instance not found",
    );
    for (name, text) in [("crictl", crictl), ("lxc", lxc), ("incus", incus)] {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a stand-in");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
}

#[test]
fn setns_by_name_asks_crictl_lxc_and_incus() {
    if !root_or_skip("setns_by_name_asks_crictl_lxc_and_incus") {
        return;
    }
    use mito::connect::setns::Resolver;
    assert_eq!(Resolver::of("/usr/local/bin/crictl"), Resolver::Crictl);
    assert_eq!(Resolver::of("incus"), Resolver::LxcInfo);
    assert_eq!(Resolver::of("nerdctl"), Resolver::Inspect);
    let ct = Container::start("setns-resolvers", "mito-ct9");
    let dir = TempDir::new("setns-resolvers-tools");
    fake_resolvers(dir.path(), ct.pid);
    let router = Router::new().expect("router");
    let hop = router.local(common::local_in(&dir.path().join("cache"))).expect("hop");
    for tool in ["crictl", "lxc", "incus"] {
        let program = dir.path().join(tool).to_string_lossy().into_owned();
        for (from, c) in [("master", router.connector()), ("hop", hop.connector())] {
            // Chosen alone, and after an engine that is not there.
            let opts = |name: &str| SetnsOptions {
                engines: vec!["/nonexistent/podman".into(), program.clone()],
                ..SetnsOptions::container(name)
            };
            let ctx = c.setns(opts("web")).expect("setns:web");
            assert_eq!(ctx.info().expect("info").hostname, "mito-ct9", "{tool} from the {from}");
            let f = enter_failure(c.setns(opts("stopped")));
            assert!(matches!(&f, EnterFailure::NotRunning(n) if n == "stopped"), "{tool} from the {from}: {f}");
            let f = enter_failure(c.setns(opts("db")));
            let text = f.to_string();
            assert!(matches!(f, EnterFailure::NoSuchContainer { .. }), "{tool} from the {from}: {text}");
            assert!(text.contains(&format!("{tool}: no such container")), "{tool} from the {from}: {text}");
        }
    }
    // None resolves: each engine's answer in one typed error.
    let opts = SetnsOptions {
        engines: vec!["/nonexistent/crictl".into(), dir.path().join("lxc").to_string_lossy().into_owned()],
        ..SetnsOptions::container("db")
    };
    let t0 = Instant::now();
    let f = enter_failure(router.setns(opts));
    assert!(t0.elapsed() < Duration::from_secs(5));
    let text = f.to_string();
    assert!(text.contains("/nonexistent/crictl: not found") && text.contains("lxc: no such container"), "{text}");
    // The default order reaches lxc from PATH when podman and docker do
    // not know the name (or are not there), and crictl is not there.
    std::fs::remove_file(dir.path().join("crictl")).expect("rm crictl");
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mito"))
        .args(["info", "setns:web"])
        .env("PATH", path)
        .output()
        .expect("mito");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("host:      mito-ct9"), "{out}{}", String::from_utf8_lossy(&o.stderr));
}

/// The host pid of `outer`'s container's child in a pid namespace of its
/// own, and its pid as `outer`'s container sees it (`NSpid`: host, outer,
/// inner).
fn nested_pids(outer_init: u32, root: &Path) -> Option<(u32, u32)> {
    for (p, _) in common::children_of(outer_init).into_iter().flat_map(|(c, _)| {
        let mut all = vec![(c, ' ')];
        all.extend(common::children_of(c));
        all
    }) {
        if std::fs::read_link(format!("/proc/{p}/root")).ok().as_deref() != Some(root) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        let ns: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))?
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if ns.len() == 3 {
            return Some((ns[0], ns[1]));
        }
    }
    None
}

#[test]
fn a_container_inside_a_container() {
    if !root_or_skip("a_container_inside_a_container") {
        return;
    }
    let ct = Container::start("nested-outer", "mito-outer");
    // The inner container: made from inside the outer one's namespaces
    // (as an engine run in a container would: nsenter to join them, then
    // new mount, pid, uts, ipc and net namespaces), rooted at /inner of
    // the outer's tree, holding only the sleeper.
    let inner_root = ct.root.join("inner");
    std::fs::create_dir_all(inner_root.join("proc")).expect("inner rootfs");
    std::fs::copy(ct.root.join("sleeper"), inner_root.join("sleeper")).expect("copy the sleeper");
    let mut maker = std::process::Command::new("nsenter")
        .arg(format!("--target={}", ct.pid))
        .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--"])
        .args(["unshare", "--mount", "--pid", "--uts", "--ipc", "--net", "--fork", "sh", "-c"])
        .arg("hostname mito-inner && mount -t proc proc \"$1/proc\" && exec chroot \"$1\" /sleeper")
        .arg("sh")
        .arg(&inner_root)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("nsenter");
    let t0 = Instant::now();
    let found = loop {
        // nsenter forks into the outer pid namespace; its child unshares.
        let all = [maker.id()].into_iter().chain(common::children_of(maker.id()).into_iter().map(|(p, _)| p));
        if let Some(f) = all.into_iter().find_map(|p| nested_pids(p, &inner_root)) {
            break Some(f);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let kill_inner = |host: u32| unsafe { libc::kill(host as i32, libc::SIGKILL) };
    let Some((inner_host, inner_in_outer)) = found else {
        let _ = maker.kill();
        let _ = maker.wait();
        panic!("the inner container did not start");
    };
    let dir = TempDir::new("nested-cache");
    let router = Router::new().expect("router");
    let hop = router.local(common::local_in(&dir.path().join("cache"))).expect("hop");
    let outer = hop.setns(SetnsOptions::new(ct.pid)).expect("setns into the outer container");
    let b0 = (hop.bytes_sent(), outer.bytes_sent());
    // The inner pid as the outer container sees it: only that names it
    // there (its host pid is another process, or none, inside).
    let inner = outer.setns(SetnsOptions::new(inner_in_outer)).expect("setns from inside the outer container");
    let sent = (hop.bytes_sent() - b0.0, outer.bytes_sent() - b0.1);
    let info = inner.info().expect("info inside the inner container");
    assert_eq!(info.hostname, "mito-inner");
    assert_eq!(outer.info().expect("outer info").hostname, "mito-outer");
    assert!(info.pid > 1 && info.pid < 100, "pid in the inner pid namespace: {}", info.pid);
    let status = String::from_utf8(inner.read_file("/proc/self/status").expect("status")).expect("text");
    // Its /proc is the inner pid namespace's own: one pid, as it sees it.
    assert!(status.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().count() == 2), "{status}");
    assert_eq!(names(&inner, "/"), set(&["proc", "sleeper"]), "the inner root");
    assert_eq!(names(&outer, "/"), set(&["inner", "proc", "sleeper"]), "the outer root");
    inner.write_file("/probe", b"nested\n", Some(0o600)).expect("write inside");
    assert_eq!(std::fs::read(inner_root.join("probe")).expect("seen from the host"), b"nested\n");
    inner.remove("/probe").expect("remove");
    // The agent at every level is the hop's own executable: the same hash,
    // started directly, and no agent crossed a link (a start is a few
    // hundred bytes of messages; the agent is megabytes).
    for c in [&outer, &inner] {
        assert_eq!(c.connect_info().upload, mito::Upload::Direct);
        assert_eq!(c.connect_info().agent_hash, hop.connect_info().agent_hash);
    }
    assert!(sent.0 < 16 * 1024 && sent.1 < 16 * 1024, "bytes on the links for the inner start: {sent:?}");
    // And a chroot inside the outer container, from it.
    let chrooted = outer.chroot(ChrootOptions::new("/inner")).expect("chroot from inside the outer container");
    assert_eq!(names(&chrooted, "/"), set(&["proc", "sleeper"]));
    assert_eq!(chrooted.info().expect("info").hostname, "mito-outer", "a chroot keeps the outer's namespaces");
    drop((chrooted, inner, outer, hop));
    drop(router);
    kill_inner(inner_host);
    let _ = maker.kill();
    let _ = maker.wait();
}
