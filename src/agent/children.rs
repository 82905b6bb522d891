//! [`Children`]: the streams to contexts this agent carries onward
//! (multi-hop), the routes through them, and what a hop does with them:
//! forwarding, relays, back-pressure, the stall rule, losing a child.
//!
//! How a child gets here: the master starts the next hop's command in this
//! agent as a streamed command (`ssh …`, `sudo … sh -c <stage0>`), runs the
//! bootstrap through it, and once the new agent said hello sends
//! `ExecOp::Adopt(id)`: the command's stdin/stdout become a child stream
//! and messages for `id` are routed to it from then on. Contexts further
//! down are announced by the master with ADD_ROUTE (`id` via the child that
//! leads there), so every route is the master's decision, never a child's.
//!
//! Rules the agent's loop applies with this table:
//! - from the parent: `dst` is this agent → handled here; a known context →
//!   forwarded unchanged to the child stream that leads there; else a
//!   dead-route error back.
//! - from a child: only `src` ids reached through that child are accepted
//!   (a child cannot speak for a sibling), `auth` is overwritten with the
//!   child's id (it cannot pose as the master), and everything goes up.
//!   Children never reach each other through this agent.
//! - a child stream that closes takes its routes with it; each lost id goes
//!   up as DEL_ROUTE so the master fails their calls at once. What the
//!   child said last (its goodbye, an ordinary frame from it) went up
//!   before; the DEL_ROUTE says how the stream ended and how the command
//!   that carried it exited: a stream that ends while its command runs
//!   waits for that exit for at most [`EXIT_WAIT_MS`], and the command's own
//!   exec reply is held until the DEL_ROUTE is sent, so the master hears
//!   of the loss first, with its cause.
//! - a resource request (GET_RESOURCE) from a child is this hop's to
//!   answer, whatever its `dst` ([`super::resources`]: granted, from the
//!   cache or asked upstream once; else refused, and nothing goes up).
//! - a child that stops reading is dropped the same way (and its transport
//!   command killed) once its queue has kept reads from the parent stopped
//!   for [`STALL_MS`] without progress: one child cannot stall its hop.
//!
//! **Downstream back-pressure:** a child whose queue is above
//! [`TX_HIGH`] (until it drains below [`TX_LOW`]) makes the table *full*:
//! the loop stops reading the parent (bounded memory; the parent's sender
//! waits). The opposite direction, a parent that does not drain us, is the
//! [`Outbox`]'s; while the outbox is full, children's streams are not read.
//!
//! **Stall rule:** a child may hold the parent back only while it makes
//! progress. A child whose queue keeps reads from the parent stopped and
//! that takes no byte of it for [`STALL_MS`] is dropped: its transport
//! command's process group gets SIGKILL, its stream is closed, DEL_ROUTE
//! goes up for it and every context behind it (the master fails their
//! calls at once, naming this hop), and reads from the parent resume. So a
//! child that stops reading stalls its siblings for at most [`STALL_MS`].
//! A slow but live link takes bytes all along and is never dropped, however
//! long its queue stays up; the clock is held while our own parent does not
//! drain us (a child may then be blocked writing to us). The loop's epoll
//! wait gets a timeout only while some child's clock runs
//! ([`Children::next_deadline_ms`]).

use alloc::vec::Vec;

use rustix::fd::{AsFd, OwnedFd};

use super::commands::Commands;
use super::frames::FrameReader;
use super::outbox::{flush_to, Outbox, TX_HIGH, TX_LOW};
use super::spawn;
use super::token::Token;
use super::util::now_ns;
use crate::core::poller::{Interest, Poller};
use crate::core::side::{MAX_GROWN_PIPES, PIPE_SIZE};
use crate::core::stream::TxBuffer;
use crate::proto::message::{DelRoute, LinkEnd, LogLevel, LogSource, Relay};
use crate::proto::ExitStatus;
use crate::proto::{handles, Header, Message, MASTER_ID};

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
pub const EXIT_WAIT_MS: u64 = 500;

/// What [`Children::pass_up`] did with a child's message.
pub enum Passed {
    /// Sent up (or, for this agent, dropped as before).
    Up,
    /// Dropped: the child may not say that.
    Dropped,
    /// A DEL_ROUTE sent up: this context behind the child is gone.
    Lost(u32),
    /// A message for this agent to handle (a resource request), stamped.
    Mine(Message),
}

