//! The `ssh` method: the system OpenSSH client runs stage0 on the target.
//!
//! We only add `-o` options to the user's own ssh, so `~/.ssh/config`,
//! ssh-agent, ProxyJump and ControlMaster keep working. The remote command
//! is `sh -c '<stage0>'`, handed to the target's login shell.
//!
//! Passwords go through `SSH_ASKPASS` with `SSH_ASKPASS_REQUIRE=force`
//! (OpenSSH ≥ 8.4): a tiny script in a private 0700 directory `cat`s a FIFO,
//! and a master thread writes the password into that FIFO once, then
//! removes it. The password is never in an argv, an environment or a file;
//! ssh is told to ask once (`NumberOfPasswordPrompts=1`), so it is sent once.
//!
//! The password is for the target host only. A ProxyJump (or ProxyCommand)
//! ssh is a child of our ssh and inherits `SSH_ASKPASS`; it asks first, so
//! the jump host would be sent the target's password. The script therefore
//! answers only an ssh whose parent is this process (the one we started):
//! any other gets no answer and leaves a mark, and the error says that a
//! jump host asked (authenticate it with a key or agent).
//!
//! Failures are recognised from ssh's stderr (kept terse with
//! `LogLevel=ERROR`, which also hides banners that might say "password")
//! and become [`SshFailure`]s naming the host.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::child::ChildCommand;
use super::error::ConnectError;
use super::stage0::sh_quote;

/// Host key policy (`StrictHostKeyChecking`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Unknown or changed keys fail the connect (`yes`).
    #[default]
    Enforce,
    /// Unknown keys are added, changed keys fail (`accept-new`).
    AcceptNew,
    /// No checking at all (`no`, known_hosts `/dev/null`).
    Ignore,
}

/// Options of [`crate::Router::ssh`].
#[derive(Clone, Default)]
pub struct SshOptions {
    /// Name in logs and errors (default `[user@]host[:port]`).
    pub name: Option<String>,
    /// Host name or alias from ssh_config.
    pub hostname: String,
    /// Port (`-p`); ssh's default (config or 22) when `None`.
    pub port: Option<u16>,
    /// Remote user (`-l`); ssh's default when `None`.
    pub username: Option<String>,
    /// Private key (`-i`, with `IdentitiesOnly=yes`).
    pub identity_file: Option<PathBuf>,
    /// ssh config file (`-F`); the user's `~/.ssh/config` when `None`.
    pub ssh_config: Option<PathBuf>,
    /// Extra `-o` options (`"Key=Value"`).
    pub options: Vec<String>,
    /// Limit for the whole bootstrap; also ssh's `ConnectTimeout`.
    pub connect_timeout: Duration,
    /// ssh compression (`-C`); off by default (it costs CPU on fast links).
    pub compression: bool,
    /// Host key policy.
    pub check_host_keys: HostKeyPolicy,
    /// Password for password/keyboard-interactive authentication.
    pub password: Option<String>,
    /// The ssh program.
    pub ssh_path: Option<PathBuf>,
    /// Connection sharing (OpenSSH multiplexing): with `Some(d)`, `d` not
    /// zero, ssh runs with `ControlMaster=auto`, `ControlPath=<dir>/%C` and
    /// `ControlPersist=d`, so the first connect to a host leaves a master
    /// ssh in the background for `d` after its last session, and later
    /// connects to the same host, user and port (from this or another
    /// process) open a session over it without a new handshake. Left out
    /// when the user's ssh config (`ssh -G`) or `options` already say
    /// anything of ControlMaster or ControlPath (theirs wins), behind a hop
    /// (the directory is checked on this host), or when the directory is
    /// not private (see [`SshOptions::control_dir`]).
    ///
    /// `None` (the library's default): every connect is its own ssh
    /// connection, and nothing outlives the program. A library user's
    /// contexts already hold one connection each for as long as they live,
    /// and a master ssh left running after the program exits is a choice
    /// the program should make; the `mito` CLI, run again and again, makes
    /// it (60 s, as Ansible).
    pub control_persist: Option<Duration>,
    /// The directory of the control sockets; default
    /// `$XDG_RUNTIME_DIR/mito/ssh`, else `~/.cache/mito/ssh`. Created 0700;
    /// used only when it is a real directory (not a symlink) owned by our
    /// effective uid with no group or other permission bits, so no one else
    /// can put a socket there for us to talk to.
    pub control_dir: Option<PathBuf>,
}

