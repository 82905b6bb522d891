//! Connecting onward from a context (multi-hop): `ctx.sudo(…)`,
//! `ctx.ssh(…)`, `ctx.local(…)`, … start the method's command on ctx's host.
//!
//! How (mitogen does the bootstrap in the hop; we keep it in the master, so
//! the agent stays small and every method's prompt handling is the same
//! code):
//!
//! 1. The hop runs the command (`sudo … sh -c <stage0>`) as a streamed
//!    command with pipes, plus the hybrid tty where a password may be asked.
//! 2. Two pump threads join it to three local socketpairs, so the ordinary
//!    bootstrap ([`crate::connect::bootstrap::run`]) drives stage0, prompts
//!    and the agent upload exactly as for a local process: the command's
//!    stdout and stderr/tty arrive as output chunks, what the bootstrap
//!    writes goes back as stdin ([`ProcessInput::write`]). A password the
//!    method's responder would type is not written by the bootstrap: the
//!    hop types it ([`ProcessInput::answer_tool`]) into the tool's stdin or
//!    tty (once echo is off), and only after its agent has looked at the
//!    tool's process in /proc, where the hop runs it: a tool that has
//!    started a process, exited or goes on reaping is past its
//!    authentication (rule 3 of `connect::prompt`), so nothing is typed
//!    and the connect fails at once with the responder's typed
//!    `UnexpectedPrompt`, as it does on the master's own machine.
//! 3. After the new agent's hello (it then stays silent until spoken to),
//!    `ExecOp::Adopt(id)` makes the hop turn the command's pipes into a
//!    routed child stream; every hop above learns `id` with ADD_ROUTE. From
//!    then on messages for `id` travel as frames, forwarded by header only.
//! 4. Then the output pump hands the command over to a [`Monitor`] and
//!    ends, closing its sockets: the connecting thread wakes it once the
//!    context exists ([`super::process::Waker`]). The monitor holds no
//!    thread and no descriptor (so 10,000 contexts behind hops cost the
//!    master none, ARCHITECTURE.md "Scale"): the router calls it after each
//!    delivery to the command's mailboxes
//!    ([`crate::core::router::RouterTable::set_notify`]), on the thread
//!    that delivered, and it takes what is queued without waiting: the
//!    command's stderr/tty lines are logged under the context's name, and
//!    its exit (or the hop's loss, which fails those mailboxes) disconnects
//!    the context at once. A child that stops reading is dropped by its hop
//!    (DEL_ROUTE, see `agent::external_context`), which also kills the
//!    command, so the monitor ends then too. Threads (two pumps) and the
//!    three socketpairs are used only while a connect is in flight.
//!
//! No send here waits for ever: the pumps' stdin goes through
//! [`ProcessInput::write`] (bounded, see `master::process`), tty answers,
//! the adopt, route announcements and the kill are small control frames
//! that never wait for room
//! ([`crate::core::router::RouterTable::send_control`]).

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use super::context::{ConnectInfo, Context};
use super::error::CallError;
use super::process::{Process, ProcessEvent, ProcessInput};
use super::Connector;
use crate::connect::agents::Chosen;
use crate::connect::bootstrap::{self, AnswerTo, Hooks, Pipes, Prompt};
use crate::connect::child::ChildCommand;
use crate::connect::doas::DoasOptions;
use crate::connect::error::ConnectError;
use crate::connect::local::LocalOptions;
use crate::connect::prompt::BecomeFailure;
use crate::connect::ssh::SshOptions;
use crate::connect::su::SuOptions;
use crate::connect::sudo::SudoOptions;
use crate::core::router::{ContextShared, Disconnected, EndKind, RouterTable};
use crate::core::side;
use crate::core::tool_process;
use crate::proto::functions::{ExecArgs, Stdio, ToolState};
use crate::proto::message::AddRoute;
use crate::proto::{handles, Message, MASTER_ID};

impl Context {
    /// Starts an agent on this context's host through stage0 (`sh -c`),
    /// reached through this context (multi-hop).
    pub fn local(&self, opts: LocalOptions) -> Result<Context, ConnectError> {
        self.connector().local(opts)
    }

    /// Runs `ssh` on this context's host to reach another (key or agent
    /// authentication; `-F`/`-i` paths are the hop's).
    pub fn ssh(&self, opts: SshOptions) -> Result<Context, ConnectError> {
        self.connector().ssh(opts)
    }

