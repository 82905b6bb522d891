//! Lifetimes and bad input: dead masters, dead agents, malformed frames,
//! garbage on the agent's stdout/stderr, unusable cache directories.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    alive, is_root, local_in, parent_of, proc_state, skip_loudly, wait_gone, wait_reaped, ProcState, TempDir,
};
use mito::functions::{ExecArgs, Stdio as ExecStdio};
use mito::proto::message::Hello;
use mito::proto::{handles, Header};
use mito::{LocalOptions, Router};
use serde_bytes::ByteBuf;

const MITO: &str = env!("CARGO_BIN_EXE_mito");

/// `kill -9` of the master: its agent and the agent's command are gone
/// within 2 s.
#[test]
fn agents_die_with_their_master() {
    let (mut master, cmd_pid) =
        common::mito_printing_pid(&["run", "local", "--", "sh", "-c", "echo $$; exec sleep 100"]);
    let agent_pid = parent_of(cmd_pid).expect("the command's parent is the agent");
    assert!(alive(agent_pid) && alive(cmd_pid));
    common::kill9(master.id());
    let _ = master.wait();
    let agent_gone = wait_gone(agent_pid, Duration::from_secs(2));
    let cmd_gone = wait_gone(cmd_pid, Duration::from_secs(2));
    assert!(agent_gone.is_some(), "agent {agent_pid} outlived its master");
    assert!(cmd_gone.is_some(), "the agent's command {cmd_pid} outlived the agent");
    eprintln!("agent gone {:?} after kill -9 of the master; its command {:?}", agent_gone, cmd_gone);
}

/// The agent binary run directly: when its stdin closes, it exits (0).
/// Malformed frames make it exit with its protocol error code, not a crash.
#[test]
fn agent_exits_on_eof_and_on_malformed_frames() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let exe = ctx.connect_info().exe.clone();
    let hash = ctx.connect_info().agent_hash.clone();
    for (case, garbage, want) in [
        ("eof", &b""[..], 0),
        ("wrong magic", &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789"[..], 76),
        ("oversized", &Header { len: u32::MAX, ..Header::default() }.encode()[..], 76),
    ] {
        let (mut ours, mut child) = common::spawn_agent_by_hand(&exe, &hash);
        ours.write_all(garbage).expect("write");
        ours.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(2), "{case}: agent did not exit");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(status.code(), Some(want), "{case}: {status}");
        let mut rest = Vec::new();
        let _ = ours.read_to_end(&mut rest);
        assert!(rest.starts_with(b"\nMITO2\n"), "{case}: agent said hello first");
    }
}

/// A context that dies: the pending call and every later call fail at
/// once with a typed error; the router keeps working.
#[test]
fn calls_to_a_dead_context_fail_at_once() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let pending = common::pending_sleep(&ctx);
    let pid = ctx.connect_info().pid;
    std::thread::sleep(Duration::from_millis(50));
    common::kill9(pid);
    let t0 = Instant::now();
    let e = pending.wait().expect_err("agent died");
    assert!(e.is_disconnected(), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(1), "failed in {:?}", t0.elapsed());
    let t0 = Instant::now();
    let e = ctx.ping().expect_err("dead");
    assert!(e.is_disconnected(), "{e}");
    assert!(t0.elapsed() < Duration::from_millis(100));
    assert!(e.to_string().contains(ctx.name()), "names the context: {e}");
    // Our child: gone from /proc, not a zombie left for nobody to reap.
    let reaped = wait_reaped(pid, Duration::from_secs(2));
    assert!(reaped.is_ok(), "agent {pid} not reaped 2 s after it died: {reaped:?}");
    let other = router.local(LocalOptions::default()).expect("router still works");
    other.ping().expect("ping");
}

