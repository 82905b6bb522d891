//! The master: the public API a program (or the `mito` CLI) uses.
//!
//! Map:
//! - [`Router`]: owns the routing table and the Broker thread; creates
//!   contexts (`local`, `ssh`, `sudo`, `su`, `doas`, each through the same
//!   bootstrap).
//! - [`context`] holds [`Context`] (calls, typed built-ins)
//!   and [`Pending`](context::Pending) replies.
//! - [`error`] holds [`CallError`](error::CallError).
//! - [`process`] holds [`Process`](process::Process): a command streamed
//!   both ways (stdin, output with credit, signals, pty, timeout).
//! - `via` connects onward from a context (multi-hop: `ctx.sudo(…)` runs
//!   sudo on ctx's host, bootstrapped through it, then routed by it).
//! - [`resources`] holds the importer's master side: resources
//!   registered on the [`Router`], grants, the server of GET_RESOURCE,
//!   [`Context::fetch_resource`].
//! - [`fanout`] puts one file to many contexts, each link crossed once
//!   (RELAY through shared hops).
//! - [`broadcast`] calls one function in many contexts, each link crossed
//!   once (RELAY through shared hops), and gathers every reply.
//! - [`transfer`] holds streamed `get`/`put` of files, [`tree`] of
//!   directory trees (`-r`); [`fs`] the typed
//!   file system helpers (list, mkdir -p, chmod/chown, links, rm -rf, du);
//!   [`sync`] delta sync of a file or tree ([`Context::sync`]: one listing,
//!   rolling-checksum deltas, `--delete`).
//!
//! **API boundary:** everything a user needs is re-exported from the crate
//! root; the `core` and `connect` internals may change.

pub mod broadcast;
pub mod connect_many;
mod containers;
pub mod context;
pub mod error;
pub mod fanout;
pub mod fs;
pub mod limits;
pub mod process;
pub mod resources;
pub mod sync;
pub mod transfer;
pub mod tree;
mod via;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::connect::agents::{Agent, AgentSet};
use crate::connect::bootstrap;
use crate::connect::child::ChildCommand;
use crate::connect::doas::DoasOptions;
use crate::connect::error::ConnectError;
use crate::connect::local::LocalOptions;
use crate::connect::ssh::SshOptions;
use crate::connect::stage0;
use crate::connect::su::SuOptions;
use crate::connect::sudo::SudoOptions;
use crate::core::broker::{Broker, Cmd, StreamSetup};
use crate::core::process_monitor::ProcessMonitor;
use crate::core::router::{ContextShared, RouterTable};
pub use connect_many::{ConnectMany, ConnectSpec};
use context::{ConnectInfo, Context};

/// What the Router and every Context share: the routing table, the broker
/// thread and the agents to upload. (Not `Core`: that is the `core` module.)
#[derive(Debug)]
pub(crate) struct RouterState {
    pub table: Arc<RouterTable>,
    pub broker: Broker,
    /// The agents this router uploads.
    pub agents: AgentSet,
    /// Resources registered, grants, the server (the importer).
    pub resources: Arc<resources::Store>,
}

/// The fds and process behind a bootstrapped stream.
struct Transport {
    rx: OwnedFd,
    tx: OwnedFd,
    stderr: Option<OwnedFd>,
    process: Option<ProcessMonitor>,
}

/// Options of a [`Router`].
#[derive(Clone, Debug)]
pub struct RouterOptions {
    /// Largest message accepted from an agent (bytes).
    pub max_message_size: u32,
    /// Agents to upload instead of the embedded one of their architecture:
    /// a custom agent with the user's own functions
    /// ([`Agent::from_path`](crate::Agent::from_path); README, "Your own
    /// functions"). Every context of this router, direct or behind a hop,
    /// runs it. Empty: the embedded agents.
    pub agents: Vec<Agent>,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions { max_message_size: crate::proto::MAX_MESSAGE_SIZE, agents: Vec::new() }
    }
}

