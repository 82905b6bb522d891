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
//! And [`Router::engine`] / [`Context::engine`]: the engines' CLIs
//! (`docker`, `podman`, `nerdctl`, `kubectl`, `lxc`, `incus`;
//! `connect::engine`), an ordinary command through [`Connector::connect_child`]
//! like sudo's, so the same code runs it from the master or behind a hop;
//! in an image without a shell the agent is copied in with the tool and
//! started directly.
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
use crate::connect::engine::{self, Engine, EngineFailure, EngineHooks, EngineOptions};
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

    /// Starts an agent in a container through its engine's CLI (`docker
    /// exec`, `podman exec`, `kubectl exec`, …; see [`EngineOptions`]).
    pub fn engine(&self, opts: EngineOptions) -> Result<Context, ConnectError> {
        self.connector().engine(opts)
    }

    /// [`Router::engine`] for podman container `name`, with defaults.
    pub fn podman(&self, name: &str) -> Result<Context, ConnectError> {
        self.engine(EngineOptions::new(Engine::Podman, name))
    }

    /// [`Router::engine`] for docker container `name`, with defaults.
    pub fn docker(&self, name: &str) -> Result<Context, ConnectError> {
        self.engine(EngineOptions::new(Engine::Docker, name))
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

    /// Starts an agent in a container through its engine's CLI, run on
    /// this context's host (`local,podman:web`, `sudo:root,docker:web`).
    pub fn engine(&self, opts: EngineOptions) -> Result<Context, ConnectError> {
        self.connector().engine(opts)
    }

    /// [`Context::engine`] for podman container `name`, with defaults.
    pub fn podman(&self, name: &str) -> Result<Context, ConnectError> {
        self.engine(EngineOptions::new(Engine::Podman, name))
    }

    /// [`Context::engine`] for docker container `name`, with defaults.
    pub fn docker(&self, name: &str) -> Result<Context, ConnectError> {
        self.engine(EngineOptions::new(Engine::Docker, name))
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
            let how = setns::Resolver::of(engine);
            let argv = how.argv(engine, name);
            let lookup = match self.via {
                Some(hop) => {
                    let args = ExecArgs {
                        argv: argv.iter().map(|a| ByteBuf::from(a.as_bytes())).collect(),
                        timeout_ms: Some(opts.connect_timeout.as_millis().max(1) as u64),
                        ..ExecArgs::default()
                    };
                    match hop.exec_with(&args) {
                        Ok(r) => how.read(r.status.code, &r.stdout, &r.stderr),
                        Err(e) => Lookup::Failed(e.to_string()),
                    }
                }
                None => run_here(how, &argv, opts.connect_timeout),
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

/// Asks an engine for a pid on this machine (see [`run_tool_here`]).
fn run_here(how: setns::Resolver, argv: &[&str], timeout: Duration) -> Lookup {
    let argv: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
    match run_tool_here(&argv, timeout) {
        Ok(r) => how.read(r.code, &r.stdout, &r.stderr),
        Err(e) => Lookup::Failed(e.to_string()),
    }
}

/// How a short tool command ended.
struct Ran {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Why a short tool command did not run to its end.
#[derive(Debug, thiserror::Error)]
enum RunFailed {
    /// The program is not there.
    #[error("not found")]
    Missing,
    /// Anything else (no answer in time, the hop's error).
    #[error("{0}")]
    Other(String),
}

/// Runs a short tool command (an inspect, a copy) on this machine, killed
/// after `timeout` (a daemon that does not answer must not hang the
/// connect); at most 64 KiB of each output is kept.
fn run_tool_here(argv: &[std::ffi::OsString], timeout: Duration) -> Result<Ran, RunFailed> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let Some((program, args)) = argv.split_first() else { return Err(RunFailed::Other("no program".into())) };
    let child =
        Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RunFailed::Missing),
        Err(e) => return Err(RunFailed::Other(e.to_string())),
    };
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunFailed::Other(format!("no answer within {timeout:?}")));
            }
            Err(e) => return Err(RunFailed::Other(e.to_string())),
        }
    };
    // Exited: what it wrote is in the pipes (an inspect or a copy prints
    // little; more than a pipe's worth would have blocked it, and it was
    // killed at the deadline).
    let (mut out, mut err) = (Vec::new(), Vec::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = o.by_ref().take(1 << 16).read_to_end(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.by_ref().take(1 << 16).read_to_end(&mut err);
    }
    Ok(Ran { code: status.code(), stdout: out, stderr: err })
}

