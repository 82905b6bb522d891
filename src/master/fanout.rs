//! Fan-out: one local file put to many contexts at once, crossing each
//! link once ([`put_many`]).
//!
//! Contexts that share a first hop get every chunk as one RELAY message to
//! that hop, which copies it towards each target (and, where several lie
//! behind one of its children, sends that child one smaller relay). The
//! chunk is a `file_write` call whose bytes are the same for every target:
//! each transfer is opened with the same caller-chosen id. Each target
//! hashes and commits on its own, so a checksum still covers every copy end
//! to end. Flow control is the single-target window, counted per chunk:
//! a chunk leaves the window when every target has acknowledged it.
//!
//! A target that fails (disk full, permission, lost) is dropped from later
//! chunks and gets its own error; the others carry on. No send waits for
//! ever: a plain call waits for room until the target's call timeout, a
//! relay until the first hop's stream has taken nothing for
//! [`SEND_TIMEOUT`](crate::core::stream_out::SEND_TIMEOUT); a target behind a
//! hop that stops reading is dropped by its hop (see
//! `agent::children`) and fails at once. Waits for
//! acknowledgements end at each target's call timeout.

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use serde_bytes::ByteBuf;

use super::context::{Context, Pending};
use super::error::CallError;
use super::transfer::{
    agrees, hash_file, local, Chunk, CopyOptions, Digest, HashKind, Progress, TransferError, TransferStats, WINDOW,
};
use crate::core::xxh3::Hasher;
use crate::proto::functions::{self as f, Commit, FileCloseArgs, Function, OpenWriteArgs};
use crate::proto::message::relay_front;
use crate::proto::{handles, Header, FLAG_COMPRESSED, MASTER_ID};

/// One chunk in flight: each target's acknowledgement to come, and its size.
type InFlight = (Vec<(usize, Pending<()>)>, u64);

/// Caller-chosen transfer ids (top bit set, so never one an agent picks).
fn transfer_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    0x8000_0000 | (NEXT.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff)
}

/// Copies the local file `src` to `remote` in every context of `targets`,
/// keeping mode and mtime (and owner where the receiver is root), with one
/// result per target in the same order. See the module docs for how the
/// bytes travel. `progress` counts each chunk once (when all targets have it).
pub fn put_many(
    targets: &[Context],
    src: impl AsRef<Path>,
    remote: impl AsRef<Path>,
    progress: Progress<'_>,
) -> Vec<Result<TransferStats, TransferError>> {
    put_many_with_options(targets, src, remote, &CopyOptions::default(), progress)
}

/// [`put_many`], and whether to compare first ([`CopyOptions`]): by
/// default the targets that already hold the file (size, mtime, mode,
/// SHA-256) are not sent it and report `changed: false`; the others get it
/// as [`put_many`] sends it.
pub fn put_many_with_options(
    targets: &[Context],
    src: impl AsRef<Path>,
    remote: impl AsRef<Path>,
    copy: &CopyOptions,
    progress: Progress<'_>,
) -> Vec<Result<TransferStats, TransferError>> {
    // A context named twice gets the file once (and the same result twice).
    let mut unique: Vec<Context> = Vec::new();
    let index: Vec<usize> = targets
        .iter()
        .map(|c| match unique.iter().position(|u| u.id() == c.id()) {
            Some(i) => i,
            None => {
                unique.push(c.clone());
                unique.len() - 1
            }
        })
        .collect();
    let results = put_compared(&unique, src.as_ref(), remote.as_ref(), copy, progress);
    let named_twice = |k: usize, e: String| {
        TransferError::Remote(CallError::Encode {
            context: targets[k].name().into(),
            function: f::FileOpenWrite::NAME.into(),
            detail: e,
        })
    };
    // Repeats first, while the first results can still be looked at.
    let mut out: Vec<Option<Result<TransferStats, TransferError>>> = index
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            index[..k].contains(&i).then(|| match &results[i] {
                Ok(s) => Ok(s.clone()),
                Err(e) => Err(named_twice(k, format!("named twice; the copy failed: {e}"))),
            })
        })
        .collect();
    let mut results: Vec<Option<_>> = results.into_iter().map(Some).collect();
    for (k, &i) in index.iter().enumerate() {
        if out[k].is_none() {
            out[k] = results[i].take();
        }
    }
    out.into_iter().enumerate().map(|(k, r)| r.unwrap_or_else(|| Err(named_twice(k, "no result".into())))).collect()
}

