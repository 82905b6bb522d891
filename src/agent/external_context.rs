//! [`ExternalContext`]: the agent's main loop.
//!
//! One thread, one epoll loop over: the parent stream (read side and, when
//! output is queued, write side), the two IoLogger pipes, and for every
//! running command its stdin/stdout/stderr pipes and its pidfd. Nothing
//! blocks: a long command or a slow parent is a state the loop returns to.
//!
//! **Architecture invariant:** the agent exits when its parent stream
//! closes, and takes its commands' process groups with it (SIGTERM). So no
//! agent outlives its master.
//!
//! **Goodbye:** an agent that exits on purpose says why in its last frame
//! ([`Goodbye`] on `GOODBYE`): asked to shut down, a termination signal
//! (which one), a fatal error (a malformed frame from its parent, a failed
//! `epoll_wait`), a panic (the panic handler writes the frame straight to
//! the parent fd, see [`panic_goodbye`]). One whose parent is gone says
//! nothing: there is no one to tell, and its children see their streams
//! end and exit the same way. So the master tells a clean exit from a crash
//! and from a broken link.
//!
//! Every watched fd is registered with a [`Token`] naming its role.
//!
//! Multi-hop: a streamed command that bootstrapped another agent can be
//! adopted as a child stream (see [`super::children`] for the routing
//! rules). Back-pressure runs both ways: a child that does not drain its
//! queue stops reads from the parent; a parent that does not drain ours
//! stops reads from children and commands.
//!
//! **Stall rule:** a child may hold the parent back only while it makes
//! progress. A child whose queue keeps reads from the parent stopped (above
//! `TX_HIGH`, then until below `TX_LOW`) and that takes no byte of it for
//! [`STALL_MS`] is dropped: its transport command's process group gets
//! SIGKILL, its stream is closed, DEL_ROUTE goes up for it and every
//! context behind it (the master fails their calls at once, naming this
//! hop), and reads from the parent resume. So a child that stops reading
//! stalls its siblings for at most [`STALL_MS`]. A slow but live link
//! takes bytes all along and is never dropped, however long its queue
//! stays up; the clock is held while our own parent does not drain us (a
//! child may then be blocked writing to us). The loop's epoll wait gets a
//! timeout only while some child's clock runs.
//!
//! A streamed command (`stream_to`) is also addressable: EXEC_CONTROL
//! messages carry more stdin (acknowledged to `stdin_acks_to` as written, so
//! the master's sender has a bounded window), signals, pty resizes and output
//! credit (`Ack`). Output is read only while the command's credit lasts and
//! the parent stream is not backed up: a slow reader stops the command, not
//! memory growth here or in the master.

use alloc::string::String;
use alloc::vec::Vec;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use serde_bytes::ByteBuf;

use super::builtins::{self, Identity};
use super::children::{ChildStream, Children};
use super::outbox::{flush_to, Outbox, TX_HIGH, TX_LOW};
use super::panic_goodbye::doing;
use super::spawn::{self, Child};
use super::stdio::Loggers;
use super::token::{CommandFd, Pipe, Token};
use super::util::cstring;
use crate::core::poller::{Event, Interest, Poller};
use crate::core::side::{self, Io};
use crate::core::stream::{Decoder, TxBuffer};
use crate::proto::functions::{self as f, ExecArgs, ExecControl, ExecOp, ExecOutput, ExecReply, Function, Stdio};
use crate::proto::message::{decode_call, AddRoute, DelRoute, Goodbye, Hello, LinkEnd, LogLevel, LogSource, Relay};
use crate::proto::{handles, ErrorKind, Header, Message, RemoteError, MASTER_ID};

/// After activity the loop polls without sleeping for this long: a request
/// that follows within it is picked up without waking an idle CPU (on a VM
/// that wake-up costs 20–40 µs, more than the round trip itself). Only while
/// recent gaps were shorter than this (see `run`); an idle agent sleeps in
/// epoll.
const POLL_WINDOW_NS: u64 = 100_000;

/// How long a child may keep reads from the parent stopped without taking
/// a byte of its queue before it is dropped (see the module docs). Longer
/// than a busy agent's pause (a large sha256, a deep `du`: one thread, not
/// reading meanwhile), short enough that siblings behind the same hop are
/// not held up for long.
pub const STALL_MS: u64 = 10_000;

/// When a child's stream ends while the command that carries it still runs
/// (or the command exits while the stream is open), its DEL_ROUTE waits
/// this long at most for the other half, so that it can say how the command
/// ended (the agent killed by a signal, ssh's exit status). The two usually
/// come microseconds apart.
const EXIT_WAIT_MS: u64 = 500;

pub use super::panic_goodbye::panic_goodbye;

/// Exit codes of the agent, for the master's diagnostics.
pub mod exit {
    /// Parent closed the stream (normal).
    pub const OK: i32 = 0;
    /// Bad command line from stage0.
    pub const USAGE: i32 = 64;
    /// Setting up fds or epoll failed.
    pub const SETUP: i32 = 71;
    /// The parent sent a malformed frame.
    pub const PROTOCOL: i32 = 76;
    /// SIGHUP, SIGINT or SIGTERM arrived (e.g. sudo relaying a hang-up).
    pub const SIGNALLED: i32 = 129;
}

/// After a timeout's SIGTERM, SIGKILL follows this much later.
const KILL_GRACE_MS: u64 = 5_000;

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
    status: Option<(Option<i32>, Option<i32>)>,
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

