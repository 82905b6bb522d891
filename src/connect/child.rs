//! [`create_child`] (mitogen's name), the spawn path every method shares,
//! and [`ChildCommand`], what each method asks it to start.
//!
//! One socketpair end becomes the child's stdin and stdout (or two pipes),
//! a pipe its stderr (or, for the tools that ask for passwords, a pty that
//! is also its controlling terminal). The child gets its own process group,
//! so a Ctrl-C at the terminal goes to the master, which then closes the
//! stream; the agent exits on that EOF and takes its commands with it.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// What to start for a context: a program, its arguments and environment.
#[derive(Clone, Debug, Default)]
pub struct ChildCommand {
    /// Program (looked up in `PATH` when it has no `/`).
    pub program: OsString,
    /// Arguments.
    pub args: Vec<OsString>,
    /// Variables to set.
    pub env: Vec<(OsString, OsString)>,
    /// Variables to remove.
    pub env_remove: Vec<OsString>,
    /// Two pipes for stdin and stdout instead of one socketpair (ssh moves
    /// small messages through pipes ~6 µs faster per round trip).
    pub pipes: bool,
    /// mitogen's hybrid tty: stdin/stdout stay pipes, stderr is a new pty
    /// that is also the child's controlling terminal (a new session), so a
    /// password prompt appears there while bulk data never crosses a tty.
    /// Implies `pipes`.
    pub tty: bool,
}

impl ChildCommand {
    /// `program` with no arguments yet.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        ChildCommand { program: program.as_ref().to_owned(), ..ChildCommand::default() }
    }

    /// Appends an argument.
    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(a.as_ref().to_owned());
        self
    }
}

/// A spawned child whose stdio is a stream.
#[derive(Debug)]
pub struct Spawned {
    /// Process id.
    pub pid: u32,
    /// What the child writes to its stdout (stream rx).
    pub rx: OwnedFd,
    /// What the child reads on its stdin (stream tx).
    pub tx: OwnedFd,
    /// Read end of the child's stderr; with `tty`, the pty master (read
    /// prompts, write answers; closing it hangs the child up).
    pub stderr: OwnedFd,
}

/// Starts `cmd` with a socketpair (or two pipes) as stdin/stdout and a pipe
/// as stderr.
pub fn create_child(cmd: &ChildCommand) -> std::io::Result<Spawned> {
    let (rx, tx, child_in, child_out): (OwnedFd, OwnedFd, OwnedFd, OwnedFd) = if cmd.pipes || cmd.tty {
        let flags = rustix::pipe::PipeFlags::CLOEXEC;
        let (in_r, in_w) = rustix::pipe::pipe_with(flags)?;
        let (out_r, out_w) = rustix::pipe::pipe_with(flags)?;
        (out_r, in_w, in_r, out_w)
    } else {
        let (ours, theirs) = UnixStream::pair()?;
        let ours: OwnedFd = ours.into();
        let theirs: OwnedFd = theirs.into();
        (ours.try_clone()?, ours, theirs.try_clone()?, theirs)
    };
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args).stdin(Stdio::from(child_in)).stdout(Stdio::from(child_out));
    let pty_master = if cmd.tty {
        let pty = open_pty()?;
        c.stderr(Stdio::from(pty.slave));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            c.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(2, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Some(pty.master)
    } else {
        c.stderr(Stdio::piped()).process_group(0);
        None
    };
    for k in &cmd.env_remove {
        c.env_remove(k);
    }
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    let mut child = c.spawn()?;
    let stderr = match pty_master {
        Some(m) => m,
        None => child.stderr.take().map(OwnedFd::from).ok_or_else(|| std::io::Error::other("no stderr pipe"))?,
    };
    // The Child handle is dropped without waiting: a ProcessMonitor reaps it.
    Ok(Spawned { pid: child.id(), rx, tx, stderr })
}

/// A new pty without output post-processing. Echo stays on: a tool turns
/// it off right before it reads a password, and that is the moment the
/// bootstrap waits for before typing (see `bootstrap`, `Prompt::Answer`).
fn open_pty() -> std::io::Result<nix::pty::OpenptyResult> {
    use nix::sys::termios::{tcgetattr, tcsetattr, OutputFlags, SetArg};
    let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    let mut t = tcgetattr(&pty.slave).map_err(std::io::Error::from)?;
    t.output_flags.remove(OutputFlags::OPOST);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &t).map_err(std::io::Error::from)?;
    for fd in [&pty.master, &pty.slave] {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
    }
    Ok(pty)
}