/// The agent written to a private directory of the master's for a copy
/// into a container (mode 0755: a `-u` user inside must run it); removed
/// when dropped.
struct AgentFile {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl AgentFile {
    fn write(bytes: &[u8], hash: &str, id: u32) -> std::io::Result<AgentFile> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = std::env::temp_dir().join(format!("mito-engine-{}-{id}", std::process::id()));
        // Ours alone (0700, created now, never an existing one): nobody
        // can swap the file between its writing and the copy.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join(format!("mito-agent-{hash}"));
        let file = AgentFile { dir, path };
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o755).open(&file.path)?;
        f.write_all(bytes)?;
        Ok(file)
    }
}

impl Drop for AgentFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The source of a copy made for it, removed when dropped (held only for
/// that).
enum Staged<'a> {
    /// On this machine.
    Here { _file: AgentFile },
    /// On the hop.
    Hop { _file: HopStaged<'a> },
}

/// The hop's executable copied, mode 0755, into a new private directory
/// on the hop (`mktemp -d`), for a container user who is not its owner;
/// removed when dropped.
struct HopStaged<'a> {
    hop: &'a Context,
    dir: String,
    file: String,
}

impl<'a> HopStaged<'a> {
    fn new(hop: &'a Context, exe: &str, timeout: Duration) -> Result<HopStaged<'a>, String> {
        let script =
            "d=$(mktemp -d) && cp \"$1\" \"$d/mito-agent\" && chmod 755 \"$d\" \"$d/mito-agent\" && echo \"$d\"";
        let argv = ["sh", "-c", script, "sh", exe];
        let args = ExecArgs {
            argv: argv.iter().map(|a| ByteBuf::from(a.as_bytes())).collect(),
            timeout_ms: Some(timeout.as_millis().max(1) as u64),
            ..ExecArgs::default()
        };
        let r = hop.exec_with(&args).map_err(|e| e.to_string())?;
        let dir = String::from_utf8_lossy(&r.stdout).trim().to_string();
        if r.status.code != Some(0) || !dir.starts_with('/') || dir.contains('\n') {
            return Err(String::from_utf8_lossy(&r.stderr).into_owned());
        }
        Ok(HopStaged { hop, file: format!("{dir}/mito-agent"), dir })
    }
}

impl Drop for HopStaged<'_> {
    fn drop(&mut self) {
        let _ = self.hop.exec(&["rm", "-rf", "--", &self.dir]);
    }
}

