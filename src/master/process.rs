//! [`Process`]: a command running in a context, streamed both ways.
//!
//! [`Context::spawn`] starts the command with `stream_to` (its output
//! chunks come to a mailbox as they are read) and `stdin_acks_to` (stdin
//! stays open for [`ProcessInput::write`]). Both directions have a bounded
//! window, so a slow side holds the other back instead of filling memory:
//!
//! - output: the agent reads at most `window` bytes ahead of what
//!   [`Process::next`] has handed out; the consumer acknowledges every
//!   quarter window (EXEC_CONTROL `Ack`).
//! - stdin: at most [`STDIN_WINDOW`] bytes are in flight; the agent reports
//!   what it wrote to the command to a mailbox only the input handle reads,
//!   so a thread writing stdin never depends on the output reader.
//!
//! Signals and pty resizes travel the same control handle. A `Process`
//! dropped before its exit kills the command's process group (its output
//! would have nowhere to go).
//!
//! No send here blocks for ever: control messages (signals, credit, end of
//! stdin, adopt) are small and never wait for room in the stream's queue
//! ([`crate::core::router::RouterTable::send_control`]), so dropping a
//! `Process` or a `ProcessInput` returns at once; stdin data waits for room
//! and for credit at most [`SEND_TIMEOUT`] without progress, then fails with
//! [`CallError::Timeout`]. A context that is lost (behind a hop: also one
//! its hop dropped for not reading) fails them at once.
//!
//! **The master holds the agent to the credit** (issue 13: an agent is not
//! trusted). Both mailboxes have a budget, checked on the broker thread as
//! the frames arrive ([`crate::core::latch::Budget`]), so what the master
//! holds for a command is bounded even if nobody ever reads it:
//!
//! - output: at most the window plus one read of the agent's
//!   ([`f::OUTPUT_READ_MAX`]), each frame counted as its payload plus
//!   [`f::OUTPUT_FRAME_COST`] (the agent counts the same, less the frame's
//!   few header bytes), so many tiny frames are bounded too. A legitimate
//!   agent never gets there: what is queued unread was never acknowledged.
//! - stdin acknowledgements: well-formed ones fold into their sum as they
//!   arrive, so one is queued at most; a few kilobytes of malformed ones.
//!
//! A compressed frame is inflated no further than that credit (output) or
//! a `u32` (an acknowledgement): beyond, a [`CallError::Decode`].
//!
//! Past its budget the agent is broken or hostile. The master drops what it
//! held for the command, refuses the rest, kills the command and fails the
//! `Process` and its input with [`CallError::CreditExceeded`] (other
//! commands on the context go on). If the agent keeps sending
//! ([`KEEPS_SENDING`] more, beyond what could have been on its way when the
//! kill went out), the master disconnects the context, saying why, and kills
//! its agent (its transport, or the command carrying it behind a hop).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::context::{decode_reply, disconnected, Context};
use super::error::CallError;
use super::RouterState;
use crate::core::broker::Cmd;
use crate::core::latch::{Budget, Latch, Overrun, OverrunFn, WaitError};
use crate::core::router::{ContextShared, Delivery, CONTROL_MAX};
use crate::core::stream_out::SEND_TIMEOUT;
use crate::proto::functions::{self as f, ExecArgs, ExecControl, ExecOp, ExecOutput, ExecReply, Function, ToolState};
use crate::proto::{handles, Message, MASTER_ID};

/// Output credit per command unless `ExecArgs::window` says otherwise.
pub const DEFAULT_WINDOW: u32 = 1 << 20;

/// Stdin bytes in flight (sent, not yet written to the command) per command.
pub const STDIN_WINDOW: usize = 1 << 20;

/// Largest stdin chunk per message.
const STDIN_CHUNK: usize = 128 << 10;

/// What the master holds of a command's output beyond its window: one read
/// of the agent's, with its frame cost (the agent checks the credit before
/// each read).
const OUTPUT_SLACK: u64 = f::OUTPUT_READ_MAX as u64 + f::OUTPUT_FRAME_COST as u64;

/// The part of an output frame's payload the master does not count: the
/// fd byte and the data length (a varint of at most 5 bytes). So a frame
/// never costs the master more than it cost the agent.
const OUTPUT_HEADER: u64 = 6;