    /// Runs `sudo` on this context's host (e.g. ssh, then sudo).
    pub fn sudo(&self, opts: SudoOptions) -> Result<Context, ConnectError> {
        self.connector().sudo(opts)
    }

    /// Runs `su` on this context's host.
    pub fn su(&self, opts: SuOptions) -> Result<Context, ConnectError> {
        self.connector().su(opts)
    }

    /// Runs `doas` on this context's host.
    pub fn doas(&self, opts: DoasOptions) -> Result<Context, ConnectError> {
        self.connector().doas(opts)
    }

    /// Creates contexts reached through this one; the same methods as
    /// [`crate::Router::connector`].
    pub fn connector(&self) -> Connector<'_> {
        Connector { state: &self.state, via: Some(self) }
    }
}

/// What the output pump and the connecting thread share.
#[derive(Default)]
struct Watch {
    /// Set once the context exists: the pump disconnects it when the
    /// command ends.
    ctx: Option<Arc<ContextShared>>,
    /// Why the command ended, once it has.
    ended: Option<String>,
    /// The hop's own error for the command (e.g. the program is missing).
    failure: Option<CallError>,
}

type Shared = Arc<Mutex<Watch>>;

/// Connects context `id` through `hop`; see the module docs.
pub(super) fn connect(
    hop: &Context,
    id: u32,
    name: String,
    cmd: &ChildCommand,
    timeout: Duration,
    hooks: &mut dyn Hooks,
) -> Result<Context, ConnectError> {
    let io = |source: std::io::Error| ConnectError::Io { context: name.clone(), source };
    let hop_failed = |reason: String| ConnectError::Hop { context: name.clone(), hop: hop.name().into(), reason };
    // Ours: what the bootstrap reads and writes; the pumps' ends: the
    // command's side (the tty end is shared by both pumps).
    let (rx, rx_pump) = UnixStream::pair().map_err(io)?;
    let (tx, tx_pump) = UnixStream::pair().map_err(io)?;
    let (tty, tty_pump) = UnixStream::pair().map_err(io)?;
    let deadline = Instant::now() + timeout;
    let mut process = hop.spawn(&exec_args(cmd)).map_err(|e| hop_failed(e.to_string()))?;
    let stream = process.stream();
    let waker = process.waker();
    let Some(input) = process.take_input() else { return Err(hop_failed("no stdin for the command".into())) };
    let watch: Shared = Arc::default();
    let (w, table, ctx_name) = (watch.clone(), hop.state.table.clone(), name.clone());
    std::thread::Builder::new()
        .name("mito-via-out".into())
        .spawn(move || pump_out(process, rx_pump, tty_pump, w, table, ctx_name))
        .map_err(io)?;
    let i2 = input.clone();
    std::thread::Builder::new().name("mito-via-in".into()).spawn(move || pump_in(i2, tx_pump)).map_err(io)?;
    let (rx, tx, tty_ours): (OwnedFd, OwnedFd, OwnedFd) = (rx.into(), tx.into(), tty.into());
    for fd in [&rx, &tx, &tty_ours] {
        side::set_nonblocking(fd.as_fd(), true).map_err(|e| io(e.into()))?;
    }
    let pipes = Pipes { rx: rx.as_fd(), tx: tx.as_fd(), stderr: Some(tty_ours.as_fd()) };
    let info = hop.connect_info();
    let mut hooks = HopHooks {
        inner: hooks,
        via: hop,
        input: &input,
        arch: &info.arch,
        hash: &info.agent_hash,
        tty: cmd.tty,
        deadline,
        context: &name,
        hop: hop.name(),
    };
    let boot =
        match bootstrap::run(&name, &pipes, timeout, hop.state.table.max_message_size, &hop.state.agents, &mut hooks) {
            Ok(b) => b,
            Err(e) => {
                let _ = input.signal(libc::SIGKILL);
                let failure = watch.lock().unwrap_or_else(PoisonError::into_inner).failure.take();
                return Err(match failure {
                    Some(CallError::Remote(r)) if r.errno != 0 => ConnectError::Spawn {
                        context: name.clone(),
                        program: cmd.program.to_string_lossy().into_owned(),
                        source: std::io::Error::from_raw_os_error(r.errno),
                    },
                    Some(other) => hop_failed(other.to_string()),
                    None => e,
                });
            }
        };
    // The agent is up and silent: make the hop route it, and every hop
    // above the hop route it towards the one below (control frames: they
    // never wait for room, and are not lost to a full queue).
    let give_up = |reason: String| {
        let _ = input.signal(libc::SIGKILL);
        hop_failed(reason)
    };
    input.adopt(id).map_err(|e| give_up(e.to_string()))?;
    let path = hop.shared.path();
    for pair in path.windows(2) {
        let data = postcard::to_allocvec(&AddRoute { id, via: pair[1].id }).map_err(|e| give_up(e.to_string()))?;
        let msg = Message::new(pair[0].id, MASTER_ID, handles::ADD_ROUTE, 0, data);
        hop.state.table.send_control(&msg).map_err(|d| give_up(d.reason))?;
    }
    let Some(out) = hop.state.table.route(hop.shared.stream_id) else {
        return Err(give_up("the hop's stream is gone".into()));
    };
    let shared = Arc::new(ContextShared::behind(id, name, hop.shared.clone()));
    let _ = shared.transport.set((hop.shared.id, stream));
    hop.state.table.add_route(shared.clone(), out);
    {
        let mut w = watch.lock().unwrap_or_else(PoisonError::into_inner);
        match w.ended.clone() {
            Some(reason) => hop.state.table.on_disconnect(id, Disconnected::new(EndKind::Broken, reason)),
            None => {
                w.ctx = Some(shared.clone());
                // The pump hands the command over to the router and ends.
                waker.wake();
            }
        }
    }
    let info = ConnectInfo::from_boot(&boot, None);
    // Frames that came with the hello arrived before the hop adopted the
    // stream, so no hop checked their `src` or stamped their `auth`: a
    // hostile child could speak for a sibling behind the same hop (a forged
    // DEL_ROUTE, replies into its mailboxes). A real agent sends nothing
    // before it is asked, so they are dropped, never delivered.
    let mut decoder = boot.decoder;
    let mut dropped = 0usize;
    while let Ok(Some(_)) = decoder.next_message() {
        dropped += 1;
    }
    if dropped > 0 {
        log::warn!("[{}] dropped {dropped} frame(s) sent with its hello, before its hop adopted it", shared.name);
    }
    log::debug!("[{}] connected through {} in {:?}: agent pid {}", shared.name, hop.name(), boot.elapsed, info.pid);
    Ok(Context::new(hop.state.clone(), shared, info))
}