impl std::fmt::Debug for SshOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshOptions")
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("identity_file", &self.identity_file)
            .field("options", &self.options)
            .field("check_host_keys", &self.check_host_keys)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("control_persist", &self.control_persist)
            .finish_non_exhaustive()
    }
}

impl SshOptions {
    /// Options for `host` with defaults (30 s timeout, enforce host keys).
    pub fn new(hostname: impl Into<String>) -> SshOptions {
        SshOptions { hostname: hostname.into(), connect_timeout: Duration::from_secs(30), ..SshOptions::default() }
    }

    /// Parses `ssh://[user@]host[:port]` (or `[user@]host[:port]`).
    pub fn from_url(url: &str) -> Result<SshOptions, String> {
        let rest = url.strip_prefix("ssh://").unwrap_or(url);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, rest),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h.split_once(']').ok_or_else(|| format!("bad IPv6 address in {url:?}"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("no host in {url:?}"));
        }
        let port = port.map(|p| p.parse::<u16>().map_err(|_| format!("bad port {p:?} in {url:?}"))).transpose()?;
        Ok(SshOptions { username: user, port, ..SshOptions::new(host) })
    }

    /// `[user@]host[:port]`, for names and errors.
    pub fn display_host(&self) -> String {
        let mut s = String::new();
        if let Some(u) = &self.username {
            s.push_str(u);
            s.push('@');
        }
        s.push_str(&self.hostname);
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s
    }
}

/// Why ssh could not log in, recognised from its output.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SshFailure {
    /// Host key not in known_hosts under `Enforce`.
    #[error("host key verification failed: the host is not in known_hosts (check_host_keys=enforce; add its key, or use accept-new)")]
    HostKeyUnknown,
    /// The host key differs from the recorded one.
    #[error("host key verification failed: the host key has CHANGED since it was recorded (a man-in-the-middle, or a reinstalled host)")]
    HostKeyChanged,
    /// The password was sent and refused.
    #[error("permission denied: wrong password")]
    WrongPassword,
    /// No accepted credentials (keys refused, or a password needed but none given).
    #[error("permission denied ({methods}){hint}")]
    AuthFailed {
        /// The methods the server offered.
        methods: String,
        /// Advice, e.g. that a password may be needed.
        hint: String,
    },
    /// Nothing listens on the port.
    #[error("connection refused")]
    ConnectionRefused,
    /// The host name does not resolve.
    #[error("host name does not resolve")]
    NameNotResolved,
    /// No route to the host.
    #[error("no route to host")]
    NoRoute,
    /// ssh's own connect timeout.
    #[error("connection timed out")]
    ConnectTimedOut,
    /// The remote side has no usable POSIX `sh`.
    #[error("the remote shell could not run the bootstrap (no POSIX sh?)")]
    RemoteShell,
}

