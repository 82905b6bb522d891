//! Creating contexts: methods, spawning, bootstrap, process monitoring.
//!
//! Map:
//! - [`stage0`] — the POSIX sh bootstrap text (alloc only: an agent will use
//!   it to connect onward).
//! - master only: [`bootstrap`] drives stage0's text phase from the master
//!   (markers, agent upload, hello) with a deadline; [`local`] is the local
//!   method (`create_child`: one socketpair as stdin and stdout);
//!   [`process_monitor`] tracks spawned processes by pidfd; [`error`] holds
//!   [`ConnectError`](error::ConnectError).
//!
//! Every method ends in the same place: a process running `sh -c <stage0>`
//! whose stdin/stdout are the stream. Only how that process starts differs.

pub mod stage0;

#[cfg(feature = "master")]
pub mod bootstrap;
#[cfg(feature = "master")]
pub mod error;
#[cfg(feature = "master")]
pub mod local;
#[cfg(feature = "master")]
pub mod process_monitor;
#[cfg(feature = "master")]
pub mod ssh;