/// The method's hooks, plus: the hop types the responder's answers, once
/// its agent has seen the tool still at its prompt; and it sends its own
/// executable when stage0 asks for the raw agent of the hop's architecture
/// and hash, and any other agent through the importer (from its cache).
struct HopHooks<'a> {
    inner: &'a mut dyn Hooks,
    /// The hop.
    via: &'a Context,
    input: &'a ProcessInput,
    arch: &'a str,
    hash: &'a str,
    /// The command has a tty of its own (sudo, su and doas do).
    tty: bool,
    /// The end of the connect's time.
    deadline: Instant,
    context: &'a str,
    hop: &'a str,
}

impl HopHooks<'_> {
    /// The hop types `answer` where `to` says, if its agent sees the tool
    /// still at its prompt; the bootstrap then writes nothing (an empty
    /// answer: it only forgets the text it has scanned).
    ///
    /// Where /proc does not show the tool (`hidepid`), a tty answer is
    /// typed and a stdin answer is not, as on the master's machine: the
    /// tools that read the tty (sudo, doas) print a prompt only they can
    /// (sudo's secret) or run our `sh -c` directly (doas), while su, which
    /// reads stdin (PAM's conversation), prints public text.
    fn answer(&mut self, unscanned: &[u8], answer: Vec<u8>, to: AnswerTo) -> Prompt {
        let if_unseen = to == AnswerTo::Tty;
        let stdin = to == AnswerTo::Stdin || !self.tty;
        match self.input.answer_tool(&answer, stdin, if_unseen, self.deadline) {
            Ok(ToolState::AtItsPrompt) => Prompt::Answer(Vec::new(), to),
            Ok(ToolState::Unseen) if if_unseen => Prompt::Answer(Vec::new(), to),
            Ok(state) => Prompt::Fail(self.refused(unscanned, tool_process::why(state))),
            Err(e) => Prompt::Fail(ConnectError::Hop {
                context: self.context.into(),
                hop: self.hop.into(),
                reason: format!("answering the password prompt: {e}"),
            }),
        }
    }

    /// The error for a prompt the hop found not to be the tool's own: the
    /// responder's `UnexpectedPrompt` (naming the context, tool and user,
    /// with the prompt's text), saying `why`.
    fn refused(&mut self, unscanned: &[u8], why: &'static str) -> ConnectError {
        self.inner.refused(why, unscanned).unwrap_or_else(|| ConnectError::Hop {
            context: self.context.into(),
            hop: self.hop.into(),
            reason: BecomeFailure::UnexpectedPrompt { why }.to_string(),
        })
    }
}