/// What queued stdin acknowledgements may cost, each its payload plus
/// [`f::OUTPUT_FRAME_COST`]. Well-formed ones fold into one, so this bounds
/// the malformed ones only (about 60).
const ACKS_BUDGET: u64 = 4096;

/// Largest stdin acknowledgement (a `u32`) once inflated.
const ACK_MAX: u32 = 16;

/// After an overrun, the most the agent may still send for the command
/// (refused and counted, as the budget counts) before the master gives up
/// on the context: more than its queue and the socket buffers could have
/// held when the kill went out, so the agent is not late but deaf.
pub const KEEPS_SENDING: u64 = 16 << 20;

/// "output" in [`CallError::CreditExceeded`].
const OUTPUT: &str = "output";
/// "stdin acknowledgements" in [`CallError::CreditExceeded`].
const ACKS: &str = "stdin acknowledgements";

/// The handle of the message [`Waker::wake`] puts into a `Process`'s
/// latch: no mailbox has it (dynamic handles start at
/// [`handles::FIRST_DYNAMIC`]), so nothing the router delivers is taken
/// for it.
const WAKE: u32 = 0;

/// Wakes the thread waiting in [`Process::next_or_woken`] (see
/// `master::via`: its output pump hands the command over to a router
/// notify once the context is adopted).
#[derive(Clone, Debug)]
pub(crate) struct Waker(Arc<Latch<Delivery>>);

impl Waker {
    /// Makes the waiter's next (or current) wait return `None`.
    pub(crate) fn wake(&self) {
        // Free against the budget: it is not the agent's.
        self.0.put(Ok(Message::new(MASTER_ID, MASTER_ID, WAKE, 0, Vec::new())));
    }
}

/// What a running command produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEvent {
    /// A chunk of output: fd 1 (stdout, or the pty) or 2 (stderr).
    Output {
        /// 1 or 2.
        fd: u8,
        /// The bytes, in the order the command wrote them on that fd.
        data: Vec<u8>,
    },
    /// The command ended (all its output came before this).
    Exit(ExecReply),
}

/// A running command (see the module docs): its output as it comes, then
/// how it ended.
///
/// ```
/// use mito::functions::ExecArgs;
/// use mito::{LocalOptions, ProcessEvent, Router};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let router = Router::new()?;
/// let ctx = router.local(LocalOptions::default())?;
/// let argv = ["sh", "-c", "echo one; echo two >&2"].map(|a| a.as_bytes().to_vec().into());
/// let mut p = ctx.spawn(&ExecArgs { argv: argv.to_vec(), ..ExecArgs::default() })?;
/// let (mut out, mut err) = (Vec::new(), Vec::new());
/// let status = loop {
///     match p.next(None)? {
///         ProcessEvent::Output { fd: 1, data } => out.extend(data),
///         ProcessEvent::Output { data, .. } => err.extend(data),
///         ProcessEvent::Exit(r) => break r.status,
///     }
/// };
/// assert_eq!((status.code, &out[..], &err[..]), (Some(0), &b"one\n"[..], &b"two\n"[..]));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Process {
    stream: u32,
    reply: u32,
    acks_handle: u32,
    latch: Arc<Latch<Delivery>>,
    input: Option<ProcessInput>,
    control: Control,
    window: u32,
    /// Credit taken since the last ack: bytes plus a frame cost per chunk.
    consumed: u32,
    exit: Option<ExecReply>,
    watchdog: Arc<Watchdog>,
}

/// Told by both mailboxes' budgets when the agent sends more than it may
/// (see the module docs); shared with the [`ProcessInput`].
#[derive(Debug)]
struct Watchdog {
    /// Weak: the budgets' callbacks live in latches the router holds.
    state: Weak<RouterState>,
    shared: Arc<ContextShared>,
    stream: u32,
    output: Weak<Latch<Delivery>>,
    acks: Weak<Latch<Delivery>>,
    /// The first overrun: which mailbox, and its limit.
    failed: OnceLock<(&'static str, u64)>,
    /// How far beyond it the agent has gone since.
    excess: AtomicU64,
    /// The context was disconnected for it.
    gave_up: AtomicBool,
}

impl Watchdog {
    /// A budget callback for the mailbox of `what` (on the broker thread:
    /// nothing here may block).
    fn on_overrun(self: &Arc<Self>, what: &'static str) -> OverrunFn {
        let dog = self.clone();
        Arc::new(move |o: Overrun| dog.overrun(what, o))
    }

