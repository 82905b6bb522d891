//! The agent: the program that runs on the target (`no_std` + `alloc`).
//!
//! Map:
//! - [`external_context`] — [`ExternalContext`](external_context::ExternalContext),
//!   the main loop: parent stream, dispatcher, running commands, loggers.
//! - [`children`] — streams to contexts carried onward (multi-hop) and the
//!   routes through them.
//! - [`builtins`] — functions that finish at once (ping, info, files).
//! - [`files`] — the open files of streamed transfers (hash, temp, commit).
//! - [`facts`] — a host inventory from /proc and /etc.
//! - [`fs`] — tree walks and changes (list, mkdir -p, chmod/chown, links, rm -rf, du).
//! - [`spawn`] — posix_spawn + pidfd, the agent's ProcessMonitor.
//! - [`iologger`] — [`IoLogger`](iologger::IoLogger), fds 1/2 turned into log records.
//! - [`util`] — number and string helpers that avoid `core::fmt`.
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
pub mod signals;
pub mod spawn;
pub mod stdio;
pub mod token;
pub mod util;

pub use external_context::main;
