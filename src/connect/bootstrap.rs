//! The master's side of stage0's text phase, up to the agent's hello.
//!
//! Reads stage0's marker lines (ignoring, but keeping for errors, any other
//! text a login script may print), uploads the agent when asked, then waits
//! for `MITO2` and the hello frame. An agent started directly, without
//! stage0 (`mito-agent HASH ID` executed inside a container by setns or
//! chroot; [`Hooks::stage0`] false, e.g. [`Direct`]), has no text phase:
//! only its own `MITO2` marker and hello are awaited, and a stage0 request
//! is not answered (nothing there reads an upload). One deadline covers
//! the whole phase; only after the hello does the stream go to the Broker,
//! with the decoder that already holds any bytes read past the hello.
//!
//! Map: [`Bootstrap`] is the phase machine (text, upload, hello, the drain
//! of stderr after a failure, a password waiting for echo off), advanced
//! without blocking: it says what it waits for ([`Want`]) and a driver
//! polls. [`run`] drives one with a blocking `poll` on the connecting
//! thread; `master::connect_many` drives many from one thread.

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
/// How long a password waits for the tool to turn its tty's echo off
/// before the bootstrap turns it off itself and types anyway.
const ECHO_WAIT: Duration = Duration::from_secs(1);
/// How often a waiting password looks at the tty's echo flag.
const ECHO_POLL: Duration = Duration::from_millis(1);

/// What a [`Bootstrap`] waits for before it can go on: readiness of the
/// process's fds, or a moment in time (its deadline, the end of a drain
/// of stderr, the next look at a tty's echo flag), whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    /// `rx` readable (stage0's text, the hello).
    pub rx: bool,
    /// `tx` writable (the agent being uploaded).
    pub tx: bool,
    /// `stderr` readable (prompts, the method's complaints).
    pub stderr: bool,
    /// Call [`Bootstrap::advance`] again at this moment at the latest.
    pub wake: Instant,
}

/// What one [`Bootstrap::advance`] came to.
#[derive(Debug)]
pub enum Step {
    /// Not done: advance again once what [`Want`] names is ready.
    Pending(Want),
    /// The agent said hello, or the bootstrap failed.
    Done(Box<Result<Bootstrapped, ConnectError>>),
}

/// The bootstrap of one context as a resumable state machine: each
/// [`Bootstrap::advance`] reads and writes the process's non-blocking fds
/// as far as they go without waiting and says what it waits for next
/// ([`Step::Pending`]), so one thread can drive many connects with one
/// `poll` over all of them (`master::connect_many`). [`run`] drives one
/// to its end with a blocking `poll`: the same machine, one
/// implementation.
///
/// The process, its fds and the method's [`Hooks`] stay the caller's; they
/// are passed to every call (the same ones each time).
#[derive(Debug)]
pub struct Bootstrap {
    context: String,
    start: Instant,
    deadline: Instant,
    timeout: Duration,
    max_message_size: u32,
    stage: Stage,
    /// Whether stage0 runs ([`Hooks::stage0`], asked once).
    stage0: bool,
    /// stderr since the last answer (what the prompt check sees).
    unscanned: Vec<u8>,
    /// Why a hook gave up.
    failed: Option<ConnectError>,
    /// The last [`STDERR_TAIL`] bytes of stderr, for errors.
    stderr: Vec<u8>,
    stderr_open: bool,
    /// stdout text that was not a marker, for errors.
    noise: Vec<u8>,
    /// Whether [`Hooks::target_spoke`] was called.
    spoke: bool,
    upload: Upload,
    agent_bytes_sent: usize,
    /// stage0's text, split into lines.
    lines: Lines,
    /// Bytes of text read so far (capped at [`MAX_TEXT`]).
    seen: usize,
    /// Agent bytes still to write to `tx`, and how many are written.
    out: Vec<u8>,
    out_at: usize,
    /// A password waiting for the tool's tty to turn echo off.
    answer: Option<PendingAnswer>,
    /// Whether stderr was made non-blocking (the first advance).
    primed: bool,
}