/// One adopted child context's stream.
struct ChildStream {
    /// The child's context id.
    id: u32,
    /// What the child writes (its stdout), framed.
    rx: FrameReader,
    /// What the child reads (its stdin).
    tx: OwnedFd,
    /// Frames queued for `tx`.
    out: TxBuffer,
    /// Whether `tx` is registered for writability.
    tx_watched: bool,
    /// Process group of the command that carries the stream (ssh, sudo,
    /// sh → agent): killed when the child is dropped for stalling.
    pid: i32,
    /// Monotonic ns since when this child's queue has kept reads from the
    /// parent stopped without progress (0: it does not).
    stalled_since: u64,
    /// How the stream ended, once it has while its command still ran (it
    /// is no longer read; the child is dropped when the command exits).
    ended: Option<LinkEnd>,
    /// The command's exit, once it ended.
    status: Option<ExitStatus>,
    /// Monotonic ns since when one of the two happened and not the other
    /// (0: neither): the child is dropped [`EXIT_WAIT_MS`] later regardless.
    ending_since: u64,
}

/// The child streams and the contexts routed through them.
#[derive(Default)]
pub struct Children {
    /// Slots; a slot's tokens are fixed while it is in use.
    streams: Vec<Option<ChildStream>>,
    /// `(context, child id)`: `context` lies behind that child.
    routes: Vec<(u32, u32)>,
    /// Some child's queue is above its mark: reads from the parent are
    /// stopped (downstream back-pressure, see the module docs).
    full: bool,
    /// Child pipes grown so far (at most [`MAX_GROWN_PIPES`]).
    grown: usize,
}

impl Children {
    // ---- the table and its routes -------------------------------------

    /// The number of slots (some may be empty): slots are `0..slots()`.
    pub fn slots(&self) -> usize {
        self.streams.len()
    }

