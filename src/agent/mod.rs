//! The agent: the program that runs on the target (`no_std` + `alloc`).
//!
//! Map:
//! - [`external_context`] — [`ExternalContext`](external_context::ExternalContext),
//!   the event loop: one epoll wait, each event to the part that owns its
//!   fd ([`token`] names them), the exit paths.
//! - [`frames`] — reading frames, one loop for the parent and children.
//! - [`outbox`] — everything sent to the parent, and upstream back-pressure.
//! - [`dispatch`] — calls from the parent: name → function → reply.
//! - [`commands`] — exec'd commands: stdin, output and credit, signals,
//!   timeouts, exit, reply.
//! - [`children`] — streams to contexts carried onward (multi-hop), the
//!   routes through them, relays, downstream back-pressure, the stall rule.
//! - [`stdio`] — fds 0/1/2 taken over at start; fds 1/2 as log records
//!   (through [`iologger`]).
//! - [`signals`] — SIGHUP/SIGINT/SIGTERM as an fd for the loop.
//! - [`panic_goodbye`] — the goodbye frame the panic handler writes.
//! - [`resources`] — the importer: grants, the chunk cache a hop serves
//!   its children from, this agent's own fetches (`fetch_resource`).
//! - [`builtins`] — functions that finish at once (ping, info, files).
//! - [`files`] — the open files of streamed transfers (hash, temp, commit).
//! - [`facts`] — a host inventory from /proc and /etc.
//! - [`fs`] — tree walks and changes (list, mkdir -p, chmod/chown, links, rm -rf, du).
//! - [`sync`] — delta sync: the destination's listing, rebuilds of files
//!   from old blocks and literal bytes (temp + rename), tree changes.
//! - [`spawn`] — posix_spawn + pidfd, the agent's ProcessMonitor.
//! - [`util`] — number and string helpers that avoid `core::fmt`, the clock.
//! - `user` — a custom agent's own functions (`std` builds only): the
//!   registry the dispatcher asks for names that are not built-ins, and
//!   `serve`, the custom agent's `main`.
//!
//! **Architecture invariant:** nothing here links std, and nothing formats
//! with `core::fmt` on the agent's paths (errors are kinds + errno; the
//! master words them). Every byte here crosses the wire on a first connect.

pub mod builtins;
pub mod children;
pub mod commands;
pub mod dispatch;
pub mod external_context;
pub mod facts;
pub mod files;
pub mod frames;
pub mod fs;
pub mod iologger;
pub mod outbox;
pub mod panic_goodbye;
pub mod resources;
pub mod signals;
pub mod spawn;
pub mod stdio;
pub mod sync;
pub mod token;
pub mod user;
pub mod util;

pub use external_context::main;
#[cfg(feature = "std")]
pub use user::{function, serve, serve_if_agent, started_as_agent, Registry, UserFunction};
