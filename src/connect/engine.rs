//! The container engines' CLIs as methods: `docker`, `podman`, `nerdctl`,
//! `kubectl`, `lxc` and `incus`. Unlike [`super::setns`] they need no root
//! on the container's host, only what the tool needs (its socket, a
//! kubeconfig), and they work with remote engines.
//!
//! Two ways in, tried in this order (`-v` says which one was taken):
//!
//! 1. **Shell:** `<tool> exec -i … NAME sh -c '<stage0>'`: stage0 runs
//!    inside as everywhere else (cache, upload through the tool's stdin,
//!    memfd).
//! 2. **No shell** in the image (the runtime reports that `sh` is not
//!    there, and nothing reached stdout): the agent is copied in (`<tool> cp
//!    FILE NAME:/tmp/mito-agent-<hash>.<pid>.<id>`, `lxc file push`) and
//!    executed directly (`<tool> exec -i NAME /tmp/mito-agent-… HASH ID`),
//!    the bootstrap waiting only for its marker and hello
//!    ([`super::bootstrap::Hooks::stage0`] false); once it runs the master
//!    removes the file (the running agent needs no name), so nothing is
//!    left in the container. There is no program
//!    inside to read the agent from stdin into a memfd, so a copy is the
//!    only way; an engine without one (kubectl: its `cp` needs `tar`
//!    inside) is a typed [`EngineFailure::NoShell`].
//!
//! The argument forms per tool are the table in [`Engine::spec`]; what each
//! tool prints for a missing or stopped container, a refused socket or a
//! missing shell is [`MESSAGES`], with the versions whose wording it
//! follows. The tool's output is the target's, so untrusted: it is only
//! matched (case-insensitively, in the stderr tail of a failed bootstrap)
//! and shown escaped and cut (`error::format_output`); no prompt is ever
//! answered, and every wait is within the connect timeout.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::bootstrap::Hooks;
use super::child::ChildCommand;
use super::error::{format_output, ConnectError};

/// A container engine's command-line tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// `docker` (Docker CLI 28.2).
    Docker,
    /// `podman` (4.3, Debian bookworm).
    Podman,
    /// `nerdctl` (containerd; docker's forms, 1.7 / 2.0).
    Nerdctl,
    /// `kubectl` (1.32): a pod's container.
    Kubectl,
    /// `lxc` (LXD 5).
    Lxc,
    /// `incus` (6.0; LXD's forms).
    Incus,
}

/// How a tool runs a command inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExecForm {
    /// `T exec -i [-u USER] NAME CMD…` (docker, podman, nerdctl).
    Oci,
    /// `kubectl [--context C] exec -i [-n NS] POD [-c CONTAINER] -- CMD…`.
    Kubectl,
    /// `T exec -T [--user UID] NAME -- CMD…` (lxc, incus).
    Lxc,
}

/// How a tool copies a file in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyForm {
    /// `T cp SRC NAME:DST` (docker, podman, nerdctl: the source's mode is kept).
    Cp,
    /// `T file push --mode 0755 SRC NAME/DST` (lxc, incus).
    FilePush,
    /// None that works without a program inside (`kubectl cp` runs `tar`
    /// in the container).
    None,
}

/// One engine's row of the table.
#[derive(Clone, Copy, Debug)]
struct Spec {
    tool: &'static str,
    exec: ExecForm,
    copy: CopyForm,
}

impl Engine {
    /// The engine of a target's method name (`docker`, `podman`, …).
    pub fn from_name(name: &str) -> Option<Engine> {
        Some(match name {
            "docker" => Engine::Docker,
            "podman" => Engine::Podman,
            "nerdctl" => Engine::Nerdctl,
            "kubectl" => Engine::Kubectl,
            "lxc" => Engine::Lxc,
            "incus" => Engine::Incus,
            _ => return None,
        })
    }

