//! Multi-hop: contexts connected through other contexts (local → local,
//! → sudo with a password, ssh → sudo), routing, faults, and a file relayed
//! once through a hop to many contexts behind it.

mod common;

use std::time::Duration;

use common::{alive, local_in, TempDir};
use mito::{BecomeFailure, CallError, ConnectError, Router, SuOptions, SudoOptions};

const PASSWORD: &str = common::sshd::PASSWORD;

#[test]
fn local_through_local_routes_calls_and_commands() {
    let dir = TempDir::new("via-basic");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&dir.path().join("cache"))).expect("hop");
    let child = hop.local(local_in(&dir.path().join("cache"))).expect("child through hop");
    assert!(child.name().starts_with(hop.name()), "named after its hop: {}", child.name());
    let hi = hop.info().expect("hop info");
    let ci = child.info().expect("child info");
    assert_ne!(hi.pid, ci.pid);
    // The child agent runs under the hop: sh → agent, parent chain reaches the hop's pid.
    let mut p = ci.pid;
    let mut found = false;
    for _ in 0..4 {
        match common::parent_of(p) {
            Some(pp) if pp == hi.pid => {
                found = true;
                break;
            }
            Some(pp) => p = pp,
            None => break,
        }
    }
    assert!(found, "child agent {} is a descendant of the hop agent {}", ci.pid, hi.pid);
    let r = child.exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]).expect("exec");
    assert_eq!((r.status.code, &r.stdout[..], &r.stderr[..]), (Some(3), &b"out\n"[..], &b"err\n"[..]));
    for _ in 0..1000 {
        child.ping().expect("ping");
    }
    drop(router);
    assert!(common::wait_gone(ci.pid, Duration::from_secs(5)).is_some(), "child agent gone with the router");
    assert!(!alive(hi.pid) || common::wait_gone(hi.pid, Duration::from_secs(5)).is_some());
}

/// Options for a local context whose agent runs in `cwd`: its stage0 shell
/// is a wrapper that changes there first. Through `/proc/self/cwd` one
/// absolute path then names a different file in each such context.
fn local_in_cwd(cache: &std::path::Path, cwd: &std::path::Path) -> mito::LocalOptions {
    std::fs::create_dir_all(cwd).expect("mkdir cwd");
    let sh = cwd.with_extension("sh");
    std::fs::write(&sh, format!("#!/bin/sh\ncd '{}' || exit 97\nexec /bin/sh \"$@\"\n", cwd.display())).expect("write");
    std::fs::set_permissions(&sh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    mito::LocalOptions { sh, ..local_in(cache) }
}

#[test]
fn one_file_to_many_contexts_behind_a_hop_crosses_the_hop_once() {
    let dir = TempDir::new("via-relay");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&dir.path().join("cache"))).expect("hop");
    // Each child in its own directory: the one destination path below is a
    // different file for each, so every target's copy is checked on its
    // own (one target's rename cannot stand in for another's).
    let cwds: Vec<_> = (0..4).map(|i| dir.path().join(format!("child-{i}"))).collect();
    let children: Vec<mito::Context> =
        cwds.iter().map(|cwd| hop.local(local_in_cwd(&dir.path().join("cache"), cwd)).expect("child")).collect();
    let src = dir.path().join("src.bin");
    let size = 24usize << 20;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &data).expect("write src");
    let sha = mito::core::sha256::digest(&data);
    // The counter counts: one plain put carries the whole file over the link.
    let before = hop.bytes_sent();
    children[0].put(&src, dir.path().join("single.bin")).expect("put");
    assert!(hop.bytes_sent() - before >= size as u64);
    let before = hop.bytes_sent();
    let ticks = std::sync::atomic::AtomicU64::new(0);
    let dest = "/proc/self/cwd/same-name.bin";
    let results = mito::put_many(&children, &src, dest, &|n| {
        ticks.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    });
    let crossed = hop.bytes_sent() - before;
    eprintln!("put_many: {crossed} bytes crossed the first link for 4 × {size} delivered");
    assert_eq!(ticks.into_inner(), size as u64, "progress counts each chunk once");
    assert!(
        crossed < size as u64 * 11 / 10,
        "{crossed} bytes crossed the hop's link for 4 × {size} bytes delivered: relayed once"
    );
    // Every target: its own result, its own file with the right bytes, and
    // its own agent's hash of that file.
    for ((c, r), cwd) in children.iter().zip(&results).zip(&cwds) {
        let s = r.as_ref().unwrap_or_else(|e| panic!("{}: {e}", c.name()));
        let xxh3 = mito::Digest::Xxh3_128(mito::core::xxh3::xxh3_128(&data).to_be_bytes());
        assert_eq!((s.bytes, s.checksum), (size as u64, xxh3), "{}", c.name());
        assert!(std::fs::read(cwd.join("same-name.bin")).expect("read") == data, "{}: content", c.name());
        assert_eq!(c.sha256(dest).expect("sha256"), sha, "{}", c.name());
    }
    assert!(!std::path::Path::new("same-name.bin").exists(), "resolved in the test's own cwd");
}

