//! Starting child processes from the agent with `posix_spawnp`.
//!
//! No fork in the agent: musl's posix_spawn uses `CLONE_VM|CLONE_VFORK`, so
//! starting a command costs no page-table copy. Each child gets its own
//! process group (so the agent can signal the whole command on shutdown) and
//! default SIGPIPE (the agent ignores it for itself). A pidfd reports its
//! exit to the agent's epoll loop: the agent's ProcessMonitor.

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
    /// Read end of its stderr, unless it inherited ours.
    pub stderr: Option<OwnedFd>,
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
    let (stdin_r, stdin_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let (out_r, out_w) =
        if cmd.capture { pipe_with(PipeFlags::CLOEXEC).map(|(r, w)| (Some(r), Some(w)))? } else { (None, None) };
    let (err_r, err_w) =
        if cmd.capture { pipe_with(PipeFlags::CLOEXEC).map(|(r, w)| (Some(r), Some(w)))? } else { (None, None) };

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
        let mut sigs: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut sigs);
        libc::sigaddset(&mut sigs, libc::SIGPIPE);
        check(libc::posix_spawnattr_setsigdefault(&mut a.attr, &sigs))?;
        libc::sigemptyset(&mut sigs);
        check(libc::posix_spawnattr_setsigmask(&mut a.attr, &sigs))?;
        check(libc::posix_spawnattr_setpgroup(&mut a.attr, 0))?;
        let flags = libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETPGROUP;
        check(libc::posix_spawnattr_setflags(&mut a.attr, flags as libc::c_short))?;
        check(libc::posix_spawn_file_actions_adddup2(&mut a.actions, stdin_r.as_raw_fd(), 0))?;
        if let (Some(o), Some(e)) = (&out_w, &err_w) {
            check(libc::posix_spawn_file_actions_adddup2(&mut a.actions, o.as_raw_fd(), 1))?;
            check(libc::posix_spawn_file_actions_adddup2(&mut a.actions, e.as_raw_fd(), 2))?;
        }
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
    drop((stdin_r, out_w, err_w));
    // SAFETY: posix_spawnp succeeded, so `pid` is our child.
    let rpid = unsafe { rustix::process::Pid::from_raw_unchecked(pid) };
    let pidfd = match rustix::process::pidfd_open(rpid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd we could not reap it from the loop: do not leave it running.
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, ptr::null_mut(), 0);
            }
            return Err(e);
        }
    };
    Ok(Child { pid, pidfd, stdin: Some(stdin_w), stdout: out_r, stderr: err_r })
}

/// Exit status of a finished child: `(code, signal)`; reaps it.
pub fn reap(pidfd: &OwnedFd) -> Option<(Option<i32>, Option<i32>)> {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    match waitid(WaitId::PidFd(rustix::fd::AsFd::as_fd(pidfd)), WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
        Ok(Some(st)) => Some((st.exit_status(), st.terminating_signal())),
        _ => None,
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
