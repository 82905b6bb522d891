//! A hostile agent, for the tests of issue 13 (`tests/hostile*.rs`): it
//! speaks the wire protocol with the library's public types and sends what
//! a target under someone else's control could send.
//!
//! The master starts it as the shell of a local context
//! (`LocalOptions { sh: <this program>, .. }`, so it runs as
//! `hostile_agent -c '<stage0>'`), behind a hop (`hop.local(LocalOptions
//! { sh, .. })`), or as `ssh` first on `PATH` (the CLI's `ssh://` targets).
//! It ignores the script except for the context id stage0 starts with
//! (`I=<id>;`), prints `MITO2` and a hello as the real agent does (see
//! `agent::external_context` and `connect::bootstrap`), then answers calls
//! from a made-up file system until its input ends or SHUTDOWN arrives.
//!
//! The scenario is chosen by `MITO_HOSTILE`; `MITO_HOSTILE_OUTSIDE` is an
//! absolute directory the test watches (a place outside the destination),
//! `MITO_HOSTILE_SIBLING` the id of a context beside this one. Every tree
//! is rooted at `/t`. Scenarios, one function each below:
//!
//! - `name-dotdot`, `name-climb`, `name-absolute`, `name-slash`,
//!   `name-nul`, `name-empty`, `name-dot` ([`bad_name`]): `/t` lists a
//!   name that is not one path component: `..` (a directory whose listing
//!   holds `escaped`), `a/../../escaped` (after a real directory `a`),
//!   `$MITO_HOSTILE_OUTSIDE/escaped`, `a/inner`, `nul\0name`, the empty
//!   name, `.` (a directory holding `dotted`).
//! - `link-then-dir` ([`link_then_dir`]): `/t` lists `esc` as a symlink
//!   to `$MITO_HOSTILE_OUTSIDE`, then `esc` again as a directory (mode
//!   0777) holding `planted` (setuid): written through the link, the file
//!   lands outside and the final chmod hits the outside directory.
//! - `dir-over-link` ([`dir_over_link`]): `/t` lists `esc` as a directory
//!   holding `planted`; the test has left a symlink `esc` → outside in the
//!   destination (as an earlier copy of a symlink would).
//! - `modes` ([`modes`]): setuid-root, setgid and sticky files, a
//!   setgid+sticky directory, owners uid 0 and 4242:4343, a symlink.
//! - `name-long` ([`bad_name`]): `/t` lists a file whose name is 256
//!   bytes, one more than `NAME_MAX`.
//! - `mtime-extremes` ([`mtime_extremes`]): files, directories and
//!   symlinks with mtimes `i64::MAX` (and `u32::MAX` nanoseconds) and
//!   `i64::MIN`.
//! - `deep` ([`Generated::Deep`]): a tree that never ends: every directory
//!   `/t`, `/t/d`, `/t/d/d`, … lists one directory `d`.
//! - `wide` ([`Generated::Wide`]): `/t` lists 1000 directories, each
//!   listing enough files (8-byte names) for the tree to have more than
//!   `MAX_TREE_ENTRIES` entries.
//! - `wide-long-names` ([`Generated::Wide`]): the same with 250-byte
//!   names, and only as many directories of 1000 files as it takes for the
//!   names to add up to more than `MAX_TREE_NAME_BYTES` (fewer entries
//!   than `MAX_TREE_ENTRIES`).
//! - `sizes` ([`sizes`]): `larger` (stat 1000 bytes, serves 64 MiB in full
//!   chunks), `smaller` (stat 3 MiB, serves 10 bytes), `huge` (stat
//!   `u64::MAX`, serves 10 bytes).
//! - `pre-adoption` ([`pre_adoption`]): in the same write as its hello, a
//!   forged DEL_ROUTE for context `$MITO_HOSTILE_SIBLING` (with that
//!   sibling's `src` and with its own) and forged exec replies from the
//!   sibling to handles 1000..1500; then an ordinary agent (ping).
//! - `forge-goodbye` ([`forged_goodbyes`]): an ordinary agent (ping) that,
//!   before each ping's reply, says goodbye in the name of context
//!   `$MITO_HOSTILE_SIBLING` (shut down, crashed) and sends a DEL_ROUTE
//!   for it (as the sibling, and as itself).
//! - `output-flood` ([`Agent::flood`]): answers an exec that streams
//!   (`stream_to`) with output far beyond its window, reading nothing
//!   meanwhile: 400 000 frames of one byte, then 64 KiB frames up to
//!   512 MiB; then it writes how many bytes went out to
//!   `$MITO_HOSTILE_OUTSIDE/flood-sent` and replies (exit 0).
//! - `ack-flood` ([`Agent::flood`]): answers an exec that keeps stdin open
//!   (`stdin_acks_to`) with acknowledgements for stdin it never got:
//!   2 000 000 well-formed ones (1 byte each), then 400 000 that do not
//!   decode; then the file and the reply as above.
//! - `output-bomb` ([`Agent::flood`]): answers an exec that streams with
//!   one compressed output frame of about 64 KiB, well within its window,
//!   that inflates to 64 MiB; then the reply.
//! - `reply-bomb`: answers `ping` (whose reply is `()`) with a compressed
//!   payload of about 64 KiB that inflates to 64 MiB.
//! - `read-bomb`: serves `/t/bomb` (said to be 1 MiB) whose every
//!   `file_read` reply is a compressed chunk of about 64 KiB that inflates
//!   to 64 MiB (a `get --compress` from a hostile target).
//! - `resource-thief` ([`Thief`]): on each `ping`, asks its parent for
//!   chunk 0 of the resource `$MITO_HOSTILE_SHA` (hex) for context
//!   `$MITO_HOSTILE_SIBLING` and for itself, then for `$MITO_HOSTILE_FLOOD`
//!   made-up hashes; answers the ping once every request has its reply,
//!   and `read_file` of anything with what came back:
//!   `refused=<n> served=<n> other=<n>`.
//! - `garbage-reply`: answers every call with three bytes that decode as
//!   no reply type (`0xff 0xff 0xff`, a varint that never ends).
//! - `silent`: reads every call and never answers one (nor exits).
//! - `get-*` ([`Lie`], `tests/hostile_get.rs`): `/t/f` is a file of
//!   [`GET_LEN`] bytes of [`get_content`] (mode 0640, mtime 1600000000)
//!   and `file_hash` is unknown, unless the lie says otherwise. `get-honest`
//!   serves it as it is. While serving it: `get-flip` hashes the true
//!   bytes but flips a bit of the second chunk; `get-digest` flips a bit
//!   of the digest at close, `get-digest-empty` sends an empty one,
//!   `get-close-size` claims one byte more; `get-oversize` answers the
//!   first read with a byte more than asked (`get-oversize-deflated`: a
//!   compressed reply that inflates to that, within `MAX_FILE_READ`),
//!   `get-oversize-huge` every read with 100 MiB (uncompressed, within the
//!   frame limit);
//!   `get-garbage-read`, `get-wrong-type-read` (a `FileOpened`),
//!   `get-error-read` (EIO, its message and cause laced with terminal
//!   escapes) and `get-silent-read` (no reply) are the
//!   second read's answer; `get-garbage-open` and `get-garbage-close`
//!   answer the open or the close with garbage, `get-silent-close` never
//!   answers a close. `get-special`: `/t/f` is mode 07777 with mtime
//!   `i64::MIN` (and `u32::MAX` ns), `/t/g` mode `u32::MAX` with mtime
//!   `i64::MAX`. `get-hash-lie`: `file_hash` answers
//!   `$MITO_HOSTILE_DIGEST` (hex) whatever is asked.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use mito::core::stream::{encode, Decoder};
use mito::core::xxh3::Hasher;
use mito::proto::functions::{
    self as f, DirEntry, ExecArgs, ExecOutput, ExecReply, FileCloseArgs, FileClosed, FileKind, FileOpened,
    FileReadArgs, Function, InfoReply, PathArgs, StatArgs, StatReply,
};
use mito::proto::message::{decode_call, DelRoute, Goodbye, Hello, LinkEnd};
use mito::proto::resource::GetResource;
use mito::proto::{handles, ErrorKind, Header, RemoteError, FLAG_COMPRESSED, FLAG_ERROR, MASTER_ID, MAX_MESSAGE_SIZE};
use serde::Serialize;
use serde_bytes::ByteBuf;

