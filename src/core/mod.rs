//! The message plumbing of every context.
//!
//! Map:
//! - [`side`] — reads and writes on a non-blocking fd with mitogen's `io_op` rules.
//! - [`stream`] — framing ([`Decoder`](stream::Decoder), [`TxBuffer`](stream::TxBuffer)).
//! - [`poller`] — epoll, shared by the master's Broker and the agent's loop.
//! - [`waker`] — eventfd that wakes a poller from another thread.
//! - [`text`] — a target's text made safe for a terminal (escaped, cut).
//! - [`lines`] — the capped line splitter for a target's text.
//! - [`tty`] — typing a password into a tty once echo is off.
//! - [`tool_process`] — whether sudo/su/doas may still be at its own
//!   password prompt, read in /proc (the master's and the hop agent's
//!   check before typing one).
//! - [`wait`] — reaping a child through its pidfd.
//! - [`nsenter`] — entering a container's namespaces or a chroot and
//!   executing the agent from a memfd (the setns and chroot methods, in
//!   the master and in a hop).
//! - master only (`std`): [`broker`] (the I/O thread), [`router`] (delivery
//!   by context id and handle), [`stream_in`] (the read half a waiting
//!   caller may read itself), [`stream_out`] (the send half, queued and
//!   drained by the broker), [`latch`] (blocking waits with deadlines),
//!   [`process_monitor`] (a child tracked by pidfd: exit as an epoll
//!   event, always reaped, never a recycled pid).
//!
//! The agent is single-threaded and has no Broker thread: its loop in
//! `agent::external_context` drives the same side/stream/poller pieces.
//!
//! **Architecture invariant:** nothing in `side`, `stream`, `poller`,
//! `waker`, `lines`, `tty`, `tool_process`, `wait`, `nsenter`, `num`, `sha256`, `xxh3` or
//! `text` uses std; they build into the agent.

pub mod lines;
pub mod nsenter;
pub mod num;
pub mod poller;
pub mod sha256;
pub mod side;
pub mod stream;
pub mod text;
pub mod tool_process;
pub mod tty;
pub mod wait;
pub mod waker;
pub mod xxh3;

#[cfg(feature = "master")]
pub mod broker;
#[cfg(feature = "master")]
pub mod latch;
#[cfg(feature = "master")]
pub mod process_monitor;
#[cfg(feature = "master")]
pub mod router;
#[cfg(feature = "master")]
pub mod stream_in;
#[cfg(feature = "master")]
pub mod stream_out;
