//! Starting child processes from the agent with `posix_spawnp`.
//!
//! No fork in the agent: musl's posix_spawn uses `CLONE_VM|CLONE_VFORK`, so
//! starting a command costs no page-table copy. Each child gets its own
//! process group (so the agent can signal the whole command on shutdown) and
//! default SIGPIPE (the agent ignores it for itself). A pidfd reports its
//! exit to the agent's epoll loop: the agent's ProcessMonitor. With a pty
//! the child leads its own session instead, with the pty's terminal as its
//! controlling tty and fds 0–2.

use alloc::ffi::CString;
use alloc::vec::Vec;
use core::ptr;

use rustix::fd::{AsRawFd, FromRawFd, OwnedFd};
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};

extern "C" {
    static environ: *const *const libc::c_char;
}

/// A started child and our ends of its pipes.
#[derive(Debug)]
pub struct Child {
    /// Process id (also its process group id).
    pub pid: i32,
    /// Becomes readable when the child exits.
    pub pidfd: OwnedFd,
    /// Write end of its stdin, until all input is written.
    pub stdin: Option<OwnedFd>,
    /// Read end of its stdout, unless it inherited ours.
    pub stdout: Option<OwnedFd>,
    /// Read end of its stderr, unless it inherited ours (or runs on a pty).
    pub stderr: Option<OwnedFd>,
    /// Whether `stdin`/`stdout` are the two halves of a pty master.
    pub pty: bool,
    /// Whether `stderr` is the master of the command's controlling tty
    /// (hybrid: stdin/stdout are pipes).
    pub tty: bool,
}

/// The master side of a new pty and the path of its terminal.
fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, CString), Errno> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    set_winsize(&master, rows, cols);
    Ok((master, name))
}

/// Sets a pty's window size (the command gets SIGWINCH).
pub fn set_winsize(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let _ = rustix::termios::tcsetwinsize(master, ws);
}

/// What to run.
#[derive(Debug)]
pub struct Command<'a> {
    /// Program and arguments.
    pub argv: &'a [CString],
    /// Environment (full list of `KEY=VALUE`), or `None` for the agent's own.
    pub env: Option<&'a [CString]>,
    /// Working directory.
    pub cwd: Option<&'a CString>,
    /// Give the child pipes for stdout/stderr (else it inherits fds 1 and 2).
    pub capture: bool,
    /// Run on a new pty of `(rows, cols)` instead: its stdin, stdout and
    /// stderr are the terminal, and it leads a new session (so the terminal
    /// becomes its controlling tty, and ^C on it signals its job).
    pub pty: Option<(u16, u16)>,
    /// Hybrid: pipes for stdin/stdout, a new pty as stderr and controlling
    /// tty (where sudo, su and doas prompt). Implies `capture`.
    pub tty: bool,
}

struct Attrs {
    attr: libc::posix_spawnattr_t,
    actions: libc::posix_spawn_file_actions_t,
}

impl Drop for Attrs {
    fn drop(&mut self) {
        // SAFETY: both were initialised in `spawn` before an `Attrs` exists.
        unsafe {
            libc::posix_spawnattr_destroy(&mut self.attr);
            libc::posix_spawn_file_actions_destroy(&mut self.actions);
        }
    }
}

fn check(rc: libc::c_int) -> Result<(), Errno> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw_os_error(rc))
    }
}

