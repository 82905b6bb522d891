//! Passwords ([`Secrets`]): read from the environment at start (and those
//! variables removed, so no child inherits them), from files and the
//! terminal when a hop first needs one. A become password belongs to the
//! hops it names (`--become-pass-env sudo:root=VAR`); one given without a
//! hop is for the first become hop of each target only, so a chain such as
//! `sudo:alice,sudo:root` never types one hop's password into another's
//! prompt.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::cli::Cli;
use super::target::is_become;

/// The passwords the command line points at.
pub struct Secrets {
    /// `--password-env`, read at start: the password, or why there is none.
    ssh_env: Option<Result<String, String>>,
    /// `--password-file`.
    ssh_file: Option<PathBuf>,
    /// `--ask-password`.
    ssh_ask: bool,
    /// The ssh password once a hop needed it (`Some(None)`: none given).
    ssh_read: Option<Option<String>>,
    /// Become passwords, in command-line order.
    sources: Vec<BecomeSource>,
}

/// Where one become password comes from.
enum Source {
    /// An environment variable, read (and removed) at start.
    Env { var: String, value: Option<String> },
    /// The first line of a file, read when first needed.
    File(PathBuf),
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
        sources.extend(read_later(cli)?);
        let (ssh_file, ssh_ask) = (cli.password_file.clone(), cli.ask_password);
        Ok(Secrets { ssh_env, ssh_file, ssh_ask, ssh_read: None, sources })
    }

    /// The ssh login password, read the first time an ssh hop needs it;
    /// None when none was given.
    pub fn ssh_password(&mut self) -> Result<Option<String>, String> {
        if self.ssh_read.is_none() {
            let pw = match self.ssh_env.take() {
                Some(from_env) => from_env.map(Some)?,
                None => read_secret(&self.ssh_file, self.ssh_ask, "ssh password")?,
            };
            self.ssh_read = Some(pw);
        }
        Ok(self.ssh_read.clone().flatten())
    }

    /// The password of the become hop that ends `prefix`, the
    /// `index`-th become hop of its chain (from 0): from the source naming
    /// the whole prefix, else the hop, else (first become hop only) the
    /// one naming none. None when nothing is for this hop.
    pub fn become_password(&mut self, prefix: &str, index: usize) -> Result<Option<String>, String> {
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

/// The become passwords read when first needed: `--become-pass-file` and
/// `--ask-become-pass`, in that order.
fn read_later(cli: &Cli) -> Result<Vec<BecomeSource>, String> {
    let mut sources = Vec::new();
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
    Ok(sources)
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

/// Reads a password from a file or the terminal; never argv.
fn read_secret(file: &Option<PathBuf>, ask: bool, what: &str) -> Result<Option<String>, String> {
    if let Some(f) = file {
        return read_password_file(f, what).map(Some);
    }
    if ask {
        return read_tty_password(&format!("{what}: ")).map(Some);
    }
    Ok(None)
}

/// The first line of `f`.
fn read_password_file(f: &Path, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(f).map_err(|e| format!("{what} file {}: {e}", f.display()))?;
    Ok(text.lines().next().unwrap_or("").to_string())
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
