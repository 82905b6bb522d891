//! Targets: where a command runs. One hop is `local`, `ssh://[user@]host[:port]`,
//! `sudo:USER`, `su:USER` or `doas:USER`; a chain is hops joined by commas
//! (`ssh://web1,sudo:root`), each connected through the one before it.
//! [`Targets`] connects each distinct prefix once, so
//! `ssh://web1,sudo:a` and `ssh://web1,sudo:b` share one ssh connection.
//!
//! Passwords ([`Secrets`]): read from the environment at start (and those
//! variables removed, so no child inherits them), from files and the
//! terminal when a hop first needs one. A become password belongs to the
//! hops it names (`--become-pass-env sudo:root=VAR`); one given without a
//! hop is for the first become hop of each target only, so a chain such as
//! `sudo:alice,sudo:root` never types one hop's password into another's
//! prompt.

use std::io::Write;
use std::time::Duration;

use mito::{Connector, Context, DoasOptions, HostKeyPolicy, LocalOptions, Router, SshOptions, SuOptions, SudoOptions};

use super::{Cli, HostKeys};

/// The contexts made so far, by target prefix, and passwords read once.
pub struct Targets<'a> {
    router: &'a Router,
    cli: &'a Cli,
    made: Vec<(String, Context)>,
    secrets: Secrets,
    ssh_password: Option<Option<String>>,
}

impl<'a> Targets<'a> {
    /// No connections yet.
    pub fn new(router: &'a Router, cli: &'a Cli, secrets: Secrets) -> Self {
        Targets { router, cli, made: Vec::new(), secrets, ssh_password: None }
    }

    /// The context for `target`, connecting the hops not connected yet.
    pub fn connect(&mut self, target: &str) -> Result<Context, String> {
        let mut prev: Option<Context> = None;
        let mut prefix = String::new();
        let mut becomes = 0;
        for (i, hop) in target.split(',').enumerate() {
            if i > 0 {
                prefix.push(',');
            }
            prefix.push_str(hop);
            let become_index = is_become(hop).then(|| {
                becomes += 1;
                becomes - 1
            });
            if let Some((_, c)) = self.made.iter().find(|(p, _)| *p == prefix) {
                prev = Some(c.clone());
                continue;
            }
            let from = prev.as_ref().map_or_else(|| self.router.connector(), Context::connector);
            let become_pass = match become_index {
                Some(k) => self.secrets.become_password(&prefix, k)?,
                None => None,
            };
            let c = self.connect_hop(from, hop, become_pass)?;
            self.made.push((prefix.clone(), c.clone()));
            prev = Some(c);
        }
        prev.ok_or_else(|| format!("empty target {target:?}"))
    }

    /// Shuts every context down, deepest first.
    pub fn shutdown(self) {
        for (_, c) in self.made.iter().rev() {
            let _ = c.shutdown();
        }
    }

    fn connect_hop(&mut self, from: Connector<'_>, hop: &str, become_pass: Option<String>) -> Result<Context, String> {
        let cli = self.cli;
        let timeout = Duration::from_secs_f64(cli.connect_timeout.max(0.001));
        if hop.starts_with("ssh://") {
            let mut o = SshOptions::from_url(hop)?;
            o.connect_timeout = timeout;
            o.identity_file = cli.identity.clone();
            o.ssh_config = cli.ssh_config.clone();
            o.options = cli.ssh_options.clone();
            if self.ssh_password.is_none() {
                let pw = match self.secrets.ssh_env.take() {
                    Some(from_env) => from_env.map(Some)?,
                    None => read_secret(&cli.password_file, cli.ask_password, "ssh password")?,
                };
                self.ssh_password = Some(pw);
            }
            o.password = self.ssh_password.clone().flatten();
            o.check_host_keys = match cli.check_host_keys {
                HostKeys::Enforce => HostKeyPolicy::Enforce,
                HostKeys::AcceptNew => HostKeyPolicy::AcceptNew,
                HostKeys::Ignore => HostKeyPolicy::Ignore,
            };
            return from.ssh(o).map_err(|e| e.to_string());
        }
        let (method, arg) = hop.split_once(':').map_or((hop, None), |(m, n)| (m, Some(n.to_string())));
        let user = || arg.clone().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into());
        match method {
            "sudo" => {
                let mut o = SudoOptions::new(user());
                o.password = become_pass;
                o.preserve_env = cli.preserve_env;
                o.login = cli.login;
                o.connect_timeout = timeout;
                from.sudo(o).map_err(|e| e.to_string())
            }
            "su" => {
                let mut o = SuOptions::new(user());
                o.password = become_pass;
                o.login = cli.login;
                o.connect_timeout = timeout;
                from.su(o).map_err(|e| e.to_string())
            }
            "doas" => {
                let mut o = DoasOptions::new(user());
                o.password = become_pass;
                o.connect_timeout = timeout;
                from.doas(o).map_err(|e| e.to_string())
            }
            "local" => {
                // At the top a plain "local"; behind a hop the library
                // names it after the hop.
                let name = arg.or_else(|| from.is_from_master().then(|| "local".into()));
                from.local(LocalOptions { name, connect_timeout: timeout, ..LocalOptions::default() }).map_err(|e| e.to_string())
            }
            _ => Err(format!(
                "unknown target {hop:?}: supported today: local, ssh://[user@]host[:port], sudo:USER, su:USER, doas:USER, and chains of them joined by commas (containers are on the way)"
            )),
        }
    }
}

