//! [`ProcessMonitor`]: a spawned child tracked by pidfd, so its exit is an
//! epoll event for the Broker, it is always reaped (no zombies), and a
//! signal can never hit a recycled pid.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::process::{pidfd_open, pidfd_send_signal, waitid, Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal killed it.
    pub signal: Option<i32>,
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit status {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => f.write_str("unknown exit status"),
        }
    }
}

/// One child process of the master.
#[derive(Debug)]
pub struct ProcessMonitor {
    pid: u32,
    pidfd: OwnedFd,
    status: Option<ExitStatus>,
}

impl ProcessMonitor {
    /// Starts tracking our child `pid` (must not have been reaped yet).
    pub fn new(pid: u32) -> std::io::Result<ProcessMonitor> {
        let p = Pid::from_raw(pid as i32).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
        let pidfd = pidfd_open(p, PidfdFlags::empty())?;
        Ok(ProcessMonitor { pid, pidfd, status: None })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Readable once the child has exited.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Reaps the child if it has exited; returns its status from then on.
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) =
                waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED | WaitIdOptions::NOHANG)
            {
                self.status = Some(ExitStatus { code: st.exit_status(), signal: st.terminating_signal() });
            }
        }
        self.status
    }

    /// Waits (blocking) for the child and reaps it.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED) {
                self.status = Some(ExitStatus { code: st.exit_status(), signal: st.terminating_signal() });
            }
        }
        self.status
    }

    /// Sends SIGKILL unless it is already reaped.
    pub fn kill(&self) {
        if self.status.is_none() {
            let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
        }
    }
}
