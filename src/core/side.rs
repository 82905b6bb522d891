//! One end of a stream: reads and writes on a non-blocking fd.
//!
//! mitogen's `io_op` rules live here so no caller repeats them: EINTR is
//! retried, EAGAIN means "not now", and EIO (a tty whose other end went
//! away), ECONNRESET and EPIPE (a socket or pipe whose peer died) mean
//! "disconnected", reported like end of file.

use rustix::fd::BorrowedFd;
use rustix::io::Errno;

/// What a stream's pipe is grown to (`F_SETPIPE_SZ`, within the system's
/// `pipe-max-size`): 1 MiB, a whole transfer chunk, where the kernel's
/// default of 64 KiB makes each chunk 16 writes and wake-ups (over the
/// loopback sshd, put and get went from 0.72-0.86x `ssh cat` to 0.9-1.06x
/// with the master's, a hop's and the agent's own pipes grown). The same
/// for the master's pipes to ssh and engines (`connect::child`), a hop's to
/// its children's transports (`agent::children`) and an agent's stdin and
/// stdout (`agent::stdio`).
pub const PIPE_SIZE: usize = 1 << 20;

/// How many pipes one process grows at most. A user's pipes share a soft
/// limit (`/proc/sys/fs/pipe-user-pages-soft`, 64 MiB by default); past it
/// every new pipe of that user, ours or a shell's, gets 8 KiB. 16 pipes
/// (the first 8 piped streams a process starts, ever: a simple bound, not
/// a count of live ones) take 16 MiB of it; later ones keep 64 KiB. Root
/// is not limited, but is bounded the same.
pub const MAX_GROWN_PIPES: usize = 16;

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