    /// The slot of direct child `id`.
    fn slot_of(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.as_ref().is_some_and(|s| s.id == id))
    }

    /// The slot of the child stream that leads to `dst`.
    pub fn next_hop(&self, dst: u32) -> Option<usize> {
        if let Some(s) = self.slot_of(dst) {
            return Some(s);
        }
        let via = self.routes.iter().find(|(c, _)| *c == dst)?.1;
        self.slot_of(via)
    }

    /// The slot of the child whose stream the command in process group
    /// `pid` carries.
    pub fn carried_by(&self, pid: i32) -> Option<usize> {
        self.streams.iter().position(|c| c.as_ref().is_some_and(|c| c.pid == pid))
    }

    /// The frame reader of the child in `slot`, while its stream is open.
    pub fn reader(&mut self, slot: usize) -> Option<&mut FrameReader> {
        self.streams.get_mut(slot)?.as_mut().map(|c| &mut c.rx)
    }

    /// Adds a child stream; returns its slot.
    fn add(&mut self, s: ChildStream) -> usize {
        self.routes.retain(|(c, _)| *c != s.id);
        match self.streams.iter().position(Option::is_none) {
            Some(i) => {
                self.streams[i] = Some(s);
                i
            }
            None => {
                self.streams.push(Some(s));
                self.streams.len() - 1
            }
        }
    }

    /// Routes `id` towards `via` (a child, or a context behind one), as the
    /// master says with ADD_ROUTE. False when `via` is unknown or `id` is
    /// already reachable.
    pub fn add_route(&mut self, id: u32, via: u32) -> bool {
        if self.next_hop(id).is_some() {
            return false;
        }
        let Some(slot) = self.next_hop(via) else { return false };
        let Some(child) = self.streams[slot].as_ref().map(|s| s.id) else { return false };
        self.routes.push((id, child));
        true
    }

    /// Whether a message from the child in `slot` may carry `src` (or
    /// speak for it: a resource request's `for_context`).
    pub fn speaks_for(&self, slot: usize, src: u32) -> bool {
        let Some(Some(s)) = self.streams.get(slot) else { return false };
        src == s.id || self.routes.iter().any(|&(c, via)| c == src && via == s.id)
    }

    /// Removes `id` (a context behind a child) from the routes, as a child
    /// reported with DEL_ROUTE; only if it was behind the child in `slot`.
    fn del_route(&mut self, slot: usize, id: u32) -> bool {
        let Some(Some(s)) = self.streams.get(slot) else { return false };
        let via = s.id;
        let before = self.routes.len();
        self.routes.retain(|&(c, v)| !(c == id && v == via));
        self.routes.len() != before
    }

    /// Takes the child in `slot` out, with the ids that were reachable
    /// through it (the child's own first).
    fn remove(&mut self, slot: usize) -> Option<(ChildStream, Vec<u32>)> {
        let s = self.streams.get_mut(slot)?.take()?;
        let mut lost = alloc::vec![s.id];
        lost.extend(self.routes.iter().filter(|(_, v)| *v == s.id).map(|(c, _)| *c));
        self.routes.retain(|(_, v)| *v != s.id);
        Some((s, lost))
    }

    // ---- a child's life -----------------------------------------------

    /// Makes the stdin/stdout of a streamed command (process group `pid`)
    /// the stream to child `id`, read unless the outbox is full.
    pub fn adopt(&mut self, id: u32, rx: OwnedFd, tx: OwnedFd, pid: i32, poller: &Poller, out: &Outbox) {
        poller.delete(rx.as_fd());
        poller.delete(tx.as_fd());
        for fd in [&rx, &tx] {
            if self.grown < MAX_GROWN_PIPES {
                self.grown += 1;
                let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_SIZE);
            }
        }
        let c = ChildStream {
            id,
            rx: FrameReader::new(rx, out.max()),
            tx,
            out: TxBuffer::default(),
            tx_watched: false,
            pid,
            stalled_since: 0,
            ended: None,
            status: None,
            ending_since: 0,
        };
        let slot = self.add(c);
        if let Some(Some(c)) = self.streams.get(slot) {
            let read = if out.is_full() { Interest::NONE } else { Interest::READ };
            let _ = poller.add(c.rx.fd(), Token::ChildRx(slot).into(), read);
            let _ = poller.add(c.tx.as_fd(), Token::ChildTx(slot).into(), Interest::NONE);
        }
    }

    /// A message from the child in `slot`: checked (it may speak only for
    /// contexts behind it), stamped with its id, and sent up; but a
    /// resource request is this hop's to answer (see [`super::resources`]),
    /// whatever its `dst`: a child asks its parent, and never gets past it
    /// unchecked.
    pub fn pass_up(&mut self, slot: usize, m: Message, out: &mut Outbox) -> Passed {
        let mut h = m.header;
        if !self.speaks_for(slot, h.src) {
            return Passed::Dropped;
        }
        if let Some(Some(c)) = self.streams.get(slot) {
            h.auth = c.id;
        }
        if h.handle == handles::GET_RESOURCE {
            return Passed::Mine(Message { header: h, data: m.data });
        }
        let mut lost = None;
        if h.handle == handles::DEL_ROUTE && h.dst == MASTER_ID {
            // Passed on only for a context that was behind this child: a
            // child cannot declare a sibling's subtree gone.
            match postcard::from_bytes::<DelRoute>(&m.data) {
                Ok(r) if self.del_route(slot, r.id) => lost = Some(r.id),
                _ => return Passed::Dropped,
            }
        }
        if h.dst != out.id() {
            out.push(&h, &m.data);
        }
        lost.map_or(Passed::Up, Passed::Lost)
    }

    /// The stream of the child in `slot` ended (`end` says how). True when
    /// the child is to be dropped now: its command has exited too (or there
    /// is none running). Else the stream is no longer read and the child
    /// waits for its command's exit, at most [`EXIT_WAIT_MS`], so the
    /// DEL_ROUTE can say how it ended.
    pub fn stream_ended(&mut self, slot: usize, end: LinkEnd, commands: &Commands, poller: &Poller) -> bool {
        let Some(Some(c)) = self.streams.get_mut(slot) else { return false };
        if c.status.is_some() || !commands.running(c.pid) {
            return true;
        }
        c.ended = Some(end);
        c.ending_since = now_ns();
        poller.delete(c.rx.fd());
        false
    }

    /// The command in process group `pid` exited with `status`: if it
    /// carried a child's stream, the child is lost once its stream has
    /// ended too (what it wrote last, a goodbye, goes first). Returns the
    /// child to drop now, and how its stream ended; else its exit clock
    /// starts.
    pub fn command_exited(&mut self, pid: i32, status: ExitStatus) -> Option<(usize, LinkEnd)> {
        let slot = self.carried_by(pid)?;
        let Some(Some(c)) = self.streams.get_mut(slot) else { return None };
        c.status = Some(status);
        match c.ended {
            Some(end) => Some((slot, end)),
            None => {
                c.ending_since = now_ns();
                None
            }
        }
    }

    /// The child in `slot` is lost (`end` says how): its stream is closed,
    /// its routes go, and the master hears of every context lost with it.
    /// Returns the process group of the command that carried it, whose
    /// exec reply may have been held back for this, and the ids lost.
    pub fn drop(&mut self, slot: usize, end: LinkEnd, poller: &Poller, out: &mut Outbox) -> Option<(i32, Vec<u32>)> {
        let (c, lost) = self.remove(slot)?;
        if c.ended.is_none() {
            poller.delete(c.rx.fd());
        }
        poller.delete(c.tx.as_fd());
        for &id in &lost {
            let r = if id == c.id {
                DelRoute { id, end, pid: c.pid as u32, status: c.status }
            } else {
                DelRoute { id, end: LinkEnd::Behind(c.id), pid: 0, status: None }
            };
            out.send(MASTER_ID, handles::DEL_ROUTE, 0, &r);
        }
        Some((c.pid, lost))
    }

    // ---- sending down -------------------------------------------------

    /// Queues a message for the child in `slot` and writes what it can.
    pub fn send_down(&mut self, slot: usize, h: &Header, data: &[u8], poller: &Poller) {
        let Some(Some(c)) = self.streams.get_mut(slot) else { return };
        c.out.push(h, data);
        self.flush(slot, poller);
    }

    /// [`Children::send_down`] of a payload in two parts (a length prefix
    /// and a large chunk), framed in the stream's spare buffer and queued
    /// without another copy.
    pub fn send_down_parts(&mut self, slot: usize, h: &Header, a: &[u8], b: &[u8], poller: &Poller) {
        let Some(Some(c)) = self.streams.get_mut(slot) else { return };
        let mut frame = c.out.take_spare();
        frame.clear();
        frame.extend_from_slice(&Header { len: (a.len() + b.len()) as u32, ..*h }.encode());
        frame.extend_from_slice(a);
        frame.extend_from_slice(b);
        c.out.push_frame(frame, 0);
        self.flush(slot, poller);
    }

    /// Writes what the child in `slot` takes now; progress resets its
    /// stall clock.
    pub fn flush(&mut self, slot: usize, poller: &Poller) {
        let Some(Some(c)) = self.streams.get_mut(slot) else { return };
        let before = c.out.len();
        // A child that is gone is reported by its read side.
        flush_to(poller, c.tx.as_fd(), Token::ChildTx(slot), &mut c.out, &mut c.tx_watched);
        if c.stalled_since != 0 && c.out.len() < before {
            // Progress: a slow child is not a stalled one.
            c.stalled_since = now_ns();
        }
    }

    /// A RELAY from the parent: one copy per target, every link carrying
    /// the bytes once (see [`crate::proto::handles::RELAY`]). Copies for
    /// targets behind one child go down as one smaller relay, a target
    /// without a route gets a dead-route error. Returns the headers of the
    /// copies for this agent itself, and their payload.
    pub fn relay<'m>(&mut self, m: &'m Message, poller: &Poller, out: &mut Outbox) -> (Vec<Header>, &'m [u8]) {
        let mut mine = Vec::new();
        let Ok(r) = postcard::from_bytes::<Relay<'_>>(&m.data) else {
            out.log(LogLevel::Error, LogSource::Agent, b"malformed relay message; dropped");
            return (mine, &[]);
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
        let mut groups: Vec<(usize, Vec<(u32, u32)>)> = Vec::new();
        for &(dst, reply_to) in &r.targets {
            if dst == out.id() {
                mine.push(copy(dst, reply_to));
                continue;
            }
            match self.next_hop(dst) {
                Some(slot) => match groups.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, g)) => g.push((dst, reply_to)),
                    None => groups.push((slot, alloc::vec![(dst, reply_to)])),
                },
                None => out.dead_route(&copy(dst, reply_to)),
            }
        }
        for (slot, targets) in groups {
            if let [(dst, reply_to)] = targets[..] {
                self.send_down(slot, &copy(dst, reply_to), r.data, poller);
                continue;
            }
            let Some(Some(child)) = self.streams.get(slot) else { continue };
            let via = child.id;
            let sub = Relay { targets, handle: r.handle, flags: r.flags, data: r.data };
            if let Ok(data) = postcard::to_allocvec(&sub) {
                let mut hh = copy(via, 0);
                hh.handle = handles::RELAY;
                hh.flags = 0;
                self.send_down(slot, &hh, &data, poller);
            }
        }
        (mine, r.data)
    }

    // ---- back-pressure and clocks -------------------------------------

    /// Whether some child's queue is above its mark: the parent is not to
    /// be read now (see the module docs).
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Re-evaluates [`Children::is_full`] against the marks, and starts or
    /// clears the children's stall clocks; a running clock is held (reset
    /// to now) while `upstream_full`: the child may be blocked writing to
    /// us. True when [`Children::is_full`] changed.
    pub fn update_full(&mut self, upstream_full: bool) -> bool {
        let limit = if self.full { TX_LOW } else { TX_HIGH };
        let mut backed = false;
        let mut now = 0;
        for c in self.streams.iter_mut().flatten() {
            if c.out.len() <= limit {
                c.stalled_since = 0;
                continue;
            }
            backed = true;
            if c.stalled_since == 0 || upstream_full {
                if now == 0 {
                    now = now_ns();
                }
                c.stalled_since = now;
            }
        }
        let changed = backed != self.full;
        self.full = backed;
        changed
    }

    /// Reads the children's streams or leaves them alone (the outbox is
    /// full: what they send goes up).
    pub fn set_reading(&self, read: bool, poller: &Poller) {
        let i = if read { Interest::READ } else { Interest::NONE };
        for (slot, c) in self.streams.iter().enumerate() {
            if let Some(c) = c.as_ref().filter(|c| c.ended.is_none()) {
                let _ = poller.modify(c.rx.fd(), Token::ChildRx(slot).into(), i);
            }
        }
    }

    /// Whether some child's stall or exit clock runs.
    pub fn clocks_running(&self) -> bool {
        self.streams.iter().flatten().any(|c| c.stalled_since != 0 || c.ending_since != 0)
    }

    /// The stall rule and the exit wait (see the module docs) for the child
    /// in `slot` at `now`: how it is lost if it held reads from the parent
    /// back for [`STALL_MS`] without progress (its transport command is
    /// killed here and the reason logged), or if its stream or command
    /// ended [`EXIT_WAIT_MS`] ago without the other.
    pub fn overdue(&self, slot: usize, now: u64, out: &mut Outbox) -> Option<LinkEnd> {
        let Some(Some(c)) = self.streams.get(slot) else { return None };
        if c.ending_since != 0 && now.saturating_sub(c.ending_since) >= EXIT_WAIT_MS * 1_000_000 {
            return Some(c.ended.unwrap_or(LinkEnd::CommandEnded));
        }
        if c.stalled_since == 0 || now.saturating_sub(c.stalled_since) < STALL_MS * 1_000_000 {
            return None;
        }
        let mut line = Vec::from(&b"child context "[..]);
        super::util::push_decimal(&mut line, u64::from(c.id));
        line.extend_from_slice(b" took nothing for ");
        super::util::push_decimal(&mut line, STALL_MS / 1000);
        line.extend_from_slice(b" s with its queue full: dropped");
        out.log(LogLevel::Error, LogSource::Agent, &line);
        spawn::kill_group(c.pid, libc::SIGKILL);
        Some(LinkEnd::Stalled)
    }

    /// The epoll timeout: until the first child's stall or exit clock runs
    /// out, or none (-1).
    pub fn next_deadline_ms(&self) -> i32 {
        let mut first = u64::MAX;
        for c in self.streams.iter().flatten() {
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
}
