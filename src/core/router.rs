//! The master's routing table: which stream leads to which context, which
//! handle (mailbox) waits for which reply, and what happens when a stream
//! dies.
//!
//! **Architecture invariant:** the router decides on the header alone; only
//! the mailbox owner decodes a payload. A message to a context with no route
//! gets a typed dead-route error back, never silence; a stream that dies
//! fails every mailbox waiting on that context at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use crate::core::broker::MAX_LOG_CHARS;
use crate::core::latch::Latch;
use crate::core::process_monitor::ExitStatus;
use crate::core::stream_out::{SendError, StreamOut};
use crate::proto::message::{DelRoute, Goodbye, LinkEnd, LogRecord, LogSource};
use crate::proto::{handles, ErrorKind, Header, Message, RemoteError, FLAG_ERROR, MASTER_ID};

/// Largest payload [`RouterTable::send_control`] takes (control frames are
/// a few bytes; anything larger is bulk and waits for room).
pub const CONTROL_MAX: usize = 4096;

/// How a context ended, as far as the master can tell: the three things an
/// operator needs told apart, plus the master's own doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndKind {
    /// The agent exited on purpose and said why (its goodbye): its parent
    /// asked it to shut down, or a termination signal arrived.
    Exited,
    /// The agent died: it reported a panic or a fatal error, or it was
    /// killed by a signal (or exited) without a goodbye.
    Crashed,
    /// The link to it broke without a word from the agent (EOF, EIO on a
    /// tty, ECONNRESET, a malformed frame, its hop dropped it or is gone);
    /// the agent itself may live until it notices.
    Broken,
    /// The master closed it or gave up on it (the router was shut down, no
    /// route, a send that found no room in time).
    Closed,
}

/// Why a context can no longer be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnected {
    /// Which kind of end.
    pub kind: EndKind,
    /// Human-readable reason, for the context's errors ("the agent exited:
    /// shut down by its parent", "the agent was killed by signal 9
    /// (SIGKILL)", "the connection broke (EOF from ssh; ssh exited with
    /// status 255)", …).
    pub reason: String,
}

impl Disconnected {
    /// A reason of the given kind.
    pub fn new(kind: EndKind, reason: impl Into<String>) -> Self {
        Disconnected { kind, reason: reason.into() }
    }
}

/// What the master knows of the processes behind a context, to word how it
/// ended (set once its `Context` exists).
#[derive(Clone, Debug, Default)]
pub struct Carrier {
    /// The agent's pid, on its host (from its hello).
    pub agent_pid: u32,
    /// For a directly attached context: the local process that carries
    /// the stream, its pid and name (`ssh`, `sudo`, …).
    pub transport: Option<(u32, String)>,
    /// The transport is the agent itself (stage0 exec'd it in place, as
    /// for the local method): its death is the agent's.
    pub transport_is_agent: bool,
}

/// `9 (SIGKILL)`.
pub fn signal_text(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => format!("{sig} ({})", s.as_str()),
        Err(_) => sig.to_string(),
    }
}

/// `exited with status 1` / `was killed by signal 9 (SIGKILL)`.
fn status_text(st: ExitStatus) -> String {
    match (st.code, st.signal) {
        (_, Some(s)) => format!("was killed by signal {}", signal_text(s)),
        (Some(c), None) => format!("exited with status {c}"),
        (None, None) => "ended".into(),
    }
}

/// The agent's process ended without a goodbye (it carried its own
/// stream, so its end is the agent's).
fn agent_died(st: ExitStatus) -> Disconnected {
    let r = match (st.code, st.signal) {
        (Some(code), None) => format!("the agent exited with status {code} without saying why"),
        _ => format!("the agent {}", status_text(st)),
    };
    Disconnected::new(EndKind::Crashed, r)
}

/// The agent's own words (a target's text: escaped and cut).
fn goodbye_reason(bye: &Goodbye<'_>) -> Disconnected {
    let text = |s: &str, max: usize| crate::core::text::printable(s.as_bytes(), max);
    match *bye {
        Goodbye::Shutdown => Disconnected::new(EndKind::Exited, "the agent exited: shut down by its parent"),
        Goodbye::Signal(sig) => {
            Disconnected::new(EndKind::Exited, format!("the agent exited on signal {}", signal_text(sig)))
        }
        Goodbye::Fatal { what, errno } => {
            let mut r = format!("the agent crashed: {}", text(what, 200));
            if errno != 0 {
                r.push_str(&format!(": {}", std::io::Error::from_raw_os_error(errno)));
            }
            Disconnected::new(EndKind::Crashed, r)
        }
        Goodbye::Panic(what) => {
            let mut r = String::from("the agent crashed: it panicked");
            if !what.is_empty() {
                r.push_str(&format!(" ({})", text(what, 200)));
            }
            Disconnected::new(EndKind::Crashed, r)
        }
    }
}

