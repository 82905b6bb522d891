//! [`ProcessMonitor`]: a spawned child tracked by pidfd, so its exit is an
//! epoll event for the Broker, it is always reaped (no zombies), and a
//! signal can never hit a recycled pid.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use crate::core::wait::reap;

pub use crate::proto::ExitStatus;

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
            self.status = reap(self.pidfd.as_fd(), false);
        }
        self.status
    }

    /// Waits (blocking) for the child and reaps it.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = reap(self.pidfd.as_fd(), true);
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
