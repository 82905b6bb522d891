//! The wire format, shared by master and agent (`no_std`).
//!
//! Map:
//! - [`header`] — the fixed 28-byte little-endian frame header and its flags.
//!   **Architecture invariant:** the router reads only this; a hop that
//!   forwards a message never decodes its payload.
//! - [`handles`] — well-known handle numbers (mailboxes) every context has.
//! - [`message`] — payload types (hello, calls, logs) encoded with postcard.
//! - [`functions`] — the built-in functions' names and argument/reply types,
//!   one [`functions::Function`] impl each, so both halves agree on types.
//! - [`error`] — [`RemoteError`], the typed error that travels instead of text.
//! - [`compress`] — optional deflate of large payloads (flag bit).
//! - [`declare`] — `declare_function!`, a user's own function (custom agents).
//! - [`resource`] — the importer: resources, grants, chunked GET_RESOURCE,
//!   the `fetch_resource` built-in.
//! - [`sync`] — delta sync's built-ins (`sync_list`, `sync_begin`, `sync_signature`,
//!   `sync_delta`, `sync_commit`, `sync_abort`, `sync_apply`) and the rolling checksum.

pub mod compress;
pub mod declare;
pub mod error;
pub mod exit;
pub mod functions;
pub mod handles;
pub mod header;
pub mod message;
pub mod resource;
pub mod sync;

pub use error::{ErrorKind, RemoteError};
pub use exit::ExitStatus;
pub use header::{Header, FLAG_COMPRESSED, FLAG_ERROR, HEADER_LEN, MAGIC};
pub use message::Message;

/// Protocol version announced in the agent's hello; the master refuses any
/// other number with an error naming both. 7: `FetchArgs::dest` and
/// `Grant::revoke` (puts through the importer) and `ExecOp::SendResource`
/// (agents of another architecture from a hop's importer cache), which an
/// agent of version 6 would drop as malformed. 8: transfers hash with
/// XXH3-128 by default (`HashKind` in `OpenReadArgs`, `OpenWriteArgs`;
/// `Commit::digest`, `FileClosed::digest`; the `file_hash` function;
/// `FileReadArgs::compress`, for `get --compress`). 9: `sync_list`
/// replies the listing's encoded bytes, `sync_apply` a `SyncApplied` (per
/// op failures), and a resource chunk from the master may come deflated
/// (`FLAG_COMPRESSED`: a put with `--compress` through the importer).
pub const PROTOCOL_VERSION: u16 = 9;

/// Largest payload a stream accepts by default (checked before allocating).
pub const MAX_MESSAGE_SIZE: u32 = 128 * 1024 * 1024;

/// Context id of the master (the root of every tree).
pub const MASTER_ID: u32 = 0;
