//! [`RemoteError`]: what a failed call sends back, typed.
//!
//! The agent fills in a kind and an errno and, where cheap, a static
//! message; the master adds the context name and turns errno into text, so
//! the agent carries no formatting machinery.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// What kind of failure a [`RemoteError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u16)]
pub enum ErrorKind {
    /// No function of that name in the context.
    UnknownFunction = 1,
    /// The arguments did not decode as the function's argument type.
    BadArgs = 2,
    /// A system call failed; `errno` says which error.
    Os = 3,
    /// A message or result would exceed the maximum message size.
    TooLarge = 4,
    /// No route to the destination context (it died or never existed).
    DeadRoute = 5,
    /// The sender has no authority to do this.
    NotPermitted = 6,
    /// The context is shutting down.
    ShuttingDown = 7,
    /// A malformed message or payload arrived.
    Protocol = 8,
    /// A bug in the agent: it should not happen.
    Internal = 9,
    /// A user's function (in a custom agent) returned an error; the
    /// message is its text ([`RemoteError::user`]).
    User = 10,
    /// A user's function panicked; the message says where and why. The
    /// agent goes on serving (a custom agent catches the unwind).
    Panicked = 11,
    /// The agent's user function of that name was declared with other
    /// types than the caller's (another
    /// [`declare_function!`](crate::declare_function)): the message is
    /// `name@<agent's signature>, called as @<caller's>`.
    SignatureMismatch = 12,
}

/// The error a context sends back instead of a reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The OS error number for [`ErrorKind::Os`], else 0.
    pub errno: i32,
    /// Detail: the function name, the path, the operation.
    pub message: String,
    /// Name of the context where it happened (filled in by the master).
    pub context: String,
    /// Causes, outermost first (for errors relayed across hops).
    pub causes: Vec<String>,
}

impl RemoteError {
    /// An error without errno.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RemoteError { kind, errno: 0, message: message.into(), context: String::new(), causes: Vec::new() }
    }

    /// An OS error: `op` names what was attempted (e.g. "open /etc/x").
    pub fn os(errno: i32, op: impl Into<String>) -> Self {
        RemoteError { errno, ..RemoteError::new(ErrorKind::Os, op) }
    }

    /// The error of a user's function: kind [`ErrorKind::User`] with its
    /// text as the message.
    pub fn user(message: impl Into<String>) -> Self {
        RemoteError::new(ErrorKind::User, message)
    }
}

/// A user's function may fail with a `String` (`Err(format!(…))`).
impl From<String> for RemoteError {
    fn from(message: String) -> Self {
        RemoteError::user(message)
    }
}

/// A user's function may fail with a `&str`.
impl From<&str> for RemoteError {
    fn from(message: &str) -> Self {
        RemoteError::user(message)
    }
}

/// A user's function may fail with an `io::Error` (`?` on `std::fs`): an OS
/// error keeps its errno (kind [`ErrorKind::Os`]), any other is
/// [`ErrorKind::User`] with its text.
#[cfg(feature = "std")]
impl From<std::io::Error> for RemoteError {
    fn from(e: std::io::Error) -> Self {
        use alloc::string::ToString;
        match e.raw_os_error() {
            Some(errno) => RemoteError::os(errno, ""),
            None => RemoteError::user(e.to_string()),
        }
    }
}

impl core::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = match self.kind {
            ErrorKind::UnknownFunction => "unknown function",
            ErrorKind::BadArgs => "bad arguments",
            ErrorKind::Os => "system error",
            ErrorKind::TooLarge => "too large",
            ErrorKind::DeadRoute => "no route to context",
            ErrorKind::NotPermitted => "not permitted",
            ErrorKind::ShuttingDown => "context is shutting down",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Internal => "internal error in agent",
            ErrorKind::User => "failed",
            ErrorKind::Panicked => "panicked",
            ErrorKind::SignatureMismatch => "declared differently in the agent",
        };
        if !self.context.is_empty() {
            write!(f, "on {}: ", self.context)?;
        }
        write!(f, "{what}")?;
        if !self.message.is_empty() {
            f.write_str(": ")?;
            write_escaped(f, &self.message)?;
        }
        #[cfg(feature = "std")]
        if self.errno != 0 {
            write!(f, ": {}", std::io::Error::from_raw_os_error(self.errno))?;
        }
        #[cfg(not(feature = "std"))]
        if self.errno != 0 {
            write!(f, ": errno {}", self.errno)?;
        }
        for c in &self.causes {
            f.write_str(": ")?;
            write_escaped(f, c)?;
        }
        Ok(())
    }
}

/// Most characters of a target's message or cause that are printed.
const SHOWN_CHARS: usize = 4096;

/// `s` (a target's words: an agent's error), escaped and cut at
/// [`SHOWN_CHARS`] (see [`write_escaped_text`]).
fn write_escaped(f: &mut core::fmt::Formatter<'_>, s: &str) -> core::fmt::Result {
    if write_escaped_text(f, s, SHOWN_CHARS)? > 0 {
        f.write_str(" …")?;
    }
    Ok(())
}

/// Writes `s` to `out` with control characters other than tab escaped
/// (`\u{1b}`, `\n`), at most `max_chars` characters of it; returns how
/// many were left out. Text from a target goes to terminals and logs,
/// where an escape sequence would act and a newline forge a line: the one
/// rule for all of it (`core::text::printable` too).
pub fn write_escaped_text(
    out: &mut impl core::fmt::Write,
    s: &str,
    max_chars: usize,
) -> Result<usize, core::fmt::Error> {
    for (n, c) in s.chars().enumerate() {
        if n == max_chars {
            return Ok(s.chars().count() - max_chars);
        }
        if c.is_control() && c != '\t' {
            for e in c.escape_default() {
                out.write_char(e)?;
            }
        } else {
            out.write_char(c)?;
        }
    }
    Ok(0)
}

impl core::error::Error for RemoteError {}
