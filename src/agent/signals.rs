//! The termination signals (SIGHUP, SIGINT, SIGTERM) as an fd the loop
//! watches: a hang-up or termination request ends the agent like losing
//! its parent does, after a goodbye that names the signal. A signalfd
//! instead of a handler: nothing races with `epoll_wait`, and the loop
//! stays the one place where the agent decides to exit.

use rustix::fd::OwnedFd;

/// Blocks SIGHUP, SIGINT and SIGTERM and returns a signalfd that reports
/// them to the loop (no handler races with `epoll_wait`). Children get an
/// empty mask back from posix_spawn.
pub fn termination_signals() -> Option<OwnedFd> {
    // SAFETY: plain libc calls on a local sigset; the agent is single-threaded.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, core::ptr::null_mut()) != 0 {
            return None;
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        (fd >= 0).then(|| super::spawn::owned(fd))
    }
}

/// The termination signal that arrived on `fd`, a signalfd from
/// [`termination_signals`] (0 if it cannot be read).
pub fn signal_number(fd: Option<&OwnedFd>) -> i32 {
    let Some(fd) = fd else { return 0 };
    // A signalfd_siginfo (128 bytes) starts with ssi_signo, a u32.
    let mut info = [0u8; 128];
    match rustix::io::read(fd, &mut info) {
        Ok(n) if n >= 4 => u32::from_le_bytes([info[0], info[1], info[2], info[3]]) as i32,
        _ => 0,
    }
}
