//! [`Dispatcher`]: the calls the parent makes (CALL_FUNCTION), from their
//! name to their reply.
//!
//! A call is a function name and its postcard arguments
//! ([`crate::proto::functions`]); [`Dispatcher::on_call`] decodes the
//! arguments by the name's type, runs the function and queues the reply in
//! the [`Outbox`], in the one table below (the `call!` macro covers the
//! functions whose reply is their result). The functions themselves live
//! in [`super::builtins`], [`super::files`], [`super::fs`] and
//! [`super::facts`]; `exec` starts a command in [`Commands`], which
//! replies when it ends. What a call needs between calls (the agent's
//! identity, the serial of `write_file`'s temporary names, the open files
//! of streamed transfers) is kept here.
//!
//! Bytes replies (`read_file`, `file_read`) are built in place in a frame
//! ([`bytes_frame`]) instead of going through postcard and the generic send.

use alloc::vec::Vec;

use serde_bytes::ByteBuf;

use super::builtins::{self, Identity};
use super::commands::Commands;
use super::files::{self, FileTable};
use super::frames::FrameReader;
use super::outbox::Outbox;
use super::panic_goodbye::doing;
use super::{facts, fs, sync};
use crate::core::poller::Poller;
use crate::proto::functions::{self as f, Function};
use crate::proto::message::decode_call;
use crate::proto::resource::{FetchArgs, FetchResource};
use crate::proto::sync as s;
use crate::proto::{ErrorKind, Header, Message, RemoteError, MASTER_ID};

/// Runs calls, and keeps what the functions keep between them.
pub struct Dispatcher {
    /// The agent's hash and path (the `info` function, the hello).
    ident: Identity,
    /// Numbers `write_file`'s temporary files.
    serial: u64,
    /// The open files of streamed transfers.
    files: FileTable,
    /// The open rebuilds of delta sync.
    sync: super::sync::SyncTable,
    /// A custom agent's own functions (`user.rs`), asked for any name
    /// that is not a built-in's.
    #[cfg(feature = "std")]
    user: super::user::Registry,
}

impl Dispatcher {
    /// A dispatcher for the agent `ident`, with no open files.
    pub fn new(ident: Identity) -> Dispatcher {
        #[cfg(not(feature = "std"))]
        return Dispatcher { ident, serial: 0, files: FileTable::default(), sync: Default::default() };
        #[cfg(feature = "std")]
        Dispatcher::with_functions(ident, super::user::Registry::default())
    }

    /// A dispatcher that also runs the user's `functions` (a custom agent).
    #[cfg(feature = "std")]
    pub fn with_functions(ident: Identity, functions: super::user::Registry) -> Dispatcher {
        Dispatcher { ident, serial: 0, files: FileTable::default(), sync: Default::default(), user: functions }
    }

    /// The agent's hash and path.
    pub fn identity(&self) -> &Identity {
        &self.ident
    }

    /// Drops the unfinished file writes (their temporary files go): the
    /// agent is going.
    pub fn discard_files(&mut self) {
        self.files.discard_all();
        self.sync.discard_all();
    }

