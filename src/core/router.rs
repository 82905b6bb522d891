//! The master's routing table: which stream leads to which context, which
//! handle (mailbox) waits for which reply, and what happens when a stream
//! dies.
//!
//! **Architecture invariant:** the router decides on the header alone; only
//! the mailbox owner decodes a payload. A message to a context with no route
//! gets a typed dead-route error back, never silence; a stream that dies
//! fails every mailbox waiting on that context at once.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::connect::process_monitor::ExitStatus;
use crate::core::broker::MAX_LOG_CHARS;
use crate::core::latch::Latch;
use crate::core::stream::TxBuffer;
use crate::proto::message::{LogRecord, LogSource};
use crate::proto::{handles, ErrorKind, Header, Message, RemoteError, FLAG_ERROR, MASTER_ID};

/// Above this many queued bytes a sender waits (back-pressure).
pub const TX_HIGH: usize = 8 << 20;

/// A sender that gives no deadline of its own (`None`) waits for room in a
/// stream's queue until the stream has taken no byte for this long, then
/// fails ([`SendError::Timeout`]): no send waits for ever. A slow link that
/// keeps moving never hits it; a stalled one (a peer that stopped reading)
/// does. As long as the default call timeout, because behind a hop a live
/// but slow child may legitimately hold the hop's reads back for a while
/// (a child that stopped reading is dropped by its hop much sooner, see
/// `agent::external_context::STALL_MS`).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(600);

/// Largest payload [`RouterTable::send_control`] takes (control frames are
/// a few bytes; anything larger is bulk and waits for room).
pub const CONTROL_MAX: usize = 4096;

/// Why a context can no longer be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnected {
    /// Human-readable reason ("agent exited with status 1", "stream closed", …).
    pub reason: String,
}

/// What a mailbox receives: a message, or the news that its context is gone.
pub type Delivery = Result<Message, Disconnected>;

/// A registered mailbox.
#[derive(Debug)]
struct Mailbox {
    ctx: u32,
    latch: Arc<Latch<Delivery>>,
    once: bool,
}

/// Per-context state shared by the Context handles, router and broker.
#[derive(Debug)]
pub struct ContextShared {
    /// Context id.
    pub id: u32,
    /// Name used in logs and errors.
    pub name: String,
    /// Set once the stream is gone.
    pub disconnected: Mutex<Option<Disconnected>>,
    /// Exit status of the process the master spawned for it, once reaped.
    pub exit: Mutex<Option<ExitStatus>>,
    /// Closed once the stream is gone and the process reaped.
    pub gone: Latch<()>,
    /// Moving average of recent call round trips (ns), to decide whether a
    /// waiter should spin (see [`Latch::get_spinning`]).
    pub rtt_avg_ns: AtomicU64,
    /// The stream's read half, which a waiting caller may read itself.
    pub rx: std::sync::OnceLock<Arc<crate::core::stream_in::StreamIn>>,
    /// The context this one was connected through (`None`: the master).
    pub parent: Option<Arc<ContextShared>>,
    /// Id of the context whose stream carries this one's messages: itself,
    /// or the first hop below the master on its path.
    pub stream_id: u32,
    /// For a context behind a hop: the hop's id and the stream handle of
    /// the command there that carries it (to kill it).
    pub transport: std::sync::OnceLock<(u32, u32)>,
}

impl ContextShared {
    /// New state for context `id`, attached to the master directly.
    pub fn new(id: u32, name: String) -> Self {
        ContextShared {
            id,
            name,
            disconnected: Mutex::new(None),
            exit: Mutex::new(None),
            gone: Latch::new(),
            rtt_avg_ns: AtomicU64::new(0),
            rx: std::sync::OnceLock::new(),
            parent: None,
            stream_id: id,
            transport: std::sync::OnceLock::new(),
        }
    }

    /// New state for context `id`, reached through `parent`.
    pub fn behind(id: u32, name: String, parent: Arc<ContextShared>) -> Self {
        let stream_id = parent.stream_id;
        let rx = std::sync::OnceLock::new();
        if let Some(r) = parent.rx.get() {
            let _ = rx.set(r.clone());
        }
        ContextShared { rx, parent: Some(parent), stream_id, ..ContextShared::new(id, name) }
    }

    /// The hops from the master down to this context, this one last.
    pub fn path(self: &Arc<Self>) -> Vec<Arc<ContextShared>> {
        let mut path = vec![self.clone()];
        while let Some(p) = path.last().and_then(|c| c.parent.clone()) {
            path.push(p);
        }
        path.reverse();
        path
    }