/// The agent's state.
pub struct ExternalContext {
    poller: Poller,
    rx: OwnedFd,
    decoder: Decoder,
    /// Frames to the parent, and whether it keeps up.
    out: Outbox,
    loggers: Loggers,
    procs: Vec<Option<Proc>>,
    ident: Identity,
    serial: u64,
    closing: bool,
    signals: Option<OwnedFd>,
    files: super::files::FileTable,
    /// Read buffer for command output, kept between events (allocating and
    /// zeroing 64 KiB per readable event was most of a small read's cost).
    out_buf: Vec<u8>,
    /// Streams to contexts carried onward (multi-hop).
    children: Children,
    /// Reads from the parent stopped: a child's queue is backed up (the
    /// opposite direction of [`Outbox::is_full`]).
    downstream_full: bool,
}

/// The agent's entry point: `mito-agent HASH CONTEXT_ID`. Returns the exit code.
pub fn main(args: &[&[u8]]) -> i32 {
    // SAFETY: ignoring SIGPIPE so a dead peer is an EPIPE, not a silent death;
    // children get the default back (spawn::spawn resets it).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let (Some(hash), Some(id)) = (args.get(1), args.get(2).and_then(|s| super::util::parse_decimal(s))) else {
        let _ = rustix::io::write(unsafe { BorrowedFd::borrow_raw(2) }, b"usage: mito-agent HASH CONTEXT_ID\n");
        return exit::USAGE;
    };
    let Ok((rx, tx_fd, loggers)) = super::stdio::take_over_stdio() else { return exit::SETUP };
    super::panic_goodbye::set_self_id(id as u32);
    let exe = rustix::fs::readlink("/proc/self/exe", Vec::new())
        .map(|p| String::from_utf8_lossy(p.to_bytes()).into_owned())
        .unwrap_or_default();
    let Ok(poller) = Poller::new() else { return exit::SETUP };
    let mut cx = ExternalContext {
        poller,
        rx,
        decoder: Decoder::new(crate::proto::MAX_MESSAGE_SIZE),
        out: Outbox::new(tx_fd, id as u32, crate::proto::MAX_MESSAGE_SIZE),
        loggers,
        procs: Vec::new(),
        ident: Identity { hash: String::from_utf8_lossy(hash).into_owned(), exe },
        serial: 0,
        closing: false,
        signals: super::signals::termination_signals(),
        files: super::files::FileTable::default(),
        out_buf: Vec::new(),
        children: Children::default(),
        downstream_full: false,
    };
    if cx.setup().is_err() {
        return exit::SETUP;
    }
    cx.run()
}

impl ExternalContext {
    fn setup(&mut self) -> Result<(), rustix::io::Errno> {
        side::set_nonblocking(self.rx.as_fd(), true)?;
        side::set_nonblocking(self.out.fd(), true)?;
        self.poller.add(self.rx.as_fd(), Token::ParentRx.into(), Interest::READ)?;
        self.poller.add(self.out.fd(), Token::ParentTx.into(), Interest::NONE)?;
        self.loggers.register(&self.poller)?;
        if let Some(fd) = &self.signals {
            self.poller.add(fd.as_fd(), Token::Signal.into(), Interest::READ)?;
        }
        // The marker ends stage0's text phase; frames follow it directly.
        let hello = Hello {
            protocol_version: crate::proto::PROTOCOL_VERSION,
            arch: String::from(ARCH),
            pid: rustix::process::getpid().as_raw_nonzero().get() as u32,
            agent_hash: self.ident.hash.clone(),
            exe: self.ident.exe.clone(),
        };
        let mut first = Vec::from(&b"\nMITO2\n"[..]);
        let data = postcard::to_allocvec(&hello).map_err(|_| rustix::io::Errno::INVAL)?;
        let id = self.out.id();
        let h = Header { dst: MASTER_ID, src: id, auth: id, handle: handles::HELLO, ..Header::default() };
        first.extend_from_slice(&crate::core::stream::encode(&h, &data));
        self.out.push_raw(&first);
        self.out.flush(&self.poller);
        Ok(())
    }

    fn run(&mut self) -> i32 {
        let mut events = Vec::with_capacity(64);
        let mut buf = crate::core::poller::Events::with_capacity(64);
        let mut last_activity = now_ns();
        // Moving average of the idle gaps between bursts: poll only while
        // the next event usually comes within the window (a local caller
        // does; one behind ssh, or an idle master, does not, and spinning
        // would only take CPU from whoever carries the reply).
        let mut gap_avg: u64 = 0;
        loop {
            events.clear();
            if gap_avg < POLL_WINDOW_NS / 4 {
                loop {
                    if let Err(e) = self.poller.wait(0, &mut buf, &mut events) {
                        return self.fatal("epoll_wait", e.raw_os_error());
                    }
                    if !events.is_empty() || now_ns().saturating_sub(last_activity) > POLL_WINDOW_NS {
                        break;
                    }
                    core::hint::spin_loop();
                }
            }
            if events.is_empty() {
                if let Err(e) = self.poller.wait(self.stall_wait_ms(), &mut buf, &mut events) {
                    return self.fatal("epoll_wait", e.raw_os_error());
                }
            }
            let now = now_ns();
            let gap = now.saturating_sub(last_activity).min(1_000_000_000);
            gap_avg = (gap_avg * 7 + gap) / 8;
            last_activity = now;
            for ev in &events {
                if let Some(code) = self.on_event(*ev) {
                    self.terminate_children();
                    return code;
                }
            }
            self.out.flush(&self.poller);
            self.check_children();
            self.update_back_pressure();
            if self.closing {
                self.out.say_goodbye(Goodbye::Shutdown, &self.poller);
                self.terminate_children();
                return exit::OK;
            }
        }
    }