/// Waits for `p` and returns how long that took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = std::time::Instant::now();
    let r = f();
    (r, t0.elapsed())
}

#[test]
fn three_levels_deep_and_a_lost_hop_fails_what_is_behind_it_at_once() {
    let dir = TempDir::new("via-deep");
    let cache = dir.path().join("cache");
    let router = Router::new().expect("router");
    let a = router.local(local_in(&cache)).expect("a");
    let b = a.local(local_in(&cache)).expect("b through a");
    let c = b.local(local_in(&cache)).expect("c through b (a routes it with ADD_ROUTE)");
    let d = b.local(local_in(&cache)).expect("d, c's sibling");
    assert_eq!(c.exec(&["echo", "deep"]).expect("exec at depth 3").stdout, b"deep\n");
    let (bi, ci) = (b.info().expect("b").pid, c.info().expect("c").pid);
    d.ping().expect("d");

    // The deepest agent dies: its pending call fails at once (the hop
    // reports the lost route), its sibling and the hops carry on.
    let pending = common::pending_sleep(&c);
    common::kill9(ci);
    let (r, took) = timed(|| pending.wait());
    match r {
        Err(CallError::Disconnected { context, reason, .. }) => {
            assert_eq!(context, c.name());
            assert!(!reason.is_empty());
        }
        other => panic!("expected a disconnect, got {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "failed after {took:?}, not at once");
    assert!(matches!(c.ping(), Err(CallError::Disconnected { .. })));
    let reaped = common::wait_reaped(ci, Duration::from_secs(5));
    assert!(reaped.is_ok(), "c's agent {ci}, killed, reaped behind its hop: {reaped:?}");
    d.ping().expect("the sibling still answers");
    b.ping().expect("the hop still answers");

    // The middle hop dies: everything behind it is gone, the top stays.
    let pending = common::pending_sleep(&d);
    let di = d.info().expect("d's info while its hop lives").pid;
    common::kill9(bi);
    let (r, took) = timed(|| pending.wait());
    assert!(matches!(r, Err(CallError::Disconnected { .. })), "{r:?}");
    assert!(took < Duration::from_secs(5), "failed after {took:?}");
    assert!(common::wait_gone(di, Duration::from_secs(5)).is_some(), "d's agent {di} exits with its hop");
    a.ping().expect("the top still answers");
    let again = a.local(local_in(&cache)).expect("a can connect onward again");
    again.ping().expect("ping");
}

#[test]
fn sudo_and_su_through_a_hop_answer_their_prompts() {
    if !common::become_users("sudo_and_su_through_a_hop_answer_their_prompts") {
        return;
    }
    let router = Router::new().expect("router");
    // root → mito-sudoer (no prompt), then from there sudo to root, which asks.
    let hop = router.sudo(SudoOptions::new("mito-sudoer")).expect("sudo -u mito-sudoer");
    let mut o = SudoOptions::new("root");
    o.password = Some(PASSWORD.into());
    let root = hop.sudo(o).expect("sudo to root through the hop, password typed there");
    let i = root.info().expect("info");
    assert_eq!((i.user.as_str(), i.euid), ("root", 0));
    assert!(root.name().contains("sudo:mito-sudoer") && root.name().ends_with("sudo:root"), "{}", root.name());

    let mut o = SudoOptions::new("root");
    o.password = Some("wrong".into());
    o.connect_timeout = Duration::from_secs(20);
    match hop.sudo(o) {
        Err(ConnectError::Become { failure: BecomeFailure::WrongPassword, context, output, .. }) => {
            assert!(context.starts_with("sudo:mito-sudoer,"), "names the hop: {context}");
            assert!(!output.contains("wrong"), "the password is not echoed: {output}");
        }
        other => panic!("expected WrongPassword, got {other:?}"),
    }
    let mut o = SudoOptions::new("root");
    o.sudo_path = Some("/nonexistent/sudo".into());
    assert!(matches!(hop.sudo(o), Err(ConnectError::Become { failure: BecomeFailure::ToolMissing, .. })));

    // su reads the password on stdin (PAM's conversation): through the hop too.
    let mut o = SuOptions::new("mito-user");
    o.password = Some(PASSWORD.into());
    let user = hop.su(o).expect("su to mito-user through the hop");
    assert_eq!(user.info().expect("info").user, "mito-user");
    // The hop types it only once its agent has seen su at its prompt; a
    // wrong one is still su's own refusal.
    let mut o = SuOptions::new("mito-user");
    o.password = Some("wrong".into());
    o.connect_timeout = Duration::from_secs(20);
    match hop.su(o) {
        Err(ConnectError::Become { failure: BecomeFailure::WrongPassword, context, .. }) => {
            assert!(context.starts_with("sudo:mito-sudoer,"), "names the hop: {context}");
        }
        other => panic!("expected WrongPassword, got {other:?}"),
    }
    hop.ping().expect("the hop still answers after the failures");

    // A relayed put: root's copy lands, mito-user's is refused (typed, its own).
    let dir = TempDir::new("via-relay-perm");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let src = dir.path().join("src");
    std::fs::write(&src, vec![5u8; 3 << 20]).expect("write");
    let dst = dir.path().join("dst");
    let r = mito::put_many(&[root.clone(), user.clone()], &src, &dst, &|_| {});
    assert!(r[0].is_ok(), "{:?}", r[0]);
    match &r[1] {
        Err(e) => {
            assert!(e.to_string().contains("mito-user") || e.to_string().contains(&user.name().to_string()), "{e}")
        }
        Ok(_) => panic!("mito-user cannot write into a root 0755 directory"),
    }
    assert!(std::fs::read(&dst).expect("root's copy") == vec![5u8; 3 << 20], "root's copy has the source's bytes");
}

#[test]
fn ssh_then_sudo() {
    let Some(sshd) = common::sshd::Sshd::start("ssh_then_sudo") else { return };
    if !common::become_users("ssh_then_sudo") {
        return;
    }
    let router = Router::new().expect("router");
    let ssh = router.ssh(sshd.opts("mito-sudoer")).expect("ssh as mito-sudoer");
    let mut o = SudoOptions::new("root");
    o.password = Some(PASSWORD.into());
    let root = ssh.sudo(o).expect("ssh → sudo");
    let r = root.exec(&["id", "-u"]).expect("exec");
    assert_eq!(r.stdout, b"0\n");
    assert!(root.name().starts_with(ssh.name()), "{}", root.name());
    // Bulk data both ways through the chain.
    let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 253) as u8).collect();
    root.write_file("/root/mito-via-payload", &data, Some(0o600)).expect("write");
    assert_eq!(root.read_file("/root/mito-via-payload").expect("read"), data);
    root.remove("/root/mito-via-payload").expect("rm");
    let pid = root.info().expect("info").pid;
    drop(router);
    assert!(
        common::wait_gone(pid, Duration::from_secs(5)).is_some(),
        "the agent behind ssh → sudo exits with the master"
    );
}

