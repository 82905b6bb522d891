//! mito: run code on other machines and in containers without installing
//! anything there — mitogen's design, in Rust.
//!
//! A master ([`Router`]) creates contexts: agent processes it bootstraps
//! through `sh -c` (locally, over ssh, under sudo/su/doas, and through
//! other contexts: `router.ssh(…)?.sudo(…)?`), then calls functions in them
//! over a framed, routed message protocol.
//!
//! ```
//! use mito::{LocalOptions, Router};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let router = Router::new()?;
//!     let ctx = router.local(LocalOptions::default())?;
//!     ctx.ping()?;
//!     let out = ctx.exec(&["uname", "-a"])?;
//!     print!("{}", String::from_utf8_lossy(&out.stdout));
//!     println!("agent pid {} as {}", ctx.info()?.pid, ctx.info()?.user);
//!     ctx.write_file("/tmp/mito-doc-example", b"hello\n", Some(0o600))?;
//!     assert_eq!(ctx.read_file("/tmp/mito-doc-example")?, b"hello\n");
//!     ctx.remove("/tmp/mito-doc-example")?;
//!     Ok(())
//! }
//! ```
//!
//! Crate map (`ARCHITECTURE.md` at the repository root has the whole picture):
//! - [`proto`]: wire format (no_std, shared with the agent).
//! - [`core`]: Side, Stream, Poller, Broker, Router table, Latch.
//! - [`connect`]: stage0, bootstrap, methods, ProcessMonitor.
//! - `agent`: ExternalContext, the agent runtime (feature `agent`).
//! - [`master`]: the public API: [`Router`], [`Context`].
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod connect;
pub mod core;
pub mod proto;

#[cfg(feature = "agent")]
pub mod agent;

#[cfg(feature = "master")]
pub mod master;

#[cfg(feature = "master")]
pub use connect::{
    doas::DoasOptions,
    error::ConnectError,
    local::LocalOptions,
    prompt::BecomeFailure,
    ssh::{HostKeyPolicy, SshFailure, SshOptions},
    su::SuOptions,
    sudo::SudoOptions,
};
#[cfg(feature = "master")]
pub use core::process_monitor::ExitStatus;
#[cfg(feature = "master")]
pub use master::{
    context::{ConnectInfo, Context, Pending},
    error::CallError,
    fanout::put_many,
    process::{Process, ProcessEvent, ProcessInput},
    transfer::{GetOptions, Progress, TransferError, TransferStats},
    tree::{Plan, TreeStats},
    Connector, Router, RouterOptions,
};
pub use proto::functions;
pub use proto::{ErrorKind, RemoteError};