    /// Runs the call in `m` (from the parent only) and queues its reply;
    /// `exec` starts a command in `commands`, which replies when it ends.
    /// A `file_write` chunk's buffer goes back to `inbox` for the next.
    /// A `fetch_resource` is returned with its arguments: the loop's
    /// importer runs it (and replies when it ends).
    pub fn on_call(
        &mut self,
        m: Message,
        poller: &Poller,
        out: &mut Outbox,
        inbox: &mut FrameReader,
        commands: &mut Commands,
    ) -> Option<(Header, FetchArgs)> {
        let h = m.header;
        let fail = |out: &mut Outbox, kind, what| {
            out.reply_error(&h, RemoteError::new(kind, what));
            None
        };
        if h.auth != MASTER_ID {
            return fail(out, ErrorKind::NotPermitted, "calls are accepted from the parent only");
        }
        let Some(payload) = m.payload(out.max() as usize) else {
            return fail(out, ErrorKind::Protocol, "payload does not decompress");
        };
        let Ok((name, args)) = decode_call(&payload) else {
            return fail(out, ErrorKind::Protocol, "malformed call");
        };
        doing(name);
        fn decode<F: Function>(args: &[u8]) -> Result<F::Args, RemoteError> {
            postcard::from_bytes(args).map_err(|_| RemoteError::new(ErrorKind::BadArgs, F::NAME))
        }
        let max = out.max() as usize - 64;
        // `call!(F, |a| body)`: decode F's arguments as `a`, run `body`
        // (a Result), reply. The arms below it need more than that.
        macro_rules! call {
            ($f:ty, |$a:pat_param| $body:expr) => {{
                let r = decode::<$f>(args).and_then(|$a| $body);
                out.reply(&h, r)
            }};
        }
        match name {
            f::Ping::NAME => call!(f::Ping, |()| Ok(())),
            f::Info::NAME => call!(f::Info, |()| Ok(builtins::info(&self.ident))),
            f::Stat::NAME => call!(f::Stat, |a| builtins::stat(a)),
            f::Remove::NAME => call!(f::Remove, |a| builtins::remove(a)),
            f::WriteFile::NAME => {
                self.serial += 1;
                let serial = self.serial;
                call!(f::WriteFile, |a| builtins::write_file(a, serial))
            }
            f::FileOpenRead::NAME => {
                // Chunks will queue behind each other: reuse their buffers.
                out.keep_spares(crate::core::stream::MAX_SPARES);
                call!(f::FileOpenRead, |a| self.files.open_read(&a.path, a.hash))
            }
            f::FileOpenWrite::NAME => call!(f::FileOpenWrite, |a| self.files.open_write(&a.path, a.id, a.hash)),
            f::FileWrite::NAME => {
                let r = postcard::from_bytes::<f::FileWriteRef<'_>>(args)
                    .map_err(|_| RemoteError::new(ErrorKind::BadArgs, f::FileWrite::NAME))
                    .and_then(|a| self.files.write(a.id, a.data));
                out.reply(&h, r);
                // The chunk's buffer serves the next chunk.
                if let alloc::borrow::Cow::Borrowed(_) = payload {
                    drop(payload);
                    inbox.recycle(m.data);
                }
            }
            f::FileClose::NAME => {
                call!(f::FileClose, |a| self.files.close(a.id, a.commit));
                // The last get ended: an idle agent holds no window.
                if !self.files.reading() {
                    out.keep_spares(1);
                }
            }
            f::Sha256::NAME => call!(f::Sha256, |a| files::sha256_file(&a.path).map(|d| ByteBuf::from(&d[..]))),
            f::FileHash::NAME => {
                call!(f::FileHash, |a| files::hash_file(&a.path, a.hash).map(|d| ByteBuf::from(d.as_bytes())))
            }
            f::Facts::NAME => call!(f::Facts, |()| Ok(facts::gather())),
            f::ListDir::NAME => call!(f::ListDir, |a| fs::list_dir(&a.path)),
            f::MakeDirs::NAME => call!(f::MakeDirs, |a| fs::make_dirs(&a.path, a.mode)),
            f::Chmod::NAME => call!(f::Chmod, |a| fs::chmod(&a.path, a.mode)),
            f::Chown::NAME => call!(f::Chown, |a| fs::chown(&a.path, a.uid, a.gid, a.follow)),
            f::Symlink::NAME => call!(f::Symlink, |a| fs::symlink(&a.target, &a.path)),
            f::ReadLink::NAME => call!(f::ReadLink, |a| fs::read_link(&a.path)),
            f::Rename::NAME => call!(f::Rename, |a| fs::rename(&a.from, &a.to)),
            f::RemoveTree::NAME => call!(f::RemoveTree, |a| fs::remove_tree(&a.path)),
            f::DiskUsage::NAME => call!(f::DiskUsage, |a| fs::disk_usage(&a.path)),
            s::SyncList::NAME => call!(s::SyncList, |a| sync::list(&a.root, a.max_entries)),
            s::SyncBegin::NAME => call!(s::SyncBegin, |a| self.sync.begin(&a)),
            s::SyncSignature::NAME => call!(s::SyncSignature, |a| self.sync.signature(a.id, a.first, a.count)),
            s::SyncDelta::NAME => call!(s::SyncDelta, |a| self.sync.delta(a.id, &a.ops)),
            s::SyncCommit::NAME => call!(s::SyncCommit, |a| self.sync.commit(&a)),
            s::SyncAbort::NAME => call!(s::SyncAbort, |a| self.sync.abort(a)),
            s::SyncApply::NAME => call!(s::SyncApply, |a| sync::apply(&a)),
            // Bytes replies are built in place (no copies of the data).
            f::ReadFile::NAME => match decode::<f::ReadFile>(args) {
                Ok(a) => {
                    let buf = out.take_spare();
                    let frame = bytes_frame(buf, &h, out.id(), |frame| builtins::read_into(&a.path, max, frame));
                    out.reply_bytes(&h, frame)
                }
                Err(e) => out.reply_error(&h, e),
            },
            f::FileRead::NAME => match decode::<f::FileRead>(args) {
                Ok(a) => {
                    let len = (a.len as usize).min(max);
                    let buf = out.take_spare();
                    let mut frame = bytes_frame(buf, &h, out.id(), |frame| self.files.read(a.id, len, frame));
                    if a.compress {
                        frame = frame.map(files::deflate_reply);
                    }
                    out.reply_bytes(&h, frame)
                }
                Err(e) => out.reply_error(&h, e),
            },
            FetchResource::NAME => match decode::<FetchResource>(args) {
                Ok(a) => return Some((h, a)),
                Err(e) => out.reply_error(&h, e),
            },
            // exec replies later, when the command ends.
            f::Exec::NAME => match decode::<f::Exec>(args).and_then(|a| commands.start(a, &h, poller, out)) {
                Ok(()) => {}
                Err(e) => out.reply_error(&h, e),
            },
            #[cfg(feature = "std")]
            _ => match self.user.call(name, args) {
                Some(Ok(data)) if data.len() <= max => {
                    let id = out.id();
                    let r = Header { dst: h.src, src: id, auth: id, handle: h.reply_to, ..Header::default() };
                    if h.reply_to != 0 {
                        out.push(&r, &data);
                    }
                }
                Some(Ok(_)) => out.reply_error(&h, RemoteError::new(ErrorKind::TooLarge, name)),
                Some(Err(e)) => out.reply_error(&h, e),
                None => out.reply_error(&h, RemoteError::new(ErrorKind::UnknownFunction, name)),
            },
            #[cfg(not(feature = "std"))]
            _ => out.reply_error(&h, RemoteError::new(ErrorKind::UnknownFunction, name)),
        }
        None
    }
}