#[test]
fn cli_chains_run_and_name_unknown_hops() {
    use std::process::Command;
    let mito = env!("CARGO_BIN_EXE_mito");
    let o = Command::new(mito)
        .args(["run", "-n", "local,local", "--", "sh", "-c", "echo via; exit 7"])
        .output()
        .expect("mito run");
    assert_eq!(o.status.code(), Some(7), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, b"via\n");

    let o = Command::new(mito).args(["run", "local,nosuch:x", "--", "true"]).output().expect("mito run");
    assert_eq!(o.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown target \"nosuch:x\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `mito put SRC T1:/p T2:/p T3:/p` through chains of depth 2 and 3. `/p`
/// goes through `/proc/self/cwd`, which is mito's own directory for the
/// plain local chain and, with `--login`, the user's home behind sudo and
/// su: three files, so each target's copy is checked on its own.
#[test]
fn cli_put_to_many_lands_in_every_target() {
    use std::process::Command;
    if !common::become_users("cli_put_to_many_lands_in_every_target") {
        return;
    }
    let dir = TempDir::new("via-cli");
    let src = dir.path().join("src");
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 241) as u8).collect();
    std::fs::write(&src, &data).expect("write");
    let name = format!("mito-via-cli-put-{}", std::process::id());
    let dst = format!("/proc/self/cwd/{name}");
    let targets = ["local,local", "local,sudo:mito-user", "local,local,su:mito-sudoer"];
    let o = Command::new(env!("CARGO_BIN_EXE_mito"))
        .current_dir(dir.path())
        .arg("--login")
        .arg("put")
        .arg(&src)
        .args(targets.iter().map(|t| format!("{t}:{dst}")))
        .output()
        .expect("mito put");
    let copies = [
        (dir.path().join(&name), 0),
        (std::path::Path::new("/home/mito-user").join(&name), uid_of("mito-user")),
        (std::path::Path::new("/home/mito-sudoer").join(&name), uid_of("mito-sudoer")),
    ];
    let got: Vec<_> = copies.iter().map(|(p, _)| (std::fs::read(p), std::fs::metadata(p))).collect();
    for (p, _) in &copies {
        let _ = std::fs::remove_file(p);
    }
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("xxh3-128 verified").count(), 3, "a line per target: {err}");
    for ((path, uid), (content, meta)) in copies.iter().zip(got) {
        let content = content.unwrap_or_else(|e| panic!("{}: {e}\n{err}", path.display()));
        assert!(content == data, "{}: {} bytes, not the source's", path.display(), content.len());
        let owner = std::os::unix::fs::MetadataExt::uid(&meta.expect("meta"));
        assert_eq!(owner, *uid, "{} written by its own target's user", path.display());
    }
}