/// A private directory with the askpass script and its FIFO; removed on drop.
struct Askpass {
    dir: PathBuf,
    asked: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Askpass {
    fn new(password: String) -> std::io::Result<Askpass> {
        let master = std::process::id();
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("mito-askpass-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let fifo = dir.join("answer");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(std::io::Error::from)?;
        let script = dir.join("askpass");
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o700).open(&script)?;
        // Answer only password prompts; anything else (a passphrase, a
        // yes/no question) gets no answer, so ssh fails instead of guessing.
        // And only to the ssh we started (its parent is this process): a
        // ProxyJump ssh, our ssh's child, gets nothing and leaves `other`.
        // The FIFO is gone after one answer, so a second ask fails at once.
        write!(
            f,
            concat!(
                "#!/bin/sh\n",
                "d=$(dirname \"$0\")\n",
                "case \"$1\" in *[Pp]assword*) ;; *) exit 1;; esac\n",
                "s=$(cat \"/proc/$PPID/stat\" 2>/dev/null)||exit 1\n",
                "set -f;set -- ${{s##*) }}\n",
                "[ \"$2\" = {master} ]||{{ : >\"$d/other\";exit 1;}}\n",
                "exec cat \"$d/answer\"\n"
            ),
            master = master
        )?;
        drop(f);
        let asked = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (a2, d2, fifo2) = (asked.clone(), done.clone(), fifo.clone());
        let thread = std::thread::Builder::new().name("mito-askpass".into()).spawn(move || {
            // Blocks until askpass opens the FIFO (or Drop unblocks it).
            if let Ok(mut w) = fs::OpenOptions::new().write(true).open(&fifo2) {
                if !d2.load(Ordering::SeqCst) {
                    a2.store(true, Ordering::SeqCst);
                    let _ = w.write_all(password.as_bytes());
                    let _ = w.write_all(b"\n");
                }
                // One answer: a later `cat` finds no FIFO and fails at once
                // (instead of waiting for a writer that never comes).
                let _ = fs::remove_file(&fifo2);
            }
        })?;
        Ok(Askpass { dir, asked, done, thread: Some(thread) })
    }

    fn script(&self) -> PathBuf {
        self.dir.join("askpass")
    }

    /// Whether an ssh other than ours (a ProxyJump host's) asked.
    fn other_asked(&self) -> bool {
        self.dir.join("other").exists()
    }
}

impl Drop for Askpass {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        // Opening the read end releases a writer still waiting in open().
        let _ = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(self.dir.join("answer"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Everything needed to start ssh for one connect.
pub struct Prepared {
    /// The command to spawn.
    pub command: ChildCommand,
    askpass: Option<Askpass>,
    host: String,
    context: String,
}

/// Builds the ssh command line for `stage0`.
pub fn prepare(opts: &SshOptions, context: &str, stage0: &str) -> std::io::Result<Prepared> {
    let mut c = ChildCommand::new(opts.ssh_path.clone().map_or_else(|| OsString::from("ssh"), PathBuf::into_os_string));
    if let Some(f) = &opts.ssh_config {
        c.arg("-F").arg(f);
    }
    c.pipes = true;
    c.arg("-T");
    if let Some(p) = opts.port {
        c.arg("-p").arg(p.to_string());
    }
    if let Some(u) = &opts.username {
        c.arg("-l").arg(u);
    }
    if let Some(i) = &opts.identity_file {
        c.arg("-i").arg(i).arg("-o").arg("IdentitiesOnly=yes");
    }
    let secs = opts.connect_timeout.as_secs().max(1);
    for o in [
        "LogLevel=ERROR".to_string(),
        format!("ConnectTimeout={secs}"),
        format!("Compression={}", if opts.compression { "yes" } else { "no" }),
        "ServerAliveInterval=15".into(),
        "ServerAliveCountMax=3".into(),
    ] {
        c.arg("-o").arg(o);
    }
    match opts.check_host_keys {
        HostKeyPolicy::Enforce => {
            c.arg("-o").arg("StrictHostKeyChecking=yes");
        }
        HostKeyPolicy::AcceptNew => {
            c.arg("-o").arg("StrictHostKeyChecking=accept-new");
        }
        HostKeyPolicy::Ignore => {
            c.arg("-o").arg("StrictHostKeyChecking=no").arg("-o").arg("UserKnownHostsFile=/dev/null");
            c.arg("-o").arg("GlobalKnownHostsFile=/dev/null");
        }
    }
    let askpass = match &opts.password {
        Some(pw) => {
            let a = Askpass::new(pw.clone())?;
            c.arg("-o").arg("NumberOfPasswordPrompts=1");
            c.env.push(("SSH_ASKPASS".into(), a.script().into_os_string()));
            c.env.push(("SSH_ASKPASS_REQUIRE".into(), "force".into()));
            Some(a)
        }
        None => {
            // No hidden prompts: without a password ssh must not ask for one.
            c.arg("-o").arg("BatchMode=yes");
            None
        }
    };
    for o in &opts.options {
        c.arg("-o").arg(o);
    }
    for o in multiplex_options(opts) {
        c.arg("-o").arg(o);
    }
    c.arg("--").arg(&opts.hostname).arg(format!("sh -c {}", sh_quote(stage0)));
    Ok(Prepared { command: c, askpass, host: opts.display_host(), context: context.into() })
}

/// The `-o` options that share this connection (none when it is not
/// shared: see [`SshOptions::control_persist`]). A directory that cannot
/// be used is said in a warning, and the connect goes on unshared.
fn multiplex_options(opts: &SshOptions) -> Vec<String> {
    let Some(persist) = opts.control_persist.filter(|d| !d.is_zero()) else { return Vec::new() };
    // ssh takes the first value of an option: ours would beat the user's.
    if opts.options.iter().any(|o| is_control_option(o)) {
        return Vec::new();
    }
    let dir = match control_dir(opts) {
        Ok(d) => d,
        Err(e) => {
            log::warn!("ssh {}: not sharing the connection: {e}", opts.display_host());
            return Vec::new();
        }
    };
    if user_config_shares(opts) {
        log::debug!("ssh {}: the ssh config sets ControlMaster/ControlPath; using it", opts.display_host());
        return Vec::new();
    }
    // %-tokens are ssh's: a `%` of the directory is written `%%`.
    let path = format!("{}/%C", dir.display().to_string().replace('%', "%%"));
    vec![
        "ControlMaster=auto".into(),
        format!("ControlPath={path}"),
        format!("ControlPersist={}s", persist.as_secs().max(1)),
    ]
}

/// `ControlMaster`, `ControlPath` or `ControlPersist` (`-o` spelling, any case).
fn is_control_option(o: &str) -> bool {
    let key = o.split(['=', ' ', '\t']).next().unwrap_or("").to_ascii_lowercase();
    matches!(key.as_str(), "controlmaster" | "controlpath" | "controlpersist")
}

/// The longest directory whose sockets fit a `sun_path` (108 bytes with
/// the NUL): ssh binds `<dir>/<40 hex>.<16 random>` and renames it.
const MAX_CONTROL_DIR: usize = 107 - 1 - 40 - 17;

/// The private directory of the control sockets, created if missing and
/// checked as stage0 checks its cache: a directory, not a symlink, ours,
/// 0700. Anything else is an error: a socket in a directory another user
/// can write may be theirs.
pub fn control_dir(opts: &SshOptions) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = match &opts.control_dir {
        Some(d) => d.clone(),
        None => {
            default_control_dir().ok_or_else(|| std::io::Error::other("neither $XDG_RUNTIME_DIR nor $HOME is set"))?
        }
    };
    let text = dir.to_str().ok_or_else(|| std::io::Error::other(format!("{}: not UTF-8", dir.display())))?;
    // ssh splits an option's value at white space and quotes.
    if text.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') || !dir.is_absolute() {
        return Err(std::io::Error::other(format!("{text}: not an absolute path without spaces or quotes")));
    }
    if text.len() > MAX_CONTROL_DIR {
        return Err(std::io::Error::other(format!(
            "{text}: too long for a socket path (at most {MAX_CONTROL_DIR} bytes)"
        )));
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let m = fs::symlink_metadata(&dir)?;
    let euid = rustix::process::geteuid().as_raw();
    if !m.file_type().is_dir() {
        return Err(std::io::Error::other(format!("{text} is not a directory (a symlink?)")));
    }
    if m.uid() != euid {
        return Err(std::io::Error::other(format!("{text} is owned by uid {}, not by us ({euid})", m.uid())));
    }
    if m.mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!("{text} has mode {:o}, not 0700", m.mode() & 0o7777)));
    }
    Ok(dir)
}