/// A bytes reply to `h` built in place (in `frame`, a reused buffer when
/// there is one): `fill` appends the bytes straight
/// into the frame (header, postcard length prefix, bytes), which the
/// transmit buffer then takes without copying. Returns the frame and where
/// it starts. (The generic path copied a large reply three more times:
/// staging buffer, postcard, transmit buffer.)
pub fn bytes_frame(
    mut frame: Vec<u8>,
    h: &Header,
    me: u32,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<usize, RemoteError>,
) -> Result<(Vec<u8>, usize), RemoteError> {
    // Room for the header and the longest length prefix (10 bytes).
    const ROOM: usize = crate::proto::HEADER_LEN + 10;
    frame.clear();
    frame.resize(ROOM, 0);
    let n = fill(&mut frame)?;
    let mut prefix = [0u8; 10];
    let k = postcard::to_slice(&(n as u64), &mut prefix).map_or(0, |p| p.len());
    let start = ROOM - k;
    frame[start..ROOM].copy_from_slice(&prefix[..k]);
    let len = (frame.len() - ROOM + k) as u32;
    let hdr = Header { dst: h.src, src: me, auth: me, handle: h.reply_to, len, ..Header::default() }.encode();
    frame[start - crate::proto::HEADER_LEN..start].copy_from_slice(&hdr);
    Ok((frame, start - crate::proto::HEADER_LEN))
}
