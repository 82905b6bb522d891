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

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::context::{decode_reply, disconnected, Context};
use super::error::CallError;
use super::Core;
use crate::core::latch::{Latch, WaitError};
use crate::core::router::{ContextShared, Delivery, CONTROL_MAX, SEND_TIMEOUT};
use crate::proto::functions::{self as f, ExecArgs, ExecControl, ExecOp, ExecOutput, ExecReply, Function};
use crate::proto::{handles, Message, MASTER_ID};

/// Output credit per command unless `ExecArgs::window` says otherwise.
pub const DEFAULT_WINDOW: u32 = 1 << 20;

/// Stdin bytes in flight (sent, not yet written to the command) per command.
pub const STDIN_WINDOW: usize = 1 << 20;

/// Largest stdin chunk per message.
const STDIN_CHUNK: usize = 128 << 10;

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

/// A running command (see the module docs).
#[derive(Debug)]
pub struct Process {
    stream: u32,
    reply: u32,
    acks_handle: u32,
    latch: Arc<Latch<Delivery>>,
    input: Option<ProcessInput>,
    control: Control,
    window: u32,
    consumed: u32,
    exit: Option<ExecReply>,
}

/// Sends EXEC_CONTROL messages for one command.
#[derive(Clone, Debug)]
struct Control {
    core: Arc<Core>,
    shared: Arc<ContextShared>,
    stream: u32,
}

impl Control {
    /// Sends `op`: stdin data waits for room in the stream's queue (until
    /// the stream takes nothing for [`SEND_TIMEOUT`]); every other op is a
    /// small control frame that never waits (see the module docs).
    fn send(&self, op: ExecOp) -> Result<(), CallError> {
        let stdin = matches!(op, ExecOp::Stdin(_));
        let c = ExecControl { stream: self.stream, op };
        let data = postcard::to_allocvec(&c).map_err(|e| CallError::Encode {
            context: self.shared.name.clone(),
            function: "exec control".into(),
            detail: e.to_string(),
        })?;
        let msg = Message::new(self.shared.id, MASTER_ID, handles::EXEC_CONTROL, 0, data);
        let table = &self.core.table;
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
        self.control.core.table.close_mailbox(self.acks_handle);
    }
}

impl ProcessInput {
    /// Writes `data` to the command's stdin. Blocks while the window is
    /// full (the command is not reading), but not for ever: after
    /// [`SEND_TIMEOUT`] without a byte taken it fails with
    /// [`CallError::Timeout`] (what was sent before stays sent). Fails once
    /// the command has exited, and at once when the context is lost.
    pub fn write(&self, data: &[u8]) -> Result<(), CallError> {
        let inner = &*self.inner;
        let closed = || match inner.control.shared.disconnected() {
            Some(d) => disconnected(&inner.control.shared, f::Exec::NAME, d.reason),
            None => CallError::InputClosed { context: inner.control.shared.name.clone() },
        };
        let mut st = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        for chunk in data.chunks(STDIN_CHUNK) {
            if st.closed || inner.acks.is_closed() {
                return Err(closed());
            }
            while st.in_flight > 0 && st.in_flight + chunk.len() > STDIN_WINDOW {
                // Each acknowledgement is progress: the limit restarts.
                match inner.acks.get(Some(Instant::now() + SEND_TIMEOUT)) {
                    Ok(Ok(msg)) => {
                        let n: u32 = decode_reply(
                            &inner.control.shared,
                            f::Exec::NAME,
                            &msg,
                            inner.control.core.table.max_message_size,
                        )?;
                        st.in_flight = st.in_flight.saturating_sub(n as usize);
                    }
                    Ok(Err(d)) => return Err(disconnected(&inner.control.shared, f::Exec::NAME, d.reason)),
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

    /// Has the context append its own agent executable to the command's
    /// stdin (see `master::via`).
    pub(crate) fn send_self(&self) -> Result<(), CallError> {
        self.inner.control.send(ExecOp::SendSelf)
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
        let table = &self.core.table;
        let (reply, latch) = table.open_mailbox(self.shared.id, true);
        let (stream, _) = table.open_mailbox_into(self.shared.id, false, latch.clone());
        let (acks_handle, acks) = table.open_mailbox(self.shared.id, false);
        let mut a = args.clone();
        a.stream_to = Some(stream);
        a.stdin_acks_to = Some(acks_handle);
        if a.window == 0 {
            a.window = DEFAULT_WINDOW;
        }
        let control = Control { core: self.core.clone(), shared: self.shared.clone(), stream };
        let input = ProcessInput {
            inner: Arc::new(InputInner {
                control: control.clone(),
                acks,
                acks_handle,
                state: Mutex::new(InputState { in_flight: a.stdin.len(), closed: false }),
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
        if let Some(r) = &self.exit {
            return Ok(ProcessEvent::Exit(r.clone()));
        }
        let max = self.control.core.table.max_message_size;
        // Credit back for what the caller has taken since the last ack.
        if self.consumed >= self.window / 4 {
            self.control.send(ExecOp::Ack(self.consumed))?;
            self.consumed = 0;
        }
        match self.latch.get(deadline) {
            Ok(Ok(msg)) if msg.header.handle == self.stream => {
                let chunk: ExecOutput = decode_reply(&self.control.shared, f::Exec::NAME, &msg, max)?;
                self.consumed = self.consumed.saturating_add(chunk.data.len() as u32);
                Ok(ProcessEvent::Output { fd: chunk.fd, data: chunk.data.into_vec() })
            }
            Ok(Ok(msg)) => {
                let r: ExecReply = decode_reply(&self.control.shared, f::Exec::NAME, &msg, max)?;
                self.finish();
                self.exit = Some(r.clone());
                Ok(ProcessEvent::Exit(r))
            }
            Ok(Err(d)) => Err(disconnected(&self.control.shared, f::Exec::NAME, d.reason)),
            Err(WaitError::Timeout) => Err(CallError::Timeout {
                context: self.control.shared.name.clone(),
                function: f::Exec::NAME.into(),
                timeout: deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(Instant::now())),
            }),
            Err(WaitError::Closed) => {
                let reason = self.control.shared.disconnected().map_or_else(|| "mailbox closed".into(), |d| d.reason);
                Err(disconnected(&self.control.shared, f::Exec::NAME, reason))
            }
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
    /// [`CallError::InputClosed`].
    fn finish(&mut self) {
        let table = &self.control.core.table;
        table.close_mailbox(self.stream);
        table.close_mailbox(self.reply);
        if let Some(i) = self.input.take() {
            // Nothing to close any more: no CloseStdin when it drops.
            i.inner.state.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        }
        // A writer (another clone) may wait for credit: wake it.
        table.close_mailbox(self.acks_handle);
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