impl Hooks for HopHooks<'_> {
    fn on_stderr(&mut self, unscanned: &[u8]) -> Prompt {
        match self.inner.on_stderr(unscanned) {
            Prompt::Answer(answer, to) => self.answer(unscanned, answer, to),
            other => other,
        }
    }

    fn classify(&self, stderr: &[u8]) -> Option<ConnectError> {
        self.inner.classify(stderr)
    }

    fn serve_agent(&mut self, arch: &str, agent: &Chosen, gzip: bool) -> bool {
        if !gzip && arch == self.arch && agent.sha256() == self.hash {
            return self.input.send_self().is_ok();
        }
        // Not the hop's own executable: through the importer, so the next
        // context behind this hop that needs it gets it from the hop's
        // cache. If that cannot start, the master writes it as before.
        match self.via.serve_agent_to(self.input, arch, agent, gzip) {
            Ok(()) => true,
            Err(e) => {
                log::debug!("[{}] the {arch} agent cannot go through {}'s importer: {e}", self.context, self.hop);
                false
            }
        }
    }

    fn target_spoke(&mut self) {
        self.inner.target_spoke();
    }

    fn stage0(&self) -> bool {
        self.inner.stage0()
    }
}

/// The hop's command for `cmd`. Variables to remove go through `env -u`
/// (the exec call can only set, or clear everything).
fn exec_args(cmd: &ChildCommand) -> ExecArgs {
    use std::os::unix::ffi::OsStrExt;
    let b = |s: &std::ffi::OsStr| ByteBuf::from(s.as_bytes());
    let mut argv = Vec::new();
    if !cmd.env_remove.is_empty() {
        argv.push(ByteBuf::from(&b"env"[..]));
        for k in &cmd.env_remove {
            argv.push(ByteBuf::from(&b"-u"[..]));
            argv.push(b(k));
        }
    }
    argv.push(b(&cmd.program));
    argv.extend(cmd.args.iter().map(|a| b(a)));
    ExecArgs {
        argv,
        env: cmd.env.iter().map(|(k, v)| (b(k), b(v))).collect(),
        stdio: Stdio::Capture,
        tty: cmd.tty,
        enter: cmd.enter.as_ref().map(|e| e.how.clone()),
        ..ExecArgs::default()
    }
}