/// `$XDG_RUNTIME_DIR/mito/ssh` (a per-user tmpfs, gone at logout), else
/// `~/.cache/mito/ssh`.
fn default_control_dir() -> Option<PathBuf> {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_absolute() && p.is_dir());
    match runtime {
        Some(r) => Some(r.join("mito/ssh")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mito/ssh")),
    }
}

/// The ssh command for `opts` with only what selects the host's config
/// (`-F`, `-p`, `-l`, the `-o` options): for `-G` and `-O`.
fn ssh_command(opts: &SshOptions) -> std::process::Command {
    let mut c = std::process::Command::new(opts.ssh_path.clone().unwrap_or_else(|| PathBuf::from("ssh")));
    if let Some(f) = &opts.ssh_config {
        c.arg("-F").arg(f);
    }
    if let Some(p) = opts.port {
        c.arg("-p").arg(p.to_string());
    }
    if let Some(u) = &opts.username {
        c.arg("-l").arg(u);
    }
    for o in &opts.options {
        c.arg("-o").arg(o);
    }
    c.stdin(std::process::Stdio::null());
    c
}

/// Whether the user's ssh config already shares connections to this host
/// (`ssh -G` says a ControlMaster other than `false`, or a ControlPath):
/// then theirs is used as they wrote it. If `ssh -G` fails, we do not
/// share either (the connect itself then says what is wrong).
///
/// `ssh -G` costs an exec (~3-6 ms, a third of a shared connect), so it
/// runs only when the config files ssh would read (followed through their
/// `Include`s) say "control" somewhere; text we cannot follow (an include
/// with tokens or variables, an unreadable file) runs it too.
fn user_config_shares(opts: &SshOptions) -> bool {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    // A relative include is in ~/.ssh from a user's file (`-F` too), in
    // /etc/ssh from the system's.
    let user_dir = home.as_ref().map(|h| h.join(".ssh")).unwrap_or_default();
    let (user, system): (Vec<PathBuf>, Vec<PathBuf>) = match &opts.ssh_config {
        Some(f) => (vec![f.clone()], Vec::new()),
        None => (home.iter().map(|h| h.join(".ssh/config")).collect(), vec![PathBuf::from("/etc/ssh/ssh_config")]),
    };
    let may = config_may_share(&user, &user_dir, home.as_deref(), 0)
        || config_may_share(&system, std::path::Path::new("/etc/ssh"), home.as_deref(), 0);
    if !may {
        return false;
    }
    let out = ssh_command(opts).arg("-G").arg("--").arg(&opts.hostname).stderr(std::process::Stdio::null()).output();
    let Ok(out) = out.map_err(|e| log::debug!("ssh -G: {e}")) else { return true };
    if !out.status.success() {
        return true;
    }
    config_shares(&String::from_utf8_lossy(&out.stdout))
}

