//! Connecting many contexts from the master on one thread:
//! [`Router::connect_many`](super::Router::connect_many).
//!
//! Map:
//! - [`ConnectSpec`]: one connect from the master (local, ssh, sudo, su,
//!   doas), as the [`Connector`] methods take it.
//! - `Prepared`: what every method makes of its options before anything
//!   runs (context id and name, the command, the bootstrap hooks, the
//!   timeout); the [`Connector`] methods go through it too, so a connect
//!   is built one way whether it runs alone or among many.
//! - `Starting`: a spawned process with its bootstrap machine
//!   ([`bootstrap::Bootstrap`]), up to the hello; then handed to the
//!   broker (`Connector::attach`), or killed, hung up and reaped.
//! - [`ConnectMany`]: the driver, an iterator: at most `in_flight`
//!   processes bootstrapping at once, all advanced by one `poll` on the
//!   caller's thread (no thread per connect), results in the order they
//!   finish. Each connect keeps its own deadline, so a host that accepts
//!   and never answers times out alone while the others go on.
//!
//! A connect behind a hop ([`Context::connector`]) stays a blocking call:
//! the hop's agent runs the method and the master bootstraps through it
//! (`via`).

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd};

use super::{reap_soon, Connector, RouterState, Transport};
use crate::connect::bootstrap::{self, Bootstrap, Bootstrapped, Hooks, Pipes, Step, Want};
use crate::connect::child::{self, ChildCommand, Spawned};
use crate::connect::doas::{self, DoasOptions};
use crate::connect::error::ConnectError;
use crate::connect::local::{self, LocalOptions};
use crate::connect::prompt::BecomeFailure;
use crate::connect::ssh::{self, SshOptions};
use crate::connect::su::{self, SuOptions};
use crate::connect::sudo::{self, SudoOptions};
use crate::core::process_monitor::ProcessMonitor;
use crate::core::side;
use crate::master::context::Context;

/// One connect from the master, for [`Router::connect_many`](super::Router::connect_many).
#[derive(Clone, Debug)]
pub enum ConnectSpec {
    /// An agent on this machine ([`Connector::local`]).
    Local(LocalOptions),
    /// An agent over ssh ([`Connector::ssh`]).
    Ssh(SshOptions),
    /// An agent through sudo ([`Connector::sudo`]).
    Sudo(SudoOptions),
    /// An agent through su ([`Connector::su`]).
    Su(SuOptions),
    /// An agent through doas ([`Connector::doas`]).
    Doas(DoasOptions),
}

/// A connect with its options turned into a command: ready to spawn.
pub(super) struct Prepared {
    pub id: u32,
    pub name: String,
    pub cmd: ChildCommand,
    pub timeout: Duration,
    pub hooks: Box<dyn Hooks>,
    /// For sudo/su/doas: the tool and user, so a missing tool is reported
    /// as [`BecomeFailure::ToolMissing`].
    pub tool: Option<(&'static str, String)>,
}

impl Connector<'_> {
    /// What `spec` runs, where this connector runs its commands.
    pub(super) fn prepare(&self, spec: ConnectSpec) -> Result<Prepared, ConnectError> {
        let id = self.state.table.allocate_context_id();
        let stage0 = self.stage0(id);
        Ok(match spec {
            ConnectSpec::Local(opts) => {
                let name = self.name(&opts.name, || format!("local.{id}"));
                let cmd = local::command(&opts, &stage0);
                let hooks = Box::new(bootstrap::NoHooks);
                Prepared { id, name, cmd, timeout: opts.connect_timeout, hooks, tool: None }
            }
            ConnectSpec::Ssh(mut opts) => {
                let name = self.name(&opts.name, || opts.display_host());
                if self.via.is_some() && opts.password.is_some() {
                    // The askpass FIFO lives on the master's host.
                    return Err(ConnectError::Unsupported { context: name, what: "an ssh password through a hop" });
                }
                if self.via.is_some() {
                    // The control directory is checked on this host, not the hop's.
                    opts.control_persist = None;
                }
                let prepared = ssh::prepare(&opts, &name, &stage0)
                    .map_err(|source| ConnectError::Io { context: name.clone(), source })?;
                let cmd = prepared.command.clone();
                Prepared { id, name, cmd, timeout: opts.connect_timeout, hooks: Box::new(prepared), tool: None }
            }
            ConnectSpec::Sudo(o) => {
                let name = self.name(&o.name, || format!("sudo:{}", o.username));
                let (cmd, r) = sudo::prepare(&o, &name, &stage0);
                let tool = Some(("sudo", o.username));
                Prepared { id, name, cmd, timeout: o.connect_timeout, hooks: Box::new(r), tool }
            }
            ConnectSpec::Su(o) => {
                let name = self.name(&o.name, || format!("su:{}", o.username));
                let (cmd, r) = su::prepare(&o, &name, &stage0);
                let tool = Some(("su", o.username));
                Prepared { id, name, cmd, timeout: o.connect_timeout, hooks: Box::new(r), tool }
            }
            ConnectSpec::Doas(o) => {
                let name = self.name(&o.name, || format!("doas:{}", o.username));
                let (cmd, r) = doas::prepare(&o, &name, &stage0);
                let tool = Some(("doas", o.username));
                Prepared { id, name, cmd, timeout: o.connect_timeout, hooks: Box::new(r), tool }
            }
        })
    }