    fn overrun(&self, what: &'static str, o: Overrun) {
        let first = self.failed.set((what, o.limit)).is_ok();
        if self.failed.get().is_some_and(|f| f.0 == what) {
            self.excess.fetch_max(o.excess, Ordering::Relaxed);
        }
        let Some(state) = self.state.upgrade() else { return };
        let name = &self.shared.name;
        if first {
            log::warn!(
                "[{name}] the agent sent {} bytes of {what} beyond its credit of {} bytes: killing the command",
                o.excess,
                o.limit
            );
            // The command goes, and both sides of it fail now.
            kill_command(&state, self.shared.id, self.stream);
            for l in [&self.output, &self.acks].into_iter().filter_map(Weak::upgrade) {
                l.close();
            }
        }
        if o.excess > KEEPS_SENDING && !self.gave_up.swap(true, Ordering::SeqCst) {
            let reason = format!(
                "the agent sent {} bytes of {what} beyond its credit of {} bytes and kept sending after its command \
                 was killed (a broken or hostile agent): disconnected by the master",
                o.excess, o.limit
            );
            log::warn!("[{name}] {reason}");
            state.table.give_up(self.shared.id, reason);
            kill_agent(&state, &self.shared);
        }
    }

    /// The error once the agent overran; `None` before.
    fn error(&self) -> Option<CallError> {
        let &(what, credit) = self.failed.get()?;
        Some(CallError::CreditExceeded {
            context: self.shared.name.clone(),
            function: f::Exec::NAME.into(),
            what: what.into(),
            excess: self.excess.load(Ordering::Relaxed),
            credit,
        })
    }

    /// Whether the mailbox of `what` stays open when its owner is done: the
    /// one that overran, until the context is given up on, so that what
    /// the agent keeps sending is still counted (and the context dropped
    /// for it) rather than discarded unseen.
    fn keeps(&self, what: &str) -> bool {
        self.failed.get().is_some_and(|f| f.0 == what) && !self.gave_up.load(Ordering::SeqCst)
    }
}

/// Sends SIGKILL to the command of stream `stream` on context `ctx`: a
/// small control frame that never waits for room (best effort).
fn kill_command(state: &RouterState, ctx: u32, stream: u32) {
    let c = ExecControl { stream, op: ExecOp::Signal(libc::SIGKILL) };
    if let Ok(data) = postcard::to_allocvec(&c) {
        let _ = state.table.send_control(&Message::new(ctx, MASTER_ID, handles::EXEC_CONTROL, 0, data));
    }
}

/// Kills the agent of a context: behind a hop, the command there that
/// carries it; directly attached, its process (by the broker).
pub(super) fn kill_agent(state: &RouterState, shared: &ContextShared) {
    match shared.transport.get() {
        Some(&(hop, stream)) => kill_command(state, hop, stream),
        None => state.broker.send(Cmd::Kill(shared.id)),
    }
}

/// Folds a well-formed stdin acknowledgement into the one queued before it
/// (their sum): the writer only needs the total.
fn merge_acks(last: &mut Delivery, new: &Delivery) -> bool {
    let (Ok(a), Ok(b)) = (last, new) else { return false };
    if a.header.flags != 0 || b.header.flags != 0 {
        return false;
    }
    let (Ok(x), Ok(y)) = (postcard::from_bytes::<u32>(&a.data), postcard::from_bytes::<u32>(&b.data)) else {
        return false;
    };
    let mut buf = [0u8; 5];
    let Ok(sum) = postcard::to_slice(&x.saturating_add(y), &mut buf) else { return false };
    a.data.clear();
    a.data.extend_from_slice(sum);
    a.header.len = a.data.len() as u32;
    true
}

/// Sends EXEC_CONTROL messages for one command.
#[derive(Clone, Debug)]
struct Control {
    state: Arc<RouterState>,
    shared: Arc<ContextShared>,
    stream: u32,
}

impl Control {
    /// Sends `op`: stdin data waits for room in the stream's queue (until
    /// the stream takes nothing for [`SEND_TIMEOUT`]); every other op is a
    /// small control frame that never waits (see the module docs).
    fn send(&self, op: ExecOp) -> Result<(), CallError> {
        self.send_asking(op, 0)
    }