    /// The method's name, which is also the tool's default program.
    pub fn name(self) -> &'static str {
        self.spec().tool
    }

    /// The argument forms (the table the module documentation refers to).
    fn spec(self) -> Spec {
        use CopyForm as C;
        use ExecForm as E;
        let (tool, exec, copy) = match self {
            Engine::Docker => ("docker", E::Oci, C::Cp),
            Engine::Podman => ("podman", E::Oci, C::Cp),
            Engine::Nerdctl => ("nerdctl", E::Oci, C::Cp),
            Engine::Kubectl => ("kubectl", E::Kubectl, C::None),
            Engine::Lxc => ("lxc", E::Lxc, C::FilePush),
            Engine::Incus => ("incus", E::Lxc, C::FilePush),
        };
        Spec { tool, exec, copy }
    }

    /// Whether the agent can be copied into an image without a shell.
    pub fn can_copy(self) -> bool {
        self.spec().copy != CopyForm::None
    }
}

/// Options of [`crate::Router::engine`].
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Which tool.
    pub engine: Engine,
    /// The container's name or id (kubectl: the pod).
    pub container: String,
    /// kubectl: the namespace (`-n`); default the kubeconfig's.
    pub namespace: Option<String>,
    /// kubectl: the container in the pod (`-c`); default the pod's first.
    pub pod_container: Option<String>,
    /// kubectl: the kubeconfig context (`--context`).
    pub kube_context: Option<String>,
    /// The user inside (`-u` for docker, podman and nerdctl; a uid for
    /// lxc and incus `--user`); default the container's. kubectl has no
    /// such option (an error).
    pub user: Option<String>,
    /// The tool's program (default its name, looked up in `PATH` where
    /// the method runs).
    pub tool_path: Option<PathBuf>,
    /// Extra arguments before the subcommand: the tool's global options
    /// (`-H tcp://…`, `--context`, `--url`, `--kubeconfig`, `--project`).
    pub extra_args: Vec<String>,
    /// Where the agent is copied inside an image without a shell.
    pub copy_dir: String,
    /// Name in logs and errors (default `<engine>:<container>`).
    pub name: Option<String>,
    /// Limit for the whole connect: the shell attempt, the copy and the
    /// direct start together.
    pub connect_timeout: Duration,
}

impl EngineOptions {
    /// Options for container `container` of `engine`, with defaults.
    pub fn new(engine: Engine, container: impl Into<String>) -> EngineOptions {
        EngineOptions {
            engine,
            container: container.into(),
            namespace: None,
            pod_container: None,
            kube_context: None,
            user: None,
            tool_path: None,
            extra_args: Vec::new(),
            copy_dir: "/tmp".into(),
            name: None,
            connect_timeout: Duration::from_secs(30),
        }
    }

    /// kubectl's `[NAMESPACE/]POD[/CONTAINER]` (an empty namespace, as in
    /// `/pod/container`, is the kubeconfig's); None when malformed.
    pub fn kubectl(spec: &str) -> Option<EngineOptions> {
        let parts: Vec<&str> = spec.split('/').collect();
        let (ns, pod, ct) = match parts[..] {
            [pod] => (None, pod, None),
            [ns, pod] => (Some(ns), pod, None),
            [ns, pod, ct] if !ct.is_empty() => (Some(ns), pod, Some(ct)),
            _ => return None,
        };
        if pod.is_empty() || ns == Some("") && parts.len() == 2 {
            return None;
        }
        let mut o = EngineOptions::new(Engine::Kubectl, pod);
        o.namespace = ns.filter(|n| !n.is_empty()).map(str::to_string);
        o.pod_container = ct.map(str::to_string);
        Some(o)
    }

    /// The default context name: `podman:web`, `kubectl:ns/pod/ct`.
    pub fn display(&self) -> String {
        format!("{}:{}", self.engine.name(), self.label())
    }

    /// The container as the target names it: `web`, `ns/pod/ct`.
    pub fn label(&self) -> String {
        let mut s = String::new();
        if let Some(ns) = &self.namespace {
            s.push_str(ns);
            s.push('/');
        }
        s.push_str(&self.container);
        if let Some(c) = &self.pod_container {
            s.push('/');
            s.push_str(c);
        }
        s
    }

    fn program(&self) -> OsString {
        self.tool_path.clone().map_or_else(|| OsString::from(self.engine.name()), PathBuf::into_os_string)
    }