    /// Connects `spec` and waits for it (this thread; behind a hop, the
    /// hop runs the method).
    pub(super) fn connect_spec(&self, spec: ConnectSpec) -> Result<Context, ConnectError> {
        let mut p = self.prepare(spec)?;
        let r = self.connect_child(p.id, p.name, &p.cmd, p.timeout, &mut *p.hooks);
        tool_missing(r, &p.tool, &p.cmd)
    }
}

/// A spawn that failed because sudo/su/doas is not installed, said as
/// [`BecomeFailure::ToolMissing`].
fn tool_missing<T>(
    r: Result<T, ConnectError>,
    tool: &Option<(&'static str, String)>,
    cmd: &ChildCommand,
) -> Result<T, ConnectError> {
    match (r, tool) {
        (Err(ConnectError::Spawn { context, source, .. }), Some((tool, user)))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Err(ConnectError::Become {
                context,
                tool,
                user: user.clone(),
                failure: BecomeFailure::ToolMissing,
                output: format!(" ({} not found)", cmd.program.to_string_lossy()),
            })
        }
        (r, _) => r,
    }
}

/// A process started for a context, bootstrapping.
pub(super) struct Starting {
    id: u32,
    name: String,
    spawned: Spawned,
    pm: ProcessMonitor,
    machine: Bootstrap,
}

