//! [`StreamOut`]: the sending half of a stream, shared by the threads that
//! send and the broker that drains it; the counterpart of
//! [`StreamIn`](super::stream_in::StreamIn).
//!
//! A sender writes straight to the fd while nothing is queued (one
//! syscall, no thread hop); otherwise its bytes queue, the broker is asked
//! to watch the fd for room, and a sender past [`TX_HIGH`] waits — until
//! its own deadline, or until the stream has taken nothing for
//! [`SEND_TIMEOUT`]. No send waits for ever.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::core::stream::TxBuffer;
use crate::proto::Header;

/// Above this many queued bytes a sender waits (back-pressure).
pub const TX_HIGH: usize = 8 << 20;

/// A sender that gives no deadline of its own (`None`) waits for room in a
/// stream's queue until the stream has taken no byte for this long, then
/// fails ([`SendError::Timeout`]): no send waits for ever. A slow link that
/// keeps moving never hits it; a stalled one (a peer that stopped reading)
/// does. As long as the default call timeout, because behind a hop a live
/// but slow child may legitimately hold the hop's reads back for a while
/// (a child that stopped reading is dropped by its hop much sooner, see
/// `agent::children::STALL_MS`).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(600);

struct TxState {
    fd: Option<OwnedFd>,
    buf: TxBuffer,
    watching: bool,
    /// Bytes the broker has written from `buf` (progress, for
    /// [`SEND_TIMEOUT`]).
    written: u64,
}

/// Turns the broker's wait for writability of a tx fd on or off.
pub type WatchFn = Box<dyn Fn(std::os::fd::BorrowedFd<'_>, u64, bool) + Send + Sync>;

/// The sending half of a stream, shared by caller threads and the broker.
///
/// A caller writes straight to the fd when nothing is queued (one syscall,
/// no thread hop); otherwise bytes queue and the broker drains them when the
/// fd becomes writable.
pub struct StreamOut {
    state: Mutex<TxState>,
    drained: Condvar,
    /// Broker token of the tx fd.
    pub token: u64,
    watch: WatchFn,
    /// Bytes accepted for sending (headers included), for measurements.
    sent: AtomicU64,
}

impl std::fmt::Debug for StreamOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOut").field("token", &self.token).finish()
    }
}

/// Sending failed: the stream is closed (or the deadline passed while
/// back-pressured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The stream is closed.
    Closed,
    /// The peer did not drain the queue before the deadline.
    Timeout,
}

impl StreamOut {
    /// Wraps a non-blocking tx fd; `watch(token, on)` turns the broker's
    /// wait for writability on or off (always called under the queue lock).
    pub fn new(fd: OwnedFd, token: u64, watch: WatchFn) -> StreamOut {
        StreamOut {
            state: Mutex::new(TxState { fd: Some(fd), buf: TxBuffer::default(), watching: false, written: 0 }),
            drained: Condvar::new(),
            token,
            watch,
            sent: AtomicU64::new(0),
        }
    }

    /// Queues or writes one framed message. Above [`TX_HIGH`] queued bytes
    /// it first waits for room until `deadline`, or with `None` until the
    /// stream has taken nothing for [`SEND_TIMEOUT`].
    pub fn send(&self, header: &Header, payload: &[u8], deadline: Option<Instant>) -> Result<(), SendError> {
        self.send_inner(header, payload, Some(deadline))
    }

    /// Queues or writes one small control frame without waiting for room
    /// (see [`RouterTable::send_control`]).
    pub fn send_now(&self, header: &Header, payload: &[u8]) -> Result<(), SendError> {
        self.send_inner(header, payload, None)
    }

    /// `room`: wait for room until this deadline (see [`StreamOut::send`]);
    /// `None`: do not wait.
    fn send_inner(&self, header: &Header, payload: &[u8], room: Option<Option<Instant>>) -> Result<(), SendError> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut progress = (st.written, Instant::now());
        while let (Some(deadline), true) = (room, st.buf.len() > TX_HIGH) {
            if st.fd.is_none() {
                return Err(SendError::Closed);
            }
            let now = Instant::now();
            if st.written != progress.0 {
                progress = (st.written, now);
            }
            let d = deadline.unwrap_or(progress.1 + SEND_TIMEOUT);
            if now >= d {
                return Err(SendError::Timeout);
            }
            st = self.drained.wait_timeout(st, d - now).unwrap_or_else(PoisonError::into_inner).0;
        }
        let Some(fd) = &st.fd else { return Err(SendError::Closed) };
        let mut h = *header;
        h.len = payload.len() as u32;
        self.sent.fetch_add((crate::proto::HEADER_LEN + payload.len()) as u64, Ordering::Relaxed);
        if st.buf.is_empty() {
            let hb = h.encode();
            let total = hb.len() + payload.len();
            let mut done = 0;
            while done < total {
                let r = if done < hb.len() {
                    let bufs = [rustix::io::IoSlice::new(&hb[done..]), rustix::io::IoSlice::new(payload)];
                    rustix::io::writev(fd.as_fd(), &bufs)
                } else {
                    rustix::io::write(fd.as_fd(), &payload[done - hb.len()..])
                };
                match r {
                    Ok(n) if n > 0 => done += n,
                    Err(rustix::io::Errno::INTR) => {}
                    Ok(_) | Err(rustix::io::Errno::AGAIN) => break,
                    Err(_) => return Err(SendError::Closed),
                }
            }
            if done < hb.len() {
                st.buf.push_raw(&hb[done..]);
                st.buf.push_raw(payload);
            } else if done < total {
                st.buf.push_raw(&payload[done - hb.len()..]);
            }
        } else {
            st.buf.push(&h, payload);
        }
        if !st.buf.is_empty() && !st.watching {
            st.watching = true;
            if let Some(fd) = &st.fd {
                (self.watch)(fd.as_fd(), self.token, true);
            }
        }
        Ok(())
    }

    /// Bytes accepted for sending so far, headers included.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Broker side: the fd is writable; returns true when the queue is empty.
    pub fn on_writable(&self) -> Result<bool, SendError> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let st = &mut *st;
        let Some(fd) = &st.fd else { return Err(SendError::Closed) };
        let before = st.buf.len();
        st.buf.write_to(fd.as_fd()).map_err(|_| SendError::Closed)?;
        st.written += (before - st.buf.len()) as u64;
        if st.buf.len() <= TX_HIGH {
            self.drained.notify_all();
        }
        let empty = st.buf.is_empty();
        if empty && st.watching {
            st.watching = false;
            (self.watch)(fd.as_fd(), self.token, false);
        }
        Ok(empty)
    }

    /// Closes the fd (the peer sees EOF once the read side is closed too) and
    /// wakes any waiting sender.
    pub fn close(&self) -> Option<OwnedFd> {
        let fd = self.state.lock().unwrap_or_else(PoisonError::into_inner).fd.take();
        self.drained.notify_all();
        fd
    }
}