impl Connector<'_> {
    /// Starts an agent in a container through its engine's CLI, where this
    /// connector runs its commands: through `sh` and stage0 when the image
    /// has one, else by copying the agent in and starting it directly; all
    /// within `opts.connect_timeout`.
    pub fn engine(&self, opts: EngineOptions) -> Result<Context, ConnectError> {
        let id = self.state.table.allocate_context_id();
        let name = self.name(&opts.name, || opts.display());
        if opts.user.is_some() && opts.engine == Engine::Kubectl {
            return Err(ConnectError::Unsupported {
                context: name,
                what: "a user for kubectl (kubectl exec has none)",
            });
        }
        let tool = opts.engine.name();
        let deadline = std::time::Instant::now() + opts.connect_timeout;
        let cmd = opts.shell_command(&self.stage0(id));
        let mut hooks = EngineHooks::new(&opts, &name, false);
        let shell = self.connect_child(id, name.clone(), &cmd, opts.connect_timeout, &mut hooks);
        match tool_missing(&opts, shell) {
            Err(ConnectError::Engine { failure: EngineFailure::NoShell, .. }) if opts.engine.can_copy() => {}
            Ok(ctx) => {
                log::debug!("[{name}] started through {tool} exec and sh (stage0)");
                return Ok(ctx);
            }
            r => return r,
        }
        log::debug!("[{name}] no shell in the image: copying the agent in ({tool}) and starting it directly");
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        let hash = self.copy_agent(&opts, &name, id, left())?;
        let timeout = left();
        if timeout.is_zero() {
            let phase = "copying the agent in";
            return Err(ConnectError::Timeout {
                context: name,
                phase,
                timeout: opts.connect_timeout,
                output: String::new(),
            });
        }
        let cmd = opts.direct_command(&hash, id);
        let mut hooks = EngineHooks::new(&opts, &name, true);
        let ctx = tool_missing(&opts, self.connect_child(id, name.clone(), &cmd, timeout, &mut hooks))?;
        let path = opts.agent_path(&hash, id);
        log::debug!("[{name}] started directly from {path}");
        // Running, it needs no name: leave nothing in the container. (A
        // `-u` user may not remove root's copy from a sticky /tmp: then
        // it stays, and says so.)
        if let Err(e) = ctx.remove(&path) {
            log::debug!("[{name}] could not remove {path}: {e}");
        }
        Ok(ctx)
    }

    /// Copies the agent into the container for a start without a shell;
    /// returns its hash. From the master the router's agent for this
    /// machine's architecture (the engine's host: a container runs the
    /// host's), written to a private file first; behind a hop the hop's own
    /// executable file, so no agent bytes cross a link.
    fn copy_agent(&self, opts: &EngineOptions, name: &str, id: u32, timeout: Duration) -> Result<String, ConnectError> {
        let io = |source| ConnectError::Io { context: name.into(), source };
        let (hash, source, _file) = match self.via {
            Some(hop) => {
                let info = hop.connect_info();
                let exe = &info.exe;
                // A hop running from a memfd has no file the tool could copy.
                if !exe.starts_with('/') || exe.starts_with("/proc/") || exe.contains("memfd:") || exe.ends_with(')') {
                    return Err(ConnectError::Unsupported {
                        context: name.into(),
                        what: "copying the agent into a container without a shell from a hop that runs from memory",
                    });
                }
                // The hop's file is 0700, and the tools keep a copy's mode:
                // for a `-u` user inside, a 0755 copy first.
                let staged = match &opts.user {
                    Some(_) => Some(
                        HopStaged::new(hop, exe, timeout)
                            .map_err(|why| engine::error(opts, name, EngineFailure::CopyFailed, why.as_bytes()))?,
                    ),
                    None => None,
                };
                let source = staged.as_ref().map_or_else(|| exe.clone(), |s| s.file.clone());
                (info.agent_hash.clone(), source, staged.map(|f| Staged::Hop { _file: f }))
            }
            None => {
                let arch = std::env::consts::ARCH;
                let Some(chosen) = self.state.agents.for_arch(arch) else {
                    return Err(ConnectError::UnsupportedArch {
                        context: name.into(),
                        arch: arch.into(),
                        have: self.state.agents.archs(),
                    });
                };
                let hash = chosen.sha256().to_string();
                let file = AgentFile::write(&chosen.bytes(false), &hash, id).map_err(io)?;
                (hash, file.path.to_string_lossy().into_owned(), Some(Staged::Here { _file: file }))
            }
        };
        let Some(argv) = opts.copy_argv(&source, &hash, id) else {
            return Err(engine::error(opts, name, EngineFailure::NoShell, b""));
        };
        let ran = match self.via {
            Some(hop) => {
                let args = ExecArgs {
                    argv: argv.iter().map(|a| ByteBuf::from(a.as_bytes())).collect(),
                    timeout_ms: Some(timeout.as_millis().max(1) as u64),
                    ..ExecArgs::default()
                };
                match hop.exec_with(&args) {
                    Ok(r) => Ok(Ran { code: r.status.code, stdout: r.stdout.into_vec(), stderr: r.stderr.into_vec() }),
                    Err(crate::CallError::Remote(e)) if e.errno == libc::ENOENT => Err(RunFailed::Missing),
                    Err(e) => Err(RunFailed::Other(e.to_string())),
                }
            }
            None => run_tool_here(&argv, timeout),
        };
        match ran {
            Ok(r) if r.code == Some(0) => Ok(hash),
            Ok(r) => {
                let mut said = r.stderr;
                said.extend_from_slice(&r.stdout);
                let failure = match engine::classify_output(&said) {
                    Some(f) if f != EngineFailure::NoShell => f,
                    _ => EngineFailure::CopyFailed,
                };
                Err(engine::error(opts, name, failure, &said))
            }
            Err(RunFailed::Missing) => Err(engine::error(opts, name, EngineFailure::ToolMissing, b"")),
            Err(RunFailed::Other(why)) => Err(engine::error(opts, name, EngineFailure::CopyFailed, why.as_bytes())),
        }
    }
}

/// A tool that could not be started (from the master, or behind a hop:
/// the hop's errno) is [`EngineFailure::ToolMissing`].
fn tool_missing(opts: &EngineOptions, r: Result<Context, ConnectError>) -> Result<Context, ConnectError> {
    match r {
        Err(ConnectError::Spawn { context, source, program }) if source.kind() == std::io::ErrorKind::NotFound => {
            let said = format!("{program}: not found");
            Err(engine::error(opts, &context, EngineFailure::ToolMissing, said.as_bytes()))
        }
        r => r,
    }
}
