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
//! What a library user needs is at the crate root: [`Router`] and its
//! options ([`RouterOptions`], [`LocalOptions`], [`SshOptions`],
//! [`SudoOptions`], [`SuOptions`], [`DoasOptions`]; many connects at once
//! from one thread: [`Router::connect_many`] with [`ConnectSpec`]s),
//! [`Context`] (calls, files, trees, [`Process`] for streamed commands),
//! [`put_many`] (a file to many contexts), [`call_many`] (a call to many,
//! each link crossed once), [`Context::sync`] (delta sync, [`SyncOptions`]),
//! the errors ([`ConnectError`], [`CallError`], [`TransferError`],
//! [`SyncError`], [`RemoteError`]) and the built-in [`functions`] with
//! their argument and reply types. Your own functions:
//! [`declare_function!`] declares one for both halves, a custom agent
//! serves it (`mito::agent::serve`, with the features `agent` and `std`),
//! and [`RouterOptions::agents`] takes that agent ([`Agent`]) to upload
//! instead of the embedded one (README, "Your own functions"). Resources on demand (the importer): a [`Resource`]
//! registered with [`Router::register_resource`] is fetched by a context
//! with [`Context::fetch_resource`], through hops that cache it.
//! [`master`] holds the same items by topic, [`proto`] the wire format
//! they travel in.
//!
//! The modules `core` (I/O, framing, the routing table), `connect` (stage0,
//! bootstrap, the methods) and `agent` (the agent runtime) are public only
//! so that the agent binary, the tests and the benchmarks can reach them;
//! they are hidden from these docs and are not a stable API.
//! `ARCHITECTURE.md` at the repository root maps all of them.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

extern crate alloc;

#[doc(hidden)]
pub mod connect;
#[doc(hidden)]
pub mod core;
pub mod proto;

#[cfg(feature = "agent")]
#[doc(hidden)]
pub mod agent;

#[cfg(feature = "master")]
pub mod master;

#[cfg(feature = "master")]
pub use connect::agents::Agent;
#[cfg(feature = "master")]
pub use connect::bootstrap::Upload;
#[cfg(feature = "master")]
pub use connect::{
    chroot::ChrootOptions,
    doas::DoasOptions,
    engine::{Engine, EngineFailure, EngineOptions},
    error::ConnectError,
    local::LocalOptions,
    prompt::BecomeFailure,
    setns::{EnterFailure, SetnsOptions},
    ssh::{HostKeyPolicy, SshFailure, SshOptions},
    su::SuOptions,
    sudo::SudoOptions,
};
#[cfg(feature = "master")]
pub use core::process_monitor::ExitStatus;
#[cfg(feature = "master")]
pub use core::router::EndKind;
#[cfg(feature = "master")]
pub use master::{
    broadcast::{call_many, Answer},
    connect_many::{ConnectMany, ConnectSpec},
    context::{ConnectInfo, Context, Pending},
    error::CallError,
    fanout::{put_many, put_many_with_options},
    process::{Process, ProcessEvent, ProcessInput},
    resources::ResourceStats,
    sync::{SyncError, SyncEvent, SyncOptions, SyncStats},
    transfer::{CopyOptions, Digest, GetOptions, HashKind, Progress, TransferError, TransferStats},
    tree::{Plan, TreeStats},
    Connector, Router, RouterOptions,
};
pub use proto::functions;
pub use proto::resource::Resource;
pub use proto::{ErrorKind, RemoteError};
