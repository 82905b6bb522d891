//! The built-ins of delta sync (`mito sync`, `Context::sync`): their
//! names and argument/reply types, one [`Function`] impl each.
//!
//! Map of a sync (master side `master/sync.rs`, agent side `agent/sync.rs`):
//! - [`SyncList`] — the whole destination tree in one reply: names (bytes),
//!   kinds, sizes, mtimes, modes, link targets; `lstat` only, walked with
//!   `O_NOFOLLOW` directory fds. Each entry names its parent by index, so
//!   the master rebuilds paths without trusting a path from the target.
//! - [`SyncBegin`] — opens the old file (if any) and a temp file beside it;
//!   [`SyncSignature`] — the old file's block signatures (rolling weak sum
//!   and XXH3-128 per block), asked in bounded slices;
//!   [`SyncDelta`] — copy-block / literal ops, in bounded messages;
//!   [`SyncCommit`] — whole-file XXH3-128 check, mode, mtime, rename into
//!   place; [`SyncAbort`] — drop the temp file.
//!
//! Both hashes are `crate::core::xxh3` (XXH3-128, canonical big-endian
//! bytes), as rsync uses xxh3: SHA-256 was three passes over a changed
//! file at ~0.3 GB/s where XXH3 runs at several GB/s. XXH3 is not a
//! cryptographic hash, and need not be here: both ends are the user's
//! (the master reads its own files; a target can only lie about its own
//! destination, which it could write anyway), and the whole-file check
//! catches a block collision or a corrupted copy.
//! - [`SyncApply`] — the tree's other changes in one call: mkdir, remove
//!   (never following a symlink), symlink, chmod, directory mtime; an op
//!   that fails is reported in [`SyncApplied`] and the others still run
//!   (one unwritable directory does not stop a sync, as in rsync).
//!
//! Every path an agent gets here is a trusted root (the destination the
//! user named) plus a relative path the agent walks component by
//! component with `O_NOFOLLOW`, so nothing is written through a symlink
//! found below the root.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::functions::{function, FileKind, Function, SMALL_REPLY};

function!(
    /// The destination tree, in one reply: a [`SyncListing`] in postcard's
    /// encoding, as bytes (the agent encodes each entry as it walks, with
    /// [`ListingBuilder`], instead of building a `SyncEntry` per entry;
    /// the master decodes the bytes as a `SyncListing`).
    SyncList, "sync_list", SyncListArgs, ByteBuf, max = crate::proto::MAX_MESSAGE_SIZE
);
function!(
    /// Starts rebuilding one file: old file opened, temp file created.
    SyncBegin, "sync_begin", SyncBeginArgs, u64, small
);
function!(
    /// Block signatures of a slice of the old file.
    SyncSignature, "sync_signature", SyncSignatureArgs, SyncSignatures, max = SIGNATURE_REPLY
);
function!(
    /// Appends to the new file: blocks of the old one and literal bytes.
    SyncDelta, "sync_delta", SyncDeltaArgs, (), small
);
function!(
    /// Checks the new file's XXH3-128 and size, sets mode, owner and mtime,
    /// renames it into place.
    SyncCommit, "sync_commit", SyncCommitArgs, (), small
);
function!(
    /// Drops a rebuild: its temp file is unlinked.
    SyncAbort, "sync_abort", u32, (), small
);
function!(
    /// Tree changes other than file contents, in order; replies which
    /// failed (the others are done). Fails as a whole only when the root
    /// cannot be created or opened.
    SyncApply, "sync_apply", SyncApplyArgs, SyncApplied, max = crate::proto::MAX_MESSAGE_SIZE
);

/// The most a [`SyncSignature`] reply may inflate to: the master asks
/// at most 65,536 blocks a slice (5 + 16 bytes each at most).
pub const SIGNATURE_REPLY: u32 = 4 << 20;

/// Arguments of [`SyncList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncListArgs {
    /// The destination root (followed if a symlink: the user named it).
    pub root: ByteBuf,
    /// The most entries the caller accepts; more is an error, not a cut.
    pub max_entries: u32,
}

