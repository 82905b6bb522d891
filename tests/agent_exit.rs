//! How an agent ends, as the README promises: on SIGHUP or SIGTERM it exits
//! like a lost parent and takes its commands' process groups along, and an
//! agent that exits mid-transfer (signalled, or its master killed) leaves
//! no `.NAME.mito-tmp.*` file beside the destination and nothing under the
//! final name.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{alive, local_in, wait_gone, TempDir};
use mito::functions::ExecArgs;
use mito::{ProcessEvent, Router};
use serde_bytes::ByteBuf;

/// The `.NAME.mito-tmp.*` files in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".mito-tmp."))
        .collect()
}

/// A sparse file of `size` bytes: instant to make, and long to send.
fn sparse(path: &Path, size: u64) {
    std::fs::File::create(path).expect("create").set_len(size).expect("set_len");
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on an agent this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid} {sig}");
}

/// SIGTERM or SIGHUP to the receiving agent once 16 MiB have moved: the
/// put fails, and the agent removed its temp file on the way out.
#[test]
fn a_signalled_agent_removes_its_temp_file_mid_put() {
    let dir = TempDir::new("exit-put");
    let src = dir.path().join("src");
    sparse(&src, 512 << 20);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        let router = Router::new().expect("router");
        let ctx = router.local(local_in(&dir.path().join("cache"))).expect("connect");
        let agent = ctx.connect_info().pid;
        let dst = out.join(format!("dst-{sig}"));
        let moved = AtomicU64::new(0);
        let saw_temp = AtomicBool::new(false);
        let r = ctx.put_with_progress(&src, &dst, &|n| {
            let before = moved.fetch_add(n, Ordering::Relaxed);
            if before < 16 << 20 && before + n >= 16 << 20 {
                // Mid-transfer: the temp file is there now.
                saw_temp.store(!temp_files(&out).is_empty(), Ordering::Relaxed);
                signal(agent, sig);
            }
        });
        assert!(saw_temp.into_inner(), "signal {sig}: a temp file existed while the transfer ran");
        assert!(r.is_err(), "signal {sig}: the put cannot succeed");
        assert!(moved.into_inner() < 512 << 20, "signal {sig}: stopped early");
        assert!(wait_gone(agent, Duration::from_secs(5)).is_some(), "signal {sig}: the agent exited");
        assert_eq!(temp_files(&out), Vec::<String>::new(), "signal {sig}: temp file left behind");
        assert!(!dst.exists(), "signal {sig}: nothing under the final name");
    }
}

/// The children of `pid` (every thread's).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().filter_map(Result::ok) {
        let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    out
}

/// kill -9 of the `mito put` CLI mid-transfer: its agent sees the stream
/// close, exits, and removes its temp file.
#[test]
fn the_temp_file_goes_when_the_master_dies_mid_put() {
    let dir = TempDir::new("exit-master");
    let src = dir.path().join("src");
    sparse(&src, 2 << 30);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let dst = out.join("dst");
    let mut mito = Command::new(env!("CARGO_BIN_EXE_mito"))
        .arg("put")
        .arg(&src)
        .arg(format!("local:{}", dst.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mito put");
    let t0 = Instant::now();
    while temp_files(&out).is_empty() {
        if let Some(st) = mito.try_wait().expect("try_wait") {
            let mut err = String::new();
            let _ = mito.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("mito put ended ({st}) before a temp file appeared: {err}");
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no temp file appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    let agents = children(mito.id());
    assert!(!agents.is_empty(), "the local agent is mito's child");
    common::kill9(mito.id());
    let _ = mito.wait();
    for a in agents {
        assert!(wait_gone(a, Duration::from_secs(5)).is_some(), "agent {a} outlived its master");
    }
    assert_eq!(temp_files(&out), Vec::<String>::new(), "temp file left behind");
    assert!(!dst.exists(), "nothing under the final name");
}

/// SIGHUP or SIGTERM to an agent ends it and its running commands: the
/// command and a background child in its process group, while the pending
/// call fails at once.
#[test]
fn sighup_and_sigterm_end_the_agent_and_its_commands() {
    let dir = TempDir::new("exit-sig");
    for sig in [libc::SIGHUP, libc::SIGTERM] {
        let router = Router::new().expect("router");
        let ctx = router.local(local_in(&dir.path().join("cache"))).expect("connect");
        let agent = ctx.connect_info().pid;
        let argv = ["sh", "-c", "sleep 300 & echo $$ $!; wait"].map(|a| ByteBuf::from(a.as_bytes())).to_vec();
        let mut p = ctx.spawn(&ExecArgs { argv, ..Default::default() }).expect("spawn");
        let mut line = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !line.contains(&b'\n') {
            match p.next(Some(deadline)).expect("output") {
                ProcessEvent::Output { data, .. } => line.extend_from_slice(&data),
                ProcessEvent::Exit(r) => panic!("exited early: {r:?}"),
            }
        }
        let pids: Vec<u32> =
            String::from_utf8_lossy(&line).split_whitespace().map(|p| p.parse().expect("pid")).collect();
        assert_eq!(pids.len(), 2, "{:?}", String::from_utf8_lossy(&line));
        let pending = common::pending_sleep(&ctx);
        assert!(pids.iter().all(|&p| alive(p)));
        signal(agent, sig);
        let t0 = Instant::now();
        let e = pending.wait().expect_err("the agent is gone");
        assert!(e.is_disconnected(), "signal {sig}: {e}");
        assert!(t0.elapsed() < Duration::from_secs(2), "signal {sig}: failed after {:?}", t0.elapsed());
        assert!(wait_gone(agent, Duration::from_secs(5)).is_some(), "signal {sig}: agent {agent} still running");
        for pid in pids {
            assert!(wait_gone(pid, Duration::from_secs(5)).is_some(), "signal {sig}: command {pid} outlived its agent");
        }
    }
}