/// Starts `cmd`. Errors are the errno of the failing step (ENOENT for a
/// missing program, as posix_spawnp reports it).
pub fn spawn(cmd: &Command<'_>) -> Result<Child, Errno> {
    if cmd.argv.is_empty() {
        return Err(Errno::INVAL);
    }
    if let Some((rows, cols)) = cmd.pty {
        let (master, tty) = open_pty(rows, cols)?;
        let input = rustix::io::fcntl_dupfd_cloexec(&master, 3)?;
        let (pid, pidfd) = spawn_with(cmd, true, &|actions| {
            // After setsid (musl applies attributes before file actions),
            // opening the terminal without O_NOCTTY makes it the controlling tty.
            // SAFETY: `actions` is initialised; the path outlives the call.
            unsafe {
                check(libc::posix_spawn_file_actions_addopen(actions, 0, tty.as_ptr(), libc::O_RDWR, 0))?;
                check(libc::posix_spawn_file_actions_adddup2(actions, 0, 1))?;
                check(libc::posix_spawn_file_actions_adddup2(actions, 0, 2))
            }
        })?;
        return Ok(Child { pid, pidfd, stdin: Some(input), stdout: Some(master), stderr: None, pty: true, tty: false });
    }
    if cmd.tty {
        let (master, tty) = open_pty(24, 80)?;
        let (stdin_r, stdin_w) = pipe_with(PipeFlags::CLOEXEC)?;
        let (out_r, out_w) = pipe_with(PipeFlags::CLOEXEC)?;
        let (pid, pidfd) = spawn_with(cmd, true, &|actions| {
            // SAFETY: `actions` is initialised; the fds and path outlive the call.
            // Opened after setsid without O_NOCTTY: the controlling tty.
            unsafe {
                check(libc::posix_spawn_file_actions_adddup2(actions, stdin_r.as_raw_fd(), 0))?;
                check(libc::posix_spawn_file_actions_adddup2(actions, out_w.as_raw_fd(), 1))?;
                check(libc::posix_spawn_file_actions_addopen(actions, 2, tty.as_ptr(), libc::O_RDWR, 0))
            }
        })?;
        drop((stdin_r, out_w));
        return Ok(Child {
            pid,
            pidfd,
            stdin: Some(stdin_w),
            stdout: Some(out_r),
            stderr: Some(master),
            pty: false,
            tty: true,
        });
    }
    let (stdin_r, stdin_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let (out_r, out_w) =
        if cmd.capture { pipe_with(PipeFlags::CLOEXEC).map(|(r, w)| (Some(r), Some(w)))? } else { (None, None) };
    let (err_r, err_w) =
        if cmd.capture { pipe_with(PipeFlags::CLOEXEC).map(|(r, w)| (Some(r), Some(w)))? } else { (None, None) };
    let (pid, pidfd) = spawn_with(cmd, false, &|actions| {
        // SAFETY: `actions` is initialised; the fds outlive the call.
        unsafe {
            check(libc::posix_spawn_file_actions_adddup2(actions, stdin_r.as_raw_fd(), 0))?;
            if let (Some(o), Some(e)) = (&out_w, &err_w) {
                check(libc::posix_spawn_file_actions_adddup2(actions, o.as_raw_fd(), 1))?;
                check(libc::posix_spawn_file_actions_adddup2(actions, e.as_raw_fd(), 2))?;
            }
        }
        Ok(())
    })?;
    drop((stdin_r, out_w, err_w));
    Ok(Child { pid, pidfd, stdin: Some(stdin_w), stdout: out_r, stderr: err_r, pty: false, tty: false })
}

/// posix_spawnp with the child in its own process group (or, with
/// `session`, its own session), every signal's default action, an empty signal mask, the
/// fd actions `fds` adds, and `cmd`'s cwd; then a pidfd for it. (`fds` is
/// a `dyn`: one copy of this function instead of one per caller.)
fn spawn_with(
    cmd: &Command<'_>,
    session: bool,
    fds: &dyn Fn(*mut libc::posix_spawn_file_actions_t) -> Result<(), Errno>,
) -> Result<(i32, OwnedFd), Errno> {
    let mut argv: Vec<*const libc::c_char> = cmd.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(ptr::null());
    let envp: Vec<*const libc::c_char>;
    let envp_ptr = match cmd.env {
        Some(env) => {
            envp = env.iter().map(|a| a.as_ptr()).chain(core::iter::once(ptr::null())).collect();
            envp.as_ptr()
        }
        // SAFETY: reading the process's environment pointer; the agent is single-threaded.
        None => unsafe { environ },
    };

    let mut pid: libc::pid_t = 0;
    // SAFETY: plain libc calls on zero-initialised, then initialised, structures;
    // every pointer handed over outlives the posix_spawnp call.
    unsafe {
        let mut a = Attrs { attr: core::mem::zeroed(), actions: core::mem::zeroed() };
        check(libc::posix_spawnattr_init(&mut a.attr))?;
        check(libc::posix_spawn_file_actions_init(&mut a.actions))?;
        // Every signal back to its default, not only SIGPIPE (which the
        // agent ignores): an agent started from a background job inherits
        // SIGINT and SIGQUIT ignored, and a shell cannot trap a signal
        // ignored on entry, so its commands would shrug off ^C where the
        // same command over ssh would not.
        let mut sigs: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut sigs);
        check(libc::posix_spawnattr_setsigdefault(&mut a.attr, &sigs))?;
        libc::sigemptyset(&mut sigs);
        check(libc::posix_spawnattr_setsigmask(&mut a.attr, &sigs))?;
        let group = if session {
            libc::POSIX_SPAWN_SETSID
        } else {
            check(libc::posix_spawnattr_setpgroup(&mut a.attr, 0))?;
            libc::POSIX_SPAWN_SETPGROUP as libc::c_short
        };
        let flags = (libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short | group;
        check(libc::posix_spawnattr_setflags(&mut a.attr, flags))?;
        fds(&mut a.actions)?;
        if let Some(cwd) = cmd.cwd {
            check(libc::posix_spawn_file_actions_addchdir_np(&mut a.actions, cwd.as_ptr()))?;
        }
        check(libc::posix_spawnp(
            &mut pid,
            cmd.argv[0].as_ptr(),
            &a.actions,
            &a.attr,
            argv.as_ptr() as *const *mut libc::c_char,
            envp_ptr as *const *mut libc::c_char,
        ))?;
    }
    // SAFETY: posix_spawnp succeeded, so `pid` is our child.
    let rpid = unsafe { rustix::process::Pid::from_raw_unchecked(pid) };
    match rustix::process::pidfd_open(rpid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Ok((pid, fd)),
        Err(e) => {
            // Without a pidfd we could not reap it from the loop: do not leave it running.
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, ptr::null_mut(), 0);
            }
            Err(e)
        }
    }
}

