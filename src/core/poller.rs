//! [`Poller`]: a thin layer over epoll (level-triggered), shared by the
//! master's Broker thread and the agent's single-threaded loop.
//!
//! Each registered fd carries a `u64` token chosen by the owner; readiness
//! comes back as [`Event`]s naming that token.

use alloc::vec::Vec;
use rustix::event::epoll;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;

/// Interest in readability and/or writability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    /// Wake when readable (or hung up).
    pub read: bool,
    /// Wake when writable.
    pub write: bool,
}

impl Interest {
    /// Readable only.
    pub const READ: Interest = Interest { read: true, write: false };
    /// Writable only.
    pub const WRITE: Interest = Interest { read: false, write: true };
    /// Both.
    pub const BOTH: Interest = Interest { read: true, write: true };
    /// Neither (registered but silent, e.g. while back-pressured).
    pub const NONE: Interest = Interest { read: false, write: false };

    fn flags(self) -> epoll::EventFlags {
        let mut f = epoll::EventFlags::empty();
        if self.read {
            f |= epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        }
        if self.write {
            f |= epoll::EventFlags::OUT;
        }
        f
    }
}

/// One readiness report.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// The token given at registration.
    pub token: u64,
    /// Readable, or end of file / hang-up / error pending (a read tells which).
    pub readable: bool,
    /// Writable, or error pending (a write tells which).
    pub writable: bool,
}

/// An epoll instance. Registration works from any thread; one thread waits.
#[derive(Debug)]
pub struct Poller {
    epfd: OwnedFd,
}

/// Buffer for the raw events of one [`Poller::wait`].
pub struct Events(Vec<epoll::Event>);

impl core::fmt::Debug for Events {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Events")
    }
}

impl Events {
    /// Room for `n` events per wait.
    pub fn with_capacity(n: usize) -> Events {
        Events(Vec::with_capacity(n))
    }
}

impl Poller {
    /// A new epoll instance (close-on-exec).
    pub fn new() -> Result<Poller, Errno> {
        Ok(Poller { epfd: epoll::create(epoll::CreateFlags::CLOEXEC)? })
    }

    /// Starts watching `fd`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> Result<(), Errno> {
        epoll::add(&self.epfd, fd, epoll::EventData::new_u64(token), interest.flags())
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> Result<(), Errno> {
        epoll::modify(&self.epfd, fd, epoll::EventData::new_u64(token), interest.flags())
    }

    /// Stops watching `fd` (errors ignored: the fd may already be closed).
    pub fn delete(&self, fd: BorrowedFd<'_>) {
        let _ = epoll::delete(&self.epfd, fd);
    }

    /// Waits up to `timeout_ms` (-1: forever) and appends events to `out`.
    pub fn wait(&self, timeout_ms: i32, buf: &mut Events, out: &mut Vec<Event>) -> Result<(), Errno> {
        buf.0.clear();
        let ts;
        let timeout = if timeout_ms < 0 {
            None
        } else {
            ts = rustix::event::Timespec {
                tv_sec: i64::from(timeout_ms / 1000),
                tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
            };
            Some(&ts)
        };
        match epoll::wait(&self.epfd, rustix::buffer::spare_capacity(&mut buf.0), timeout) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
        for e in &buf.0 {
            let flags = e.flags;
            let err = flags.intersects(epoll::EventFlags::ERR | epoll::EventFlags::HUP);
            out.push(Event {
                token: e.data.u64(),
                readable: err || flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::RDHUP),
                writable: err || flags.contains(epoll::EventFlags::OUT),
            });
        }
        Ok(())
    }

    /// The epoll fd itself.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.epfd.as_fd()
    }
}
