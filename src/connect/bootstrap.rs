//! The master's side of stage0's text phase, up to the agent's hello.
//!
//! Reads stage0's marker lines (ignoring, but keeping for errors, any other
//! text a login script may print), uploads the agent when asked, then waits
//! for `MITO2` and the hello frame. An agent started directly, without
//! stage0 (`mito-agent HASH ID` executed inside a container by setns or
//! chroot; [`Hooks::stage0`] false, e.g. [`Direct`]), has no text phase:
//! only its own `MITO2` marker and hello are awaited, and a stage0 request
//! is not answered (nothing there reads an upload). Runs on the connecting thread with
//! blocking `poll` and one deadline for the whole phase; only after the
//! hello does the stream go to the Broker, with the decoder that already
//! holds any bytes read past the hello.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};

use super::error::{format_output, ConnectError};
use super::stage0;
use crate::connect::agents::{AgentSet, Chosen};
use crate::core::lines::Lines;
use crate::core::side::{self, Io};
use crate::core::stream::Decoder;
use crate::proto::message::Hello;
use crate::proto::{handles, PROTOCOL_VERSION};

/// How the agent got to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upload {
    /// A cached copy was executed; nothing was sent.
    Cached,
    /// The agent was sent (gzip or raw) and stored in this directory.
    Stored {
        /// Directory stage0 chose.
        dir: String,
        /// Sent gzip-compressed.
        gzip: bool,
    },
    /// The agent was sent raw and run from a memfd (no usable directory).
    Memfd,
    /// The agent was executed directly from a memfd, without stage0
    /// (setns, chroot): from the master's embedded copy, or behind a hop
    /// from the hop's own executable; nothing crossed the last link.
    Direct,
}

/// What a method makes of new output on the process's stderr (its tty
/// for sudo/su/doas) while bootstrapping.
#[derive(Debug)]
pub enum Prompt {
    /// Nothing to do yet.
    Wait,
    /// Write these bytes (a password and newline), once, to the tty or to
    /// the process's stdin.
    Answer(Vec<u8>, AnswerTo),
    /// Give up with this error (e.g. "Sorry, try again").
    Fail(ConnectError),
}

/// Where a tool reads its password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerTo {
    /// The controlling terminal (sudo, doas).
    Tty,
    /// Standard input (su, through PAM's conversation function).
    Stdin,
}

/// Method-specific behaviour during the bootstrap.
pub trait Hooks {
    /// Called with the stderr text that arrived since the last answer.
    fn on_stderr(&mut self, _unscanned: &[u8]) -> Prompt {
        Prompt::Wait
    }

    /// Turns the stderr of a process whose bootstrap failed into a
    /// method-specific error (e.g. ssh's "Permission denied"), or `None`.
    fn classify(&self, _stderr: &[u8]) -> Option<ConnectError> {
        None
    }

    /// stage0 asked for `agent` (of `arch`), gzipped or raw: true when the
    /// hook had it sent some other way (a hop sending its own executable,
    /// or one from its importer cache), so the master sends nothing.
    fn serve_agent(&mut self, _arch: &str, _agent: &Chosen, _gzip: bool) -> bool {
        false
    }

    /// The command's stdout produced its first byte, or closed: the
    /// target's side runs, so no prompt may be answered any more
    /// (`prompt`'s rules). Called before any stderr text read after that
    /// byte is given to [`Hooks::on_stderr`].
    fn target_spoke(&mut self) {}

    /// The method's program was started on this machine as process `pid`
    /// (not behind a hop), before the bootstrap reads anything: a prompt
    /// responder looks at it in /proc before typing (`prompt`'s rules).
    fn spawned(&mut self, _pid: u32) {}

    /// Whether stage0 runs (the default): false for an agent started
    /// directly, whose only text is its `MITO2` marker.
    fn stage0(&self) -> bool {
        true
    }

    /// Behind a hop: the hop refused to type the answer the hooks asked
    /// for, because the tool was past its prompt (`why`). Nothing may be
    /// typed any more; returns the hooks' own error for that prompt
    /// (`output`: its text), or `None` to let the caller say it.
    fn refused(&mut self, _why: &'static str, _output: &[u8]) -> Option<ConnectError> {
        None
    }
}

