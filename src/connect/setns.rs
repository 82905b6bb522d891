//! The `setns` method: an agent inside a running container, entered from
//! its host by process id, with nothing written into the container and no
//! shell or binary needed there (`core::nsenter` does the work; the agent
//! is executed from a memfd and started directly, without stage0).
//! Needs root on the container's host (`CAP_SYS_ADMIN`). Also the failure
//! type shared with [`super::chroot`].

use std::ffi::OsString;
use std::time::Duration;

use super::child::EnterError;
use super::error::ConnectError;
use crate::core::nsenter::Step;

/// Options of [`crate::Router::setns`].
#[derive(Clone, Debug)]
pub struct SetnsOptions {
    /// A process of the container, in the pid namespace of the host that
    /// enters (the master's, or the hop's). Ignored with `container`.
    pub pid: u32,
    /// A container name (or id) instead: its pid is asked of the first of
    /// `engines` that knows it, run where the agent will start (here, or
    /// on the hop); see [`Resolver`] for what each program is asked.
    pub container: Option<String>,
    /// The engines' programs tried for `container`, in order (default
    /// `podman`, `docker`, `crictl`, `lxc`, `incus`: a missing program
    /// costs one failed exec). A program is asked as [`Resolver::of`] its
    /// file name says; one name alone chooses that engine.
    pub engines: Vec<String>,
    /// Name in logs and errors (default `setns:<pid>` or `setns:<name>`).
    pub name: Option<String>,
    /// Variables set on top of the container process's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Limit for the whole start, fork to hello.
    pub connect_timeout: Duration,
}

impl SetnsOptions {
    /// Options to enter the container of process `pid`.
    pub fn new(pid: u32) -> SetnsOptions {
        SetnsOptions {
            pid,
            container: None,
            engines: DEFAULT_ENGINES.iter().map(|e| e.to_string()).collect(),
            name: None,
            env: Vec::new(),
            connect_timeout: Duration::from_secs(30),
        }
    }

    /// Options to enter the container called `name` (see `container`).
    pub fn container(name: impl Into<String>) -> SetnsOptions {
        SetnsOptions { container: Some(name.into()), ..SetnsOptions::new(0) }
    }
}

/// The programs [`SetnsOptions::engines`] tries by default, in order.
pub const DEFAULT_ENGINES: &[&str] = &["podman", "docker", "crictl", "lxc", "incus"];

/// How a program of [`SetnsOptions::engines`] is asked for a container's
/// pid: chosen by its file name (`/usr/local/bin/crictl` is [`Crictl`]).
///
/// [`Crictl`]: Resolver::Crictl
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolver {
    /// `ENGINE inspect --format '{{.State.Pid}}' NAME` (docker, podman,
    /// nerdctl and any other name): the pid, `0` when stopped, "no such"
    /// on stderr when unknown (podman 4.3, Docker CLI 20-28).
    Inspect,
    /// `crictl inspect NAME` (a container id or a unique prefix of one;
    /// crictl 1.2x against containerd or CRI-O): JSON whose `.info.pid`
    /// is the pid and `.status.state` `CONTAINER_RUNNING` while it runs;
    /// "NotFound"/"not found" on stderr when unknown.
    Crictl,
    /// `lxc info NAME` / `incus info NAME` (LXD 5.x, Incus 6.x): `Status:
    /// RUNNING` and `PID: N` lines while it runs (no `PID:` line when
    /// stopped), `Error: … not found` when unknown. Not the older
    /// lxc-tools' `lxc-info`.
    LxcInfo,
}

impl Resolver {
    /// The resolver for `program`, by its file name.
    pub fn of(program: &str) -> Resolver {
        match program.rsplit('/').next().unwrap_or(program) {
            "crictl" => Resolver::Crictl,
            "lxc" | "incus" => Resolver::LxcInfo,
            _ => Resolver::Inspect,
        }
    }

