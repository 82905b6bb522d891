//! [`Context`]: the master's handle to one agent, and calls into it.
//!
//! A call opens a one-shot mailbox (a handle) for the reply, sends
//! CALL_FUNCTION with `reply_to` set to it, and waits on the mailbox's
//! latch. Many calls may be in flight on one context ([`Context::call_async`]);
//! replies are matched by handle. A dead context fails every pending call at
//! once, and every wait has a deadline (the context's call timeout).

use std::marker::PhantomData;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use super::error::CallError;
use super::RouterState;
use crate::connect::bootstrap::Upload;
use crate::core::latch::{Latch, WaitError};
use crate::core::process_monitor::ExitStatus;
use crate::core::router::{Carrier, ContextShared, Delivery, Disconnected};
use crate::core::stream_in::{Pump, StreamIn};
use crate::proto::functions::{self as f, ExecArgs, ExecReply, Function, InfoReply, StatReply};
use crate::proto::message::encode_call;
use crate::proto::{handles, Header, Message, RemoteError, FLAG_ERROR, MASTER_ID};

/// Default limit for one call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// How the context came to be (from its bootstrap).
#[derive(Clone, Debug)]
pub struct ConnectInfo {
    /// The agent's pid (on its host).
    pub pid: u32,
    /// The agent's architecture.
    pub arch: String,
    /// The agent's hash (hex sha256).
    pub agent_hash: String,
    /// Where the agent runs from.
    pub exe: String,
    /// Cached, stored after upload, or memfd.
    pub upload: Upload,
    /// Agent bytes the master sent during bootstrap (0 when cached).
    pub agent_bytes_sent: usize,
    /// Spawn to hello.
    pub bootstrap_time: Duration,
    /// Pid of the local process that carries the stream (the agent itself
    /// for `local`, the `ssh` client for ssh).
    pub transport_pid: Option<u32>,
}

impl ConnectInfo {
    /// What a bootstrap found, with the pid of the local process carrying
    /// the stream, if any.
    pub(super) fn from_boot(boot: &crate::connect::bootstrap::Bootstrapped, transport_pid: Option<u32>) -> Self {
        ConnectInfo {
            pid: boot.hello.pid,
            arch: boot.hello.arch.clone(),
            agent_hash: boot.hello.agent_hash.clone(),
            exe: boot.hello.exe.clone(),
            upload: boot.upload.clone(),
            agent_bytes_sent: boot.agent_bytes_sent,
            bootstrap_time: boot.elapsed,
            transport_pid,
        }
    }
}

/// A connected context. Cheap to clone; all clones talk to the same agent.
///
/// Calls block until the reply (or the context's call timeout); files go
/// through streamed, checksummed transfers.
///
/// ```
/// use mito::{LocalOptions, Router};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let router = Router::new()?;
/// let ctx = router.local(LocalOptions::default())?;
/// let dir = std::env::temp_dir().join(format!("mito-doc-context-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// std::fs::write(dir.join("a"), b"data")?;
/// let sent = ctx.put(dir.join("a"), dir.join("b"))?; // sha256 checked on both ends
/// assert_eq!(sent.bytes, 4);
/// ctx.get(dir.join("b"), dir.join("c"))?;
/// assert_eq!(std::fs::read(dir.join("c"))?, b"data");
/// let r = ctx.exec(&["sh", "-c", "echo hi; exit 3"])?;
/// assert_eq!((r.status.code, &r.stdout[..]), (Some(3), &b"hi\n"[..]));
/// std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Context {
    pub(super) state: Arc<RouterState>,
    pub(super) shared: Arc<ContextShared>,
    info: Arc<ConnectInfo>,
    timeout: Option<Duration>,
}

/// A reply that has not arrived yet (from [`Context::call_async`]).
#[derive(Debug)]
#[must_use = "a Pending reply does nothing unless waited for"]
pub struct Pending<T> {
    state: Arc<RouterState>,
    shared: Arc<ContextShared>,
    function: &'static str,
    /// What the reply may inflate to (the function's bound, within the
    /// router's frame limit).
    max_reply: u32,
    handle: u32,
    latch: Arc<Latch<Delivery>>,
    timeout: Option<Duration>,
    sent: Instant,
    /// The agent's hash, for [`CallError::MissingFunction`].
    info: Arc<ConnectInfo>,
    /// The function's signature as this master declared it, for
    /// [`CallError::SignatureMismatch`].
    signature: Option<u64>,
    _reply: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Pending<T> {
    /// Waits for the reply until the context's call timeout.
    pub fn wait(self) -> Result<T, CallError> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        self.wait_until(deadline)
    }