/// The hooks of a method that has none (local).
#[derive(Debug)]
pub struct NoHooks;
impl Hooks for NoHooks {}

/// The hooks of an agent started directly, without stage0 (setns,
/// chroot): no text phase, no upload, no prompts.
#[derive(Debug)]
pub struct Direct;
impl Hooks for Direct {
    fn stage0(&self) -> bool {
        false
    }
}

/// What a successful bootstrap hands on.
#[derive(Debug)]
pub struct Bootstrapped {
    /// The agent's hello.
    pub hello: Hello,
    /// Decoder with the bytes read after the hello.
    pub decoder: Decoder,
    /// How the agent got there.
    pub upload: Upload,
    /// Agent bytes the master wrote (0 on a cached start).
    pub agent_bytes_sent: usize,
    /// Time from start of bootstrap to hello.
    pub elapsed: Duration,
}

/// Streams of the spawned process during bootstrap.
#[derive(Debug)]
pub struct Pipes<'a> {
    /// Where stage0 and then the agent write (the stream's rx).
    pub rx: BorrowedFd<'a>,
    /// The agent's stdin (the stream's tx).
    pub tx: BorrowedFd<'a>,
    /// The process's stderr, if separate.
    pub stderr: Option<BorrowedFd<'a>>,
}

const MAX_TEXT: usize = 1 << 20;
const STDERR_TAIL: usize = 8192;
/// How much of the stderr since the last answer the prompt check sees.
const UNSCANNED_TAIL: usize = 8192;

struct Phase<'a> {
    context: &'a str,
    /// The agents this master uploads (the router's set).
    agents: &'a AgentSet,
    hooks: &'a mut dyn Hooks,
    unscanned: Vec<u8>,
    failed: Option<ConnectError>,
    pipes: &'a Pipes<'a>,
    deadline: Instant,
    timeout: Duration,
    stderr: Vec<u8>,
    stderr_open: bool,
    noise: Vec<u8>,
    /// Whether [`Hooks::target_spoke`] was called.
    spoke: bool,
}