/// The root every scenario's tree hangs from.
const ROOT: &str = "/t";

/// The size of `get-*`'s `/t/f`: three chunks and a part.
const GET_LEN: usize = (3 << 20) + 12345;

/// The bytes of `get-*`'s `/t/f` (no chunk all zeros, so none becomes a
/// hole; `tests/hostile_get.rs` makes the same).
fn get_content() -> Vec<u8> {
    (0..GET_LEN).map(|i| ((i * 7 + i / 4096) % 251) as u8 + 1).collect()
}

/// What a path holds.
enum Body {
    /// A directory and exactly what `list_dir` answers for it (names and
    /// stats are the scenario's, true or not).
    Dir(Vec<DirEntry>),
    /// A regular file: what `file_open_read` says and what `file_read` serves.
    File { opened_size: u64, content: Content },
    /// A symlink (its target is in [`Fs::links`]).
    Link,
}

/// File content, generated for the big lies.
#[derive(Clone)]
enum Content {
    Bytes(Vec<u8>),
    /// This many bytes of `x`.
    Pattern(u64),
}

impl Content {
    fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Pattern(n) => *n,
        }
    }

    fn chunk(&self, pos: u64, len: u64) -> Vec<u8> {
        let end = self.len().min(pos.saturating_add(len));
        if pos >= end {
            return Vec::new();
        }
        match self {
            Content::Bytes(b) => b[pos as usize..end as usize].to_vec(),
            Content::Pattern(_) => vec![b'x'; (end - pos) as usize],
        }
    }
}

/// The made-up file system: path → (its lstat, what it holds), and the
/// symlinks `read_link` knows (a path may be both: listed twice); a tree
/// too big to hold is generated instead, as it is asked for.
#[derive(Default)]
struct Fs {
    nodes: HashMap<Vec<u8>, (StatReply, Body)>,
    links: HashMap<Vec<u8>, Vec<u8>>,
    generated: Option<Generated>,
}

/// A tree under [`ROOT`] made up on each `stat` and `list_dir`.
#[derive(Clone, Copy)]
enum Generated {
    /// Every directory lists one directory `d`, forever.
    Deep,
    /// `ROOT` lists `dirs` directories, each listing `files` files; every
    /// name is `name_len` bytes (a number, then `x`s).
    Wide { dirs: usize, files: usize, name_len: usize },
}

impl Generated {
    fn name(i: usize, len: usize) -> Vec<u8> {
        let mut n = format!("{i:06}").into_bytes();
        n.resize(len.max(n.len()), b'x');
        n
    }

    /// `path`'s lstat and, for a directory, its listing.
    fn node(self, path: &[u8]) -> Option<(StatReply, Option<Vec<DirEntry>>)> {
        let dir = stat(FileKind::Dir, 0o755, 0);
        let file = stat(FileKind::File, 0o644, 0);
        let rest = path.strip_prefix(ROOT.as_bytes())?;
        match self {
            Generated::Deep => {
                // `/t` then any number of `/d`.
                if rest.len() % 2 != 0 || !rest.chunks(2).all(|c| c == b"/d") {
                    return None;
                }
                Some((dir.clone(), Some(vec![entry(b"d", dir)])))
            }
            Generated::Wide { dirs, files, name_len } => {
                let names = |n: usize| (0..n).map(move |i| Generated::name(i, name_len));
                if rest.is_empty() {
                    return Some((dir.clone(), Some(names(dirs).map(|n| entry(&n, dir.clone())).collect())));
                }
                let sub = rest.strip_prefix(b"/")?;
                if let Some((d, f)) = sub.iter().position(|&b| b == b'/').map(|i| (&sub[..i], &sub[i + 1..])) {
                    return (names(dirs).any(|n| n == d) && names(files).any(|n| n == f)).then_some((file, None));
                }
                names(dirs)
                    .any(|n| n == sub)
                    .then(|| (dir, Some(names(files).map(|n| entry(&n, file.clone())).collect())))
            }
        }
    }
}

fn stat(kind: FileKind, mode: u32, size: u64) -> StatReply {
    StatReply { kind, mode, size, uid: 1000, gid: 1000, mtime: 1_600_000_000, mtime_nsec: 0 }
}

