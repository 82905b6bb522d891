//! [`IoLogger`]: a pipe that replaced the agent's fd 1 or fd 2; its lines go
//! upstream as log records, so nothing written there can reach the protocol
//! stream.

use alloc::vec::Vec;
use rustix::fd::{AsFd, OwnedFd};

use crate::core::side::{self, Io};

/// Longest line forwarded whole; longer ones are cut into pieces this size.
pub const MAX_LINE: usize = 4096;

/// Reader of one replaced standard fd.
#[derive(Debug)]
pub struct IoLogger {
    /// Read end of the pipe.
    pub fd: OwnedFd,
    partial: Vec<u8>,
}

impl IoLogger {
    /// Wraps the read end of the pipe now behind fd 1 or 2.
    pub fn new(fd: OwnedFd) -> IoLogger {
        IoLogger { fd, partial: Vec::new() }
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
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            emit(&self.partial);
                            self.partial.clear();
                        } else {
                            self.partial.push(b);
                            if self.partial.len() >= MAX_LINE {
                                emit(&self.partial);
                                self.partial.clear();
                            }
                        }
                    }
                }
                Ok(Io::WouldBlock) => return true,
                Ok(Io::Closed) | Err(_) => {
                    if !self.partial.is_empty() {
                        emit(&self.partial);
                        self.partial.clear();
                    }
                    return false;
                }
            }
        }
        true
    }
}
