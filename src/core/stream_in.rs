//! [`StreamIn`]: the receiving half of a stream, read by the Broker or, while
//! a caller waits for a reply, by that caller itself.
//!
//! Why: a reply read by the broker reaches the caller only after a second
//! thread wake-up (broker, then caller). Over ssh that hop was a third of the
//! round trip. So a waiting caller may take the reader role: it polls the
//! fd itself and delivers every message it reads (its own reply and anyone
//! else's) through the routing table, exactly as the broker would.
//!
//! The handoff: the fd and decoder sit behind a mutex. A caller that takes
//! the role turns the broker's epoll interest off while it holds the lock
//! and back on before it lets go. The broker only `try_lock`s and skips the
//! event when it fails; its epoll is level-triggered, so data left unread
//! is reported again once the interest is back. Anything but data (end of
//! file, a bad frame) is left to the broker, which owns closing the stream.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use crate::core::router::RouterTable;
use crate::core::side::{self, Io};
use crate::core::stream::Decoder;
use crate::core::stream_out::WatchFn;

/// What one [`StreamIn::pump`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pump {
    /// Messages were read (and delivered); there may be more.
    Progress,
    /// Nothing to read now.
    Drained,
    /// End of file (`None`; EIO and ECONNRESET read the same, see
    /// [`side::read`]) or a read error (its errno): the stream must close.
    Closed(Option<i32>),
    /// A frame that does not decode: the stream must close.
    Malformed(String),
}

/// The reader's state: the fd and the decoder (`None` once closed).
#[derive(Debug)]
pub struct Reader {
    fd: OwnedFd,
    decoder: Decoder,
}

/// The receiving half of a stream.
pub struct StreamIn {
    reader: Mutex<Option<Reader>>,
    /// Broker token of the rx fd.
    pub token: u64,
    closed: AtomicBool,
    arm: WatchFn,
}

impl std::fmt::Debug for StreamIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamIn").field("token", &self.token).finish()
    }
}

/// The reader role, held; see [`StreamIn::take_reader`].
pub type ReaderGuard<'a> = MutexGuard<'a, Option<Reader>>;

impl StreamIn {
    /// Wraps a non-blocking rx fd and the decoder from the bootstrap;
    /// `arm(fd, token, on)` turns the broker's read interest on or off.
    pub fn new(fd: OwnedFd, decoder: Decoder, token: u64, arm: WatchFn) -> StreamIn {
        StreamIn { reader: Mutex::new(Some(Reader { fd, decoder })), token, closed: AtomicBool::new(false), arm }
    }