    /// The command that asks `program` for container `name`'s pid.
    pub(crate) fn argv<'a>(self, program: &'a str, name: &'a str) -> Vec<&'a str> {
        match self {
            Resolver::Inspect => vec![program, "inspect", "--format", "{{.State.Pid}}", name],
            Resolver::Crictl => vec![program, "inspect", name],
            Resolver::LxcInfo => vec![program, "info", name],
        }
    }

    /// Reads the answer of [`Resolver::argv`].
    pub(crate) fn read(self, code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> Lookup {
        match self {
            Resolver::Inspect => read_inspect(code, stdout, stderr),
            Resolver::Crictl => read_crictl(code, stdout, stderr),
            Resolver::LxcInfo => read_lxc_info(code, stdout, stderr),
        }
    }
}

/// What an engine said of a container name: its pid, or why not.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// Running, with this pid.
    Pid(u32),
    /// The engine knows no such container.
    Unknown,
    /// Known but not running (pid 0).
    Stopped,
    /// The engine could not be asked (missing, permission, daemon down):
    /// what it printed, or why it did not start.
    Failed(String),
}

/// Reads `ENGINE inspect --format '{{.State.Pid}}' NAME`'s result.
pub(crate) fn read_inspect(code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> Lookup {
    let out = String::from_utf8_lossy(stdout);
    let err = String::from_utf8_lossy(stderr);
    match (code, out.trim().parse::<u32>()) {
        (Some(0), Ok(0)) => Lookup::Stopped,
        (Some(0), Ok(pid)) => Lookup::Pid(pid),
        _ if err.to_ascii_lowercase().contains("no such") => Lookup::Unknown,
        _ => Lookup::Failed(crate::core::text::printable(err.trim().as_bytes(), 240)),
    }
}

/// The engine's complaint, kept short and printable for the error.
fn failed(stderr: &str) -> Lookup {
    Lookup::Failed(crate::core::text::printable(stderr.trim().as_bytes(), 240))
}

/// Reads `crictl inspect NAME`'s result: `{"status": {"state":
/// "CONTAINER_RUNNING", …}, "info": {"pid": N, …}}`. An answer that is
/// not that JSON is a failure, never a pid.
pub(crate) fn read_crictl(code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> Lookup {
    let err = String::from_utf8_lossy(stderr);
    if code != Some(0) {
        // crictl 1.26+: `… code = NotFound desc = could not find container
        // "x" …`; older ones: `… NotFound … not found`.
        let lower = err.to_ascii_lowercase();
        return if lower.contains("notfound") || lower.contains("not found") { Lookup::Unknown } else { failed(&err) };
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(stdout) else {
        return failed(&format!("crictl inspect printed no JSON {err}"));
    };
    let state = v.pointer("/status/state").and_then(|s| s.as_str());
    let pid = v.pointer("/info/pid").and_then(|p| p.as_u64());
    match (state, pid) {
        (Some(s), _) if s != "CONTAINER_RUNNING" => Lookup::Stopped,
        (_, Some(0)) => Lookup::Stopped,
        (_, Some(pid)) => u32::try_from(pid).map_or_else(|_| failed("crictl: a pid out of range"), Lookup::Pid),
        (_, None) => failed("crictl inspect: no .info.pid (is --output json the default here?)"),
    }
}

/// Reads `lxc info NAME` / `incus info NAME`: `Status: RUNNING` and `PID:
/// N` among its `Key: value` lines (the first ones, before `Resources:`).
pub(crate) fn read_lxc_info(code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> Lookup {
    let err = String::from_utf8_lossy(stderr);
    if code != Some(0) {
        return if err.to_ascii_lowercase().contains("not found") { Lookup::Unknown } else { failed(&err) };
    }
    let out = String::from_utf8_lossy(stdout);
    // Only top-level lines: indented ones (resources, snapshots) are not
    // the instance's own.
    let field =
        |key: &str| out.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')).map(str::trim));
    match (field("Status"), field("PID")) {
        (Some(s), _) if !s.eq_ignore_ascii_case("running") => Lookup::Stopped,
        (_, Some(p)) => match p.parse::<u32>() {
            Ok(0) => Lookup::Stopped,
            Ok(pid) => Lookup::Pid(pid),
            Err(_) => failed(&format!("info: PID {p:?}")),
        },
        (Some(_), None) => failed("info: running, but no PID line"),
        (None, _) => failed("info: no Status line"),
    }
}

/// Why entering a container or a chroot failed.
#[derive(Debug, thiserror::Error)]
pub enum EnterFailure {
    /// No process has this pid (on the host that enters).
    #[error("no process {0} (setns takes a pid of the container's host)")]
    NoSuchProcess(u32),
    /// No engine knows a container of this name.
    #[error("no container {name:?} ({engines})")]
    NoSuchContainer {
        /// The name.
        name: String,
        /// What each engine said.
        engines: String,
    },
    /// The container exists but is not running.
    #[error("container {0:?} is not running")]
    NotRunning(String),
    /// The process (its pid namespace's init) exited while it was entered.
    #[error("process {0} is gone (the container stopped)")]
    ProcessGone(u32),
    /// Not allowed: the caller is not root where the method runs.
    #[error("{0}")]
    NotRoot(&'static str),
    /// The chroot directory does not exist (or is not a directory).
    #[error("no directory {0}")]
    NoSuchDirectory(String),
    /// The chroot's user is neither in its `/etc/passwd` nor a number.
    #[error("no user {0:?} in the chroot's /etc/passwd")]
    NoSuchUser(String),
    /// Everything was entered, but the agent could not be executed there.
    #[error("the agent could not be executed inside: {0}")]
    ExecFailed(std::io::Error),
    /// Another step failed.
    #[error("{}{source}", step.map(|s| format!("{s}: ")).unwrap_or_default())]
    Failed {
        /// The step (`setns`, `chroot`, `credentials`, …) when known: a
        /// start behind a hop reports only the errno.
        step: Option<&'static str>,
        /// The error.
        source: std::io::Error,
    },
}

/// What was being entered, for [`classify`].
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A process's container.
    Pid(u32),
    /// A chroot directory.
    Root(String),
}

/// Turns the spawn error of an entered start (direct: an [`EnterError`]
/// naming the step; behind a hop: the errno alone) into a typed
/// [`ConnectError::Enter`] (or a `Timeout` of `timeout`); other errors
/// pass unchanged.
pub(crate) fn classify(e: ConnectError, target: &Target, timeout: Duration) -> ConnectError {
    let ConnectError::Spawn { context, source, program } = e else { return e };
    let step = source.get_ref().and_then(|r| r.downcast_ref::<EnterError>()).map(|e| e.0);
    let errno = step.map(|f| f.errno).or(source.raw_os_error());
    let Some(errno) = errno else { return ConnectError::Spawn { context, program, source } };
    let step = step.map(|f| f.step);
    let io = || std::io::Error::from_raw_os_error(errno);
    let failure = match (step, errno, target) {
        (Some(Step::Timeout), ..) => {
            return ConnectError::Timeout { context, phase: "entering", timeout, output: String::new() }
        }
        (Some(Step::Exec), ..) | (None, libc::EACCES | libc::ENOEXEC | libc::ETXTBSY | libc::E2BIG, _) => {
            EnterFailure::ExecFailed(io())
        }
        (_, libc::EPERM, Target::Pid(_)) => {
            EnterFailure::NotRoot("setns needs root (CAP_SYS_ADMIN) on the container's host")
        }
        (_, libc::EPERM, Target::Root(_)) => EnterFailure::NotRoot("chroot needs root (CAP_SYS_CHROOT)"),
        (None | Some(Step::Inspect), libc::ENOENT, Target::Pid(pid)) => EnterFailure::NoSuchProcess(*pid),
        (_, libc::ESRCH, Target::Pid(pid)) => EnterFailure::ProcessGone(*pid),
        (None | Some(Step::Inspect), libc::ENOENT | libc::ENOTDIR, Target::Root(path)) => {
            EnterFailure::NoSuchDirectory(path.clone())
        }
        (step, ..) => EnterFailure::Failed { step: step.map(Step::name), source: io() },
    };
    ConnectError::Enter { context, failure }
}
