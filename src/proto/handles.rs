//! Well-known handles: mailboxes that exist in every context.
//!
//! Handles below [`FIRST_DYNAMIC`] are fixed by the protocol; the others are
//! allocated per context for replies and streams.

/// A function call for the context's dispatcher (payload: name + args).
pub const CALL_FUNCTION: u32 = 1;
/// A log record travelling towards the master.
pub const FORWARD_LOG: u32 = 2;
/// From the master to a hop: a context below it is reachable through one
/// of its children (payload: [`crate::proto::message::AddRoute`]).
pub const ADD_ROUTE: u32 = 3;
/// From a hop upwards: a context below it is gone, and how the hop lost
/// it (payload: [`crate::proto::message::DelRoute`]).
pub const DEL_ROUTE: u32 = 4;
/// A request for a chunk of a resource, to the sender's parent (payload:
/// [`crate::proto::resource::GetResource`], `reply_to` set; reply: the
/// chunk's bytes, or an error). A hop answers it from its cache or asks
/// its own parent; it never passes a child's request on unchecked.
pub const GET_RESOURCE: u32 = 5;
/// Asks the context to shut down (no payload).
pub const SHUTDOWN: u32 = 6;
/// The agent's first message: version, arch, pid, hash.
pub const HELLO: u32 = 7;
/// Stdin, signals, credit and pty size for a running command
/// (payload: [`crate::proto::functions::ExecControl`]).
pub const EXEC_CONTROL: u32 = 8;
/// One message for several contexts below the receiver, which copies it to
/// each (payload: [`crate::proto::message::Relay`]): a file sent to many
/// contexts behind one hop crosses that hop once.
pub const RELAY: u32 = 9;
/// From an agent to the master, its last frame: it is exiting on purpose,
/// and why (payload: [`crate::proto::message::Goodbye`]). Behind a hop it
/// is an ordinary frame from the child, checked and forwarded like any.
pub const GOODBYE: u32 = 10;
/// From the master to a hop: a context behind it may fetch a resource
/// (payload: [`crate::proto::resource::Grant`]).
pub const GRANT_RESOURCE: u32 = 11;
/// First handle number allocated at run time.
pub const FIRST_DYNAMIC: u32 = 1000;
