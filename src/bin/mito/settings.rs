//! The command line turned into settings: the options of each kind of hop
//! (timeouts, ssh options, host key policy, sudo/su flags) and the
//! arguments of a remote command. Passwords are `secrets`' business.

use std::path::PathBuf;
use std::time::Duration;

use mito::functions::ExecArgs;
use mito::{DoasOptions, HostKeyPolicy, LocalOptions, SshOptions, SuOptions, SudoOptions};
use serde_bytes::ByteBuf;

use super::cli::{Cli, HostKeys, RunArgs};

/// What the global options say about connecting.
pub struct Settings {
    /// `--connect-timeout`, in seconds as given.
    connect_timeout: f64,
    identity: Option<PathBuf>,
    ssh_config: Option<PathBuf>,
    ssh_options: Vec<String>,
    host_keys: HostKeyPolicy,
    preserve_env: bool,
    login: bool,
}

/// One hop of a target with its options, passwords not yet filled in
/// (but for a become hop's, which the caller passes).
pub enum Hop {
    /// `ssh://[user@]host[:port]`.
    Ssh(SshOptions),
    /// `sudo[:USER]`.
    Sudo(SudoOptions),
    /// `su[:USER]`.
    Su(SuOptions),
    /// `doas[:USER]`.
    Doas(DoasOptions),
    /// `local[:NAME]`; without a name the caller picks one.
    Local(LocalOptions),
}

impl Settings {
    /// The connection settings of `cli`.
    pub fn new(cli: &Cli) -> Settings {
        Settings {
            connect_timeout: cli.connect_timeout,
            identity: cli.identity.clone(),
            ssh_config: cli.ssh_config.clone(),
            ssh_options: cli.ssh_options.clone(),
            host_keys: match cli.check_host_keys {
                HostKeys::Enforce => HostKeyPolicy::Enforce,
                HostKeys::AcceptNew => HostKeyPolicy::AcceptNew,
                HostKeys::Ignore => HostKeyPolicy::Ignore,
            },
            preserve_env: cli.preserve_env,
            login: cli.login,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout.max(0.001))
    }

    /// The hop written `hop` (one hop, no commas) with its options;
    /// `become_pass` is the password of a sudo/su/doas hop.
    pub fn hop(&self, hop: &str, become_pass: Option<String>) -> Result<Hop, String> {
        let timeout = self.timeout();
        if hop.starts_with("ssh://") {
            let mut o = SshOptions::from_url(hop)?;
            o.connect_timeout = timeout;
            o.identity_file = self.identity.clone();
            o.ssh_config = self.ssh_config.clone();
            o.options = self.ssh_options.clone();
            o.check_host_keys = self.host_keys;
            return Ok(Hop::Ssh(o));
        }
        let (method, arg) = hop.split_once(':').map_or((hop, None), |(m, n)| (m, Some(n.to_string())));
        let user = || arg.clone().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into());
        Ok(match method {
            "sudo" => {
                let mut o = SudoOptions::new(user());
                o.password = become_pass;
                o.preserve_env = self.preserve_env;
                o.login = self.login;
                o.connect_timeout = timeout;
                Hop::Sudo(o)
            }
            "su" => {
                let mut o = SuOptions::new(user());
                o.password = become_pass;
                o.login = self.login;
                o.connect_timeout = timeout;
                Hop::Su(o)
            }
            "doas" => {
                let mut o = DoasOptions::new(user());
                o.password = become_pass;
                o.connect_timeout = timeout;
                Hop::Doas(o)
            }
            "local" => Hop::Local(LocalOptions { name: arg, connect_timeout: timeout, ..LocalOptions::default() }),
            _ => return Err(format!(
                "unknown target {hop:?}: expected local, ssh://[user@]host[:port], sudo:USER, su:USER, doas:USER, or a chain of them joined by commas"
            )),
        })
    }
}

/// The remote command `mito run` was given.
pub fn exec_args(a: &RunArgs) -> Result<ExecArgs, String> {
    let mut env = Vec::new();
    for e in &a.env {
        let (k, v) = e.split_once('=').ok_or_else(|| format!("--env {e}: expected VAR=VALUE"))?;
        env.push((ByteBuf::from(k.as_bytes()), ByteBuf::from(v.as_bytes())));
    }
    Ok(ExecArgs {
        argv: a.argv.iter().map(|a| ByteBuf::from(a.as_bytes())).collect(),
        env,
        cwd: a.cwd.as_ref().map(|c| ByteBuf::from(c.as_bytes())),
        pty: a.tty.then(super::run::window_size),
        timeout_ms: a.timeout.map(|t| (t * 1e3).max(1.0) as u64),
        ..ExecArgs::default()
    })
}
