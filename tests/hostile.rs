//! A hostile target (issue 13): what `examples/hostile_agent.rs` sends —
//! crafted names, symlink tricks, setuid files and foreign owners, extreme
//! mtimes, sizes that lie, frames sent with a hello behind a hop — must not
//! write outside the destination, plant a setuid file or a foreign owner,
//! panic the master, or touch a sibling context. Each test names the
//! scenario it starts the harness with.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{is_root, output_text, skip_loudly, Site};
use mito::functions::{Exec, ExecArgs};
use mito::master::transfer::CHUNK;
use mito::{Context, GetOptions, LocalOptions, Router, TransferError};
use serde_bytes::ByteBuf;

use common::hostile_harness as harness;

/// What lstat says about one path: mode, owner, size, link target.
type Seen = (u32, u32, u64, Option<PathBuf>);

/// Every path under `root` (symlinks not followed).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Seen> {
    common::snapshot_tree(root, &|p, m| {
        let link = m.file_type().is_symlink().then(|| std::fs::read_link(p).ok()).flatten();
        (m.mode(), m.uid(), m.len(), link)
    })
}

/// What changed outside `dest` between two snapshots (empty: nothing).
fn changed_outside(before: &BTreeMap<PathBuf, Seen>, after: &BTreeMap<PathBuf, Seen>, dest: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for (p, seen) in after {
        if p.starts_with(dest) {
            continue;
        }
        match before.get(p) {
            None => v.push(format!("new: {} {seen:?}", p.display())),
            Some(old) if old != seen => v.push(format!("changed: {} {old:?} -> {seen:?}", p.display())),
            _ => {}
        }
    }
    for p in before.keys() {
        if !p.starts_with(dest) && !after.contains_key(p) {
            v.push(format!("gone: {}", p.display()));
        }
    }
    v
}

/// A context whose "agent" is the harness playing `scenario`.
fn hostile(router: &Router, scenario: &str, site: &Site) -> Context {
    router
        .local(LocalOptions {
            name: Some(format!("hostile-{scenario}")),
            sh: harness(),
            env: vec![
                ("MITO_HOSTILE".into(), scenario.into()),
                ("MITO_HOSTILE_OUTSIDE".into(), site.outside().into_os_string()),
            ],
            connect_timeout: Duration::from_secs(10),
        })
        .expect("the harness says hello")
}

/// `get -r /t` from `ctx` into the site's destination.
fn get_tree(ctx: &Context, dest: &Path, opts: &GetOptions) -> Result<mito::TreeStats, TransferError> {
    let plan = ctx.plan_remote_tree("/t")?;
    ctx.get_tree_with("/t", dest, &plan, opts, &|_| {})
}

fn me() -> (u32, u32) {
    (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw())
}

