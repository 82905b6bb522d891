//! The local method through the library API: every built-in, pipelining,
//! the agent cache, and bad input from the caller.

mod common;

use std::time::{Duration, Instant};

use common::{local_in, TempDir};
use mito::connect::bootstrap::Upload;
use mito::functions::{ExecArgs, FileKind, Function};
use mito::{CallError, ErrorKind, LocalOptions, Router};
use serde_bytes::ByteBuf;

fn bb(s: &str) -> ByteBuf {
    ByteBuf::from(s.as_bytes())
}

#[test]
fn connect_ping_info() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    ctx.ping().expect("ping");
    let info = ctx.info().expect("info");
    assert_ne!(info.pid, std::process::id(), "the agent is another process");
    assert_eq!(info.pid, ctx.connect_info().pid);
    assert_eq!(info.ppid, std::process::id(), "stage0's sh exec'd the agent, so we are its parent");
    assert_eq!(info.uid, rustix::process::getuid().as_raw());
    assert_eq!(info.arch, std::env::consts::ARCH);
    assert!(!info.user.is_empty());
    assert_eq!(info.agent_hash, ctx.connect_info().agent_hash);
    assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!info.kernel.is_empty() && !info.hostname.is_empty());
    let status = ctx.shutdown().expect("we spawned it, so we have its status");
    assert_eq!(status.code, Some(0));
    // Exited and reaped: no /proc entry (a zombie would still have one).
    assert_eq!(common::proc_state(info.pid), common::ProcState::Gone, "shutdown reaped the agent: no zombie");
}

#[test]
fn exec_captures_output_status_env_cwd_stdin() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let r = ctx.exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]).expect("exec");
    assert_eq!((r.status.code, r.status.signal), (Some(3), None));
    assert_eq!(&r.stdout[..], b"out\n");
    assert_eq!(&r.stderr[..], b"err\n");

    let dir = TempDir::new("cwd");
    let args = ExecArgs {
        argv: vec![bb("sh"), bb("-c"), bb("pwd; echo $MITO_X; cat")],
        env: vec![(bb("MITO_X"), bb("hello"))],
        cwd: Some(ByteBuf::from(dir.path().as_os_str().as_encoded_bytes())),
        stdin: bb("from stdin"),
        ..ExecArgs::default()
    };
    let r = ctx.exec_with(&args).expect("exec");
    let want = format!("{}\nhello\nfrom stdin", dir.path().display());
    assert_eq!(String::from_utf8_lossy(&r.stdout), want);

    let args =
        ExecArgs { argv: vec![bb("env")], env_clear: true, env: vec![(bb("ONLY"), bb("1"))], ..ExecArgs::default() };
    let r = ctx.exec_with(&args).expect("exec");
    assert_eq!(&r.stdout[..], b"ONLY=1\n");

    let r = ctx.exec(&["sh", "-c", "kill -9 $$"]).expect("exec");
    assert_eq!((r.status.code, r.status.signal), (None, Some(9)));

    // A large stdin and stdout pass through the loop without deadlock.
    let big = vec![b'x'; 3 << 20];
    let args = ExecArgs { argv: vec![bb("cat")], stdin: ByteBuf::from(big.clone()), ..ExecArgs::default() };
    let r = ctx.exec_with(&args).expect("exec cat");
    assert_eq!(r.stdout.len(), big.len());

    let e = ctx.exec(&["/no/such/program"]).expect_err("missing program");
    let re = e.remote().expect("a remote error");
    assert_eq!((re.kind, re.errno), (ErrorKind::Os, libc::ENOENT));
    assert!(e.to_string().contains("/no/such/program"), "{e}");
    ctx.ping().expect("the agent keeps serving");
}

#[test]
fn exec_streams_output_as_it_arrives() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let args = ExecArgs {
        argv: vec![bb("sh"), bb("-c"), bb("echo one; sleep 0.5; echo two >&2; sleep 0.5; echo three")],
        ..ExecArgs::default()
    };
    let t0 = Instant::now();
    let mut seen: Vec<(u8, String, Duration)> = Vec::new();
    let r = ctx
        .exec_streaming(&args, |fd, data| seen.push((fd, String::from_utf8_lossy(data).into_owned(), t0.elapsed())))
        .expect("exec");
    assert_eq!(r.status.code, Some(0));
    assert!(r.stdout.is_empty(), "streamed output is not repeated in the reply");
    let text: Vec<(u8, &str)> = seen.iter().map(|(fd, s, _)| (*fd, s.as_str())).collect();
    assert_eq!(text, vec![(1, "one\n"), (2, "two\n"), (1, "three\n")]);
    assert!(seen[0].2 < Duration::from_millis(400), "first chunk arrived before the command ended: {:?}", seen[0].2);
}

