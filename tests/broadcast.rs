//! Broadcast (`mito::master::broadcast::call_many`): one call to every
//! context of a tree of local agents, crossing each link once, and every
//! reply gathered back. What crossed a link is read from the master's byte
//! counter of the first hop's stream (`Context::bytes_sent`) and, one level
//! down, from `/proc/<pid>/io` of the hop below (what it read); the same
//! calls sent one per leaf are measured beside it, so the assertions fail
//! for a broadcast that is a loop of single calls. Dead, silent and
//! hostile leaves (`examples/hostile_agent.rs`) each get their own typed
//! error while the others answer.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::TempDir;
use mito::functions::{Exec, ExecArgs, Info, Ping};
use mito::master::broadcast::call_many;
use mito::{CallError, Context, ErrorKind, LocalOptions, Router};
use serde_bytes::ByteBuf;

/// Size of the padding argument that makes one copy of the call easy to
/// tell from many in a byte count.
const PAD: usize = 64 * 1024;

/// `sh -c 'echo $PPID' sh <PAD bytes>`: the agent starts `sh` itself
/// (posix_spawn), so the output is that agent's pid.
fn padded_echo_ppid() -> ExecArgs {
    let argv = ["sh", "-c", "echo $PPID", "sh"]
        .iter()
        .map(|a| ByteBuf::from(a.as_bytes()))
        .chain(std::iter::once(ByteBuf::from(vec![b'x'; PAD])))
        .collect();
    ExecArgs { argv, ..ExecArgs::default() }
}

/// Bytes a process has read (`rchar` of `/proc/PID/io`).
fn rchar(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|v| v.trim().parse().ok()).expect("rchar")
}

/// Every context of `hops` connected with `n` local children each.
fn tree(router: &Router, opts: &LocalOptions, hops: usize, n: usize) -> (Vec<Context>, Vec<Context>) {
    let top: Vec<Context> = (0..hops).map(|_| router.local(opts.clone()).expect("hop")).collect();
    let leaves = top.iter().flat_map(|h| (0..n).map(|_| h.local(opts.clone()).expect("leaf")).collect::<Vec<_>>());
    let leaves = leaves.collect();
    (top, leaves)
}

fn sum_sent(hops: &[Context]) -> u64 {
    hops.iter().map(Context::bytes_sent).sum()
}

fn pid_of(reply: &[u8]) -> u32 {
    std::str::from_utf8(reply).expect("utf8").trim().parse().expect("a pid")
}

#[test]
fn a_broadcast_crosses_each_first_link_once_and_every_leaf_answers_for_itself() {
    let dir = TempDir::new("broadcast-tree");
    let opts = common::local_in(&dir.path().join("cache"));
    let router = Router::new().expect("router");
    let (hops, leaves) = tree(&router, &opts, 3, 20);

    let answers = call_many::<Info>(&leaves, &(), Duration::from_secs(60));
    assert_eq!(answers.len(), 60);
    let mut pids = HashSet::new();
    for ((ctx, reply), leaf) in answers.iter().zip(&leaves) {
        assert_eq!(ctx.id(), leaf.id(), "answers come in the order of the targets");
        let info = reply.as_ref().expect("info");
        assert_eq!(info.pid, leaf.connect_info().pid, "{}: its own agent answered", leaf.name());
        pids.insert(info.pid);
    }
    assert_eq!(pids.len(), 60, "60 distinct agents");

    // The call with 64 KiB of argument: once per hop on the first links.
    let args = padded_echo_ppid();
    let before = sum_sent(&hops);
    let answers = call_many::<Exec>(&leaves, &args, Duration::from_secs(60));
    let broadcast = sum_sent(&hops) - before;
    for ((_, reply), leaf) in answers.iter().zip(&leaves) {
        let r = reply.as_ref().expect("exec");
        assert_eq!(pid_of(&r.stdout), leaf.connect_info().pid, "{}", leaf.name());
    }
    // The same as one call per leaf (pipelined), for comparison.
    let before = sum_sent(&hops);
    let pending: Vec<_> = leaves.iter().map(|l| l.call_async::<Exec>(&args).expect("send")).collect();
    for p in pending {
        p.wait().expect("exec");
    }
    let one_by_one = sum_sent(&hops) - before;
    eprintln!("first links: broadcast {broadcast} bytes, one call per leaf {one_by_one} bytes (3 hops x 20 leaves)");
    assert!(broadcast >= 3 * PAD as u64, "each hop got the call: {broadcast}");
    assert!(broadcast < 3 * (PAD as u64 + 4096), "each first link carried the call once: {broadcast} bytes");
    assert!(one_by_one >= 60 * PAD as u64, "one call per leaf crosses once per leaf: {one_by_one}");

    // Hops and leaves together, and a direct context alone in its group.
    let direct = router.local(opts.clone()).expect("direct");
    let all: Vec<Context> = hops.iter().chain(&leaves).chain(std::iter::once(&direct)).cloned().collect();
    let answers = call_many::<Info>(&all, &(), Duration::from_secs(60));
    for (ctx, reply) in &answers {
        assert_eq!(reply.as_ref().expect("info").pid, ctx.connect_info().pid, "{}", ctx.name());
    }
}