/// Writes all of `data` to a socket whose reader may be gone (no SIGPIPE).
fn send_all(s: &UnixStream, mut data: &[u8]) -> bool {
    use nix::sys::socket::{send, MsgFlags};
    while !data.is_empty() {
        match send(std::os::fd::AsRawFd::as_raw_fd(s), data, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// The command's output into the bootstrap's sockets, until the context
/// exists (the connecting thread wakes the pump then): the command then
/// goes to a [`Monitor`] the router drives, and the pump ends with its
/// sockets. If the command ends first, its end disconnects the context
/// (or fails the bootstrap).
fn pump_out(mut p: Process, rx: UnixStream, tty: UnixStream, watch: Shared, table: Arc<RouterTable>, name: String) {
    let (mut rx, mut tty) = (Some(rx), Some(tty));
    let mut lines = crate::core::lines::Lines::new(crate::core::broker::MAX_LOG_CHARS);
    let ended = loop {
        match p.next_or_woken(None) {
            Ok(Some(ProcessEvent::Output { fd, data })) => {
                let sink = if fd == 1 { &mut rx } else { &mut tty };
                if let Some(s) = sink {
                    if send_all(s, &data) {
                        continue;
                    }
                    // The bootstrap is over: its end is closed.
                    *sink = None;
                }
                if fd != 1 {
                    crate::core::broker::log_lines(&name, &mut lines, &data);
                }
            }
            Ok(Some(ProcessEvent::Exit(r))) => break exit_reason(&r),
            Ok(None) => {
                let ctx = watch.lock().unwrap_or_else(PoisonError::into_inner).ctx.take();
                if let Some(ctx) = ctx {
                    // The sockets close here: the bootstrap is done.
                    drop((rx, tty));
                    return Monitor::start(p, lines, ctx, table);
                }
            }
            Err(e) => {
                let reason = e.to_string();
                watch.lock().unwrap_or_else(PoisonError::into_inner).failure = Some(e);
                break reason;
            }
        }
    };
    // End of file for a bootstrap still waiting.
    drop((rx, tty));
    let ctx = {
        let mut w = watch.lock().unwrap_or_else(PoisonError::into_inner);
        w.ended = Some(ended.clone());
        w.ctx.take()
    };
    if let Some(c) = ctx {
        table.on_disconnect(c.id, Disconnected::new(EndKind::Broken, ended));
    }
}

/// How the command carrying a context ended, for its disconnect.
fn exit_reason(r: &crate::proto::functions::ExecReply) -> String {
    match (r.status.code, r.status.signal) {
        (_, Some(sig)) => format!("its transport command ended (signal {sig})"),
        (Some(code), _) => format!("its transport command ended (status {code})"),
        _ => "its transport command ended".to_string(),
    }
}

/// The monitor of a context behind a hop once it is adopted: no thread and
/// no descriptor of its own. The router calls [`Monitor::drain`] after each
/// delivery to the command's mailboxes (its output, its exit, or the hop's
/// loss), on the thread that delivered it: the broker's, or a caller's
/// reading the stream. So nothing here blocks: output is taken as it is
/// queued (credit goes back as small control frames that never wait), its
/// stderr/tty lines are logged under the context's name, and the
/// command's exit or the hop's loss disconnects the context.
///
/// The router's mailboxes own the monitor (through their notify) until
/// they close: at the command's exit or the hop's loss, when the monitor
/// drops the command.
struct Monitor {
    /// `None` once the command has ended.
    process: Option<Process>,
    lines: crate::core::lines::Lines,
    ctx: Arc<ContextShared>,
    table: Arc<RouterTable>,
}

impl Monitor {
    /// Hands `p` over to the router: what comes after this is drained on
    /// delivery, what came before is drained here.
    fn start(p: Process, lines: crate::core::lines::Lines, ctx: Arc<ContextShared>, table: Arc<RouterTable>) {
        let handles = p.handles();
        let m = Arc::new(Mutex::new(Monitor { process: Some(p), lines, ctx, table: table.clone() }));
        let weak = Arc::downgrade(&m);
        // Weak: the mailboxes hold this closure, the closure must not keep
        // `m`'s owner (the closure itself) alive in a loop of its own.
        let hook: crate::core::router::Notify = Arc::new(move || {
            if let Some(m) = weak.upgrade() {
                Monitor::drain(&m);
            }
        });
        let owner = m.clone();
        let keep: crate::core::router::Notify = Arc::new(move || Monitor::drain(&owner));
        // The first mailbox that is open carries the owning closure (the
        // reply mailbox goes at the exit, the stream mailbox when the
        // command is dropped; either outlives what the other may deliver).
        let mut owned = false;
        for h in handles {
            let n = if owned { hook.clone() } else { keep.clone() };
            if table.set_notify(h, n) {
                owned = true;
            }
        }
        Monitor::drain(&m);
    }

    /// Takes what is queued (see the type's docs); never blocks.
    fn drain(m: &Mutex<Monitor>) {
        let mut guard = m.lock().unwrap_or_else(PoisonError::into_inner);
        let me = &mut *guard;
        let Some(p) = me.process.as_mut() else { return };
        let ended = loop {
            match p.poll() {
                None => return,
                Some(Ok(ProcessEvent::Output { fd, data })) => {
                    if fd != 1 {
                        crate::core::broker::log_lines(&me.ctx.name, &mut me.lines, &data);
                    }
                }
                Some(Ok(ProcessEvent::Exit(r))) => break exit_reason(&r),
                Some(Err(e)) => break e.to_string(),
            }
        };
        let (p, id, table) = (me.process.take(), me.ctx.id, me.table.clone());
        drop(guard);
        // Outside the lock: dropping the command closes its mailboxes,
        // whose notify is this monitor.
        drop(p);
        table.on_disconnect(id, Disconnected::new(EndKind::Broken, ended));
    }
}

/// What the bootstrap writes to its stdin socket, to the command's stdin
/// (passwords do not come this way: see [`HopHooks`]). Ends when the
/// bootstrap closes it.
fn pump_in(input: ProcessInput, mut tx: UnixStream) {
    let mut buf = vec![0u8; 128 << 10];
    loop {
        match tx.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if input.write(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