fn entry(name: &[u8], st: StatReply) -> DirEntry {
    DirEntry { name: ByteBuf::from(name), stat: st }
}

/// `dir/name` the way the master joins them (`Path::join`: an absolute
/// name replaces the directory), so the harness answers whatever path a
/// master that trusts the name asks for.
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = Path::new(std::ffi::OsStr::from_bytes(dir)).join(std::ffi::OsStr::from_bytes(name));
    p.as_os_str().as_bytes().to_vec()
}

impl Fs {
    fn dir(&mut self, path: &[u8], st: StatReply, entries: Vec<DirEntry>) {
        self.nodes.insert(path.to_vec(), (st, Body::Dir(entries)));
    }

    fn file(&mut self, path: &[u8], st: StatReply, opened_size: u64, content: Content) {
        self.nodes.insert(path.to_vec(), (st, Body::File { opened_size, content }));
    }

    /// A symlink; `stat` sees it unless something else has that path.
    fn link(&mut self, path: &[u8], st: StatReply, target: &[u8]) {
        self.links.insert(path.to_vec(), target.to_vec());
        self.nodes.entry(path.to_vec()).or_insert((st, Body::Link));
    }

    /// A small honest file at `path` with this stat.
    fn small(&mut self, path: &[u8], st: StatReply, data: &[u8]) {
        let st = StatReply { size: data.len() as u64, ..st };
        self.file(path, st, data.len() as u64, Content::Bytes(data.to_vec()));
    }
}

fn outside() -> Vec<u8> {
    std::env::var_os("MITO_HOSTILE_OUTSIDE")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_else(|| b"/nonexistent-mito-hostile-outside".to_vec())
}

// ---- scenarios --------------------------------------------------------------

/// `/t` lists one name that is not a single path component (see the module
/// docs); every path a trusting master would then ask for exists.
fn bad_name(which: &str) -> Fs {
    let root = ROOT.as_bytes();
    let mut fs = Fs::default();
    let file = stat(FileKind::File, 0o644, 6);
    let dir = stat(FileKind::Dir, 0o755, 0);
    let a = entry(b"a", dir.clone());
    let entries = match which {
        "dotdot" => {
            fs.dir(&join(root, b".."), dir.clone(), vec![entry(b"escaped", file.clone())]);
            fs.small(&join(&join(root, b".."), b"escaped"), file.clone(), b"pwned\n");
            vec![entry(b"..", dir.clone())]
        }
        "climb" => {
            fs.dir(&join(root, b"a"), dir.clone(), vec![]);
            fs.small(&join(root, b"a/../../escaped"), file.clone(), b"pwned\n");
            vec![a, entry(b"a/../../escaped", file.clone())]
        }
        "absolute" => {
            let name = join(&outside(), b"escaped");
            fs.small(&join(root, &name), file.clone(), b"pwned\n");
            vec![entry(&name, file.clone())]
        }
        "slash" => {
            fs.dir(&join(root, b"a"), dir.clone(), vec![]);
            fs.small(&join(root, b"a/inner"), file.clone(), b"pwned\n");
            vec![a, entry(b"a/inner", file.clone())]
        }
        "nul" => {
            fs.small(&join(root, b"nul\0name"), file.clone(), b"pwned\n");
            vec![entry(b"nul\0name", file.clone())]
        }
        "empty" => vec![entry(b"", file.clone())],
        "long" => {
            let name = vec![b'n'; 256];
            fs.small(&join(root, &name), file.clone(), b"pwned\n");
            vec![entry(&name, file.clone())]
        }
        "dot" => {
            fs.dir(&join(root, b"."), dir.clone(), vec![entry(b"dotted", file.clone())]);
            fs.small(&join(&join(root, b"."), b"dotted"), file.clone(), b"pwned\n");
            vec![entry(b".", dir.clone())]
        }
        other => panic!("no bad-name scenario {other:?}"),
    };
    fs.dir(root, dir, entries);
    fs
}

/// `esc` listed as a symlink to the outside directory, then as a directory
/// (mode 0777) with a setuid file in it.
fn link_then_dir() -> Fs {
    let root = ROOT.as_bytes();
    let mut fs = Fs::default();
    let dir = stat(FileKind::Dir, 0o777, 0);
    let planted = stat(FileKind::File, 0o4755, 6);
    fs.dir(
        root,
        stat(FileKind::Dir, 0o755, 0),
        vec![entry(b"esc", stat(FileKind::Symlink, 0o777, 0)), entry(b"esc", dir.clone())],
    );
    fs.dir(&join(root, b"esc"), dir, vec![entry(b"planted", planted.clone())]);
    fs.link(&join(root, b"esc"), stat(FileKind::Symlink, 0o777, 0), &outside());
    fs.small(&join(root, b"esc/planted"), planted, b"pwned\n");
    fs
}

/// `esc` a directory (mode 0777) holding `planted`; the destination
/// already has a symlink `esc` to the outside.
fn dir_over_link() -> Fs {
    let root = ROOT.as_bytes();
    let mut fs = Fs::default();
    let dir = stat(FileKind::Dir, 0o777, 0);
    let planted = stat(FileKind::File, 0o644, 6);
    fs.dir(root, stat(FileKind::Dir, 0o755, 0), vec![entry(b"esc", dir.clone())]);
    fs.dir(&join(root, b"esc"), dir, vec![entry(b"planted", planted.clone())]);
    fs.small(&join(root, b"esc/planted"), planted, b"pwned\n");
    fs
}