/// master → hop → sub → 10 leaves (and 5 leaves under the hop itself):
/// the hop sends `sub` one smaller relay for the ten, so `sub` reads the
/// call once.
#[test]
fn a_hop_sends_a_hop_below_it_one_relay_for_all_its_leaves() {
    let dir = TempDir::new("broadcast-deep");
    let opts = common::local_in(&dir.path().join("cache"));
    let router = Router::new().expect("router");
    let hop = router.local(opts.clone()).expect("hop");
    let sub = hop.local(opts.clone()).expect("sub-hop");
    let mut leaves: Vec<Context> = (0..10).map(|_| sub.local(opts.clone()).expect("leaf")).collect();
    leaves.extend((0..5).map(|_| hop.local(opts.clone()).expect("leaf")));
    let args = padded_echo_ppid();

    let (sent0, read0) = (hop.bytes_sent(), rchar(sub.connect_info().pid));
    let answers = call_many::<Exec>(&leaves, &args, Duration::from_secs(60));
    let (sent, read) = (hop.bytes_sent() - sent0, rchar(sub.connect_info().pid) - read0);
    for ((_, reply), leaf) in answers.iter().zip(&leaves) {
        assert_eq!(pid_of(&reply.as_ref().expect("exec").stdout), leaf.connect_info().pid, "{}", leaf.name());
    }
    eprintln!("broadcast to 15 leaves: first link {sent} bytes, the sub-hop read {read} bytes");
    assert!(sent < PAD as u64 + 4096, "the first link carried the call once: {sent}");
    // The sub-hop also reads its ten leaves' replies (small).
    assert!(read < PAD as u64 + 8192, "the sub-hop read the call once: {read}");

    let read0 = rchar(sub.connect_info().pid);
    let pending: Vec<_> = leaves[..10].iter().map(|l| l.call_async::<Exec>(&args).expect("send")).collect();
    for p in pending {
        p.wait().expect("exec");
    }
    let read = rchar(sub.connect_info().pid) - read0;
    assert!(read >= 10 * PAD as u64, "one call per leaf: the sub-hop reads it ten times: {read}");
}

