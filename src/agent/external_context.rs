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
use super::children::Children;
use super::commands::Commands;
use super::outbox::{flush_to, Outbox, TX_HIGH, TX_LOW};
use super::panic_goodbye::doing;
use super::spawn;
use super::stdio::Loggers;
use super::token::{CommandFd, Pipe, Token};
use crate::core::poller::{Event, Interest, Poller};
use crate::core::side::{self, Io};
use crate::core::stream::Decoder;
use crate::proto::functions::{self as f, Function};
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

/// The agent's state.
pub struct ExternalContext {
    poller: Poller,
    rx: OwnedFd,
    decoder: Decoder,
    /// Frames to the parent, and whether it keeps up.
    out: Outbox,
    loggers: Loggers,
    /// Commands run for `exec` calls.
    commands: Commands,
    ident: Identity,
    serial: u64,
    closing: bool,
    signals: Option<OwnedFd>,
    files: super::files::FileTable,
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
        commands: Commands::default(),
        ident: Identity { hash: String::from_utf8_lossy(hash).into_owned(), exe },
        serial: 0,
        closing: false,
        signals: super::signals::termination_signals(),
        files: super::files::FileTable::default(),
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
                    self.clean_up_before_exit();
                    return code;
                }
            }
            self.out.flush(&self.poller);
            self.check_children();
            self.update_back_pressure();
            if self.closing {
                self.out.say_goodbye(Goodbye::Shutdown, &self.poller);
                self.clean_up_before_exit();
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
                let (poller, out) = (&self.poller, &mut self.out);
                match fd {
                    CommandFd::Stdin => self.commands.write_stdin(slot, poller, out),
                    CommandFd::Stdout | CommandFd::Stderr => {
                        let pipe = if fd == CommandFd::Stdout { Pipe::Stdout } else { Pipe::Stderr };
                        self.commands.read_output(slot, pipe, false, poller, out)
                    }
                    CommandFd::Exit => {
                        if let Some((pid, status)) = self.commands.exited(slot, poller, out) {
                            if let Some((child, end)) = self.children.command_exited(pid, status, now_ns()) {
                                self.drop_child(child, end);
                            }
                        }
                    }
                    CommandFd::Timer => self.commands.timer(slot, poller),
                }
                self.commands.finish_if_done(slot, &self.poller, &mut self.out, &self.children);
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
            handles::EXEC_CONTROL if h.auth == MASTER_ID => {
                self.commands.control(m, &self.poller, &mut self.out, &mut self.children)
            }
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
        let running = self.commands.running(pid);
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
        self.commands.finish_pid_if_done(c.pid, &self.poller, &mut self.out, &self.children);
    }

    /// A fatal error: goodbye, commands and children ended.
    fn fatal(&mut self, what: &str, errno: i32) -> i32 {
        self.out.say_goodbye(Goodbye::Fatal { what, errno }, &self.poller);
        self.clean_up_before_exit();
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
            f::Exec::NAME => {
                match decode::<f::Exec>(args).and_then(|a| self.commands.start(a, &h, &self.poller, &self.out)) {
                    Ok(()) => {}
                    Err(e) => self.out.reply_error(&h, e),
                }
            }
            _ => self.out.reply_error(&h, RemoteError::new(ErrorKind::UnknownFunction, name)),
        }
    }

    /// On the way out: unfinished file writes are discarded, and every
    /// running command's process group gets SIGTERM.
    fn clean_up_before_exit(&mut self) {
        self.files.discard_all();
        self.commands.terminate_all();
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
        self.commands.set_all_reading(&self.poller, pause);
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

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The architecture this agent was compiled for, in `uname -m` spelling.
pub const ARCH: &str = if cfg!(target_arch = "x86_64") {
    "x86_64"
} else if cfg!(target_arch = "aarch64") {
    "aarch64"
} else {
    "unknown"
};
