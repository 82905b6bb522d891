//! [`ExternalContext`]: the agent's event loop, and what it owns.
//!
//! One thread, one epoll loop over: the parent stream (read side and, when
//! output is queued, write side), the two IoLogger pipes, the termination
//! signalfd, and for every running command its stdin/stdout/stderr pipes,
//! pidfd and timeout timer, and for every child (multi-hop) its stream.
//! Nothing blocks: a long command or a slow parent is a state the loop
//! returns to. Every watched fd is registered with a [`Token`] naming its
//! role; [`ExternalContext`] turns each event into a call on the part that
//! owns the fd, and does the few things that need two parts at once (a
//! command that carried a child's stream exits, a child is lost and its
//! command's reply was held for that, back-pressure).
//!
//! Who owns what:
//! - [`FrameReader`] / [`read_frames`] (`frames.rs`): frames from the
//!   parent, and from each child, read the same way.
//! - [`Outbox`] (`outbox.rs`): everything that goes up, and upstream
//!   back-pressure (a parent that does not drain us stops our sources).
//! - [`Dispatcher`] (`dispatch.rs`): calls, from name to reply.
//! - [`Commands`] (`commands.rs`): exec'd commands: stdin, output and
//!   credit, signals, timeouts, exit, reply.
//! - [`Children`] (`children.rs`): child streams and routes (multi-hop),
//!   relays, downstream back-pressure and the stall rule.
//! - [`Resources`] (`resources.rs`): the importer: grants, the chunk cache
//!   a hop serves its children from, and this agent's own fetches.
//! - [`Loggers`] (`stdio.rs`): the agent's own fd 1/2 as log records.
//! - `signals.rs`, `panic_goodbye.rs`: termination signals, and the
//!   goodbye a panic writes.
//!
//! **Architecture invariant:** the agent exits when its parent stream
//! closes, and takes its commands' process groups with it (SIGTERM). So no
//! agent outlives its master.
//!
//! **Goodbye:** an agent that exits on purpose says why in its last frame
//! ([`Goodbye`] on `GOODBYE`): asked to shut down, a termination signal
//! (which one), a fatal error (a malformed frame from its parent, a failed
//! `epoll_wait`), a panic (the panic handler writes the frame straight to
//! the parent fd, see [`panic_goodbye`](super::panic_goodbye)). One whose parent is gone says
//! nothing: there is no one to tell, and its children see their streams
//! end and exit the same way. So the master tells a clean exit from a crash
//! and from a broken link.
//!
//! **Back-pressure runs both ways:** a child that does not drain its queue
//! stops reads from the parent ([`Children::is_full`], and the stall rule
//! bounds how long: [`STALL_MS`](super::children::STALL_MS)); a parent that does not drain ours stops
//! reads from children, commands and loggers ([`Outbox::is_full`]).

use alloc::string::String;
use alloc::vec::Vec;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

use super::builtins::Identity;
use super::children::{Children, Passed};
use super::commands::Commands;
use super::dispatch::Dispatcher;
use super::frames::{read_frames, FrameReader, ReadEnd};
use super::outbox::Outbox;
use super::panic_goodbye::doing;
use super::resources::Resources;
use super::stdio::Loggers;
use super::token::{CommandFd, Pipe, Token};
use super::util::now_ns;
use crate::core::poller::{Event, Interest, Poller};
use crate::core::side;
use crate::proto::functions::ExecOp;
use crate::proto::message::{AddRoute, Goodbye, Hello, LinkEnd, LogLevel, LogSource};
use crate::proto::{handles, ErrorKind, Header, Message, RemoteError, MASTER_ID};

/// After activity the loop polls without sleeping for this long: a request
/// that follows within it is picked up without waking an idle CPU (on a VM
/// that wake-up costs 20–40 µs, more than the round trip itself). Only while
/// recent gaps were shorter than this (see `run`); an idle agent sleeps in
/// epoll.
const POLL_WINDOW_NS: u64 = 100_000;

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

/// The agent's state: the loop's parts (see the module docs).
pub struct ExternalContext {
    /// The one epoll instance; every part registers its fds here.
    poller: Poller,
    /// Frames from the parent.
    inbox: FrameReader,
    /// Frames to the parent, and whether it keeps up.
    out: Outbox,
    /// The pipes behind the agent's fd 1 and 2.
    loggers: Loggers,
    /// Commands run for `exec` calls.
    commands: Commands,
    /// Calls from the parent, and what they keep between them.
    calls: Dispatcher,
    /// SHUTDOWN arrived: the loop ends after this round.
    closing: bool,
    /// The termination signalfd, if it could be set up.
    signals: Option<OwnedFd>,
    /// Streams to contexts carried onward (multi-hop).
    children: Children,
    /// The importer (resources fetched, granted, cached).
    resources: Resources,
}

/// The agent's entry point: `mito-agent HASH CONTEXT_ID`. Returns the exit code.
pub fn main(args: &[&[u8]]) -> i32 {
    start(args, Dispatcher::new)
}

