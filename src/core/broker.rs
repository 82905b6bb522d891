//! [`Broker`]: the master's one I/O thread.
//!
//! It owns every stream's read side and waits on them, plus the stderr pipe
//! and the pidfd of every spawned process, in one epoll loop. Other threads
//! talk to it through a command queue and a [`Waker`]; they write to streams
//! themselves ([`StreamOut`] is shared), and ask for writability by
//! re-registering the tx fd directly (epoll_ctl is thread-safe).
//!
//! The loop accepts a closed set of [`Cmd`]s and `Source` kinds rather
//! than callbacks: everything the broker can do is listed in this file.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::core::lines::Lines;
use crate::core::poller::{Event, Events, Interest, Poller};
use crate::core::process_monitor::ProcessMonitor;
use crate::core::router::{link_ended, ContextShared, Disconnected, EndKind, RouterTable};
use crate::core::side::{self, Io};
use crate::core::stream::Decoder;
use crate::core::stream_in::{Pump, StreamIn};
use crate::core::stream_out::StreamOut;
use crate::core::waker::Waker;

const T_WAKER: u64 = 0;

/// How long shutdown waits for agents to exit on their own before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// When a context's stream ends without a goodbye while the process that
/// carries it still runs (or the process ends while its stream is still
/// open), the context is reported gone once both have happened, or after
/// this long: so the error can say how the process ended ("the agent was
/// killed by signal 9", "ssh exited with status 255"). Both usually happen
/// within microseconds of each other.
const EXIT_WAIT: Duration = Duration::from_millis(500);

/// Why the broker closes a stream.
enum StreamEnd {
    /// The peer's doing: EOF (`None`) or a read error.
    Peer(Option<i32>),
    /// A malformed frame: the text says which.
    Malformed(String),
    /// The master's doing (shutdown).
    Master(&'static str),
}

/// A context whose stream or process has ended, waiting for the other.
struct Ending {
    ctx: Arc<ContextShared>,
    /// How the stream ended (`None`: it is still open).
    eof: Option<Option<i32>>,
    deadline: Instant,
}

/// A new stream (and what belongs to it) for the broker to serve.
#[derive(Debug)]
pub struct StreamSetup {
    /// The context it leads to.
    pub ctx: Arc<ContextShared>,
    /// Read side (holding any bytes already read during bootstrap).
    pub rx: Arc<StreamIn>,
    /// Write side (already registered under `out.token`).
    pub out: Arc<StreamOut>,
    /// The spawned process's stderr, forwarded as log lines.
    pub stderr: Option<OwnedFd>,
    /// The spawned process.
    pub process: Option<ProcessMonitor>,
}

/// Requests to the broker thread.
#[derive(Debug)]
pub enum Cmd {
    /// Start serving a stream.
    AddStream(Box<StreamSetup>),
    /// SIGKILL the process of a context.
    Kill(u32),
    /// Close every stream, reap every process, and exit the thread.
    Shutdown,
}

enum Source {
    Rx { ctx: Arc<ContextShared>, rx: Arc<StreamIn>, tx_token: u64 },
    Tx { out: Arc<StreamOut> },
    Stderr { ctx: Arc<ContextShared>, fd: OwnedFd, lines: Lines },
    Process { ctx: Arc<ContextShared>, pm: ProcessMonitor },
}

/// Logs each complete line of a transport's stderr (`data` appended to
/// what `lines` holds) as `[context] line`; keeps the unfinished rest. A
/// line of more than [`MAX_LOG_CHARS`] bytes comes out in pieces, so a
/// target cannot grow the buffer without bound.
pub(crate) fn log_lines(name: &str, lines: &mut Lines, data: &[u8]) {
    lines.extend(data);
    while let Some(line) = lines.next_line() {
        let text = crate::core::text::printable(line, MAX_LOG_CHARS);
        log::warn!(target: "mito::remote", "[{name}] {}", text.trim_end());
    }
}

/// The longest line of a target's log or stderr that mito prints whole.
pub(crate) const MAX_LOG_CHARS: usize = 4096;

struct Shared {
    poller: Poller,
    waker: Waker,
    cmds: Mutex<Vec<Cmd>>,
    next_token: AtomicU64,
}

/// Handle to the broker thread.
pub struct Broker {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Broker")
    }
}

impl Broker {
    /// Starts the broker thread over `table`.
    pub fn start(table: Arc<RouterTable>) -> std::io::Result<Broker> {
        let shared = Arc::new(Shared {
            poller: Poller::new()?,
            waker: Waker::new()?,
            cmds: Mutex::new(Vec::new()),
            next_token: AtomicU64::new(1),
        });
        shared.poller.add(shared.waker.fd(), T_WAKER, Interest::READ)?;
        let s2 = shared.clone();
        let thread =
            std::thread::Builder::new().name("mito-broker".into()).spawn(move || Loop::new(s2, table).run())?;
        Ok(Broker { shared, thread: Mutex::new(Some(thread)) })
    }