/// A directly attached context whose stream or transport ended without a
/// goodbye: `eof` says how the stream ended (`Some(None)`: EOF, `Some(Some
/// (errno))`: a read error, `None`: still open), `status` how the
/// transport process ended (`None`: still running, or none).
pub fn link_ended(ctx: &ContextShared, eof: Option<Option<i32>>, status: Option<ExitStatus>) -> Disconnected {
    let carrier = ctx.carrier.get();
    let is_agent = carrier.is_some_and(|c| c.transport_is_agent);
    if let (true, Some(st)) = (is_agent, status) {
        return agent_died(st);
    }
    let who = match carrier {
        Some(c) if c.transport_is_agent => "the agent".to_string(),
        Some(Carrier { transport: Some((pid, name)), .. }) if name.is_empty() => format!("pid {pid}"),
        Some(Carrier { transport: Some((_, name)), .. }) => name.clone(),
        _ => "its transport".to_string(),
    };
    let how = match eof {
        Some(None) => Some(format!("EOF from {who}")),
        Some(Some(errno)) => Some(format!("{} reading from {who}", std::io::Error::from_raw_os_error(errno))),
        None => None,
    };
    let status = match status {
        Some(st) => Some(format!("{who} {}", status_text(st))),
        None if carrier.is_some_and(|c| c.transport.is_some()) => Some(format!("{who} is still running")),
        None => None,
    };
    let r = match (how, status) {
        (Some(how), Some(status)) => format!("{how}; {status}"),
        (Some(how), None) => how,
        (None, Some(status)) => format!("{status}; the stream stayed open"),
        (None, None) => "the stream stayed open".into(),
    };
    Disconnected::new(EndKind::Broken, format!("the connection broke ({r})"))
}

/// What a hop's DEL_ROUTE says, for context `c` lost below `hop`.
fn del_route_reason(c: &ContextShared, hop: &str, r: &DelRoute) -> Disconnected {
    let agent = c.carrier.get().map(|x| x.agent_pid);
    match (r.end, r.status) {
        (LinkEnd::Stalled, _) => {
            return Disconnected::new(
                EndKind::Broken,
                format!("the connection through {hop} broke: {hop} dropped it (it took nothing with its queue full)"),
            )
        }
        (LinkEnd::Behind(_) | LinkEnd::Malformed, _) => {}
        // stage0 exec'd the agent in the command's process: it died.
        (_, Some(st)) if r.pid != 0 && agent == Some(r.pid) => return agent_died(st),
        _ => {}
    }
    let how = match r.end {
        LinkEnd::Eof => "EOF from its command".to_string(),
        LinkEnd::ReadError(errno) => {
            format!("{} reading from its command", std::io::Error::from_raw_os_error(errno))
        }
        LinkEnd::Malformed => "it sent a malformed frame".to_string(),
        LinkEnd::CommandEnded => "its command ended, the stream stayed open".to_string(),
        LinkEnd::Behind(_) | LinkEnd::Stalled => "the context it was reached through is gone".to_string(),
    };
    let status = match (r.end, r.status) {
        (LinkEnd::Behind(_) | LinkEnd::Malformed, _) => String::new(),
        (_, Some(st)) => format!("; its command {}", status_text(st)),
        (_, None) => "; its command is still running".to_string(),
    };
    Disconnected::new(EndKind::Broken, format!("the connection through {hop} broke ({how}{status})"))
}

/// What a mailbox receives: a message, or the news that its context is gone.
pub type Delivery = Result<Message, Disconnected>;

/// The master's resource server (`master::resources`): takes a
/// GET_RESOURCE whose `src` the router has checked to be behind the stream
/// it came on, or refuses it with the error to reply. It must not block:
/// it runs on whichever thread reads the stream.
pub type ResourceHandler = Box<dyn Fn(&RouterTable, Message) -> Result<(), RemoteError> + Send + Sync>;