/// What [`SyncList`]'s reply bytes decode as: the tree below the root,
/// each directory's entries after the directory's own entry (so a parent
/// index is always smaller than its child's). `root` is `None` when the root does not
/// exist (then `entries` is empty); its name is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncListing {
    /// The root itself (its `lstat`, or its `stat` when it is a symlink
    /// to a directory), if it exists.
    pub root: Option<SyncEntry>,
    /// The entries, depth first.
    pub entries: Vec<SyncEntry>,
}

/// Parent index of an entry directly in the root.
pub const ROOT_PARENT: u32 = u32::MAX;

/// One entry of a [`SyncListing`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEntry {
    /// Index of the parent directory's entry, or [`ROOT_PARENT`].
    pub parent: u32,
    /// One file name (bytes).
    pub name: ByteBuf,
    /// File, directory, symlink or other.
    pub kind: FileKind,
    /// Permission bits.
    pub mode: u32,
    /// Size (files).
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Its nanoseconds.
    pub mtime_nsec: u32,
    /// A symlink's target (empty otherwise).
    pub link: ByteBuf,
}

/// A [`SyncEntry`] borrowed, encoded by hand as postcard encodes a
/// `SyncEntry` (see [`ListingBuilder`]).
#[derive(Clone, Copy, Debug)]
pub struct EntryRef<'a> {
    /// [`SyncEntry::parent`].
    pub parent: u32,
    /// [`SyncEntry::name`].
    pub name: &'a [u8],
    /// [`SyncEntry::kind`].
    pub kind: FileKind,
    /// [`SyncEntry::mode`].
    pub mode: u32,
    /// [`SyncEntry::size`].
    pub size: u64,
    /// [`SyncEntry::mtime`].
    pub mtime: i64,
    /// [`SyncEntry::mtime_nsec`].
    pub mtime_nsec: u32,
    /// [`SyncEntry::link`].
    pub link: &'a [u8],
}

impl EntryRef<'_> {
    /// Appends postcard's encoding of the `SyncEntry` this is: its fields
    /// in order, integers as varints (the signed mtime zigzagged), the
    /// kind as its variant's index, byte strings length first. By hand,
    /// so the agent links no serde serializer for it (the unit test holds
    /// it to postcard's).
    fn encode(&self, out: &mut Vec<u8>) {
        varint(out, u64::from(self.parent));
        byte_string(out, self.name);
        varint(out, self.kind as u64);
        varint(out, u64::from(self.mode));
        varint(out, self.size);
        varint(out, ((self.mtime << 1) ^ (self.mtime >> 63)) as u64);
        varint(out, u64::from(self.mtime_nsec));
        byte_string(out, self.link);
    }
}

/// postcard's varint (LEB128) of `v`.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn byte_string(out: &mut Vec<u8>, b: &[u8]) {
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A [`SyncListing`]'s encoding built one entry at a time: entries are
/// appended as postcard bytes, and [`ListingBuilder::finish`] puts the
/// root and the entry count in front. The bytes decode as a
/// `SyncListing`.
#[derive(Default)]
pub struct ListingBuilder {
    body: Vec<u8>,
    count: u64,
}

impl ListingBuilder {
    /// Entries pushed so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether none was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the entries so far.
    pub fn encoded_len(&self) -> usize {
        self.body.len()
    }

    /// Appends an entry.
    pub fn push(&mut self, e: &EntryRef<'_>) {
        e.encode(&mut self.body);
        self.count += 1;
    }

    /// The listing's encoding: `root` (an option: 0, or 1 and the
    /// entry), the number of entries, the entries.
    pub fn finish(self, root: Option<&EntryRef<'_>>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 80);
        match root {
            None => out.push(0),
            Some(r) => {
                out.push(1);
                r.encode(&mut out);
            }
        }
        varint(&mut out, self.count);
        out.extend_from_slice(&self.body);
        out
    }
}