    /// The tool with its global options, ready for the subcommand.
    fn base(&self) -> ChildCommand {
        let mut c = ChildCommand::new(self.program());
        // Two pipes, as for ssh: the tools relay stdin and stdout
        // themselves, and small messages cross pipes a little faster.
        c.pipes = true;
        if let (Engine::Kubectl, Some(k)) = (self.engine, &self.kube_context) {
            c.arg("--context").arg(k);
        }
        for a in &self.extra_args {
            c.arg(a);
        }
        c
    }

    /// `<tool> exec … NAME <argv>` (see [`ExecForm`]).
    fn exec(&self, argv: &[&str]) -> ChildCommand {
        let mut c = self.base();
        c.arg("exec");
        match self.engine.spec().exec {
            ExecForm::Oci => {
                c.arg("-i");
                if let Some(u) = &self.user {
                    c.arg("-u").arg(u);
                }
                c.arg(&self.container);
            }
            ExecForm::Kubectl => {
                c.arg("-i");
                if let Some(ns) = &self.namespace {
                    c.arg("-n").arg(ns);
                }
                c.arg(&self.container);
                if let Some(ct) = &self.pod_container {
                    c.arg("-c").arg(ct);
                }
                c.arg("--");
            }
            ExecForm::Lxc => {
                // No pseudo-terminal: the stream is binary.
                c.arg("-T");
                if let Some(u) = &self.user {
                    c.arg("--user").arg(u);
                }
                c.arg(&self.container).arg("--");
            }
        }
        for a in argv {
            c.arg(a);
        }
        c
    }

    /// The shell path's command: `… sh -c '<stage0>'`.
    pub fn shell_command(&self, stage0: &str) -> ChildCommand {
        self.exec(&["sh", "-c", stage0])
    }

    /// The copied agent's path inside for context `id`:
    /// `/tmp/mito-agent-<hash>.<master pid>.<id>`, a new file per connect
    /// (a copy over a running agent fails with "text file busy", and two
    /// masters may copy at once); the master removes it once the agent
    /// runs.
    pub fn agent_path(&self, hash: &str, id: u32) -> String {
        format!("{}/mito-agent-{hash}.{}.{id}", self.copy_dir.trim_end_matches('/'), std::process::id())
    }

    /// The direct path's command: `… /tmp/mito-agent-<hash>… HASH ID`, as
    /// stage0 would start it.
    pub fn direct_command(&self, hash: &str, id: u32) -> ChildCommand {
        self.exec(&[&self.agent_path(hash, id), hash, &id.to_string()])
    }

    /// The copy's argv (program first), None where the tool has no copy.
    pub fn copy_argv(&self, source: &str, hash: &str, id: u32) -> Option<Vec<OsString>> {
        let c = self.base();
        let mut argv: Vec<OsString> = vec![c.program];
        argv.extend(c.args);
        let dest = self.agent_path(hash, id);
        match self.engine.spec().copy {
            CopyForm::Cp => {
                argv.extend(["cp".into(), source.into(), format!("{}:{dest}", self.container).into()]);
            }
            CopyForm::FilePush => {
                let to = format!("{}{dest}", self.container);
                argv.extend(["file".into(), "push".into(), "--mode".into(), "0755".into(), source.into(), to.into()]);
            }
            CopyForm::None => return None,
        }
        Some(argv)
    }
}

/// Why an engine method failed (each names its container in the error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineFailure {
    /// The engine knows no such container (or pod, or container in it).
    #[error("no such container")]
    NotFound,
    /// It exists but is not running (stopped, exited, paused).
    #[error("the container is not running")]
    NotRunning,
    /// The tool is not installed where the method runs.
    #[error("the tool is not installed (not found in PATH)")]
    ToolMissing,
    /// The engine refused this user (its socket, its API): not root, not
    /// in the `docker` group, RBAC.
    #[error("permission denied by the engine (its socket or API): run as a user it accepts")]
    PermissionDenied,
    /// The engine did not answer (daemon not running, no server).
    #[error("the engine is not reachable (is its daemon running?)")]
    Unreachable,
    /// The image has no `sh`, and the tool cannot copy the agent in.
    #[error("the image has no shell (sh), and this tool cannot copy the agent in")]
    NoShell,
    /// The image has no `sh`, and copying the agent in failed.
    #[error("the image has no shell (sh), and copying the agent in failed")]
    CopyFailed,
}

