//! [`Commands`]: the commands this agent runs for `exec` calls, from spawn
//! to reply.
//!
//! A slot per running command, holding its pipes, pidfd and timeout timer
//! (registered under [`Token::Command`] with the slot), its pending stdin,
//! its output (kept for the reply, or streamed), its credit and its exit.
//! A command is done, and its slot free, once it has exited, its output
//! pipes are drained (or abandoned after the exit) and no child's stream
//! rides on it; then its [`ExecReply`] goes up.
//!
//! **Streamed commands** (`stream_to`) are addressable: EXEC_CONTROL
//! messages carry more stdin (acknowledged to `stdin_acks_to` as written,
//! so the master's sender has a bounded window), signals, pty resizes, tty
//! answers, the agent's own binary for a next hop's stage0, output credit
//! (`Ack`) and the adoption of the command's pipes as a child stream. Output
//! is read only while the command's credit lasts and the outbox is not full:
//! a slow reader stops the command, not memory growth here or in the master.
//!
//! **Timeouts:** SIGTERM to the process group when `timeout_ms` runs out,
//! SIGKILL `KILL_GRACE_MS` (5 s) later.

use alloc::ffi::CString;
use alloc::vec::Vec;

use rustix::fd::{AsFd, OwnedFd};
use serde_bytes::ByteBuf;

use super::children::Children;
use super::outbox::Outbox;
use super::spawn::{self, Child};
use super::token::{CommandFd, Pipe, Token};
use super::util::cstring;
use crate::core::poller::{Interest, Poller};
use crate::core::side::{self, Io};
use crate::core::tool_process::tool_process;
use crate::proto::functions::{self as f, ExecArgs, ExecControl, ExecOp, ExecOutput, ExecReply, Stdio, ToolState};
use crate::proto::message::{LogLevel, LogSource};
use crate::proto::{ErrorKind, ExitStatus, Header, Message, RemoteError};

/// After a timeout's SIGTERM, SIGKILL follows this much later.
const KILL_GRACE_MS: u64 = 5_000;

/// One running command.
struct Proc {
    child: Child,
    stdin_data: Vec<u8>,
    stdin_pos: usize,
    /// More stdin may arrive (streamed stdin, until CloseStdin).
    stdin_open: bool,
    stdin_acks_to: Option<u32>,
    stdin_watched: bool,
    out: Vec<u8>,
    err: Vec<u8>,
    status: Option<ExitStatus>,
    caller: u32,
    reply_to: u32,
    stream_to: Option<u32>,
    too_large: bool,
    /// Output credit (0: unlimited) and streamed bytes not yet acknowledged.
    window: u32,
    unacked: u64,
    /// Whether stdout/stderr are registered for reading right now.
    reading: bool,
    timer: Option<OwnedFd>,
    timed_out: bool,
}

impl Proc {
    /// Types `data` (a password and newline) where the tool reads it: its
    /// stdin (`stdin`), else its tty (the hybrid tty or the pty; nowhere
    /// without one) once the program reading it has turned echo off.
    /// `check` ([`ExecOp::AnswerTool`]'s `if_unseen`): only while the tool
    /// is at its prompt, which is looked at last, right before typing
    /// (`core::tool_process`). Returns what that look saw.
    fn answer(&self, data: &[u8], stdin: bool, check: Option<bool>) -> ToolState {
        let c = &self.child;
        let fd = match (stdin, c.tty, c.pty) {
            (true, ..) | (false, false, true) => &c.stdin,
            (false, true, _) => &c.stderr,
            (false, false, false) => &None,
        };
        if let (false, Some(fd)) = (stdin, fd) {
            crate::core::tty::wait_for_echo_off(fd.as_fd());
        }
        let state = match check {
            None => ToolState::AtItsPrompt,
            // Reaped: gone, and its pid may be another process's now.
            Some(_) if self.status.is_some() => ToolState::Exited,
            Some(_) => tool_process(self.child.pid as u32),
        };
        let typed = state == ToolState::AtItsPrompt || (state == ToolState::Unseen && check == Some(true));
        if let (true, Some(fd)) = (typed, fd) {
            spawn::type_in(fd, data);
        }
        state
    }
}

