//! [`Outbox`]: everything the agent sends to its parent, and the
//! back-pressure that the parent's pace puts on what the agent reads.
//!
//! Every frame going up (replies, command output, logs, DEL_ROUTE, what
//! children send) is queued here and written as far as the parent fd takes
//! it; the loop waits for writability only while bytes remain. Nothing here
//! blocks but [`Outbox::say_goodbye`], on the way out.
//!
//! **Upstream back-pressure:** above [`TX_HIGH`] queued bytes the outbox
//! is *full* (until it drains below [`TX_LOW`]): the loop then stops
//! reading what would go up (command output, children's streams, the
//! IoLogger pipes), so a parent that does not drain us stops our sources,
//! not our memory. The opposite direction, a child that does not drain
//! what the parent sends it, is [`super::children`]'s.

use alloc::vec::Vec;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use serde::Serialize;
use serde_bytes::ByteBuf;

use super::token::Token;
use crate::core::poller::{Interest, Poller};
use crate::core::stream::TxBuffer;
use crate::proto::message::{goodbye_frame, Goodbye, LogLevel, LogRecord, LogSource};
use crate::proto::{handles, ErrorKind, Header, RemoteError, FLAG_ERROR, MASTER_ID};

/// Above this many queued bytes (towards the parent, or towards a child),
/// stop reading what fills the queue (back-pressure instead of memory
/// growth); resume below [`TX_LOW`].
pub const TX_HIGH: usize = 4 << 20;
/// See [`TX_HIGH`].
pub const TX_LOW: usize = 1 << 20;

/// The queue of frames to the parent.
pub struct Outbox {
    /// This agent's context id: the `src` and `auth` of what it sends.
    id: u32,
    /// The largest payload a frame may carry.
    max: u32,
    /// The parent stream's write side.
    fd: OwnedFd,
    queue: TxBuffer,
    /// Whether `fd` is registered for writability.
    watched: bool,
    /// Above the high mark: reads of what goes up are stopped.
    full: bool,
}

impl Outbox {
    /// An empty outbox for agent `id` writing to `fd`.
    pub fn new(fd: OwnedFd, id: u32, max: u32) -> Outbox {
        Outbox { id, max, fd, queue: TxBuffer::default(), watched: false, full: false }
    }

    /// The parent stream's write side.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// This agent's context id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The largest payload a frame may carry.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Whether the queue is above its mark: nothing that goes up should be
    /// read now (see the module docs).
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Re-evaluates [`Outbox::is_full`] against the marks; true when it
    /// changed.
    pub fn update_full(&mut self) -> bool {
        let full = if self.full { self.queue.len() > TX_LOW } else { self.queue.len() > TX_HIGH };
        let changed = full != self.full;
        self.full = full;
        changed
    }

    /// Queues a frame as it is (e.g. from a child, already stamped).
    pub fn push(&mut self, h: &Header, data: &[u8]) {
        self.queue.push(h, data);
    }

