//! The ssh method against a real OpenSSH sshd on 127.0.0.1 (scripts/test-sshd).

mod common;

use std::time::{Duration, Instant};

use common::sshd::{Sshd, PASSWORD};
use common::{alive, parent_of, wait_gone, wait_reaped};
use mito::connect::bootstrap::Upload;
use mito::{ConnectError, HostKeyPolicy, Router, SshFailure};

fn failure(r: Result<mito::Context, ConnectError>) -> (SshFailure, String) {
    match r {
        Err(ConnectError::Ssh { failure, host, .. }) => (failure, host),
        Err(e) => panic!("expected an ssh failure, got: {e}"),
        Ok(c) => panic!("expected an ssh failure, connected to {}", c.name()),
    }
}

/// Key login for users whose login shells are sh, bash and dash; the first
/// connect uploads the agent, the second sends no agent bytes. Only this
/// test uses these three users (it wipes their caches).
#[test]
fn key_login_with_each_login_shell_and_cache() {
    let Some(sshd) = Sshd::start("key_login_with_each_login_shell_and_cache") else { return };
    let router = Router::new().expect("router");
    for user in ["mito-sh", "mito-bash", "mito-dash"] {
        let _ = std::fs::remove_dir_all(format!("/home/{user}/.cache/mito"));
        let ctx = router.ssh(sshd.opts(user)).expect("connect");
        assert!(matches!(ctx.connect_info().upload, Upload::Stored { .. }), "{user}: {:?}", ctx.connect_info().upload);
        assert!(ctx.connect_info().agent_bytes_sent > 10_000);
        let info = ctx.info().expect("info");
        assert_eq!(info.user, user);
        assert!(info.exe.starts_with(&format!("/home/{user}/.cache/mito/agent-")), "{}", info.exe);
        let r = ctx.exec(&["sh", "-c", "echo $HOME"]).expect("exec");
        assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), format!("/home/{user}"));
        let again = router.ssh(sshd.opts(user)).expect("connect again");
        assert_eq!(again.connect_info().upload, Upload::Cached, "{user}");
        assert_eq!(again.connect_info().agent_bytes_sent, 0, "{user}: no agent bytes on a repeat connect");
        again.ping().expect("ping");
    }
}

#[test]
fn password_login_never_exposes_the_password() {
    let Some(sshd) = Sshd::start("password_login_never_exposes_the_password") else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.password_opts("mito-user", Some(PASSWORD))).expect("password login");
    assert_eq!(ctx.info().expect("info").user, "mito-user");
    let ssh_pid = ctx.connect_info().transport_pid.expect("ssh pid");
    for what in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{ssh_pid}/{what}")).expect("proc");
        assert!(!String::from_utf8_lossy(&bytes).contains(PASSWORD), "password in ssh's {what}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .expect("tmp")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("mito-askpass-{}-", std::process::id())))
        .collect();
    assert!(leftovers.is_empty(), "askpass directory left behind: {leftovers:?}");
    let e = format!("{:?}", sshd.password_opts("mito-user", Some(PASSWORD)));
    assert!(!e.contains(PASSWORD), "Debug shows the password: {e}");
}

#[test]
fn wrong_or_missing_password_is_a_typed_error() {
    let Some(sshd) = Sshd::start("wrong_or_missing_password_is_a_typed_error") else { return };
    let router = Router::new().expect("router");
    let t0 = Instant::now();
    let (f, host) = failure(router.ssh(sshd.password_opts("mito-user", Some("not-the-password"))));
    assert_eq!(f, SshFailure::WrongPassword);
    assert_eq!(host, format!("mito-user@127.0.0.1:{}", sshd.port));
    assert!(t0.elapsed() < Duration::from_secs(10));
    let (f, _) = failure(router.ssh(sshd.password_opts("mito-user", None)));
    assert!(matches!(f, SshFailure::AuthFailed { .. }), "{f:?}");
}

#[test]
fn host_keys_unknown_changed_accept_new() {
    let Some(sshd) = Sshd::start("host_keys_unknown_changed_accept_new") else { return };
    let router = Router::new().expect("router");
    let empty = sshd.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").expect("write");
    let with_kh = |kh: &std::path::Path, policy| {
        let mut o = sshd.opts("mito-user");
        o.options = vec![format!("UserKnownHostsFile={}", kh.display())];
        o.check_host_keys = policy;
        o
    };
    assert_eq!(failure(router.ssh(with_kh(&empty, HostKeyPolicy::Enforce))).0, SshFailure::HostKeyUnknown);

    let other = sshd.dir.path().join("other_key");
    let st =
        std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&other).status();
    assert!(st.is_ok_and(|s| s.success()));
    let pubkey = std::fs::read_to_string(other.with_extension("pub")).expect("pub");
    let wrong = sshd.dir.path().join("wrong_known_hosts");
    let fields: Vec<&str> = pubkey.split_whitespace().take(2).collect();
    std::fs::write(&wrong, format!("[127.0.0.1]:{} {}\n", sshd.port, fields.join(" "))).expect("write");
    assert_eq!(failure(router.ssh(with_kh(&wrong, HostKeyPolicy::Enforce))).0, SshFailure::HostKeyChanged);
    assert_eq!(failure(router.ssh(with_kh(&wrong, HostKeyPolicy::AcceptNew))).0, SshFailure::HostKeyChanged);

    let ctx = router.ssh(with_kh(&empty, HostKeyPolicy::AcceptNew)).expect("accept-new");
    ctx.ping().expect("ping");
    assert!(std::fs::read_to_string(&empty).expect("read").contains(&format!("[127.0.0.1]:{}", sshd.port)));
    router.ssh(with_kh(&wrong, HostKeyPolicy::Ignore)).expect("ignore").ping().expect("ping");
}

