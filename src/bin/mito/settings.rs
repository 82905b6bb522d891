//! The command line turned into settings: the options of each kind of hop
//! (timeouts, ssh options, host key policy, sudo/su flags) and the
//! arguments of a remote command. Passwords are `secrets`' business.

use std::path::PathBuf;
use std::time::Duration;

use mito::functions::ExecArgs;
use mito::{
    ConnectError, Connector, Context, DoasOptions, HostKeyPolicy, LocalOptions, SshOptions, SuOptions, SudoOptions,
};
use serde_bytes::ByteBuf;

use super::cli::{Cli, HostKeys, RunArgs};
use super::inventory::{BecomeMethod, SshSpec};

/// What the global options say about connecting.
pub struct Settings {
    /// `--connect-timeout`, in seconds as given.
    connect_timeout: f64,
    identity: Option<PathBuf>,
    ssh_config: Option<PathBuf>,
    ssh_options: Vec<String>,
    host_keys: HostKeyPolicy,
    /// `--control-persist`, None with 0 or `--no-control-master`.
    control_persist: Option<Duration>,
    /// `--control-path-dir`.
    control_dir: Option<PathBuf>,
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
            control_persist: (!cli.no_control_master && cli.control_persist > 0)
                .then(|| Duration::from_secs(cli.control_persist.into())),
            control_dir: cli.control_path_dir.clone(),
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
        if hop.starts_with("ssh://") {
            return Ok(Hop::Ssh(self.ssh(SshOptions::from_url(hop)?)));
        }
        let (method, arg) = hop.split_once(':').map_or((hop, None), |(m, n)| (m, Some(n.to_string())));
        let user = || arg.clone().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into());
        Ok(match method {
            "sudo" => self.become_hop(BecomeMethod::Sudo, user(), become_pass),
            "su" => self.become_hop(BecomeMethod::Su, user(), become_pass),
            "doas" => self.become_hop(BecomeMethod::Doas, user(), become_pass),
            "local" => self.local(arg),
            _ => return Err(format!(
                "unknown target {hop:?}: expected local, ssh://[user@]host[:port], sudo:USER, su:USER, doas:USER, setns:PID|CONTAINER, chroot:/PATH, a chain of them joined by commas, or a host pattern of the inventory (-i)"
            )),
        })
    }

    /// `o` with the global ssh options (timeout, key, config, `-o`, host
    /// key policy, connection sharing) filled in.
    pub fn ssh(&self, mut o: SshOptions) -> SshOptions {
        o.connect_timeout = self.timeout();
        o.identity_file = self.identity.clone();
        o.ssh_config = self.ssh_config.clone();
        o.options = self.ssh_options.clone();
        o.check_host_keys = self.host_keys;
        o.control_persist = self.control_persist;
        o.control_dir = self.control_dir.clone();
        o
    }

    /// A sudo, su or doas hop to `user` with the global flags.
    pub fn become_hop(&self, method: BecomeMethod, user: String, password: Option<String>) -> Hop {
        let timeout = self.timeout();
        match method {
            BecomeMethod::Sudo => {
                let mut o = SudoOptions::new(user);
                o.password = password;
                o.preserve_env = self.preserve_env;
                o.login = self.login;
                o.connect_timeout = timeout;
                Hop::Sudo(o)
            }
            BecomeMethod::Su => {
                let mut o = SuOptions::new(user);
                o.password = password;
                o.login = self.login;
                o.connect_timeout = timeout;
                Hop::Su(o)
            }
            BecomeMethod::Doas => {
                let mut o = DoasOptions::new(user);
                o.password = password;
                o.connect_timeout = timeout;
                Hop::Doas(o)
            }
        }
    }

    /// A local hop named `name` (None: the caller's choice, see `Targets`).
    pub fn local(&self, name: Option<String>) -> Hop {
        Hop::Local(LocalOptions { name, connect_timeout: self.timeout(), ..LocalOptions::default() })
    }

    /// The ssh hop of an inventory host: the global options, then what
    /// the inventory says, which wins where both speak (as Ansible's host
    /// variables beat its command line). ssh takes the first value of an
    /// option, so the inventory's `-o` options go first. The password is
    /// filled in later (from the inventory, else as for any ssh hop).
    pub fn inventory_ssh(&self, name: &str, spec: &SshSpec) -> SshOptions {
        let mut o = self.ssh(SshOptions::new(spec.host.clone()));
        o.name = Some(name.to_string());
        o.port = spec.port;
        o.username = spec.user.clone();
        if spec.key.is_some() {
            o.identity_file = spec.key.clone();
        }
        o.options = spec.options.iter().cloned().chain(std::mem::take(&mut o.options)).collect();
        o.compression |= spec.compression;
        o
    }
}

impl Hop {
    /// Connects this hop from `from` (the master, or the hop before it).
    pub fn connect(self, from: Connector<'_>) -> Result<Context, ConnectError> {
        match self {
            Hop::Ssh(o) => from.ssh(o),
            Hop::Sudo(o) => from.sudo(o),
            Hop::Su(o) => from.su(o),
            Hop::Doas(o) => from.doas(o),
            Hop::Local(o) => from.local(o),
        }
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