/// The root of a tree of contexts. Dropping it shuts every context down:
/// streams close, agents exit, stragglers are killed after 2 s, all reaped.
///
/// A chain: ssh to a host, then sudo there (the second hop is started and
/// routed through the first; its password prompt is answered there).
///
/// ```no_run
/// use mito::{Router, SshOptions, SudoOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let router = Router::new()?;
/// let web1 = router.ssh(SshOptions::new("web1"))?;
/// let root = web1.sudo(SudoOptions::new("root"))?;
/// let out = root.exec(&["id", "-un"])?;
/// assert_eq!(&out.stdout[..], b"root\n");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Router {
    state: Arc<RouterState>,
}

impl Router {
    /// A router with default options (starts the broker thread).
    pub fn new() -> std::io::Result<Router> {
        Router::with_options(RouterOptions::default())
    }

    /// A router with the given options.
    pub fn with_options(opts: RouterOptions) -> std::io::Result<Router> {
        let table = Arc::new(RouterTable::new(opts.max_message_size));
        let broker = Broker::start(table.clone())?;
        let resources = Arc::default();
        Ok(Router { state: Arc::new(RouterState { table, broker, agents: AgentSet::new(opts.agents), resources }) })
    }

    /// Starts an agent on this machine through stage0 (`sh -c`).
    pub fn local(&self, opts: LocalOptions) -> Result<Context, ConnectError> {
        self.connector().local(opts)
    }

    /// Starts an agent on another host through the system `ssh` client.
    pub fn ssh(&self, opts: SshOptions) -> Result<Context, ConnectError> {
        self.connector().ssh(opts)
    }

    /// Starts an agent as another user through `sudo`.
    pub fn sudo(&self, opts: SudoOptions) -> Result<Context, ConnectError> {
        self.connector().sudo(opts)
    }

    /// Starts an agent as another user through `su`.
    pub fn su(&self, opts: SuOptions) -> Result<Context, ConnectError> {
        self.connector().su(opts)
    }

    /// Starts an agent as another user through `doas`.
    pub fn doas(&self, opts: DoasOptions) -> Result<Context, ConnectError> {
        self.connector().doas(opts)
    }

    /// Creates contexts from the master; the same methods as
    /// [`Context::connector`], for code that connects from either.
    pub fn connector(&self) -> Connector<'_> {
        Connector { state: &self.state, via: None }
    }

    /// Connects every spec from the master, at most `in_flight` at once,
    /// all driven by one `poll` on the calling thread (no thread per
    /// connect): the returned iterator yields `(index in specs, result)`
    /// as each connect finishes. Each keeps its own connect timeout, so a
    /// host that never answers fails alone. Dropping the iterator early
    /// ends the connects still in flight.
    pub fn connect_many(&self, specs: Vec<ConnectSpec>, in_flight: usize) -> ConnectMany<'_> {
        ConnectMany::new(&self.state, specs, in_flight)
    }

    /// Ids of the contexts still connected.
    pub fn contexts(&self) -> Vec<u32> {
        self.state.table.live_contexts()
    }
}

/// Creates contexts: from the master ([`Router::connector`]) or onward
/// from a context ([`Context::connector`], multi-hop). Every method builds
/// its command the same way; only where it runs differs.
#[derive(Clone, Copy, Debug)]
pub struct Connector<'a> {
    state: &'a Arc<RouterState>,
    via: Option<&'a Context>,
}