    /// A fresh epoll token.
    pub fn token(&self) -> u64 {
        self.shared.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes the receiving half of a stream over `rx` (registered with the
    /// poller when the stream is added).
    pub fn stream_in(&self, rx: OwnedFd, decoder: Decoder) -> std::io::Result<Arc<StreamIn>> {
        side::set_nonblocking(rx.as_fd(), true)?;
        let shared = self.shared.clone();
        Ok(Arc::new(StreamIn::new(
            rx,
            decoder,
            self.token(),
            Box::new(move |fd, t, on| {
                let _ = shared.poller.modify(fd, t, if on { Interest::READ } else { Interest::NONE });
            }),
        )))
    }

    /// Makes the sending half of a stream over `tx` (registered silent; it
    /// asks for writability itself when its queue is non-empty).
    pub fn stream_out(&self, tx: OwnedFd) -> std::io::Result<Arc<StreamOut>> {
        side::set_nonblocking(tx.as_fd(), true)?;
        let token = self.token();
        self.shared.poller.add(tx.as_fd(), token, Interest::NONE)?;
        let shared = self.shared.clone();
        Ok(Arc::new(StreamOut::new(
            tx,
            token,
            Box::new(move |fd, t, on| {
                let _ = shared.poller.modify(fd, t, if on { Interest::WRITE } else { Interest::NONE });
            }),
        )))
    }

    /// Queues a command and wakes the thread.
    pub fn send(&self, cmd: Cmd) {
        self.shared.cmds.lock().unwrap_or_else(PoisonError::into_inner).push(cmd);
        self.shared.waker.wake();
    }

    /// Shuts the thread down and waits for it (agents get EOF, stragglers
    /// SIGKILL after a grace period, everything is reaped).
    pub fn shutdown(&self) {
        self.send(Cmd::Shutdown);
        if let Some(t) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = t.join();
        }
    }
}

struct Loop {
    shared: Arc<Shared>,
    table: Arc<RouterTable>,
    sources: HashMap<u64, Source>,
    /// Per context: (stream open, process running); `gone` closes when both are false.
    alive: HashMap<u32, (bool, bool)>,
    /// Contexts whose stream or process ended first (see [`EXIT_WAIT`]).
    ending: HashMap<u32, Ending>,
    shutdown_at: Option<Instant>,
}

impl Loop {
    fn new(shared: Arc<Shared>, table: Arc<RouterTable>) -> Loop {
        Loop {
            shared,
            table,
            sources: HashMap::new(),
            alive: HashMap::new(),
            ending: HashMap::new(),
            shutdown_at: None,
        }
    }