#[test]
fn files_write_read_stat_remove() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let dir = TempDir::new("files");
    let p = dir.path().join("f.bin");
    let data: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    ctx.write_file(&p, &data, Some(0o640)).expect("write");
    assert_eq!(std::fs::read(&p).expect("local read"), data);
    assert_eq!(ctx.read_file(&p).expect("read"), data);
    let st = ctx.stat(&p).expect("stat");
    assert_eq!((st.kind, st.mode, st.size), (FileKind::File, 0o640, data.len() as u64));
    // Rewrite keeps the mode and leaves no temp file behind.
    ctx.write_file(&p, b"short", None).expect("rewrite");
    assert_eq!(ctx.stat(&p).expect("stat").mode, 0o640);
    let names: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("f.bin")]);

    std::os::unix::fs::symlink(&p, dir.path().join("link")).expect("symlink");
    assert_eq!(ctx.lstat(dir.path().join("link")).expect("lstat").kind, FileKind::Symlink);
    assert_eq!(ctx.stat(dir.path().join("link")).expect("stat").kind, FileKind::File);
    assert_eq!(ctx.stat(dir.path()).expect("stat dir").kind, FileKind::Dir);

    // /proc files say size 0 but have content: the size is only a hint.
    let version = ctx.read_file("/proc/version").expect("read /proc/version");
    assert_eq!(version, std::fs::read("/proc/version").expect("local read"));
    assert!(!version.is_empty());

    ctx.remove(&p).expect("remove");
    let e = ctx.read_file(&p).expect_err("gone");
    assert_eq!(e.remote().map(|r| (r.kind, r.errno)), Some((ErrorKind::Os, libc::ENOENT)), "{e}");
    let e = ctx.write_file(dir.path().join("missing/dir/f"), b"x", None).expect_err("no parent dir");
    assert_eq!(e.remote().map(|r| r.errno), Some(libc::ENOENT), "{e}");
    assert!(e.to_string().contains("local"), "error names the context: {e}");
    std::fs::create_dir(dir.path().join("d")).expect("mkdir");
    ctx.remove(dir.path().join("d")).expect("rmdir");
}

/// A function the agent does not have.
struct NoSuchFunction;
impl Function for NoSuchFunction {
    const NAME: &'static str = "no_such_function";
    type Args = ();
    type Reply = ();
}

/// `stat` called with the wrong argument type.
struct StatWithBadArgs;
impl Function for StatWithBadArgs {
    const NAME: &'static str = "stat";
    type Args = u8;
    type Reply = ();
}

#[test]
fn unknown_function_and_bad_args_are_typed_errors() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let e = ctx.call::<NoSuchFunction>(&()).expect_err("unknown");
    // The agent's UnknownFunction, typed by the master with the agent's hash.
    match &e {
        CallError::MissingFunction { context, function, agent_hash } => {
            assert_eq!(function, "no_such_function");
            assert_eq!(context, ctx.name());
            assert_eq!(agent_hash, &ctx.connect_info().agent_hash);
        }
        other => panic!("not MissingFunction: {other:?}"),
    }
    assert!(e.to_string().contains(&ctx.connect_info().agent_hash), "{e}");
    let e = ctx.call::<StatWithBadArgs>(&7).expect_err("bad args");
    assert_eq!(e.remote().map(|r| r.kind), Some(ErrorKind::BadArgs), "{e}");
    ctx.ping().expect("still serving");
}

#[test]
fn thousand_pipelined_calls() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let dir = TempDir::new("pipe");
    let pending: Vec<_> = (0..1000)
        .map(|i| {
            if i % 100 == 0 {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, i.to_string()).expect("write");
                (
                    Some(i),
                    None,
                    Some(
                        ctx.call_async::<mito::functions::ReadFile>(&mito::functions::PathArgs {
                            path: ByteBuf::from(p.as_os_str().as_encoded_bytes()),
                        })
                        .expect("send"),
                    ),
                )
            } else {
                (None, Some(ctx.call_async::<mito::functions::Ping>(&()).expect("send")), None)
            }
        })
        .collect();
    let mut n = 0;
    for (i, ping, read) in pending.into_iter().rev() {
        if let Some(p) = ping {
            p.wait().expect("reply");
        }
        if let (Some(i), Some(r)) = (i, read) {
            assert_eq!(r.wait().expect("reply").into_vec(), i.to_string().into_bytes(), "replies matched by handle");
        }
        n += 1;
    }
    assert_eq!(n, 1000);
    ctx.call_no_reply::<mito::functions::Ping>(&()).expect("no reply");
    ctx.ping().expect("ping");
}

#[test]
fn second_connect_sends_no_agent_bytes() {
    let cache = TempDir::new("cache");
    let router = Router::new().expect("router");
    let first = router.local(local_in(cache.path())).expect("connect 1");
    assert!(matches!(first.connect_info().upload, Upload::Stored { .. }), "{:?}", first.connect_info().upload);
    assert!(first.connect_info().agent_bytes_sent > 10_000);
    let cached = cache.path().join("mito").join(format!("agent-{}", first.connect_info().agent_hash));
    assert_eq!(first.connect_info().exe, cached.display().to_string());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(cache.path().join("mito")).expect("dir").permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "cache directory is private");
    let second = router.local(local_in(cache.path())).expect("connect 2");
    assert_eq!(second.connect_info().upload, Upload::Cached);
    assert_eq!(second.connect_info().agent_bytes_sent, 0);
    second.ping().expect("ping");
}