#[test]
fn refused_port_is_a_typed_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let router = Router::new().expect("router");
    let mut o = mito::SshOptions::new("127.0.0.1");
    o.port = Some(port);
    o.ssh_config = Some("/dev/null".into());
    assert_eq!(failure(router.ssh(o)).0, SshFailure::ConnectionRefused);
}

#[test]
fn twenty_parallel_contexts() {
    let Some(sshd) = Sshd::start("twenty_parallel_contexts") else { return };
    let router = Router::new().expect("router");
    let ctxs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20).map(|_| s.spawn(|| router.ssh(sshd.opts("mito-user")))).collect();
        hs.into_iter().map(|h| h.join().expect("thread").expect("connect")).collect()
    });
    let pids: std::collections::HashSet<u32> = ctxs.iter().map(|c| c.info().expect("info").pid).collect();
    assert_eq!(pids.len(), 20);
    for c in &ctxs {
        c.ping().expect("ping");
    }
}

/// Killing the remote agent fails the pending call at once.
#[test]
fn remote_agent_killed() {
    let Some(sshd) = Sshd::start("remote_agent_killed") else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.opts("mito-user")).expect("connect");
    let pending = common::pending_sleep(&ctx);
    let agent = ctx.connect_info().pid;
    common::kill9(agent);
    let t0 = Instant::now();
    let e = pending.wait().expect_err("agent died");
    assert!(e.is_disconnected(), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(ctx.ping().expect_err("dead").is_disconnected());
    // The ssh client, our child, ends with the session and is reaped.
    let ssh = ctx.connect_info().transport_pid.expect("ssh pid");
    let reaped = wait_reaped(ssh, Duration::from_secs(5));
    assert!(reaped.is_ok(), "ssh client {ssh}: {reaped:?}");
}

/// kill -9 of the local ssh client: calls fail at once, the remote agent
/// exits with its session (no orphan on the target).
#[test]
fn local_ssh_client_killed() {
    let Some(sshd) = Sshd::start("local_ssh_client_killed") else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.opts("mito-user")).expect("connect");
    let agent = ctx.connect_info().pid;
    let ssh = ctx.connect_info().transport_pid.expect("ssh pid");
    let pending = common::pending_sleep(&ctx);
    std::thread::sleep(Duration::from_millis(50));
    assert!(alive(agent));
    common::kill9(ssh);
    let t0 = Instant::now();
    let e = pending.wait().expect_err("transport died");
    assert!(e.is_disconnected(), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(wait_gone(agent, Duration::from_secs(5)).is_some(), "remote agent {agent} orphaned");
    let reaped = wait_reaped(ssh, Duration::from_secs(2));
    assert!(reaped.is_ok(), "the killed ssh client {ssh}, our child, reaped: {reaped:?}");
}

