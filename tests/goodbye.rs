//! The goodbye frame (issue 13): an agent that exits on purpose says so and
//! why, so the master reports a clean exit, a crash and a broken link as
//! three different things, for a context attached directly and for one
//! behind a hop (`hop.local(…)`):
//!
//! - `shutdown` → "the agent exited: shut down by its parent" (Exited), for
//!   a call pending on another handle and for later calls;
//! - SIGKILL → "the agent was killed by signal 9" (Crashed): the master sees
//!   its transport's status, behind a hop the hop carries it up;
//! - SIGTERM → "the agent exited on signal 15 (SIGTERM)" (Exited);
//! - a lost hop, or an ssh client killed while its agent lives: "the
//!   connection broke …" naming the hop or ssh (Broken);
//! - a panic (the heap runs out under `ulimit -v`) → "the agent crashed: it
//!   panicked (memory allocation failed in call read_file)" (Crashed);
//! - a malformed frame from the parent → a `Fatal` goodbye; a lost parent →
//!   no goodbye (no one to tell);
//! - goodbyes and DEL_ROUTEs a child forges for its sibling are ignored.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{kill9, local_in, wait_gone, TempDir};
use mito::core::router::EndKind;
use mito::core::stream::Decoder;
use mito::proto::message::{Goodbye, Hello};
use mito::proto::{handles, Header, MAX_MESSAGE_SIZE};
use mito::{CallError, Context, LocalOptions, Router};

/// Where the context under test is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Direct,
    BehindHop,
}

const PLACES: [Place; 2] = [Place::Direct, Place::BehindHop];

/// A context under test, with what keeps it alive.
struct Case {
    ctx: Context,
    hop: Option<Context>,
    _router: Router,
}

/// Connects the context under test with `opts` (names it `target`),
/// directly or behind a local hop named `hop`.
fn connect(place: Place, cache: &Path, opts: LocalOptions) -> Case {
    let router = Router::new().expect("router");
    let opts = LocalOptions { name: Some("target".into()), ..opts };
    let (hop, ctx) = match place {
        Place::Direct => (None, router.local(opts).expect("connect")),
        Place::BehindHop => {
            let hop = router.local(LocalOptions { name: Some("hop".into()), ..local_in(cache) }).expect("hop");
            let ctx = hop.local(opts).expect("connect behind the hop");
            (Some(hop), ctx)
        }
    };
    // A round trip: behind a hop, the hop has adopted the child's stream
    // (a command killed before that is a failed connect, not this test's
    // subject).
    ctx.ping().expect("ping");
    Case { ctx, hop, _router: router }
}

/// `r` failed because `ctx` is gone, with a reason containing `needle`
/// (checked first: on a master without goodbyes it is what fails), and the
/// context reports the end as `kind`.
fn expect_end<T: std::fmt::Debug>(what: &str, ctx: &Context, r: Result<T, CallError>, kind: EndKind, needle: &str) {
    let e = r.expect_err(what);
    eprintln!("{what}: {e}");
    match &e {
        CallError::Disconnected { context, reason, .. } => {
            assert_eq!(context, ctx.name(), "{what}: names the context: {e}");
            assert!(reason.contains(needle), "{what}: expected {needle:?} in: {e}");
        }
        other => panic!("{what}: expected a disconnect, got {other}"),
    }
    let d = ctx.disconnected().expect("the context knows it is gone");
    assert_eq!(d.kind, kind, "{what}: {}", d.reason);
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on an agent this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid} {sig}");
}

/// `ctx.shutdown()`: the call pending on another handle and every later
/// call say the agent exited because its parent asked it to. (Before the
/// goodbye: "the agent closed the connection; agent exit status 0", and
/// behind a hop "its connection through hop closed".)
#[test]
fn a_shutdown_is_reported_as_a_clean_exit() {
    let dir = TempDir::new("bye-shutdown");
    let cache = dir.path().join("cache");
    for place in PLACES {
        let c = connect(place, &cache, local_in(&cache));
        let pending = common::pending_sleep(&c.ctx);
        let status = c.ctx.clone().shutdown();
        if place == Place::Direct {
            assert_eq!(status.and_then(|s| s.code), Some(0), "{place:?}: exit status");
        }
        let want = "the agent exited: shut down by its parent";
        expect_end(&format!("{place:?}: the pending call"), &c.ctx, pending.wait(), EndKind::Exited, want);
        expect_end(&format!("{place:?}: a later call"), &c.ctx, c.ctx.ping(), EndKind::Exited, want);
        if let Some(hop) = &c.hop {
            hop.ping().expect("the hop lives on");
        }
    }
}