/// Every name `/t` may list that is not one path component is refused
/// with `BadName` (naming the context and the name) before anything is
/// written, and nothing appears or changes outside the destination. On a
/// master that trusts the names, `..`, `a/../../escaped` and an absolute
/// name write `escaped` outside it, and the others are copied or fail with
/// an untyped error (a name longer than `NAME_MAX` after the destination
/// was made).
#[test]
fn crafted_names_are_refused_and_nothing_is_written_outside() {
    let router = Router::new().expect("router");
    let mut failures = Vec::new();
    for (which, name) in [
        ("dotdot", b"..".to_vec()),
        ("climb", b"a/../../escaped".to_vec()),
        ("absolute", Vec::new()),
        ("slash", b"a/inner".to_vec()),
        ("nul", b"nul\0name".to_vec()),
        ("empty", b"".to_vec()),
        ("dot", b".".to_vec()),
        ("long", vec![b'n'; 256]),
    ] {
        let site = Site::new(&format!("names-{which}"));
        let name = if which == "absolute" {
            use std::os::unix::ffi::OsStrExt;
            site.outside().join("escaped").as_os_str().as_bytes().to_vec()
        } else {
            name
        };
        let ctx = hostile(&router, &format!("name-{which}"), &site);
        let before = snapshot(site.root());
        let r = get_tree(&ctx, &site.dest(), &GetOptions::default());
        let escaped = changed_outside(&before, &snapshot(site.root()), &site.dest());
        if !escaped.is_empty() {
            failures.push(format!("{which}: written outside the destination: {escaped:?}"));
        }
        match r {
            Err(ref e @ TransferError::BadName { ref context, name: ref got, .. }) => {
                if *got != name || context != ctx.name() {
                    failures
                        .push(format!("{which}: BadName for {got:?} in {context}, wanted {name:?} in {}", ctx.name()));
                }
                let text = e.to_string();
                let shown = mito::core::text::printable(&name, 240);
                if !text.contains(ctx.name()) || !text.contains(&format!("\"{shown}\"")) {
                    failures.push(format!("{which}: the message does not name the context and \"{shown}\": {text}"));
                }
            }
            other => failures.push(format!("{which}: wanted BadName, got {other:?}")),
        }
        ctx.ping().unwrap_or_else(|e| panic!("{which}: the master still talks to the context: {e}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `esc` listed as a symlink to a directory outside, then again as a
/// directory holding a setuid file: refused as a name listed twice;
/// nothing lands in the outside directory and its mode is untouched (a
/// trusting master writes `planted` through the link it just made, then
/// chmods the outside directory 0777 through it).
#[test]
fn a_name_listed_as_symlink_and_directory_cannot_write_through_the_link() {
    let router = Router::new().expect("router");
    let site = Site::new("link-then-dir");
    let ctx = hostile(&router, "link-then-dir", &site);
    let before = snapshot(site.root());
    let r = get_tree(&ctx, &site.dest(), &GetOptions::default());
    let escaped = changed_outside(&before, &snapshot(site.root()), &site.dest());
    assert!(escaped.is_empty(), "written outside the destination: {escaped:?} (result {r:?})");
    match r {
        Err(TransferError::BadName { context, name, why, .. }) => {
            assert_eq!((context.as_str(), name.as_slice()), (ctx.name(), &b"esc"[..]), "{why}");
        }
        other => panic!("wanted BadName for esc, got {other:?}"),
    }
}

/// The destination already holds a symlink `esc` to a directory outside
/// (as an earlier copy of a symlink leaves); this copy lists `esc` as a
/// directory: the link is not followed (a typed local error naming it),
/// nothing lands outside, the outside directory keeps its mode.
#[test]
fn a_symlink_already_in_the_destination_is_never_followed() {
    let router = Router::new().expect("router");
    let site = Site::new("dir-over-link");
    std::fs::create_dir(site.dest()).expect("mkdir dest");
    std::os::unix::fs::symlink(site.outside(), site.dest().join("esc")).expect("symlink");
    let ctx = hostile(&router, "dir-over-link", &site);
    let before = snapshot(site.root());
    let r = get_tree(&ctx, &site.dest(), &GetOptions::default());
    let escaped = changed_outside(&before, &snapshot(site.root()), &site.dest());
    assert!(escaped.is_empty(), "written outside the destination: {escaped:?} (result {r:?})");
    match r {
        Err(TransferError::Local { path, .. }) => assert_eq!(path, site.dest().join("esc")),
        other => panic!("wanted a local error for dest/esc, got {other:?}"),
    }
}

/// Mode bits of every path under `root`, relative, with owners.
fn modes_under(root: &Path) -> BTreeMap<String, (u32, u32, u32)> {
    snapshot(root)
        .into_keys()
        .map(|p| {
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            (rel, (m.mode() & 0o7777, m.uid(), m.gid()))
        })
        .collect()
}

/// By default a copy from a target is ours: setuid/setgid dropped (and
/// sticky on files), the target's owners (uid 0 and 4242:4343) not
/// applied, for a tree and for a single file. With `preserve_owner` (as
/// root) owners and special bits are kept, as `rsync -a` as root does.
#[test]
fn setuid_setgid_and_remote_owners_are_dropped_unless_asked() {
    let router = Router::new().expect("router");
    let site = Site::new("modes");
    let ctx = hostile(&router, "modes", &site);
    let (uid, gid) = me();
    let link_mode = 0o777; // lstat of a symlink on Linux
    let st = get_tree(&ctx, &site.dest(), &GetOptions::default()).expect("get -r");
    assert_eq!((st.files, st.dirs, st.symlinks), (4, 2, 1), "{st:?}");
    let want: BTreeMap<String, (u32, u32, u32)> = [
        ("", 0o775),
        ("d", 0o1777),
        ("d/inner", 0o777),
        ("l", link_mode),
        ("sgid", 0o755),
        ("sticky", 0o644),
        ("suid-root", 0o755),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), (m, uid, gid)))
    .collect();
    assert_eq!(modes_under(&site.dest()), want);
    let single = site.work().join("single");
    ctx.get("/t/suid-root", &single).expect("get");
    let m = std::fs::metadata(&single).expect("meta");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o755, uid, gid), "single file");

    if !is_root() {
        skip_loudly(
            "setuid_setgid_and_remote_owners_are_dropped_unless_asked (preserve_owner half)",
            "keeping other users' owners needs root",
        );
        return;
    }
    let kept = site.work().join("kept");
    let opts = GetOptions { preserve_owner: true };
    get_tree(&ctx, &kept, &opts).expect("get -r, preserving owners");
    let want: BTreeMap<String, (u32, u32, u32)> = [
        ("", (0o2775, 4242, 4343)),
        ("d", (0o3777, 4242, 4343)),
        ("d/inner", (0o6777, 0, 0)),
        ("l", (link_mode, 4242, 4343)),
        ("sgid", (0o2755, 4242, 4343)),
        ("sticky", (0o1644, 4242, 4343)),
        ("suid-root", (0o4755, 0, 0)),
    ]
    .into_iter()
    .map(|(p, v)| (p.to_string(), v))
    .collect();
    assert_eq!(modes_under(&kept), want);
    let single = site.work().join("single-kept");
    ctx.get_with("/t/sgid", &single, &opts, &|_| {}).expect("get, preserving owners");
    let m = std::fs::metadata(&single).expect("meta");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o2755, 4242, 4343), "single file");
}