impl Starting {
    /// Starts `cmd` for context `id` (its fds non-blocking, its pid told
    /// to the hooks) and a bootstrap machine with `timeout` from now.
    pub(super) fn spawn(
        state: &RouterState,
        id: u32,
        name: String,
        cmd: &ChildCommand,
        timeout: Duration,
        hooks: &mut dyn Hooks,
    ) -> Result<Starting, ConnectError> {
        let spawned = child::create_child(cmd).map_err(|source| ConnectError::Spawn {
            context: name.clone(),
            program: cmd.program.to_string_lossy().into_owned(),
            source,
        })?;
        let pm = match ProcessMonitor::new(spawned.pid) {
            Ok(pm) => pm,
            Err(source) => {
                // Our child, not reaped yet, so its pid is still its own:
                // kill and reap it by pid rather than leave a zombie.
                let pid = spawned.pid;
                drop(spawned);
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
                }
                return Err(ConnectError::Io { context: name, source });
            }
        };
        let io = |source: rustix::io::Errno| ConnectError::Io { context: name.clone(), source: source.into() };
        let set = side::set_nonblocking(spawned.rx.as_fd(), true)
            .and_then(|()| side::set_nonblocking(spawned.tx.as_fd(), true))
            .and_then(|()| side::set_nonblocking(spawned.stderr.as_fd(), true));
        if let Err(e) = set {
            pm.kill();
            drop(spawned);
            reap_soon(pm);
            return Err(io(e));
        }
        // Our child, and nobody reaps it before the bootstrap ends: the pid
        // stays this process's (a zombie at worst) while prompts are judged.
        hooks.spawned(spawned.pid);
        let machine = Bootstrap::new(&name, timeout, state.table.max_message_size, hooks.stage0());
        Ok(Starting { id, name, spawned, pm, machine })
    }

    fn pipes(&self) -> Pipes<'_> {
        Pipes { rx: self.spawned.rx.as_fd(), tx: self.spawned.tx.as_fd(), stderr: Some(self.spawned.stderr.as_fd()) }
    }

    /// Advances the bootstrap as far as it goes without waiting.
    fn advance(&mut self, state: &RouterState, hooks: &mut dyn Hooks) -> Step {
        let pipes = Pipes {
            rx: self.spawned.rx.as_fd(),
            tx: self.spawned.tx.as_fd(),
            stderr: Some(self.spawned.stderr.as_fd()),
        };
        self.machine.advance(&pipes, &state.agents, hooks)
    }

    /// Runs the bootstrap to its end on this thread (blocking `poll`).
    pub(super) fn run(&mut self, state: &RouterState, hooks: &mut dyn Hooks) -> Result<Bootstrapped, ConnectError> {
        let pipes = Pipes {
            rx: self.spawned.rx.as_fd(),
            tx: self.spawned.tx.as_fd(),
            stderr: Some(self.spawned.stderr.as_fd()),
        };
        bootstrap::drive(&mut self.machine, &pipes, &state.agents, hooks)
    }

    /// The context, once the bootstrap said hello; else the error, with
    /// the process killed and hung up, and put in `left` when it is still
    /// to reap.
    pub(super) fn finish(
        self,
        c: &Connector<'_>,
        r: Result<Bootstrapped, ConnectError>,
        left: &mut Vec<ProcessMonitor>,
    ) -> Result<Context, ConnectError> {
        let Starting { id, name, spawned, mut pm, .. } = self;
        match r {
            Ok(boot) => {
                let transport_pid = pm.pid();
                let t = Transport { rx: spawned.rx, tx: spawned.tx, stderr: Some(spawned.stderr), process: Some(pm) };
                c.attach(id, name, t, boot, Some(transport_pid))
            }
            Err(e) => {
                // A failed bootstrap leaves nothing behind: kill, hang up
                // (closing the pipes and the tty ends a child that outlived
                // SIGKILL's permission check — doas execs the command as
                // root in our child's pid), and reap.
                pm.kill();
                drop(spawned);
                if pm.poll().is_none() {
                    left.push(pm);
                }
                Err(e)
            }
        }
    }
}

/// One connect in flight.
struct Active {
    index: usize,
    starting: Starting,
    hooks: Box<dyn Hooks>,
    tool: Option<(&'static str, String)>,
    program: ChildCommand,
    /// What it waits for; `None`: advance it now.
    want: Option<Want>,
}

/// Connects driven together from the caller's thread; see
/// [`Router::connect_many`](super::Router::connect_many). Yields
/// `(index, result)`, `index` being the spec's position in the input, in
/// the order the connects finish. Dropping it ends the connects still in
/// flight (their processes killed and reaped).
pub struct ConnectMany<'r> {
    state: &'r Arc<RouterState>,
    queue: VecDeque<(usize, ConnectSpec)>,
    in_flight: usize,
    active: Vec<Active>,
    ready: VecDeque<(usize, Result<Context, ConnectError>)>,
    /// Processes of failed connects, killed, not yet reaped.
    reaping: Vec<ProcessMonitor>,
}

impl std::fmt::Debug for ConnectMany<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectMany")
            .field("queued", &self.queue.len())
            .field("in_flight", &self.active.len())
            .field("ready", &self.ready.len())
            .finish()
    }
}

impl<'r> ConnectMany<'r> {
    pub(super) fn new(state: &'r Arc<RouterState>, specs: Vec<ConnectSpec>, in_flight: usize) -> ConnectMany<'r> {
        ConnectMany {
            state,
            queue: specs.into_iter().enumerate().collect(),
            in_flight: in_flight.max(1),
            active: Vec::new(),
            ready: VecDeque::new(),
            reaping: Vec::new(),
        }
    }

    fn connector(&self) -> Connector<'r> {
        Connector { state: self.state, via: None }
    }

