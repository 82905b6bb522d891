//! A routed message and the payload types that are not function-specific.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::header::{Header, FLAG_COMPRESSED, HEADER_LEN};

/// One message: routing header plus (possibly compressed) payload bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Routing information; `header.len` equals `data.len()` on the wire.
    pub header: Header,
    /// The payload as sent (still compressed if the flag says so).
    pub data: Vec<u8>,
}

impl Message {
    /// A message with the given routing and payload.
    pub fn new(dst: u32, src: u32, handle: u32, reply_to: u32, data: Vec<u8>) -> Self {
        let header = Header { flags: 0, dst, src, auth: src, handle, reply_to, len: data.len() as u32 };
        Message { header, data }
    }

    /// The payload, inflated if it was compressed; `None` if it does not
    /// inflate within `max` bytes.
    pub fn payload(&self, max: usize) -> Option<alloc::borrow::Cow<'_, [u8]>> {
        if self.header.flags & FLAG_COMPRESSED != 0 {
            super::compress::decompress(&self.data, max).map(alloc::borrow::Cow::Owned)
        } else {
            Some(alloc::borrow::Cow::Borrowed(&self.data))
        }
    }
}

/// The agent's first message, on handle [`super::handles::HELLO`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`super::PROTOCOL_VERSION`] of the agent.
    pub protocol_version: u16,
    /// The agent's `uname -m` architecture as compiled in.
    pub arch: String,
    /// The agent's process id.
    pub pid: u32,
    /// The hash stage0 verified before exec (hex sha256), as passed in argv.
    pub agent_hash: String,
    /// Where the agent runs from (`/proc/self/exe`), to tell cache from memfd.
    pub exe: String,
}

/// Where a forwarded log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogSource {
    /// The agent's own diagnostics.
    Agent,
    /// A line written to the agent's fd 1 (by it or a child that inherited it).
    Stdout,
    /// A line written to the agent's fd 2.
    Stderr,
}

/// How severe a forwarded log line is (as `log::Level`).
///
/// On the wire it is the one byte it always was (postcard's `u8`): 1 error,
/// 2 warn, 3 info, 4 debug, 5 trace. A derived enum would encode its
/// variant index instead (a varint from 0), so the conversion goes through
/// `u8` and the protocol version stays. A byte outside 1..=5 from an agent
/// reads as the master always read it: 0 as an error, above 5 as trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
#[repr(u8)]
pub enum LogLevel {
    /// Something failed (the agent's own diagnostics: a malformed frame).
    Error = 1,
    /// A warning; lines written to the agent's fd 2.
    Warn = 2,
    /// Information; lines written to the agent's fd 1.
    Info = 3,
    /// Detail for debugging.
    Debug = 4,
    /// Finest detail.
    Trace = 5,
}

impl From<LogLevel> for u8 {
    fn from(level: LogLevel) -> u8 {
        level as u8
    }
}

impl From<u8> for LogLevel {
    fn from(byte: u8) -> LogLevel {
        match byte {
            0 | 1 => LogLevel::Error,
            2 => LogLevel::Warn,
            3 => LogLevel::Info,
            4 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }
}

/// A log line forwarded to the master on [`super::handles::FORWARD_LOG`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// Which pipe or subsystem produced it.
    pub source: LogSource,
    /// The line without its newline; bytes, because programs print anything.
    pub line: ByteBuf,
}

/// Payload of [`super::handles::ADD_ROUTE`]: messages for context `id` go
/// towards `via`, a context the receiver already reaches (its child, or a
/// context routed through one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRoute {
    /// The new context.
    pub id: u32,
    /// The next context on its path from the receiver.
    pub via: u32,
}

/// Payload of [`super::handles::GOODBYE`]: why an agent exits on purpose.
/// It is the agent's last frame, so the master reports a clean exit or a
/// crash in the agent's own words instead of guessing from the stream's
/// end. An agent that loses its parent says nothing (there is no one to
/// tell); its parent's side reports the broken link. Strings are borrowed
/// so that the panic handler can encode one without allocating
/// ([`goodbye_frame`]); the master treats them as a target's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Goodbye<'a> {
    /// Its parent sent [`super::handles::SHUTDOWN`].
    Shutdown,
    /// A termination signal arrived (SIGHUP, SIGINT or SIGTERM): its number.
    Signal(i32),
    /// It cannot go on: what failed, and the errno (0: none).
    Fatal {
        /// What failed ("malformed frame from its parent", "epoll_wait").
        what: &'a str,
        /// The OS error, or 0.
        errno: i32,
    },
    /// A panic: a bug, or the heap ran out. What the agent can say about
    /// it without `core::fmt` ("memory allocation failed", or nothing).
    Panic(&'a str),
}

/// Encodes `bye` from context `src` to the master as one frame (header and
/// payload) into `buf`, without allocating; returns the frame's length, or
/// `None` if it does not fit. The agent's panic handler writes the result
/// straight to the parent fd.
pub fn goodbye_frame(src: u32, bye: &Goodbye<'_>, buf: &mut [u8]) -> Option<usize> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let (head, body) = buf.split_at_mut(HEADER_LEN);
    let n = postcard::to_slice(bye, body).ok()?.len();
    let h = Header {
        dst: super::MASTER_ID,
        src,
        auth: src,
        handle: super::handles::GOODBYE,
        len: n as u32,
        ..Header::default()
    };
    head.copy_from_slice(&h.encode());
    Some(HEADER_LEN + n)
}