/// 100 MB of stdout streams through ssh to the CLI without the master's
/// memory growing with it.
#[test]
fn hundred_megabytes_of_stdout_stream_through() {
    let Some(sshd) = Sshd::start("hundred_megabytes_of_stdout_stream_through") else { return };
    let d = sshd.dir.path();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mito"))
        .args(["-F", "/dev/null", "--private-key"])
        .arg(d.join("id_ed25519"))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", d.join("known_hosts").display()))
        .args([
            "run",
            &format!("ssh://mito-user@127.0.0.1:{}", sshd.port),
            "--",
            "head",
            "-c",
            "100000000",
            "/dev/zero",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mito");
    let mut out = child.stdout.take().expect("stdout");
    let pid = child.id();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p2 = peak.clone();
    let watcher = std::thread::spawn(move || {
        while let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) =
                s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            {
                p2.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let n = std::io::copy(&mut out, &mut std::io::sink()).expect("read");
    let st = child.wait().expect("wait");
    let _ = watcher.join();
    assert!(st.success());
    assert_eq!(n, 100_000_000);
    let peak_mib = peak.load(std::sync::atomic::Ordering::Relaxed) / 1024;
    eprintln!("peak RSS of the master while streaming 100 MB: {peak_mib} MiB");
    assert!(peak_mib < 48, "master RSS grew to {peak_mib} MiB");
}

/// A read-only home on the target: the agent runs from the next directory
/// in the fallback order.
#[test]
fn read_only_home_falls_back() {
    let Some(sshd) = Sshd::start("read_only_home_falls_back") else { return };
    let home = "/home/mito-ro";
    let st = std::process::Command::new("mount").args(["-o", "bind,ro", home, home]).status().expect("mount");
    assert!(st.success());
    let router = Router::new().expect("router");
    let r = router.ssh(sshd.opts("mito-ro"));
    let _ = std::process::Command::new("umount").args(["-l", home]).status();
    let ctx = r.expect("connect despite a read-only home");
    let exe = ctx.info().expect("info").exe;
    assert!(!exe.starts_with(home), "ran from {exe}");
    eprintln!("read-only home: agent ran from {exe}");
}

/// A login shell that cannot run commands: a typed error that shows what
/// the target said, not a hang.
#[test]
fn login_shell_that_refuses_commands() {
    let Some(sshd) = Sshd::start("login_shell_that_refuses_commands") else { return };
    let router = Router::new().expect("router");
    let t0 = Instant::now();
    let e = router.ssh(sshd.opts("mito-nologin")).expect_err("nologin");
    assert!(matches!(e, ConnectError::Bootstrap { .. }), "{e}");
    assert!(e.to_string().contains("not available"), "shows nologin's message: {e}");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

/// Many threads calling one ssh context: callers take turns reading the
/// stream themselves (core::stream_in) and deliver each other's replies. A
/// lost hand-off would show as a timeout, not a hang.
#[test]
fn concurrent_callers_share_the_read_side() {
    let Some(sshd) = Sshd::start("concurrent_callers_share_the_read_side") else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.opts("mito-user")).expect("connect").with_timeout(Some(Duration::from_secs(20)));
    std::thread::scope(|s| {
        for t in 0..8 {
            let ctx = ctx.clone();
            s.spawn(move || {
                for i in 0..150 {
                    if i % 50 == 0 {
                        let r = ctx.exec(&["echo", &format!("{t}-{i}")]).expect("exec");
                        assert_eq!(String::from_utf8_lossy(&r.stdout), format!("{t}-{i}\n"));
                    } else {
                        ctx.ping().expect("ping");
                    }
                }
            });
        }
    });
    let p: Vec<_> = (0..500).map(|_| ctx.call_async::<mito::functions::Ping>(&()).expect("send")).collect();
    for x in p {
        x.wait().expect("pipelined reply");
    }
}

/// kill -9 of the sshd process that serves the session: pending calls fail
/// at once and the agent goes with its session.
#[test]
fn remote_sshd_session_killed() {
    let Some(sshd) = Sshd::start("remote_sshd_session_killed") else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.opts("mito-user")).expect("connect");
    let agent = ctx.connect_info().pid;
    let session = parent_of(agent).expect("the agent's parent is its sshd session");
    assert_ne!(Some(session), sshd.pid(), "a per-connection sshd, not the listener");
    let pending = common::pending_sleep(&ctx);
    std::thread::sleep(Duration::from_millis(50));
    common::kill9(session);
    let t0 = Instant::now();
    let e = pending.wait().expect_err("session died");
    assert!(e.is_disconnected(), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(wait_gone(agent, Duration::from_secs(5)).is_some(), "agent {agent} outlived its session");
}

/// The library shares a connection only when asked (`control_persist`):
/// then a second connect goes through the master alone (the sshd's
/// listener is stopped in between), `master_control` sees and ends it.
#[test]
fn control_persist_shares_one_connection() {
    use mito::connect::ssh::{master_control, MasterOp};
    let Some(sshd) = Sshd::start("control_persist_shares_one_connection") else { return };
    let dir = common::TempDir::new("cm");
    let router = Router::new().expect("router");
    let mut o = sshd.opts("mito-user");
    assert_eq!(o.control_persist, None, "off by default in the library");
    o.control_dir = Some(dir.path().join("s"));
    router.ssh(o.clone()).expect("unshared").ping().expect("ping");
    assert!(!master_control(&o, MasterOp::Check).expect("check"), "no master unless asked");
    o.control_persist = Some(Duration::from_secs(30));
    let first = router.ssh(o.clone()).expect("first");
    first.ping().expect("ping");
    assert!(master_control(&o, MasterOp::Check).expect("check"), "a master after the first connect");
    let st = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-sshd"))
        .arg("stop")
        .arg(sshd.dir.path())
        .status();
    assert!(st.is_ok_and(|s| s.success()));
    let t0 = Instant::now();
    let second = router.ssh(o.clone()).expect("second, through the master");
    second.ping().expect("ping");
    eprintln!("connect + first call through the master: {:?}", t0.elapsed());
    let _ = first.shutdown();
    let _ = second.shutdown();
    assert!(master_control(&o, MasterOp::Exit).expect("exit"), "ended");
    assert!(!master_control(&o, MasterOp::Check).expect("check"), "gone");
}