#[test]
fn corrupted_or_truncated_cache_is_replaced_not_executed() {
    let cache = TempDir::new("corrupt");
    let router = Router::new().expect("router");
    let ctx = router.local(local_in(cache.path())).expect("connect");
    let path = cache.path().join("mito").join(format!("agent-{}", ctx.connect_info().agent_hash));
    let good = std::fs::read(&path).expect("cached agent");
    ctx.shutdown();

    // Truncated: half the binary.
    std::fs::write(&path, &good[..good.len() / 2]).expect("truncate");
    let ctx = router.local(local_in(cache.path())).expect("connect after truncation");
    assert!(ctx.connect_info().agent_bytes_sent > 0, "re-uploaded");
    ctx.ping().expect("works");
    assert_eq!(std::fs::read(&path).expect("replaced"), good);
    ctx.shutdown();

    // Corrupted: one byte flipped, same size, still executable. A script
    // that would leave a mark if it ever ran proves it is not executed.
    let mark = cache.path().join("executed");
    let mut evil = format!("#!/bin/sh\ntouch {}\n", mark.display()).into_bytes();
    evil.resize(good.len(), b'#');
    std::fs::write(&path, &evil).expect("corrupt");
    let ctx = router.local(local_in(cache.path())).expect("connect after corruption");
    assert!(ctx.connect_info().agent_bytes_sent > 0);
    ctx.ping().expect("works");
    assert!(!mark.exists(), "the corrupted file was executed");
    assert_eq!(std::fs::read(&path).expect("replaced"), good);
}

#[test]
fn call_timeout_is_enforced() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let t0 = Instant::now();
    let e = ctx.with_timeout(Some(Duration::from_millis(300))).exec(&["sleep", "5"]).expect_err("times out");
    assert!(matches!(e, CallError::Timeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    ctx.ping().expect("context still usable");
}

/// Commands in a context get the user's umask, not stage0's private one.
#[test]
fn commands_keep_the_users_umask() {
    let ours = std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string()))
        .expect("Umask line");
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let r = ctx.exec(&["sh", "-c", "umask"]).expect("exec");
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), ours);
}

/// A master that blocks signals on the thread that connects (`mito run`
/// blocks HUP, INT, QUIT, TERM and WINCH to read them on a thread of its
/// own) starts the method's command with none blocked: a mask survives
/// exec, and an ssh or sudo started with SIGTERM blocked ignores it for
/// good. stage0's cold path runs `uname -m`; a `uname` first in the PATH
/// writes down the mask of its parent, the stage0 shell (a shell clears
/// the mask of the commands it forks, so the wrapper's own says nothing).
#[test]
fn the_method_command_starts_with_no_signal_blocked() {
    let dir = TempDir::new("sigmask");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let seen = dir.path().join("sigblk");
    let wrapper = bin.join("uname");
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let real = std::env::split_paths(&path).map(|d| d.join("uname")).find(|p| p.is_file()).expect("uname in PATH");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\ngrep SigBlk /proc/$PPID/status > '{}'\nexec '{}' \"$@\"\n", seen.display(), real.display()),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut opts = local_in(&dir.path().join("cache"));
    let mut dirs = vec![bin];
    dirs.extend(std::env::split_paths(&path));
    opts.env.push(("PATH".into(), std::env::join_paths(dirs).expect("PATH")));

    // Block what `mito run` blocks, on this thread only, around the connect.
    // SAFETY: plain sigset manipulation of this thread's own mask.
    let old = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGWINCH] {
            libc::sigaddset(&mut set, s);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    };
    let router = Router::new().expect("router");
    let ctx = router.local(opts);
    // SAFETY: restores this thread's mask as it was.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    ctx.expect("connect").ping().expect("ping");
    let line = std::fs::read_to_string(&seen).expect("the uname wrapper ran (cold path)");
    assert_eq!(line.split_whitespace().nth(1), Some("0000000000000000"), "stage0's shell had signals blocked: {line}");
}

/// The send buffer of each end of a local context's socketpair holds a
/// transfer chunk: 2 MiB (1 MiB doubled by the kernel) where the master
/// may exceed the system's maximum (root), else that maximum (doubled).
/// With the kernel's default (208 KiB) a local put went a quarter slower.
#[test]
fn a_local_contexts_socket_holds_a_chunk() {
    use std::os::fd::AsRawFd;
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let pid = ctx.info().expect("info").pid;
    let sockets: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the agent's fds")
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    assert!(!sockets.is_empty(), "the agent talks over a socketpair");
    let wmem_max: i32 = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("net.core.wmem_max");
    let want = if common::is_root() { 2 << 20 } else { 2 * wmem_max.min(1 << 20) };
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).expect("pidfd_open");
    for fd in sockets {
        let dup = rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
            .expect("pidfd_getfd (the agent is our child)");
        let (mut size, mut len): (libc::c_int, libc::socklen_t) = (0, 4);
        // SAFETY: a socket fd we own; `size` and `len` outlive the call.
        let r = unsafe {
            libc::getsockopt(
                dup.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut size as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "getsockopt");
        assert_eq!(size, want, "the agent's fd {fd}: its send buffer");
    }
}
