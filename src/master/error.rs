//! [`CallError`]: why a call did not produce a reply, naming the context.

use std::time::Duration;

use thiserror::Error;

use crate::proto::RemoteError;

/// A failed call.
#[derive(Debug, Error)]
pub enum CallError {
    /// The function ran (or was looked up) and failed in the context.
    #[error("{0}")]
    Remote(RemoteError),
    /// The agent running in the context has no function of that name: it
    /// is another agent than the one that has it (the embedded agent, or
    /// another custom agent: `RouterOptions::agents`), or an older build.
    #[error(
        "{context}: {function}: the agent running there ({agent_hash}) has no function of that name; \
         is the router uploading the agent that has it (RouterOptions::agents)?"
    )]
    MissingFunction {
        /// Context name.
        context: String,
        /// Function called.
        function: String,
        /// Hex sha256 of the running agent.
        agent_hash: String,
    },
    /// The agent running in the context has a user function of that name
    /// but declared with other argument or reply types: it was built from
    /// another `declare_function!` than this master's (each call carries
    /// the declaration's signature, a hash of its name and types). The
    /// function was not run.
    #[error(
        "{context}: {function}: the agent running there ({agent_hash}) was built from another declaration of \
         this function (its signature {agent_signature}, this master's {master_signature}: the argument or \
         reply types differ); rebuild the agent from the same declaration as the master (mito build-agent)"
    )]
    SignatureMismatch {
        /// Context name.
        context: String,
        /// Function called.
        function: String,
        /// Hex sha256 of the running agent.
        agent_hash: String,
        /// The agent's signature of the function (16 hex digits).
        agent_signature: String,
        /// This master's signature of it (16 hex digits).
        master_signature: String,
    },
    /// The context is gone, before or while the call was pending; the
    /// reason says how: the agent exited (and why, in its own words), it
    /// crashed, or the link to it broke (see `core::router::EndKind`).
    #[error("{context}: {function}: {reason}")]
    Disconnected {
        /// Context name.
        context: String,
        /// Function called.
        function: String,
        /// Why the context is gone.
        reason: String,
    },
    /// No reply before the deadline.
    #[error("{context}: {function}: no reply within {timeout:?}")]
    Timeout {
        /// Context name.
        context: String,
        /// Function called.
        function: String,
        /// The limit.
        timeout: Duration,
    },
    /// The arguments could not be encoded (or are above the maximum size).
    #[error("{context}: {function}: cannot send the arguments: {detail}")]
    Encode {
        /// Context name.
        context: String,
        /// Function called.
        function: String,
        /// Why.
        detail: String,
    },
    /// Stdin for a command that has exited (or whose stdin was closed).
    #[error("{context}: exec: the command's stdin is closed (it exited or `close` was called)")]
    InputClosed {
        /// Context name.
        context: String,
    },
    /// The reply did not decode as the function's reply type.
    #[error("{context}: {function}: malformed reply: {detail}")]
    Decode {
        /// Context name.
        context: String,
        /// Function called.
        function: String,
        /// Why.
        detail: String,
    },
    /// The agent broke the protocol by sending more than the master
    /// allowed a streamed command (`what`: its "output" beyond the window,
    /// or "stdin acknowledgements" beyond the few it may have queued): a
    /// broken or hostile agent. The master refused the excess, killed the
    /// command, and disconnects the context if it keeps sending.
    #[error(
        "{context}: {function}: the agent sent {excess} bytes of {what} beyond its credit of {credit} bytes \
         (a broken or hostile agent); the command was killed"
    )]
    CreditExceeded {
        /// Context name.
        context: String,
        /// Function called.
        function: String,
        /// "output" or "stdin acknowledgements".
        what: String,
        /// How far beyond the credit it went, as the credit counts (each
        /// frame's bytes plus its cost), when the master last looked.
        excess: u64,
        /// The credit: what the master holds for the command at most.
        credit: u64,
    },
}

impl CallError {
    /// The remote error, if the context sent one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            CallError::Remote(e) => Some(e),
            _ => None,
        }
    }

    /// True if the context is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, CallError::Disconnected { .. })
    }
}