    fn run(mut self) {
        let mut buf = Events::with_capacity(256);
        let mut events = Vec::with_capacity(256);
        loop {
            let next = self.ending.values().map(|e| e.deadline).chain(self.shutdown_at).min();
            let timeout = match next {
                Some(at) => (at.saturating_duration_since(Instant::now()).as_millis() as i32 + 1).min(1000),
                None => -1,
            };
            events.clear();
            if let Err(e) = self.shared.poller.wait(timeout, &mut buf, &mut events) {
                log::error!("broker: epoll_wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            for ev in &events {
                self.on_event(*ev);
            }
            self.end_overdue();
            if let Some(at) = self.shutdown_at {
                let procs_left = self.sources.values().any(|s| matches!(s, Source::Process { .. }));
                if !procs_left {
                    return;
                }
                if Instant::now() >= at {
                    self.kill_and_reap_all();
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        if ev.token == T_WAKER {
            self.shared.waker.reset();
            let cmds = std::mem::take(&mut *self.shared.cmds.lock().unwrap_or_else(PoisonError::into_inner));
            for c in cmds {
                self.on_cmd(c);
            }
            return;
        }
        let Some(src) = self.sources.get_mut(&ev.token) else { return };
        match src {
            Source::Rx { .. } => {
                self.read_stream(ev.token);
            }
            Source::Tx { out } => {
                // A failed write is reported by the read side, with its reason.
                if out.on_writable().is_err() {
                    if let Some(fd) = out.close() {
                        self.shared.poller.delete(fd.as_fd());
                    }
                }
            }
            Source::Stderr { ctx, fd, lines } => {
                let mut b = [0u8; 4096];
                let open = loop {
                    match side::read(fd.as_fd(), &mut b) {
                        Ok(Io::Done(n)) => log_lines(&ctx.name, lines, &b[..n]),
                        Ok(Io::WouldBlock) => break true,
                        _ => break false,
                    }
                };
                if !open {
                    if let Some(Source::Stderr { fd, .. }) = self.sources.remove(&ev.token) {
                        self.shared.poller.delete(fd.as_fd());
                    }
                }
            }
            Source::Process { ctx, pm } => {
                if let Some(status) = pm.poll() {
                    let ctx = ctx.clone();
                    *ctx.exit.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
                    log::debug!("[{}] process {} ended: {status}", ctx.name, pm.pid());
                    if let Some(Source::Process { pm, .. }) = self.sources.remove(&ev.token) {
                        self.shared.poller.delete(pm.fd());
                    }
                    self.process_ended(&ctx);
                }
            }
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::AddStream(s) => {
                let s = *s;
                let id = s.ctx.id;
                let rx_token = s.rx.token;
                if let Some(Err(e)) = s.rx.with_fd(|fd| self.shared.poller.add(fd, rx_token, Interest::READ)) {
                    log::error!("[{}] cannot watch stream: {e}", s.ctx.name);
                }
                self.sources.insert(s.out.token, Source::Tx { out: s.out.clone() });
                let has_proc = s.process.is_some();
                if let Some(fd) = s.stderr {
                    let t = self.token();
                    let _ = side::set_nonblocking(fd.as_fd(), true);
                    let _ = self.shared.poller.add(fd.as_fd(), t, Interest::READ);
                    self.sources.insert(t, Source::Stderr { ctx: s.ctx.clone(), fd, lines: Lines::new(MAX_LOG_CHARS) });
                }
                if let Some(pm) = s.process {
                    let t = self.token();
                    let _ = self.shared.poller.add(pm.fd(), t, Interest::READ);
                    self.sources.insert(t, Source::Process { ctx: s.ctx.clone(), pm });
                }
                self.alive.insert(id, (true, has_proc));
                let tx_token = s.out.token;
                self.sources.insert(rx_token, Source::Rx { ctx: s.ctx, rx: s.rx, tx_token });
                // Bytes that arrived with the hello may already hold messages.
                self.drain_decoder(rx_token);
                if self.shutdown_at.is_some() {
                    self.close_stream(rx_token, StreamEnd::Master("the router is shutting down"));
                }
            }
            Cmd::Kill(id) => {
                for s in self.sources.values() {
                    if let Source::Process { ctx, pm } = s {
                        if ctx.id == id {
                            pm.kill();
                        }
                    }
                }
            }
            Cmd::Shutdown => {
                self.table.set_shut_down();
                let rx: Vec<u64> =
                    self.sources.iter().filter(|(_, s)| matches!(s, Source::Rx { .. })).map(|(t, _)| *t).collect();
                for t in rx {
                    self.close_stream(t, StreamEnd::Master("the router was shut down"));
                }
                self.shutdown_at = Some(Instant::now() + SHUTDOWN_GRACE);
            }
        }
    }

    fn token(&self) -> u64 {
        self.shared.next_token.fetch_add(1, Ordering::Relaxed)
    }

    fn drain_decoder(&mut self, token: u64) {
        let Some(Source::Rx { ctx, rx, .. }) = self.sources.get(&token) else { return };
        let (ctx, rx) = (ctx.clone(), rx.clone());
        let bad = rx
            .broker_reader()
            .and_then(|mut g| g.as_mut().and_then(|r| StreamIn::drain(r, &self.table, ctx.id, &ctx.name)));
        if let Some(Pump::Malformed(what)) = bad {
            self.close_stream(token, StreamEnd::Malformed(what));
        }
    }

    /// Reads what the stream `token` holds; closes it at its end. Returns
    /// false when it could not read to the end now (data left, or a caller
    /// holds the reader role: level-triggered epoll reports it again).
    fn read_stream(&mut self, token: u64) -> bool {
        let Some(Source::Rx { ctx, rx, .. }) = self.sources.get(&token) else { return true };
        let (ctx, rx) = (ctx.clone(), rx.clone());
        // A caller holding the reader role has our interest off; if this
        // event raced with it, level-triggered epoll repeats it.
        let outcome = match rx.broker_reader() {
            Some(mut g) => g.as_mut().map_or(Pump::Drained, |r| StreamIn::pump(r, &self.table, ctx.id, &ctx.name)),
            None => Pump::Drained,
        };
        match outcome {
            Pump::Closed(errno) => self.close_stream(token, StreamEnd::Peer(errno)),
            Pump::Malformed(what) => self.close_stream(token, StreamEnd::Malformed(what)),
            Pump::Progress | Pump::Drained => return false,
        }
        true
    }

    /// The process of `ctx` ended (its status is in `ctx.exit`). With its
    /// stream still open, what it wrote last (a goodbye) is read first; a
    /// stream that stays open is waited for (see [`EXIT_WAIT`]).
    fn process_ended(&mut self, ctx: &Arc<ContextShared>) {
        self.mark(ctx.id, None, Some(false));
        let status = *ctx.exit.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = self.ending.remove(&ctx.id) {
            self.table.on_disconnect(ctx.id, link_ended(ctx, e.eof, status));
            return;
        }
        let rx_token = self.sources.iter().find_map(|(t, s)| match s {
            Source::Rx { ctx: c, .. } if c.id == ctx.id => Some(*t),
            _ => None,
        });
        let Some(token) = rx_token else {
            // Its stream closed before (after a goodbye, or by the master).
            self.table.on_disconnect(ctx.id, link_ended(ctx, Some(None), status));
            return;
        };
        for _ in 0..64 {
            if self.read_stream(token) {
                return;
            }
        }
        if ctx.disconnected().is_none() {
            self.ending.insert(ctx.id, Ending { ctx: ctx.clone(), eof: None, deadline: Instant::now() + EXIT_WAIT });
        }
    }

    /// Contexts that waited [`EXIT_WAIT`] for the other half of their end.
    fn end_overdue(&mut self) {
        if self.ending.is_empty() {
            return;
        }
        let now = Instant::now();
        let due: Vec<u32> = self.ending.iter().filter(|(_, e)| e.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            if let Some(e) = self.ending.remove(&id) {
                let status = *e.ctx.exit.lock().unwrap_or_else(PoisonError::into_inner);
                self.table.on_disconnect(id, link_ended(&e.ctx, e.eof, status));
            }
        }
    }

    fn close_stream(&mut self, rx_token: u64, end: StreamEnd) {
        let Some(Source::Rx { ctx, rx, tx_token }) = self.sources.remove(&rx_token) else { return };
        let running = self.alive.get(&ctx.id).is_some_and(|a| a.1);
        // The reason is set before the stream closes: a caller's send that
        // finds it closed reads why (or, while the process's end is awaited,
        // what is known so far).
        let why = match end {
            StreamEnd::Master(reason) => Some(Disconnected::new(EndKind::Closed, reason)),
            StreamEnd::Malformed(what) => {
                Some(Disconnected::new(EndKind::Broken, format!("the connection broke ({what})")))
            }
            // A goodbye said it all; else the process's end completes the
            // story once it comes (or after EXIT_WAIT).
            StreamEnd::Peer(_) if ctx.disconnected().is_some() => None,
            StreamEnd::Peer(eof) if running => {
                *ctx.ending.lock().unwrap_or_else(PoisonError::into_inner) = Some(link_ended(&ctx, Some(eof), None));
                let deadline = Instant::now() + EXIT_WAIT;
                self.ending.insert(ctx.id, Ending { ctx: ctx.clone(), eof: Some(eof), deadline });
                None
            }
            StreamEnd::Peer(eof) => {
                self.ending.remove(&ctx.id);
                let status = *ctx.exit.lock().unwrap_or_else(PoisonError::into_inner);
                Some(link_ended(&ctx, Some(eof), status))
            }
        };
        if let Some(why) = why {
            log::debug!("[{}] stream closed: {}", ctx.name, why.reason);
            self.table.on_disconnect(ctx.id, why);
        }
        // If a caller holds the reader role, it drops the fd when it lets go.
        if let Some(fd) = rx.close() {
            self.shared.poller.delete(fd.as_fd());
        }
        if let Some(Source::Tx { out }) = self.sources.remove(&tx_token) {
            if let Some(txfd) = out.close() {
                self.shared.poller.delete(txfd.as_fd());
            }
        }
        self.mark(ctx.id, Some(false), None);
    }

    fn mark(&mut self, id: u32, stream: Option<bool>, process: Option<bool>) {
        let Some(state) = self.alive.get_mut(&id) else { return };
        if let Some(s) = stream {
            state.0 = s;
        }
        if let Some(p) = process {
            state.1 = p;
        }
        if !state.0 && !state.1 {
            self.alive.remove(&id);
            if let Some(c) = self.table.context(id) {
                c.gone.close();
            }
        }
    }

    fn kill_and_reap_all(&mut self) {
        let procs: Vec<u64> =
            self.sources.iter().filter(|(_, s)| matches!(s, Source::Process { .. })).map(|(t, _)| *t).collect();
        for t in procs {
            if let Some(Source::Process { ctx, mut pm }) = self.sources.remove(&t) {
                log::warn!("[{}] agent (pid {}) did not exit after its stream closed; killing it", ctx.name, pm.pid());
                pm.kill();
                if let Some(st) = pm.wait() {
                    *ctx.exit.lock().unwrap_or_else(PoisonError::into_inner) = Some(st);
                }
                self.mark(ctx.id, Some(false), Some(false));
            }
        }
    }
}