/// The uid of a user, from /etc/passwd.
fn uid_of(user: &str) -> u32 {
    std::fs::read_to_string("/etc/passwd")
        .expect("passwd")
        .lines()
        .find_map(|l| {
            let f: Vec<_> = l.split(':').collect();
            (f.first() == Some(&user)).then(|| f.get(2)?.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no user {user}"))
}

#[test]
fn a_transfer_through_a_hop_fails_cleanly_when_its_context_dies() {
    let dir = TempDir::new("via-kill-transfer");
    let cache = dir.path().join("cache");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&cache)).expect("hop");
    let child = hop.local(local_in(&cache)).expect("child");
    let src = dir.path().join("big");
    std::fs::write(&src, vec![3u8; 256 << 20]).expect("write 256 MiB");
    let dst = dir.path().join("dst");
    let pid = child.info().expect("info").pid;
    // Killed from the progress callback once 16 MiB have moved: mid-transfer
    // whatever the machine's speed.
    let moved = std::sync::atomic::AtomicU64::new(0);
    let r = child.put_with_progress(&src, &dst, &|n| {
        if moved.fetch_add(n, std::sync::atomic::Ordering::Relaxed) < 16 << 20
            && moved.load(std::sync::atomic::Ordering::Relaxed) >= 16 << 20
        {
            common::kill9(pid);
        }
    });
    assert!(moved.into_inner() < 256 << 20, "the transfer stopped early");
    match r {
        Err(mito::TransferError::Remote(CallError::Disconnected { context, .. })) => {
            assert_eq!(context, child.name())
        }
        other => panic!("expected the transfer to fail with a disconnect, got {other:?}"),
    }
    assert!(!dst.exists(), "nothing under the final name");
    hop.ping().expect("the hop carries on");
    let again = hop.local(local_in(&cache)).expect("connect again through the hop");
    again.put(&src, &dst).expect("a new context behind the hop takes the file");
    assert_eq!(std::fs::metadata(&dst).expect("dst").len(), 256 << 20);
    // A context behind a hop shuts down on request; the hop stays.
    let pid = again.info().expect("info").pid;
    again.shutdown();
    let reaped = common::wait_reaped(pid, Duration::from_secs(5));
    assert!(reaped.is_ok(), "the agent {pid} behind the hop, shut down, reaped: {reaped:?}");
    assert!(matches!(again.ping(), Err(CallError::Disconnected { .. })));
    hop.ping().expect("the hop still answers");
}

#[test]
fn a_cold_start_behind_a_hop_gets_the_agent_from_the_hop() {
    let dir = TempDir::new("via-cold");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&dir.path().join("hop-cache"))).expect("hop");
    let before = hop.bytes_sent();
    // An empty cache: stage0 must store an agent before it can start one.
    let child = hop.local(local_in(&dir.path().join("cold-cache"))).expect("cold child");
    let crossed = hop.bytes_sent() - before;
    eprintln!("cold start behind a hop: {crossed} bytes crossed the first link");
    let info = child.connect_info();
    assert!(matches!(info.upload, mito::connect::bootstrap::Upload::Stored { gzip: false, .. }), "{:?}", info.upload);
    assert_eq!(info.agent_bytes_sent, 0, "the master sent no agent bytes");
    assert!(crossed < 16 << 10, "{crossed} bytes crossed the first link (the gzip agent alone is ~88 KiB)");
    assert_eq!(info.agent_hash, hop.connect_info().agent_hash);
    assert_eq!(child.exec(&["echo", "cold"]).expect("exec").stdout, b"cold\n");
    // Stored where stage0 verified it, so the next start there is warm.
    let warm = hop.local(local_in(&dir.path().join("cold-cache"))).expect("warm child");
    assert_eq!(warm.connect_info().upload, mito::connect::bootstrap::Upload::Cached);
}