/// A fake "agent" (LocalOptions::sh pointing at a script) that says a valid
/// hello and then sends a bad frame: the master closes that stream with a
/// typed error in its log, the call fails, nothing panics.
#[test]
fn malformed_frames_from_an_agent_close_only_that_stream() {
    common::capture_logs();
    let dir = TempDir::new("fake");
    let hello = Hello {
        protocol_version: mito::proto::PROTOCOL_VERSION,
        arch: "x86_64".into(),
        pid: 1,
        agent_hash: "x".into(),
        exe: "fake".into(),
    };
    let data = postcard::to_allocvec(&hello).expect("encode");
    let mut frame = b"\nMITO2\n".to_vec();
    frame.extend(mito::core::stream::encode(&Header { src: 1, handle: handles::HELLO, ..Header::default() }, &data));
    let router = Router::new().expect("router");
    for (case, bad) in [
        ("wrong magic", b"NOT A FRAME AT ALL, JUST TEXT..".to_vec()),
        ("oversized", Header { src: 1, len: u32::MAX, ..Header::default() }.encode().to_vec()),
        ("unknown flags", Header { src: 1, flags: 0x4000, ..Header::default() }.encode().to_vec()),
    ] {
        let hello_file = dir.path().join("hello.bin");
        let mut bytes = frame.clone();
        bytes.extend(&bad);
        std::fs::write(&hello_file, &bytes).expect("write");
        let fake = dir.path().join("fake-sh");
        std::fs::write(&fake, format!("#!/bin/sh\ncat {}\nexec sleep 5\n", hello_file.display())).expect("script");
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        // The master attributes frames to the stream they came on, so the
        // fake's src id need not match the id the master allocated.
        let ctx = router.local(LocalOptions { sh: fake.clone(), ..LocalOptions::default() }).expect("hello accepted");
        let t0 = Instant::now();
        let e = ctx.ping().expect_err(case);
        assert!(e.is_disconnected(), "{case}: {e}");
        assert!(e.to_string().contains("malformed frame"), "{case}: {e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(!common::logs_containing("malformed frame").is_empty(), "{case}: logged");
    }
    let real = router.local(LocalOptions::default()).expect("the router is unharmed");
    real.ping().expect("ping");
}

/// Output written to the agent's own fd 1/2 (by a child that inherits them)
/// arrives as log lines, and the protocol stream stays intact.
#[test]
fn garbage_on_agent_stdout_stderr_becomes_log_lines() {
    common::capture_logs();
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions { name: Some("noisy".into()), ..LocalOptions::default() }).expect("connect");
    let script = "printf 'MITO2\\n\\155\\067\\000\\000garbage\\377\\001 on stdout\\n'; echo 'line on stderr' >&2; head -c 100000 /dev/urandom";
    let args = ExecArgs {
        argv: ["sh", "-c", script].iter().map(|s| ByteBuf::from(s.as_bytes())).collect(),
        stdio: ExecStdio::Log,
        ..ExecArgs::default()
    };
    let r = ctx.exec_with(&args).expect("exec");
    assert_eq!(r.status.code, Some(0));
    for _ in 0..100 {
        ctx.ping().expect("protocol intact");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while common::logs_containing("line on stderr").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = common::logs_containing("garbage");
    assert!(out.iter().any(|l| l.starts_with("[noisy] stdout:")), "{out:?}");
    let err = common::logs_containing("line on stderr");
    assert!(err.iter().any(|l| l.starts_with("[noisy] stderr:")), "{err:?}");
    assert_eq!(ctx.info().expect("info").pid, ctx.connect_info().pid);
}

/// A cache directory on a read-only or noexec mount: the agent runs from
/// the next directory in the fallback order instead.
#[test]
fn readonly_or_noexec_cache_dir_falls_back() {
    if !is_root() {
        return skip_loudly("readonly_or_noexec_cache_dir_falls_back", "mounting a tmpfs needs root");
    }
    for opts in ["ro", "noexec"] {
        let dir = TempDir::new(opts);
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", opts, "tmpfs"]).arg(&mnt).status().expect("mount");
        assert!(st.success(), "mount -o {opts}");
        let router = Router::new().expect("router");
        let result = router.local(local_in(&mnt));
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        let ctx = result.unwrap_or_else(|e| panic!("{opts}: {e}"));
        ctx.ping().expect("ping");
        let exe = &ctx.connect_info().exe;
        let runtime = dir.path().join("mnt-run").join("mito");
        assert!(
            exe.starts_with(&runtime.display().to_string()),
            "{opts}: ran from {exe}, not from $XDG_RUNTIME_DIR/mito"
        );
        eprintln!("{opts} cache dir: agent ran from {exe} ({:?})", ctx.connect_info().upload);
    }
}

/// Runs `mito ARGS` in a private mount namespace where /tmp, /var/tmp and
/// /dev/shm are noexec tmpfs, the cache is under /tmp and XDG_RUNTIME_DIR is
/// unset; `extra` runs after the mounts. The binary is opened before the
/// mounts: the checkout may itself live under /tmp, which they hide.
fn mito_with_everything_noexec(extra: &str, args: &str) -> std::process::Output {
    let script = format!(
        r#"
        set -e
        exec 3<"$0"
        for d in /tmp /var/tmp /dev/shm; do mount -t tmpfs -o noexec tmpfs "$d"; done
        {extra}
        mkdir -p /tmp/cache
        export XDG_CACHE_HOME=/tmp/cache; unset XDG_RUNTIME_DIR
        exec /proc/self/fd/3 {args}
    "#
    );
    Command::new("unshare").args(["-m", "sh", "-c", &script, MITO]).stdin(Stdio::null()).output().expect("unshare")
}

/// Every directory read-only or noexec: the agent starts from a memfd
/// through perl.
#[test]
fn no_exec_dir_anywhere_uses_memfd() {
    if !is_root() {
        return skip_loudly("no_exec_dir_anywhere_uses_memfd", "a private mount namespace needs root");
    }
    let out = mito_with_everything_noexec("", "info local --json");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let exe = v["exe"].as_str().unwrap_or("");
    assert!(exe.starts_with("/memfd:"), "agent ran from {exe}");
}

/// Dropping the Router shuts every context down and reaps it.
#[test]
fn dropping_the_router_ends_its_agents() {
    let router = Router::new().expect("router");
    let pids: Vec<u32> =
        (0..5).map(|_| router.local(LocalOptions::default()).expect("connect").connect_info().pid).collect();
    assert!(pids.iter().all(|&p| alive(p)));
    let t0 = Instant::now();
    drop(router);
    assert!(t0.elapsed() < Duration::from_secs(3));
    // Reaped by the time drop returns: not running, and no zombies.
    for p in pids {
        assert_eq!(proc_state(p), ProcState::Gone, "agent {p} after the router was dropped");
    }
}

/// A target whose `uname -m` names an architecture we have no agent for.
#[test]
fn unknown_architecture_is_a_typed_error() {
    let dir = TempDir::new("arch");
    let uname = dir.path().join("uname");
    std::fs::write(&uname, "#!/bin/sh\necho sparc64\n").expect("write");
    std::fs::set_permissions(&uname, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let cache = TempDir::new("arch-cache");
    let mut opts = local_in(cache.path());
    opts.env.push(("PATH".into(), path.into()));
    let router = Router::new().expect("router");
    match router.local(opts) {
        Err(mito::ConnectError::UnsupportedArch { arch, .. }) => assert_eq!(arch, "sparc64"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("connected to a sparc64"),
    }
}

/// Every directory noexec and no perl: the connect fails with a clear
/// message instead of hanging or executing from a noexec mount.
#[test]
fn no_exec_dir_and_no_perl_is_a_typed_error() {
    if !is_root() {
        return skip_loudly("no_exec_dir_and_no_perl_is_a_typed_error", "a private mount namespace needs root");
    }
    let hide_perl = r#": > /tmp/not-perl; for p in /usr/bin/perl /bin/perl; do [ -e "$p" ] && mount --bind /tmp/not-perl "$p"; done"#;
    let out = mito_with_everything_noexec(hide_perl, "run local -- true");
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no directory to run the agent from"), "{err}");
}

/// SIGTERM (or a hang-up relayed by sudo) ends the agent like losing its
/// parent: its running command goes too, and the call fails at once.
#[test]
fn terminated_agent_takes_its_commands_along() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let mut seen = Vec::new();
    let args = mito::functions::ExecArgs {
        argv: ["sh", "-c", "echo $$; exec sleep 30"].iter().map(|a| serde_bytes::ByteBuf::from(a.as_bytes())).collect(),
        stdio: mito::functions::Stdio::Capture,
        ..Default::default()
    };
    let agent = ctx.connect_info().pid;
    let c2 = ctx.clone();
    let waiter = std::thread::spawn(move || c2.exec_streaming(&args, |_, d| seen.extend_from_slice(d)).map(|_| seen));
    std::thread::sleep(Duration::from_millis(200));
    let cmd = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&p| parent_of(p) == Some(agent))
        .expect("the agent's command");
    let p = rustix::process::Pid::from_raw(agent as i32).expect("pid");
    rustix::process::kill_process(p, rustix::process::Signal::TERM).expect("kill -TERM");
    let r = waiter.join().expect("thread");
    assert!(r.expect_err("agent ended").is_disconnected());
    assert!(wait_gone(cmd, Duration::from_secs(2)).is_some(), "command {cmd} outlived its agent");
    assert_eq!(ctx.shutdown().and_then(|s| s.code), Some(129), "the agent's exit code for a signal");
}

/// The probe behind the "no zombie" checks can see one: a child that has
/// exited but that we have not waited for is a zombie, not gone, until we
/// reap it.
#[test]
fn the_zombie_probe_tells_a_zombie_from_a_reaped_process() {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    let t0 = Instant::now();
    while proc_state(pid) != ProcState::Zombie {
        assert!(t0.elapsed() < Duration::from_secs(5), "`true` ({pid}) never became a zombie: {:?}", proc_state(pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!alive(pid), "a zombie is not running");
    assert_eq!(wait_reaped(pid, Duration::from_millis(200)), Err(ProcState::Zombie), "unreaped: not gone");
    assert!(child.wait().expect("wait").success());
    assert_eq!(proc_state(pid), ProcState::Gone);
    assert!(wait_reaped(pid, Duration::from_millis(200)).is_ok());
    // And a running one is neither.
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
    assert_eq!(proc_state(sleeper.id()), ProcState::Running);
    assert_eq!(wait_reaped(sleeper.id(), Duration::from_millis(50)), Err(ProcState::Running));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}