/// [`put_unique`] to those of `targets` whose destination differs (all
/// of them with `copy.force`); the others' results say `changed: false`.
fn put_compared(
    targets: &[Context],
    src: &Path,
    remote: &Path,
    copy: &CopyOptions,
    progress: Progress<'_>,
) -> Vec<Result<TransferStats, TransferError>> {
    let t0 = Instant::now();
    let kind = copy.checksum;
    let same = if copy.force { vec![None; targets.len()] } else { unchanged(targets, src, remote, kind) };
    let send: Vec<Context> = targets.iter().zip(&same).filter(|(_, s)| s.is_none()).map(|(c, _)| c.clone()).collect();
    let mut sent =
        if send.is_empty() { Vec::new() } else { put_unique(&send, src, remote, copy, progress) }.into_iter();
    if let (true, Some(Some((bytes, _)))) = (send.is_empty(), same.first()) {
        progress(*bytes);
    }
    same.into_iter()
        .zip(targets)
        .map(|(s, c)| match s {
            Some((bytes, checksum)) => Ok(TransferStats { bytes, checksum, elapsed: t0.elapsed(), changed: false }),
            None => sent.next().unwrap_or_else(|| {
                Err(TransferError::Remote(CallError::Encode {
                    context: c.name().into(),
                    function: f::FileOpenWrite::NAME.into(),
                    detail: "no result".into(),
                }))
            }),
        })
        .collect()
}

/// For each target, the size and digest of `src` when `remote` there
/// already is that file, else `None`: every `stat` asked at once, then
/// every `kind` digest of those whose size, mtime and mode match, while
/// `src` is hashed here (once, whatever the number of targets).
fn unchanged(targets: &[Context], src: &Path, remote: &Path, kind: HashKind) -> Vec<Option<(u64, Digest)>> {
    let none = || vec![None; targets.len()];
    let Ok(input) = fs::File::open(src) else { return none() };
    let Ok(meta) = input.metadata() else { return none() };
    if !meta.is_file() {
        return none();
    }
    let path = super::context::path_bytes(remote);
    let stat = f::StatArgs { path: path.clone(), follow: false };
    let stats: Vec<_> = targets.iter().map(|c| c.call_async::<f::Stat>(&stat)).collect();
    let digests: Vec<Option<Pending<ByteBuf>>> = stats
        .into_iter()
        .zip(targets)
        .map(|(p, c)| {
            let st = p.ok()?.wait().ok()?;
            c.same_meta(&st, &meta).then(|| c.remote_digest(remote, kind))?
        })
        .collect();
    if digests.iter().all(Option::is_none) {
        return none();
    }
    let Ok((ours, _)) = hash_file(&input, kind) else { return none() };
    digests.into_iter().map(|d| agrees(d?, ours).map(|d| (meta.len(), d))).collect()
}

fn put_unique(
    targets: &[Context],
    src: &Path,
    remote: &Path,
    copy: &CopyOptions,
    progress: Progress<'_>,
) -> Vec<Result<TransferStats, TransferError>> {
    let t0 = Instant::now();
    let kind = copy.checksum;
    let (mut input, meta) = match fs::File::open(src).and_then(|f| f.metadata().map(|m| (f, m))) {
        Ok(x) => x,
        Err(e) => return targets.iter().map(|_| Err(local(src)(std::io::Error::from(e.kind())))).collect(),
    };
    let id = transfer_id();
    let path = super::context::path_bytes(remote);
    let opens: Vec<_> = targets
        .iter()
        .map(|c| c.call_async::<f::FileOpenWrite>(&OpenWriteArgs { path: path.clone(), id, hash: kind }))
        .collect();
    // Per target: None while it is still in, Some(error) once it failed.
    let mut failed: Vec<Option<TransferError>> =
        opens.into_iter().map(|p| p.and_then(Pending::wait).err().map(TransferError::from)).collect();
    let mut hash = Hasher::new(kind);
    let mut bytes = 0u64;
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    // Room for a relay's front: up to 15 bytes per target, plus the call's.
    let mut chunk = Chunk::new(64 + 16 * targets.len());
    let mut local_error = None;
    loop {
        let n = match chunk.read_from(&mut input) {
            Ok(n) => n,
            Err(e) => {
                local_error = Some(e);
                break;
            }
        };
        if n == 0 || failed.iter().all(Option::is_some) {
            break;
        }
        hash.update(chunk.data());
        bytes += n as u64;
        let live: Vec<usize> = (0..targets.len()).filter(|&i| failed[i].is_none()).collect();
        let sent = match send_chunk(targets, &live, id, &mut chunk, copy.compress, &mut failed) {
            Ok(sent) => sent,
            Err(e) => {
                local_error = Some(std::io::Error::other(e.to_string()));
                break;
            }
        };
        inflight.push_back((sent, n as u64));
        if inflight.len() >= WINDOW {
            settle(inflight.pop_front(), &mut failed, progress);
        }
    }
    while let Some(w) = inflight.pop_front() {
        settle(Some(w), &mut failed, progress);
    }
    let digest = hash.digest();
    let changed = local_error.is_none() && bytes != meta.len();
    let commit = Commit {
        digest: ByteBuf::from(digest.as_bytes()),
        mode: Some(meta.mode() & 0o7777),
        mtime: Some((meta.mtime(), meta.mtime_nsec() as u32)),
        owner: Some((meta.uid(), meta.gid())),
    };
    let ok = local_error.is_none() && !changed;
    // Commit (or, after a local failure, discard) everywhere at once.
    let closes: Vec<Result<Pending<f::FileClosed>, CallError>> = (0..targets.len())
        .map(|i| {
            let c = if ok && failed[i].is_none() { Some(commit.clone()) } else { None };
            targets[i].call_async::<f::FileClose>(&FileCloseArgs { id, commit: c })
        })
        .collect();
    closes
        .into_iter()
        .enumerate()
        .map(|(i, close)| {
            let closed = close.and_then(Pending::wait);
            if let Some(e) = failed[i].take() {
                return Err(e);
            }
            if let Some(e) = &local_error {
                return Err(local(src)(std::io::Error::new(e.kind(), e.to_string())));
            }
            if changed {
                let ctx = targets[i].name().into();
                return Err(TransferError::SourceChanged {
                    context: ctx,
                    path: src.into(),
                    expected: meta.len(),
                    read: bytes,
                });
            }
            match closed {
                Ok(c) if c.size == bytes => {
                    Ok(TransferStats { bytes, checksum: digest, elapsed: t0.elapsed(), changed: true })
                }
                Ok(_) => Err(TransferError::Checksum { context: targets[i].name().into(), path: remote.into() }),
                Err(e) => Err(e.into()),
            }
        })
        .collect()
}