/// mtimes of `i64::MAX` (with 2^32-1 ns) and `i64::MIN` neither panic the
/// master (a trusting one overflows `SystemTime` on the first) nor reach
/// the file system as they are: they are clamped to years 1..9999 (the
/// file system may clamp further), on files, and in a tree on directories
/// and symlinks too (which, before they got their times, kept the time of
/// the copy); the top of the tree gets its own mtime.
#[test]
fn extreme_mtimes_do_not_panic_and_are_clamped() {
    let router = Router::new().expect("router");
    let site = Site::new("mtimes");
    let ctx = hostile(&router, "mtime-extremes", &site);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let year_9999 = 253_402_300_799;
    let year_1 = -62_135_596_800;
    // Far enough ahead that the time of the copy is not mistaken for it.
    let decade = 10 * 365 * 86_400;
    let mtime = |p: &Path| std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).mtime();
    let check = |p: &Path, suffix: &str| {
        let future = mtime(&p.join(format!("future{suffix}")));
        assert!(future > now + decade && future <= year_9999, "future{suffix} mtime {future}");
        let past = mtime(&p.join(format!("past{suffix}")));
        assert!((year_1..0).contains(&past), "past{suffix} mtime {past}");
    };
    get_tree(&ctx, &site.dest(), &GetOptions::default()).expect("get -r");
    for suffix in ["", "-dir", "-link"] {
        check(&site.dest(), suffix);
    }
    assert_eq!(mtime(&site.dest()), 1_600_000_000, "the top of the tree");
    let single = site.work().join("single");
    std::fs::create_dir(&single).expect("mkdir");
    ctx.get("/t/future", single.join("future")).expect("get future");
    ctx.get("/t/past", single.join("past")).expect("get past");
    check(&single, "");
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("mito-tmp"))
        .collect()
}

/// A file that serves far more than it said (`larger`: 1000 bytes, then
/// 64 MiB), less (`smaller`), or says `u64::MAX` (`huge`): a typed
/// `SourceChanged`, read no further than one chunk past the announced
/// size, no file under the final name and no temp file; a plan with a
/// `u64::MAX` size still sums. A trusting master reads all 64 MiB, and
/// overflows (panics) on `huge`.
#[test]
fn sizes_that_lie_are_typed_errors_and_leave_no_file() {
    let router = Router::new().expect("router");
    let site = Site::new("sizes");
    let ctx = hostile(&router, "sizes", &site);
    let plan = ctx.plan_remote_tree("/t").expect("plan");
    assert_eq!(plan.total_bytes(), u64::MAX, "the total saturates");
    for name in ["larger", "smaller", "huge"] {
        let dest = site.work().join(name);
        match ctx.get(format!("/t/{name}"), &dest) {
            Err(TransferError::SourceChanged { context, expected, read, .. }) => {
                assert_eq!(context, ctx.name());
                assert_ne!(expected, read, "{name}");
                assert!(read <= expected.saturating_add(CHUNK as u64), "{name}: read {read} of {expected}");
            }
            other => panic!("{name}: wanted SourceChanged, got {other:?}"),
        }
        assert!(!dest.exists(), "{name}: nothing under the final name");
    }
    let r = ctx.get_tree("/t", site.dest(), &plan, &|_| {});
    assert!(matches!(r, Err(TransferError::SourceChanged { .. })), "{r:?}");
    assert!(!site.dest().join("huge").exists());
    for d in [site.work(), site.dest()] {
        assert_eq!(temp_files(&d), Vec::<String>::new(), "temp files left in {}", d.display());
    }
    ctx.ping().expect("the context still answers");
}