/// The [`ResourceHandler`] of a table, set once (when the first resource
/// is registered).
#[derive(Default)]
struct ResourceHook(std::sync::OnceLock<ResourceHandler>);

impl std::fmt::Debug for ResourceHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "ResourceHook(set)" } else { "ResourceHook(unset)" })
    }
}

/// Called after a delivery (a message, or the news that the context is
/// gone) was put into a mailbox's latch: the owner drains the latch there
/// instead of a thread of its own waiting on it (`master::via`'s monitor
/// of a context behind a hop). It runs on whichever thread delivered (the
/// broker's, or a caller reading the stream), never under the table's
/// locks, so it may use the table; it must not block.
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// A mailbox's [`Notify`], if it has one.
#[derive(Default)]
struct NotifyHook(Option<Notify>);

impl std::fmt::Debug for NotifyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "NotifyHook(set)" } else { "NotifyHook(unset)" })
    }
}

/// A registered mailbox.
#[derive(Debug)]
struct Mailbox {
    ctx: u32,
    latch: Arc<Latch<Delivery>>,
    once: bool,
    notify: NotifyHook,
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
    /// The agent's and its transport's pids, to word how it ended.
    pub carrier: std::sync::OnceLock<Carrier>,
    /// While the broker waits for the other half of its end (its stream
    /// closed, its process not yet reaped: see `broker::EXIT_WAIT`): what
    /// is known so far, for a send that finds the stream closed meanwhile.
    pub ending: Mutex<Option<Disconnected>>,
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
            carrier: std::sync::OnceLock::new(),
            ending: Mutex::new(None),
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

/// The routing table of a master.
#[derive(Debug)]
pub struct RouterTable {
    next_handle: AtomicU32,
    next_context: AtomicU32,
    mailboxes: Mutex<HashMap<u32, Mailbox>>,
    routes: RwLock<HashMap<u32, Arc<StreamOut>>>,
    contexts: RwLock<HashMap<u32, Arc<ContextShared>>>,
    shut_down: AtomicBool,
    /// Where GET_RESOURCE requests to the master go.
    resources: ResourceHook,
    /// Largest payload accepted from an agent.
    pub max_message_size: u32,
    /// Large message buffers handed back by their consumers, for the
    /// streams' decoders to read the next large bodies into.
    pub spares: BufferPool,
}

/// Large receive buffers passed from the threads that consume messages
/// back to the streams that read them.
///
/// A `get` receives a 1 MiB chunk per message; a fresh buffer for each
/// one cost a page fault and the kernel's zeroing per 4 KiB page, plus a
/// `memset`, because the allocator handed the freed chunks back to the
/// kernel (perf: 240,000 page faults per GiB fetched, and the get ran
/// at 0.95-1.0 GB/s). The decoders take from here when they have no
/// spare of their own; the consumer puts a buffer back once it is done
/// with it ([`BufferPool::put`]). Bounded by count and by size. Every
/// stream asks at every read, so an empty pool answers without its lock.
#[derive(Debug, Default)]
pub struct BufferPool {
    kept: Mutex<Vec<Vec<u8>>>,
    /// How many are kept (read without the lock).
    count: AtomicUsize,
}

impl BufferPool {
    /// Buffers kept at most (a transfer's window of chunks).
    pub const MAX_BUFFERS: usize = 8;
    /// Buffers larger than this are dropped rather than kept.
    pub const MAX_CAPACITY: usize = 2 << 20;
    /// Buffers smaller than this are not worth keeping.
    pub const MIN_CAPACITY: usize = 64 << 10;

    /// Keeps `v` for a later large body, if it is worth keeping and there
    /// is room.
    pub fn put(&self, v: Vec<u8>) {
        if !(Self::MIN_CAPACITY..=Self::MAX_CAPACITY).contains(&v.capacity()) {
            return;
        }
        let mut pool = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < Self::MAX_BUFFERS {
            pool.push(v);
            self.count.store(pool.len(), Ordering::Relaxed);
        }
    }

    /// A kept buffer, if any (its length is whatever it held: a decoder
    /// truncates it, which costs nothing, instead of zeroing it again).
    pub fn take(&self) -> Option<Vec<u8>> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut pool = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let v = pool.pop();
        self.count.store(pool.len(), Ordering::Relaxed);
        v
    }