    fn on_event(&mut self, ev: Event) -> Option<i32> {
        let token = Token::from_u64(ev.token)?;
        match token {
            Token::ParentRx => return self.read_parent(),
            Token::ParentTx => self.out.flush(&self.poller),
            // A hang-up or termination request ends the agent like losing its
            // parent does: its commands' process groups get SIGTERM first.
            Token::Signal => {
                let sig = super::signals::signal_number(self.signals.as_ref());
                self.out.say_goodbye(Goodbye::Signal(sig), &self.poller);
                return Some(exit::SIGNALLED);
            }
            Token::ChildRx(slot) => self.read_child(slot),
            Token::ChildTx(slot) => self.flush_child(slot),
            Token::Log(pipe) => self.loggers.pump(pipe, &self.poller, &mut self.out),
            Token::Command(slot, fd) => {
                match fd {
                    CommandFd::Stdin => self.proc_stdin(slot),
                    CommandFd::Stdout | CommandFd::Stderr => {
                        let pipe = if fd == CommandFd::Stdout { Pipe::Stdout } else { Pipe::Stderr };
                        self.proc_output(slot, pipe, false)
                    }
                    CommandFd::Exit => self.proc_exited(slot),
                    CommandFd::Timer => self.proc_timer(slot),
                }
                self.proc_maybe_done(slot);
            }
        }
        None
    }

    fn read_parent(&mut self) -> Option<i32> {
        // A bounded number of reads per wake-up keeps the loop fair.
        for _ in 0..16 {
            let rx = self.rx.as_fd();
            let r = self.decoder.read_with(|b| side::read(rx, b));
            match r {
                Ok(Io::Done(n)) => {
                    let drained = n < self.decoder.last_offer();
                    self.decoder.filled(n);
                    loop {
                        match self.decoder.next_message() {
                            Ok(Some(m)) => self.on_message(m),
                            Ok(None) => break,
                            Err(_) => {
                                self.out.log(
                                    LogLevel::Error,
                                    LogSource::Agent,
                                    b"malformed frame from parent; closing",
                                );
                                self.out.say_goodbye(
                                    Goodbye::Fatal { what: "malformed frame from its parent", errno: 0 },
                                    &self.poller,
                                );
                                return Some(exit::PROTOCOL);
                            }
                        }
                    }
                    if self.closing || drained {
                        return None;
                    }
                }
                Ok(Io::WouldBlock) => return None,
                Ok(Io::Closed) | Err(_) => return Some(exit::OK),
            }
        }
        None
    }

    fn on_message(&mut self, m: Message) {
        let h = m.header;
        if h.dst != self.out.id() {
            match self.children.next_hop(h.dst) {
                Some(slot) => self.send_down(slot, &h, &m.data),
                None => self.out.dead_route(&h),
            }
            return self.decoder.recycle(m.data);
        }
        match h.handle {
            handles::CALL_FUNCTION => {
                self.on_call(m);
                doing("");
            }
            handles::SHUTDOWN => self.closing = true,
            handles::EXEC_CONTROL if h.auth == MASTER_ID => self.on_exec_control(m),
            handles::ADD_ROUTE if h.auth == MASTER_ID => {
                if let Ok(r) = postcard::from_bytes::<AddRoute>(&m.data) {
                    self.children.add_route(r.id, r.via);
                }
            }
            handles::RELAY if h.auth == MASTER_ID => self.on_relay(&m),
            _ => self.out.reply_error(&h, RemoteError::new(ErrorKind::DeadRoute, "no such handle")),
        }
    }

    // ---- multi-hop ----------------------------------------------------------