/// What the tools print, lower case, and what it means; the first match
/// wins. Wording followed (checked against the real tool where it runs
/// here: podman 4.3.1 with runc 1.1.5, and Docker CLI 28.2.2 without a
/// daemon; the others from their sources and documentation):
/// - no shell: runc (podman, docker, nerdctl, kubectl through containerd)
///   `exec: "sh": executable file not found in $PATH`; crun ``executable
///   file `sh` not found``; LXD/incus `Error: Command not found`.
/// - not running: podman 4 `can only create exec sessions on running
///   containers`; docker 24–28 and nerdctl `container <id> is not
///   running` / `is paused`; kubectl `cannot exec into a container in a
///   completed pod`; LXD/incus `Instance is not running`.
/// - not found: docker and nerdctl `No such container: NAME`; podman 4
///   `no container with name or ID "NAME" found` (exec) and `container
///   "NAME" does not exist` (cp); kubectl `Error from server (NotFound):
///   pods "NAME" not found` and `container not found ("C")`; LXD/incus
///   `Instance not found` (LXD 5.0 `Not Found`).
/// - permission: docker `permission denied while trying to connect to the
///   Docker daemon socket`; LXD/incus `connect: permission denied`;
///   kubectl `Error from server (Forbidden)`.
/// - unreachable: docker `Cannot connect to the Docker daemon`; kubectl
///   `The connection to the server … was refused`, `Unable to connect to
///   the server`; podman remote `Cannot connect to Podman`.
pub const MESSAGES: &[(&[&str], EngineFailure)] = &[
    (&["executable file not found", "\"sh\""], EngineFailure::NoShell),
    (&["executable file `sh` not found"], EngineFailure::NoShell),
    (&["error: command not found"], EngineFailure::NoShell),
    (&["can only create exec sessions on running containers"], EngineFailure::NotRunning),
    (&["is not running"], EngineFailure::NotRunning),
    (&["is paused"], EngineFailure::NotRunning),
    (&["cannot exec into a container in a completed pod"], EngineFailure::NotRunning),
    (&["no such container"], EngineFailure::NotFound),
    (&["no container with name or id"], EngineFailure::NotFound),
    (&["container \"", "\" does not exist"], EngineFailure::NotFound),
    (&["(notfound)"], EngineFailure::NotFound),
    (&["container not found"], EngineFailure::NotFound),
    (&["instance not found"], EngineFailure::NotFound),
    (&["error: not found"], EngineFailure::NotFound),
    (&["permission denied while trying to connect"], EngineFailure::PermissionDenied),
    (&["connect: permission denied"], EngineFailure::PermissionDenied),
    (&["(forbidden)"], EngineFailure::PermissionDenied),
    (&["cannot connect to the docker daemon"], EngineFailure::Unreachable),
    (&["cannot connect to podman"], EngineFailure::Unreachable),
    (&["the connection to the server"], EngineFailure::Unreachable),
    (&["unable to connect to the server"], EngineFailure::Unreachable),
];

/// What the tool's output means, if it is one of [`MESSAGES`]. Only the
/// last 8 KiB are looked at (the bootstrap keeps no more).
pub fn classify_output(output: &[u8]) -> Option<EngineFailure> {
    let text = String::from_utf8_lossy(output).to_lowercase();
    MESSAGES.iter().find(|(all, _)| all.iter().all(|p| text.contains(p))).map(|(_, f)| *f)
}

/// The typed error for `failure`, naming the context, tool and container,
/// with the tool's output escaped.
pub fn error(opts: &EngineOptions, context: &str, failure: EngineFailure, output: &[u8]) -> ConnectError {
    ConnectError::Engine {
        context: context.into(),
        tool: opts.engine.name(),
        container: opts.label(),
        failure,
        output: format_output(output, b""),
    }
}

/// The bootstrap's hooks for an engine's commands: no prompt is ever
/// answered (the default [`Hooks::on_stderr`]), and the stderr of a failed
/// bootstrap is classified.
///
/// Not only before stdout spoke: [`Hooks::target_spoke`] also comes when
/// stdout merely closed, which behind a hop may be seen before the tool's
/// stderr, and the tool's words are only ever a typed error (or, for a
/// missing shell, the copy and the direct start) anyway; stage0 writes
/// none of them to stderr.
pub struct EngineHooks<'a> {
    /// The options (for the error's names).
    pub opts: &'a EngineOptions,
    /// The context's name.
    pub context: &'a str,
    /// The agent is started directly (no stage0).
    pub direct: bool,
}