impl Connector<'_> {
    /// Whether contexts start from the master (not behind a hop).
    pub fn is_from_master(&self) -> bool {
        self.via.is_none()
    }

    /// The stage0 script for context `id`. Behind a hop running the same
    /// agent, stage0 asks for the raw agent, which the hop sends itself
    /// (its own executable): a cold start crosses only the last link.
    fn stage0(&self, id: u32) -> String {
        let agents = self.state.agents.all();
        let specs: Vec<_> = agents.iter().map(|a| a.spec()).collect();
        let hop = self.via.map(|h| h.connect_info());
        let same = hop.and_then(|i| specs.iter().find(|s| s.sha256 == i.agent_hash && s.arch == i.arch));
        stage0::script_preferring_raw(&specs, id, same.map(|s| s.arch))
    }

    /// A context's name: the one given, else `default`, prefixed with the
    /// hop's name and a comma behind a hop (as the CLI spells chains).
    fn name(&self, given: &Option<String>, default: impl FnOnce() -> String) -> String {
        let own = given.clone().unwrap_or_else(default);
        match (self.via, given) {
            (Some(hop), None) => format!("{},{own}", hop.name()),
            _ => own,
        }
    }

    /// Starts an agent through stage0 (`sh -c`) where this connector runs
    /// its commands: this machine, or the hop's host.
    pub fn local(&self, opts: LocalOptions) -> Result<Context, ConnectError> {
        self.connect_spec(ConnectSpec::Local(opts))
    }

    /// Starts an agent on another host through the system `ssh` client
    /// (the hop's, behind a hop).
    pub fn ssh(&self, opts: SshOptions) -> Result<Context, ConnectError> {
        self.connect_spec(ConnectSpec::Ssh(opts))
    }

    /// Starts an agent as another user through `sudo`.
    pub fn sudo(&self, opts: SudoOptions) -> Result<Context, ConnectError> {
        self.connect_spec(ConnectSpec::Sudo(opts))
    }

    /// Starts an agent as another user through `su`.
    pub fn su(&self, opts: SuOptions) -> Result<Context, ConnectError> {
        self.connect_spec(ConnectSpec::Su(opts))
    }

    /// Starts an agent as another user through `doas`.
    pub fn doas(&self, opts: DoasOptions) -> Result<Context, ConnectError> {
        self.connect_spec(ConnectSpec::Doas(opts))
    }

    /// Starts `cmd` (which ends in `sh -c <stage0>` on the target), runs
    /// the bootstrap, and returns the context. `classify` turns what the
    /// process printed on stderr into a method-specific error.
    pub(crate) fn connect_child(
        &self,
        id: u32,
        name: String,
        cmd: &ChildCommand,
        timeout: std::time::Duration,
        hooks: &mut dyn bootstrap::Hooks,
    ) -> Result<Context, ConnectError> {
        if let Some(hop) = self.via {
            return via::connect(hop, id, name, cmd, timeout, hooks);
        }
        let mut starting = connect_many::Starting::spawn(self.state, id, name, cmd, timeout, hooks)?;
        let r = starting.run(self.state, hooks);
        let mut left = Vec::new();
        let r = starting.finish(self, r, &mut left);
        // Reaped without blocking the caller for long.
        left.into_iter().for_each(reap_soon);
        r
    }

    /// Hands a bootstrapped stream to the broker and returns its Context.
    fn attach(
        &self,
        id: u32,
        name: String,
        t: Transport,
        boot: bootstrap::Bootstrapped,
        transport_pid: Option<u32>,
    ) -> Result<Context, ConnectError> {
        let Transport { rx, tx, stderr, process } = t;
        let info = ConnectInfo::from_boot(&boot, transport_pid);
        let io = |source| ConnectError::Io { context: name.clone(), source };
        let out = self.state.broker.stream_out(tx).map_err(io)?;
        let rx = self.state.broker.stream_in(rx, boot.decoder).map_err(io)?;
        let shared = Arc::new(ContextShared::new(id, name));
        let _ = shared.rx.set(rx.clone());
        self.state.table.add_route(shared.clone(), out.clone());
        log::debug!(
            "[{}] connected in {:?}: agent pid {} ({}), {} agent bytes sent ({:?})",
            shared.name,
            boot.elapsed,
            info.pid,
            info.exe,
            info.agent_bytes_sent,
            info.upload
        );
        self.state.broker.send(Cmd::AddStream(Box::new(StreamSetup { ctx: shared.clone(), rx, out, stderr, process })));
        Ok(Context::new(self.state.clone(), shared, info))
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.state.broker.shutdown();
    }
}

/// Reaps a child that was told to go: at once if it is gone within 2 s,
/// else on a thread of its own, so a failed connect never waits on a
/// process it may not kill (and never leaves a zombie either).
fn reap_soon(mut pm: ProcessMonitor) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let ready = {
        let fd = pm.fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        poll(&mut fds, Some(&Timespec { tv_sec: 2, tv_nsec: 0 })).is_ok_and(|n| n > 0)
    };
    if ready {
        pm.wait();
        return;
    }
    log::debug!("pid {} did not exit after SIGKILL and hang-up; reaping it when it does", pm.pid());
    let spawned = std::thread::Builder::new().name("mito-reaper".into()).spawn(move || {
        pm.wait();
    });
    if spawned.is_err() {
        log::warn!("cannot start a thread to reap a failed connect's process; it may stay a zombie");
    }
}