    /// One copy per target, every link carrying the bytes once (see
    /// [`crate::proto::handles::RELAY`]).
    fn on_relay(&mut self, m: &Message) {
        let Ok(r) = postcard::from_bytes::<Relay<'_>>(&m.data) else {
            return self.out.log(LogLevel::Error, LogSource::Agent, b"malformed relay message; dropped");
        };
        let h = m.header;
        let copy = |dst: u32, reply_to: u32| Header {
            flags: r.flags,
            dst,
            src: h.src,
            auth: h.auth,
            handle: r.handle,
            reply_to,
            len: 0,
        };
        let mut mine = Vec::new();
        let mut groups: Vec<(usize, Vec<(u32, u32)>)> = Vec::new();
        for &(dst, reply_to) in &r.targets {
            if dst == self.out.id() {
                mine.push(copy(dst, reply_to));
                continue;
            }
            match self.children.next_hop(dst) {
                Some(slot) => match groups.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, g)) => g.push((dst, reply_to)),
                    None => groups.push((slot, alloc::vec![(dst, reply_to)])),
                },
                None => self.out.dead_route(&copy(dst, reply_to)),
            }
        }
        for (slot, targets) in groups {
            if let [(dst, reply_to)] = targets[..] {
                self.send_down(slot, &copy(dst, reply_to), r.data);
                continue;
            }
            let Some(Some(child)) = self.children.streams.get(slot) else { continue };
            let via = child.id;
            let sub = Relay { targets, handle: r.handle, flags: r.flags, data: r.data };
            if let Ok(data) = postcard::to_allocvec(&sub) {
                let mut hh = copy(via, 0);
                hh.handle = handles::RELAY;
                hh.flags = 0;
                self.send_down(slot, &hh, &data);
            }
        }
        for header in mine {
            self.on_message(Message { header, data: r.data.to_vec() });
        }
    }

    /// Makes the stdin/stdout of a streamed command (process group `pid`)
    /// the stream to child `id`.
    fn adopt(&mut self, id: u32, rx: OwnedFd, tx: OwnedFd, pid: i32) {
        self.poller.delete(rx.as_fd());
        self.poller.delete(tx.as_fd());
        let reading = !self.out.is_full();
        let c = ChildStream {
            id,
            rx,
            tx,
            decoder: Decoder::new(self.out.max()),
            out: TxBuffer::default(),
            tx_watched: false,
            reading,
            pid,
            stalled_since: 0,
            ended: None,
            status: None,
            ending_since: 0,
        };
        let slot = self.children.add(c);
        if let Some(Some(c)) = self.children.streams.get(slot) {
            let read = if reading { Interest::READ } else { Interest::NONE };
            let _ = self.poller.add(c.rx.as_fd(), Token::ChildRx(slot).into(), read);
            let _ = self.poller.add(c.tx.as_fd(), Token::ChildTx(slot).into(), Interest::NONE);
        }
    }

    /// Queues a message for the child in `slot` and writes what it can.
    fn send_down(&mut self, slot: usize, h: &Header, data: &[u8]) {
        let Some(Some(c)) = self.children.streams.get_mut(slot) else { return };
        c.out.push(h, data);
        self.flush_child(slot);
    }

    fn flush_child(&mut self, slot: usize) {
        let Some(Some(c)) = self.children.streams.get_mut(slot) else { return };
        let before = c.out.len();
        // A child that is gone is reported by its read side.
        flush_to(&self.poller, c.tx.as_fd(), Token::ChildTx(slot), &mut c.out, &mut c.tx_watched);
        if c.stalled_since != 0 && c.out.len() < before {
            // Progress: a slow child is not a stalled one.
            c.stalled_since = now_ns();
        }
    }

    /// The stall rule (see the module docs): drops every child that has
    /// held reads from the parent back for [`STALL_MS`] without progress;
    /// and every child whose stream or command ended [`EXIT_WAIT_MS`] ago
    /// without the other.
    fn check_children(&mut self) {
        let mut now = 0;
        for slot in 0..self.children.streams.len() {
            let Some(Some(c)) = self.children.streams.get(slot) else { continue };
            if c.stalled_since == 0 && c.ending_since == 0 {
                continue;
            }
            if now == 0 {
                now = now_ns();
            }
            if c.ending_since != 0 && now.saturating_sub(c.ending_since) >= EXIT_WAIT_MS * 1_000_000 {
                let end = c.ended.unwrap_or(LinkEnd::CommandEnded);
                self.drop_child(slot, end);
                continue;
            }
            if c.stalled_since == 0 || now.saturating_sub(c.stalled_since) < STALL_MS * 1_000_000 {
                continue;
            }
            let (id, pid) = (c.id, c.pid);
            let mut line = Vec::from(&b"child context "[..]);
            super::util::push_decimal(&mut line, u64::from(id));
            line.extend_from_slice(b" took nothing for ");
            super::util::push_decimal(&mut line, STALL_MS / 1000);
            line.extend_from_slice(b" s with its queue full: dropped");
            self.out.log(LogLevel::Error, LogSource::Agent, &line);
            spawn::kill_group(pid, libc::SIGKILL);
            self.drop_child(slot, LinkEnd::Stalled);
        }
    }

    /// The epoll timeout: until the first child's stall or exit clock runs
    /// out, or none (-1).
    fn stall_wait_ms(&self) -> i32 {
        let mut first = u64::MAX;
        for c in self.children.streams.iter().flatten() {
            if c.stalled_since != 0 {
                first = first.min(c.stalled_since + STALL_MS * 1_000_000);
            }
            if c.ending_since != 0 {
                first = first.min(c.ending_since + EXIT_WAIT_MS * 1_000_000);
            }
        }
        if first == u64::MAX {
            return -1;
        }
        let left = first.saturating_sub(now_ns());
        (left / 1_000_000 + 1) as i32
    }

    fn read_child(&mut self, slot: usize) {
        for _ in 0..16 {
            let Some(Some(c)) = self.children.streams.get_mut(slot) else { return };
            let rx = c.rx.as_fd();
            let r = c.decoder.read_with(|b| side::read(rx, b));
            match r {
                Ok(Io::Done(n)) => {
                    let drained = n < c.decoder.last_offer();
                    c.decoder.filled(n);
                    loop {
                        let Some(Some(c)) = self.children.streams.get_mut(slot) else { return };
                        match c.decoder.next_message() {
                            Ok(Some(m)) => self.on_child_message(slot, m),
                            Ok(None) => break,
                            Err(_) => {
                                self.out.log(
                                    LogLevel::Error,
                                    LogSource::Agent,
                                    b"malformed frame from a child; closing its stream",
                                );
                                return self.drop_child(slot, LinkEnd::Malformed);
                            }
                        }
                    }
                    if drained {
                        return;
                    }
                }
                Ok(Io::WouldBlock) => return,
                Ok(Io::Closed) => return self.child_ended(slot, LinkEnd::Eof),
                Err(e) => return self.child_ended(slot, LinkEnd::ReadError(e.raw_os_error())),
            }
        }
    }

    /// The stream of the child in `slot` ended: dropped now if its command
    /// has exited too (or there is none), else when it does (see
    /// [`EXIT_WAIT_MS`]), so the DEL_ROUTE can say how it ended.
    fn child_ended(&mut self, slot: usize, end: LinkEnd) {
        let Some(Some(c)) = self.children.streams.get_mut(slot) else { return };
        let pid = c.pid;
        let running = self.procs.iter().flatten().any(|p| p.child.pid == pid && p.status.is_none());
        if c.status.is_some() || !running {
            return self.drop_child(slot, end);
        }
        c.ended = Some(end);
        c.reading = false;
        c.ending_since = now_ns();
        self.poller.delete(c.rx.as_fd());
    }

    /// A message from the child in `slot`: checked, stamped, sent up.
    fn on_child_message(&mut self, slot: usize, m: Message) {
        let mut h = m.header;
        if !self.children.speaks_for(slot, h.src) {
            return;
        }
        if let Some(Some(c)) = self.children.streams.get(slot) {
            h.auth = c.id;
        }
        if h.handle == handles::DEL_ROUTE && h.dst == MASTER_ID {
            // Passed on only for a context that was behind this child: a
            // child cannot declare a sibling's subtree gone.
            let ok = postcard::from_bytes::<DelRoute>(&m.data).is_ok_and(|r| self.children.del_route(slot, r.id));
            if !ok {
                return;
            }
        }
        if h.dst != self.out.id() {
            self.out.push(&h, &m.data);
        }
    }

    /// The child in `slot` is lost (`end` says how): its routes go, and
    /// the master hears of every context lost with it, then gets the
    /// exec reply of its command if that was held back for this.
    fn drop_child(&mut self, slot: usize, end: LinkEnd) {
        let Some((c, lost)) = self.children.remove(slot) else { return };
        if c.ended.is_none() {
            self.poller.delete(c.rx.as_fd());
        }
        self.poller.delete(c.tx.as_fd());
        for id in lost {
            let r = if id == c.id {
                DelRoute { id, end, pid: c.pid as u32, status: c.status }
            } else {
                DelRoute { id, end: LinkEnd::Behind(c.id), pid: 0, status: None }
            };
            self.out.send(MASTER_ID, handles::DEL_ROUTE, 0, &r);
        }
        if let Some(p) = self.procs.iter().position(|p| p.as_ref().is_some_and(|p| p.child.pid == c.pid)) {
            self.proc_maybe_done(p);
        }
    }

    /// A fatal error: goodbye, commands and children ended.
    fn fatal(&mut self, what: &str, errno: i32) -> i32 {
        self.out.say_goodbye(Goodbye::Fatal { what, errno }, &self.poller);
        self.terminate_children();
        exit::SETUP
    }

    fn on_call(&mut self, m: Message) {
        let h = m.header;
        if h.auth != MASTER_ID {
            return self
                .out
                .reply_error(&h, RemoteError::new(ErrorKind::NotPermitted, "calls are accepted from the parent only"));
        }
        let Some(payload) = m.payload(self.out.max() as usize) else {
            return self.out.reply_error(&h, RemoteError::new(ErrorKind::Protocol, "payload does not decompress"));
        };
        let Ok((name, args)) = decode_call(&payload) else {
            return self.out.reply_error(&h, RemoteError::new(ErrorKind::Protocol, "malformed call"));
        };
        doing(name);
        fn decode<F: Function>(args: &[u8]) -> Result<F::Args, RemoteError> {
            postcard::from_bytes(args).map_err(|_| RemoteError::new(ErrorKind::BadArgs, F::NAME))
        }
        let max = self.out.max() as usize - 64;
        // `call!(F, |a| body)`: decode F's arguments as `a`, run `body`
        // (a Result), reply. The arms below it need more than that.
        macro_rules! call {
            ($f:ty, |$a:pat_param| $body:expr) => {{
                let r = decode::<$f>(args).and_then(|$a| $body);
                self.out.reply(&h, r)
            }};
        }
        match name {
            f::Ping::NAME => call!(f::Ping, |()| Ok(())),
            f::Info::NAME => call!(f::Info, |()| Ok(builtins::info(&self.ident))),
            f::Stat::NAME => call!(f::Stat, |a| builtins::stat(a)),
            f::Remove::NAME => call!(f::Remove, |a| builtins::remove(a)),
            f::WriteFile::NAME => {
                self.serial += 1;
                let serial = self.serial;
                call!(f::WriteFile, |a| builtins::write_file(a, serial))
            }
            f::FileOpenRead::NAME => call!(f::FileOpenRead, |a| self.files.open_read(&a.path)),
            f::FileOpenWrite::NAME => call!(f::FileOpenWrite, |a| self.files.open_write(&a.path, a.id)),
            f::FileWrite::NAME => {
                let r = postcard::from_bytes::<f::FileWriteRef<'_>>(args)
                    .map_err(|_| RemoteError::new(ErrorKind::BadArgs, f::FileWrite::NAME))
                    .and_then(|a| self.files.write(a.id, a.data));
                self.out.reply(&h, r);
                // The chunk's buffer serves the next chunk.
                if let alloc::borrow::Cow::Borrowed(_) = payload {
                    drop(payload);
                    self.decoder.recycle(m.data);
                }
            }
            f::FileClose::NAME => call!(f::FileClose, |a| self.files.close(a.id, a.commit)),
            f::Sha256::NAME => call!(f::Sha256, |a| super::files::sha256_file(&a.path).map(|d| ByteBuf::from(&d[..]))),
            f::Facts::NAME => call!(f::Facts, |()| Ok(super::facts::gather())),
            f::ListDir::NAME => call!(f::ListDir, |a| super::fs::list_dir(&a.path)),
            f::MakeDirs::NAME => call!(f::MakeDirs, |a| super::fs::make_dirs(&a.path, a.mode)),
            f::Chmod::NAME => call!(f::Chmod, |a| super::fs::chmod(&a.path, a.mode)),
            f::Chown::NAME => call!(f::Chown, |a| super::fs::chown(&a.path, a.uid, a.gid, a.follow)),
            f::Symlink::NAME => call!(f::Symlink, |a| super::fs::symlink(&a.target, &a.path)),
            f::ReadLink::NAME => call!(f::ReadLink, |a| super::fs::read_link(&a.path)),
            f::Rename::NAME => call!(f::Rename, |a| super::fs::rename(&a.from, &a.to)),
            f::RemoveTree::NAME => call!(f::RemoveTree, |a| super::fs::remove_tree(&a.path)),
            f::DiskUsage::NAME => call!(f::DiskUsage, |a| super::fs::disk_usage(&a.path)),
            // Bytes replies are built in place (no copies of the data).
            f::ReadFile::NAME => match decode::<f::ReadFile>(args) {
                Ok(a) => {
                    let buf = self.out.take_spare();
                    let frame = bytes_frame(buf, &h, self.out.id(), |out| builtins::read_into(&a.path, max, out));
                    self.out.reply_bytes(&h, frame)
                }
                Err(e) => self.out.reply_error(&h, e),
            },
            f::FileRead::NAME => match decode::<f::FileRead>(args) {
                Ok(a) => {
                    let len = (a.len as usize).min(max);
                    let buf = self.out.take_spare();
                    let frame = bytes_frame(buf, &h, self.out.id(), |out| self.files.read(a.id, len, out));
                    self.out.reply_bytes(&h, frame)
                }
                Err(e) => self.out.reply_error(&h, e),
            },
            // exec replies later, when the command ends.
            f::Exec::NAME => match decode::<f::Exec>(args).and_then(|a| self.start_exec(a, &h)) {
                Ok(()) => {}
                Err(e) => self.out.reply_error(&h, e),
            },
            _ => self.out.reply_error(&h, RemoteError::new(ErrorKind::UnknownFunction, name)),
        }
    }

    // ---- exec -------------------------------------------------------------

    fn start_exec(&mut self, a: ExecArgs, h: &Header) -> Result<(), RemoteError> {
        let argv = a.argv.iter().map(|s| cstring(s)).collect::<Result<Vec<_>, _>>()?;
        if argv.is_empty() {
            return Err(RemoteError::new(ErrorKind::BadArgs, "exec: empty argv"));
        }
        if a.stream_to.is_some() && self.find_proc(h.src, a.stream_to).is_some() {
            return Err(RemoteError::new(ErrorKind::BadArgs, "exec: stream handle already in use"));
        }
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
        let child = spawn::spawn(&cmd).map_err(|e| super::util::os_error(e, "exec", &a.argv[0]))?;
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
            let _ = self.poller.add(fd.as_fd(), token(CommandFd::Stdin), Interest::WRITE);
        }
        let read = if self.out.is_full() { Interest::NONE } else { Interest::READ };
        for (pipe, fd) in [(Pipe::Stdout, &child.stdout), (Pipe::Stderr, &child.stderr)] {
            if let Some(fd) = fd {
                let _ = side::set_nonblocking(fd.as_fd(), true);
                let _ = self.poller.add(fd.as_fd(), token(CommandFd::output(pipe)), read);
            }
        }
        let _ = self.poller.add(child.pidfd.as_fd(), token(CommandFd::Exit), Interest::READ);
        if let Some(t) = &timer {
            let _ = self.poller.add(t.as_fd(), token(CommandFd::Timer), Interest::READ);
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
            reading: !self.out.is_full(),
            timer,
            timed_out: false,
        });
        Ok(())
    }

    fn find_proc(&self, caller: u32, stream: Option<u32>) -> Option<usize> {
        self.procs.iter().position(|p| p.as_ref().is_some_and(|p| p.caller == caller && p.stream_to == stream))
    }

    fn on_exec_control(&mut self, m: Message) {
        let Some(c) = m.payload(self.out.max() as usize).and_then(|p| postcard::from_bytes::<ExecControl>(&p).ok())
        else {
            return self.out.log(LogLevel::Error, LogSource::Agent, b"malformed exec control message; ignored");
        };
        let Some(slot) = self.find_proc(m.header.src, Some(c.stream)) else {
            // Already finished: its reply is on the way, and the master
            // closes the stdin credit mailbox when that reply arrives.
            return;
        };
        let Some(Some(p)) = self.procs.get_mut(slot) else { return };
        match c.op {
            ExecOp::Stdin(data) => {
                if p.child.stdin.is_none() {
                    // The command closed its stdin: the bytes are dropped, but
                    // acknowledged (the sender's credit must not leak).
                    if let Some(to) = p.stdin_acks_to {
                        let (caller, n) = (p.caller, data.len() as u32);
                        self.out.send(caller, to, 0, &n);
                    }
                    return;
                }
                p.stdin_data.extend_from_slice(&data);
                self.proc_stdin(slot);
            }
            ExecOp::CloseStdin => {
                p.stdin_open = false;
                if p.child.pty {
                    // A pty has no end of file: its line discipline turns the
                    // EOF character (^D) into one for the reader.
                    p.stdin_data.push(4);
                }
                self.proc_stdin(slot);
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
                    self.proc_output(slot, Pipe::Stdout, true);
                    self.proc_output(slot, Pipe::Stderr, true);
                } else {
                    self.set_reading(slot);
                }
            }
            ExecOp::Resize(rows, cols) => {
                if let (true, Some(fd)) = (p.child.pty, &p.child.stdout) {
                    spawn::set_winsize(fd, rows, cols);
                }
            }
            ExecOp::Answer(data) => {
                let tty = if p.child.tty { &p.child.stderr } else { &p.child.stdin };
                if let (true, Some(fd)) = (p.child.tty || p.child.pty, tty) {
                    spawn::answer_tty(fd, &data);
                }
            }
            ExecOp::SendSelf => {
                if p.child.stdin.is_some() && super::builtins::append_own_exe(&mut p.stdin_data).is_err() {
                    // stage0 then fails its size/hash check: a clear error, not a hang.
                    p.child.stdin = None;
                }
                self.proc_stdin(slot);
            }
            ExecOp::Adopt(id) => {
                let (Some(tx), Some(rx)) = (p.child.stdin.take(), p.child.stdout.take()) else { return };
                p.stdin_open = false;
                p.stdin_data = Vec::new();
                let pid = p.child.pid;
                self.adopt(id, rx, tx, pid);
            }
        }
        self.proc_maybe_done(slot);
    }

    fn proc_stdin(&mut self, slot: usize) {
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
                self.poller.delete(fd.as_fd());
            }
        } else if pending != p.stdin_watched {
            // Streamed stdin waiting for more: no wake-ups until it comes.
            p.stdin_watched = pending;
            let i = if pending { Interest::WRITE } else { Interest::NONE };
            let _ = self.poller.modify(fd.as_fd(), Token::Command(slot, CommandFd::Stdin).into(), i);
        }
        if let (Some(to), true) = (p.stdin_acks_to, taken > 0) {
            let caller = p.caller;
            self.out.send(caller, to, 0, &(taken as u32));
        }
    }

    /// Whether a process's output should be read now: not while the parent
    /// stream is backed up or its credit is used up.
    fn set_reading(&mut self, slot: usize) {
        let paused = self.out.is_full();
        let Some(Some(p)) = self.procs.get_mut(slot) else { return };
        let want = !paused && (p.window == 0 || p.unacked < p.window as u64);
        if want == p.reading {
            return;
        }
        p.reading = want;
        let i = if want { Interest::READ } else { Interest::NONE };
        for (pipe, fd) in [(Pipe::Stdout, &p.child.stdout), (Pipe::Stderr, &p.child.stderr)] {
            if let Some(fd) = fd {
                let _ = self.poller.modify(fd.as_fd(), Token::Command(slot, CommandFd::output(pipe)).into(), i);
            }
        }
    }

    fn proc_output(&mut self, slot: usize, pipe: Pipe, drain: bool) {
        let mut buf = core::mem::take(&mut self.out_buf);
        buf.resize(f::OUTPUT_READ_MAX, 0);
        self.proc_output_with(slot, pipe, drain, &mut buf);
        self.out_buf = buf;
    }

    fn proc_output_with(&mut self, slot: usize, pipe: Pipe, drain: bool, buf: &mut [u8]) {
        let max = self.out.max() as usize - 256;
        for _ in 0..if drain { usize::MAX } else { 4 } {
            let Some(Some(p)) = self.procs.get_mut(slot) else { return };
            if p.window != 0 && p.unacked >= p.window as u64 {
                return self.set_reading(slot);
            }
            let fd = if pipe == Pipe::Stdout { &p.child.stdout } else { &p.child.stderr };
            let Some(fd) = fd else { return };
            let r = side::read(fd.as_fd(), buf);
            match r {
                Ok(Io::Done(n)) => {
                    if let Some(handle) = p.stream_to {
                        p.unacked += n as u64 + u64::from(f::OUTPUT_FRAME_COST);
                        let caller = p.caller;
                        let chunk = ExecOutput { fd: pipe as u8, data: ByteBuf::from(&buf[..n]) };
                        self.out.send(caller, handle, 0, &chunk);
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
                        self.poller.delete(fd.as_fd());
                    }
                    return;
                }
            }
        }
    }

    fn proc_exited(&mut self, slot: usize) {
        let Some(Some(p)) = self.procs.get_mut(slot) else { return };
        if p.status.is_some() {
            return;
        }
        let Some(st) = spawn::reap(&p.child.pidfd) else { return };
        p.status = Some(st);
        self.poller.delete(p.child.pidfd.as_fd());
        if let Some(t) = p.timer.take() {
            self.poller.delete(t.as_fd());
        }
        let pid = p.child.pid;
        // What the child wrote before exiting is in the pipes now; take it
        // (as far as the credit goes) and do not wait for EOF.
        self.proc_output(slot, Pipe::Stdout, true);
        self.proc_output(slot, Pipe::Stderr, true);
        // The command carried a child's stream: the child is lost once its
        // stream has ended too (what it wrote last, a goodbye, goes first).
        let Some(cs) = self.children.streams.iter().position(|c| c.as_ref().is_some_and(|c| c.pid == pid)) else {
            return;
        };
        let Some(Some(c)) = self.children.streams.get_mut(cs) else { return };
        c.status = Some(st);
        match c.ended {
            Some(end) => self.drop_child(cs, end),
            None => c.ending_since = now_ns(),
        }
    }

    /// The timeout fired: SIGTERM first, SIGKILL after the grace period.
    fn proc_timer(&mut self, slot: usize) {
        let Some(Some(p)) = self.procs.get_mut(slot) else { return };
        let Some(t) = p.timer.take() else { return };
        self.poller.delete(t.as_fd());
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
            let _ = self.poller.add(t.as_fd(), Token::Command(slot, CommandFd::Timer).into(), Interest::READ);
        }
    }

    fn proc_maybe_done(&mut self, slot: usize) {
        let Some(Some(p)) = self.procs.get(slot) else { return };
        let Some((code, signal)) = p.status else { return };
        if p.child.stdout.is_some() || p.child.stderr.is_some() {
            // Output still queued behind the caller's credit.
            return;
        }
        let pid = p.child.pid;
        if self.children.streams.iter().flatten().any(|c| c.pid == pid) {
            // It carries a child's stream: the DEL_ROUTE goes up first.
            return;
        }
        let Some(p) = self.procs[slot].take() else { return };
        if let Some(fd) = &p.child.stdin {
            self.poller.delete(fd.as_fd());
        }
        let h = Header { src: p.caller, reply_to: p.reply_to, ..Header::default() };
        if p.too_large {
            let e = RemoteError::new(ErrorKind::TooLarge, "exec: output exceeds the maximum message size; stream it");
            return self.out.reply_error(&h, e);
        }
        let reply = ExecReply {
            code,
            signal,
            timed_out: p.timed_out,
            stdout: ByteBuf::from(p.out),
            stderr: ByteBuf::from(p.err),
        };
        self.out.reply(&h, Ok(reply));
    }

    fn terminate_children(&mut self) {
        self.files.discard_all();
        for p in self.procs.iter().flatten() {
            if p.status.is_none() {
                spawn::kill_group(p.child.pid, libc::SIGTERM);
            }
        }
    }

    /// Back-pressure both ways (see the module docs): reads from the
    /// parent stop while a child's queue is backed up; reads of what goes
    /// up stop while the outbox is full.
    fn update_back_pressure(&mut self) {
        // A child that does not drain what the parent sends it: stop
        // reading the parent (bounded memory; the parent's sender waits),
        // and start its stall clock. The clock is held while the parent
        // does not drain us: the child may be blocked writing to us.
        let limit = if self.downstream_full { TX_LOW } else { TX_HIGH };
        let mut backed = false;
        let mut now = 0;
        for c in self.children.streams.iter_mut().flatten() {
            if c.out.len() <= limit {
                c.stalled_since = 0;
                continue;
            }
            backed = true;
            if c.stalled_since == 0 || self.out.is_full() {
                if now == 0 {
                    now = now_ns();
                }
                c.stalled_since = now;
            }
        }
        if backed != self.downstream_full {
            self.downstream_full = backed;
            let i = if backed { Interest::NONE } else { Interest::READ };
            let _ = self.poller.modify(self.rx.as_fd(), Token::ParentRx.into(), i);
        }
        if !self.out.update_full() {
            return;
        }
        let pause = self.out.is_full();
        for slot in 0..self.procs.len() {
            self.set_reading(slot);
        }
        let i = if pause { Interest::NONE } else { Interest::READ };
        // Children's messages go to the parent too.
        for (slot, c) in self.children.streams.iter_mut().enumerate() {
            if let Some(c) = c.as_mut().filter(|c| c.ended.is_none()) {
                c.reading = !pause;
                let _ = self.poller.modify(c.rx.as_fd(), Token::ChildRx(slot).into(), i);
            }
        }
        // And so do the lines written to our fd 1/2 (by commands run with
        // `Stdio::Log`): left in their pipes, they stop their writers.
        self.loggers.set_reading(!pause, &self.poller);
    }
}

