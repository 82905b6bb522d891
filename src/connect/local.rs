//! The `local` method: an agent on this machine, started through the same
//! stage0 path that ssh uses (`sh -c '<stage0>'`), spawned by
//! [`create_child`](super::child::create_child) like every method.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::child::ChildCommand;

/// Options of [`crate::Router::local`].
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Name in logs and errors (default `local.<id>`).
    pub name: Option<String>,
    /// The POSIX shell that runs stage0.
    pub sh: PathBuf,
    /// Extra environment for the agent (e.g. `XDG_CACHE_HOME`).
    pub env: Vec<(OsString, OsString)>,
    /// Limit for the whole bootstrap, spawn to hello.
    pub connect_timeout: Duration,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            name: None,
            sh: PathBuf::from("/bin/sh"),
            env: Vec::new(),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// The local method's command: `sh -c <stage0>`.
pub fn command(opts: &LocalOptions, stage0: &str) -> ChildCommand {
    let mut c = ChildCommand::new(&opts.sh);
    c.arg("-c").arg(stage0);
    c.env = opts.env.clone();
    c
}