/// Processes below `pid` (children, grandchildren…) named `comm`.
fn descendants_named(pid: u32, comm: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let name = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        let mut up = p;
        for _ in 0..8 {
            match common::parent_of(up) {
                Some(pp) if pp == pid => {
                    found.push(p);
                    break;
                }
                Some(pp) if pp > 1 => up = pp,
                _ => break,
            }
        }
    }
    found
}

/// The capacity of the pipe behind `/proc/PID/fd/FD`.
fn pipe_size(pid: u32, fd: u32) -> usize {
    use rustix::fs::{Mode, OFlags};
    let path = format!("/proc/{pid}/fd/{fd}");
    // Read-only and non-blocking: opening a pipe that way never waits
    // for a writer (and the size is the pipe's, whichever end).
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let f = rustix::fs::open(path.as_str(), flags, Mode::empty()).unwrap_or_else(|e| panic!("open {path}: {e}"));
    rustix::pipe::fcntl_getpipe_size(&f).unwrap_or_else(|e| panic!("F_GETPIPE_SZ {path}: {e}"))
}

#[test]
fn a_hop_grows_its_pipes_to_an_ssh_child() {
    // The master grows its pipes to ssh to a chunk (1 MiB); a hop must do
    // the same for its own ssh children, or every chunk of a put behind
    // it is sixteen 64 KiB writes and wake-ups. (A child agent grows its
    // own stdin/stdout, so the case that needs the hop is a transport in
    // between: the ssh client.)
    let Some(sshd) = common::sshd::Sshd::start("a_hop_grows_its_pipes_to_an_ssh_child") else { return };
    let dir = TempDir::new("via-pipes");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&dir.path().join("cache"))).expect("hop");
    let child = hop.ssh(sshd.opts("mito-user")).expect("ssh through the hop");
    assert_eq!(child.info().expect("child info").uid, uid_of("mito-user"));
    let hop_pid = hop.info().expect("hop info").pid;
    let ssh = descendants_named(hop_pid, "ssh");
    assert_eq!(ssh.len(), 1, "one ssh client below the hop: {ssh:?}");
    assert_eq!(pipe_size(ssh[0], 0), 1 << 20, "the hop's pipe into ssh");
    // ssh dups its stdin and stdout and puts /dev/null on fd 1: check
    // every pipe it holds but its stderr's (the hop reads that one for
    // messages only).
    let link = |fd: &str| std::fs::read_link(format!("/proc/{}/fd/{fd}", ssh[0])).ok();
    let stderr = link("2");
    let mut pipes = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{}/fd", ssh[0])).expect("fds").flatten() {
        let fd = e.file_name().to_string_lossy().into_owned();
        if let Some(l) = link(&fd).filter(|l| l.to_string_lossy().starts_with("pipe:") && Some(l) != stderr.as_ref()) {
            pipes.entry(l).or_insert(fd.parse::<u32>().expect("fd number"));
        }
    }
    assert_eq!(pipes.len(), 2, "the two pipes of the stream: {pipes:?}");
    for (l, fd) in &pipes {
        assert_eq!(pipe_size(ssh[0], *fd), 1 << 20, "ssh's fd {fd} ({l:?}): the stream between the hop and ssh");
    }
    // And a file still crosses both links intact.
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let src = dir.path().join("src");
    std::fs::write(&src, &data).expect("write");
    let remote = format!("/tmp/mito-via-pipes-{}", std::process::id());
    let st = child.put(&src, &remote).expect("put");
    assert_eq!(st.bytes, data.len() as u64);
    assert_eq!(child.read_file(&remote).expect("read back"), data);
    child.remove(&remote).expect("remove");
}