/// A bytes reply to `h` built in place (in `frame`, a reused buffer when
/// there is one): `fill` appends the bytes straight
/// into the frame (header, postcard length prefix, bytes), which the
/// transmit buffer then takes without copying. Returns the frame and where
/// it starts. (The generic path copied a large reply three more times:
/// staging buffer, postcard, transmit buffer.)
fn bytes_frame(
    mut frame: Vec<u8>,
    h: &Header,
    me: u32,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<usize, RemoteError>,
) -> Result<(Vec<u8>, usize), RemoteError> {
    // Room for the header and the longest length prefix (10 bytes).
    const ROOM: usize = crate::proto::HEADER_LEN + 10;
    frame.clear();
    frame.resize(ROOM, 0);
    let n = fill(&mut frame)?;
    let mut prefix = [0u8; 10];
    let k = postcard::to_slice(&(n as u64), &mut prefix).map_or(0, |p| p.len());
    let start = ROOM - k;
    frame[start..ROOM].copy_from_slice(&prefix[..k]);
    let len = (frame.len() - ROOM + k) as u32;
    let hdr = Header { dst: h.src, src: me, auth: me, handle: h.reply_to, len, ..Header::default() }.encode();
    frame[start - crate::proto::HEADER_LEN..start].copy_from_slice(&hdr);
    Ok((frame, start - crate::proto::HEADER_LEN))
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

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The child's environment: the agent's (unless cleared) with overrides.
fn build_env(a: &ExecArgs) -> Result<Vec<alloc::ffi::CString>, RemoteError> {
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

/// The architecture this agent was compiled for, in `uname -m` spelling.
pub const ARCH: &str = if cfg!(target_arch = "x86_64") {
    "x86_64"
} else if cfg!(target_arch = "aarch64") {
    "aarch64"
} else {
    "unknown"
};