/// Arguments of [`SyncBegin`]; the reply is the old file's size (0 when
/// `old` is false).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncBeginArgs {
    /// The caller's id for this rebuild (unique among its open ones).
    pub id: u32,
    /// The destination root.
    pub root: ByteBuf,
    /// The file below it, `/`-separated single names.
    pub rel: ByteBuf,
    /// Whether to open the existing file as the old one (a regular file,
    /// not through a symlink).
    pub old: bool,
    /// Block size of the signatures and copy ops.
    pub block_size: u32,
}

/// Arguments of [`SyncSignature`]: blocks `first..first+count` (the
/// file's last block is its short tail, if its size is not a multiple).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSignatureArgs {
    /// The rebuild.
    pub id: u32,
    /// First block.
    pub first: u64,
    /// Number of blocks.
    pub count: u32,
}

/// Reply of [`SyncSignature`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSignatures {
    /// The rolling (rsync) weak sum of each block.
    pub weak: Vec<u32>,
    /// Each block's XXH3-128 ([`STRONG_LEN`] bytes, big-endian), concatenated.
    pub strong: ByteBuf,
}

/// Bytes of a block's strong hash: a whole XXH3-128 (the whole file's
/// XXH3-128 is checked anyway, so a collision cannot go unnoticed).
pub const STRONG_LEN: usize = 16;

/// One op of a [`SyncDelta`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaOp {
    /// `count` blocks of the old file from block `block` (the last one
    /// may be the file's short tail).
    Copy {
        /// First block.
        block: u64,
        /// Blocks.
        count: u32,
    },
    /// Literal bytes.
    Data(ByteBuf),
}

/// Arguments of [`SyncDelta`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncDeltaArgs {
    /// The rebuild.
    pub id: u32,
    /// Applied in order.
    pub ops: Vec<DeltaOp>,
}

/// Arguments of [`SyncCommit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCommitArgs {
    /// The rebuild.
    pub id: u32,
    /// Size of the new file.
    pub size: u64,
    /// Its XXH3-128 (16 bytes, big-endian).
    pub xxh3: ByteBuf,
    /// Permission bits.
    pub mode: u32,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, u32),
    /// Owner, applied when the agent is root.
    pub owner: (u32, u32),
}

/// One change of a [`SyncApply`]; `rel` is below the root, `/`-separated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TreeOp {
    /// Create a directory (an existing directory is fine) with this mode.
    Mkdir {
        /// Where.
        rel: ByteBuf,
        /// Permission bits.
        mode: u32,
    },
    /// Remove whatever is there (a directory with its contents; a symlink
    /// as a link). Missing is fine.
    Remove {
        /// What.
        rel: ByteBuf,
    },
    /// Create a symlink (replacing what is there, but a directory).
    Symlink {
        /// Where.
        rel: ByteBuf,
        /// Its target, as is.
        target: ByteBuf,
    },
    /// Set mode and mtime of a directory or file (not through a symlink).
    SetMeta {
        /// What.
        rel: ByteBuf,
        /// Permission bits.
        mode: u32,
        /// Modification time (seconds, nanoseconds), if to be set.
        mtime: Option<(i64, u32)>,
    },
}

/// Arguments of [`SyncApply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncApplyArgs {
    /// The destination root (created first if `create_root`).
    pub root: ByteBuf,
    /// Create the root directory (and missing parents) if it is missing.
    pub create_root: Option<u32>,
    /// The changes, in order.
    pub ops: Vec<TreeOp>,
}

/// Reply of [`SyncApply`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncApplied {
    /// Ops done.
    pub done: u32,
    /// The ops that failed: their index in [`SyncApplyArgs::ops`] and why.
    pub failed: Vec<(u32, crate::proto::RemoteError)>,
}

/// rsync's rolling weak checksum of a window: `a` is the sum of the
/// bytes, `b` the sum of `a` over the window's prefixes (both mod 2^16);
/// sliding by one byte costs two additions and a multiplication, which is
/// what lets the master find a block of the old file at any offset of the
/// new one (an insertion shifts everything after it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rolling {
    a: u32,
    b: u32,
    len: u32,
}