/// Writes all of `answer` (a password: a few bytes, which a pipe or a tty
/// takes at once) to a non-blocking `fd`, unless it is closed. For a tty,
/// the caller first waits until the program on the other side has turned
/// echo off (`core::tty::wait_for_echo_off`): PAM turns it off after
/// printing the prompt and flushes input typed before.
pub fn type_in(fd: &OwnedFd, answer: &[u8]) {
    let mut rest = answer;
    while !rest.is_empty() {
        match rustix::io::write(fd, rest) {
            Ok(n) if n > 0 => rest = &rest[n..],
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {
                let _ = rustix::thread::nanosleep(&rustix::thread::Timespec { tv_sec: 0, tv_nsec: 1_000_000 });
            }
            _ => break,
        }
    }
}

/// Kills a child's process group (used on shutdown).
pub fn kill_group(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals that process group.
    unsafe {
        libc::kill(-pid, sig);
    }
}

/// Makes an `OwnedFd` from a raw fd the caller owns.
///
/// # Safety
/// `fd` must be open and owned by nobody else.
pub unsafe fn owned(fd: i32) -> OwnedFd {
    OwnedFd::from_raw_fd(fd)
}

/// Starts this agent's own executable inside a container or a chroot as
/// `enter` says (`core::nsenter`: the same code the master runs for a
/// direct start), with `argv` (`mito-agent HASH ID`), the target's
/// environment (setns) or `own_env` (chroot) with `env` set on top, and
/// pipes as stdin, stdout and stderr. The child is ours (by pidfd) and
/// leads its own process group, like any command. Errors: the errno of the
/// failing step (EPERM: not root; ENOENT: no such process or directory;
/// ESRCH: the process is gone). The loop waits for the exec's report
/// (at most 30 s): the steps before it are system calls that do not wait,
/// so this is a fork's time, not a peer's.
pub fn spawn_entered(
    enter: &crate::proto::functions::Enter,
    argv: &[CString],
    env: &[(&[u8], &[u8])],
    own_env: impl FnOnce() -> Vec<Vec<u8>>,
) -> Result<Child, Errno> {
    use crate::core::nsenter;
    use rustix::fd::AsFd;
    let errno = |f: nsenter::Failure| Errno::from_raw_os_error(f.errno);
    let mut plan = nsenter::Plan::for_enter(enter).map_err(errno)?;
    let base = if enter.pid.is_some() { core::mem::take(&mut plan.env) } else { own_env() };
    let envp = nsenter::environment(base, env)?;
    // Read before any namespace is entered: the agent's file is outside.
    let exe = nsenter::memfd_of_own_exe()?;
    let (stdin_r, stdin_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let (out_r, out_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let (err_r, err_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let stdio = [stdin_r.as_fd(), out_w.as_fd(), err_w.as_fd()];
    let pid = nsenter::launch(&plan, exe.as_fd(), argv, &envp, stdio, 30_000).map_err(errno)?;
    drop((stdin_r, out_w, err_w));
    // SAFETY: `launch` returned our child's pid, not reaped yet.
    let rpid = unsafe { rustix::process::Pid::from_raw_unchecked(pid as i32) };
    let pidfd = match rustix::process::pidfd_open(rpid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
                libc::waitpid(pid as i32, ptr::null_mut(), 0);
            }
            return Err(e);
        }
    };
    Ok(Child {
        pid: pid as i32,
        pidfd,
        stdin: Some(stdin_w),
        stdout: Some(out_r),
        stderr: Some(err_r),
        pty: false,
        tty: false,
    })
}