/// Special mode bits and foreign owners.
fn modes() -> Fs {
    let root = ROOT.as_bytes();
    let mut fs = Fs::default();
    let owned = |kind, mode, uid, gid| StatReply { uid, gid, ..stat(kind, mode, 0) };
    let suid_root = owned(FileKind::File, 0o4755, 0, 0);
    let sgid = owned(FileKind::File, 0o2755, 4242, 4343);
    let sticky = owned(FileKind::File, 0o1644, 4242, 4343);
    let d = owned(FileKind::Dir, 0o3777, 4242, 4343);
    let inner = owned(FileKind::File, 0o6777, 0, 0);
    let link = owned(FileKind::Symlink, 0o777, 4242, 4343);
    fs.dir(
        root,
        owned(FileKind::Dir, 0o2775, 4242, 4343),
        vec![
            entry(b"d", d.clone()),
            entry(b"l", link.clone()),
            entry(b"sgid", sgid.clone()),
            entry(b"sticky", sticky.clone()),
            entry(b"suid-root", suid_root.clone()),
        ],
    );
    fs.dir(&join(root, b"d"), d, vec![entry(b"inner", inner.clone())]);
    fs.small(&join(root, b"d/inner"), inner, b"#!/bin/sh\nid\n");
    fs.link(&join(root, b"l"), link, b"suid-root");
    fs.small(&join(root, b"sgid"), sgid, b"#!/bin/sh\nid\n");
    fs.small(&join(root, b"sticky"), sticky, b"sticky\n");
    fs.small(&join(root, b"suid-root"), suid_root, b"#!/bin/sh\nid\n");
    fs
}

/// Modification times at the ends of `i64`, on files, directories and
/// symlinks.
fn mtime_extremes() -> Fs {
    let root = ROOT.as_bytes();
    let mut fs = Fs::default();
    let future = |kind| StatReply { mtime: i64::MAX, mtime_nsec: u32::MAX, ..stat(kind, 0o644, 0) };
    let past = |kind| StatReply { mtime: i64::MIN, ..stat(kind, 0o644, 0) };
    let (future_dir, past_dir) = (future(FileKind::Dir), past(FileKind::Dir));
    let (future_link, past_link) = (future(FileKind::Symlink), past(FileKind::Symlink));
    fs.dir(
        root,
        stat(FileKind::Dir, 0o755, 0),
        vec![
            entry(b"future", future(FileKind::File)),
            entry(b"future-dir", future_dir.clone()),
            entry(b"future-link", future_link.clone()),
            entry(b"past", past(FileKind::File)),
            entry(b"past-dir", past_dir.clone()),
            entry(b"past-link", past_link.clone()),
        ],
    );
    fs.small(&join(root, b"future"), future(FileKind::File), b"future\n");
    fs.small(&join(root, b"past"), past(FileKind::File), b"past\n");
    fs.dir(&join(root, b"future-dir"), future_dir, vec![]);
    fs.dir(&join(root, b"past-dir"), past_dir, vec![]);
    fs.link(&join(root, b"future-link"), future_link, b"future");
    fs.link(&join(root, b"past-link"), past_link, b"past");
    fs
}

/// `wide` and `wide-long-names` (see the module docs): just past the
/// master's limit on entries, or on the bytes of names.
fn wide(long_names: bool) -> Fs {
    use mito::master::tree::{MAX_TREE_ENTRIES, MAX_TREE_NAME_BYTES};
    let generated = if long_names {
        let (files, name_len) = (1000, 250);
        Generated::Wide { dirs: MAX_TREE_NAME_BYTES / (files * name_len) + 1, files, name_len }
    } else {
        let dirs = 1000;
        Generated::Wide { dirs, files: MAX_TREE_ENTRIES.div_ceil(dirs), name_len: 8 }
    };
    Fs { generated: Some(generated), ..Fs::default() }
}

/// Files whose content is not the size they announce.
fn sizes() -> Fs {
    let root = ROOT.as_bytes();
    let mut fs = Fs::default();
    let larger = stat(FileKind::File, 0o644, 1000);
    let smaller = stat(FileKind::File, 0o644, 3 << 20);
    let huge = stat(FileKind::File, 0o644, u64::MAX);
    fs.dir(
        root,
        stat(FileKind::Dir, 0o755, 0),
        vec![entry(b"huge", huge.clone()), entry(b"larger", larger.clone()), entry(b"smaller", smaller.clone())],
    );
    fs.file(&join(root, b"larger"), larger, 1000, Content::Pattern(64 << 20));
    fs.file(&join(root, b"smaller"), smaller, 3 << 20, Content::Bytes(b"ten bytes\n".to_vec()));
    fs.file(&join(root, b"huge"), huge, u64::MAX, Content::Bytes(b"ten bytes\n".to_vec()));
    fs
}

/// `get-*`'s file system: `/t/f` ([`get_content`]), and with `special`
/// the odd modes and mtimes of `get-special` on `/t/f` and `/t/g`.
fn get_fs(special: bool) -> Fs {
    let mut fs = Fs::default();
    if special {
        let f = StatReply { mtime: i64::MIN, mtime_nsec: u32::MAX, ..stat(FileKind::File, 0o7777, 0) };
        let g = StatReply { mtime: i64::MAX, ..stat(FileKind::File, u32::MAX, 0) };
        fs.small(b"/t/f", f, &get_content());
        fs.small(b"/t/g", g, b"all bits\n");
    } else {
        fs.small(b"/t/f", stat(FileKind::File, 0o640, 0), &get_content());
    }
    fs
}

/// The frames that go in the same write as the hello: a DEL_ROUTE for the
/// sibling (as the sibling, and as ourselves), and exec replies "from" the
/// sibling to the first 500 dynamic handles.
fn pre_adoption(id: u32) -> Vec<u8> {
    let sibling: u32 = std::env::var("MITO_HOSTILE_SIBLING").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut out = Vec::new();
    let del = postcard::to_allocvec(&del_route(sibling)).expect("encode");
    for src in [sibling, id] {
        let h = Header { dst: MASTER_ID, src, auth: src, handle: handles::DEL_ROUTE, ..Header::default() };
        out.extend(encode(&h, &del));
    }
    let forged = ExecReply {
        status: mito::proto::ExitStatus { code: Some(66), signal: None },
        stdout: ByteBuf::from(&b"forged\n"[..]),
        ..ExecReply::default()
    };
    let forged = postcard::to_allocvec(&forged).expect("encode");
    for handle in handles::FIRST_DYNAMIC..handles::FIRST_DYNAMIC + 500 {
        let h = Header { dst: MASTER_ID, src: sibling, auth: sibling, handle, ..Header::default() };
        out.extend(encode(&h, &forged));
    }
    out
}

/// A DEL_ROUTE payload for `id`, as a hop sends when it lost it.
fn del_route(id: u32) -> DelRoute {
    DelRoute { id, end: LinkEnd::Eof, pid: 1, status: Some(mito::proto::ExitStatus { code: None, signal: Some(9) }) }
}