/// A leaf killed just before the broadcast (behind a hop, and a direct
/// context) fails with its own typed error, at once; the others answer.
#[test]
fn a_dead_leaf_gets_its_own_error_and_the_others_answer() {
    let dir = TempDir::new("broadcast-dead");
    let opts = common::local_in(&dir.path().join("cache"));
    let router = Router::new().expect("router");
    let (hops, mut leaves) = tree(&router, &opts, 1, 10);
    leaves.push(router.local(opts.clone()).expect("direct"));
    leaves.push(router.local(opts.clone()).expect("direct"));
    let dead = [3, 10];
    for &i in &dead {
        common::kill9(leaves[i].connect_info().pid);
    }
    let t0 = Instant::now();
    let answers = call_many::<Info>(&leaves, &(), Duration::from_secs(60));
    let took = t0.elapsed();
    for (i, (ctx, reply)) in answers.iter().enumerate() {
        if dead.contains(&i) {
            match reply {
                Err(CallError::Disconnected { context, .. }) => assert_eq!(context, ctx.name()),
                Err(CallError::Remote(e)) if e.kind == ErrorKind::DeadRoute => {}
                other => panic!("{}: the killed leaf: {other:?}", ctx.name()),
            }
            if let Err(e) = reply {
                eprintln!("the killed leaf: {e}");
            }
        } else {
            assert_eq!(reply.as_ref().expect("info").pid, ctx.connect_info().pid, "{}", ctx.name());
        }
    }
    assert!(took < Duration::from_secs(30), "the dead leaves did not hold the broadcast: {took:?}");
    hops[0].ping().expect("the hop still answers");
}

fn hostile(on: &Context, scenario: &str) -> Context {
    on.local(LocalOptions {
        name: Some(format!("hostile-{scenario}")),
        sh: common::hostile_harness(),
        env: vec![("MITO_HOSTILE".into(), scenario.into())],
        connect_timeout: Duration::from_secs(10),
    })
    .expect("the hostile child says hello")
}

/// Behind a hop, one child answers garbage, one never answers, one answers
/// `ping` with a reply that inflates to 64 MiB; a direct context never
/// answers either. Each gets its own typed error within the broadcast's
/// timeout, the others their replies, and the tree stays usable.
#[test]
fn hostile_leaves_cannot_hang_or_break_a_broadcast() {
    let dir = TempDir::new("broadcast-hostile");
    let opts = common::local_in(&dir.path().join("cache"));
    let router = Router::new().expect("router");
    let (hops, mut leaves) = tree(&router, &opts, 1, 8);
    let hop = &hops[0];
    let garbage = hostile(hop, "garbage-reply");
    let silent = hostile(hop, "silent");
    let bomb = hostile(hop, "reply-bomb");
    let direct_silent = router
        .local(LocalOptions {
            name: Some("direct-silent".into()),
            sh: common::hostile_harness(),
            env: vec![("MITO_HOSTILE".into(), "silent".into())],
            connect_timeout: Duration::from_secs(10),
        })
        .expect("direct hostile");
    leaves.extend([garbage.clone(), silent.clone(), bomb.clone(), direct_silent.clone()]);
    let timeout = Duration::from_secs(3);

    let t0 = Instant::now();
    let answers = call_many::<Info>(&leaves, &(), timeout);
    let took = t0.elapsed();
    for (ctx, reply) in &answers {
        match ctx.name() {
            "hostile-garbage-reply" => assert!(matches!(reply, Err(CallError::Decode { .. })), "{reply:?}"),
            "hostile-silent" | "direct-silent" => match reply {
                Err(CallError::Timeout { timeout: t, .. }) => assert_eq!(*t, timeout),
                other => panic!("{}: {other:?}", ctx.name()),
            },
            // It answers `info` as an agent would (with its own pid).
            _ => assert_eq!(reply.as_ref().expect("info").pid, ctx.connect_info().pid, "{}", ctx.name()),
        }
    }
    // A bound, not a timing: without the one deadline it would be 2 x 3 s.
    assert!(took < timeout + Duration::from_secs(2), "the broadcast ended at its deadline: {took:?}");

    let answers = call_many::<Ping>(&leaves, &(), timeout);
    for (ctx, reply) in &answers {
        match ctx.name() {
            "hostile-reply-bomb" => assert!(matches!(reply, Err(CallError::Decode { .. })), "{reply:?}"),
            "hostile-silent" | "direct-silent" => assert!(matches!(reply, Err(CallError::Timeout { .. })), "{reply:?}"),
            "hostile-garbage-reply" => {} // `()` takes no bytes: the garbage is ignored.
            _ => {
                reply.as_ref().expect("ping");
            }
        }
    }
    // The tree still works: the honest leaves answer a third broadcast.
    let honest: Vec<Context> = leaves[..8].to_vec();
    for (ctx, reply) in call_many::<Info>(&honest, &(), Duration::from_secs(30)) {
        assert_eq!(reply.expect("info").pid, ctx.connect_info().pid);
    }
    hop.ping().expect("the hop still answers");
}

