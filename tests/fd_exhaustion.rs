//! A connect whose process bookkeeping fails leaves no zombie and says
//! why, typed:
//! - out of file descriptors: the spawn fails (the child's pipes) before
//!   there is a child; a spawn that got its fds frees its temporary ones,
//!   so the pidfd after it never hits the limit;
//! - `pidfd_open` refused (a kernel before 5.3, or a seccomp policy: here
//!   a seccomp filter on the test's thread answers ENOSYS): the child is
//!   already running, and is killed and reaped by pid (before: left a
//!   zombie for the life of the master).
//!
//! The tests take turns ([`SERIAL`]): one lowers `RLIMIT_NOFILE` and fills
//! the fd table, which would break a connect running beside it.

mod common;

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use mito::{ConnectError, LocalOptions, Router};

/// Waits up to 3 s for this process to have no children left (a child of
/// a failed connect may take a moment to exit); returns those still there.
fn children_left() -> Vec<(u32, char)> {
    let t0 = std::time::Instant::now();
    loop {
        let left = common::children_of(std::process::id());
        if left.is_empty() || t0.elapsed() > std::time::Duration::from_secs(3) {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_connect_out_of_fds_fails_typed_and_leaves_no_zombie() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = common::TempDir::new("fd-exhaustion");
    let router = Router::new().expect("router");
    // Warm the cache first, so every later attempt is one short bootstrap.
    router.local(common::local_in(cache.path())).expect("a first connect").shutdown();
    let limit = rustix::process::Rlimit { current: Some(256), maximum: None };
    let old = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { maximum: old.maximum, ..limit },
    )
    .expect("setrlimit");
    // Fill the table, then give back k fds at a time: each k fails at a
    // later step of the connect, until one succeeds.
    let mut hog: Vec<OwnedFd> = Vec::new();
    while let Ok(fd) = rustix::fs::open("/dev/null", rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()) {
        hog.push(fd);
    }
    assert!(hog.len() > 16, "the table fills ({} fds)", hog.len());
    let (mut spawn_errors, mut connected) = (0, false);
    for k in 0..32 {
        if k > 0 {
            hog.pop();
        }
        match router.local(LocalOptions { ..common::local_in(cache.path()) }) {
            Ok(ctx) => {
                ctx.ping().expect("ping");
                ctx.shutdown();
                connected = true;
                break;
            }
            Err(e @ ConnectError::Spawn { .. }) => {
                assert!(e.to_string().contains("Too many open files"), "k={k}: {e}");
                spawn_errors += 1;
            }
            Err(e) => panic!("k={k}: a spawn error or a connect, not {e:?}"),
        }
        assert_eq!(children_left(), vec![], "k={k}: a failed connect left a child (Z: a zombie)");
    }
    drop(hog);
    rustix::process::setrlimit(rustix::process::Resource::Nofile, old).expect("restore the limit");
    assert!(connected, "with fds given back, the connect succeeds");
    assert!(spawn_errors > 0, "some attempts failed at the spawn");
}

/// Makes `pidfd_open` fail with ENOSYS on this thread (and what it starts)
/// from now on, as on a kernel before 5.3: a classic BPF seccomp filter.
fn refuse_pidfd_open_on_this_thread() {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = [
        // seccomp_data.nr is at offset 0.
        insn(LD_W_ABS, 0, 0, 0),
        insn(JEQ_K, 0, 1, libc::SYS_pidfd_open as u32),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: plain prctl calls; `prog` and `filter` outlive them, and the
    // kernel copies the filter.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0, "no_new_privs");
        assert_eq!(
            libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The child runs, then `pidfd_open` on it fails: a typed error naming the
/// context, and the child is killed and reaped, not left a zombie.
#[test]
fn a_connect_whose_pidfd_fails_leaves_no_zombie() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = common::TempDir::new("pidfd-refused");
    let router = Router::new().expect("router");
    // The test runs on a thread of its own, which ends with it: the filter
    // stays there.
    refuse_pidfd_open_on_this_thread();
    for _ in 0..3 {
        let e = router.local(common::local_in(cache.path())).expect_err("no pidfd, no context");
        let text = e.to_string();
        assert!(matches!(e, ConnectError::Io { .. }), "{e:?}");
        assert!(text.contains("local") && text.contains("Function not implemented"), "{text}");
        assert_eq!(children_left(), vec![], "the failed connect left a child (Z: a zombie)");
    }
}