/// Goodbyes "from" the sibling and DEL_ROUTEs for it, sent after adoption
/// (a hop checks them, unlike those sent with a hello).
fn forged_goodbyes(id: u32, sibling: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for bye in [Goodbye::Shutdown, Goodbye::Panic("forged")] {
        let h = Header { dst: MASTER_ID, src: sibling, auth: sibling, handle: handles::GOODBYE, ..Header::default() };
        out.extend(encode(&h, &postcard::to_allocvec(&bye).expect("encode")));
    }
    let del = postcard::to_allocvec(&del_route(sibling)).expect("encode");
    for src in [sibling, id] {
        let h = Header { dst: MASTER_ID, src, auth: src, handle: handles::DEL_ROUTE, ..Header::default() };
        out.extend(encode(&h, &del));
    }
    out
}

// ---- the agent ------------------------------------------------------------------

/// The context id stage0 was written for: `I=<id>;` in any argument (the
/// local method's `-c` script, or ssh's remote command).
fn context_id() -> u32 {
    for a in std::env::args_os().skip(1) {
        let a = a.as_bytes();
        for (i, w) in a.windows(2).enumerate() {
            if w != b"I=" || (i > 0 && a[i - 1].is_ascii_alphanumeric()) {
                continue;
            }
            let digits: Vec<u8> = a[i + 2..].iter().copied().take_while(u8::is_ascii_digit).collect();
            if let Some(id) = std::str::from_utf8(&digits).ok().and_then(|s| s.parse().ok()) {
                return id;
            }
        }
    }
    eprintln!("hostile_agent: no I=<id> in the arguments");
    std::process::exit(64);
}

struct Open {
    content: Content,
    pos: u64,
    hash: Hasher,
    /// `file_read` calls answered so far.
    reads: u32,
}

/// `get-*`: the lie told while serving `/t/f` (see the module docs).
#[derive(Clone, PartialEq, Eq)]
enum Lie {
    None,
    Flip,
    Digest,
    DigestEmpty,
    CloseSize,
    Oversize,
    OversizeDeflated,
    OversizeHuge,
    GarbageRead,
    WrongTypeRead,
    ErrorRead,
    SilentRead,
    GarbageOpen,
    GarbageClose,
    SilentClose,
    /// `file_hash` answers these bytes.
    ClaimedHash(Vec<u8>),
}

impl Lie {
    /// The lie of scenario `get-<name>`, with its file system.
    fn get(name: &str) -> Option<(Lie, Fs)> {
        let lie = match name {
            "honest" | "special" => Lie::None,
            "flip" => Lie::Flip,
            "digest" => Lie::Digest,
            "digest-empty" => Lie::DigestEmpty,
            "close-size" => Lie::CloseSize,
            "oversize" => Lie::Oversize,
            "oversize-deflated" => Lie::OversizeDeflated,
            "oversize-huge" => Lie::OversizeHuge,
            "garbage-read" => Lie::GarbageRead,
            "wrong-type-read" => Lie::WrongTypeRead,
            "error-read" => Lie::ErrorRead,
            "silent-read" => Lie::SilentRead,
            "garbage-open" => Lie::GarbageOpen,
            "garbage-close" => Lie::GarbageClose,
            "silent-close" => Lie::SilentClose,
            "hash-lie" => {
                let hex = std::env::var("MITO_HOSTILE_DIGEST").unwrap_or_default();
                let bytes = (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok());
                Lie::ClaimedHash(bytes.collect())
            }
            _ => return None,
        };
        Some((lie, get_fs(name == "special")))
    }
}

/// Three bytes that decode as no reply type (a varint that never ends).
const GARBAGE: [u8; 3] = [0xff, 0xff, 0xff];

/// What an exec call gets: refused (unknown function), or a flood of
/// output or of stdin acknowledgements.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flood {
    None,
    Output,
    Acks,
    Bomb,
    /// `reply-bomb`: pings answered with a compressed reply.
    ReplyBomb,
    /// `read-bomb`: `file_read` answered with a compressed chunk.
    ReadBomb,
}

/// `resource-thief`: the requests under way, the ping that waits for
/// their replies, and what came back.
#[derive(Default)]
struct Thief {
    sha256: [u8; 32],
    sibling: u32,
    flood: u32,
    pending: std::collections::HashSet<u32>,
    ping: Option<Header>,
    next: u32,
    refused: u32,
    served: u32,
    other: u32,
}

impl Thief {
    fn from_env(sibling: u32) -> Thief {
        let hex = std::env::var("MITO_HOSTILE_SHA").unwrap_or_default();
        let mut sha256 = [0u8; 32];
        for (i, b) in sha256.iter_mut().enumerate() {
            *b = hex.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0);
        }
        let flood = std::env::var("MITO_HOSTILE_FLOOD").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        Thief { sha256, sibling, flood, next: 50_000, ..Thief::default() }
    }

    /// The requests (see the module docs), as frames to the parent.
    fn requests(&mut self, id: u32, ping: &Header) -> Vec<u8> {
        self.ping = Some(*ping);
        let mut asks = vec![(self.sha256, self.sibling), (self.sha256, id)];
        for i in 0..self.flood {
            let mut sha = [0x5au8; 32];
            sha[..4].copy_from_slice(&i.to_le_bytes());
            asks.push((sha, id));
        }
        let mut out = Vec::new();
        for (sha256, for_context) in asks {
            self.next += 1;
            self.pending.insert(self.next);
            let req = postcard::to_allocvec(&GetResource { sha256, chunk: 0, for_context }).expect("encode");
            let h = Header {
                dst: MASTER_ID,
                src: id,
                auth: id,
                handle: handles::GET_RESOURCE,
                reply_to: self.next,
                ..Header::default()
            };
            out.extend(encode(&h, &req));
        }
        out
    }

    /// A reply to one of the requests; the ping's header once all are in.
    fn reply(&mut self, h: &Header, data: &[u8]) -> Option<Header> {
        if !self.pending.remove(&h.handle) {
            return None;
        }
        if h.flags & FLAG_ERROR != 0 {
            match postcard::from_bytes::<RemoteError>(data) {
                Ok(e) if e.kind == ErrorKind::NotPermitted => self.refused += 1,
                _ => self.other += 1,
            }
        } else {
            self.served += 1;
        }
        if self.pending.is_empty() {
            self.ping.take()
        } else {
            None
        }
    }

    fn report(&self) -> String {
        format!("refused={} served={} other={}", self.refused, self.served, self.other)
    }
}