/// The CLI against the harness as an `ssh://` target (the harness is
/// `ssh` first on PATH): `get -r` of a tree with `..` exits 255 with the
/// context and the name in the message and writes nothing outside; a tree
/// with setuid files and foreign owners arrives plain and ours, and with
/// `--preserve-owner` (as root) with owners and bits.
#[test]
fn cli_get_r_refuses_hostile_names_and_keeps_owners_only_when_asked() {
    let site = Site::new("cli");
    let bin = site.root().join("bin");
    std::fs::create_dir(&bin).expect("mkdir bin");
    std::os::unix::fs::symlink(harness(), bin.join("ssh")).expect("symlink ssh");
    let mut path = bin.into_os_string();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let mito = |scenario: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mito"))
            .current_dir(site.work())
            .env("PATH", &path)
            .env("MITO_HOSTILE", scenario)
            .env("MITO_HOSTILE_OUTSIDE", site.outside())
            .args(args)
            .output()
            .expect("run mito")
    };
    let dest = site.dest();
    let dest_s = dest.to_str().expect("utf8");
    let before = snapshot(site.root());
    let o = mito("name-dotdot", &["get", "-r", "ssh://hostile:/t", dest_s]);
    let (out, err) = output_text(&o);
    assert_eq!(o.status.code(), Some(255), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("hostile") && err.contains("\"..\""), "{err}");
    let escaped = changed_outside(&before, &snapshot(site.root()), &dest);
    assert!(escaped.is_empty(), "written outside the destination: {escaped:?}");

    // Into ".", as `cp -rT` allows (the destination is the caller's).
    let o = mito("modes", &["get", "-r", "ssh://hostile:/t", "."]);
    assert!(o.status.success(), "{:?}", output_text(&o));
    let m = std::fs::metadata(site.work().join("suid-root")).expect("meta");
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, me().0));
    if !is_root() {
        skip_loudly(
            "cli_get_r_refuses_hostile_names_and_keeps_owners_only_when_asked (--preserve-owner half)",
            "needs root",
        );
        return;
    }
    let kept = site.work().join("kept");
    let o = mito("modes", &["get", "-r", "--preserve-owner", "ssh://hostile:/t", kept.to_str().expect("utf8")]);
    assert!(o.status.success(), "{:?}", output_text(&o));
    let m = std::fs::metadata(kept.join("sgid")).expect("meta");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o2755, 4242, 4343));
}

/// Behind a hop, a new child sends with its hello a forged DEL_ROUTE for
/// its sibling and forged exec replies "from" the sibling to handles
/// 1000..1500: the sibling keeps answering `ping` and its pending exec
/// completes with its own output. (Before frames sent with a hello were
/// dropped, the DEL_ROUTE disconnected the sibling.)
#[test]
fn frames_sent_with_a_hello_behind_a_hop_cannot_touch_a_sibling() {
    let router = Router::new().expect("router");
    let hop = router.local(LocalOptions { name: Some("hop".into()), ..LocalOptions::default() }).expect("hop");
    let sibling = hop.local(LocalOptions { name: Some("sibling".into()), ..LocalOptions::default() }).expect("sibling");
    sibling.ping().expect("sibling ping");
    let argv = ["sh", "-c", "sleep 1; echo real"].iter().map(|a| ByteBuf::from(a.as_bytes())).collect();
    let pending = sibling.call_async::<Exec>(&ExecArgs { argv, ..Default::default() }).expect("exec");
    let hostile = hop
        .local(LocalOptions {
            name: Some("hostile".into()),
            sh: harness(),
            env: vec![
                ("MITO_HOSTILE".into(), "pre-adoption".into()),
                ("MITO_HOSTILE_SIBLING".into(), sibling.id().to_string().into()),
            ],
            connect_timeout: Duration::from_secs(10),
        })
        .expect("the hostile child says hello");
    // Not asserted: the forged frames may straddle the adoption (the hop
    // read part of the write as command output), and the rest then breaks
    // the child's stream, which the hop closes: only the child is lost.
    let hostile_ping = hostile.ping();
    eprintln!("the hostile child after adoption: {hostile_ping:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sibling.disconnect_reason(), None, "the sibling is still connected");
    sibling.ping().expect("the sibling still answers");
    let r = pending.wait().expect("the sibling's exec");
    assert_eq!((r.status.code, r.stdout.as_slice()), (Some(0), &b"real\n"[..]), "the sibling's own reply");
    hop.ping().expect("the hop still answers");
}