/// [`main`] of a custom agent: the built-ins and the user's `functions`.
#[cfg(feature = "std")]
pub fn main_with(args: &[&[u8]], functions: super::user::Registry) -> i32 {
    start(args, |ident| Dispatcher::with_functions(ident, functions))
}

/// Sets up and runs the loop with the dispatcher `calls` makes.
fn start(args: &[&[u8]], calls: impl FnOnce(Identity) -> Dispatcher) -> i32 {
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
    let resources = Resources::new(&exe);
    let mut cx = ExternalContext {
        poller,
        inbox: FrameReader::new(rx, crate::proto::MAX_MESSAGE_SIZE),
        out: Outbox::new(tx_fd, id as u32, crate::proto::MAX_MESSAGE_SIZE),
        loggers,
        commands: Commands::default(),
        calls: calls(Identity { hash: String::from_utf8_lossy(hash).into_owned(), exe }),
        closing: false,
        signals: super::signals::termination_signals(),
        children: Children::default(),
        resources,
    };
    if cx.setup().is_err() {
        return exit::SETUP;
    }
    cx.run()
}

impl ExternalContext {
    /// Registers the parent stream, loggers and signals, and queues the
    /// hello.
    fn setup(&mut self) -> Result<(), rustix::io::Errno> {
        side::set_nonblocking(self.inbox.fd(), true)?;
        side::set_nonblocking(self.out.fd(), true)?;
        self.poller.add(self.inbox.fd(), Token::ParentRx.into(), Interest::READ)?;
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
            agent_hash: self.calls.identity().hash.clone(),
            exe: self.calls.identity().exe.clone(),
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

    /// The loop; returns the exit code.
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
                if let Err(e) = self.poller.wait(self.children.next_deadline_ms(), &mut buf, &mut events) {
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

    /// One event, to the part that owns its fd; `Some(exit code)` when the
    /// agent ends.
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
            Token::ChildTx(slot) => self.children.flush(slot, &self.poller),
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
                            if let Some((child, end)) = self.children.command_exited(pid, status) {
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

    /// Reads frames from the parent; `Some(exit code)` when the agent
    /// ends: the parent is gone, or sent a malformed frame.
    fn read_parent(&mut self) -> Option<i32> {
        let end = read_frames(self, |cx| Some(&mut cx.inbox), Self::on_message, |cx| cx.closing);
        match end {
            ReadEnd::Later | ReadEnd::Gone => None,
            ReadEnd::Closed | ReadEnd::Failed(_) => Some(exit::OK),
            ReadEnd::Malformed => {
                self.out.log(LogLevel::Error, LogSource::Agent, b"malformed frame from parent; closing");
                let bye = Goodbye::Fatal { what: "malformed frame from its parent", errno: 0 };
                self.out.say_goodbye(bye, &self.poller);
                Some(exit::PROTOCOL)
            }
        }
    }

    /// Resources the importer fetched for commands' stdin go there
    /// (`ExecOp::SendResource`).
    fn feed_stdin(&mut self) {
        for (caller, stream, data) in self.resources.take_fed() {
            self.commands.append_stdin(caller, stream, data.as_deref(), &self.poller, &mut self.out);
        }
    }

    /// A frame from the parent: forwarded to the child it is for, or
    /// handled here.
    fn on_message(&mut self, m: Message) {
        let h = m.header;
        if h.dst != self.out.id() {
            match self.children.next_hop(h.dst) {
                Some(slot) => self.children.send_down(slot, &h, &m.data, &self.poller),
                None => self.out.dead_route(&h),
            }
            return self.inbox.recycle(m.data);
        }
        match h.handle {
            handles::CALL_FUNCTION => {
                let (poller, out, inbox) = (&self.poller, &mut self.out, &mut self.inbox);
                if let Some((call, args)) = self.calls.on_call(m, poller, out, inbox, &mut self.commands) {
                    self.resources.fetch(call, args, &mut self.out);
                }
                doing("");
            }
            handles::SHUTDOWN => self.closing = true,
            handles::EXEC_CONTROL if h.auth == MASTER_ID => {
                let op = self.commands.control(m, &self.poller, &mut self.out, &mut self.children);
                if let Some((caller, stream, ExecOp::SendResource { sha256, size, parent })) = op {
                    self.resources.feed((caller, stream), &sha256, size, parent, &mut self.out);
                    self.feed_stdin();
                }
            }
            handles::ADD_ROUTE if h.auth == MASTER_ID => {
                if let Ok(r) = postcard::from_bytes::<AddRoute>(&m.data) {
                    self.children.add_route(r.id, r.via);
                }
            }
            handles::RELAY if h.auth == MASTER_ID => self.on_relay(&m),
            handles::GRANT_RESOURCE if h.auth == MASTER_ID => self.resources.grant(&m),
            // A reply to a resource request this agent sent up.
            n if n >= handles::FIRST_DYNAMIC => {
                if !self.resources.on_reply(m, &mut self.children, &mut self.out, &self.poller) {
                    self.out.reply_error(&h, RemoteError::new(ErrorKind::DeadRoute, "no such handle"));
                }
                self.feed_stdin();
            }
            _ => self.out.reply_error(&h, RemoteError::new(ErrorKind::DeadRoute, "no such handle")),
        }
    }

    // ---- multi-hop: what needs the children and the loop ----------------

    /// A RELAY: copies go down (see [`Children::relay`]); this agent's own
    /// copies are handled as if they had come alone.
    fn on_relay(&mut self, m: &Message) {
        let (mine, data) = self.children.relay(m, &self.poller, &mut self.out);
        for header in mine {
            self.on_message(Message { header, data: data.to_vec() });
        }
    }

    /// Reads frames from the child in `slot` and sends them up.
    fn read_child(&mut self, slot: usize) {
        let end = read_frames(
            self,
            |cx| cx.children.reader(slot),
            |cx, m| match cx.children.pass_up(slot, m, &mut cx.out) {
                Passed::Mine(m) => cx.resources.from_child(slot, m, &mut cx.children, &mut cx.out, &cx.poller),
                Passed::Lost(id) => cx.resources.forget(id),
                Passed::Up | Passed::Dropped => {}
            },
            |_| false,
        );
        match end {
            ReadEnd::Later | ReadEnd::Gone => {}
            ReadEnd::Closed => self.child_ended(slot, LinkEnd::Eof),
            ReadEnd::Failed(errno) => self.child_ended(slot, LinkEnd::ReadError(errno)),
            ReadEnd::Malformed => {
                self.out.log(LogLevel::Error, LogSource::Agent, b"malformed frame from a child; closing its stream");
                self.drop_child(slot, LinkEnd::Malformed);
            }
        }
    }

    /// The stream of the child in `slot` ended: the child is dropped now
    /// if its command has exited too, else when it does.
    fn child_ended(&mut self, slot: usize, end: LinkEnd) {
        if self.children.stream_ended(slot, end, &self.commands, &self.poller) {
            self.drop_child(slot, end);
        }
    }

    /// The child in `slot` is lost (`end` says how): the master hears of
    /// every context lost with it, then gets the exec reply of its command
    /// if that was held back for this.
    fn drop_child(&mut self, slot: usize, end: LinkEnd) {
        if let Some((pid, lost)) = self.children.drop(slot, end, &self.poller, &mut self.out) {
            for id in lost {
                self.resources.forget(id);
            }
            self.commands.finish_pid_if_done(pid, &self.poller, &mut self.out, &self.children);
        }
    }

    /// Drops the children whose stall or exit clock ran out (see
    /// [`Children::overdue`]).
    fn check_children(&mut self) {
        if !self.children.clocks_running() {
            return;
        }
        let now = now_ns();
        for slot in 0..self.children.slots() {
            if let Some(end) = self.children.overdue(slot, now, &mut self.out) {
                self.drop_child(slot, end);
            }
        }
    }

    /// A fatal error: goodbye, commands and children ended.
    fn fatal(&mut self, what: &str, errno: i32) -> i32 {
        self.out.say_goodbye(Goodbye::Fatal { what, errno }, &self.poller);
        self.clean_up_before_exit();
        exit::SETUP
    }

    /// On the way out: unfinished file writes are discarded, and every
    /// running command's process group gets SIGTERM.
    fn clean_up_before_exit(&mut self) {
        self.calls.discard_files();
        self.resources.discard_all();
        self.commands.terminate_all();
    }

    /// Back-pressure both ways (see the module docs): reads from the
    /// parent stop while a child's queue is backed up
    /// ([`Children::is_full`]); reads of what goes up stop while the
    /// outbox is ([`Outbox::is_full`]).
    fn update_back_pressure(&mut self) {
        // Before the outbox's own update: a stall clock is held while the
        // parent has not been draining us.
        if self.children.update_full(self.out.is_full()) {
            let downstream_full = self.children.is_full();
            let i = if downstream_full { Interest::NONE } else { Interest::READ };
            let _ = self.poller.modify(self.inbox.fd(), Token::ParentRx.into(), i);
        }
        if !self.out.update_full() {
            return;
        }
        let upstream_full = self.out.is_full();
        self.commands.set_all_reading(&self.poller, upstream_full);
        // Children's messages go to the parent too.
        self.children.set_reading(!upstream_full, &self.poller);
        // And so do the lines written to our fd 1/2 (by commands run with
        // `Stdio::Log`): left in their pipes, they stop their writers.
        self.loggers.set_reading(!upstream_full, &self.poller);
    }
}

/// The architecture this agent was compiled for, in `uname -m` spelling.
pub const ARCH: &str = if cfg!(target_arch = "x86_64") {
    "x86_64"
} else if cfg!(target_arch = "aarch64") {
    "aarch64"
} else {
    "unknown"
};