    /// Queues raw bytes (the hello's marker line and frame).
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.queue.push_raw(bytes);
    }

    /// A buffer to build a frame in (see [`TxBuffer::take_spare`]).
    pub fn take_spare(&mut self) -> Vec<u8> {
        self.queue.take_spare()
    }

    /// How many written large frames to keep for reuse (see
    /// [`TxBuffer::keep_spares`]): a window while a file is read out, one
    /// otherwise, so an idle agent does not hold a window of chunks.
    pub fn keep_spares(&mut self, n: usize) {
        self.queue.keep_spares(n);
    }

    /// Queues `value` from this agent to `dst`'s `handle`; a value too
    /// large for a frame becomes a `TooLarge` error to the same handle.
    ///
    /// Only the encoding is generic (one copy per type): the queueing is
    /// [`Outbox::send_encoded`], shared by every type (the agent's size).
    pub fn send<T: Serialize>(&mut self, dst: u32, handle: u32, flags: u16, value: &T) {
        self.send_encoded(dst, handle, flags, postcard::to_allocvec(value).ok());
    }

    /// [`Outbox::send`]'s non-generic half: queues `data` (the encoded
    /// value, `None` if it did not encode), or `TooLarge` in its place.
    #[inline(never)]
    fn send_encoded(&mut self, dst: u32, handle: u32, flags: u16, data: Option<Vec<u8>>) {
        let h = Header { flags, dst, src: self.id, auth: self.id, handle, ..Header::default() };
        match data {
            Some(data) if data.len() <= self.max as usize => self.queue.push(&h, &data),
            _ => {
                let e = RemoteError::new(ErrorKind::TooLarge, "reply exceeds the maximum message size");
                if let Ok(data) = postcard::to_allocvec(&e) {
                    self.queue.push(&Header { flags: FLAG_ERROR, ..h }, &data);
                }
            }
        }
    }

    /// Queues a log line for the master.
    pub fn log(&mut self, level: LogLevel, source: LogSource, line: &[u8]) {
        let rec = LogRecord { level, source, line: ByteBuf::from(line) };
        self.send(MASTER_ID, handles::FORWARD_LOG, 0, &rec);
    }

    /// Queues the error `e` in reply to `h` (nothing if `h` wants none).
    #[inline(never)]
    pub fn reply_error(&mut self, h: &Header, e: RemoteError) {
        if h.reply_to != 0 {
            self.send(h.src, h.reply_to, FLAG_ERROR, &e);
        }
    }

    /// Queues the result `r` in reply to `h` (nothing if `h` wants none).
    pub fn reply<T: Serialize>(&mut self, h: &Header, r: Result<T, RemoteError>) {
        if h.reply_to == 0 {
            return;
        }
        match r {
            Ok(v) => self.send(h.src, h.reply_to, 0, &v),
            Err(e) => self.reply_error(h, e),
        }
    }

    /// Queues a reply frame built in place, `(frame, offset)` (see
    /// `dispatch::bytes_frame`), or the error.
    pub fn reply_bytes(&mut self, h: &Header, frame: Result<(Vec<u8>, usize), RemoteError>) {
        if h.reply_to == 0 {
            return;
        }
        match frame {
            Ok((f, offset)) => self.queue.push_frame(f, offset),
            Err(e) => self.reply_error(h, e),
        }
    }

    /// No route to `h.dst`: the error goes back in its name, so the
    /// caller's mailbox (which expects a reply from `dst`) takes it.
    pub fn dead_route(&mut self, h: &Header) {
        if h.reply_to == 0 {
            return;
        }
        let e = RemoteError::new(ErrorKind::DeadRoute, "no route to context");
        if let Ok(data) = postcard::to_allocvec(&e) {
            let r = Header {
                flags: FLAG_ERROR,
                dst: h.src,
                src: h.dst,
                auth: self.id,
                handle: h.reply_to,
                ..Header::default()
            };
            self.queue.push(&r, &data);
        }
    }

    /// Writes what it can now.
    pub fn flush(&mut self, poller: &Poller) {
        // A parent that is gone is reported by the read side too.
        flush_to(poller, self.fd.as_fd(), Token::ParentTx, &mut self.queue, &mut self.watched);
        // With nothing left to write, the stream is between frames: a panic
        // may write its goodbye there.
        let fd = if self.queue.is_empty() { rustix::fd::AsRawFd::as_raw_fd(&self.fd) } else { -1 };
        super::panic_goodbye::set_parent_fd(fd);
    }

    /// The agent's last frame ([`Goodbye`]), then what is queued, for at
    /// most 1 s: the agent exits next.
    pub fn say_goodbye(&mut self, bye: Goodbye<'_>, poller: &Poller) {
        let mut buf = [0u8; 128];
        if let Some(n) = goodbye_frame(self.id, &bye, &mut buf) {
            self.queue.push_raw(&buf[..n]);
        }
        self.drain_before_exit(poller);
    }

    /// Best effort to send what is queued before exiting, for at most 1 s.
    fn drain_before_exit(&mut self, poller: &Poller) {
        use rustix::event::{poll, PollFd, PollFlags};
        for _ in 0..100 {
            self.flush(poller);
            if self.queue.is_empty() {
                return;
            }
            let mut fds = [PollFd::new(&self.fd, PollFlags::OUT)];
            let ts = rustix::event::Timespec { tv_sec: 0, tv_nsec: 10_000_000 };
            let _ = poll(&mut fds, Some(&ts));
        }
    }
}

/// Writes `out` to `fd` as far as it goes (dropping it when the peer is
/// gone) and waits for writability (`token`) only while bytes remain.
pub fn flush_to(poller: &Poller, fd: BorrowedFd<'_>, token: Token, out: &mut TxBuffer, watched: &mut bool) {
    if out.write_to(fd).is_err() {
        *out = TxBuffer::default();
    }
    let want = !out.is_empty();
    if want != *watched {
        *watched = want;
        let _ = poller.modify(fd, token.into(), if want { Interest::WRITE } else { Interest::NONE });
    }
}