/// A bootstrap's end, on its way out of the machine's inner steps.
type Ended = Box<Result<Bootstrapped, ConnectError>>;

fn ended(e: ConnectError) -> Ended {
    Box::new(Err(e))
}

/// Where the machine is.
#[derive(Debug)]
enum Stage {
    /// stage0's lines, up to `READY` (and the upload it may ask for).
    Text,
    /// The agent's first frame.
    Hello(Decoder),
    /// Failed: stderr gets until `until` to say why, then `then` decides
    /// the error (a method's program may give up for its own reason at the
    /// same moment, and its words make the error typed).
    Drain { until: Instant, then: Finish },
    /// The result was handed out.
    Done,
}

/// The error a drain ends in.
#[derive(Debug)]
enum Finish {
    /// The deadline passed in this phase.
    Timeout(&'static str),
    /// The bootstrap failed for this reason (unless a hook or the
    /// method's classification says better).
    Fail(String),
    /// This error, whatever stderr says.
    Error(ConnectError),
}

#[derive(Debug)]
struct PendingAnswer {
    bytes: Vec<u8>,
    to: AnswerTo,
    since: Instant,
}

impl Bootstrap {
    /// A bootstrap of `context` that must reach the hello within `timeout`
    /// from now; `stage0` as the method's [`Hooks::stage0`] says.
    pub fn new(context: &str, timeout: Duration, max_message_size: u32, stage0: bool) -> Bootstrap {
        let start = Instant::now();
        Bootstrap {
            context: context.into(),
            start,
            deadline: start + timeout,
            timeout,
            max_message_size,
            stage: Stage::Text,
            stage0,
            unscanned: Vec::new(),
            failed: None,
            stderr: Vec::new(),
            stderr_open: true,
            noise: Vec::new(),
            spoke: false,
            upload: if stage0 { Upload::Cached } else { Upload::Direct },
            agent_bytes_sent: 0,
            lines: Lines::new(MAX_TEXT),
            seen: 0,
            out: Vec::new(),
            out_at: 0,
            answer: None,
            primed: false,
        }
    }

    /// The context's name.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Goes as far as the fds allow without waiting. `pipes` must have
    /// `rx`, `tx` (and `stderr`) non-blocking; the first call makes
    /// `stderr` so. After [`Step::Done`] the machine is spent (a further
    /// call is an error, not a panic).
    pub fn advance(&mut self, pipes: &Pipes<'_>, agents: &AgentSet, hooks: &mut dyn Hooks) -> Step {
        if pipes.stderr.is_none() {
            self.stderr_open = false;
        }
        let r = self.step(pipes, agents, hooks);
        match r {
            Ok(w) => Step::Pending(w),
            Err(e) => {
                self.stage = Stage::Done;
                Step::Done(e)
            }
        }
    }

    /// One advance: `Ok(want)` while pending, `Err(result)` when done.
    fn step(&mut self, pipes: &Pipes<'_>, agents: &AgentSet, hooks: &mut dyn Hooks) -> Result<Want, Ended> {
        if !self.primed {
            self.primed = true;
            if let Some(e) = pipes.stderr {
                let _ = side::set_nonblocking(e, true);
            }
        }
        loop {
            if let Stage::Drain { until, .. } = self.stage {
                self.read_stderr(pipes, hooks);
                if self.stderr_open && self.failed.is_none() && self.answer.is_none() && Instant::now() < until {
                    return Ok(Want { rx: false, tx: false, stderr: true, wake: until });
                }
                let Stage::Drain { then, .. } = std::mem::replace(&mut self.stage, Stage::Done) else {
                    unreachable!("matched above")
                };
                return Err(ended(self.finish(then, hooks)));
            }
            if matches!(self.stage, Stage::Done) {
                return Err(ended(ConnectError::Bootstrap {
                    context: self.context.clone(),
                    reason: "bootstrap advanced after it ended".into(),
                    output: String::new(),
                }));
            }
            if let Some(w) = self.try_answer(pipes) {
                return Ok(w);
            }
            self.read_stderr(pipes, hooks);
            if let Some(e) = self.failed.take() {
                return Err(ended(e));
            }
            if self.answer.is_some() {
                continue;
            }
            let blocked = if self.out_at < self.out.len() {
                self.write_agent(pipes)
            } else if matches!(self.stage, Stage::Text) {
                self.text(pipes, agents, hooks)?
            } else {
                self.hello(pipes, hooks)?
            };
            if !blocked {
                continue;
            }
            if Instant::now() >= self.deadline {
                // As a blocking wait would: a hook's reason first, then
                // a second for the method's own.
                let phase = self.phase();
                let until = Instant::now() + Duration::from_secs(1);
                self.stage = Stage::Drain { until, then: Finish::Timeout(phase) };
                continue;
            }
            let writing = self.out_at < self.out.len();
            return Ok(Want { rx: !writing, tx: writing, stderr: self.stderr_open, wake: self.deadline });
        }
    }