    /// Starts queued connects up to `in_flight`; a connect that cannot
    /// start is a result at once.
    fn fill(&mut self) {
        while self.active.len() < self.in_flight {
            let Some((index, spec)) = self.queue.pop_front() else { return };
            let c = self.connector();
            let started = c.prepare(spec).and_then(|mut p| {
                let s = Starting::spawn(self.state, p.id, p.name, &p.cmd, p.timeout, &mut *p.hooks);
                let s = tool_missing(s, &p.tool, &p.cmd)?;
                Ok(Active { index, starting: s, hooks: p.hooks, tool: p.tool, program: p.cmd, want: None })
            });
            match started {
                Ok(a) => self.active.push(a),
                Err(e) => self.ready.push_back((index, Err(e))),
            }
        }
    }

    /// Advances every connect that is due; finished ones become results.
    fn advance_due(&mut self) {
        let mut k = 0;
        while k < self.active.len() {
            let a = &mut self.active[k];
            if a.want.is_some() {
                k += 1;
                continue;
            }
            match a.starting.advance(self.state, &mut *a.hooks) {
                Step::Pending(w) => {
                    a.want = Some(w);
                    k += 1;
                }
                Step::Done(r) => {
                    let a = self.active.swap_remove(k);
                    let c = Connector { state: self.state, via: None };
                    let r = a.starting.finish(&c, *r, &mut self.reaping);
                    self.ready.push_back((a.index, tool_missing(r, &a.tool, &a.program)));
                }
            }
        }
    }

    /// One `poll` over every connect in flight, until one is ready or the
    /// earliest wake time; marks those that are due.
    fn wait(&mut self) {
        let now = Instant::now();
        let wake = self.active.iter().filter_map(|a| a.want.map(|w| w.wake)).min().unwrap_or(now);
        let mut due = vec![false; self.active.len()];
        {
            let pipes: Vec<Pipes<'_>> = self.active.iter().map(|a| a.starting.pipes()).collect();
            let mut fds: Vec<PollFd<'_>> = Vec::new();
            let mut owner: Vec<usize> = Vec::new();
            for (k, (a, p)) in self.active.iter().zip(&pipes).enumerate() {
                let Some(w) = &a.want else { continue };
                let before = fds.len();
                bootstrap::push_fds(p, w, &mut fds);
                owner.extend(std::iter::repeat_n(k, fds.len() - before));
            }
            let ms = wake.saturating_duration_since(now).as_millis().min(i32::MAX as u128) as i32;
            let ms = if ms == 0 && wake > now { 1 } else { ms };
            let ts =
                rustix::event::Timespec { tv_sec: i64::from(ms / 1000), tv_nsec: i64::from(ms % 1000) * 1_000_000 };
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                // Not expected (the fds are ours and open): do not spin.
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
            for (f, &k) in fds.iter().zip(&owner) {
                if !f.revents().is_empty() {
                    due[k] = true;
                }
            }
        }
        let now = Instant::now();
        for (a, d) in self.active.iter_mut().zip(due) {
            if d || a.want.is_some_and(|w| w.wake <= now) {
                a.want = None;
            }
        }
        self.reaping.retain_mut(|pm| pm.poll().is_none());
    }
}

impl Iterator for ConnectMany<'_> {
    type Item = (usize, Result<Context, ConnectError>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            self.fill();
            if !self.ready.is_empty() {
                continue;
            }
            if self.active.is_empty() {
                return None;
            }
            self.advance_due();
            if self.ready.is_empty() {
                self.wait();
            }
        }
    }
}

impl Drop for ConnectMany<'_> {
    fn drop(&mut self) {
        for a in self.active.drain(..) {
            let Starting { spawned, pm, .. } = a.starting;
            pm.kill();
            drop(spawned);
            self.reaping.push(pm);
        }
        self.reaping.retain_mut(|pm| pm.poll().is_none());
        if self.reaping.is_empty() {
            return;
        }
        // Killed and hung up; reaped when they go, off the caller's thread.
        let mut left = std::mem::take(&mut self.reaping);
        let spawned = std::thread::Builder::new().name("mito-reaper".into()).spawn(move || {
            for pm in &mut left {
                pm.wait();
            }
        });
        if spawned.is_err() {
            log::warn!("cannot start a thread to reap failed connects' processes; they may stay zombies");
        }
    }
}
