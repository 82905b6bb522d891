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

use crate::core::side::{MAX_GROWN_PIPES, PIPE_SIZE};

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
    /// Not a program: the agent started inside a container or a chroot
    /// (`core::nsenter`), with `program` and `args` as its argv
    /// (`mito-agent HASH ID`). Only `env` applies of the rest.
    pub enter: Option<Entered>,
}

/// An agent to start inside a container or a chroot.
#[derive(Clone)]
pub struct Entered {
    /// Where.
    pub how: crate::proto::functions::Enter,
    /// The raw agent, for a start from the master; behind a hop the hop
    /// starts its own executable and this is not sent.
    pub agent: std::sync::Arc<Vec<u8>>,
    /// Limit for the start up to the exec (the connect timeout).
    pub timeout: std::time::Duration,
}

impl std::fmt::Debug for Entered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entered")
            .field("how", &self.how)
            .field("agent_len", &self.agent.len())
            .field("timeout", &self.timeout)
            .finish()
    }
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

/// Grows `fd`'s pipe to [`PIPE_SIZE`] (or the system's maximum, if
/// lower), for the first [`MAX_GROWN_PIPES`] pipes; best effort: a pipe that
/// stays small only costs speed.
fn grow_pipe(fd: &OwnedFd) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static GROWN: AtomicUsize = AtomicUsize::new(0);
    if GROWN.fetch_add(1, Ordering::Relaxed) >= MAX_GROWN_PIPES {
        return;
    }
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size").ok().and_then(|s| s.trim().parse().ok());
    let _ = rustix::pipe::fcntl_setpipe_size(fd, max.unwrap_or(PIPE_SIZE).min(PIPE_SIZE));
}

/// What a socketpair end's send buffer is asked to hold: a transfer
/// chunk (the kernel doubles the number for its bookkeeping). A unix
/// stream socket queues what its sender's buffer allows, 208 KiB by
/// default, so while a local agent wrote one 1 MiB chunk of a put to its
/// file the master could only get 208 KiB of the next one to it: a 1 GiB
/// local put went at 1.40 GB/s; with the system's maximum for users
/// (`net.core.wmem_max`, doubled: 416 KiB by default) 1.57-1.59, with
/// this (2 MiB) 1.85-1.92 (A/B alternating, idle VM; a get, which the
/// agent does not write to disk, did not change).
const SOCKET_SEND_BUFFER: libc::c_int = 1 << 20;

/// Grows the send buffer of `fd`, a socketpair end: to
/// [`SOCKET_SEND_BUFFER`] where the caller may exceed the system's maximum
/// (`SO_SNDBUFFORCE`, `CAP_NET_ADMIN`: root), else as far as that maximum
/// lets it (`SO_SNDBUF`). Best effort, as [`grow_pipe`]: a buffer that
/// stays small only costs speed. The memory is the kernel's, and only
/// while bytes wait in it.
fn grow_socket(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    let set = |opt| {
        // SAFETY: `fd` is an open socket; the option value is a c_int
        // that lives across the call, with its size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&SOCKET_SEND_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    if !set(libc::SO_SNDBUFFORCE) {
        set(libc::SO_SNDBUF);
    }
}

/// Starts `cmd` with a socketpair (or two pipes) as stdin/stdout and a pipe
/// as stderr.
pub fn create_child(cmd: &ChildCommand) -> std::io::Result<Spawned> {
    if let Some(e) = &cmd.enter {
        return create_entered(cmd, e, e.timeout);
    }
    let (rx, tx, child_in, child_out): (OwnedFd, OwnedFd, OwnedFd, OwnedFd) = if cmd.pipes || cmd.tty {
        let flags = rustix::pipe::PipeFlags::CLOEXEC;
        let (in_r, in_w) = rustix::pipe::pipe_with(flags)?;
        let (out_r, out_w) = rustix::pipe::pipe_with(flags)?;
        grow_pipe(&in_w);
        grow_pipe(&out_r);
        (out_r, in_w, in_r, out_w)
    } else {
        let (ours, theirs) = UnixStream::pair()?;
        let ours: OwnedFd = ours.into();
        let theirs: OwnedFd = theirs.into();
        grow_socket(&ours);
        grow_socket(&theirs);
        (ours.try_clone()?, ours, theirs.try_clone()?, theirs)
    };
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args).stdin(Stdio::from(child_in)).stdout(Stdio::from(child_out));
    let tty = cmd.tty;
    // The master may block the signals it reads on a thread of its own
    // (`mito run` blocks HUP, INT, QUIT, TERM and WINCH), and a mask
    // survives fork and exec: ssh, sudo or the stage0 shell would start
    // with them blocked (an ssh ControlMaster started so ignores SIGTERM
    // for good). std keeps the parent's mask, so the child clears it.
    // SAFETY: rt_sigprocmask, setsid and ioctl are async-signal-safe;
    // nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if crate::core::nsenter::sys::unblock_all_signals() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if tty && (libc::setsid() < 0 || libc::ioctl(2, libc::TIOCSCTTY as _, 0) < 0) {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let pty_master = if tty {
        let pty = open_pty()?;
        c.stderr(Stdio::from(pty.slave));
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

/// The agent started inside a container or a chroot (`core::nsenter`):
/// a socketpair as its stdin and stdout, a pipe as its stderr, its program
/// a sealed memfd of `e.agent`. Fails with the [`EnterError`] of the step
/// that failed (inside an `io::Error` of its errno). Waits at most
/// `timeout` for the exec.
pub fn create_entered(cmd: &ChildCommand, e: &Entered, timeout: std::time::Duration) -> std::io::Result<Spawned> {
    use crate::core::nsenter;
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    let fail = |f: nsenter::Failure| std::io::Error::from(EnterError(f));
    let plan = nsenter::Plan::for_enter(&e.how).map_err(fail)?;
    let exe = nsenter::memfd_with(&e.agent)?;
    let argv = std::iter::once(&cmd.program)
        .chain(&cmd.args)
        .map(|a| std::ffi::CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let base = if e.how.pid.is_some() {
        plan.env.clone()
    } else {
        std::env::vars_os().map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat()).collect()
    };
    let overrides: Vec<(&[u8], &[u8])> = cmd.env.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
    let envp = nsenter::environment(base, &overrides)?;
    let (ours, theirs) = UnixStream::pair()?;
    let (ours, theirs): (OwnedFd, OwnedFd) = (ours.into(), theirs.into());
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let ms = timeout.as_millis().min(u128::from(u32::MAX)) as u32;
    let pid = nsenter::launch(&plan, exe.as_fd(), &argv, &envp, [theirs.as_fd(), theirs.as_fd(), err_w.as_fd()], ms)
        .map_err(fail)?;
    Ok(Spawned { pid, rx: ours.try_clone()?, tx: ours, stderr: err_r })
}

/// Why an entered start failed: the step and its errno (also the errno of
/// the `io::Error` that carries it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnterError(pub crate::core::nsenter::Failure);

impl std::fmt::Display for EnterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = std::io::Error::from_raw_os_error(self.0.errno);
        write!(f, "{}: {e}", self.0.step.name())
    }
}

impl std::error::Error for EnterError {}

impl From<EnterError> for std::io::Error {
    fn from(e: EnterError) -> std::io::Error {
        let kind = std::io::Error::from_raw_os_error(e.0.errno).kind();
        std::io::Error::new(kind, e)
    }
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