struct Agent {
    id: u32,
    fs: Fs,
    flood: Flood,
    thief: Option<Thief>,
    open: HashMap<u32, Open>,
    next_open: u32,
    lie: Lie,
    out: std::io::Stdout,
}

fn os_error(errno: i32, what: &[u8]) -> RemoteError {
    RemoteError::os(errno, String::from_utf8_lossy(what).into_owned())
}

impl Agent {
    fn send(&mut self, h: &Header, payload: &[u8]) {
        let mut out = self.out.lock();
        // A master that went away ends us at the next read.
        let _ = out.write_all(&encode(h, payload)).and_then(|()| out.flush());
    }

    fn reply<T: Serialize>(&mut self, to: &Header, r: Result<T, RemoteError>) {
        if to.reply_to == 0 {
            return;
        }
        let (flags, data) = match r {
            Ok(v) => (0, postcard::to_allocvec(&v)),
            Err(e) => (FLAG_ERROR, postcard::to_allocvec(&e)),
        };
        let data = data.expect("encode reply");
        let h = Header { flags, dst: to.src, src: self.id, auth: self.id, handle: to.reply_to, ..Header::default() };
        self.send(&h, &data);
    }

    /// Answers `h` with `payload` as it is: no reply type need decode from it.
    fn reply_raw(&mut self, h: &Header, payload: &[u8]) {
        let r = Header { dst: h.src, src: self.id, auth: self.id, handle: h.reply_to, ..Header::default() };
        self.send(&r, payload);
    }

    fn lookup(&self, path: &[u8]) -> Result<&(StatReply, Body), RemoteError> {
        self.fs.nodes.get(path).ok_or_else(|| os_error(libc::ENOENT, path))
    }

    /// `path` in the generated tree, if there is one and it has `path`.
    fn generated(&self, path: &[u8]) -> Option<(StatReply, Option<Vec<DirEntry>>)> {
        self.fs.generated.and_then(|g| g.node(path))
    }

    /// Replies to `h` with `body` deflated: a small frame that inflates to
    /// all of `body` (a bomb when `body` is far larger than the reply may be).
    fn reply_bomb(&mut self, h: &Header, body: &[u8]) {
        let bomb = mito::proto::compress::compress(body).expect("compressible");
        let h2 = Header {
            flags: FLAG_COMPRESSED,
            dst: h.src,
            src: self.id,
            auth: self.id,
            handle: h.reply_to,
            ..Header::default()
        };
        self.send(&h2, &bomb);
    }

