//! Creating contexts: methods, spawning, bootstrap, process monitoring.
//!
//! Map:
//! - [`stage0`] — the POSIX sh bootstrap text. The master builds it for
//!   every hop (a hop runs it as a streamed command); it needs only
//!   `alloc`, so that an agent may build it too.
//! - master only: [`bootstrap`] drives stage0's text phase from the master
//!   (markers, agent upload, hello) with a deadline, as a resumable state
//!   machine (one connect with a blocking `poll`, or many from one thread:
//!   `master::connect_many`); [`child`] starts what
//!   every method runs (`create_child`: one socketpair, or two pipes, as
//!   stdin and stdout, a pipe or a pty as stderr); [`local`] is the local
//!   method;
//!   [`embedded`] holds the agent binaries build.rs embedded, [`agents`]
//!   the set a router uploads (those, or a user's custom agent); [`error`] holds
//!   [`ConnectError`](error::ConnectError); [`ssh`] the ssh method;
//!   [`sudo`], [`su`], [`doas`] the privilege changes, which share
//!   [`prompt`] (recognising and answering password prompts once).
//!
//! - [`setns`] and [`chroot`] start the agent directly (no stage0, no
//!   shell) inside a container or a chroot, from a memfd
//!   (`core::nsenter`; `child::create_entered` from the master, the hop's
//!   `spawn` behind one).
//!
//! - [`engine`]: the container engines' CLIs (docker, podman, nerdctl,
//!   kubectl, lxc, incus): `<tool> exec -i … sh -c '<stage0>'`, or, in an
//!   image without a shell, the agent copied in and executed directly.
//!
//! Every method but setns and chroot ends in the same place: a process
//! running `sh -c <stage0>` whose stdin/stdout are the stream (those two
//! end with the agent itself on the stream). Only how that process starts
//! differs.

pub mod stage0;

#[cfg(feature = "master")]
pub mod agents;
#[cfg(feature = "master")]
pub mod bootstrap;
#[cfg(feature = "master")]
pub mod child;
#[cfg(feature = "master")]
pub mod chroot;
#[cfg(feature = "master")]
pub mod doas;
#[cfg(feature = "master")]
pub mod embedded;
#[cfg(feature = "master")]
pub mod engine;
#[cfg(feature = "master")]
pub mod error;
#[cfg(feature = "master")]
pub mod local;
#[cfg(feature = "master")]
pub mod prompt;
#[cfg(feature = "master")]
pub mod setns;
#[cfg(feature = "master")]
pub mod ssh;
#[cfg(feature = "master")]
pub mod su;
#[cfg(feature = "master")]
pub mod sudo;
