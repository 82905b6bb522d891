//! The container methods: [`Router::setns`] / [`Context::setns`] (an agent
//! inside a running container, entered by pid) and [`Router::chroot`] /
//! [`Context::chroot`] (an agent in a directory tree as its root).
//!
//! Both start the agent directly, without stage0 or a shell
//! (`core::nsenter`): from the master, a sealed memfd of the router's agent
//! for this machine's architecture (`connect::child::create_entered`);
//! behind a hop, the hop's `exec` with [`ExecArgs::enter`] copies its own
//! executable into a memfd and starts that (the hop is on the same host,
//! so of the same architecture): no agent bytes cross any link. The
//! bootstrap then waits for the agent's marker and hello only
//! ([`bootstrap::Direct`]).
//!
//! [`ExecArgs::enter`]: crate::proto::functions::ExecArgs::enter

use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use serde_bytes::ByteBuf;

use super::context::Context;
use super::{Connector, Router};
use crate::connect::bootstrap;
use crate::connect::child::{ChildCommand, Entered};
use crate::connect::chroot::ChrootOptions;
use crate::connect::error::ConnectError;
use crate::connect::setns::{self, EnterFailure, Lookup, SetnsOptions, Target};
use crate::proto::functions::{Enter, ExecArgs};

impl Router {
    /// Starts an agent inside the container of process `opts.pid` (root
    /// on this machine): its namespaces, root, cwd, ids, environment and
    /// cgroup; nothing is written into the container.
    pub fn setns(&self, opts: SetnsOptions) -> Result<Context, ConnectError> {
        self.connector().setns(opts)
    }

    /// Starts an agent with `opts.path` as its root (root on this machine).
    pub fn chroot(&self, opts: ChrootOptions) -> Result<Context, ConnectError> {
        self.connector().chroot(opts)
    }
}

impl Context {
    /// Starts an agent inside a container on this context's host (which
    /// must run as root there: `ssh → sudo:root → setns:PID`).
    pub fn setns(&self, opts: SetnsOptions) -> Result<Context, ConnectError> {
        self.connector().setns(opts)
    }

    /// Starts an agent in a chroot on this context's host.
    pub fn chroot(&self, opts: ChrootOptions) -> Result<Context, ConnectError> {
        self.connector().chroot(opts)
    }
}