    /// [`Control::send`] with a reply asked for, to mailbox `reply_to`.
    fn send_asking(&self, op: ExecOp, reply_to: u32) -> Result<(), CallError> {
        let stdin = matches!(op, ExecOp::Stdin(_));
        let c = ExecControl { stream: self.stream, op };
        let data = postcard::to_allocvec(&c).map_err(|e| CallError::Encode {
            context: self.shared.name.clone(),
            function: "exec control".into(),
            detail: e.to_string(),
        })?;
        let msg = Message::new(self.shared.id, MASTER_ID, handles::EXEC_CONTROL, reply_to, data);
        let table = &self.state.table;
        let bulk = stdin || msg.data.len() > CONTROL_MAX;
        let sent = if bulk { table.send(&msg, None) } else { table.send_control(&msg) };
        sent.map_err(|d| disconnected(&self.shared, f::Exec::NAME, d.reason))
    }
}

/// The stdin (and signal) side of a [`Process`]; clone it into the thread
/// that feeds the command. When the last clone is dropped, stdin is closed.
#[derive(Clone, Debug)]
pub struct ProcessInput {
    inner: Arc<InputInner>,
}

#[derive(Debug)]
struct InputInner {
    control: Control,
    acks: Arc<Latch<Delivery>>,
    acks_handle: u32,
    state: Mutex<InputState>,
    watchdog: Arc<Watchdog>,
}

#[derive(Debug)]
struct InputState {
    in_flight: usize,
    closed: bool,
}

impl Drop for InputInner {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if !st.closed {
            let _ = self.control.send(ExecOp::CloseStdin);
        }
        if !self.watchdog.keeps(ACKS) {
            self.control.state.table.close_mailbox(self.acks_handle);
        }
    }
}

impl ProcessInput {
    /// Writes `data` to the command's stdin. Blocks while the window is
    /// full (the command is not reading), but not for ever: after
    /// [`SEND_TIMEOUT`] without a byte taken it fails with
    /// [`CallError::Timeout`] (what was sent before stays sent). Fails once
    /// the command has exited, at once when the context is lost, and with
    /// [`CallError::CreditExceeded`] once the agent broke the credit.
    pub fn write(&self, data: &[u8]) -> Result<(), CallError> {
        let inner = &*self.inner;
        let closed = || match (inner.watchdog.error(), inner.control.shared.disconnected()) {
            (Some(e), _) => e,
            (None, Some(d)) => disconnected(&inner.control.shared, f::Exec::NAME, d.reason),
            (None, None) => CallError::InputClosed { context: inner.control.shared.name.clone() },
        };
        let mut st = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        for chunk in data.chunks(STDIN_CHUNK) {
            if st.closed || inner.acks.is_closed() || inner.watchdog.failed.get().is_some() {
                return Err(closed());
            }
            while st.in_flight > 0 && st.in_flight + chunk.len() > STDIN_WINDOW {
                // Each acknowledgement is progress: the limit restarts.
                match inner.acks.get(Some(Instant::now() + SEND_TIMEOUT)) {
                    Ok(Ok(msg)) => {
                        // A u32: a frame that inflates past a few bytes is not one.
                        let n: u32 = decode_reply(&inner.control.shared, f::Exec::NAME, &msg, ACK_MAX)?;
                        st.in_flight = st.in_flight.saturating_sub(n as usize);
                    }
                    Ok(Err(d)) => {
                        let lost = || disconnected(&inner.control.shared, f::Exec::NAME, d.reason);
                        return Err(inner.watchdog.error().unwrap_or_else(lost));
                    }
                    Err(WaitError::Timeout) => {
                        return Err(CallError::Timeout {
                            context: inner.control.shared.name.clone(),
                            function: f::Exec::NAME.into(),
                            timeout: SEND_TIMEOUT,
                        })
                    }
                    Err(WaitError::Closed) => {
                        st.closed = true;
                        return Err(closed());
                    }
                }
            }
            inner.control.send(ExecOp::Stdin(serde_bytes::ByteBuf::from(chunk)))?;
            st.in_flight += chunk.len();
        }
        Ok(())
    }