    /// Starts the short drain after a failure (200 ms, within the deadline).
    fn drain_then(&mut self, then: Finish) {
        let until = (Instant::now() + Duration::from_millis(200)).min(self.deadline);
        self.stage = Stage::Drain { until, then };
    }

    /// The phase a timeout names.
    fn phase(&self) -> &'static str {
        if self.out_at < self.out.len() {
            "sending the agent"
        } else if matches!(self.stage, Stage::Hello(_)) {
            "waiting for the agent's hello"
        } else if self.upload == Upload::Direct {
            "waiting for the agent to start"
        } else if self.upload == Upload::Cached {
            "waiting for stage0"
        } else {
            "waiting for the uploaded agent to start"
        }
    }

    fn output(&self) -> String {
        format_output(&self.stderr, &self.noise)
    }

    /// The error a failure ends in: a hook's, else the method's reading of
    /// stderr, else `then`'s own.
    fn finish(&mut self, then: Finish, hooks: &mut dyn Hooks) -> ConnectError {
        match then {
            Finish::Error(e) => e,
            Finish::Timeout(phase) => {
                if let Some(e) = self.failed.take() {
                    return e;
                }
                if let Some(e) = hooks.classify(&self.stderr) {
                    return e;
                }
                ConnectError::Timeout {
                    context: self.context.clone(),
                    phase,
                    timeout: self.timeout,
                    output: self.output(),
                }
            }
            Finish::Fail(reason) => self.fail(reason, hooks),
        }
    }

    fn fail(&mut self, reason: impl Into<String>, hooks: &mut dyn Hooks) -> ConnectError {
        if let Some(e) = self.failed.take() {
            return e;
        }
        if let Some(e) = hooks.classify(&self.stderr) {
            return e;
        }
        ConnectError::Bootstrap { context: self.context.clone(), reason: reason.into(), output: self.output() }
    }

    /// Types a pending password once the tool is ready for it: `Some`
    /// while it waits for the tty's echo to go off (at most [`ECHO_WAIT`],
    /// then echo is turned off here, so the password is never echoed back
    /// into output we keep).
    fn try_answer(&mut self, pipes: &Pipes<'_>) -> Option<Want> {
        let a = self.answer.as_ref()?;
        let target = match a.to {
            AnswerTo::Tty => {
                let fd = pipes.stderr?;
                if !echo_off(fd, a.since.elapsed() >= ECHO_WAIT) {
                    let wake = Instant::now() + ECHO_POLL;
                    return Some(Want { rx: false, tx: false, stderr: false, wake });
                }
                fd
            }
            AnswerTo::Stdin => pipes.tx,
        };
        let a = self.answer.take()?;
        // A password and a newline into an empty tty or pipe: a short
        // write loop.
        let mut rest = &a.bytes[..];
        let mut spins = 0;
        while !rest.is_empty() && spins < 1000 {
            match side::write(target, rest) {
                Ok(Io::Done(n)) => rest = &rest[n..],
                Ok(Io::WouldBlock) => {
                    spins += 1;
                    std::thread::sleep(Duration::from_micros(100));
                }
                _ => break,
            }
        }
        None
    }

