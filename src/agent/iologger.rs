//! [`IoLogger`]: a pipe that replaced the agent's fd 1 or fd 2; its lines go
//! upstream as log records, so nothing written there can reach the protocol
//! stream.

use rustix::fd::{AsFd, OwnedFd};

use crate::core::lines::Lines;
use crate::core::side::{self, Io};

/// Longest line forwarded whole; longer ones are cut into pieces this size.
pub const MAX_LINE: usize = 4096;

/// Reader of one replaced standard fd.
#[derive(Debug)]
pub struct IoLogger {
    /// Read end of the pipe.
    pub fd: OwnedFd,
    lines: Lines,
}

impl IoLogger {
    /// Wraps the read end of the pipe now behind fd 1 or 2.
    pub fn new(fd: OwnedFd) -> IoLogger {
        IoLogger { fd, lines: Lines::new(MAX_LINE) }
    }

    /// Reads what is there (at most 64 KiB per call: the poller is
    /// level-triggered and calls again, so a writer that never stops cannot
    /// keep the agent here) and calls `emit` for each complete line.
    /// Returns false when the pipe is closed.
    pub fn pump(&mut self, emit: &mut dyn FnMut(&[u8])) -> bool {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match side::read(self.fd.as_fd(), &mut buf) {
                Ok(Io::Done(n)) => {
                    self.lines.extend(&buf[..n]);
                    while let Some(line) = self.lines.next_line() {
                        emit(line);
                    }
                }
                Ok(Io::WouldBlock) => return true,
                Ok(Io::Closed) | Err(_) => {
                    let rest = self.lines.finish();
                    if !rest.is_empty() {
                        emit(rest);
                    }
                    return false;
                }
            }
        }
        true
    }
}