/// Sends one chunk as a `file_write` call to the `live` targets: one relay
/// per first hop shared by several, a plain call where a target is alone.
/// Both are framed in the chunk's buffer, in front of the data; or, with
/// `compress` and a chunk that shrinks by an eighth, the call is deflated
/// once for all of them (a relay carries the flag to every copy).
fn send_chunk(
    targets: &[Context],
    live: &[usize],
    id: u32,
    chunk: &mut Chunk,
    compress: bool,
    failed: &mut [Option<TransferError>],
) -> Result<Vec<(usize, Pending<()>)>, postcard::Error> {
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    for &i in live {
        let first = targets[i].shared.stream_id;
        match groups.iter_mut().find(|(s, _)| *s == first) {
            Some((_, g)) => g.push(i),
            None => groups.push((first, vec![i])),
        }
    }
    let call = chunk.call_front(id)?;
    let deflated = match compress {
        true => crate::proto::compress::compress(chunk.payload(&call).ok_or(postcard::Error::SerializeBufferFull)?),
        false => None,
    };
    let mut sent = Vec::new();
    for (first, group) in groups {
        let lost = |failed: &mut [Option<TransferError>], i: usize, e: CallError| failed[i] = Some(e.into());
        if let [i] = group[..] {
            let p = match &deflated {
                Some(z) => targets[i].call_deflated::<f::FileWrite>(z),
                None => targets[i].call_async_encoded::<f::FileWrite>(
                    chunk.payload(&call).ok_or(postcard::Error::SerializeBufferFull)?,
                ),
            };
            match p {
                Ok(p) => sent.push((i, p)),
                Err(e) => lost(failed, i, e),
            }
            continue;
        }
        let replies: Vec<(usize, u32, Pending<()>)> = group
            .iter()
            .map(|&i| {
                let (handle, p) = targets[i].expect_reply::<f::FileWrite>();
                (i, handle, p)
            })
            .collect();
        let to: Vec<(u32, u32)> = replies.iter().map(|(i, h, _)| (targets[*i].shared.id, *h)).collect();
        let relay;
        let payload = match &deflated {
            Some(z) => {
                let mut r = relay_front(&to, handles::CALL_FUNCTION, FLAG_COMPRESSED, z.len())?;
                r.extend_from_slice(z);
                relay = r;
                &relay[..]
            }
            None => {
                let mut front = relay_front(&to, handles::CALL_FUNCTION, 0, call.len() + chunk.data().len())?;
                front.extend_from_slice(&call);
                chunk.payload(&front).ok_or(postcard::Error::SerializeBufferFull)?
            }
        };
        let header =
            Header { dst: first, src: MASTER_ID, auth: MASTER_ID, handle: handles::RELAY, ..Header::default() };
        // The relay serves several targets, each with its own call
        // timeout: it waits for room until the stream stalls for
        // SEND_TIMEOUT (`None`), then fails them all.
        match targets[group[0]].state.table.send_parts(&header, payload, None) {
            Ok(()) => sent.extend(replies.into_iter().map(|(i, _, p)| (i, p))),
            Err(d) => {
                for (i, handle, _) in replies {
                    targets[i].state.table.close_mailbox(handle);
                    let e = CallError::Disconnected {
                        context: targets[i].name().into(),
                        function: f::FileWrite::NAME.into(),
                        reason: d.reason.clone(),
                    };
                    lost(failed, i, e);
                }
            }
        }
    }
    Ok(sent)
}

/// Waits for every target's acknowledgement of one chunk.
fn settle(chunk: Option<InFlight>, failed: &mut [Option<TransferError>], progress: Progress<'_>) {
    let Some((replies, n)) = chunk else { return };
    for (i, p) in replies {
        if let Err(e) = p.wait() {
            if failed[i].is_none() {
                failed[i] = Some(e.into());
            }
        }
    }
    progress(n);
}
