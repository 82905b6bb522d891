//! The importer's wire types: a [`Resource`] the master registered, the
//! grant that lets a context fetch it, the chunked GET_RESOURCE request,
//! and the built-in `fetch_resource` function (ARCHITECTURE.md, "The
//! importer").
//!
//! A resource is named by its SHA-256; it travels in chunks of [`CHUNK`]
//! bytes, each asked for on its own (`GET_RESOURCE`, reply: the chunk's
//! bytes as a postcard `ByteBuf`, or a [`crate::proto::RemoteError`] with
//! `FLAG_ERROR`), so a hop caches and serves chunks without holding a
//! whole file, and a requester pipelines a few. Hashes travel as bytes
//! (`serde_bytes`): as a 32-tuple their decoder costs the agent ~2 KiB.

use alloc::string::String;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::proto::functions::{Commit, Function, SMALL_REPLY};

/// Bytes per chunk of a resource (the last one may be shorter).
pub const CHUNK: u32 = 1 << 20;

/// The most bytes of chunks a hop caches (least recently used out first).
/// A put through a hop goes through the importer only for files no bigger
/// than this: a bigger one could not stay cached whole, so a second put
/// would cross the first link again anyway.
pub const CACHE_BYTES: usize = 64 << 20;

/// A resource registered in the master (`Router::register_resource`):
/// what a context needs to fetch it and check what it got. Serializable,
/// so a program can pass it to its own functions as an argument.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resource {
    /// The name it was registered under (for people; the hash names it on
    /// the wire).
    pub name: String,
    /// SHA-256 of its bytes.
    #[serde(with = "serde_bytes")]
    pub sha256: [u8; 32],
    /// Its size in bytes.
    pub size: u64,
}

impl Resource {
    /// How many chunks it travels in (at least one: an empty resource is
    /// one empty chunk, so every fetch asks for something).
    pub fn chunks(&self) -> u32 {
        chunks(self.size)
    }
}

/// How many [`CHUNK`]s `size` bytes take (at least one).
pub fn chunks(size: u64) -> u32 {
    (size.div_ceil(u64::from(CHUNK)).max(1)).min(u64::from(u32::MAX)) as u32
}

/// The length of chunk `i` of a resource of `size` bytes (0 past its end).
pub fn chunk_len(size: u64, i: u32) -> usize {
    let start = u64::from(i) * u64::from(CHUNK);
    size.saturating_sub(start).min(u64::from(CHUNK)) as usize
}

/// A GET_RESOURCE request (to the sender's parent, `reply_to` set): chunk
/// `chunk` of the resource `sha256`, for context `for_context` (the
/// sender, or a context behind it whose request the sender relays).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetResource {
    /// The resource's hash.
    #[serde(with = "serde_bytes")]
    pub sha256: [u8; 32],
    /// Which chunk.
    pub chunk: u32,
    /// The context the resource was granted to.
    pub for_context: u32,
}

/// From the master to each hop on the path to `context`
/// (`handles::GRANT_RESOURCE`): `context` may fetch the resource
/// `sha256` of `size` bytes through this hop, which asks `parent` (its own
/// parent: a hop's id, or the master's) for chunks it does not have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The context the grant is for.
    pub context: u32,
    /// The resource's hash.
    #[serde(with = "serde_bytes")]
    pub sha256: [u8; 32],
    /// Its size (each chunk's length is checked against it).
    pub size: u64,
    /// The receiving hop's parent.
    pub parent: u32,
    /// The grant is withdrawn instead (a put through the importer is
    /// done: the hop keeps no grant per file put).
    pub revoke: bool,
}

/// Arguments of [`FetchResource`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchArgs {
    /// What to fetch.
    pub resource: Resource,
    /// The context's parent, which it asks (a hop's id, or the master's).
    pub parent: u32,
    /// Where to put it instead of the cache directory (a put through the
    /// importer, `Context::put` behind a hop), with put's semantics.
    pub dest: Option<PutTo>,
}

/// A fetch's destination (a put through the importer): written to a
/// temporary file beside `path`, its hash checked against the resource's,
/// then `commit`'s mode, mtime and owner (root only) set and the file
/// renamed over `path`, as `file_close` commits a streamed put.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutTo {
    /// The destination path.
    pub path: ByteBuf,
    /// What to set on it (its `sha256` is the resource's).
    pub commit: Commit,
    /// A handle of the caller's that gets an empty message for each chunk
    /// written (a put's progress; 0: none).
    pub progress: u32,
}

/// `fetch_resource`: the context fetches a resource granted to it (chunks
/// from its parent, which serves them from its cache or asks its own),
/// checks its hash, and replies with the path of a file holding it (mode
/// 0700: usable as a helper executable): `res-<sha256>` in the agent's
/// cache directory, else a memfd's `/proc/<pid>/fd/<n>`. With
/// [`FetchArgs::dest`], the file goes there instead (see [`PutTo`]) and
/// the reply is that path.
#[derive(Clone, Copy, Debug)]
pub struct FetchResource;

impl Function for FetchResource {
    const NAME: &'static str = "fetch_resource";
    type Args = FetchArgs;
    type Reply = ByteBuf;
    const MAX_REPLY: u32 = SMALL_REPLY;
}