    /// Waits until `deadline` (`None`: until the reply or a disconnect).
    pub fn wait_until(self, deadline: Option<Instant>) -> Result<T, CallError> {
        let msg = self.wait_message(deadline)?;
        decode_reply(&self.shared, self.function, &msg, self.max_reply)
    }

    /// The reply message itself (an error reply already turned into a
    /// [`CallError`]), for callers that decode it without copying.
    fn wait_message(&self, deadline: Option<Instant>) -> Result<Message, CallError> {
        let r = self.wait_reading(deadline);
        match r {
            Ok(Ok(msg)) => {
                self.shared.record_rtt(self.sent.elapsed());
                if msg.header.flags & FLAG_ERROR != 0 {
                    return decode_reply::<()>(&self.shared, self.function, &msg, self.max_reply)
                        .map(|()| msg)
                        .map_err(|e| typed_agent_error(e, &self.info, self.signature));
                }
                Ok(msg)
            }
            Ok(Err(d)) => Err(disconnected(&self.shared, self.function, d.reason)),
            Err(WaitError::Timeout) => {
                self.state.table.close_mailbox(self.handle);
                Err(CallError::Timeout {
                    context: self.shared.name.clone(),
                    function: self.function.into(),
                    timeout: self.timeout.unwrap_or_default(),
                })
            }
            Err(WaitError::Closed) => {
                let reason = self.shared.disconnected().map_or_else(|| "mailbox closed".into(), |d| d.reason);
                Err(disconnected(&self.shared, self.function, reason))
            }
        }
    }
}

impl Pending<ByteBuf> {
    /// Waits for a bytes reply and returns it without a copy: the postcard
    /// length prefix is cut off the received buffer in place.
    pub fn wait_bytes(self) -> Result<Vec<u8>, CallError> {
        let (mut data, start) = self.wait_bytes_in_place()?;
        data.drain(..start);
        Ok(data)
    }

    /// [`Pending::wait_bytes`] without moving the bytes to the front: the
    /// message buffer and where the bytes start in it (a 1 MiB `memmove`
    /// per chunk saved; the buffer can go back to the router's pool).
    pub(super) fn wait_bytes_in_place(self) -> Result<(Vec<u8>, usize), CallError> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let msg = self.wait_message(deadline)?;
        let bad = |detail: String| CallError::Decode {
            context: self.shared.name.clone(),
            function: self.function.into(),
            detail,
        };
        if msg.header.flags & crate::proto::FLAG_COMPRESSED != 0 {
            let b: ByteBuf = decode_reply(&self.shared, self.function, &msg, self.max_reply)?;
            return Ok((b.into_vec(), 0));
        }
        let (len, rest) = postcard::take_from_bytes::<u64>(&msg.data).map_err(|e| bad(e.to_string()))?;
        if len != rest.len() as u64 {
            return Err(bad(format!("length prefix {len} but {} bytes", rest.len())));
        }
        let prefix = msg.data.len() - rest.len();
        Ok((msg.data, prefix))
    }
}

impl<T: DeserializeOwned> Pending<T> {
    /// Waits for the reply. When replies take longer than a spin, the
    /// caller reads the stream itself if no one else is (see
    /// [`crate::core::stream_in`]): one thread wake-up instead of two.
    fn wait_reading(&self, deadline: Option<Instant>) -> Result<Delivery, WaitError> {
        let spin = self.shared.spin_worthwhile();
        if spin {
            return self.latch.get_spinning(deadline, true);
        }
        let Some(rx) = self.shared.rx.get() else { return self.latch.get(deadline) };
        loop {
            if let Some(d) = self.latch.try_get() {
                return Ok(d);
            }
            if self.latch.is_closed() {
                return Err(WaitError::Closed);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(WaitError::Timeout);
            }
            let Some(mut g) = rx.take_reader() else {
                // The broker or another caller reads: it delivers to us.
                return self.latch.get(deadline);
            };
            let until = deadline.unwrap_or(now + Duration::from_secs(3600));
            while let Some(r) = g.as_mut() {
                match StreamIn::pump(r, &self.state.table, self.shared.stream_id, &self.shared.name) {
                    Pump::Progress => {}
                    Pump::Drained => StreamIn::wait_readable(r, until),
                    // End of file or a bad frame: the broker closes the stream.
                    Pump::Closed(_) | Pump::Malformed(_) => break,
                }
                if self.latch.is_ready() || rx.is_closed() || Instant::now() >= until {
                    break;
                }
            }
            let done = g.is_none();
            rx.release(g);
            if done {
                return self.latch.get(deadline);
            }
            if !self.latch.is_ready() && !rx.is_closed() {
                // Let the broker see what we could not handle (EOF, errors).
                return self.latch.get(deadline);
            }
        }
    }
}