    /// Ends the command's stdin (EOF; on a pty the EOF character).
    pub fn close(&self) -> Result<(), CallError> {
        let mut st = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.closed {
            return Ok(());
        }
        st.closed = true;
        self.inner.control.send(ExecOp::CloseStdin)
    }

    /// Sends signal `sig` to the command's process group.
    pub fn signal(&self, sig: i32) -> Result<(), CallError> {
        self.inner.control.send(ExecOp::Signal(sig))
    }

    /// Tells the command's pty its new size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), CallError> {
        self.inner.control.send(ExecOp::Resize(rows, cols))
    }

    /// Types `data` (a password and newline) into the command's terminal
    /// (`tty` or `pty`) once the program reading it has turned echo off,
    /// so the answer is neither flushed nor echoed.
    pub fn answer(&self, data: &[u8]) -> Result<(), CallError> {
        self.inner.control.send(ExecOp::Answer(serde_bytes::ByteBuf::from(data)))
    }

    /// Types `data` (a password and newline) into the prompt of the tool
    /// the command runs, on its stdin (`stdin`) or its tty, only while
    /// that tool is still at its prompt: the agent looks at the tool's
    /// process right before typing (`ExecOp::AnswerTool`; `if_unseen`:
    /// type also where /proc does not show it). Returns what the agent saw
    /// (typed for `AtItsPrompt`, and for `Unseen` with `if_unseen`),
    /// waiting for it until `deadline` (see `master::via`).
    pub(crate) fn answer_tool(
        &self,
        data: &[u8],
        stdin: bool,
        if_unseen: bool,
        deadline: Instant,
    ) -> Result<ToolState, CallError> {
        let c = &self.inner.control;
        let table = &c.state.table;
        let (handle, latch) = table.open_mailbox(c.shared.id, true);
        let op = ExecOp::AnswerTool { data: serde_bytes::ByteBuf::from(data), stdin, if_unseen };
        let lost = |reason| disconnected(&c.shared, f::Exec::NAME, reason);
        let sent = Instant::now();
        let r = c.send_asking(op, handle).and_then(|()| match latch.get(Some(deadline)) {
            // A unit variant: a few bytes once inflated.
            Ok(Ok(msg)) => decode_reply(&c.shared, f::Exec::NAME, &msg, ACK_MAX),
            Ok(Err(d)) => Err(lost(d.reason)),
            Err(WaitError::Timeout) => Err(CallError::Timeout {
                context: c.shared.name.clone(),
                function: f::Exec::NAME.into(),
                timeout: deadline.saturating_duration_since(sent),
            }),
            Err(WaitError::Closed) => {
                Err(lost(c.shared.disconnected().map_or_else(|| "mailbox closed".into(), |d| d.reason)))
            }
        });
        table.close_mailbox(handle);
        r
    }

    /// Has the context append its own agent executable to the command's
    /// stdin (see `master::via`).
    pub(crate) fn send_self(&self) -> Result<(), CallError> {
        self.inner.control.send(ExecOp::SendSelf)
    }

    /// Has the context append the resource `r` to the command's stdin,
    /// from its importer cache or its `parent` (see `master::via`).
    pub(crate) fn send_resource(&self, r: &crate::proto::resource::Resource, parent: u32) -> Result<(), CallError> {
        let sha256 = serde_bytes::ByteBuf::from(&r.sha256[..]);
        self.inner.control.send(ExecOp::SendResource { sha256, size: r.size, parent })
    }

    /// The command bootstrapped an agent: its context is `id`, routed by
    /// this command's context from now on (see `master::via`).
    pub(crate) fn adopt(&self, id: u32) -> Result<(), CallError> {
        self.inner.control.send(ExecOp::Adopt(id))
    }
}