/// Whether any of `files` (missing ones are empty, as for ssh), or a file
/// they include, mentions "control" (any case), or cannot be followed.
/// `rel` is where a relative include is.
fn config_may_share(files: &[PathBuf], rel: &std::path::Path, home: Option<&std::path::Path>, depth: usize) -> bool {
    if depth > 8 {
        return true;
    }
    for f in files {
        let text = match fs::read(f) {
            Ok(t) => t.to_ascii_lowercase(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return true,
        };
        if text.windows(7).any(|w| w == b"control") {
            return true;
        }
        let text = String::from_utf8_lossy(&text);
        for line in text.lines() {
            let line = line.trim_start();
            let Some(rest) = line.strip_prefix("include").filter(|r| r.starts_with([' ', '\t', '='])) else { continue };
            for pattern in rest.trim_start_matches([' ', '\t', '=']).split_whitespace() {
                match include_files(pattern, rel, home) {
                    Some(inc) if !config_may_share(&inc, rel, home, depth + 1) => {}
                    _ => return true,
                }
            }
        }
    }
    false
}

/// The files an `Include` pattern names: `~/` is the home directory, a
/// relative path is in `rel` (`~/.ssh` or `/etc/ssh`), and `*`/`?` may
/// appear in the last component only. None for anything else (quotes,
/// tokens, variables, wildcards elsewhere).
fn include_files(pattern: &str, rel: &std::path::Path, home: Option<&std::path::Path>) -> Option<Vec<PathBuf>> {
    if pattern.contains(['%', '$', '"', '\'']) {
        return None;
    }
    let path = match pattern.strip_prefix("~/") {
        Some(rest) => home?.join(rest),
        None if pattern.starts_with('/') => PathBuf::from(pattern),
        None => rel.join(pattern),
    };
    let name = path.file_name()?.to_str()?.to_string();
    let dir = path.parent()?;
    if dir.to_str()?.contains(['*', '?']) {
        return None;
    }
    if !name.contains(['*', '?']) {
        return Some(vec![path]);
    }
    let mut out: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(d) => d
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| glob_match(name.as_bytes(), n.as_bytes())))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(_) => return None,
    };
    out.sort();
    Some(out)
}