/// The reason already says how the context ended (the agent's goodbye, or
/// how its link and transport ended: see `core::router`).
pub(super) fn disconnected(shared: &ContextShared, function: &str, reason: String) -> CallError {
    // The context's own reason wins over what the router could say: an
    // ended context may already have left the router's table.
    let reason = shared.disconnected().map_or(reason, |d| d.reason);
    CallError::Disconnected { context: shared.name.clone(), function: function.into(), reason }
}

pub(super) fn decode_reply<T: DeserializeOwned>(
    shared: &ContextShared,
    function: &str,
    msg: &Message,
    max: u32,
) -> Result<T, CallError> {
    let bad = |detail: String| CallError::Decode { context: shared.name.clone(), function: function.into(), detail };
    let payload = msg.payload(max as usize).ok_or_else(|| bad("payload does not decompress".into()))?;
    if msg.header.flags & FLAG_ERROR != 0 {
        let mut e: RemoteError = postcard::from_bytes(&payload).map_err(|e| bad(format!("error payload: {e}")))?;
        e.context = shared.name.clone();
        return Err(CallError::Remote(e));
    }
    postcard::from_bytes(&payload).map_err(|e| bad(e.to_string()))
}

/// The agent's "unknown function" or "declared differently" for the
/// function called, as the typed [`CallError::MissingFunction`] or
/// [`CallError::SignatureMismatch`] naming the agent's hash: the running
/// agent is not the one with that function (another custom agent, the
/// embedded one, an older build), or was built from another declaration.
/// `signature` is the caller's (`Function::SIGNATURE`).
fn typed_agent_error(e: CallError, info: &ConnectInfo, signature: Option<u64>) -> CallError {
    use crate::proto::declare::split_signed_name;
    use crate::proto::ErrorKind;
    match e {
        CallError::Remote(r) if r.kind == ErrorKind::UnknownFunction => {
            // The agent names what it was sent: `name@<signature>` for a
            // user function.
            let function = split_signed_name(&r.message).0.to_string();
            CallError::MissingFunction { context: r.context, function, agent_hash: info.agent_hash.clone() }
        }
        CallError::Remote(r) if r.kind == ErrorKind::SignatureMismatch => {
            // `name@<agent's>, called as @<ours>` (user.rs); an agent that
            // says it otherwise still gets its text through.
            let ours = r.message.split_once(", called as").map_or(r.message.as_str(), |(a, _)| a);
            let (function, agent) = split_signed_name(ours);
            CallError::SignatureMismatch {
                context: r.context.clone(),
                function: function.to_string(),
                agent_hash: info.agent_hash.clone(),
                agent_signature: agent.map_or_else(|| r.message.clone(), |a| format!("{a:016x}")),
                master_signature: signature.map_or_else(|| "none".into(), |s| format!("{s:016x}")),
            }
        }
        other => other,
    }
}

/// Who carries the context's stream, for wording how it ended: for a
/// local transport, its name, and whether it is the agent itself (the pid
/// in the hello, running the file the hello named; a remote agent's pid
/// may equal a local one by chance, its executable there does not).
fn carrier(info: &ConnectInfo) -> Carrier {
    let transport = info.transport_pid.map(|pid| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        (pid, comm.trim_end().to_string())
    });
    let transport_is_agent = info.transport_pid == Some(info.pid)
        && std::fs::read_link(format!("/proc/{}/exe", info.pid))
            .is_ok_and(|exe| exe.as_os_str().as_bytes() == info.exe.as_bytes());
    Carrier { agent_pid: info.pid, transport, transport_is_agent }
}