    fn try_lock(&self) -> Option<ReaderGuard<'_>> {
        match self.reader.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Broker side: the reader role if nobody holds it (else skip the event).
    pub fn broker_reader(&self) -> Option<ReaderGuard<'_>> {
        self.try_lock()
    }

    /// Caller side: takes the reader role if nobody holds it and the stream
    /// is open, turning the broker's interest off meanwhile.
    pub fn take_reader(&self) -> Option<ReaderGuard<'_>> {
        if self.is_closed() {
            return None;
        }
        let g = self.try_lock()?;
        let r = g.as_ref()?;
        (self.arm)(r.fd.as_fd(), self.token, false);
        Some(g)
    }

    /// Caller side: gives the role back, the broker's interest on again.
    pub fn release(&self, mut g: ReaderGuard<'_>) {
        if self.closed.load(Ordering::SeqCst) {
            // The broker closed the stream while we read: the fd goes now.
            g.take();
        } else if let Some(r) = g.as_ref() {
            (self.arm)(r.fd.as_fd(), self.token, true);
        }
    }

    /// Broker side: closes the stream (now, or when the current reader lets
    /// go). Returns the fd to deregister when closed now.
    pub fn close(&self) -> Option<OwnedFd> {
        self.closed.store(true, Ordering::SeqCst);
        self.try_lock().and_then(|mut g| g.take()).map(|r| r.fd)
    }

    /// True once [`StreamIn::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The fd, for registering with the broker's poller.
    pub fn with_fd<T>(&self, f: impl FnOnce(BorrowedFd<'_>) -> T) -> Option<T> {
        let g = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        g.as_ref().map(|r| f(r.fd.as_fd()))
    }

    /// Reads what is there (bounded) and delivers each message from `ctx`.
    /// `Drained` only when nothing was read: a caller reading for its
    /// own reply checks its latch after `Progress` but sleeps in
    /// [`StreamIn::wait_readable`] after `Drained`, so a reply delivered
    /// by a read that then found the pipe empty must not read as
    /// `Drained` (it cost every chunk of a `get` a 10 ms wait).
    pub fn pump(r: &mut Reader, table: &RouterTable, ctx: u32, name: &str) -> Pump {
        // A large body that starts in this pump is read into a buffer a
        // consumer handed back (`RouterTable::spares`); one not used goes
        // back, so no idle stream holds one (1,000 contexts must not keep
        // a chunk each).
        if let Some(v) = table.spares.take() {
            r.decoder.recycle(v);
        }
        let p = Self::pump_reads(r, table, ctx, name);
        if let Some(v) = r.decoder.take_spare() {
            table.spares.put(v);
        }
        p
    }

    fn pump_reads(r: &mut Reader, table: &RouterTable, ctx: u32, name: &str) -> Pump {
        let mut read = false;
        for _ in 0..16 {
            let rfd = r.fd.as_fd();
            match r.decoder.read_with(|b| side::read(rfd, b)) {
                Ok(Io::Done(n)) => {
                    let drained = n < r.decoder.last_offer();
                    r.decoder.filled(n);
                    read = true;
                    if let Some(p) = Self::drain(r, table, ctx, name) {
                        return p;
                    }
                    if drained {
                        return Pump::Progress;
                    }
                }
                Ok(Io::WouldBlock) if read => return Pump::Progress,
                Ok(Io::WouldBlock) => return Pump::Drained,
                Ok(Io::Closed) => return Pump::Closed(None),
                Err(e) => return Pump::Closed(Some(e.raw_os_error())),
            }
        }
        Pump::Progress
    }

    /// Delivers the messages already decoded; `Some` on a bad frame.
    pub fn drain(r: &mut Reader, table: &RouterTable, ctx: u32, name: &str) -> Option<Pump> {
        loop {
            match r.decoder.next_message() {
                Ok(Some(m)) => table.deliver(ctx, m),
                Ok(None) => return None,
                Err(e) => {
                    log::error!("[{name}] malformed frame ({e:?}); closing the stream");
                    return Some(Pump::Malformed(format!("malformed frame from the agent ({e:?})")));
                }
            }
        }
    }

    /// Caller side: waits up to `until` for the fd to become readable.
    pub fn wait_readable(r: &Reader, until: Instant) {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let left = until.saturating_duration_since(Instant::now()).min(Duration::from_millis(10));
        let ts = Timespec { tv_sec: 0, tv_nsec: left.as_nanos() as i64 };
        let mut fds = [PollFd::new(&r.fd, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&ts));
    }
}

impl Drop for StreamIn {
    fn drop(&mut self) {
        let _ = self.reader.get_mut().unwrap_or_else(PoisonError::into_inner).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stream::encode;
    use crate::proto::Header;

    /// A stream that reads only small messages hands the pool's buffer
    /// back after each pump: with a context per host, an idle stream
    /// holding a chunk each would be a chunk per host.
    #[test]
    fn a_pump_keeps_no_pool_buffer_it_did_not_use() {
        let table = RouterTable::new(1 << 20);
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        // Non-blocking to read, as the broker's streams are.
        rustix::io::ioctl_fionbio(&r, true).expect("FIONBIO");
        let mut reader = Reader { fd: r, decoder: Decoder::new(1 << 20) };
        table.spares.put(vec![0u8; 1 << 20]);
        let small = encode(&Header { dst: 0, handle: 12345, ..Header::default() }, b"hello");
        rustix::io::write(&w, &small).expect("write");
        let _ = StreamIn::pump(&mut reader, &table, 1, "test");
        assert!(table.spares.take().is_some_and(|v| v.capacity() >= 1 << 20), "the buffer is back in the pool");
        // A large body does use it, and the consumer hands it back itself.
        table.spares.put(vec![7u8; 1 << 20]);
        let big = encode(&Header { dst: 0, handle: 12345, ..Header::default() }, &vec![1u8; 300_000]);
        let written = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                rustix::io::write(&w, &big).expect("write");
                written.store(true, Ordering::SeqCst);
            });
            // Until everything written was read and delivered.
            loop {
                let done = written.load(Ordering::SeqCst);
                match StreamIn::pump(&mut reader, &table, 1, "test") {
                    Pump::Closed(e) => panic!("closed: {e:?}"),
                    Pump::Drained if done && reader.decoder.buffered() == 0 => break,
                    _ => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            }
        });
        assert!(table.spares.take().is_none(), "the large body took the pool's buffer");
    }
}