/// Reads a password from a file or the terminal; never argv.
fn read_secret(file: &Option<std::path::PathBuf>, ask: bool, what: &str) -> Result<Option<String>, String> {
    if let Some(f) = file {
        return read_password_file(f, what).map(Some);
    }
    if ask {
        return read_tty_password(&format!("{what}: ")).map(Some);
    }
    Ok(None)
}

/// The first line of `f`.
fn read_password_file(f: &std::path::Path, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(f).map_err(|e| format!("{what} file {}: {e}", f.display()))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// `sudo`, `su` or `doas`, with or without a user.
fn is_become(hop: &str) -> bool {
    matches!(hop.split_once(':').map_or(hop, |(m, _)| m), "sudo" | "su" | "doas")
}

/// A hop as `--become-pass-*` names it: `sudo`, `sudo:` and `sudo:root` are
/// all `sudo:root` (the CLI's default user); other hops as written.
fn normalize_hop(hop: &str) -> String {
    match hop.split_once(':') {
        Some((m @ ("sudo" | "su" | "doas"), "")) => format!("{m}:root"),
        None if is_become(hop) => format!("{hop}:root"),
        _ => hop.to_string(),
    }
}

/// `HOP=REST` where HOP is a become hop or a chain ending in one:
/// (normalized HOP, REST); anything else is all REST.
fn split_hop(spec: &str) -> (Option<String>, &str) {
    if let Some((hop, rest)) = spec.split_once('=') {
        if hop.rsplit(',').next().is_some_and(is_become) {
            let hops: Vec<String> = hop.split(',').map(normalize_hop).collect();
            return (Some(hops.join(",")), rest);
        }
    }
    (None, spec)
}

/// Where one become password comes from.
enum Source {
    /// An environment variable, read (and removed) at start.
    Env { var: String, value: Option<String> },
    /// The first line of a file, read when first needed.
    File(std::path::PathBuf),
    /// The terminal, asked when first needed.
    Ask,
}

/// One `--become-pass-env/-file` or `--ask-become-pass`: for the hops it
/// names (a hop, or a whole chain prefix), or without a name for the first
/// become hop of each target; read at most once.
struct BecomeSource {
    hop: Option<String>,
    from: Source,
    read: Option<String>,
}

/// The passwords the command line points at.
pub struct Secrets {
    ssh_env: Option<Result<String, String>>,
    sources: Vec<BecomeSource>,
}

impl Secrets {
    /// Reads every password given by environment variable and removes
    /// those variables from this process's environment, so that nothing
    /// started later (local agents, `sudo -E`, ssh) inherits them. Call it
    /// before any thread exists: changing the environment is not
    /// thread-safe.
    pub fn take(cli: &Cli) -> Result<Secrets, String> {
        let mut bad = None;
        // A variable named twice (for two hops, on purpose) is read once.
        let mut taken: Vec<(String, Option<String>)> = Vec::new();
        let mut take_var = |flag: &str, spec: &str, var: &str| {
            // remove_var panics on these; no variable can be named so.
            if var.is_empty() || var.contains(['=', '\0']) {
                bad.get_or_insert(format!("{flag} {spec}: expected VAR or HOP=VAR (e.g. sudo:root=ROOT_PW)"));
                return None;
            }
            if let Some((_, value)) = taken.iter().find(|(v, _)| v == var) {
                return value.clone();
            }
            let value = std::env::var(var).ok();
            std::env::remove_var(var);
            taken.push((var.to_string(), value.clone()));
            value
        };
        let ssh_env = cli
            .password_env
            .as_ref()
            .map(|var| take_var("--password-env", var, var).ok_or_else(|| format!("ssh password: ${var} is not set")));
        let mut sources = Vec::new();
        for spec in &cli.become_pass_env {
            let (hop, var) = split_hop(spec);
            let value = take_var("--become-pass-env", spec, var);
            sources.push(BecomeSource { hop, from: Source::Env { var: var.to_string(), value }, read: None });
        }
        if let Some(e) = bad {
            return Err(e);
        }
        for spec in &cli.become_pass_file {
            let (hop, file) = split_hop(spec);
            sources.push(BecomeSource { hop, from: Source::File(file.into()), read: None });
        }
        for spec in &cli.ask_become_pass {
            let hop = match split_hop(&format!("{spec}=")) {
                _ if spec.is_empty() => None,
                (Some(hop), "") => Some(hop),
                _ => return Err(format!("--ask-become-pass={spec}: not a sudo, su or doas hop (e.g. sudo:root)")),
            };
            sources.push(BecomeSource { hop, from: Source::Ask, read: None });
        }
        Ok(Secrets { ssh_env, sources })
    }

    /// The password of the become hop that ends `prefix`, the
    /// `index`-th become hop of its chain (from 0): from the source naming
    /// the whole prefix, else the hop, else (first become hop only) the
    /// one naming none. None when nothing is for this hop.
    fn become_password(&mut self, prefix: &str, index: usize) -> Result<Option<String>, String> {
        let chain: Vec<String> = prefix.split(',').map(normalize_hop).collect();
        let (full, hop) = (chain.join(","), chain.last().cloned().unwrap_or_default());
        let level = |s: &BecomeSource| match &s.hop {
            Some(h) if h.contains(',') => (*h == full).then_some(2),
            Some(h) => (*h == hop).then_some(1),
            None => (index == 0).then_some(0),
        };
        let Some(best) = self.sources.iter().filter_map(level).max() else { return Ok(None) };
        let mut chosen = self.sources.iter_mut().filter(|s| level(s) == Some(best));
        let source = chosen.next().ok_or("no password source")?;
        if chosen.next().is_some() {
            return Err(format!("more than one become password given for {prefix}"));
        }
        if source.read.is_none() {
            let what = match &source.hop {
                Some(h) => format!("become password for {h}"),
                None => "become password".to_string(),
            };
            source.read = Some(match &source.from {
                Source::Env { var, value } => value.clone().ok_or_else(|| format!("{what}: ${var} is not set"))?,
                Source::File(f) => read_password_file(f, &what)?,
                Source::Ask => read_tty_password(&format!("{what}: "))?,
            });
        }
        Ok(source.read.clone())
    }
}

/// Prompts on /dev/tty with echo off.
fn read_tty_password(prompt: &str) -> Result<String, String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let mut tty =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").map_err(|e| format!("/dev/tty: {e}"))?;
    let saved = tcgetattr(&tty).map_err(|e| format!("/dev/tty: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    let _ = write!(tty, "{prompt}");
    let _ = tty.flush();
    tcsetattr(&tty, OptionalActions::Flush, &quiet).map_err(|e| format!("/dev/tty: {e}"))?;
    let mut line = String::new();
    let r = std::io::BufRead::read_line(&mut std::io::BufReader::new(&tty), &mut line);
    let _ = tcsetattr(&tty, OptionalActions::Flush, &saved);
    let _ = writeln!(tty);
    r.map_err(|e| format!("/dev/tty: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Splits `TARGET:/PATH` at the last `:/` (targets may contain colons).
pub fn split_remote(spec: &str) -> Result<(&str, &str), String> {
    spec.rfind(":/")
        .map(|i| (&spec[..i], &spec[i + 1..]))
        .ok_or_else(|| format!("{spec:?}: expected TARGET:/absolute/path (e.g. local:/tmp/x, ssh://host:/etc/motd)"))
}