/// A path as the agent takes it: its bytes, whatever their encoding.
pub(crate) fn path_bytes(p: &Path) -> ByteBuf {
    ByteBuf::from(p.as_os_str().as_bytes())
}

impl Context {
    pub(crate) fn new(state: Arc<RouterState>, shared: Arc<ContextShared>, info: ConnectInfo) -> Context {
        let _ = shared.carrier.set(carrier(&info));
        Context { state, shared, info: Arc::new(info), timeout: Some(DEFAULT_CALL_TIMEOUT) }
    }

    /// The context id (unique in this router's tree).
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// The name used in logs and errors.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Facts from the bootstrap.
    pub fn connect_info(&self) -> &ConnectInfo {
        &self.info
    }

    /// A handle to the same context whose calls wait at most `timeout`
    /// (`None`: until the reply or a disconnect).
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Context {
        Context { timeout, ..self.clone() }
    }

    /// Bytes the master has sent on the stream that carries this context:
    /// its own, or (behind a hop) the first hop's, shared by every context
    /// behind it. For measuring what crossed the first link.
    pub fn bytes_sent(&self) -> u64 {
        self.state.table.route(self.shared.stream_id).map_or(0, |o| o.bytes_sent())
    }

    /// Why the context is gone, if it is.
    pub fn disconnect_reason(&self) -> Option<String> {
        self.shared.disconnected().map(|d| d.reason)
    }

    /// How the context ended, if it has: its kind (a clean exit, a crash,
    /// a broken link, the master's doing) and the reason its calls report.
    pub fn disconnected(&self) -> Option<Disconnected> {
        self.shared.disconnected()
    }

    pub(super) fn send_call<F: Function>(&self, args: &F::Args, reply_to: u32) -> Result<(), CallError> {
        // A declared user function goes as `name@<signature>`, which the
        // agent checks against its own declaration (user.rs); built-ins
        // keep their bare names.
        let signed = F::SIGNATURE.map(|sig| crate::proto::declare::signed_name(F::NAME, sig));
        let payload = encode_call(signed.as_deref().unwrap_or(F::NAME), args).map_err(|e| CallError::Encode {
            context: self.shared.name.clone(),
            function: F::NAME.into(),
            detail: e.to_string(),
        })?;
        self.send_payload(F::NAME, &payload, reply_to)
    }

    /// Sends an already encoded call payload (see `encode_call`).
    fn send_payload(&self, function: &str, payload: &[u8], reply_to: u32) -> Result<(), CallError> {
        if payload.len() > self.state.table.max_message_size as usize {
            return Err(CallError::Encode {
                context: self.shared.name.clone(),
                function: function.into(),
                detail: format!("{} bytes is above the maximum message size", payload.len()),
            });
        }
        let h = Header {
            dst: self.shared.id,
            src: MASTER_ID,
            auth: MASTER_ID,
            handle: handles::CALL_FUNCTION,
            reply_to,
            ..Header::default()
        };
        let deadline = self.timeout.map(|t| Instant::now() + t);
        self.state.table.send_parts(&h, payload, deadline).map_err(|d| disconnected(&self.shared, function, d.reason))
    }

    /// [`Context::call_async`] with the payload already encoded as
    /// `encode_call(F::NAME, args)` would: large calls built in place.
    pub(super) fn call_async_encoded<F: Function>(&self, payload: &[u8]) -> Result<Pending<F::Reply>, CallError> {
        let (handle, p) = self.expect_reply::<F>();
        if let Err(e) = self.send_payload(F::NAME, payload, handle) {
            self.state.table.close_mailbox(handle);
            return Err(e);
        }
        Ok(p)
    }

    /// Starts a call and returns at once; many may be in flight.
    pub fn call_async<F: Function>(&self, args: &F::Args) -> Result<Pending<F::Reply>, CallError> {
        let (handle, p) = self.expect_reply::<F>();
        if let Err(e) = self.send_call::<F>(args, handle) {
            self.state.table.close_mailbox(handle);
            return Err(e);
        }
        Ok(p)
    }