/// `*` and `?` wildcards, as ssh's glob of an include's last component.
fn glob_match(p: &[u8], n: &[u8]) -> bool {
    match (p.first(), n.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_match(&p[1..], n) || (!n.is_empty() && glob_match(p, &n[1..])),
        (Some(b'?'), Some(_)) => glob_match(&p[1..], &n[1..]),
        (Some(a), Some(b)) if a == b => glob_match(&p[1..], &n[1..]),
        _ => false,
    }
}

/// Reads `ssh -G` output: a ControlMaster other than `false`, or a
/// ControlPath other than `none`.
fn config_shares(g: &str) -> bool {
    g.lines().any(|l| match l.split_once(' ') {
        Some(("controlmaster", v)) => v.trim() != "false",
        Some(("controlpath", v)) => v.trim() != "none",
        _ => false,
    })
}

/// What `ssh -O` asks a master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasterOp {
    /// Is a master running (`-O check`)?
    Check,
    /// End it now, its sessions too (`-O exit`).
    Exit,
}

/// Asks the master ssh that connects with `opts` would share (ours, in
/// [`control_dir`]; the user's own when their config shares) to `op`.
/// `Ok(true)` when a master answered, `Ok(false)` when there is none.
/// Bounded: `ssh -O` talks only to the local socket, and is killed
/// after 5 s if a process holding it never answers.
pub fn master_control(opts: &SshOptions, op: MasterOp) -> std::io::Result<bool> {
    let mut c = ssh_command(opts);
    if !user_config_shares(opts) && !opts.options.iter().any(|o| is_control_option(o)) {
        let dir = control_dir(opts)?;
        let path = format!("{}/%C", dir.display().to_string().replace('%', "%%"));
        c.arg("-o").arg(format!("ControlPath={path}"));
    }
    c.arg("-O").arg(match op {
        MasterOp::Check => "check",
        MasterOp::Exit => "exit",
    });
    c.arg("--").arg(&opts.hostname);
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = c.spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st.success());
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "ssh -O: the control socket did not answer"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl super::bootstrap::Hooks for Prepared {
    /// Maps ssh's stderr to a typed error.
    fn classify(&self, stderr: &[u8]) -> Option<ConnectError> {
        let context = &self.context;
        let text = String::from_utf8_lossy(stderr);
        let asked = self.askpass.as_ref().map(|a| a.asked.load(Ordering::SeqCst));
        let other = self.askpass.as_ref().is_some_and(Askpass::other_asked);
        // With ControlPersist (mito's default connection sharing) ssh sends
        // a ProxyJump ssh's stderr to /dev/null, so its "Permission denied"
        // never shows: the askpass marker alone says a jump host asked.
        let mut failure = match classify_text(&text, asked) {
            Some(f) => f,
            None if other => SshFailure::AuthFailed { methods: "password".into(), hint: String::new() },
            None => return None,
        };
        if let (SshFailure::AuthFailed { hint, .. }, true) = (&mut failure, other) {
            *hint = ": a ProxyJump/ProxyCommand host asked for a password, and the password is only for the \
                     target host (give the jump host a key or an agent)"
                .into();
        }
        Some(ConnectError::Ssh {
            context: context.into(),
            host: self.host.clone(),
            failure,
            output: super::error::format_output(stderr, b""),
        })
    }
}