    fn call(&mut self, h: &Header, payload: &[u8]) {
        let Ok((name, args)) = decode_call(payload) else {
            return self.reply::<()>(h, Err(RemoteError::new(ErrorKind::Protocol, "bad call")));
        };
        let bad = || RemoteError::new(ErrorKind::BadArgs, "bad arguments");
        match name {
            f::Ping::NAME if matches!(self.flood, Flood::ReplyBomb) => {
                // A `()` reply of about 64 KiB that inflates to 64 MiB.
                self.reply_bomb(h, &vec![0u8; 64 << 20]);
            }
            f::Ping::NAME if self.thief.is_some() => {
                let id = self.id;
                let frames = self.thief.as_mut().map(|t| t.requests(id, h)).unwrap_or_default();
                let mut o = self.out.lock();
                let _ = o.write_all(&frames).and_then(|()| o.flush());
            }
            f::ReadFile::NAME if self.thief.is_some() => {
                let report = self.thief.as_ref().map(Thief::report).unwrap_or_default();
                self.reply(h, Ok(ByteBuf::from(report.into_bytes())));
            }
            f::Ping::NAME => self.reply(h, Ok(())),
            f::Info::NAME => {
                let info = InfoReply {
                    pid: std::process::id(),
                    ppid: std::os::unix::process::parent_id(),
                    uid: 0,
                    gid: 0,
                    euid: 0,
                    egid: 0,
                    user: "root".into(),
                    hostname: "hostile".into(),
                    arch: std::env::consts::ARCH.into(),
                    kernel: "0".into(),
                    agent_version: "hostile".into(),
                    agent_hash: "hostile".into(),
                    exe: "hostile_agent".into(),
                    cwd: "/".into(),
                };
                self.reply(h, Ok(info));
            }
            f::Stat::NAME => {
                let r = postcard::from_bytes::<StatArgs>(args).map_err(|_| bad()).and_then(|a| {
                    match self.generated(&a.path) {
                        Some((st, _)) => Ok(st),
                        None => self.lookup(&a.path).map(|(st, _)| st.clone()),
                    }
                });
                self.reply(h, r);
            }
            f::ListDir::NAME => {
                let r = postcard::from_bytes::<PathArgs>(args).map_err(|_| bad()).and_then(|a| {
                    if let Some((_, listing)) = self.generated(&a.path) {
                        return listing.ok_or_else(|| os_error(libc::ENOTDIR, &a.path));
                    }
                    match self.lookup(&a.path)? {
                        (_, Body::Dir(entries)) => Ok(entries.clone()),
                        _ => Err(os_error(libc::ENOTDIR, &a.path)),
                    }
                });
                self.reply(h, r);
            }
            f::ReadLink::NAME => {
                let r = postcard::from_bytes::<PathArgs>(args).map_err(|_| bad()).and_then(|a| {
                    match self.fs.links.get(&a.path[..]) {
                        Some(target) => Ok(ByteBuf::from(target.clone())),
                        None => Err(os_error(libc::EINVAL, &a.path)),
                    }
                });
                self.reply(h, r);
            }
            f::FileOpenRead::NAME if self.lie == Lie::GarbageOpen => self.reply_raw(h, &GARBAGE),
            f::FileHash::NAME if matches!(self.lie, Lie::ClaimedHash(_)) => {
                let Lie::ClaimedHash(d) = &self.lie else { return };
                let d = ByteBuf::from(d.clone());
                self.reply(h, Ok(d));
            }
            f::FileOpenRead::NAME => {
                let r = postcard::from_bytes::<f::OpenReadArgs>(args).map_err(|_| bad()).and_then(|a| {
                    let (st, opened_size, content) = match self.lookup(&a.path)? {
                        (st, Body::File { opened_size, content }) => (st.clone(), *opened_size, content.clone()),
                        (_, Body::Dir(_)) => return Err(os_error(libc::EISDIR, &a.path)),
                        (_, Body::Link) => return Err(os_error(libc::ENOENT, &a.path)),
                    };
                    self.next_open += 1;
                    let id = self.next_open;
                    self.open.insert(id, Open { content, pos: 0, hash: Hasher::new(a.hash), reads: 0 });
                    Ok(FileOpened {
                        id,
                        size: opened_size,
                        mode: st.mode,
                        mtime: st.mtime,
                        mtime_nsec: st.mtime_nsec,
                        owner: (st.uid, st.gid),
                    })
                });
                self.reply(h, r);
            }
            f::FileRead::NAME if matches!(self.flood, Flood::ReadBomb) => {
                // A bytes reply of about 64 KiB that inflates to 64 MiB.
                self.reply_bomb(h, &postcard::to_allocvec(&ByteBuf::from(vec![0u8; 64 << 20])).expect("encodes"));
            }
            f::FileRead::NAME => {
                let mut read = 0;
                let r = postcard::from_bytes::<FileReadArgs>(args).map_err(|_| bad()).and_then(|a| {
                    let o = self.open.get_mut(&a.id).ok_or_else(|| os_error(libc::EBADF, b"file_read"))?;
                    let chunk = o.content.chunk(o.pos, u64::from(a.len));
                    o.pos += chunk.len() as u64;
                    o.hash.update(&chunk);
                    read = o.reads;
                    o.reads += 1;
                    Ok(chunk)
                });
                let second = read == 1;
                match (&self.lie, r) {
                    (_, Err(e)) => self.reply::<()>(h, Err(e)),
                    (Lie::Flip, Ok(mut chunk)) if second && !chunk.is_empty() => {
                        // Hashed as it was, sent otherwise.
                        chunk[0] ^= 1;
                        self.reply(h, Ok(ByteBuf::from(chunk)));
                    }
                    (Lie::Oversize, Ok(mut chunk)) if read == 0 => {
                        chunk.push(b'!');
                        self.reply(h, Ok(ByteBuf::from(chunk)));
                    }
                    (Lie::OversizeDeflated, Ok(chunk)) if read == 0 => {
                        let more = ByteBuf::from(vec![b'x'; chunk.len() + 1]);
                        self.reply_bomb(h, &postcard::to_allocvec(&more).expect("encodes"));
                    }
                    (Lie::OversizeHuge, Ok(_)) => self.reply(h, Ok(ByteBuf::from(vec![b'x'; 100 << 20]))),
                    (Lie::GarbageRead, Ok(_)) if second => self.reply_raw(h, &GARBAGE),
                    (Lie::WrongTypeRead, Ok(_)) if second => {
                        let other =
                            FileOpened { id: 7, size: 1 << 40, mode: 0o4755, mtime: 0, mtime_nsec: 0, owner: (0, 0) };
                        self.reply(h, Ok(other));
                    }
                    (Lie::ErrorRead, Ok(_)) if second => {
                        // Text meant for the terminal that prints the error.
                        let mut e = os_error(libc::EIO, b"/t/f\x1b]0;owned\x07\x1b[2J\rforged line");
                        e.causes.push("cause\x1b[31m red\n".into());
                        self.reply::<()>(h, Err(e));
                    }
                    (Lie::SilentRead, Ok(_)) if second => {}
                    (_, Ok(chunk)) => self.reply(h, Ok(ByteBuf::from(chunk))),
                }
            }
            f::FileClose::NAME if self.lie == Lie::GarbageClose => self.reply_raw(h, &GARBAGE),
            f::FileClose::NAME if self.lie == Lie::SilentClose => {}
            f::FileClose::NAME => {
                let lie = self.lie.clone();
                let r = postcard::from_bytes::<FileCloseArgs>(args).map_err(|_| bad()).and_then(|a| {
                    let o = self.open.remove(&a.id).ok_or_else(|| os_error(libc::EBADF, b"file_close"))?;
                    let mut closed = FileClosed { size: o.pos, digest: ByteBuf::from(o.hash.digest().as_bytes()) };
                    match lie {
                        Lie::Digest => closed.digest[0] ^= 1,
                        Lie::DigestEmpty => closed.digest.clear(),
                        Lie::CloseSize => closed.size += 1,
                        _ => {}
                    }
                    Ok(closed)
                });
                self.reply(h, r);
            }
            f::Exec::NAME if !matches!(self.flood, Flood::None | Flood::ReplyBomb | Flood::ReadBomb) => {
                match postcard::from_bytes::<ExecArgs>(args) {
                    Ok(a) => self.flood(h, &a),
                    Err(_) => self.reply::<()>(h, Err(bad())),
                }
            }
            other => {
                let e = RemoteError::new(ErrorKind::UnknownFunction, other);
                self.reply::<()>(h, Err(e));
            }
        }
    }
}