/// SIGKILL leaves no time for a goodbye: the master reads the transport's
/// exit status (for the local method the transport is the agent) and,
/// behind a hop, the hop sends its command's status with the DEL_ROUTE.
/// (Before: "its connection through hop closed", and directly "the agent
/// closed the connection; agent killed by signal 9" only when the exit
/// had been reaped first.)
#[test]
fn sigkill_is_reported_as_a_crash_with_the_signal() {
    let dir = TempDir::new("bye-kill");
    let cache = dir.path().join("cache");
    for place in PLACES {
        let c = connect(place, &cache, local_in(&cache));
        let pid = c.ctx.connect_info().pid;
        let pending = common::pending_sleep(&c.ctx);
        kill9(pid);
        let t0 = Instant::now();
        let want = "the agent was killed by signal 9";
        expect_end(&format!("{place:?}: the pending call"), &c.ctx, pending.wait(), EndKind::Crashed, want);
        assert!(t0.elapsed() < Duration::from_secs(2), "{place:?}: failed after {:?}", t0.elapsed());
        expect_end(&format!("{place:?}: a later call"), &c.ctx, c.ctx.ping(), EndKind::Crashed, want);
        if let Some(hop) = &c.hop {
            hop.ping().expect("the hop lives on");
        }
    }
}

/// SIGTERM: the agent says goodbye with the signal, ends its commands and
/// exits. (Before: "the agent closed the connection; agent exit status
/// 129", or "its connection through hop closed".)
#[test]
fn sigterm_is_reported_as_an_exit_on_that_signal() {
    let dir = TempDir::new("bye-term");
    let cache = dir.path().join("cache");
    for place in PLACES {
        let c = connect(place, &cache, local_in(&cache));
        let pid = c.ctx.connect_info().pid;
        let pending = common::pending_sleep(&c.ctx);
        signal(pid, libc::SIGTERM);
        let want = "the agent exited on signal 15 (SIGTERM)";
        expect_end(&format!("{place:?}: the pending call"), &c.ctx, pending.wait(), EndKind::Exited, want);
        expect_end(&format!("{place:?}: a later call"), &c.ctx, c.ctx.ping(), EndKind::Exited, want);
        assert!(wait_gone(pid, Duration::from_secs(5)).is_some(), "{place:?}: the agent exited");
        if let Some(hop) = &c.hop {
            hop.ping().expect("the hop lives on");
        }
    }
}

/// A hop killed: the hop crashed, and a context behind it reports a broken
/// link naming the hop (its agent, whose parent is gone, exits without a
/// word). (Before: "its hop hop is gone: the agent process ended (killed
/// by signal 9)".)
#[test]
fn a_lost_hop_is_a_broken_link_for_what_is_behind_it() {
    let dir = TempDir::new("bye-hop");
    let cache = dir.path().join("cache");
    let c = connect(Place::BehindHop, &cache, local_in(&cache));
    let hop = c.hop.as_ref().expect("a hop");
    let (hop_pid, pid) = (hop.connect_info().pid, c.ctx.connect_info().pid);
    let pending = common::pending_sleep(&c.ctx);
    kill9(hop_pid);
    let want = "the connection broke: its hop hop is gone (the agent was killed by signal 9";
    expect_end("behind the lost hop: the pending call", &c.ctx, pending.wait(), EndKind::Broken, want);
    expect_end("behind the lost hop: a later call", &c.ctx, c.ctx.ping(), EndKind::Broken, want);
    expect_end("the hop", hop, hop.ping(), EndKind::Crashed, "the agent was killed by signal 9");
    assert!(wait_gone(pid, Duration::from_secs(5)).is_some(), "the agent behind the hop exits with it");
}

