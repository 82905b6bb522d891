//! [`Waker`]: an eventfd that another thread writes to wake a poller.

use rustix::event::{eventfd, EventfdFlags};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;

/// Wakes a [`Poller`](super::poller::Poller) that watches [`Waker::fd`] for reading.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// A new, unsignalled waker.
    pub fn new() -> Result<Waker, Errno> {
        Ok(Waker { fd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)? })
    }

    /// Makes the fd readable (idempotent until [`Waker::reset`]).
    pub fn wake(&self) {
        // EAGAIN only when the counter is at its maximum: it is readable then.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Clears the signal; call after waking up.
    pub fn reset(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut b);
    }

    /// The eventfd, for registration.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