impl Phase<'_> {
    fn output(&self) -> String {
        format_output(&self.stderr, &self.noise)
    }

    fn timeout(&mut self, phase: &'static str) -> ConnectError {
        if let Some(e) = self.failed.take() {
            return e;
        }
        // The method's program may give up at the same moment for its own
        // reason (ssh's ConnectTimeout is this same limit, started a little
        // later): give it a moment to say why, so the error is typed
        // ("ssh: connection timed out") rather than a bare timeout.
        self.drain_stderr_until(Instant::now() + Duration::from_secs(1));
        if let Some(e) = self.failed.take() {
            return e;
        }
        if let Some(e) = self.hooks.classify(&self.stderr) {
            return e;
        }
        ConnectError::Timeout { context: self.context.into(), phase, timeout: self.timeout, output: self.output() }
    }

    fn fail(&mut self, reason: impl Into<String>) -> ConnectError {
        if let Some(e) = self.failed.take() {
            return e;
        }
        if let Some(e) = self.hooks.classify(&self.stderr) {
            return e;
        }
        ConnectError::Bootstrap { context: self.context.into(), reason: reason.into(), output: self.output() }
    }

    /// Waits until rx is readable (or, with `write`, tx is writable), while
    /// collecting stderr. Returns false on timeout or when a hook gave up
    /// (then `failed` says why).
    fn wait(&mut self, write: bool) -> bool {
        loop {
            let now = Instant::now();
            if now >= self.deadline || self.failed.is_some() {
                return false;
            }
            let ms = (self.deadline - now).as_millis().min(i32::MAX as u128) as i32;
            let ts =
                rustix::event::Timespec { tv_sec: i64::from(ms / 1000), tv_nsec: i64::from(ms % 1000) * 1_000_000 };
            let main = if write {
                PollFd::new(&self.pipes.tx, PollFlags::OUT)
            } else {
                PollFd::new(&self.pipes.rx, PollFlags::IN)
            };
            let mut fds = vec![main];
            if let (Some(e), true) = (&self.pipes.stderr, self.stderr_open) {
                fds.push(PollFd::new(e, PollFlags::IN));
            }
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return true,
            }
            let main_ready = !fds[0].revents().is_empty();
            let err_ready = fds.get(1).is_some_and(|f| !f.revents().is_empty());
            drop(fds);
            if err_ready {
                self.read_stderr();
                if self.failed.is_some() {
                    return false;
                }
            }
            if main_ready {
                return true;
            }
        }
    }

    fn read_stderr(&mut self) {
        let Some(fd) = self.pipes.stderr else { return };
        let mut b = [0u8; 4096];
        loop {
            match side::read(fd, &mut b) {
                Ok(Io::Done(n)) => {
                    self.stderr.extend_from_slice(&b[..n]);
                    if self.stderr.len() > STDERR_TAIL {
                        let cut = self.stderr.len() - STDERR_TAIL;
                        self.stderr.drain(..cut);
                    }
                    self.unscanned.extend_from_slice(&b[..n]);
                    // Prompts and refusals are at the end of what arrived:
                    // a target that prints without end must not make each
                    // read rescan (and keep) everything it ever printed.
                    if self.unscanned.len() > UNSCANNED_TAIL {
                        let cut = self.unscanned.len() - UNSCANNED_TAIL;
                        self.unscanned.drain(..cut);
                    }
                    log::trace!("[{}] bootstrap stderr/tty: {:?}", self.context, String::from_utf8_lossy(&b[..n]));
                    // Text the target wrote after its first stdout byte must
                    // not be taken for the tool's prompt: look at stdout
                    // now, after reading this text and before judging it.
                    self.note_stdout();
                    match self.hooks.on_stderr(&self.unscanned) {
                        Prompt::Wait => {}
                        Prompt::Answer(bytes, to) => {
                            self.unscanned.clear();
                            let target = match to {
                                AnswerTo::Tty => {
                                    crate::core::tty::wait_for_echo_off(fd);
                                    fd
                                }
                                AnswerTo::Stdin => self.pipes.tx,
                            };
                            // A password and a newline: a short write loop.
                            let mut rest = &bytes[..];
                            while !rest.is_empty() {
                                match side::write(target, rest) {
                                    Ok(Io::Done(n)) => rest = &rest[n..],
                                    Ok(Io::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
                                    _ => break,
                                }
                            }
                        }
                        Prompt::Fail(e) => {
                            self.failed = Some(e);
                            return;
                        }
                    }
                }
                Ok(Io::WouldBlock) => return,
                _ => {
                    self.stderr_open = false;
                    return;
                }
            }
        }
    }

    /// Calls [`Hooks::target_spoke`] once stdout has something to read
    /// (or has closed).
    fn note_stdout(&mut self) {
        if self.spoke {
            return;
        }
        let mut fds = [PollFd::new(&self.pipes.rx, PollFlags::IN)];
        let now = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        if poll(&mut fds, Some(&now)).is_ok_and(|n| n > 0) {
            self.spoke = true;
            self.hooks.target_spoke();
        }
    }

    fn write_all(&mut self, mut data: &[u8]) -> Result<(), ConnectError> {
        while !data.is_empty() {
            match side::write(self.pipes.tx, data) {
                Ok(Io::Done(n)) => data = &data[n..],
                Ok(Io::WouldBlock) => {
                    if !self.wait(true) {
                        return Err(self.timeout("sending the agent"));
                    }
                }
                Ok(Io::Closed) | Err(_) => {
                    self.drain_stderr_briefly();
                    return Err(self.fail("the target closed its input while the agent was being sent"));
                }
            }
        }
        Ok(())
    }

    /// After a failure, give stderr a moment to deliver the target's reason.
    fn drain_stderr_briefly(&mut self) {
        self.drain_stderr_until((Instant::now() + Duration::from_millis(200)).min(self.deadline));
    }

    /// Reads stderr until it closes, a hook gives up, or `until`.
    fn drain_stderr_until(&mut self, until: Instant) {
        while self.stderr_open && self.failed.is_none() && Instant::now() < until {
            let Some(fd) = self.pipes.stderr else { break };
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            let _ = poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 20_000_000 }));
            self.read_stderr();
        }
    }
}