    /// Frees all but `keep` buffers (a transfer ended: an idle master
    /// does not hold its window of chunks).
    pub fn trim(&self, keep: usize) {
        let mut pool = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        pool.truncate(keep);
        self.count.store(pool.len(), Ordering::Relaxed);
    }
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
            resources: ResourceHook::default(),
            max_message_size,
            spares: BufferPool::default(),
        }
    }

    /// Sets the handler of GET_RESOURCE requests to the master (once;
    /// false if one was set already). Without one, every request is
    /// refused.
    pub fn set_resource_handler(&self, handler: ResourceHandler) -> bool {
        self.resources.0.set(handler).is_ok()
    }

    /// A fresh context id.
    pub fn allocate_context_id(&self) -> u32 {
        self.next_context.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a context and the stream that leads to it.
    pub fn add_route(&self, ctx: Arc<ContextShared>, out: Arc<StreamOut>) {
        self.routes.write().unwrap_or_else(PoisonError::into_inner).insert(ctx.id, out);
        let mut contexts = self.contexts.write().unwrap_or_else(PoisonError::into_inner);
        // A master that makes thousands of contexts over its life keeps
        // only the live ones (and those still ending): a context that is
        // disconnected and reaped needs no entry, since its `Context`
        // handles keep their own state and reason.
        contexts.retain(|_, c| c.disconnected().is_none() || !c.gone.is_closed());
        contexts.insert(ctx.id, ctx);
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
        boxes.insert(handle, Mailbox { ctx, latch: latch.clone(), once, notify: NotifyHook::default() });
        (handle, latch)
    }

    /// Has `notify` called after every delivery into mailbox `handle` from
    /// now on (see [`Notify`]); false if the mailbox is closed. What was
    /// queued before is the caller's to drain after this returns.
    pub fn set_notify(&self, handle: u32, notify: Notify) -> bool {
        let mut boxes = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner);
        match boxes.get_mut(&handle) {
            Some(m) => {
                m.notify = NotifyHook(Some(notify));
                true
            }
            None => false,
        }
    }

    /// Closes a mailbox (late messages for it are dropped).
    pub fn close_mailbox(&self, handle: u32) {
        // Dropped after the lock: its notify may own what closes mailboxes.
        let m = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner).remove(&handle);
        if let Some(m) = m {
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
                Disconnected::new(EndKind::Closed, "timed out waiting for room in the stream (the peer is not reading)")
            }
        })
    }

    fn why_unreachable(&self, dst: u32) -> Disconnected {
        if self.shut_down.load(Ordering::Relaxed) {
            return Disconnected::new(EndKind::Closed, "the router was shut down");
        }
        self.context(dst)
            .and_then(|c| c.disconnected().or_else(|| c.ending.lock().unwrap_or_else(PoisonError::into_inner).clone()))
            .unwrap_or_else(|| Disconnected::new(EndKind::Closed, format!("no route to context {dst}")))
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
            handles::GOODBYE => return self.goodbye(from, &msg),
            handles::GET_RESOURCE => return self.get_resource(from, msg),
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
        let (latch, once, notify) = (mb.latch.clone(), mb.once, mb.notify.0.clone());
        // Dropped after the lock: its notify may own what closes mailboxes.
        let removed = if once { boxes.remove(&h.handle) } else { None };
        drop(boxes);
        drop(removed);
        if once {
            latch.put(Ok(msg));
        } else {
            // A mailbox that takes many messages (a command's output, its
            // stdin credit) may have a budget: charged by payload size.
            let size = msg.data.len();
            latch.put_charged(Ok(msg), size);
        }
        if let Some(n) = notify {
            n();
        }
    }

    /// A hop lost a context below it (payload: [`DelRoute`]). Only a hop
    /// on the context's own path may say so.
    fn del_route(&self, stream: u32, hop: u32, msg: &Message) {
        let Some(r) = msg.payload(CONTROL_MAX).and_then(|p| postcard::from_bytes::<DelRoute>(&p).ok()) else {
            return;
        };
        let Some(c) = self.context(r.id) else { return };
        if c.stream_id != stream || r.id == stream || r.id == hop {
            return;
        }
        let Some(hop) = c.path().into_iter().find(|h| h.id == hop) else { return };
        self.on_disconnect(r.id, del_route_reason(&c, &hop.name, &r));
    }

    /// Context `from` says it is exiting, and why: its pending calls fail
    /// now with its own reason, which the end of its stream (or its hop's
    /// DEL_ROUTE) that follows does not replace.
    fn goodbye(&self, from: u32, msg: &Message) {
        let Some(p) = msg.payload(CONTROL_MAX) else { return };
        let Ok(bye) = postcard::from_bytes::<Goodbye<'_>>(&p) else {
            log::warn!("context {from} sent a malformed goodbye");
            return;
        };
        let why = goodbye_reason(&bye);
        let name = self.context(from).map(|c| c.name.clone()).unwrap_or_else(|| from.to_string());
        log::debug!("[{name}] goodbye: {}", why.reason);
        self.on_disconnect(from, why);
    }

    /// A context asks the master for a chunk of a resource: the resource
    /// server checks its grant and serves it, or it is refused here.
    fn get_resource(&self, from: u32, msg: Message) {
        let h = msg.header;
        let r = match self.resources.0.get() {
            Some(handler) => handler(self, msg),
            None => Err(RemoteError::new(ErrorKind::NotPermitted, "no resource is registered")),
        };
        if let Err(e) = r {
            self.reply_error(from, &h, e.kind, &e.message);
        }
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
        use crate::proto::message::LogLevel;
        let level = match rec.level {
            LogLevel::Error => log::Level::Error,
            LogLevel::Warn => log::Level::Warn,
            LogLevel::Info => log::Level::Info,
            LogLevel::Debug => log::Level::Debug,
            LogLevel::Trace => log::Level::Trace,
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
        let me = self.context(ctx);
        if let Some(c) = &me {
            // The reason first: a send that finds the route gone or the
            // stream closed reads it (see `why_unreachable`).
            let mut d = c.disconnected.lock().unwrap_or_else(PoisonError::into_inner);
            if d.is_none() {
                *d = Some(reason.clone());
            }
        }
        let out = self.routes.write().unwrap_or_else(PoisonError::into_inner).remove(&ctx);
        let direct = me.as_ref().is_none_or(|c| c.stream_id == c.id);
        if let (Some(out), true) = (out, direct) {
            // A hop's stream is shared by the contexts behind it: only a
            // directly attached context's own stream closes here.
            drop(out.close());
        }
        if let (Some(c), false) = (&me, direct) {
            // No process of ours to reap: gone with its route.
            c.gone.close();
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
                let why = format!("the connection broke: its hop {} is gone ({})", c.name, reason.reason);
                self.on_disconnect(id, Disconnected::new(EndKind::Broken, why));
            }
        }
        // Used after the lock: a notify may close mailboxes.
        let failed: Vec<Mailbox> = {
            let mut boxes = self.mailboxes.lock().unwrap_or_else(PoisonError::into_inner);
            let dead: Vec<u32> = boxes.iter().filter(|(_, m)| m.ctx == ctx).map(|(h, _)| *h).collect();
            dead.into_iter().filter_map(|h| boxes.remove(&h)).collect()
        };
        for m in &failed {
            m.latch.put(Err(reason.clone()));
            m.latch.close();
        }
        for m in &failed {
            if let Some(n) = &m.notify.0 {
                n();
            }
        }
    }

    /// The master gives up on context `ctx`, which broke the protocol (a
    /// broken or hostile agent): as [`RouterTable::on_disconnect`], with
    /// the master's `reason`. Ending its process is the caller's part.
    pub fn give_up(&self, ctx: u32, reason: String) {
        self.on_disconnect(ctx, Disconnected::new(EndKind::Closed, reason));
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
    fn buffer_pool_is_bounded_and_trimmed() {
        let pool = BufferPool::default();
        pool.put(vec![0u8; 100]);
        pool.put(Vec::with_capacity(BufferPool::MAX_CAPACITY + 1));
        assert!(pool.take().is_none(), "too small and too large buffers are not kept");
        for _ in 0..BufferPool::MAX_BUFFERS + 3 {
            pool.put(vec![0u8; 1 << 20]);
        }
        pool.trim(BufferPool::MAX_BUFFERS + 3);
        let mut n = 0;
        while let Some(v) = pool.take() {
            assert_eq!(v.len(), 1 << 20, "handed back as it was: no zeroing again");
            n += 1;
        }
        assert_eq!(n, BufferPool::MAX_BUFFERS);
        pool.put(vec![0u8; 1 << 20]);
        pool.trim(0);
        assert!(pool.take().is_none());
    }

    /// A table with a direct context 1 (its stream a pipe nobody reads) and
    /// context 2 behind it; 1's transport is the agent itself.
    fn table() -> (RouterTable, Arc<ContextShared>, Arc<ContextShared>) {
        let t = RouterTable::new(1 << 20);
        let (_r, w) = rustix::pipe::pipe().expect("pipe");
        let out = Arc::new(StreamOut::new(w, 1, Box::new(|_, _, _| {})));
        let hop = Arc::new(ContextShared::new(1, "hop".into()));
        let carrier = Carrier { agent_pid: 100, transport: Some((100, "agent".into())), transport_is_agent: true };
        let _ = hop.carrier.set(carrier);
        let child = Arc::new(ContextShared::behind(2, "hop,child".into(), hop.clone()));
        let _ = child.carrier.set(Carrier { agent_pid: 200, ..Carrier::default() });
        t.add_route(hop.clone(), out.clone());
        t.add_route(child.clone(), out);
        (t, hop, child)
    }

    fn frame(src: u32, handle: u32, data: Vec<u8>) -> Message {
        Message::new(MASTER_ID, src, handle, 0, data)
    }

    #[test]
    fn a_goodbye_from_the_panic_handler_reads_as_a_crash() {
        let (t, _hop, child) = table();
        let mut buf = [0u8; 128];
        let n = crate::proto::message::goodbye_frame(2, &Goodbye::Panic("memory allocation failed"), &mut buf)
            .expect("fits");
        let mut d = crate::core::stream::Decoder::new(1 << 20);
        let m = d.feed(&buf[..n]).pop().expect("one frame").expect("decodes");
        let (mailbox, latch) = t.open_mailbox(2, true);
        assert!(mailbox >= handles::FIRST_DYNAMIC);
        t.deliver(1, m);
        let want = Disconnected::new(EndKind::Crashed, "the agent crashed: it panicked (memory allocation failed)");
        assert_eq!(child.disconnected(), Some(want.clone()));
        assert_eq!(latch.try_get(), Some(Err(want)), "its pending call fails at once");
    }

    #[test]
    fn a_direct_link_is_worded_by_who_carried_it() {
        let ctx = |name: &str, is_agent: bool| {
            let c = ContextShared::new(1, "web".into());
            let carrier = Carrier { agent_pid: 7, transport: Some((8, name.into())), transport_is_agent: is_agent };
            let _ = c.carrier.set(carrier);
            c
        };
        let st = |code, signal| Some(ExitStatus { code, signal });
        let cases = [
            (
                ctx("ssh", false),
                Some(None),
                st(Some(255), None),
                EndKind::Broken,
                "the connection broke (EOF from ssh; ssh exited with status 255)",
            ),
            (
                ctx("ssh", false),
                Some(Some(libc::EIO)),
                None,
                EndKind::Broken,
                "the connection broke (Input/output error (os error 5) reading from ssh; ssh is still running)",
            ),
            (
                ctx("sudo", false),
                None,
                st(None, Some(9)),
                EndKind::Broken,
                "the connection broke (sudo was killed by signal 9 (SIGKILL); the stream stayed open)",
            ),
            (
                ctx("agent-1", true),
                Some(None),
                st(None, Some(9)),
                EndKind::Crashed,
                "the agent was killed by signal 9 (SIGKILL)",
            ),
            (
                ctx("agent-1", true),
                Some(None),
                st(Some(3), None),
                EndKind::Crashed,
                "the agent exited with status 3 without saying why",
            ),
            (
                ctx("agent-1", true),
                Some(None),
                None,
                EndKind::Broken,
                "the connection broke (EOF from the agent; the agent is still running)",
            ),
        ];
        for (c, eof, status, kind, want) in cases {
            assert_eq!(link_ended(&c, eof, status), Disconnected::new(kind, want));
        }
    }

    #[test]
    fn goodbyes_and_del_routes_are_worded_by_kind() {
        let cases: [(Goodbye<'_>, EndKind, &str); 3] = [
            (Goodbye::Shutdown, EndKind::Exited, "the agent exited: shut down by its parent"),
            (Goodbye::Signal(15), EndKind::Exited, "the agent exited on signal 15 (SIGTERM)"),
            (
                Goodbye::Fatal { what: "epoll_wait\x1b[2J", errno: libc::EBADF },
                EndKind::Crashed,
                "the agent crashed: epoll_wait\\u{1b}[2J: Bad file descriptor (os error 9)",
            ),
        ];
        for (bye, kind, want) in cases {
            let (t, _hop, child) = table();
            t.deliver(1, frame(2, handles::GOODBYE, postcard::to_allocvec(&bye).expect("encode")));
            assert_eq!(child.disconnected(), Some(Disconnected::new(kind, want)), "{bye:?}");
        }
        let del = |end, pid, status| DelRoute { id: 2, end, pid, status };
        let cases = [
            (del(LinkEnd::Eof, 200, Some(crate::proto::ExitStatus { code: None, signal: Some(9) })), EndKind::Crashed, "the agent was killed by signal 9 (SIGKILL)"),
            (
                del(LinkEnd::Eof, 300, Some(crate::proto::ExitStatus { code: Some(255), signal: None })),
                EndKind::Broken,
                "the connection through hop broke (EOF from its command; its command exited with status 255)",
            ),
            (
                del(LinkEnd::ReadError(libc::EBADF), 300, None),
                EndKind::Broken,
                "the connection through hop broke (Bad file descriptor (os error 9) reading from its command; its command is still running)",
            ),
            (
                del(LinkEnd::Stalled, 200, None),
                EndKind::Broken,
                "the connection through hop broke: hop dropped it (it took nothing with its queue full)",
            ),
        ];
        for (r, kind, want) in cases {
            let (t, hop, child) = table();
            t.deliver(1, frame(1, handles::DEL_ROUTE, postcard::to_allocvec(&r).expect("encode")));
            assert_eq!(child.disconnected(), Some(Disconnected::new(kind, want)), "{r:?}");
            assert_eq!(hop.disconnected(), None, "{r:?}: the hop is not gone");
        }
        // A context cannot report its own route gone, nor a goodbye for
        // another (the stream of context 1 does not carry context 3).
        let (t, hop, child) = table();
        t.deliver(1, frame(2, handles::DEL_ROUTE, postcard::to_allocvec(&del(LinkEnd::Eof, 200, None)).expect("e")));
        t.deliver(1, frame(3, handles::GOODBYE, postcard::to_allocvec(&Goodbye::Shutdown).expect("encode")));
        assert_eq!((hop.disconnected(), child.disconnected()), (None, None));
    }

    #[test]
    fn ended_contexts_leave_the_table_when_the_next_one_comes() {
        let (t, hop, child) = table();
        t.on_disconnect(hop.id, Disconnected::new(EndKind::Crashed, "killed"));
        assert!(t.context(child.id).is_some(), "still ending: kept until reaped");
        hop.gone.close();
        let (_r, w) = rustix::pipe::pipe().expect("pipe");
        let next = Arc::new(ContextShared::new(3, "next".into()));
        t.add_route(next, Arc::new(StreamOut::new(w, 3, Box::new(|_, _, _| {}))));
        assert!(t.context(hop.id).is_none() && t.context(child.id).is_none(), "ended and reaped: pruned");
        assert!(t.context(3).is_some());
        assert!(child.disconnected().is_some_and(|d| d.reason.contains("hop")), "handles keep their reason");
    }

    #[test]
    fn a_notify_runs_after_each_delivery_and_the_loss_outside_the_lock() {
        let (t, hop, _child) = table();
        let t = Arc::new(t);
        let (h, latch) = t.open_mailbox(hop.id, false);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, weak, l) = (seen.clone(), Arc::downgrade(&t), latch.clone());
        let notify: Notify = Arc::new(move || {
            // The table is usable here: no lock of its own is held.
            if let Some(t) = weak.upgrade() {
                let _ = t.open_mailbox(1, true);
            }
            while let Some(d) = l.try_get() {
                s.lock().unwrap_or_else(PoisonError::into_inner).push(d.is_ok());
            }
        });
        assert!(t.set_notify(h, notify.clone()));
        assert!(!t.set_notify(h + 1000, notify), "no such mailbox");
        t.deliver(1, frame(1, h, vec![1]));
        t.deliver(1, frame(1, h, vec![2]));
        t.on_disconnect(hop.id, Disconnected::new(EndKind::Broken, "gone"));
        assert_eq!(*seen.lock().unwrap_or_else(PoisonError::into_inner), [true, true, false]);
    }

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