impl<'a> EngineHooks<'a> {
    /// Hooks for the shell path (`direct` false) or the direct one.
    pub fn new(opts: &'a EngineOptions, context: &'a str, direct: bool) -> Self {
        EngineHooks { opts, context, direct }
    }
}

impl Hooks for EngineHooks<'_> {
    fn classify(&self, stderr: &[u8]) -> Option<ConnectError> {
        match classify_output(stderr)? {
            // A direct start has no sh to miss: the same words would be
            // about something else.
            EngineFailure::NoShell if self.direct => None,
            f => Some(error(self.opts, self.context, f, stderr)),
        }
    }

    fn stage0(&self) -> bool {
        !self.direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(c: &ChildCommand) -> Vec<String> {
        std::iter::once(&c.program).chain(&c.args).map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn argument_forms_per_tool() {
        let mut o = EngineOptions::new(Engine::Podman, "web");
        o.user = Some("app".into());
        assert_eq!(argv(&o.shell_command("S")), ["podman", "exec", "-i", "-u", "app", "web", "sh", "-c", "S"]);
        let path = format!("/tmp/mito-agent-ab.{}.3", std::process::id());
        assert_eq!(argv(&o.direct_command("ab", 3)), ["podman", "exec", "-i", "-u", "app", "web", &path, "ab", "3"]);
        let cp: Vec<String> =
            o.copy_argv("/x", "ab", 3).unwrap_or_default().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(cp, ["podman", "cp", "/x", &format!("web:{path}")]);
        let mut k = EngineOptions::kubectl("prod/api-0/app").unwrap_or_else(|| EngineOptions::new(Engine::Docker, ""));
        k.kube_context = Some("east".into());
        assert_eq!(
            argv(&k.shell_command("S")),
            ["kubectl", "--context", "east", "exec", "-i", "-n", "prod", "api-0", "-c", "app", "--", "sh", "-c", "S"]
        );
        assert_eq!(k.display(), "kubectl:prod/api-0/app");
        assert!(k.copy_argv("/x", "ab", 1).is_none());
        let mut l = EngineOptions::new(Engine::Incus, "c1");
        l.extra_args = vec!["--project".into(), "p".into()];
        assert_eq!(argv(&l.shell_command("S")), ["incus", "--project", "p", "exec", "-T", "c1", "--", "sh", "-c", "S"]);
        assert!(EngineOptions::kubectl("a/b/c/d").is_none() && EngineOptions::kubectl("").is_none());
        assert!(EngineOptions::kubectl("/pod").is_none());
        assert_eq!(EngineOptions::kubectl("/pod/c").map(|o| o.namespace), Some(None));
    }

    #[test]
    fn the_tools_words_are_typed() {
        let c = |s: &str| classify_output(s.as_bytes());
        assert_eq!(
            c("Error: runc: exec failed: unable to start container process: exec: \"sh\": executable file not found in $PATH: OCI runtime attempted to invoke a command that was not found"),
            Some(EngineFailure::NoShell)
        );
        assert_eq!(
            c("Error: no container with name or ID \"x\" found: no such container"),
            Some(EngineFailure::NotFound)
        );
        assert_eq!(
            c("Error: can only create exec sessions on running containers: container state improper"),
            Some(EngineFailure::NotRunning)
        );
        assert_eq!(c("Error response from daemon: No such container: web"), Some(EngineFailure::NotFound));
        assert_eq!(
            c("permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: Get \"http://%2Fvar%2Frun%2Fdocker.sock/v1.50/containers/web/json\": dial unix /var/run/docker.sock: connect: permission denied"),
            Some(EngineFailure::PermissionDenied)
        );
        assert_eq!(
            c("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"),
            Some(EngineFailure::Unreachable)
        );
        assert_eq!(c("Error from server (NotFound): pods \"api-0\" not found"), Some(EngineFailure::NotFound));
        assert_eq!(c("exec: \"/tmp/x\": stat /tmp/x: no such file or directory"), None);
    }
}