impl Rolling {
    /// The sum of `window`.
    pub fn new(window: &[u8]) -> Rolling {
        let (mut a, mut b) = (0u32, 0u32);
        for &x in window {
            a = a.wrapping_add(u32::from(x));
            b = b.wrapping_add(a);
        }
        Rolling { a, b, len: window.len() as u32 }
    }

    /// Slides the window one byte: `out` leaves at the front, `inn` enters
    /// at the back.
    #[inline]
    pub fn roll(&mut self, out: u8, inn: u8) {
        self.a = self.a.wrapping_sub(u32::from(out)).wrapping_add(u32::from(inn));
        self.b = self.b.wrapping_sub(self.len.wrapping_mul(u32::from(out))).wrapping_add(self.a);
    }

    /// The 32-bit sum (`a` low, `b` high).
    #[inline]
    pub fn sum(&self) -> u32 {
        (self.a & 0xffff) | (self.b << 16)
    }
}

/// Why a name from a target's listing is not a single file name, if it
/// is not: empty, `.`, `..`, longer than 255 bytes, with a `/` or a NUL.
pub fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name == b"." || name == b".." {
        Some("a dot name")
    } else if name.len() > 255 {
        Some("longer than 255 bytes")
    } else if name.contains(&b'/') {
        Some("contains '/'")
    } else if name.contains(&0) {
        Some("contains a NUL byte")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_matches_a_fresh_sum_at_every_offset() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let w = 700;
        let mut r = Rolling::new(&data[..w]);
        for i in 0..data.len() - w {
            assert_eq!(r.sum(), Rolling::new(&data[i..i + w]).sum(), "offset {i}");
            r.roll(data[i], data[i + w]);
        }
    }

    #[test]
    fn a_built_listing_decodes_as_a_sync_listing() {
        let e = |parent: u32, name: &'static [u8], kind, link: &'static [u8]| SyncEntry {
            parent,
            name: ByteBuf::from(name.to_vec()),
            kind,
            mode: 0o4755,
            size: u64::MAX - 1,
            mtime: -1_234_567_890_123,
            mtime_nsec: 999_999_999,
            link: ByteBuf::from(link.to_vec()),
        };
        let r = |x: &'static SyncEntry| EntryRef {
            parent: x.parent,
            name: &x.name,
            kind: x.kind,
            mode: x.mode,
            size: x.size,
            mtime: x.mtime,
            mtime_nsec: x.mtime_nsec,
            link: &x.link,
        };
        let entries: &'static [SyncEntry] = alloc::vec![
            e(ROOT_PARENT, b"d", FileKind::Dir, b""),
            e(0, b"\xff link", FileKind::Symlink, b"../x"),
            e(ROOT_PARENT, b"f", FileKind::File, b""),
        ]
        .leak();
        let root: &'static SyncEntry =
            alloc::boxed::Box::leak(alloc::boxed::Box::new(e(ROOT_PARENT, b"", FileKind::Dir, b"")));
        for n in [0, 3, 300] {
            let mut b = ListingBuilder::default();
            let want: Vec<SyncEntry> = entries.iter().cycle().take(n).cloned().collect();
            for x in entries.iter().cycle().take(n) {
                b.push(&r(x));
            }
            let bytes = b.finish(Some(&r(root)));
            let got: SyncListing = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(got, SyncListing { root: Some(root.clone()), entries: want }, "{n} entries");
        }
        let bytes = ListingBuilder::default().finish(None);
        assert_eq!(postcard::from_bytes::<SyncListing>(&bytes).expect("decodes"), SyncListing::default());
    }

    #[test]
    fn hostile_names_are_refused() {
        for n in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b", &[b'x'; 256][..]] {
            assert!(bad_name(n).is_some(), "{n:?}");
        }
        for n in [&b"a"[..], b"...", b".hidden", b"\xff\xfe", &[b'x'; 255][..]] {
            assert_eq!(bad_name(n), None, "{n:?}");
        }
    }
}
