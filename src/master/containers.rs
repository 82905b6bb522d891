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
use crate::connect::setns::{self, SetnsOptions, Target};
use crate::proto::functions::Enter;

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
        let enter = Enter { pid: Some(opts.pid), ..Enter::default() };
        let target = Target::Pid(opts.pid);
        self.enter(&opts.name, || format!("setns:{}", opts.pid), enter, &opts.env, opts.connect_timeout, &target)
    }

    /// Starts an agent with `opts.path` as its root, where this connector
    /// runs its commands.
    pub fn chroot(&self, opts: ChrootOptions) -> Result<Context, ConnectError> {
        let path = opts.path.to_string_lossy().into_owned();
        let default = || format!("chroot:{path}");
        let user = match &opts.user {
            Some(u) => Some(self.resolve_user(&opts.path, u).ok_or_else(|| ConnectError::Enter {
                context: self.name(&opts.name, default),
                failure: setns::EnterFailure::NoSuchUser(u.clone()),
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
        cmd.enter = Some(Entered { how, agent });
        let r = self.connect_child(id, name, &cmd, timeout, &mut bootstrap::Direct);
        r.map_err(|e| setns::classify(e, target))
    }
}