impl Context {
    /// Starts a command whose output streams back as it is produced and
    /// whose stdin stays open for [`ProcessInput::write`] (after any bytes in
    /// `args.stdin`). `args.window` of 0 means [`DEFAULT_WINDOW`]; `pty`,
    /// `timeout_ms`, env and cwd apply as for [`Context::exec_with`].
    pub fn spawn(&self, args: &ExecArgs) -> Result<Process, CallError> {
        let table = &self.state.table;
        let (reply, latch) = table.open_mailbox(self.shared.id, true);
        let (stream, _) = table.open_mailbox_into(self.shared.id, false, latch.clone());
        let (acks_handle, acks) = table.open_mailbox(self.shared.id, false);
        let mut a = args.clone();
        a.stream_to = Some(stream);
        a.stdin_acks_to = Some(acks_handle);
        if a.window == 0 {
            a.window = DEFAULT_WINDOW;
        }
        let watchdog = Arc::new(Watchdog {
            state: Arc::downgrade(&self.state),
            shared: self.shared.clone(),
            stream,
            output: Arc::downgrade(&latch),
            acks: Arc::downgrade(&acks),
            failed: OnceLock::new(),
            excess: AtomicU64::new(0),
            gave_up: AtomicBool::new(false),
        });
        // Before the call goes out, so before anything can arrive.
        latch.set_budget(Budget {
            limit: u64::from(a.window) + OUTPUT_SLACK,
            per_item: u64::from(f::OUTPUT_FRAME_COST) - OUTPUT_HEADER,
            merge: None,
            on_overrun: Some(watchdog.on_overrun(OUTPUT)),
        });
        acks.set_budget(Budget {
            limit: ACKS_BUDGET,
            per_item: u64::from(f::OUTPUT_FRAME_COST),
            merge: Some(merge_acks),
            on_overrun: Some(watchdog.on_overrun(ACKS)),
        });
        let control = Control { state: self.state.clone(), shared: self.shared.clone(), stream };
        let input = ProcessInput {
            inner: Arc::new(InputInner {
                control: control.clone(),
                acks,
                acks_handle,
                state: Mutex::new(InputState { in_flight: a.stdin.len(), closed: false }),
                watchdog: watchdog.clone(),
            }),
        };
        // The send is bounded by this context's call timeout (the reply,
        // the command's exit, is not: see `Process::next`).
        if let Err(e) = self.send_call::<f::Exec>(&a, reply) {
            input.inner.state.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
            table.close_mailbox(stream);
            table.close_mailbox(reply);
            return Err(e);
        }
        Ok(Process {
            stream,
            reply,
            acks_handle,
            latch,
            input: Some(input),
            control,
            window: a.window,
            consumed: 0,
            exit: None,
            watchdog,
        })
    }

    /// Runs a command and hands each chunk of stdout (fd 1) or stderr (fd 2)
    /// to `on_output` as it arrives; its stdin gets `args.stdin`, then EOF.
    /// Waits for the exit without a deadline (a dead context still ends the
    /// wait at once; `args.timeout_ms` bounds the command itself).
    pub fn exec_streaming(
        &self,
        args: &ExecArgs,
        mut on_output: impl FnMut(u8, &[u8]),
    ) -> Result<ExecReply, CallError> {
        let mut p = self.spawn(args)?;
        drop(p.take_input());
        loop {
            match p.next(None)? {
                ProcessEvent::Output { fd, data } => on_output(fd, &data),
                ProcessEvent::Exit(r) => return Ok(r),
            }
        }
    }
}

impl Process {
    /// The stdin side, once (as `std::process::Child::stdin`): dropping it
    /// closes stdin. `None` after the first call.
    pub fn take_input(&mut self) -> Option<ProcessInput> {
        self.input.take()
    }

    /// The command's stream handle (names it in EXEC_CONTROL messages).
    pub(crate) fn stream(&self) -> u32 {
        self.stream
    }

    /// Sends signal `sig` to the command's process group.
    pub fn signal(&self, sig: i32) -> Result<(), CallError> {
        if self.exit.is_some() {
            return Ok(());
        }
        self.control.send(ExecOp::Signal(sig))
    }

    /// The next output chunk or the exit, waiting until `deadline` (`None`:
    /// until one comes or the context is gone). After the exit, returns it
    /// again.
    pub fn next(&mut self, deadline: Option<Instant>) -> Result<ProcessEvent, CallError> {
        loop {
            if let Some(e) = self.next_or_woken(deadline)? {
                return Ok(e);
            }
        }
    }

    /// Wakes [`Process::next_or_woken`] from another thread.
    pub(crate) fn waker(&self) -> Waker {
        Waker(self.latch.clone())
    }