impl Agent {
    /// `output-flood`, `ack-flood` (see the module docs): frames for the
    /// exec's stream or stdin-credit handle, written in 1 MiB batches
    /// without reading anything, as fast as the master takes them. A write
    /// that fails (the master closed the stream) ends the flood.
    fn flood(&mut self, h: &Header, a: &ExecArgs) {
        let (handle, phases) = match self.flood {
            Flood::Output => {
                let frame = |n: usize| ExecOutput { fd: 1, data: ByteBuf::from(vec![b'x'; n]) };
                let tiny = postcard::to_allocvec(&frame(1)).expect("encode");
                let full = postcard::to_allocvec(&frame(64 << 10)).expect("encode");
                (a.stream_to, [(tiny, 400_000u64), (full, 8192)])
            }
            Flood::Acks => {
                let ack = postcard::to_allocvec(&1u32).expect("encode");
                // A varint that never ends: no u32 decodes from it.
                (a.stdin_acks_to, [(ack, 2_000_000), (vec![0xff; 6], 400_000)])
            }
            Flood::Bomb => {
                let big = ExecOutput { fd: 1, data: ByteBuf::from(vec![b'x'; 64 << 20]) };
                let big = postcard::to_allocvec(&big).expect("encode");
                let bomb = mito::proto::compress::compress(&big).expect("compressible");
                let Some(handle) = a.stream_to else { return };
                let h2 = Header {
                    flags: FLAG_COMPRESSED,
                    dst: h.src,
                    src: self.id,
                    auth: self.id,
                    handle,
                    ..Header::default()
                };
                self.send(&h2, &bomb);
                return self.reply(
                    h,
                    Ok(ExecReply {
                        status: mito::proto::ExitStatus { code: Some(0), signal: None },
                        ..ExecReply::default()
                    }),
                );
            }
            Flood::None | Flood::ReplyBomb | Flood::ReadBomb => return,
        };
        let Some(handle) = handle else {
            return self.reply::<()>(h, Err(RemoteError::new(ErrorKind::BadArgs, "nothing to flood")));
        };
        let header = Header { dst: h.src, src: self.id, auth: self.id, handle, ..Header::default() };
        let (mut sent, mut batch) = (0u64, Vec::with_capacity(2 << 20));
        let mut out = self.out.lock();
        'flood: for (payload, count) in phases {
            let frame = encode(&header, &payload);
            for i in 0..count {
                batch.extend_from_slice(&frame);
                if batch.len() >= 1 << 20 || i + 1 == count {
                    if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                        break 'flood;
                    }
                    sent += batch.len() as u64;
                    batch.clear();
                }
            }
        }
        drop(out);
        let done = Path::new(std::ffi::OsStr::from_bytes(&outside())).join("flood-sent");
        let _ = std::fs::write(done, sent.to_string());
        self.reply(
            h,
            Ok(ExecReply { status: mito::proto::ExitStatus { code: Some(0), signal: None }, ..ExecReply::default() }),
        );
    }
}

fn main() {
    let scenario = std::env::var("MITO_HOSTILE").unwrap_or_default();
    let id = context_id();
    let mut first = b"\nMITO2\n".to_vec();
    let hello = Hello {
        protocol_version: mito::proto::PROTOCOL_VERSION,
        arch: std::env::consts::ARCH.into(),
        pid: std::process::id(),
        agent_hash: "hostile".into(),
        exe: "hostile_agent".into(),
    };
    let h = Header { dst: MASTER_ID, src: id, auth: id, handle: handles::HELLO, ..Header::default() };
    first.extend(encode(&h, &postcard::to_allocvec(&hello).expect("encode hello")));
    let mut flood = Flood::None;
    let sibling: u32 = std::env::var("MITO_HOSTILE_SIBLING").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut forge = None;
    let mut thief = None;
    let mut lie = Lie::None;
    let fs = match scenario.as_str() {
        s if s.starts_with("name-") => bad_name(&s["name-".len()..]),
        "link-then-dir" => link_then_dir(),
        "dir-over-link" => dir_over_link(),
        "modes" => modes(),
        "mtime-extremes" => mtime_extremes(),
        "deep" => Fs { generated: Some(Generated::Deep), ..Fs::default() },
        "wide" => wide(false),
        "wide-long-names" => wide(true),
        "sizes" => sizes(),
        "pre-adoption" => {
            first.extend(pre_adoption(id));
            Fs::default()
        }
        "forge-goodbye" => {
            forge = Some(forged_goodbyes(id, sibling));
            Fs::default()
        }
        "output-flood" => {
            flood = Flood::Output;
            Fs::default()
        }
        "ack-flood" => {
            flood = Flood::Acks;
            Fs::default()
        }
        "output-bomb" => {
            flood = Flood::Bomb;
            Fs::default()
        }
        "reply-bomb" => {
            flood = Flood::ReplyBomb;
            Fs::default()
        }
        "read-bomb" => {
            flood = Flood::ReadBomb;
            let mut fs = Fs::default();
            let bomb = stat(FileKind::File, 0o644, 1 << 20);
            fs.file(b"/t/bomb", bomb, 1 << 20, Content::Pattern(1 << 20));
            fs
        }
        "resource-thief" => {
            thief = Some(Thief::from_env(sibling));
            Fs::default()
        }
        "garbage-reply" | "silent" => Fs::default(),
        s if s.starts_with("get-") && Lie::get(&s["get-".len()..]).is_some() => {
            let (l, fs) = Lie::get(&s["get-".len()..]).expect("checked");
            lie = l;
            fs
        }
        other => {
            eprintln!("hostile_agent: unknown scenario MITO_HOSTILE={other:?}");
            std::process::exit(64);
        }
    };
    let out = std::io::stdout();
    // The hello and anything sent with it: one write.
    {
        let mut o = out.lock();
        if o.write_all(&first).and_then(|()| o.flush()).is_err() {
            return;
        }
    }
    let mut agent = Agent { id, fs, flood, thief, open: HashMap::new(), next_open: 0, lie, out };
    let mut decoder = Decoder::new(MAX_MESSAGE_SIZE);
    let mut input = std::io::stdin().lock();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for m in decoder.feed(&buf[..n]) {
            let Ok(m) = m else {
                eprintln!("hostile_agent: malformed frame from the master");
                std::process::exit(76);
            };
            match m.header.handle {
                handles::SHUTDOWN => return,
                handles::CALL_FUNCTION => {
                    let Some(payload) = m.payload(MAX_MESSAGE_SIZE as usize) else { continue };
                    let payload = payload.into_owned();
                    match scenario.as_str() {
                        "silent" => continue,
                        "garbage-reply" => {
                            agent.reply_raw(&m.header, &GARBAGE);
                            continue;
                        }
                        _ => {}
                    }
                    if let Some(forged) = &forge {
                        // Before the reply: the reply then shows they went up.
                        let mut o = agent.out.lock();
                        let _ = o.write_all(forged).and_then(|()| o.flush());
                    }
                    agent.call(&m.header, &payload);
                }
                _ => {
                    let done = agent.thief.as_mut().and_then(|t| t.reply(&m.header, &m.data));
                    if let Some(ping) = done {
                        agent.reply(&ping, Ok(()));
                    }
                }
            }
        }
    }
}