/// The processes whose parent is `parent` and whose name is `comm`.
fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| common::parent_of(p) == Some(parent))
        .filter(|&p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end() == comm))
        .collect()
}

/// The ssh client killed while the agent it carries still runs: a broken
/// link, "EOF from ssh" and ssh's status, directly and behind a hop (where
/// the hop sees ssh end). (Before: "the agent process ended (killed by
/// signal 9)", and behind the hop "its connection through hop closed".)
#[test]
fn a_killed_ssh_client_is_a_broken_link() {
    let Some(sshd) = common::sshd::Sshd::start("a_killed_ssh_client_is_a_broken_link") else { return };
    for place in PLACES {
        let router = Router::new().expect("router");
        let mut opts = sshd.opts("mito-user");
        opts.name = Some("web".into());
        let (hop, ctx) = match place {
            Place::Direct => (None, router.ssh(opts).expect("ssh")),
            Place::BehindHop => {
                let hop = router.local(LocalOptions { name: Some("hop".into()), ..LocalOptions::default() });
                let hop = hop.expect("hop");
                let ctx = hop.ssh(opts).expect("ssh from the hop");
                (Some(hop), ctx)
            }
        };
        let ssh = match &hop {
            None => ctx.connect_info().transport_pid.expect("the ssh client's pid"),
            Some(hop) => {
                let found = children_named(hop.connect_info().pid, "ssh");
                assert_eq!(found.len(), 1, "one ssh under the hop: {found:?}");
                found[0]
            }
        };
        ctx.ping().expect("ping");
        let pending = common::pending_sleep(&ctx);
        kill9(ssh);
        let want = match place {
            Place::Direct => "the connection broke (EOF from ssh; ssh was killed by signal 9",
            Place::BehindHop => {
                "the connection through hop broke (EOF from its command; its command was killed by signal 9"
            }
        };
        expect_end(&format!("{place:?}: the pending call"), &ctx, pending.wait(), EndKind::Broken, want);
        if let Some(hop) = &hop {
            hop.ping().expect("the hop lives on");
        }
    }
}