    /// Whether a waiter for a reply from this context should spin first:
    /// only while replies have been arriving within the spin window.
    pub fn spin_worthwhile(&self) -> bool {
        self.rtt_avg_ns.load(Ordering::Relaxed) < crate::core::latch::SPIN.as_nanos() as u64
    }

    /// Records one observed round trip.
    pub fn record_rtt(&self, rtt: std::time::Duration) {
        let ns = (rtt.as_nanos() as u64).min(1_000_000_000);
        let old = self.rtt_avg_ns.load(Ordering::Relaxed);
        self.rtt_avg_ns.store((old * 7 + ns) / 8, Ordering::Relaxed);
    }

    /// The disconnect reason, if disconnected.
    pub fn disconnected(&self) -> Option<Disconnected> {
        self.disconnected.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

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

/// The routing table of a master.
#[derive(Debug)]
pub struct RouterTable {
    next_handle: AtomicU32,
    next_context: AtomicU32,
    mailboxes: Mutex<HashMap<u32, Mailbox>>,
    routes: RwLock<HashMap<u32, Arc<StreamOut>>>,
    contexts: RwLock<HashMap<u32, Arc<ContextShared>>>,
    shut_down: AtomicBool,
    /// Largest payload accepted from an agent.
    pub max_message_size: u32,
}

impl RouterTable {
    /// An empty table.
    pub fn new(max_message_size: u32) -> Self {
        RouterTable {
            next_handle: AtomicU32::new(handles::FIRST_DYNAMIC),
            next_context: AtomicU32::new(1),
            mailboxes: Mutex::new(HashMap::new()),
            routes: RwLock::new(HashMap::new()),
            contexts: RwLock::new(HashMap::new()),
            shut_down: AtomicBool::new(false),
            max_message_size,
        }
    }

    /// A fresh context id.
    pub fn allocate_context_id(&self) -> u32 {
        self.next_context.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a context and the stream that leads to it.
    pub fn add_route(&self, ctx: Arc<ContextShared>, out: Arc<StreamOut>) {
        self.routes.write().unwrap_or_else(PoisonError::into_inner).insert(ctx.id, out);
        self.contexts.write().unwrap_or_else(PoisonError::into_inner).insert(ctx.id, ctx);
    }

    /// The shared state of context `id`, if known.
    pub fn context(&self, id: u32) -> Option<Arc<ContextShared>> {
        self.contexts.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    /// The stream that leads to context `id`.
    pub fn route(&self, id: u32) -> Option<Arc<StreamOut>> {
        self.routes.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    /// Ids of all contexts that still have a route.
    pub fn live_contexts(&self) -> Vec<u32> {
        self.routes.read().unwrap_or_else(PoisonError::into_inner).keys().copied().collect()
    }

    /// Opens a mailbox for messages from context `ctx`; `once`: removed
    /// after the first delivery (a reply).
    pub fn open_mailbox(&self, ctx: u32, once: bool) -> (u32, Arc<Latch<Delivery>>) {
        self.open_mailbox_into(ctx, once, Arc::new(Latch::new()))
    }

    /// Opens a mailbox that delivers into an existing latch (so one waiter
    /// can watch several handles, e.g. a reply and its output stream).
    pub fn open_mailbox_into(&self, ctx: u32, once: bool, latch: Arc<Latch<Delivery>>) -> (u32, Arc<Latch<Delivery>>) {
        let mut boxes = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner);
        // After 2^32 mailboxes the counter wraps: never into the fixed
        // handles, never onto a mailbox still open (a late reply for the
        // old one would land in the new one).
        let handle = loop {
            let h = self.next_handle.fetch_add(1, Ordering::Relaxed);
            if h >= handles::FIRST_DYNAMIC && !boxes.contains_key(&h) {
                break h;
            }
        };
        boxes.insert(handle, Mailbox { ctx, latch: latch.clone(), once });
        (handle, latch)
    }

    /// Closes a mailbox (late messages for it are dropped).
    pub fn close_mailbox(&self, handle: u32) {
        if let Some(m) = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner).remove(&handle) {
            m.latch.close();
        }
    }

    /// Sends `msg` towards its destination. While the stream's queue is
    /// full this waits for room until `deadline`; `None` is not "for ever"
    /// but until the stream has taken nothing for [`SEND_TIMEOUT`].
    pub fn send(&self, msg: &Message, deadline: Option<Instant>) -> Result<(), Disconnected> {
        self.send_parts(&msg.header, &msg.data, deadline)
    }

    /// [`RouterTable::send`] of a header and a payload the caller keeps (so
    /// a large buffer can be reused for the next message).
    pub fn send_parts(&self, header: &Header, payload: &[u8], deadline: Option<Instant>) -> Result<(), Disconnected> {
        self.send_via(header, |out| out.send(header, payload, deadline))
    }

    /// Sends a small control frame (a signal, output credit, end of stdin,
    /// a route) without waiting for room: it is queued even above
    /// [`TX_HIGH`], so it never blocks and is never lost to a full queue
    /// (a `Process` drop, a kill, an acknowledgement). Its size is the
    /// caller's promise: bulk data goes through [`RouterTable::send`].
    pub fn send_control(&self, msg: &Message) -> Result<(), Disconnected> {
        debug_assert!(msg.data.len() <= CONTROL_MAX, "send_control is for small frames");
        self.send_via(&msg.header, |out| out.send_now(&msg.header, &msg.data))
    }

    fn send_via(
        &self,
        header: &Header,
        send: impl FnOnce(&StreamOut) -> Result<(), SendError>,
    ) -> Result<(), Disconnected> {
        let dst = header.dst;
        let out = self.routes.read().unwrap_or_else(PoisonError::into_inner).get(&dst).cloned();
        let Some(out) = out else { return Err(self.why_unreachable(dst)) };
        send(&out).map_err(|e| match e {
            SendError::Closed => self.why_unreachable(dst),
            SendError::Timeout => {
                Disconnected { reason: "timed out waiting for room in the stream (the peer is not reading)".into() }
            }
        })
    }

    fn why_unreachable(&self, dst: u32) -> Disconnected {
        if self.shut_down.load(Ordering::Relaxed) {
            return Disconnected { reason: "the router was shut down".into() };
        }
        self.context(dst)
            .and_then(|c| c.disconnected())
            .unwrap_or_else(|| Disconnected { reason: format!("no route to context {dst}") })
    }

    /// A message arrived on the stream of context `stream`: from that
    /// context, or from one behind it (multi-hop), as `src` says. A `src`
    /// that is not behind that stream is dropped (hops check this too).
    pub fn deliver(&self, stream: u32, msg: Message) {
        let h = msg.header;
        let from = h.src;
        if from != stream && self.context(from).is_none_or(|c| c.stream_id != stream) {
            log::warn!("dropping a message from context {from} on the stream of context {stream}");
            return;
        }
        if h.dst != MASTER_ID {
            // Contexts may not reach each other through the master
            // (mitogen's unidirectional mode, on by default).
            return self.reply_error(from, &h, ErrorKind::NotPermitted, "routing between contexts is not allowed");
        }
        match h.handle {
            handles::FORWARD_LOG => return self.forward_log(from, &msg),
            handles::HELLO => return,
            handles::DEL_ROUTE => return self.del_route(stream, from, &msg),
            _ => {}
        }
        let mut boxes = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mb) = boxes.get(&h.handle) else {
            drop(boxes);
            log::debug!("dropping message from context {from} for closed handle {}", h.handle);
            return;
        };
        if mb.ctx != from {
            drop(boxes);
            log::warn!("dropping message from context {from} for handle {} of another context", h.handle);
            return;
        }
        let (latch, once) = (mb.latch.clone(), mb.once);
        if once {
            boxes.remove(&h.handle);
        }
        drop(boxes);
        if once {
            latch.put(Ok(msg));
        } else {
            // A mailbox that takes many messages (a command's output, its
            // stdin credit) may have a budget: charged by payload size.
            let size = msg.data.len();
            latch.put_charged(Ok(msg), size);
        }
    }

    /// A hop lost context `id` (payload) below it.
    fn del_route(&self, stream: u32, hop: u32, msg: &Message) {
        let Ok(id) = postcard::from_bytes::<u32>(&msg.data) else { return };
        let Some(c) = self.context(id) else { return };
        if c.stream_id != stream || id == stream {
            return;
        }
        let hop = self.context(hop).map(|h| h.name.clone()).unwrap_or_else(|| hop.to_string());
        self.on_disconnect(id, Disconnected { reason: format!("its connection through {hop} closed") });
    }

    fn reply_error(&self, to: u32, h: &Header, kind: ErrorKind, what: &str) {
        if h.reply_to == 0 {
            return;
        }
        let e = RemoteError::new(kind, what);
        if let Ok(data) = postcard::to_allocvec(&e) {
            let mut m = Message::new(to, MASTER_ID, h.reply_to, 0, data);
            m.header.flags = FLAG_ERROR;
            let _ = self.send(&m, Some(Instant::now()));
        }
    }

    fn forward_log(&self, from: u32, msg: &Message) {
        // An agent's lines are at most 4 KiB (its IoLogger cuts them): a
        // log frame that inflates past 64 KiB is a bomb, not a record.
        const MAX_LOG_RECORD: usize = 64 * 1024;
        let Some(rec) = msg.payload(MAX_LOG_RECORD).and_then(|p| postcard::from_bytes::<LogRecord>(&p).ok()) else {
            log::warn!("context {from} sent a malformed log record");
            return;
        };
        let name = self.context(from).map(|c| c.name.clone()).unwrap_or_else(|| from.to_string());
        let level = match rec.level {
            0 | 1 => log::Level::Error,
            2 => log::Level::Warn,
            3 => log::Level::Info,
            4 => log::Level::Debug,
            _ => log::Level::Trace,
        };
        let src = match rec.source {
            LogSource::Agent => "agent",
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
        };
        let line = crate::core::text::printable(&rec.line, MAX_LOG_CHARS);
        log::log!(target: "mito::remote", level, "[{name}] {src}: {line}");
    }

    /// Broker side: the stream to `ctx` is gone. Every mailbox waiting on it
    /// fails now.
    /// Contexts behind it (multi-hop) go with it.
    pub fn on_disconnect(&self, ctx: u32, reason: Disconnected) {
        let out = self.routes.write().unwrap_or_else(PoisonError::into_inner).remove(&ctx);
        let me = self.context(ctx);
        let direct = me.as_ref().is_none_or(|c| c.stream_id == c.id);
        if let (Some(out), true) = (out, direct) {
            // A hop's stream is shared by the contexts behind it: only a
            // directly attached context's own stream closes here.
            drop(out.close());
        }
        if let Some(c) = &me {
            let mut d = c.disconnected.lock().unwrap_or_else(PoisonError::into_inner);
            if d.is_none() {
                *d = Some(reason.clone());
            }
            drop(d);
            if !direct {
                // No process of ours to reap: gone with its route.
                c.gone.close();
            }
        }
        let below: Vec<u32> = self
            .contexts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|c| c.parent.as_ref().is_some_and(|p| p.id == ctx) && c.disconnected().is_none())
            .map(|c| c.id)
            .collect();
        if let Some(c) = &me {
            for id in below {
                let why = Disconnected { reason: format!("its hop {} is gone: {}", c.name, reason.reason) };
                self.on_disconnect(id, why);
            }
        }
        let failed: Vec<Arc<Latch<Delivery>>> = {
            let mut boxes = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner);
            let dead: Vec<u32> = boxes.iter().filter(|(_, m)| m.ctx == ctx).map(|(h, _)| *h).collect();
            dead.into_iter().filter_map(|h| boxes.remove(&h)).map(|m| m.latch).collect()
        };
        for l in failed {
            l.put(Err(reason.clone()));
            l.close();
        }
    }

    /// The master gives up on context `ctx`, which broke the protocol (a
    /// broken or hostile agent): as [`RouterTable::on_disconnect`], with
    /// the master's `reason`. Ending its process is the caller's part.
    pub fn give_up(&self, ctx: u32, reason: String) {
        self.on_disconnect(ctx, Disconnected { reason });
    }

    /// Marks the table as shut down (later sends say so).
    pub fn set_shut_down(&self) {
        self.shut_down.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_wrap_past_the_fixed_ones_and_open_mailboxes() {
        let t = RouterTable::new(1 << 20);
        let (kept, _) = t.open_mailbox(5, false);
        assert_eq!(kept, handles::FIRST_DYNAMIC);
        t.next_handle.store(u32::MAX - 1, Ordering::Relaxed);
        let got: Vec<u32> = (0..3).map(|_| t.open_mailbox(5, true).0).collect();
        // u32::MAX - 1, u32::MAX, then past 0..1000 and the open FIRST_DYNAMIC.
        assert_eq!(got, [u32::MAX - 1, u32::MAX, handles::FIRST_DYNAMIC + 1]);
    }
}