/// Bytes this process has read so far (`rchar`: every read and pread,
/// files and sockets alike).
fn bytes_read_here() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|v| v.trim().parse().ok()).expect("rchar")
}

#[test]
fn a_file_put_behind_a_hop_again_is_not_read_again_until_it_changes() {
    let dir = TempDir::new("via-rehash");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&dir.path().join("cache"))).expect("hop");
    let children: Vec<mito::Context> =
        (0..2).map(|_| hop.local(local_in(&dir.path().join("cache"))).expect("child")).collect();
    let size = 16usize << 20;
    let src = dir.path().join("src.bin");
    let data: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&src, &data).expect("write src");
    let dest = |i: usize| dir.path().join(format!("dest-{i}.bin"));
    children[0].put(&src, dest(0)).expect("first put");
    // The second put to another context behind the same hop: the hop has
    // the content cached and the master knows its digest, so the master
    // reads (almost) nothing: no hash of the file again.
    let before = bytes_read_here();
    children[1].put(&src, dest(1)).expect("second put");
    let read = bytes_read_here() - before;
    assert!(read < size as u64 / 4, "the second put read {read} bytes here for a {size}-byte file");
    assert!(std::fs::read(dest(1)).expect("read") == data);
    // Rewritten in place with the same size and its old mtime: the ctime
    // moved, so the file is hashed again and its new content goes.
    let mtime = std::fs::metadata(&src).expect("stat").modified().expect("mtime");
    let new: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&src, &new).expect("rewrite");
    std::fs::File::options().write(true).open(&src).expect("open").set_modified(mtime).expect("restore mtime");
    let before = bytes_read_here();
    let st = mito::Context::put_with_options(
        &children[1],
        &src,
        dest(1),
        &mito::CopyOptions { force: true, ..Default::default() },
        &|_| {},
    )
    .expect("third put");
    assert!(bytes_read_here() - before >= size as u64, "a changed file is read again");
    assert_eq!(st.bytes, size as u64);
    assert!(std::fs::read(dest(1)).expect("read") == new, "the new content arrived, not the cached one");
}

#[test]
fn put_many_compress_deflates_each_chunk_once_for_every_target() {
    let dir = TempDir::new("via-compress");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&dir.path().join("cache"))).expect("hop");
    let cwds: Vec<_> = (0..3).map(|i| dir.path().join(format!("child-{i}"))).collect();
    let mut targets: Vec<mito::Context> =
        cwds.iter().map(|cwd| hop.local(local_in_cwd(&dir.path().join("cache"), cwd)).expect("child")).collect();
    // And one direct target: a plain deflated call, not a relay.
    let direct_cwd = dir.path().join("direct");
    targets.push(router.local(local_in_cwd(&dir.path().join("cache"), &direct_cwd)).expect("direct"));
    // 6 MiB of log-like text: compresses well, in every chunk.
    let mut data = Vec::new();
    let mut i = 0u64;
    while data.len() < 6 << 20 {
        data.extend_from_slice(
            format!(
                "2026-11-28T13:{:02}:{:02} host{} sshd[{}]: session opened\n",
                i % 60,
                i % 59,
                i % 7,
                1000 + i % 97
            )
            .as_bytes(),
        );
        i += 1;
    }
    let src = dir.path().join("log.txt");
    std::fs::write(&src, &data).expect("write");
    let dest = "/proc/self/cwd/log.txt";
    let copy = mito::CopyOptions { compress: true, ..Default::default() };
    let (hop_before, direct_before) = (hop.bytes_sent(), targets[3].bytes_sent());
    let results = mito::put_many_with_options(&targets, &src, dest, &copy, &|_| {});
    let (via_hop, direct) = (hop.bytes_sent() - hop_before, targets[3].bytes_sent() - direct_before);
    eprintln!("put_many --compress: {via_hop} bytes to the hop for 3 targets, {direct} direct, of {} each", data.len());
    for (r, cwd) in results.iter().zip(cwds.iter().chain([&direct_cwd])) {
        let st = r.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(st.bytes, data.len() as u64);
        assert!(std::fs::read(cwd.join("log.txt")).expect("read") == data, "{}: content", cwd.display());
    }
    assert!(via_hop < data.len() as u64 / 4, "{via_hop} bytes crossed the hop's link for 3 targets");
    assert!(direct < data.len() as u64 / 4, "{direct} bytes went to the direct target");
}