    /// Reads what stderr has (without waiting), giving new text to the
    /// hooks; stops at an answer to type or a hook's failure.
    fn read_stderr(&mut self, pipes: &Pipes<'_>, hooks: &mut dyn Hooks) {
        let Some(fd) = pipes.stderr else { return };
        if !self.stderr_open || self.failed.is_some() || self.answer.is_some() {
            return;
        }
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
                    self.note_stdout(pipes, hooks);
                    match hooks.on_stderr(&self.unscanned) {
                        Prompt::Wait => {}
                        Prompt::Answer(bytes, to) => {
                            self.unscanned.clear();
                            self.answer = Some(PendingAnswer { bytes, to, since: Instant::now() });
                            return;
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
    fn note_stdout(&mut self, pipes: &Pipes<'_>, hooks: &mut dyn Hooks) {
        if self.spoke {
            return;
        }
        let mut fds = [PollFd::new(&pipes.rx, PollFlags::IN)];
        let now = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        if poll(&mut fds, Some(&now)).is_ok_and(|n| n > 0) {
            self.spoke = true;
            hooks.target_spoke();
        }
    }

    /// Writes agent bytes; true when `tx` is full (or the write failed and
    /// a drain started: false, so the drain runs).
    fn write_agent(&mut self, pipes: &Pipes<'_>) -> bool {
        while self.out_at < self.out.len() {
            match side::write(pipes.tx, &self.out[self.out_at..]) {
                Ok(Io::Done(n)) => self.out_at += n,
                Ok(Io::WouldBlock) => return true,
                Ok(Io::Closed) | Err(_) => {
                    self.drain_then(Finish::Fail("the target closed its input while the agent was being sent".into()));
                    return false;
                }
            }
        }
        self.out = Vec::new();
        self.out_at = 0;
        false
    }

    /// stage0's lines until [`stage0::READY`], at most [`MAX_TEXT`] bytes
    /// in all (a target that never stops talking is an error, not a
    /// growing buffer). Ok(true) when rx has nothing more for now.
    fn text(&mut self, pipes: &Pipes<'_>, agents: &AgentSet, hooks: &mut dyn Hooks) -> Result<bool, Ended> {
        let mut buf = vec![0u8; 65536];
        loop {
            while let Some(raw) = self.lines.next_line() {
                let line = String::from_utf8_lossy(raw).trim_end_matches('\r').to_string();
                if line == stage0::READY {
                    let leftover = self.lines.finish().to_vec();
                    self.lines = Lines::new(0);
                    return self.start_hello(&leftover, hooks).map(|()| false);
                }
                self.on_line(&line, agents, hooks).map_err(ended)?;
                if self.out_at < self.out.len() || matches!(self.stage, Stage::Drain { .. }) {
                    // The upload first; the drain decides.
                    return Ok(false);
                }
            }
            if self.seen > MAX_TEXT {
                return Err(ended(self.fail("more than 1 MiB of text before the agent started", hooks)));
            }
            match side::read(pipes.rx, &mut buf) {
                Ok(Io::Done(n)) => {
                    self.seen += n;
                    if n > 0 && !self.spoke {
                        self.spoke = true;
                        hooks.target_spoke();
                    }
                    self.lines.extend(&buf[..n]);
                }
                Ok(Io::WouldBlock) => return Ok(true),
                Ok(Io::Closed) | Err(_) => {
                    let rest = self.lines.finish().to_vec();
                    self.noise.extend_from_slice(&rest);
                    self.drain_then(Finish::Fail("the target closed the connection before the agent started".into()));
                    return Ok(false);
                }
            }
        }
    }

    /// One line of stage0 (not `READY`): `MITO0 need …` queues the agent;
    /// `MITOERR …` starts the drain that ends in the error it names;
    /// anything else is noise, kept for the error message.
    fn on_line(&mut self, line: &str, agents: &AgentSet, hooks: &mut dyn Hooks) -> Result<(), ConnectError> {
        let context = self.context.clone();
        let mut words = line.split_whitespace();
        // Without stage0 every line before the marker is noise.
        let first = if self.stage0 { words.next() } else { None };
        match first {
            Some(stage0::NEED) => {
                let _need = words.next();
                let arch = words.next().unwrap_or("");
                let how = words.next().unwrap_or("");
                let dir = words.next().unwrap_or("");
                let agent = find_agent(agents, &context, arch)?;
                let gzip = how == "gz";
                self.upload =
                    if dir == "memfd" { Upload::Memfd } else { Upload::Stored { dir: dir.to_string(), gzip } };
                if hooks.serve_agent(arch, &agent, gzip) {
                    log::debug!("[{context}] stage0 wants the {arch} agent ({how}) for {dir}: the hop sends it");
                    return Ok(());
                }
                let bytes = agent.bytes(gzip);
                log::debug!(
                    "[{context}] stage0 wants the {arch} agent ({how}) for {dir}: sending {} bytes",
                    bytes.len()
                );
                self.agent_bytes_sent += bytes.len();
                self.out = bytes;
                self.out_at = 0;
                Ok(())
            }
            Some(stage0::ERR) => {
                let what = words.next().unwrap_or("");
                let arg = words.next().unwrap_or("").to_string();
                let then = match what {
                    "arch" => Finish::Error(ConnectError::UnsupportedArch { context, arch: arg, have: agents.archs() }),
                    "noexec" => Finish::Error(ConnectError::NoExecDir { context }),
                    "write" => Finish::Error(ConnectError::WriteFailed { context, dir: arg }),
                    "verify" => Finish::Error(ConnectError::VerifyFailed { context, dir: arg }),
                    _ => Finish::Fail(format!("stage0 reported: {line}")),
                };
                self.drain_then(then);
                Ok(())
            }
            _ => {
                if !line.is_empty() {
                    log::debug!("[{context}] bootstrap noise: {line}");
                    self.noise.extend_from_slice(line.as_bytes());
                    self.noise.push(b'\n');
                }
                Ok(())
            }
        }
    }

    /// After `READY`: a decoder for the hello frame, holding `leftover`.
    fn start_hello(&mut self, leftover: &[u8], hooks: &mut dyn Hooks) -> Result<(), Ended> {
        let mut decoder = Decoder::new(self.max_message_size);
        let n = decoder.read_with(|b| {
            let n = leftover.len().min(b.len());
            b[..n].copy_from_slice(&leftover[..n]);
            n
        });
        decoder.filled(n);
        if n < leftover.len() {
            return Err(ended(self.fail("hello frame larger than expected", hooks)));
        }
        self.stage = Stage::Hello(decoder);
        Ok(())
    }

    /// Reads the agent's first frame: it must be a [`Hello`] of this
    /// [`PROTOCOL_VERSION`]. Ok(true) while rx has nothing more for now;
    /// the whole result once the frame is in.
    fn hello(&mut self, pipes: &Pipes<'_>, hooks: &mut dyn Hooks) -> Result<bool, Ended> {
        // The decoder is moved out while it reads, and back while pending.
        let Stage::Hello(mut decoder) = std::mem::replace(&mut self.stage, Stage::Done) else {
            return Ok(false);
        };
        let hello_msg = loop {
            match decoder.next_message() {
                Ok(Some(m)) => break m,
                Ok(None) => {}
                Err(e) => return Err(ended(self.fail(format!("malformed first frame from the agent ({e:?})"), hooks))),
            }
            match decoder.read_with(|b| side::read(pipes.rx, b)) {
                Ok(Io::Done(n)) => decoder.filled(n),
                Ok(Io::WouldBlock) => {
                    self.stage = Stage::Hello(decoder);
                    return Ok(true);
                }
                Ok(Io::Closed) | Err(_) => {
                    return Err(ended(self.fail("the agent closed the connection before its hello", hooks)))
                }
            }
        };
        if hello_msg.header.handle != handles::HELLO {
            let reason = format!("first frame went to handle {}, not HELLO", hello_msg.header.handle);
            return Err(ended(self.fail(reason, hooks)));
        }
        let hello: Hello = match postcard::from_bytes(&hello_msg.data) {
            Ok(h) => h,
            Err(e) => return Err(ended(self.fail(format!("malformed hello: {e}"), hooks))),
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(ended(ConnectError::Version {
                context: self.context.clone(),
                got: hello.protocol_version,
                want: PROTOCOL_VERSION,
            }));
        }
        Err(Box::new(Ok(Bootstrapped {
            hello,
            decoder,
            upload: self.upload.clone(),
            agent_bytes_sent: self.agent_bytes_sent,
            elapsed: self.start.elapsed(),
        })))
    }
}

/// Whether the tty's echo is off; with `force`, turns it off if it is
/// not. Not a tty (no termios, e.g. a socket behind a hop): nothing to
/// wait for.
fn echo_off(fd: BorrowedFd<'_>, force: bool) -> bool {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let Ok(mut t) = tcgetattr(fd) else { return true };
    if !t.local_modes.contains(LocalModes::ECHO) {
        return true;
    }
    if force {
        t.local_modes.remove(LocalModes::ECHO);
        let _ = tcsetattr(fd, OptionalActions::Now, &t);
        return true;
    }
    false
}

/// Runs the text phase, sending an agent of `agents` if stage0 asks for
/// one, and returns once the agent said hello: a [`Bootstrap`] driven to
/// its end with a blocking `poll` on this thread.
pub fn run(
    context: &str,
    pipes: &Pipes<'_>,
    timeout: Duration,
    max_message_size: u32,
    agents: &AgentSet,
    hooks: &mut dyn Hooks,
) -> Result<Bootstrapped, ConnectError> {
    let mut machine = Bootstrap::new(context, timeout, max_message_size, hooks.stage0());
    drive(&mut machine, pipes, agents, hooks)
}

/// Drives `machine` to its end on this thread, blocking in `poll` while
/// it waits.
pub fn drive(
    machine: &mut Bootstrap,
    pipes: &Pipes<'_>,
    agents: &AgentSet,
    hooks: &mut dyn Hooks,
) -> Result<Bootstrapped, ConnectError> {
    loop {
        let want = match machine.advance(pipes, agents, hooks) {
            Step::Done(r) => return *r,
            Step::Pending(w) => w,
        };
        wait(pipes, &want);
    }
}

/// Waits (blocking) until something `want` names is ready or its wake
/// time comes.
pub fn wait(pipes: &Pipes<'_>, want: &Want) {
    let mut fds = Vec::with_capacity(3);
    push_fds(pipes, want, &mut fds);
    let ms = want.wake.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32;
    // Round up: a poll that returns a little early would spin.
    let ms = if ms == 0 && want.wake > Instant::now() { 1 } else { ms };
    let ts = rustix::event::Timespec { tv_sec: i64::from(ms / 1000), tv_nsec: i64::from(ms % 1000) * 1_000_000 };
    if let Err(e) = poll(&mut fds, Some(&ts)) {
        if e != rustix::io::Errno::INTR {
            // Not expected (the fds are ours and open): do not spin.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The poll entries of `want` on `pipes`, appended to `fds`.
pub fn push_fds<'a>(pipes: &'a Pipes<'a>, want: &Want, fds: &mut Vec<PollFd<'a>>) {
    if want.rx {
        fds.push(PollFd::new(&pipes.rx, PollFlags::IN));
    }
    if want.tx {
        fds.push(PollFd::new(&pipes.tx, PollFlags::OUT));
    }
    if let (true, Some(e)) = (want.stderr, &pipes.stderr) {
        fds.push(PollFd::new(e, PollFlags::IN));
    }
}

/// The agent of `agents` to send for `arch`.
fn find_agent(agents: &AgentSet, context: &str, arch: &str) -> Result<Chosen, ConnectError> {
    agents.for_arch(arch).ok_or_else(|| ConnectError::UnsupportedArch {
        context: context.into(),
        arch: arch.into(),
        have: agents.archs(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use super::{wait, Bootstrap, NoHooks, Pipes, Step, Upload};
    use crate::connect::agents::AgentSet;
    use crate::connect::error::ConnectError;
    use crate::proto::header::Header;
    use crate::proto::message::Hello;
    use crate::proto::{handles, PROTOCOL_VERSION};

    fn hello_frame() -> Vec<u8> {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            arch: "x86_64".into(),
            pid: 42,
            agent_hash: "h".into(),
            exe: "e".into(),
        };
        let data = postcard::to_allocvec(&hello).expect("encode");
        let h = Header { dst: 0, src: 1, auth: 1, handle: handles::HELLO, len: data.len() as u32, ..Header::default() };
        let mut frame = h.encode().to_vec();
        frame.extend(data);
        frame
    }

    /// The machine's end, or `None` while it waits.
    fn ended(s: Step) -> Option<Result<super::Bootstrapped, ConnectError>> {
        match s {
            Step::Pending(_) => None,
            Step::Done(r) => Some(*r),
        }
    }

    /// Two bootstraps advanced from one thread: `advance` never waits for
    /// a silent target, one target's text arriving in pieces ends in its
    /// hello, and the silent one times out on its own deadline (no stderr
    /// to drain); a spent machine answers with an error, not a panic.
    #[test]
    fn machines_advance_without_blocking_and_keep_their_own_deadlines() {
        let agents = AgentSet::new(Vec::new());
        let (a, mut a_target) = UnixStream::pair().expect("pair");
        let (b, _b_target) = UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        let pa = Pipes { rx: a.as_fd(), tx: a.as_fd(), stderr: None };
        let pb = Pipes { rx: b.as_fd(), tx: b.as_fd(), stderr: None };
        let start = Instant::now();
        let mut ma = Bootstrap::new("a", Duration::from_secs(10), 1 << 20, true);
        let mut mb = Bootstrap::new("b", Duration::from_millis(300), 1 << 20, true);
        for _ in 0..3 {
            assert!(ended(ma.advance(&pa, &agents, &mut NoHooks)).is_none());
            assert!(ended(mb.advance(&pb, &agents, &mut NoHooks)).is_none());
        }
        assert!(start.elapsed() < Duration::from_millis(200), "advance waited: {:?}", start.elapsed());
        let frame = hello_frame();
        a_target.write_all(b"a login banner\nMITO2\n").expect("write");
        a_target.write_all(&frame[..10]).expect("write");
        assert!(ended(ma.advance(&pa, &agents, &mut NoHooks)).is_none(), "half a hello");
        a_target.write_all(&frame[10..]).expect("write");
        match ended(ma.advance(&pa, &agents, &mut NoHooks)) {
            Some(Ok(boot)) => {
                assert_eq!((boot.hello.pid, boot.upload, boot.agent_bytes_sent), (42, Upload::Cached, 0));
            }
            Some(Err(e)) => panic!("a: {e}"),
            None => panic!("a: still pending with its whole hello there"),
        }
        assert!(
            matches!(ended(ma.advance(&pa, &agents, &mut NoHooks)), Some(Err(ConnectError::Bootstrap { .. }))),
            "a spent machine"
        );
        let err = loop {
            match mb.advance(&pb, &agents, &mut NoHooks) {
                Step::Pending(w) => {
                    assert!(w.wake <= start + Duration::from_secs(2), "b wakes at its deadline");
                    wait(&pb, &w);
                }
                Step::Done(r) => break (*r).expect_err("b cannot succeed"),
            }
        };
        assert!(matches!(err, ConnectError::Timeout { phase: "waiting for stage0", .. }), "{err}");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "b ended after {took:?}");
    }
}
