//! A target that lies during a single-file `get`: `examples/hostile_agent.rs`
//! playing the `get-*` scenarios (its module docs list them) serves `/t/f`
//! with wrong digests, chunks that differ from what it hashed, replies too
//! big, of the wrong type, garbage or none, odd modes and mtimes, and a
//! `file_hash` that claims our file is theirs.
//!
//! Every test checks the same things: a typed error naming what went wrong
//! (and the context), the site (destination, its directory, a victim
//! directory beside it) exactly as it was, byte for byte, when the get
//! failed (so no temp file left, and an existing destination unchanged), a
//! bound on time (each get runs on a thread the test waits for with a
//! deadline), and a master still usable after: the lying context still
//! answers, and a real local context still copies a file.
//!
//! Already covered elsewhere and not repeated: sizes that lie with no
//! destination (`tests/hostile.rs`, `sizes_that_lie_...`; here only over an
//! existing one), setuid and extreme mtimes on their own
//! (`tests/hostile.rs`), a compressed chunk bomb (`tests/files.rs`), a
//! chunk changed between a put's hash and its write (`tests/files.rs`).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{peak_kib, reset_peak, Site};
use mito::core::xxh3::Hasher;
use mito::master::transfer::CHUNK;
use mito::{
    CallError, Context, CopyOptions, Digest, ErrorKind, GetOptions, HashKind, LocalOptions, Router, TransferError,
    TransferStats,
};

use common::hostile_harness as harness;

/// The size of the harness's `/t/f` (`GET_LEN` there).
const GET_LEN: usize = (3 << 20) + 12345;

/// The harness's `/t/f` (`get_content` there).
fn content() -> Vec<u8> {
    (0..GET_LEN).map(|i| ((i * 7 + i / 4096) % 251) as u8 + 1).collect()
}

fn digest(kind: HashKind, data: &[u8]) -> Digest {
    let mut h = Hasher::new(kind);
    h.update(data);
    h.digest()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The longest any get here may take: the slowest waits a 3 s call
/// timeout and the 5 s close of a failed transfer.
const BOUND: Duration = Duration::from_secs(60);

/// What lstat and the content say about one path.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    mode: u32,
    uid: u32,
    mtime: (i64, i64),
    len: u64,
    /// The bytes of a file, the target of a symlink.
    body: Vec<u8>,
}

/// Every path under `root`, symlinks not followed, file contents read.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Seen> {
    common::snapshot_tree(root, &|p, m| {
        let body = if m.file_type().is_symlink() {
            std::fs::read_link(p).map(|t| t.into_os_string().into_encoded_bytes()).unwrap_or_default()
        } else if m.is_file() {
            std::fs::read(p).unwrap_or_default()
        } else {
            Vec::new()
        };
        // A directory's mtime moves when a temp file comes and goes: its
        // entries are what counts, and they are walked.
        let mtime = if m.is_dir() { (0, 0) } else { (m.mtime(), m.mtime_nsec()) };
        Seen { mode: m.mode(), uid: m.uid(), mtime, len: m.len(), body }
    })
}

/// The paths that differ between two snapshots (empty: none).
fn differences(before: &BTreeMap<PathBuf, Seen>, after: &BTreeMap<PathBuf, Seen>) -> Vec<String> {
    let mut v = Vec::new();
    for (p, seen) in after {
        match before.get(p) {
            None => v.push(format!("new: {}", p.display())),
            Some(old) if old != seen => v.push(format!(
                "changed: {} mode {:o} -> {:o}, len {} -> {}, mtime {:?} -> {:?}",
                p.display(),
                old.mode,
                seen.mode,
                old.len,
                seen.len,
                old.mtime,
                seen.mtime
            )),
            _ => {}
        }
    }
    v.extend(before.keys().filter(|p| !after.contains_key(*p)).map(|p| format!("gone: {}", p.display())));
    v
}

/// How to start the harness playing `scenario`, with `env` beside.
fn harness_options(scenario: &str, env: &[(&str, String)]) -> LocalOptions {
    let mut vars = vec![("MITO_HOSTILE".into(), scenario.into())];
    vars.extend(env.iter().map(|(k, v)| ((*k).into(), v.into())));
    LocalOptions {
        name: Some(format!("hostile-{scenario}")),
        sh: harness(),
        env: vars,
        connect_timeout: Duration::from_secs(10),
    }
}