/// Runs the text phase, sending an agent of `agents` if stage0 asks for
/// one, and returns once the agent said hello.
pub fn run(
    context: &str,
    pipes: &Pipes<'_>,
    timeout: Duration,
    max_message_size: u32,
    agents: &AgentSet,
    hooks: &mut dyn Hooks,
) -> Result<Bootstrapped, ConnectError> {
    let start = Instant::now();
    let mut ph = Phase {
        context,
        agents,
        hooks,
        unscanned: Vec::new(),
        failed: None,
        pipes,
        deadline: start + timeout,
        timeout,
        stderr: Vec::new(),
        stderr_open: pipes.stderr.is_some(),
        noise: Vec::new(),
        spoke: false,
    };
    if let Some(e) = pipes.stderr {
        let _ = side::set_nonblocking(e, true);
    }
    let text = text_phase(&mut ph)?;
    let (hello, decoder) = hello_phase(&mut ph, &text.leftover, max_message_size)?;
    Ok(Bootstrapped {
        hello,
        decoder,
        upload: text.upload,
        agent_bytes_sent: text.agent_bytes_sent,
        elapsed: start.elapsed(),
    })
}

/// What the text phase learned.
struct TextPhase {
    /// How the agent came to run.
    upload: Upload,
    /// Agent bytes written to stage0.
    agent_bytes_sent: usize,
    /// What followed the `READY` line: the start of the hello frame.
    leftover: Vec<u8>,
}

/// Reads stage0's lines until [`stage0::READY`], sending the agent when
/// asked; at most [`MAX_TEXT`] bytes in all (a target that never stops
/// talking is an error, not a growing buffer).
fn text_phase(ph: &mut Phase<'_>) -> Result<TextPhase, ConnectError> {
    let mut upload = if ph.hooks.stage0() { Upload::Cached } else { Upload::Direct };
    let mut agent_bytes_sent = 0;
    let mut lines = Lines::new(MAX_TEXT);
    let mut seen = 0usize;
    let mut buf = vec![0u8; 65536];
    loop {
        while let Some(raw) = lines.next_line() {
            let line = String::from_utf8_lossy(raw).trim_end_matches('\r').to_string();
            if line == stage0::READY {
                return Ok(TextPhase { upload, agent_bytes_sent, leftover: lines.finish().to_vec() });
            }
            agent_bytes_sent += on_line(ph, &line, &mut upload)?;
        }
        if seen > MAX_TEXT {
            return Err(ph.fail("more than 1 MiB of text before the agent started"));
        }
        match side::read(ph.pipes.rx, &mut buf) {
            Ok(Io::Done(n)) => {
                seen += n;
                if n > 0 && !ph.spoke {
                    ph.spoke = true;
                    ph.hooks.target_spoke();
                }
                lines.extend(&buf[..n]);
            }
            Ok(Io::WouldBlock) => {
                if !ph.wait(false) {
                    return Err(ph.timeout(if upload == Upload::Direct {
                        "waiting for the agent to start"
                    } else if upload == Upload::Cached {
                        "waiting for stage0"
                    } else {
                        "waiting for the uploaded agent to start"
                    }));
                }
            }
            Ok(Io::Closed) | Err(_) => {
                ph.drain_stderr_briefly();
                ph.noise.extend_from_slice(lines.finish());
                return Err(ph.fail("the target closed the connection before the agent started"));
            }
        }
    }
}

