//! One end of a stream: reads and writes on a non-blocking fd.
//!
//! mitogen's `io_op` rules live here so no caller repeats them: EINTR is
//! retried, EAGAIN means "not now", and EIO (a tty whose other end went
//! away), ECONNRESET and EPIPE (a socket or pipe whose peer died) mean
//! "disconnected", reported like end of file.

use rustix::fd::BorrowedFd;
use rustix::io::Errno;

/// Result of a read or write on a non-blocking fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// This many bytes were transferred (never 0).
    Done(usize),
    /// The fd is not ready; wait for readiness.
    WouldBlock,
    /// End of file, or the peer is gone.
    Closed,
}

/// Reads with `io_op` semantics from any fd.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Io, Errno> {
    loop {
        return match rustix::io::read(fd, &mut *buf) {
            Ok(0) => Ok(Io::Closed),
            Ok(n) => Ok(Io::Done(n)),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => Ok(Io::WouldBlock),
            Err(Errno::IO | Errno::CONNRESET | Errno::PIPE) => Ok(Io::Closed),
            Err(e) => Err(e),
        };
    }
}

/// Writes with `io_op` semantics to any fd.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<Io, Errno> {
    loop {
        return match rustix::io::write(fd, buf) {
            Ok(0) => Ok(Io::WouldBlock),
            Ok(n) => Ok(Io::Done(n)),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => Ok(Io::WouldBlock),
            Err(Errno::IO | Errno::CONNRESET | Errno::PIPE) => Ok(Io::Closed),
            Err(e) => Err(e),
        };
    }
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> Result<(), Errno> {
    use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
    let flags = fcntl_getfl(fd)?;
    let new = if on { flags | OFlags::NONBLOCK } else { flags - OFlags::NONBLOCK };
    if new != flags {
        fcntl_setfl(fd, new)?;
    }
    Ok(())
}