/// The command table.
#[derive(Default)]
pub struct Commands {
    /// Slots; a slot's tokens are fixed while it is in use.
    procs: Vec<Option<Proc>>,
    /// Read buffer for command output, kept between events (allocating and
    /// zeroing 64 KiB per readable event was most of a small read's cost).
    out_buf: Vec<u8>,
}

impl Commands {
    /// Spawns the command of an `exec` call `h` and registers its fds;
    /// its reply goes up when it is done.
    pub fn start(&mut self, a: ExecArgs, h: &Header, poller: &Poller, out: &Outbox) -> Result<(), RemoteError> {
        let argv = a.argv.iter().map(|s| cstring(s)).collect::<Result<Vec<_>, _>>()?;
        if argv.is_empty() {
            return Err(RemoteError::new(ErrorKind::BadArgs, "exec: empty argv"));
        }
        if a.stream_to.is_some() && self.find(h.src, a.stream_to).is_some() {
            return Err(RemoteError::new(ErrorKind::BadArgs, "exec: stream handle already in use"));
        }
        let child = match &a.enter {
            // The setns and chroot methods behind this hop.
            Some(enter) => {
                let env: Vec<(&[u8], &[u8])> = a.env.iter().map(|(k, v)| (&k[..], &v[..])).collect();
                let own = || {
                    if a.env_clear {
                        Vec::new()
                    } else {
                        super::util::environ().into_iter().map(<[u8]>::to_vec).collect()
                    }
                };
                spawn::spawn_entered(enter, &argv, &env, own).map_err(|e| super::util::os_error(e, "enter", b""))?
            }
            None => {
                let env = if a.env_clear || !a.env.is_empty() { Some(build_env(&a)?) } else { None };
                let cwd = a.cwd.as_ref().map(|c| cstring(c)).transpose()?;
                let cmd = spawn::Command {
                    argv: &argv,
                    env: env.as_deref(),
                    cwd: cwd.as_ref(),
                    capture: a.stdio == Stdio::Capture,
                    pty: a.pty,
                    tty: a.tty && a.pty.is_none(),
                };
                spawn::spawn(&cmd).map_err(|e| super::util::os_error(e, "exec", &a.argv[0]))?
            }
        };
        let timer = a.timeout_ms.and_then(|ms| arm_timer(None, ms));
        let slot = match self.procs.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                self.procs.push(None);
                self.procs.len() - 1
            }
        };
        let token = |fd| u64::from(Token::Command(slot, fd));
        if let Some(fd) = &child.stdin {
            let _ = side::set_nonblocking(fd.as_fd(), true);
            let _ = poller.add(fd.as_fd(), token(CommandFd::Stdin), Interest::WRITE);
        }
        let read = if out.is_full() { Interest::NONE } else { Interest::READ };
        for (pipe, fd) in [(Pipe::Stdout, &child.stdout), (Pipe::Stderr, &child.stderr)] {
            if let Some(fd) = fd {
                let _ = side::set_nonblocking(fd.as_fd(), true);
                let _ = poller.add(fd.as_fd(), token(CommandFd::output(pipe)), read);
            }
        }
        let _ = poller.add(child.pidfd.as_fd(), token(CommandFd::Exit), Interest::READ);
        if let Some(t) = &timer {
            let _ = poller.add(t.as_fd(), token(CommandFd::Timer), Interest::READ);
        }
        self.procs[slot] = Some(Proc {
            child,
            stdin_data: a.stdin.into_vec(),
            stdin_pos: 0,
            stdin_open: a.stdin_acks_to.is_some(),
            stdin_acks_to: a.stdin_acks_to,
            stdin_watched: true,
            out: Vec::new(),
            err: Vec::new(),
            status: None,
            caller: h.src,
            reply_to: h.reply_to,
            stream_to: a.stream_to,
            too_large: false,
            window: if a.stream_to.is_some() { a.window } else { 0 },
            unacked: 0,
            reading: !out.is_full(),
            timer,
            timed_out: false,
        });
        Ok(())
    }

    fn find(&self, caller: u32, stream: Option<u32>) -> Option<usize> {
        self.procs.iter().position(|p| p.as_ref().is_some_and(|p| p.caller == caller && p.stream_to == stream))
    }

    /// Whether the command in process group `pid` still runs.
    pub fn running(&self, pid: i32) -> bool {
        self.procs.iter().flatten().any(|p| p.child.pid == pid && p.status.is_none())
    }

    /// An EXEC_CONTROL message for a streamed command (see the module
    /// docs). `Adopt` hands its pipes to `children`. `SendResource` is
    /// returned (with the command's caller and stream) for the importer,
    /// which fetches it and hands it to [`Commands::append_stdin`].
    pub fn control(
        &mut self,
        m: Message,
        poller: &Poller,
        out: &mut Outbox,
        children: &mut Children,
    ) -> Option<(u32, u32, ExecOp)> {
        let Some(c) = m.payload(out.max() as usize).and_then(|p| postcard::from_bytes::<ExecControl>(&p).ok()) else {
            out.log(LogLevel::Error, LogSource::Agent, b"malformed exec control message; ignored");
            return None;
        };
        let Some(slot) = self.find(m.header.src, Some(c.stream)) else {
            // Already finished: its reply is on the way, and the master
            // closes the stdin credit mailbox when that reply arrives. A
            // tool's prompt is answered no more.
            if let (ExecOp::AnswerTool { .. }, true) = (c.op, m.header.reply_to != 0) {
                out.send(m.header.src, m.header.reply_to, 0, &(ToolState::Exited as u32));
            }
            return None;
        };
        let Some(Some(p)) = self.procs.get_mut(slot) else { return None };
        match c.op {
            ExecOp::Stdin(data) => {
                if p.child.stdin.is_none() {
                    // The command closed its stdin: the bytes are dropped, but
                    // acknowledged (the sender's credit must not leak).
                    if let Some(to) = p.stdin_acks_to {
                        let (caller, n) = (p.caller, data.len() as u32);
                        out.send(caller, to, 0, &n);
                    }
                    return None;
                }
                p.stdin_data.extend_from_slice(&data);
                self.write_stdin(slot, poller, out);
            }
            ExecOp::CloseStdin => {
                p.stdin_open = false;
                if p.child.pty {
                    // A pty has no end of file: its line discipline turns the
                    // EOF character (^D) into one for the reader.
                    p.stdin_data.push(4);
                }
                self.write_stdin(slot, poller, out);
            }
            ExecOp::Signal(sig) => {
                if p.status.is_none() {
                    spawn::kill_group(p.child.pid, sig);
                }
            }
            ExecOp::Ack(n) => {
                p.unacked = p.unacked.saturating_sub(n as u64);
                if p.status.is_some() {
                    // Exited with output still queued in its pipes.
                    self.read_output(slot, Pipe::Stdout, true, poller, out);
                    self.read_output(slot, Pipe::Stderr, true, poller, out);
                } else {
                    self.set_reading(slot, poller, out.is_full());
                }
            }
            ExecOp::Resize(rows, cols) => {
                if let (true, Some(fd)) = (p.child.pty, &p.child.stdout) {
                    spawn::set_winsize(fd, rows, cols);
                }
            }
            ExecOp::Answer(data) => {
                p.answer(&data, false, None);
            }
            ExecOp::AnswerTool { data, stdin, if_unseen } => {
                let state = p.answer(&data, stdin, Some(if_unseen));
                // A unit variant goes on the wire as its index, a varint
                // like a u32's: this sends a ToolState without another
                // instantiation of the serialiser.
                if m.header.reply_to != 0 {
                    out.send(m.header.src, m.header.reply_to, 0, &(state as u32));
                }
            }
            ExecOp::SendSelf => {
                if p.child.stdin.is_some() && super::builtins::append_own_exe(&mut p.stdin_data).is_err() {
                    // stage0 then fails its size/hash check: a clear error, not a hang.
                    p.child.stdin = None;
                }
                self.write_stdin(slot, poller, out);
            }
            op @ ExecOp::SendResource { .. } => return Some((m.header.src, c.stream, op)),
            ExecOp::Adopt(id) => {
                let (Some(tx), Some(rx)) = (p.child.stdin.take(), p.child.stdout.take()) else { return None };
                p.stdin_open = false;
                p.stdin_data = Vec::new();
                let pid = p.child.pid;
                children.adopt(id, rx, tx, pid, poller, out);
            }
        }
        self.finish_if_done(slot, poller, out, children);
        None
    }

    /// Appends `data` (a resource the importer fetched for `SendResource`)
    /// to the stdin of `caller`'s command `stream`; `None` (the fetch
    /// failed) closes it instead, so stage0 fails its size check at once
    /// rather than waiting.
    pub fn append_stdin(&mut self, caller: u32, stream: u32, data: Option<&[u8]>, poller: &Poller, out: &mut Outbox) {
        let Some(slot) = self.find(caller, Some(stream)) else { return };
        let Some(Some(p)) = self.procs.get_mut(slot) else { return };
        match data {
            Some(d) if p.child.stdin.is_some() => p.stdin_data.extend_from_slice(d),
            _ => p.child.stdin = None,
        }
        self.write_stdin(slot, poller, out);
    }

    /// Writes what stdin the command in `slot` takes now (its stdin is
    /// writable, or more arrived); closes it once all is written and no
    /// more can come, and acknowledges what was taken.
    pub fn write_stdin(&mut self, slot: usize, poller: &Poller, out: &mut Outbox) {
        let Some(Some(p)) = self.procs.get_mut(slot) else { return };
        let Some(fd) = &p.child.stdin else { return };
        let before = p.stdin_pos;
        let mut closed = false;
        while p.stdin_pos < p.stdin_data.len() {
            match side::write(fd.as_fd(), &p.stdin_data[p.stdin_pos..]) {
                Ok(Io::Done(n)) => p.stdin_pos += n,
                Ok(Io::WouldBlock) => break,
                Ok(Io::Closed) | Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let mut taken = p.stdin_pos - before;
        let pending = p.stdin_pos < p.stdin_data.len();
        if closed || !pending {
            if closed {
                taken += p.stdin_data.len() - p.stdin_pos;
            }
            p.stdin_data.clear();
            p.stdin_pos = 0;
        }
        if closed || (!pending && !p.stdin_open) {
            // All written (or the child closed its stdin): closing sends EOF.
            if let Some(fd) = p.child.stdin.take() {
                poller.delete(fd.as_fd());
            }
        } else if pending != p.stdin_watched {
            // Streamed stdin waiting for more: no wake-ups until it comes.
            p.stdin_watched = pending;
            let i = if pending { Interest::WRITE } else { Interest::NONE };
            let _ = poller.modify(fd.as_fd(), Token::Command(slot, CommandFd::Stdin).into(), i);
        }
        if let (Some(to), true) = (p.stdin_acks_to, taken > 0) {
            out.send(p.caller, to, 0, &(taken as u32));
        }
    }

    /// Whether a command's output should be read now: not while the outbox
    /// is full (`upstream_full`) or its credit is used up.
    fn set_reading(&mut self, slot: usize, poller: &Poller, upstream_full: bool) {
        let Some(Some(p)) = self.procs.get_mut(slot) else { return };
        let want = !upstream_full && (p.window == 0 || p.unacked < p.window as u64);
        if want == p.reading {
            return;
        }
        p.reading = want;
        let i = if want { Interest::READ } else { Interest::NONE };
        for (pipe, fd) in [(Pipe::Stdout, &p.child.stdout), (Pipe::Stderr, &p.child.stderr)] {
            if let Some(fd) = fd {
                let _ = poller.modify(fd.as_fd(), Token::Command(slot, CommandFd::output(pipe)).into(), i);
            }
        }
    }

    /// The outbox filled up or drained: every command's output reading
    /// follows.
    pub fn set_all_reading(&mut self, poller: &Poller, upstream_full: bool) {
        for slot in 0..self.procs.len() {
            self.set_reading(slot, poller, upstream_full);
        }
    }

    /// Reads the command's `pipe`: a few reads, or (`drain`, after its
    /// exit) until it is empty or the credit is used up. Output is streamed
    /// to `stream_to` or kept for the reply.
    pub fn read_output(&mut self, slot: usize, pipe: Pipe, drain: bool, poller: &Poller, out: &mut Outbox) {
        let mut buf = core::mem::take(&mut self.out_buf);
        buf.resize(f::OUTPUT_READ_MAX, 0);
        self.read_output_into(slot, pipe, drain, poller, out, &mut buf);
        self.out_buf = buf;
    }

    fn read_output_into(
        &mut self,
        slot: usize,
        pipe: Pipe,
        drain: bool,
        poller: &Poller,
        out: &mut Outbox,
        buf: &mut [u8],
    ) {
        let max = out.max() as usize - 256;
        for _ in 0..if drain { usize::MAX } else { 4 } {
            let Some(Some(p)) = self.procs.get_mut(slot) else { return };
            if p.window != 0 && p.unacked >= p.window as u64 {
                return self.set_reading(slot, poller, out.is_full());
            }
            let fd = if pipe == Pipe::Stdout { &p.child.stdout } else { &p.child.stderr };
            let Some(fd) = fd else { return };
            let r = side::read(fd.as_fd(), buf);
            match r {
                Ok(Io::Done(n)) => {
                    if let Some(handle) = p.stream_to {
                        p.unacked += n as u64 + u64::from(f::OUTPUT_FRAME_COST);
                        let chunk = ExecOutput { fd: pipe as u8, data: ByteBuf::from(&buf[..n]) };
                        out.send(p.caller, handle, 0, &chunk);
                    } else if p.out.len() + p.err.len() + n > max {
                        p.too_large = true;
                    } else if pipe == Pipe::Stdout {
                        p.out.extend_from_slice(&buf[..n]);
                    } else {
                        p.err.extend_from_slice(&buf[..n]);
                    }
                }
                // Before the exit, an empty pipe means later; after it, the
                // output is complete (a background grandchild may hold the
                // pipe open for ever: its later output is not this command's).
                Ok(Io::WouldBlock) if p.status.is_none() => return,
                Ok(_) | Err(_) => {
                    let fd = if pipe == Pipe::Stdout { p.child.stdout.take() } else { p.child.stderr.take() };
                    if let Some(fd) = fd {
                        poller.delete(fd.as_fd());
                    }
                    return;
                }
            }
        }
    }

    /// The command's pidfd is readable: reaps it and takes the output it
    /// left in its pipes (as far as the credit goes). Returns its process
    /// group and status when it has just exited, for the child stream it
    /// may carry.
    pub fn exited(&mut self, slot: usize, poller: &Poller, out: &mut Outbox) -> Option<(i32, ExitStatus)> {
        let Some(Some(p)) = self.procs.get_mut(slot) else { return None };
        if p.status.is_some() {
            return None;
        }
        let st = crate::core::wait::reap(p.child.pidfd.as_fd(), false)?;
        p.status = Some(st);
        poller.delete(p.child.pidfd.as_fd());
        if let Some(t) = p.timer.take() {
            poller.delete(t.as_fd());
        }
        let pid = p.child.pid;
        // What the child wrote before exiting is in the pipes now; take it
        // (as far as the credit goes) and do not wait for EOF.
        self.read_output(slot, Pipe::Stdout, true, poller, out);
        self.read_output(slot, Pipe::Stderr, true, poller, out);
        Some((pid, st))
    }

    /// The timeout fired: SIGTERM first, SIGKILL after the grace period.
    pub fn timer(&mut self, slot: usize, poller: &Poller) {
        let Some(Some(p)) = self.procs.get_mut(slot) else { return };
        let Some(t) = p.timer.take() else { return };
        poller.delete(t.as_fd());
        if p.status.is_some() {
            return;
        }
        if p.timed_out {
            spawn::kill_group(p.child.pid, libc::SIGKILL);
            return;
        }
        p.timed_out = true;
        spawn::kill_group(p.child.pid, libc::SIGTERM);
        p.timer = arm_timer(Some(t), KILL_GRACE_MS);
        if let Some(t) = &p.timer {
            let _ = poller.add(t.as_fd(), Token::Command(slot, CommandFd::Timer).into(), Interest::READ);
        }
    }

    /// Sends the reply of the command in `slot` and frees the slot if it is
    /// done: exited, its output taken, and no child's stream rides on it
    /// (that child's DEL_ROUTE goes up first).
    pub fn finish_if_done(&mut self, slot: usize, poller: &Poller, out: &mut Outbox, children: &Children) {
        let Some(Some(p)) = self.procs.get(slot) else { return };
        let Some(status) = p.status else { return };
        if p.child.stdout.is_some() || p.child.stderr.is_some() {
            // Output still queued behind the caller's credit.
            return;
        }
        if children.carried_by(p.child.pid).is_some() {
            // It carries a child's stream: the DEL_ROUTE goes up first.
            return;
        }
        let Some(p) = self.procs[slot].take() else { return };
        if let Some(fd) = &p.child.stdin {
            poller.delete(fd.as_fd());
        }
        let h = Header { src: p.caller, reply_to: p.reply_to, ..Header::default() };
        if p.too_large {
            let e = RemoteError::new(ErrorKind::TooLarge, "exec: output exceeds the maximum message size; stream it");
            return out.reply_error(&h, e);
        }
        let reply =
            ExecReply { status, timed_out: p.timed_out, stdout: ByteBuf::from(p.out), stderr: ByteBuf::from(p.err) };
        out.reply(&h, Ok(reply));
    }

    /// [`Commands::finish_if_done`] for the command in process group `pid`.
    pub fn finish_pid_if_done(&mut self, pid: i32, poller: &Poller, out: &mut Outbox, children: &Children) {
        if let Some(slot) = self.procs.iter().position(|p| p.as_ref().is_some_and(|p| p.child.pid == pid)) {
            self.finish_if_done(slot, poller, out, children);
        }
    }

    /// SIGTERM to the process group of every command still running: the
    /// agent is going, and its commands go with it.
    pub fn terminate_all(&self) {
        for p in self.procs.iter().flatten() {
            if p.status.is_none() {
                spawn::kill_group(p.child.pid, libc::SIGTERM);
            }
        }
    }
}

/// A one-shot monotonic timer firing in `ms` (a new one unless `reuse`).
fn arm_timer(reuse: Option<OwnedFd>, ms: u64) -> Option<OwnedFd> {
    use rustix::time::{timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags};
    let fd = match reuse {
        Some(fd) => fd,
        None => timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK).ok()?,
    };
    let ms = ms.max(1);
    let value = rustix::time::Timespec { tv_sec: (ms / 1000) as _, tv_nsec: ((ms % 1000) * 1_000_000) as _ };
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    let spec = Itimerspec { it_interval: zero, it_value: value };
    timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec).ok()?;
    Some(fd)
}

/// The child's environment: the agent's (unless cleared) with overrides.
fn build_env(a: &ExecArgs) -> Result<Vec<CString>, RemoteError> {
    let mut vars: Vec<Vec<u8>> =
        if a.env_clear { Vec::new() } else { super::util::environ().into_iter().map(<[u8]>::to_vec).collect() };
    for (k, v) in &a.env {
        if k.is_empty() || k.contains(&b'=') {
            return Err(RemoteError::new(ErrorKind::BadArgs, "exec: bad environment variable name"));
        }
        vars.retain(|e| !(e.len() > k.len() && e.starts_with(k) && e[k.len()] == b'='));
        let mut e = k.to_vec();
        e.push(b'=');
        e.extend_from_slice(v);
        vars.push(e);
    }
    vars.iter().map(|v| cstring(v)).collect()
}