/// One line of stage0 (not `READY`): `MITO0 need …` sends the agent and
/// returns how many bytes; `MITOERR …` is the typed error it names;
/// anything else is noise, kept for the error message.
fn on_line(ph: &mut Phase<'_>, line: &str, upload: &mut Upload) -> Result<usize, ConnectError> {
    let context = ph.context;
    let mut words = line.split_whitespace();
    // Without stage0 every line before the marker is noise.
    let first = if ph.hooks.stage0() { words.next() } else { None };
    match first {
        Some(stage0::NEED) => {
            let _need = words.next();
            let arch = words.next().unwrap_or("");
            let how = words.next().unwrap_or("");
            let dir = words.next().unwrap_or("");
            let agent = find_agent(ph.agents, context, arch)?;
            let gzip = how == "gz";
            *upload = if dir == "memfd" { Upload::Memfd } else { Upload::Stored { dir: dir.to_string(), gzip } };
            if ph.hooks.serve_agent(arch, &agent, gzip) {
                log::debug!("[{context}] stage0 wants the {arch} agent ({how}) for {dir}: the hop sends it");
                return Ok(0);
            }
            let bytes = agent.bytes(gzip);
            log::debug!("[{context}] stage0 wants the {arch} agent ({how}) for {dir}: sending {} bytes", bytes.len());
            ph.write_all(&bytes)?;
            Ok(bytes.len())
        }
        Some(stage0::ERR) => {
            let what = words.next().unwrap_or("");
            let arg = words.next().unwrap_or("").to_string();
            ph.drain_stderr_briefly();
            Err(match what {
                "arch" => ConnectError::UnsupportedArch { context: context.into(), arch: arg, have: ph.agents.archs() },
                "noexec" => ConnectError::NoExecDir { context: context.into() },
                "write" => ConnectError::WriteFailed { context: context.into(), dir: arg },
                "verify" => ConnectError::VerifyFailed { context: context.into(), dir: arg },
                _ => ph.fail(format!("stage0 reported: {line}")),
            })
        }
        _ => {
            if !line.is_empty() {
                log::debug!("[{context}] bootstrap noise: {line}");
                ph.noise.extend_from_slice(line.as_bytes());
                ph.noise.push(b'\n');
            }
            Ok(0)
        }
    }
}

/// Reads the agent's first frame (starting with `leftover`): it must be a
/// [`Hello`] of this [`PROTOCOL_VERSION`]. Returns it and the decoder,
/// which may hold the start of the next frames.
fn hello_phase(ph: &mut Phase<'_>, leftover: &[u8], max_message_size: u32) -> Result<(Hello, Decoder), ConnectError> {
    let mut decoder = Decoder::new(max_message_size);
    let n = decoder.read_with(|b| {
        let n = leftover.len().min(b.len());
        b[..n].copy_from_slice(&leftover[..n]);
        n
    });
    decoder.filled(n);
    if n < leftover.len() {
        return Err(ph.fail("hello frame larger than expected"));
    }
    let hello_msg = loop {
        match decoder.next_message() {
            Ok(Some(m)) => break m,
            Ok(None) => {}
            Err(e) => return Err(ph.fail(format!("malformed first frame from the agent ({e:?})"))),
        }
        let r = decoder.read_with(|b| side::read(ph.pipes.rx, b));
        match r {
            Ok(Io::Done(n)) => decoder.filled(n),
            Ok(Io::WouldBlock) => {
                if !ph.wait(false) {
                    return Err(ph.timeout("waiting for the agent's hello"));
                }
            }
            Ok(Io::Closed) | Err(_) => return Err(ph.fail("the agent closed the connection before its hello")),
        }
    };
    if hello_msg.header.handle != handles::HELLO {
        return Err(ph.fail(format!("first frame went to handle {}, not HELLO", hello_msg.header.handle)));
    }
    let hello: Hello = postcard::from_bytes(&hello_msg.data).map_err(|e| ph.fail(format!("malformed hello: {e}")))?;
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(ConnectError::Version {
            context: ph.context.into(),
            got: hello.protocol_version,
            want: PROTOCOL_VERSION,
        });
    }
    Ok((hello, decoder))
}

/// The agent of `agents` to send for `arch`.
fn find_agent(agents: &AgentSet, context: &str, arch: &str) -> Result<Chosen, ConnectError> {
    agents.for_arch(arch).ok_or_else(|| ConnectError::UnsupportedArch {
        context: context.into(),
        arch: arch.into(),
        have: agents.archs(),
    })
}