/// How a hop lost the stream of one of its children (in [`DelRoute`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkEnd {
    /// End of file on the child's stream (EIO and ECONNRESET read the
    /// same: see `core::side::read`).
    Eof,
    /// A read from the child's stream failed with this errno.
    ReadError(i32),
    /// The child sent a malformed frame: the hop closed its stream.
    Malformed,
    /// The child took nothing of its queue for the hop's stall limit: the
    /// hop killed its command and closed its stream.
    Stalled,
    /// The command that carried the stream ended and the stream stayed
    /// open (another process holds it): the hop closed it.
    CommandEnded,
    /// Lost with the hop's child of this id, which it was reached through.
    Behind(u32),
}

/// Payload of [`super::handles::DEL_ROUTE`]: context `id`, below the
/// sender, is gone. Sent when the hop lost the child stream it was reached
/// through, with what the hop saw; if the child said goodbye first, that
/// frame went up before this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelRoute {
    /// The context that is gone.
    pub id: u32,
    /// How the hop lost it.
    pub end: LinkEnd,
    /// The hop's pid of the command that carried the child's stream (the
    /// agent itself when stage0 exec'd it in place, else ssh, sudo, …);
    /// 0 with [`LinkEnd::Behind`].
    pub pid: u32,
    /// That command's exit, if it had ended.
    pub status: Option<super::ExitStatus>,
}

/// Payload of [`super::handles::RELAY`]: one message for several contexts
/// at or below the receiver. Each copy keeps the relay's `src` and `auth`;
/// `targets` gives each its `dst` and `reply_to`. The receiver delivers its
/// own copy, sends one plain message where a single target lies behind a
/// child, and one smaller relay where several do: every link carries the
/// bytes once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay<'a> {
    /// `(dst, reply_to)` per copy.
    pub targets: Vec<(u32, u32)>,
    /// Handle of every copy.
    pub handle: u32,
    /// Header flags of every copy (e.g. compressed).
    pub flags: u16,
    /// The payload, as sent (not decoded by the hops).
    #[serde(with = "serde_bytes", borrow)]
    pub data: &'a [u8],
}

/// The encoded [`Relay`] up to its data: `targets`, `handle`, `flags` and
/// the data's length. Followed by `data_len` bytes it is the relay's wire
/// form, so a large payload can be framed in place without a copy.
pub fn relay_front(
    targets: &[(u32, u32)],
    handle: u32,
    flags: u16,
    data_len: usize,
) -> Result<Vec<u8>, postcard::Error> {
    let front = postcard::to_allocvec(targets)?;
    let front = postcard::to_extend(&handle, front)?;
    let front = postcard::to_extend(&flags, front)?;
    postcard::to_extend(&data_len, front)
}

/// Encodes a call's payload: the function name, then its arguments, both
/// postcard; the agent reads the name first and decodes the rest by type.
/// Both go into one buffer: a 1 MiB `file_write` chunk is copied once.
pub fn encode_call<A: Serialize>(name: &str, args: &A) -> Result<Vec<u8>, postcard::Error> {
    let out = postcard::to_allocvec(name)?;
    postcard::to_extend(args, out)
}

/// Splits a call payload into the function name and the encoded arguments.
pub fn decode_call(data: &[u8]) -> Result<(&str, &[u8]), postcard::Error> {
    postcard::take_from_bytes::<&str>(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_goodbye_frame_is_built_in_place_and_decodes() {
        let bye = Goodbye::Panic("memory allocation failed");
        let mut buf = [0u8; 128];
        let n = goodbye_frame(42, &bye, &mut buf).expect("fits");
        let h = Header::decode(buf[..HEADER_LEN].try_into().expect("header"), 1 << 20).expect("header decodes");
        assert_eq!((h.dst, h.src, h.auth, h.handle), (0, 42, 42, super::super::handles::GOODBYE));
        assert_eq!(h.len as usize, n - HEADER_LEN);
        assert_eq!(postcard::from_bytes::<Goodbye<'_>>(&buf[HEADER_LEN..n]), Ok(bye));
        assert_eq!(goodbye_frame(42, &bye, &mut buf[..HEADER_LEN + 4]), None, "too small: no frame");
    }

    #[test]
    fn a_log_level_is_the_byte_it_always_was() {
        for (level, byte) in [
            (LogLevel::Error, 1u8),
            (LogLevel::Warn, 2),
            (LogLevel::Info, 3),
            (LogLevel::Debug, 4),
            (LogLevel::Trace, 5),
        ] {
            assert_eq!(postcard::to_allocvec(&level).expect("encode"), postcard::to_allocvec(&byte).expect("encode"));
            assert_eq!(postcard::from_bytes::<LogLevel>(&[byte]), Ok(level));
        }
        assert_eq!(postcard::from_bytes::<LogLevel>(&[0]), Ok(LogLevel::Error));
        assert_eq!(postcard::from_bytes::<LogLevel>(&[200]), Ok(LogLevel::Trace));
        let rec = LogRecord { level: LogLevel::Warn, source: LogSource::Stderr, line: ByteBuf::from(&b"x"[..]) };
        assert_eq!(postcard::to_allocvec(&rec).expect("encode"), [2, 2, 1, b'x']);
    }

    #[test]
    fn relay_front_and_data_are_the_relay() {
        let data = alloc::vec![9u8; 300];
        let targets = alloc::vec![(5, 1001), (70_000, 1_000_000)];
        let whole = postcard::to_allocvec(&Relay { targets: targets.clone(), handle: 1, flags: 2, data: &data })
            .expect("encode");
        let mut framed = relay_front(&targets, 1, 2, data.len()).expect("front");
        framed.extend_from_slice(&data);
        assert_eq!(framed, whole);
    }
}
