//! [`Children`]: the streams to contexts this agent carries onward
//! (multi-hop), and the routes through them.
//!
//! How a child gets here: the master starts the next hop's command in this
//! agent as a streamed command (`ssh …`, `sudo … sh -c <stage0>`), runs the
//! bootstrap through it, and once the new agent said hello sends
//! `ExecOp::Adopt(id)`: the command's stdin/stdout become a [`ChildStream`]
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
//!   waits for that exit for at most `EXIT_WAIT_MS`, and the command's own
//!   exec reply is held until the DEL_ROUTE is sent, so the master hears
//!   of the loss first, with its cause.
//! - a child that stops reading is dropped the same way (and its transport
//!   command killed) once its queue has kept reads from the parent stopped
//!   for `STALL_MS` without progress (see
//!   [`super::external_context`]): one child cannot stall its hop.

use alloc::vec::Vec;

use rustix::fd::{AsFd, OwnedFd};

use super::commands::Status;
use super::outbox::Outbox;
use super::token::Token;
use crate::core::poller::{Interest, Poller};
use crate::core::stream::{Decoder, TxBuffer};
use crate::proto::message::LinkEnd;

/// One adopted child context's stream.
pub struct ChildStream {
    /// The child's context id.
    pub id: u32,
    /// What the child writes (its stdout).
    pub rx: OwnedFd,
    /// What the child reads (its stdin).
    pub tx: OwnedFd,
    /// Frames read from `rx`.
    pub decoder: Decoder,
    /// Frames queued for `tx`.
    pub out: TxBuffer,
    /// Whether `tx` is registered for writability.
    pub tx_watched: bool,
    /// Whether `rx` is registered for reading.
    pub reading: bool,
    /// Process group of the command that carries the stream (ssh, sudo,
    /// sh → agent): killed when the child is dropped for stalling.
    pub pid: i32,
    /// Monotonic ns since when this child's queue has kept reads from the
    /// parent stopped without progress (0: it does not).
    pub stalled_since: u64,
    /// How the stream ended, once it has while its command still ran (it
    /// is no longer read; the child is dropped when the command exits).
    pub ended: Option<LinkEnd>,
    /// The command's exit, once it ended.
    pub status: Option<Status>,
    /// Monotonic ns since when one of the two happened and not the other
    /// (0: neither): the child is dropped `EXIT_WAIT_MS` later regardless.
    pub ending_since: u64,
}

/// The child streams and the contexts routed through them.
#[derive(Default)]
pub struct Children {
    /// Slots; a slot's tokens are fixed while it is in use.
    pub streams: Vec<Option<ChildStream>>,
    /// `(context, child id)`: `context` lies behind that child.
    routes: Vec<(u32, u32)>,
}

impl Children {
    /// The slot of direct child `id`.
    pub fn slot_of(&self, id: u32) -> Option<usize> {
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

    /// Makes the stdin/stdout of a streamed command (process group `pid`)
    /// the stream to child `id`, read unless the outbox is full.
    pub fn adopt(&mut self, id: u32, rx: OwnedFd, tx: OwnedFd, pid: i32, poller: &Poller, out: &Outbox) {
        poller.delete(rx.as_fd());
        poller.delete(tx.as_fd());
        let reading = !out.is_full();
        let c = ChildStream {
            id,
            rx,
            tx,
            decoder: Decoder::new(out.max()),
            out: TxBuffer::default(),
            tx_watched: false,
            reading,
            pid,
            stalled_since: 0,
            ended: None,
            status: None,
            ending_since: 0,
        };
        let slot = self.add(c);
        if let Some(Some(c)) = self.streams.get(slot) {
            let read = if reading { Interest::READ } else { Interest::NONE };
            let _ = poller.add(c.rx.as_fd(), Token::ChildRx(slot).into(), read);
            let _ = poller.add(c.tx.as_fd(), Token::ChildTx(slot).into(), Interest::NONE);
        }
    }

    /// The slot of the child whose stream the command in process group
    /// `pid` carries.
    pub fn carried_by(&self, pid: i32) -> Option<usize> {
        self.streams.iter().position(|c| c.as_ref().is_some_and(|c| c.pid == pid))
    }

    /// The command in process group `pid` exited with `status`: if it
    /// carried a child's stream, the child is lost once its stream has
    /// ended too (what it wrote last, a goodbye, goes first). Returns the
    /// child to drop now, and how its stream ended; else its exit clock
    /// starts (`now`).
    pub fn command_exited(&mut self, pid: i32, status: Status, now: u64) -> Option<(usize, LinkEnd)> {
        let slot = self.carried_by(pid)?;
        let Some(Some(c)) = self.streams.get_mut(slot) else { return None };
        c.status = Some(status);
        match c.ended {
            Some(end) => Some((slot, end)),
            None => {
                c.ending_since = now;
                None
            }
        }
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

    /// Routes `id` towards `via` (a child, or a context behind one). False
    /// when `via` is unknown or `id` is already reachable.
    pub fn add_route(&mut self, id: u32, via: u32) -> bool {
        if self.next_hop(id).is_some() {
            return false;
        }
        let Some(slot) = self.next_hop(via) else { return false };
        let Some(child) = self.streams[slot].as_ref().map(|s| s.id) else { return false };
        self.routes.push((id, child));
        true
    }

    /// Whether a message from the child in `slot` may carry `src`.
    pub fn speaks_for(&self, slot: usize, src: u32) -> bool {
        let Some(Some(s)) = self.streams.get(slot) else { return false };
        src == s.id || self.routes.iter().any(|&(c, via)| c == src && via == s.id)
    }

    /// Removes `id` (a context behind a child) from the routes, as a child
    /// reported with DEL_ROUTE; only if it was behind the child in `slot`.
    pub fn del_route(&mut self, slot: usize, id: u32) -> bool {
        let Some(Some(s)) = self.streams.get(slot) else { return false };
        let via = s.id;
        let before = self.routes.len();
        self.routes.retain(|&(c, v)| !(c == id && v == via));
        self.routes.len() != before
    }

    /// Takes the child in `slot` out, with the ids that were reachable
    /// through it (the child's own first).
    pub fn remove(&mut self, slot: usize) -> Option<(ChildStream, Vec<u32>)> {
        let s = self.streams.get_mut(slot)?.take()?;
        let mut lost = alloc::vec![s.id];
        lost.extend(self.routes.iter().filter(|(_, v)| *v == s.id).map(|(c, _)| *c));
        self.routes.retain(|(_, v)| *v != s.id);
        Some((s, lost))
    }
}