    /// A mailbox for a reply to `F` that travels some other way than
    /// [`Context::call_async`] sends it (a relayed call): its handle, for
    /// `reply_to`, and the reply to wait for.
    pub(super) fn expect_reply<F: Function>(&self) -> (u32, Pending<F::Reply>) {
        let (handle, latch) = self.state.table.open_mailbox(self.shared.id, true);
        let p = Pending {
            state: self.state.clone(),
            shared: self.shared.clone(),
            function: F::NAME,
            max_reply: F::MAX_REPLY.min(self.state.table.max_message_size),
            handle,
            latch,
            timeout: self.timeout,
            sent: Instant::now(),
            info: self.info.clone(),
            signature: F::SIGNATURE,
            _reply: PhantomData,
        };
        (handle, p)
    }

    /// Calls `F` and waits for its reply.
    pub fn call<F: Function>(&self, args: &F::Args) -> Result<F::Reply, CallError> {
        self.call_async::<F>(args)?.wait()
    }

    /// Calls `F` without asking for a reply (errors are not reported).
    pub fn call_no_reply<F: Function>(&self, args: &F::Args) -> Result<(), CallError> {
        self.send_call::<F>(args, 0)
    }

    /// A round trip that does nothing.
    pub fn ping(&self) -> Result<(), CallError> {
        self.call::<f::Ping>(&())
    }

    /// Who and where the agent is.
    pub fn info(&self) -> Result<InfoReply, CallError> {
        self.call::<f::Info>(&())
    }

    /// Runs `argv` to completion, capturing its output.
    pub fn exec<S: AsRef<[u8]>>(&self, argv: &[S]) -> Result<ExecReply, CallError> {
        let args = ExecArgs { argv: argv.iter().map(|a| ByteBuf::from(a.as_ref())).collect(), ..ExecArgs::default() };
        self.call::<f::Exec>(&args)
    }

    /// Runs a command as described by `args`, capturing its output.
    pub fn exec_with(&self, args: &ExecArgs) -> Result<ExecReply, CallError> {
        self.call::<f::Exec>(args)
    }

    /// Reads a whole file (up to the maximum message size).
    pub fn read_file(&self, path: impl AsRef<Path>) -> Result<Vec<u8>, CallError> {
        self.call_async::<f::ReadFile>(&f::PathArgs { path: path_bytes(path.as_ref()) })?.wait_bytes()
    }

    /// Writes a whole file atomically; `mode` defaults to the existing
    /// file's mode, else 0o644.
    pub fn write_file(&self, path: impl AsRef<Path>, data: &[u8], mode: Option<u32>) -> Result<(), CallError> {
        self.call::<f::WriteFile>(&f::WriteFileArgs {
            path: path_bytes(path.as_ref()),
            data: ByteBuf::from(data),
            mode,
        })
    }

    /// `stat` (follows symlinks) of a path.
    pub fn stat(&self, path: impl AsRef<Path>) -> Result<StatReply, CallError> {
        self.call::<f::Stat>(&f::StatArgs { path: path_bytes(path.as_ref()), follow: true })
    }

    /// `lstat` (does not follow a final symlink) of a path.
    pub fn lstat(&self, path: impl AsRef<Path>) -> Result<StatReply, CallError> {
        self.call::<f::Stat>(&f::StatArgs { path: path_bytes(path.as_ref()), follow: false })
    }

    /// Removes a file, symlink or empty directory.
    pub fn remove(&self, path: impl AsRef<Path>) -> Result<(), CallError> {
        self.call::<f::Remove>(&f::PathArgs { path: path_bytes(path.as_ref()) })
    }

    /// Asks the agent to exit and waits for it (3 s, then SIGKILL); returns
    /// its exit status when the master spawned it.
    pub fn shutdown(&self) -> Option<ExitStatus> {
        if self.shared.disconnected().is_none() {
            let msg = Message::new(self.shared.id, MASTER_ID, handles::SHUTDOWN, 0, Vec::new());
            let _ = self.state.table.send(&msg, Some(Instant::now() + Duration::from_secs(1)));
        }
        if self.shared.gone.get(Some(Instant::now() + Duration::from_secs(3))) == Err(WaitError::Timeout) {
            log::warn!("[{}] agent did not exit within 3 s of SHUTDOWN; killing it", self.shared.name);
            super::process::kill_agent(&self.state, &self.shared);
            let _ = self.shared.gone.get(Some(Instant::now() + Duration::from_secs(2)));
        }
        *self.shared.exit.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
