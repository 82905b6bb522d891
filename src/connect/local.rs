//! The `local` method: an agent on this machine, started through the same
//! stage0 path that ssh uses (`sh -c '<stage0>'`).
//!
//! `create_child` (mitogen's name): one socketpair end becomes the child's
//! stdin and stdout, a pipe its stderr. The child gets its own process
//! group, so a Ctrl-C at the terminal goes to the master, which then closes
//! the stream; the agent exits on that EOF and takes its commands with it.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

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

/// A spawned child whose stdio is a stream.
#[derive(Debug)]
pub struct Spawned {
    /// Process id.
    pub pid: u32,
    /// Our end of the socketpair (stream rx and tx).
    pub sock: OwnedFd,
    /// Read end of the child's stderr.
    pub stderr: OwnedFd,
}

/// Starts `sh -c <script>` with a socketpair as stdin/stdout.
pub fn create_child(opts: &LocalOptions, script: &str) -> std::io::Result<Spawned> {
    let (ours, theirs) = UnixStream::pair()?;
    let theirs: OwnedFd = theirs.into();
    let theirs2 = theirs.try_clone()?;
    let mut cmd = Command::new(&opts.sh);
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::from(theirs2))
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let stderr = child.stderr.take().map(OwnedFd::from).ok_or_else(|| std::io::Error::other("no stderr pipe"))?;
    // The Child handle is dropped without waiting: a ProcessMonitor reaps it.
    Ok(Spawned { pid: child.id(), sock: ours.into(), stderr })
}