/// `asked`: `None` without a password; else whether ssh asked for it.
fn classify_text(text: &str, asked: Option<bool>) -> Option<SshFailure> {
    let lower = text.to_lowercase();
    if lower.contains("remote host identification has changed")
        || lower.contains("host key for") && lower.contains("has changed")
    {
        return Some(SshFailure::HostKeyChanged);
    }
    if lower.contains("host key verification failed") {
        return Some(SshFailure::HostKeyUnknown);
    }
    // Line-anchored: a login script may print "Permission denied" too (mitogen #271).
    let denied = text.lines().find_map(|l| {
        let l = l.trim_start();
        let l = l.split_once(": ").filter(|(who, _)| who.contains('@') && !who.contains(' ')).map_or(l, |(_, r)| r);
        l.strip_prefix("Permission denied")
    });
    if let Some(rest) = denied {
        let methods = rest.trim().trim_start_matches('(').split(')').next().unwrap_or("").to_string();
        return Some(match asked {
            Some(true) => SshFailure::WrongPassword,
            Some(false) => SshFailure::AuthFailed { methods, hint: ": the server did not ask for the password".into() },
            None if methods.contains("password") || methods.contains("keyboard-interactive") => {
                SshFailure::AuthFailed { methods, hint: ": keys were refused; a password may be needed".into() }
            }
            None => SshFailure::AuthFailed { methods, hint: String::new() },
        });
    }
    if lower.contains("connection refused") {
        return Some(SshFailure::ConnectionRefused);
    }
    if lower.contains("could not resolve hostname") || lower.contains("name or service not known") {
        return Some(SshFailure::NameNotResolved);
    }
    if lower.contains("no route to host") || lower.contains("network is unreachable") {
        return Some(SshFailure::NoRoute);
    }
    if lower.contains("connection timed out") || lower.contains("operation timed out") {
        return Some(SshFailure::ConnectTimedOut);
    }
    if lower.contains("sh: not found") || lower.contains("sh: command not found") || lower.contains("sh: no such file")
    {
        return Some(SshFailure::RemoteShell);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = SshOptions::from_url("ssh://bob@example.org:2222").expect("parse");
        assert_eq!((o.username.as_deref(), o.hostname.as_str(), o.port), (Some("bob"), "example.org", Some(2222)));
        let o = SshOptions::from_url("ssh://[::1]:22").expect("parse");
        assert_eq!((o.hostname.as_str(), o.port), ("::1", Some(22)));
        let o = SshOptions::from_url("host").expect("parse");
        assert_eq!((o.username, o.port), (None, None));
        assert!(SshOptions::from_url("ssh://h:notaport").is_err());
        assert!(SshOptions::from_url("ssh://").is_err());
    }

    #[test]
    fn control_options() {
        assert!(is_control_option("ControlMaster=no"));
        assert!(is_control_option("controlpath /x"));
        assert!(!is_control_option("ControlPathology=1"));
        assert!(!config_shares("user bob\ncontrolmaster false\ncontrolpersist no\n"));
        assert!(config_shares("controlmaster auto\ncontrolpath ~/.ssh/cm-%C\n"));
        assert!(config_shares("controlmaster false\ncontrolpath /s\n"));
        let mut o = SshOptions::new("h");
        assert!(multiplex_options(&o).is_empty(), "off by default in the library");
        o.control_persist = Some(Duration::ZERO);
        assert!(multiplex_options(&o).is_empty(), "0 is off");
        o.control_persist = Some(Duration::from_secs(60));
        o.options = vec!["ControlMaster=no".into()];
        assert!(multiplex_options(&o).is_empty(), "the user's -o wins");
    }

    #[test]
    fn config_files_that_may_share() {
        let base = std::env::temp_dir().join(format!("mito-cfg-{}", std::process::id()));
        fs::create_dir_all(base.join("conf.d")).expect("mkdir");
        let main = base.join("config");
        fs::write(&main, "Include conf.d/*.conf\nHost x\n  User bob\n").expect("write");
        fs::write(base.join("conf.d/a.conf"), "Host *\n  ServerAliveInterval 5\n").expect("write");
        assert!(!config_may_share(std::slice::from_ref(&main), &base, None, 0), "nothing says control");
        fs::write(base.join("conf.d/b.conf"), "Host *\n  controlpath ~/.ssh/cm-%C\n").expect("write");
        assert!(config_may_share(std::slice::from_ref(&main), &base, None, 0), "an included file does");
        fs::write(base.join("conf.d/b.conf"), "Host *\n  Include ${HOME}/x\n").expect("write");
        assert!(config_may_share(std::slice::from_ref(&main), &base, None, 0), "a variable: cannot follow, ask ssh");
        assert!(!config_may_share(&[base.join("missing")], &base, None, 0), "a missing file is empty");
        assert!(glob_match(b"*.conf", b"a.conf") && !glob_match(b"*.conf", b"a.conf~") && glob_match(b"a?c", b"abc"));
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn control_dir_must_be_private() {
        let base = std::env::temp_dir().join(format!("mito-cd-{}", std::process::id()));
        let mut o = SshOptions::new("h");
        o.control_dir = Some(base.join("ssh"));
        assert_eq!(control_dir(&o).expect("created"), base.join("ssh"));
        fs::set_permissions(base.join("ssh"), fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(control_dir(&o).is_err(), "group/other bits refused");
        fs::remove_dir(base.join("ssh")).expect("rm");
        std::os::unix::fs::symlink("/tmp", base.join("ssh")).expect("symlink");
        assert!(control_dir(&o).is_err(), "a symlink refused");
        o.control_dir = Some(PathBuf::from("/tmp/a b"));
        assert!(control_dir(&o).is_err(), "spaces refused");
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn classification() {
        let c = |t: &str, a| classify_text(t, a);
        assert_eq!(c("Host key verification failed.\r\n", None), Some(SshFailure::HostKeyUnknown));
        assert_eq!(
            c(
                "@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\nHost key verification failed.",
                None
            ),
            Some(SshFailure::HostKeyChanged)
        );
        assert_eq!(
            c("bob@127.0.0.1: Permission denied (publickey,password).", Some(true)),
            Some(SshFailure::WrongPassword)
        );
        assert!(matches!(c("Permission denied (publickey).", None), Some(SshFailure::AuthFailed { .. })));
        assert_eq!(c("motd: Permission denied is a fine band\n", None), None);
        assert_eq!(
            c("ssh: connect to host 127.0.0.1 port 1: Connection refused", None),
            Some(SshFailure::ConnectionRefused)
        );
        assert_eq!(
            c("ssh: Could not resolve hostname nope: Name or service not known", None),
            Some(SshFailure::NameNotResolved)
        );
    }
}