mito::declare_function!(
    /// A user function no agent here has (the embedded agent runs).
    Absent, "test.absent", String, u32
);

/// A declared (user) function broadcast through a hop to agents that lack
/// it: each target's answer is the typed `MissingFunction` naming the
/// function and that agent (the relayed copies reach the agents and their
/// errors come back typed, not as decode errors).
#[test]
fn a_declared_function_missing_everywhere_is_a_typed_error_per_target() {
    let dir = TempDir::new("broadcast-declared");
    let opts = common::local_in(&dir.path().join("cache"));
    let router = Router::new().expect("router");
    let (_hops, leaves) = tree(&router, &opts, 1, 3);
    for (ctx, reply) in call_many::<Absent>(&leaves, &"x".to_string(), Duration::from_secs(30)) {
        match reply {
            Err(CallError::MissingFunction { context, function, agent_hash }) => {
                assert_eq!((context.as_str(), function.as_str()), (ctx.name(), "test.absent"));
                assert_eq!(agent_hash, ctx.connect_info().agent_hash);
            }
            other => panic!("{}: not MissingFunction: {other:?}", ctx.name()),
        }
    }
}

/// Contexts of two routers in one broadcast: ids are per router, so each
/// router's first context has the same id; each must still get its own
/// copy through its own router.
#[test]
fn contexts_of_two_routers_each_get_their_own_call() {
    let dir = TempDir::new("broadcast-routers");
    let opts = common::local_in(&dir.path().join("cache"));
    let (a, b) = (Router::new().expect("router"), Router::new().expect("router"));
    let mut targets = vec![a.local(opts.clone()).expect("a"), b.local(opts.clone()).expect("b")];
    assert_eq!(targets[0].id(), targets[1].id(), "the same id in two routers");
    targets.push(targets[0].local(opts.clone()).expect("behind a"));
    targets.push(targets[1].local(opts.clone()).expect("behind b"));
    for (ctx, reply) in call_many::<Info>(&targets, &(), Duration::from_secs(30)) {
        assert_eq!(reply.expect("info").pid, ctx.connect_info().pid, "{}", ctx.name());
    }
}

/// A hop killed just before the broadcast: every leaf behind it fails with
/// its own `Disconnected` (the master sent them nothing, or lost them with
/// the hop), the other hop's leaves answer.
#[test]
fn a_dead_hop_fails_its_leaves_and_the_other_hops_answer() {
    let dir = TempDir::new("broadcast-dead-hop");
    let opts = common::local_in(&dir.path().join("cache"));
    let router = Router::new().expect("router");
    let (hops, leaves) = tree(&router, &opts, 2, 5);
    common::kill9(hops[0].connect_info().pid);
    let t0 = Instant::now();
    let answers = call_many::<Info>(&leaves, &(), Duration::from_secs(60));
    for (i, (ctx, reply)) in answers.iter().enumerate() {
        if i < 5 {
            assert!(matches!(reply, Err(CallError::Disconnected { .. })), "{}: {reply:?}", ctx.name());
        } else {
            assert_eq!(reply.as_ref().expect("info").pid, ctx.connect_info().pid, "{}", ctx.name());
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(30), "the dead hop did not hold the broadcast: {:?}", t0.elapsed());
    eprintln!("behind the dead hop: {:?}", answers[0].1.as_ref().err());
}