    /// The mailboxes whose deliveries this reads: the output stream and the
    /// reply (for [`crate::core::router::RouterTable::set_notify`]).
    pub(crate) fn handles(&self) -> [u32; 2] {
        [self.stream, self.reply]
    }

    /// What is queued, without waiting: `None` when nothing is (for a
    /// notify on the broker thread, which must not block).
    pub(crate) fn poll(&mut self) -> Option<Result<ProcessEvent, CallError>> {
        loop {
            match self.next_or_woken(Some(Instant::now())) {
                Ok(Some(e)) => return Some(Ok(e)),
                // A wake left over from the hand-over.
                Ok(None) => {}
                Err(CallError::Timeout { .. }) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// [`Process::next`], or `None` when woken by a [`Waker`].
    pub(crate) fn next_or_woken(&mut self, deadline: Option<Instant>) -> Result<Option<ProcessEvent>, CallError> {
        if let Some(r) = &self.exit {
            return Ok(Some(ProcessEvent::Exit(r.clone())));
        }
        if let Some(e) = self.watchdog.error() {
            return Err(e);
        }
        let max = self.control.state.table.max_message_size;
        // Credit back for what the caller has taken since the last ack.
        if self.consumed >= self.window / 4 {
            self.control.send(ExecOp::Ack(self.consumed))?;
            self.consumed = 0;
        }
        match self.latch.get(deadline) {
            Ok(Ok(msg)) if msg.header.handle == WAKE && msg.header.src == MASTER_ID => Ok(None),
            Ok(Ok(msg)) if msg.header.handle == self.stream => {
                // Inflated no further than the credit it came under.
                let credit = (u64::from(self.window) + OUTPUT_SLACK).min(u64::from(max)) as u32;
                let chunk: ExecOutput = decode_reply(&self.control.shared, f::Exec::NAME, &msg, credit)?;
                // As the agent counts it (see `f::OUTPUT_FRAME_COST`).
                let cost = (chunk.data.len() as u32).saturating_add(f::OUTPUT_FRAME_COST);
                self.consumed = self.consumed.saturating_add(cost);
                Ok(Some(ProcessEvent::Output { fd: chunk.fd, data: chunk.data.into_vec() }))
            }
            Ok(Ok(msg)) => {
                let r: ExecReply = decode_reply(&self.control.shared, f::Exec::NAME, &msg, max)?;
                self.finish();
                self.exit = Some(r.clone());
                Ok(Some(ProcessEvent::Exit(r)))
            }
            Ok(Err(d)) => Err(self
                .watchdog
                .error()
                .unwrap_or_else(|| disconnected(&self.control.shared, f::Exec::NAME, d.reason))),
            Err(WaitError::Timeout) => Err(CallError::Timeout {
                context: self.control.shared.name.clone(),
                function: f::Exec::NAME.into(),
                timeout: deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(Instant::now())),
            }),
            Err(WaitError::Closed) => Err(self.watchdog.error().unwrap_or_else(|| {
                let reason = self.control.shared.disconnected().map_or_else(|| "mailbox closed".into(), |d| d.reason);
                disconnected(&self.control.shared, f::Exec::NAME, reason)
            })),
        }
    }

    /// Waits for the exit, discarding output.
    pub fn wait(&mut self) -> Result<ExecReply, CallError> {
        loop {
            if let ProcessEvent::Exit(r) = self.next(None)? {
                return Ok(r);
            }
        }
    }

    /// Closes the mailboxes; a stdin writer still waiting for credit gets
    /// [`CallError::InputClosed`]. The one an agent overran stays open (see
    /// [`Watchdog::keeps`]).
    fn finish(&mut self) {
        let table = &self.control.state.table;
        if !self.watchdog.keeps(OUTPUT) {
            table.close_mailbox(self.stream);
        }
        table.close_mailbox(self.reply);
        if let Some(i) = self.input.take() {
            // Nothing to close any more: no CloseStdin when it drops.
            i.inner.state.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        }
        // A writer (another clone) may wait for credit: wake it (one that
        // overran is closed already).
        if !self.watchdog.keeps(ACKS) {
            table.close_mailbox(self.acks_handle);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exit.is_none() {
            if self.control.shared.disconnected().is_none() {
                let _ = self.control.send(ExecOp::Signal(libc::SIGKILL));
            }
            self.finish();
        }
    }
}
