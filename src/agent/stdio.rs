//! The agent's own fds 0, 1 and 2: the protocol is moved off them at start
//! ([`take_over_stdio`]), and what anything writes to fd 1 or 2 afterwards
//! (the agent, or a command run with `Stdio::Log` that inherits them) goes
//! up as log records ([`Loggers`]), so nothing written there can reach the
//! protocol stream.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;

use super::iologger::IoLogger;
use super::outbox::Outbox;
use super::token::{Pipe, Token};
use crate::core::poller::{Interest, Poller};
use crate::core::side;
use crate::proto::message::{LogLevel, LogSource};

/// Moves the protocol off fds 0/1, points 0 at /dev/null and 1 and 2 at
/// IoLogger pipes, and returns the protocol's (rx, tx) and the loggers.
pub fn take_over_stdio() -> Result<(OwnedFd, OwnedFd, Loggers), Errno> {
    use rustix::io::fcntl_dupfd_cloexec;
    use rustix::pipe::{pipe_with, PipeFlags};
    // SAFETY: fds 0..2 are open for the agent's whole life (stage0 passed them).
    let (fd0, fd1) = unsafe { (BorrowedFd::borrow_raw(0), BorrowedFd::borrow_raw(1)) };
    let rx = fcntl_dupfd_cloexec(fd0, 3)?;
    let tx = fcntl_dupfd_cloexec(fd1, 3)?;
    // Pipes from sshd (or a hop) hold 64 KiB by default, 16 writes and
    // wake-ups per 1 MiB chunk: 1 MiB if the system allows it (best
    // effort: a socket, or a limit, leaves them as they are).
    let _ = rustix::pipe::fcntl_setpipe_size(&rx, crate::core::side::PIPE_SIZE);
    let _ = rustix::pipe::fcntl_setpipe_size(&tx, crate::core::side::PIPE_SIZE);
    // A container or chroot may have no /dev (setns, chroot): then an
    // empty pipe, whose reads end at once as /dev/null's do.
    let null = match rustix::fs::open("/dev/null", rustix::fs::OFlags::RDWR, rustix::fs::Mode::empty()) {
        Ok(fd) => fd,
        Err(_) => pipe_with(PipeFlags::CLOEXEC)?.0,
    };
    rustix::stdio::dup2_stdin(&null)?;
    let (out_r, out_w) = pipe_with(PipeFlags::CLOEXEC)?;
    let (err_r, err_w) = pipe_with(PipeFlags::CLOEXEC)?;
    rustix::stdio::dup2_stdout(&out_w)?;
    rustix::stdio::dup2_stderr(&err_w)?;
    side::set_nonblocking(out_r.as_fd(), true)?;
    side::set_nonblocking(err_r.as_fd(), true)?;
    Ok((rx, tx, Loggers([Some(IoLogger::new(out_r)), Some(IoLogger::new(err_r))])))
}

/// The readers of the pipes behind fd 1 and fd 2 (while they are open).
/// Lines from fd 1 go up at [`LogLevel::Info`], from fd 2 at
/// [`LogLevel::Warn`].
pub struct Loggers([Option<IoLogger>; 2]);

impl Loggers {
    /// Registers both pipes for reading.
    pub fn register(&self, poller: &Poller) -> Result<(), Errno> {
        for (i, l) in self.0.iter().enumerate() {
            if let Some(l) = l {
                poller.add(l.fd.as_fd(), Token::Log(Pipe::from_index(i)).into(), Interest::READ)?;
            }
        }
        Ok(())
    }

    /// Sends the complete lines waiting in `pipe` up; forgets the pipe once
    /// it is closed.
    pub fn pump(&mut self, pipe: Pipe, poller: &Poller, out: &mut Outbox) {
        let slot = &mut self.0[pipe as usize - 1];
        let Some(l) = slot else { return };
        let (source, level) = match pipe {
            Pipe::Stdout => (LogSource::Stdout, LogLevel::Info),
            Pipe::Stderr => (LogSource::Stderr, LogLevel::Warn),
        };
        if !l.pump(&mut |line| out.log(level, source, line)) {
            poller.delete(l.fd.as_fd());
            *slot = None;
        }
    }

    /// Reads the pipes or leaves them alone (the outbox is full): a line
    /// left in its pipe stops its writer.
    pub fn set_reading(&self, read: bool, poller: &Poller) {
        let i = if read { Interest::READ } else { Interest::NONE };
        for (n, l) in self.0.iter().enumerate() {
            if let Some(l) = l {
                let _ = poller.modify(l.fd.as_fd(), Token::Log(Pipe::from_index(n)).into(), i);
            }
        }
    }
}