/// A context whose "agent" is the harness playing `scenario`.
fn hostile(router: &Router, scenario: &str, env: &[(&str, String)]) -> Context {
    router.local(harness_options(scenario, env)).expect("the harness says hello")
}

/// `ctx.get_with_options(remote, dest, copy)` on a thread of its own,
/// awaited for at most [`BOUND`]: a get that hangs fails the test.
fn bounded_get(ctx: &Context, remote: &str, dest: &Path, copy: CopyOptions) -> Result<TransferStats, TransferError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ctx, path, dest) = (ctx.clone(), remote.to_string(), dest.to_path_buf());
    let t0 = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(ctx.get_with_options(&path, &dest, &GetOptions::default(), &copy, &|_| {}));
    });
    match rx.recv_timeout(BOUND) {
        Ok(r) => r,
        Err(_) => panic!("the get of {remote} hung: no answer after {:?}", t0.elapsed()),
    }
}

/// The destination states a lie is played against: absent, or a file of
/// ours that must come out of a failed get as it went in.
#[derive(Clone, Copy, Debug)]
enum Dest {
    Absent,
    Existing,
}

/// `work/<name>` prepared as `how`.
fn prepare(site: &Site, name: &str, how: Dest) -> PathBuf {
    let dest = site.work().join(name);
    if let Dest::Existing = how {
        std::fs::write(&dest, b"ours, before the get\n").expect("write");
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    dest
}

/// The master is still usable: `ctx` (the liar) answers a ping, and a
/// fresh real local context copies a file.
fn master_still_works(router: &Router, ctx: &Context, site: &Site) {
    ctx.ping().unwrap_or_else(|e| panic!("{}: the lying context no longer answers: {e}", ctx.name()));
    let honest = router.local(LocalOptions::default()).expect("a real local context");
    let src = site.root().join("honest-src");
    std::fs::write(&src, b"an honest file\n").expect("write");
    let back = site.root().join("honest-back");
    honest.get(&src, &back).expect("a get from a real context");
    assert_eq!(std::fs::read(&back).expect("read"), b"an honest file\n");
    std::fs::remove_file(&src).expect("rm");
    std::fs::remove_file(&back).expect("rm");
    honest.shutdown();
}

/// Runs a get of `/t/f` into a destination prepared as each of [`Dest`],
/// checks its error with `check`, and that the site is as it was.
fn refused_everywhere(ctx: &Context, site: &Site, copy: CopyOptions, what: &str, check: &dyn Fn(&Path, TransferError)) {
    for how in [Dest::Absent, Dest::Existing] {
        let dest = prepare(site, "f", how);
        let before = snapshot(site.root());
        match bounded_get(ctx, "/t/f", &dest, copy) {
            Ok(st) => panic!("{what}, {how:?}: the get succeeded: {st:?}"),
            Err(e) => check(&dest, e),
        }
        let d = differences(&before, &snapshot(site.root()));
        assert!(d.is_empty(), "{what}, {how:?}: the site changed:\n{}", d.join("\n"));
        let _ = std::fs::remove_file(&dest);
    }
}

/// Control: the harness's honest `/t/f` arrives whole, with its mode and
/// mtime, with either digest, over an existing file of ours. So what fails
/// below fails because of the lie, not the harness.
#[test]
fn an_honest_harness_file_arrives_whole() {
    let router = Router::new().expect("router");
    let site = Site::new("get-honest");
    let ctx = hostile(&router, "get-honest", &[]);
    let data = content();
    for kind in [HashKind::Xxh3_128, HashKind::Sha256] {
        let dest = prepare(&site, "f", Dest::Existing);
        let st = bounded_get(&ctx, "/t/f", &dest, CopyOptions { checksum: kind, ..CopyOptions::default() })
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!((st.bytes, st.changed, st.checksum), (GET_LEN as u64, true, digest(kind, &data)));
        assert!(std::fs::read(&dest).expect("read") == data, "{kind:?}: the bytes");
        let m = std::fs::metadata(&dest).expect("meta");
        assert_eq!((m.mode() & 0o7777, m.mtime(), m.mtime_nsec()), (0o640, 1_600_000_000, 0));
        std::fs::remove_file(&dest).expect("rm");
    }
}

/// A digest at close that is not the digest of the bytes that came:
/// a chunk with a bit flipped after the target hashed it (`get-flip`), the
/// right bytes with a wrong digest (`get-digest`), an empty digest
/// (`get-digest-empty`), the right digest with a size one byte off
/// (`get-close-size`); each with XXH3-128 and with SHA-256. A typed
/// `Checksum` naming the context and the destination, nothing renamed into
/// place (an existing destination keeps its bytes, mode and mtime), no
/// temp file.
#[test]
fn a_digest_that_does_not_match_the_bytes_is_refused_with_either_hash() {
    let router = Router::new().expect("router");
    let site = Site::new("get-digest");
    for scenario in ["get-flip", "get-digest", "get-digest-empty", "get-close-size"] {
        let ctx = hostile(&router, scenario, &[]);
        for kind in [HashKind::Xxh3_128, HashKind::Sha256] {
            let copy = CopyOptions { checksum: kind, ..CopyOptions::default() };
            let what = format!("{scenario} {kind:?}");
            refused_everywhere(&ctx, &site, copy, &what, &|dest, e| match e {
                TransferError::Checksum { ref context, ref path } => {
                    assert_eq!((context.as_str(), path.as_path()), (ctx.name(), dest), "{what}");
                    assert!(e.to_string().contains("checksum mismatch"), "{what}: {e}");
                }
                other => panic!("{what}: wanted Checksum, got {other:?}"),
            });
        }
        master_still_works(&router, &ctx, &site);
    }
}

/// Sizes that lie (`sizes`: `larger` announces 1000 bytes and serves
/// 64 MiB, `smaller` announces 3 MiB and serves 10 bytes, `huge` announces
/// `u64::MAX`) over an existing destination: `SourceChanged`, the file of
/// ours left as it was (`tests/hostile.rs` checks the same with none), the
/// larger one stopped within a chunk of what it announced.
#[test]
fn sizes_that_lie_leave_an_existing_destination_as_it_was() {
    let router = Router::new().expect("router");
    let site = Site::new("get-sizes");
    let ctx = hostile(&router, "sizes", &[]);
    for name in ["larger", "smaller", "huge"] {
        let dest = prepare(&site, name, Dest::Existing);
        let before = snapshot(site.root());
        match bounded_get(&ctx, &format!("/t/{name}"), &dest, CopyOptions::default()) {
            Err(TransferError::SourceChanged { context, expected, read, .. }) => {
                assert_eq!(context, ctx.name());
                assert_ne!(expected, read, "{name}");
                assert!(read <= expected.saturating_add(CHUNK as u64), "{name}: read {read} of {expected}");
            }
            other => panic!("{name}: wanted SourceChanged, got {other:?}"),
        }
        let d = differences(&before, &snapshot(site.root()));
        assert!(d.is_empty(), "{name}: the site changed:\n{}", d.join("\n"));
    }
    master_still_works(&router, &ctx, &site);
}

/// A `file_read` reply one byte longer than the chunk asked for, as it is
/// (`get-oversize`) or deflated to a frame that inflates to that, within
/// what a `file_read` may inflate to (`get-oversize-deflated`, with
/// `compress`): a typed decode error for `file_read` saying so, and the
/// site as it was.
#[test]
fn a_read_reply_longer_than_asked_is_refused() {
    let router = Router::new().expect("router");
    let site = Site::new("get-oversize");
    for (scenario, compress) in [("get-oversize", false), ("get-oversize-deflated", true)] {
        let ctx = hostile(&router, scenario, &[]);
        let copy = CopyOptions { compress, ..CopyOptions::default() };
        refused_everywhere(&ctx, &site, copy, scenario, &|_, e| match e {
            TransferError::Remote(CallError::Decode { context, function, detail }) => {
                assert_eq!((context.as_str(), function.as_str()), (ctx.name(), "file_read"), "{scenario}");
                assert!(
                    detail.contains(&format!("{} bytes, more than the {CHUNK}", CHUNK + 1)),
                    "{scenario}: {detail}"
                );
            }
            other => panic!("{scenario}: wanted a decode error, got {other:?}"),
        });
        master_still_works(&router, &ctx, &site);
    }
}

/// Every `file_read` answered with 100 MiB, uncompressed, within the frame
/// limit (`get-oversize-huge`): refused like one byte too many. The master
/// reads a reply whole before the get sees its length, so its peak RSS
/// grows by about one reply (100 MiB measured); the four other reads in
/// flight (five for this file) are answered with 100 MiB each after the get has
/// failed, and those replies, delivered to mailboxes nobody waits on, are
/// dropped one by one rather than held: measured again once a ping queued
/// behind them has come back, the peak is still below two replies (all
/// five held would be 500 MiB).
#[test]
fn read_replies_of_100_mib_are_refused_and_not_accumulated() {
    let router = Router::new().expect("router");
    let site = Site::new("get-oversize-huge");
    let ctx = hostile(&router, "get-oversize-huge", &[]);
    let dest = prepare(&site, "f", Dest::Existing);
    let before = snapshot(site.root());
    let base = reset_peak();
    match bounded_get(&ctx, "/t/f", &dest, CopyOptions::default()) {
        Err(TransferError::Remote(CallError::Decode { function, detail, .. })) => {
            assert_eq!(function, "file_read");
            assert!(detail.contains(&format!("{} bytes, more than", 100 << 20)), "{detail}");
        }
        other => panic!("wanted a decode error, got {other:?}"),
    }
    let during = peak_kib().saturating_sub(base) >> 10;
    let d = differences(&before, &snapshot(site.root()));
    assert!(d.is_empty(), "the site changed:\n{}", d.join("\n"));
    // The ping's reply comes after the replies to every read in flight.
    master_still_works(&router, &ctx, &site);
    let after = peak_kib().saturating_sub(base) >> 10;
    eprintln!("peak RSS grew by {during} MiB during the get, {after} MiB once the late replies were in");
    assert!(during < 200 && after < 200, "the master's peak RSS grew by {during} then {after} MiB");
}

/// Replies that are not what was asked: garbage for the open
/// (`get-garbage-open`), for the second read (`get-garbage-read`), for the
/// close (`get-garbage-close`), a `FileOpened` for the second read
/// (`get-wrong-type-read`): a typed decode error naming the function; an
/// error for the second read (`get-error-read`, EIO): the target's error,
/// typed, with its errno. The site as it was each time.
#[test]
fn garbage_wrong_type_and_error_replies_are_typed_errors() {
    let router = Router::new().expect("router");
    let site = Site::new("get-garbage");
    let cases = [
        ("get-garbage-open", "file_open_read"),
        ("get-garbage-read", "file_read"),
        ("get-wrong-type-read", "file_read"),
        ("get-garbage-close", "file_close"),
    ];
    for (scenario, function) in cases {
        let ctx = hostile(&router, scenario, &[]);
        refused_everywhere(&ctx, &site, CopyOptions::default(), scenario, &|_, e| match e {
            TransferError::Remote(CallError::Decode { context, function: f, .. }) => {
                assert_eq!((context.as_str(), f.as_str()), (ctx.name(), function), "{scenario}");
            }
            other => panic!("{scenario}: wanted a decode error from {function}, got {other:?}"),
        });
        master_still_works(&router, &ctx, &site);
    }
    let ctx = hostile(&router, "get-error-read", &[]);
    refused_everywhere(&ctx, &site, CopyOptions::default(), "get-error-read", &|_, e| match e {
        TransferError::Remote(CallError::Remote(r)) => {
            assert_eq!((r.kind, r.errno, r.context.as_str()), (ErrorKind::Os, libc::EIO, ctx.name()), "{r:?}");
        }
        other => panic!("get-error-read: wanted the target's EIO, got {other:?}"),
    });
    master_still_works(&router, &ctx, &site);
}

/// A target that stops answering mid-transfer (`get-silent-read`: the
/// second read) or at the close (`get-silent-close`): the get ends with a
/// typed `Timeout` for that function once the context's call timeout (3 s
/// here) has passed, plus at most the 5 s it gives the discarding close,
/// and leaves the site as it was.
#[test]
fn a_target_that_stops_answering_is_bounded_by_the_call_timeout() {
    let router = Router::new().expect("router");
    let site = Site::new("get-silent");
    for (scenario, function) in [("get-silent-read", "file_read"), ("get-silent-close", "file_close")] {
        let ctx = hostile(&router, scenario, &[]).with_timeout(Some(Duration::from_secs(3)));
        let t0 = Instant::now();
        refused_everywhere(&ctx, &site, CopyOptions::default(), scenario, &|_, e| match e {
            TransferError::Remote(CallError::Timeout { function: f, timeout, .. }) => {
                assert_eq!((f.as_str(), timeout), (function, Duration::from_secs(3)), "{scenario}");
            }
            other => panic!("{scenario}: wanted a timeout of {function}, got {other:?}"),
        });
        // Two gets, each at most 3 s of call timeout and 5 s of discard.
        assert!(t0.elapsed() < Duration::from_secs(2 * (3 + 5) + 10), "{scenario}: {:?}", t0.elapsed());
        master_still_works(&router, &ctx, &site);
    }
}

/// `get-special`: `/t/f` mode 07777 with mtime `i64::MIN` and `u32::MAX`
/// nanoseconds, `/t/g` mode `u32::MAX` with mtime `i64::MAX`, fetched over
/// destinations that are a symlink to a file outside and a fifo: each
/// becomes a plain file of ours, mode 0777 (no setuid, setgid, sticky, nor
/// any bit above), its mtime clamped within years 1..9999 (the file system
/// may clamp further), the link's target untouched, and the fifo neither
/// opened for writing nor waited on.
#[test]
fn special_modes_and_extreme_mtimes_are_stripped_and_clamped() {
    let router = Router::new().expect("router");
    let site = Site::new("get-special");
    let ctx = hostile(&router, "get-special", &[]);
    let link = site.work().join("f");
    std::os::unix::fs::symlink(site.victim(), &link).expect("symlink");
    let fifo = site.work().join("g");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let victim = snapshot(&site.root().join("outside"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let (year_1, year_9999, decade) = (-62_135_596_800, 253_402_300_799, 10 * 365 * 86_400);
    for (remote, dest) in [("/t/f", &link), ("/t/g", &fifo)] {
        let st = bounded_get(&ctx, remote, dest, CopyOptions::default()).unwrap_or_else(|e| panic!("{remote}: {e}"));
        assert!(st.changed, "{remote}");
        let m = std::fs::symlink_metadata(dest).expect("lstat");
        assert!(m.file_type().is_file(), "{remote}: {:?}", m.file_type());
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o777, rustix::process::geteuid().as_raw()), "{remote}");
        let ok = if remote == "/t/f" {
            (year_1..0).contains(&m.mtime())
        } else {
            m.mtime() > now + decade && m.mtime() <= year_9999
        };
        assert!(ok, "{remote}: mtime {}", m.mtime());
        assert!(m.mtime_nsec() < 1_000_000_000, "{remote}: {} ns", m.mtime_nsec());
    }
    assert_eq!(std::fs::read(&link).expect("read"), content());
    assert_eq!(std::fs::read(&fifo).expect("read"), b"all bits\n");
    let d = differences(&victim, &snapshot(&site.root().join("outside")));
    assert!(d.is_empty(), "the link's target changed:\n{}", d.join("\n"));
    let temps: Vec<_> = std::fs::read_dir(site.work()).expect("ls").flatten().map(|e| e.file_name()).collect();
    assert_eq!(temps.len(), 2, "only f and g in work/: {temps:?}");
    master_still_works(&router, &ctx, &site);
}

/// The idempotent path (`get-hash-lie`): the target's `stat` of `/t/f`
/// matches our existing destination (size, mode 0640, mtime) and its
/// `file_hash` answers our file's digest, though `/t/f` holds other bytes.
/// By design the target decides what its file is, so the get skips
/// (`changed: false`, our digest): what matters is that the skip wrote
/// nothing (our file keeps its bytes, mode and mtime; no temp file) and
/// that `force` still fetches the real bytes. With either hash.
#[test]
fn a_target_claiming_our_digest_makes_the_get_skip_and_write_nothing() {
    let router = Router::new().expect("router");
    let site = Site::new("get-hash-lie");
    let ours: Vec<u8> = vec![b'o'; GET_LEN];
    assert_ne!(ours, content());
    for kind in [HashKind::Xxh3_128, HashKind::Sha256] {
        let theirs = digest(kind, &ours);
        let ctx = hostile(&router, "get-hash-lie", &[("MITO_HOSTILE_DIGEST", hex(theirs.as_bytes()))]);
        let dest = site.work().join("f");
        std::fs::write(&dest, &ours).expect("write");
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        std::fs::File::options().write(true).open(&dest).and_then(|f| f.set_modified(mtime)).expect("mtime");
        let before = snapshot(site.root());
        let copy = CopyOptions { checksum: kind, ..CopyOptions::default() };
        let st = bounded_get(&ctx, "/t/f", &dest, copy).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!((st.changed, st.bytes, st.checksum), (false, GET_LEN as u64, theirs), "{kind:?}");
        let d = differences(&before, &snapshot(site.root()));
        assert!(d.is_empty(), "{kind:?}: a skipped get changed the site:\n{}", d.join("\n"));
        let st = bounded_get(&ctx, "/t/f", &dest, CopyOptions { force: true, ..copy }).expect("get --force");
        assert_eq!((st.changed, st.checksum), (true, digest(kind, &content())), "{kind:?}");
        assert!(std::fs::read(&dest).expect("read") == content(), "{kind:?}: forced, the real bytes");
        std::fs::remove_file(&dest).expect("rm");
        master_still_works(&router, &ctx, &site);
    }
}

/// The same lie aimed at a symlink: our destination is a link to a file
/// outside whose size, mode, mtime and digest are what the target claims.
/// The comparison opens the destination without following links, so the
/// get does not skip: the link is replaced by the fetched file and the
/// file outside is untouched (were the link followed, the skip would
/// report the outside file as the copy).
#[test]
fn a_claimed_digest_never_makes_a_symlink_destination_count_as_ours() {
    let router = Router::new().expect("router");
    let site = Site::new("get-hash-link");
    let ours: Vec<u8> = vec![b'o'; GET_LEN];
    let target = site.root().join("outside/same");
    std::fs::write(&target, &ours).expect("write");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options().write(true).open(&target).and_then(|f| f.set_modified(mtime)).expect("mtime");
    let ctx =
        hostile(&router, "get-hash-lie", &[("MITO_HOSTILE_DIGEST", hex(digest(HashKind::Xxh3_128, &ours).as_bytes()))]);
    let dest = site.work().join("f");
    std::os::unix::fs::symlink(&target, &dest).expect("symlink");
    let outside = snapshot(&site.root().join("outside"));
    let st = bounded_get(&ctx, "/t/f", &dest, CopyOptions::default()).expect("get");
    assert!(st.changed, "{st:?}");
    assert!(std::fs::symlink_metadata(&dest).expect("lstat").file_type().is_file());
    assert!(std::fs::read(&dest).expect("read") == content());
    let d = differences(&outside, &snapshot(&site.root().join("outside")));
    assert!(d.is_empty(), "outside changed:\n{}", d.join("\n"));
    master_still_works(&router, &ctx, &site);
}

/// The same lies told by a context behind a real hop (the hop's agent
/// relays the frames as they are): a flipped bit, a reply one byte too
/// long, garbage for a read. The same typed errors, the site as it was,
/// and the hop and the liar both still answer.
#[test]
fn lies_told_behind_a_hop_are_refused_the_same_way() {
    let router = Router::new().expect("router");
    let site = Site::new("get-hop");
    let hop = router.local(LocalOptions { name: Some("hop".into()), ..LocalOptions::default() }).expect("hop");
    for scenario in ["get-flip", "get-oversize", "get-garbage-read"] {
        let ctx = hop.local(harness_options(scenario, &[])).expect("the harness says hello behind the hop");
        refused_everywhere(&ctx, &site, CopyOptions::default(), scenario, &|dest, e| match (scenario, e) {
            ("get-flip", TransferError::Checksum { context, path }) => {
                assert_eq!((context.as_str(), path.as_path()), (ctx.name(), dest));
            }
            (
                "get-oversize" | "get-garbage-read",
                TransferError::Remote(CallError::Decode { context, function, .. }),
            ) => {
                assert_eq!((context.as_str(), function.as_str()), (ctx.name(), "file_read"), "{scenario}");
            }
            (_, other) => panic!("{scenario}: got {other:?}"),
        });
        hop.ping().expect("the hop still answers");
        master_still_works(&router, &ctx, &site);
    }
}

/// A directory whose `bin/ssh` is the harness, and a `PATH` that finds
/// it first: the CLI's `ssh://` targets are then the harness.
fn harness_as_ssh(site: &Site) -> std::ffi::OsString {
    let bin = site.root().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    let _ = std::os::unix::fs::symlink(harness(), bin.join("ssh"));
    let mut path = bin.into_os_string();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

/// `mito get [extra] ssh://hostile:/t/f dest` with the harness playing
/// `scenario`.
fn cli_get(site: &Site, scenario: &str, extra: &[&str], dest: &Path) -> std::process::Output {
    let mut args = vec!["get"];
    args.extend_from_slice(extra);
    args.extend(["ssh://hostile:/t/f", dest.to_str().expect("utf8")]);
    std::process::Command::new(env!("CARGO_BIN_EXE_mito"))
        .current_dir(site.work())
        .env("PATH", harness_as_ssh(site))
        .env("MITO_HOSTILE", scenario)
        .args(&args)
        .output()
        .expect("run mito")
}

/// The CLI against the harness as an `ssh://` target: `mito get` of a
/// file whose digest lies (`get-digest`, with the default digest and
/// `--checksum sha256`) exits 255 with the context and "checksum
/// mismatch" in its message, and an existing destination keeps its bytes.
#[test]
fn cli_get_from_a_lying_target_fails_and_keeps_the_destination() {
    let site = Site::new("get-cli");
    harness_as_ssh(&site);
    let dest = prepare(&site, "f", Dest::Existing);
    for extra in [&[][..], &["--checksum", "sha256"][..]] {
        let before = snapshot(site.root());
        let o = cli_get(&site, "get-digest", extra, &dest);
        let (out, err) = common::output_text(&o);
        assert_eq!(o.status.code(), Some(255), "{extra:?}\nstdout: {out}\nstderr: {err}");
        assert!(err.contains("hostile") && err.contains("checksum mismatch"), "{extra:?}: {err}");
        let d = differences(&before, &snapshot(site.root()));
        assert!(d.is_empty(), "{extra:?}: the site changed:\n{}", d.join("\n"));
    }
}

/// Bytes that would act on a terminal (escapes, BEL, carriage return,
/// newline) in `text`.
fn control_bytes(text: &[u8]) -> Vec<u8> {
    text.iter().copied().filter(|&b| b == 0x1b || b == 0x07 || b == b'\r' || b == b'\n').collect()
}

/// A read answered with an error whose message and cause carry terminal
/// escapes (a window title, clear screen), a carriage return, and a
/// newline (`get-error-read`): the error as a library user prints it
/// (`Display`) and as the CLI prints it keep the target's words with those
/// bytes escaped, as every other target text is (ARCHITECTURE.md,
/// "Security": "remote text reaching a terminal has its control
/// characters escaped"). Exit 255, the destination kept.
#[test]
fn a_targets_error_text_is_printed_escaped() {
    let router = Router::new().expect("router");
    let site = Site::new("get-escapes");
    let ctx = hostile(&router, "get-error-read", &[]);
    harness_as_ssh(&site);
    let dest = prepare(&site, "f", Dest::Existing);
    let e = bounded_get(&ctx, "/t/f", &dest, CopyOptions::default()).expect_err("an error reply");
    let shown = e.to_string();
    assert!(shown.contains("forged line") && shown.contains("red"), "the target's words: {shown:?}");
    assert_eq!(control_bytes(shown.as_bytes()), b"", "TransferError's Display: {shown:?}");
    let before = snapshot(site.root());
    let o = cli_get(&site, "get-error-read", &[], &dest);
    let (out, err) = common::output_text(&o);
    assert_eq!(o.status.code(), Some(255), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("hostile") && err.contains("forged line"), "{err}");
    let printed = [&o.stdout[..], err.trim_end().as_bytes()].concat();
    assert_eq!(control_bytes(&printed), b"", "the CLI printed: {err:?}");
    let d = differences(&before, &snapshot(site.root()));
    assert!(d.is_empty(), "the site changed:\n{}", d.join("\n"));
}
