//! Targets: where a command runs. One hop is `local`, `ssh://[user@]host[:port]`,
//! `sudo:USER`, `su:USER` or `doas:USER`; a chain is hops joined by commas
//! (`ssh://web1,sudo:root`), each connected through the one before it.
//! [`Targets`] connects each distinct prefix once, so
//! `ssh://web1,sudo:a` and `ssh://web1,sudo:b` share one ssh connection.

use std::io::Write;
use std::time::Duration;

use mito::{Connector, Context, DoasOptions, HostKeyPolicy, LocalOptions, Router, SshOptions, SuOptions, SudoOptions};

use super::{Cli, HostKeys};

/// The contexts made so far, by target prefix, and passwords read once.
pub struct Targets<'a> {
    router: &'a Router,
    cli: &'a Cli,
    made: Vec<(String, Context)>,
    ssh_password: Option<Option<String>>,
    become_password: Option<Option<String>>,
}

impl<'a> Targets<'a> {
    /// No connections yet.
    pub fn new(router: &'a Router, cli: &'a Cli) -> Self {
        Targets { router, cli, made: Vec::new(), ssh_password: None, become_password: None }
    }

    /// The context for `target`, connecting the hops not connected yet.
    pub fn connect(&mut self, target: &str) -> Result<Context, String> {
        let mut prev: Option<Context> = None;
        let mut prefix = String::new();
        for (i, hop) in target.split(',').enumerate() {
            if i > 0 {
                prefix.push(',');
            }
            prefix.push_str(hop);
            if let Some((_, c)) = self.made.iter().find(|(p, _)| *p == prefix) {
                prev = Some(c.clone());
                continue;
            }
            let from = prev.as_ref().map_or_else(|| self.router.connector(), Context::connector);
            let c = self.connect_hop(from, hop)?;
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

    fn connect_hop(&mut self, from: Connector<'_>, hop: &str) -> Result<Context, String> {
        let cli = self.cli;
        let timeout = Duration::from_secs_f64(cli.connect_timeout.max(0.001));
        if hop.starts_with("ssh://") {
            let mut o = SshOptions::from_url(hop)?;
            o.connect_timeout = timeout;
            o.identity_file = cli.identity.clone();
            o.ssh_config = cli.ssh_config.clone();
            o.options = cli.ssh_options.clone();
            if self.ssh_password.is_none() {
                self.ssh_password =
                    Some(read_secret(&cli.password_env, &cli.password_file, cli.ask_password, "ssh password")?);
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
        if matches!(method, "sudo" | "su" | "doas") && self.become_password.is_none() {
            let pw = read_secret(&cli.become_pass_env, &cli.become_pass_file, cli.ask_become_pass, "become password")?;
            self.become_password = Some(pw);
        }
        let become_pass = self.become_password.clone().flatten();
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

/// Reads a password from an env var, a file or the terminal; never argv.
pub fn read_secret(
    env: &Option<String>,
    file: &Option<std::path::PathBuf>,
    ask: bool,
    what: &str,
) -> Result<Option<String>, String> {
    if let Some(var) = env {
        return std::env::var(var).map(Some).map_err(|_| format!("{what}: ${var} is not set"));
    }
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{what} file {}: {e}", f.display()))?;
        return Ok(Some(text.lines().next().unwrap_or("").to_string()));
    }
    if ask {
        return read_tty_password(&format!("{what}: ")).map(Some);
    }
    Ok(None)
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