impl Connector<'_> {
    /// Starts an agent inside the container of process `opts.pid`, where
    /// this connector runs its commands.
    pub fn setns(&self, opts: SetnsOptions) -> Result<Context, ConnectError> {
        let label = opts.container.clone().unwrap_or_else(|| opts.pid.to_string());
        let default = || format!("setns:{label}");
        let pid = match &opts.container {
            Some(c) => self.container_pid(c, &opts, &self.name(&opts.name, default))?,
            None => opts.pid,
        };
        let enter = Enter { pid: Some(pid), ..Enter::default() };
        self.enter(&opts.name, default, enter, &opts.env, opts.connect_timeout, &Target::Pid(pid))
    }

    /// The pid of container `name`, from the first of `opts.engines` that
    /// knows it, asked where the agent will start (each within the connect
    /// timeout).
    fn container_pid(&self, name: &str, opts: &SetnsOptions, context: &str) -> Result<u32, ConnectError> {
        let enter_error = |failure| ConnectError::Enter { context: context.into(), failure };
        let mut said = Vec::new();
        for engine in &opts.engines {
            let argv = [engine.as_str(), "inspect", "--format", "{{.State.Pid}}", name];
            let lookup = match self.via {
                Some(hop) => {
                    let args = ExecArgs {
                        argv: argv.iter().map(|a| ByteBuf::from(a.as_bytes())).collect(),
                        timeout_ms: Some(opts.connect_timeout.as_millis().max(1) as u64),
                        ..ExecArgs::default()
                    };
                    match hop.exec_with(&args) {
                        Ok(r) => setns::read_inspect(r.status.code, &r.stdout, &r.stderr),
                        Err(e) => Lookup::Failed(e.to_string()),
                    }
                }
                None => run_here(&argv, opts.connect_timeout),
            };
            match lookup {
                Lookup::Pid(pid) => return Ok(pid),
                Lookup::Stopped => return Err(enter_error(EnterFailure::NotRunning(name.into()))),
                Lookup::Unknown => said.push(format!("{engine}: no such container")),
                Lookup::Failed(why) => said.push(format!("{engine}: {why}")),
            }
        }
        Err(enter_error(EnterFailure::NoSuchContainer { name: name.into(), engines: said.join("; ") }))
    }

    /// Starts an agent with `opts.path` as its root, where this connector
    /// runs its commands.
    pub fn chroot(&self, opts: ChrootOptions) -> Result<Context, ConnectError> {
        let path = opts.path.to_string_lossy().into_owned();
        let default = || format!("chroot:{path}");
        let user = match &opts.user {
            Some(u) => Some(self.resolve_user(&opts.path, u).ok_or_else(|| ConnectError::Enter {
                context: self.name(&opts.name, default),
                failure: EnterFailure::NoSuchUser(u.clone()),
            })?),
            None => None,
        };
        let enter = Enter { pid: None, root: Some(ByteBuf::from(opts.path.as_os_str().as_bytes())), user };
        let target = Target::Root(path.clone());
        self.enter(&opts.name, default, enter, &opts.env, opts.connect_timeout, &target)
    }

    /// `user` in the tree's `/etc/passwd` and `/etc/group`, read where the
    /// agent will start (here, or through the hop); missing files are
    /// empty (a number still resolves).
    fn resolve_user(&self, root: &std::path::Path, user: &str) -> Option<crate::proto::functions::Ids> {
        let read = |rel: &str| match self.via {
            Some(hop) => hop.read_file(root.join(rel)).unwrap_or_default(),
            None => std::fs::read(root.join(rel)).unwrap_or_default(),
        };
        crate::connect::chroot::resolve_user(&read("etc/passwd"), &read("etc/group"), user)
    }

    /// What setns and chroot share: the agent's argv (`mito-agent HASH
    /// ID`, as stage0 would start it), the bytes for a start from the
    /// master, the direct bootstrap, typed errors.
    fn enter(
        &self,
        given: &Option<String>,
        default: impl FnOnce() -> String,
        how: Enter,
        env: &[(std::ffi::OsString, std::ffi::OsString)],
        timeout: Duration,
        target: &Target,
    ) -> Result<Context, ConnectError> {
        let id = self.state.table.allocate_context_id();
        let name = self.name(given, default);
        let (hash, agent) = match self.via {
            Some(hop) => (hop.connect_info().agent_hash.clone(), Arc::new(Vec::new())),
            None => {
                let arch = std::env::consts::ARCH;
                let Some(chosen) = self.state.agents.for_arch(arch) else {
                    return Err(ConnectError::UnsupportedArch {
                        context: name,
                        arch: arch.into(),
                        have: self.state.agents.archs(),
                    });
                };
                (chosen.sha256().to_string(), Arc::new(chosen.bytes(false)))
            }
        };
        let mut cmd = ChildCommand::new("mito-agent");
        cmd.arg(hash).arg(id.to_string());
        cmd.env = env.to_vec();
        cmd.enter = Some(Entered { how, agent, timeout });
        let r = self.connect_child(id, name, &cmd, timeout, &mut bootstrap::Direct);
        r.map_err(|e| setns::classify(e, target, timeout))
    }
}

/// Runs an engine's inspect on this machine, killed after `timeout` (a
/// daemon that does not answer must not hang the connect).
fn run_here(argv: &[&str], timeout: Duration) -> Lookup {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Lookup::Failed(e.to_string()),
    };
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Lookup::Failed(format!("no answer within {timeout:?}"));
            }
            Err(e) => return Lookup::Failed(e.to_string()),
        }
    };
    // Exited: what it wrote is in the pipes (an inspect prints little).
    let (mut out, mut err) = (Vec::new(), Vec::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = o.by_ref().take(1 << 16).read_to_end(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.by_ref().take(1 << 16).read_to_end(&mut err);
    }
    setns::read_inspect(status.code(), &out, &err)
}