/// A shell for stage0 that first limits the address space to 64 MiB: the
/// agent runs, and a 100 MiB buffer cannot be had.
fn limited_sh(dir: &Path) -> PathBuf {
    let sh = dir.join("limited-sh");
    std::fs::write(&sh, "#!/bin/sh\nulimit -v 65536 || exit 70\nexec /bin/sh \"$@\"\n").expect("write");
    std::fs::set_permissions(&sh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    sh
}

/// A panic, through a path a target can take without test code in the
/// agent: under `ulimit -v`, reading a 100 MiB file fails to allocate, the
/// allocation error handler panics, and the panic handler writes a goodbye
/// straight to the parent fd before aborting. (Before: "the agent closed
/// the connection; agent killed by signal 6", or behind a hop "its
/// connection through hop closed".)
#[test]
fn a_panic_is_reported_as_a_crash() {
    let dir = TempDir::new("bye-panic");
    let cache = dir.path().join("cache");
    let big = dir.path().join("big");
    std::fs::File::create(&big).expect("create").set_len(100 << 20).expect("sparse 100 MiB");
    let sh = limited_sh(dir.path());
    for place in PLACES {
        let c = connect(place, &cache, LocalOptions { sh: sh.clone(), ..local_in(&cache) });
        let pid = c.ctx.connect_info().pid;
        let want = "the agent crashed: it panicked (memory allocation failed in call read_file)";
        expect_end(&format!("{place:?}: read_file"), &c.ctx, c.ctx.read_file(&big), EndKind::Crashed, want);
        expect_end(&format!("{place:?}: a later call"), &c.ctx, c.ctx.ping(), EndKind::Crashed, want);
        assert!(wait_gone(pid, Duration::from_secs(5)).is_some(), "{place:?}: the agent is gone");
        if let Some(hop) = &c.hop {
            hop.ping().expect("the hop lives on");
        }
    }
}

/// The frames an agent run by hand writes after its `MITO2` marker.
fn frames_after_hello(out: &[u8]) -> Vec<(Header, Vec<u8>)> {
    let at = out.windows(7).position(|w| w == b"\nMITO2\n").expect("the marker") + 7;
    let mut d = Decoder::new(MAX_MESSAGE_SIZE);
    d.feed(&out[at..]).into_iter().map(|m| m.expect("a frame")).map(|m| (m.header, m.data)).collect()
}

/// The agent binary run by hand: a malformed frame from its parent is a
/// fatal error it says goodbye for (and exits 76); a parent that goes away
/// gets no goodbye, there is no one to tell (and it exits 0). (Before: no
/// goodbye frame in either case.)
#[test]
fn a_fatal_error_says_goodbye_and_a_lost_parent_does_not() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let (exe, hash) = (ctx.connect_info().exe.clone(), ctx.connect_info().agent_hash.clone());
    for (case, garbage, code) in
        [("malformed", &b"GET / HTTP/1.1\r\n\r\n0123456789abcdef"[..], 76), ("eof", &b""[..], 0)]
    {
        let (mut ours, mut agent) = common::spawn_agent_by_hand(&exe, &hash);
        ours.write_all(garbage).expect("write");
        ours.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut out = Vec::new();
        ours.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let _ = ours.read_to_end(&mut out);
        assert_eq!(agent.wait().expect("wait").code(), Some(code), "{case}");
        let frames = frames_after_hello(&out);
        assert_eq!(frames[0].0.handle, handles::HELLO, "{case}: hello first");
        postcard::from_bytes::<Hello>(&frames[0].1).expect("a hello");
        let byes: Vec<Goodbye<'_>> = frames[1..]
            .iter()
            .filter(|(h, _)| h.handle == handles::GOODBYE)
            .map(|(h, d)| {
                assert_eq!((h.src, h.dst), (9, 0), "{case}: from the agent to the master");
                postcard::from_bytes(d).expect("a goodbye")
            })
            .collect();
        match case {
            "malformed" => {
                assert_eq!(byes, [Goodbye::Fatal { what: "malformed frame from its parent", errno: 0 }], "{case}")
            }
            _ => assert_eq!(byes, [], "{case}: no goodbye to a parent that is gone"),
        }
    }
}

use common::hostile_harness as harness;

/// A child that says goodbye (shut down, crashed) in its sibling's name and
/// sends DEL_ROUTEs for it, directly and behind a hop: the master and the
/// hop take a context's end only from that context (a goodbye) or from a
/// hop on its path (a DEL_ROUTE), so the sibling keeps answering. A guard:
/// it passes without the goodbye too (the src checks predate it), and
/// fails if the master honoured a goodbye without them.
#[test]
fn a_goodbye_forged_for_a_sibling_is_ignored() {
    for place in PLACES {
        let router = Router::new().expect("router");
        let hop = match place {
            Place::Direct => None,
            Place::BehindHop => {
                Some(router.local(LocalOptions { name: Some("hop".into()), ..LocalOptions::default() }).expect("hop"))
            }
        };
        let connector = match &hop {
            Some(h) => h.connector(),
            None => router.connector(),
        };
        let sibling =
            connector.local(LocalOptions { name: Some("sibling".into()), ..LocalOptions::default() }).expect("sibling");
        let hostile = connector
            .local(LocalOptions {
                name: Some("forger".into()),
                sh: harness(),
                env: vec![
                    ("MITO_HOSTILE".into(), "forge-goodbye".into()),
                    ("MITO_HOSTILE_SIBLING".into(), sibling.id().to_string().into()),
                ],
                connect_timeout: Duration::from_secs(10),
            })
            .expect("the forger says hello");
        // Its reply comes after the forged frames, on the same stream.
        hostile.ping().expect("the forger answers");
        hostile.ping().expect("the forger answers again");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(sibling.disconnected(), None, "{place:?}: the sibling is still connected");
        sibling.ping().expect("the sibling still answers");
        assert_eq!(hostile.disconnected(), None, "{place:?}: the forger spoke for another, not for itself");
    }
}
