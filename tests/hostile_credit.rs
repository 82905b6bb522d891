//! An agent that ignores the credit of a streamed command (issue 13) must
//! not grow the master's memory: `examples/hostile_agent.rs` answers an
//! exec with output far beyond its window (`output-flood`), or with stdin
//! acknowledgements nobody is owed (`ack-flood`), while the test reads
//! nothing. The master holds at most the credit it granted, fails the
//! command with [`CallError::CreditExceeded`], kills it, and disconnects
//! the context when it keeps sending; other contexts keep working.
//!
//! Peak RSS is this process's (the master's): the tests here take turns
//! and each resets the high-water mark before its flood, and no other test
//! shares the binary.

mod common;

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::{peak_kib, reset_peak, TempDir};
use mito::functions::ExecArgs;
use mito::{CallError, Context, LocalOptions, ProcessEvent, Router};
use serde_bytes::ByteBuf;

use common::hostile_harness as harness;

/// One flood at a time: the peak RSS measured is that flood's.
fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A context whose "agent" is the harness playing `scenario`; `dir` gets
/// its `flood-sent` file.
fn hostile(router: &Router, scenario: &str, dir: &Path) -> Context {
    router
        .local(LocalOptions {
            name: Some(format!("hostile-{scenario}")),
            sh: harness(),
            env: vec![("MITO_HOSTILE".into(), scenario.into()), ("MITO_HOSTILE_OUTSIDE".into(), dir.into())],
            connect_timeout: Duration::from_secs(10),
        })
        .expect("the harness says hello")
}

/// Waits, reading nothing, until the harness says its flood is over or
/// the master has disconnected it and it is gone. Returns what the harness
/// says it sent (`None`: it was stopped first).
fn flood_over(ctx: &Context, dir: &Path) -> Option<u64> {
    let pid = ctx.connect_info().pid;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        if let Ok(s) = std::fs::read_to_string(dir.join("flood-sent")) {
            return Some(s.trim().parse().expect("flood-sent"));
        }
        if ctx.disconnect_reason().is_some() && !common::alive(pid) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the flood neither ended nor was stopped within 120 s");
}

/// The master's peak RSS grew by less than this during a flood (it holds
/// one credit, about 1 MiB, of a command's output).
const BOUND_KIB: u64 = 16 * 1024;

/// The typed error, naming the context and what overflowed.
fn assert_credit_exceeded(e: &CallError, ctx: &Context, what: &str) {
    let text = e.to_string();
    match e {
        CallError::CreditExceeded { context, what: got, excess, credit, .. } => {
            assert_eq!((context.as_str(), got.as_str()), (ctx.name(), what), "{text}");
            assert!(*excess > 0 && *credit > 0, "{text}");
        }
        other => panic!("wanted CreditExceeded for {what}, got {other:?}"),
    }
    assert!(text.contains(ctx.name()) && text.contains("beyond its credit"), "{text}");
}

/// The hostile context is disconnected for what it did, its agent is gone;
/// the honest one (and a new one) still answer.
fn assert_contained(router: &Router, ctx: &Context, honest: &Context) {
    let reason = ctx.disconnect_reason().expect("the flooding context is disconnected");
    assert!(reason.contains("beyond its credit"), "disconnect reason: {reason}");
    assert!(
        common::wait_gone(ctx.connect_info().pid, Duration::from_secs(10)).is_some(),
        "the flooding agent is still running"
    );
    honest.ping().expect("the honest context still answers");
    let argv = ["echo", "still here"].map(|a| ByteBuf::from(a.as_bytes())).to_vec();
    let r = honest.exec_streaming(&ExecArgs { argv, ..ExecArgs::default() }, |_, _| {}).expect("exec");
    assert_eq!(r.status.code, Some(0));
    router.local(LocalOptions::default()).expect("a new context").ping().expect("ping");
}

/// Output far beyond the window, 400 000 one-byte frames first (each frame
/// costs credit: a per-byte-only rule would queue them all), then 512 MiB
/// in 64 KiB frames, while nothing is read. On a master that trusts the
/// agent to keep its credit, all of it is queued for the reader.
#[test]
fn an_agent_ignoring_output_credit_cannot_fill_the_masters_memory() {
    let _turn = serial();
    let router = Router::new().expect("router");
    let honest = router.local(LocalOptions::default()).expect("honest context");
    let dir = TempDir::new("output-flood");
    let ctx = hostile(&router, "output-flood", dir.path());
    let before = reset_peak();
    let argv = vec![ByteBuf::from(&b"flood"[..])];
    let mut p = ctx.spawn(&ExecArgs { argv, ..ExecArgs::default() }).expect("spawn");
    let sent = flood_over(&ctx, dir.path());
    let grown = peak_kib().saturating_sub(before);
    eprintln!("output flood (harness sent {sent:?} bytes): master peak RSS grew by {grown} KiB");
    assert!(grown < BOUND_KIB, "the master's peak RSS grew by {grown} KiB while the reader read nothing");
    match p.next(Some(Instant::now() + Duration::from_secs(10))) {
        Err(e) => assert_credit_exceeded(&e, &ctx, "output"),
        Ok(ProcessEvent::Output { data, .. }) => panic!("wanted the typed error, got {} bytes of output", data.len()),
        Ok(ev) => panic!("wanted the typed error, got {ev:?}"),
    }
    assert_contained(&router, &ctx, &honest);
}

/// Two million acknowledgements of stdin that was never sent, then ones
/// that do not decode, while nothing is written. A master that queues each
/// for the writer grows by hundreds of MiB.
#[test]
fn an_agent_flooding_stdin_acknowledgements_cannot_fill_the_masters_memory() {
    let _turn = serial();
    let router = Router::new().expect("router");
    let honest = router.local(LocalOptions::default()).expect("honest context");
    let dir = TempDir::new("ack-flood");
    let ctx = hostile(&router, "ack-flood", dir.path());
    let before = reset_peak();
    let argv = vec![ByteBuf::from(&b"flood"[..])];
    let mut p = ctx.spawn(&ExecArgs { argv, ..ExecArgs::default() }).expect("spawn");
    let input = p.take_input().expect("input");
    let sent = flood_over(&ctx, dir.path());
    let grown = peak_kib().saturating_sub(before);
    eprintln!("stdin-ack flood (harness sent {sent:?} bytes): master peak RSS grew by {grown} KiB");
    assert!(grown < BOUND_KIB, "the master's peak RSS grew by {grown} KiB while nothing was written");
    // More than the whole stdin window: the writer must consult the acks.
    let e = input.write(&vec![b'y'; 3 << 20]).expect_err("stdin after the flood");
    assert_credit_exceeded(&e, &ctx, "stdin acknowledgements");
    assert_contained(&router, &ctx, &honest);
}

/// One compressed output frame, small enough for the credit, that inflates
/// to 64 MiB: the master inflates an output frame no further than the
/// credit it came under (a typed decode error), where a master that allows
/// any frame size allocates the whole of it, twice, when the reader takes it.
#[test]
fn a_compressed_output_frame_inflates_no_further_than_its_credit() {
    let _turn = serial();
    let router = Router::new().expect("router");
    let dir = TempDir::new("output-bomb");
    let ctx = hostile(&router, "output-bomb", dir.path());
    let before = reset_peak();
    let argv = vec![ByteBuf::from(&b"bomb"[..])];
    let mut p = ctx.spawn(&ExecArgs { argv, ..ExecArgs::default() }).expect("spawn");
    let r = p.next(Some(Instant::now() + Duration::from_secs(60)));
    let grown = peak_kib().saturating_sub(before);
    eprintln!("output bomb: master peak RSS grew by {grown} KiB");
    assert!(grown < BOUND_KIB, "the master's peak RSS grew by {grown} KiB for one output frame");
    match r {
        Err(CallError::Decode { context, detail, .. }) => {
            assert_eq!(context, ctx.name());
            assert!(detail.contains("decompress"), "{detail}");
        }
        Err(e) => panic!("wanted a decode error, got {e}"),
        Ok(ProcessEvent::Output { data, .. }) => panic!("wanted a decode error, got {} bytes of output", data.len()),
        Ok(ev) => panic!("wanted a decode error, got {ev:?}"),
    }
    ctx.ping().expect("the context still answers");
}

/// A reply's bound is its function's: a `ping` answered with ~64 KiB that
/// inflates to 64 MiB is a typed decode error (the reply of a `()` may
/// take 64 KiB), not a 64 MiB allocation.
#[test]
fn a_compressed_reply_inflates_no_further_than_its_function_allows() {
    let _turn = serial();
    let router = Router::new().expect("router");
    let dir = TempDir::new("reply-bomb");
    let ctx = hostile(&router, "reply-bomb", dir.path());
    let before = reset_peak();
    let r = ctx.ping();
    let grown = peak_kib().saturating_sub(before);
    eprintln!("reply bomb: master peak RSS grew by {grown} KiB");
    assert!(grown < BOUND_KIB, "the master's peak RSS grew by {grown} KiB for one ping reply");
    match r {
        Err(CallError::Decode { context, function, detail }) => {
            assert_eq!((context.as_str(), function.as_str()), (ctx.name(), "ping"));
            assert!(detail.contains("decompress"), "{detail}");
        }
        other => panic!("wanted a decode error, got {other:?}"),
    }
}

/// The real agent keeps within both budgets however the command writes
/// and however slowly the caller reads: a byte per write (100 000 of them,
/// more than a window's worth of frame costs: the agent holds the command
/// back, the master does not refuse it), a window smaller than one read,
/// and thousands of one-byte stdin writes whose acknowledgements pile up
/// (they fold into one).
#[test]
fn an_honest_agent_never_trips_the_budgets() {
    let _turn = serial();
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    let sh = |script: &str, window: u32| ExecArgs {
        argv: ["sh", "-c", script].map(|a| ByteBuf::from(a.as_bytes())).to_vec(),
        window,
        ..ExecArgs::default()
    };
    let read_all = |p: &mut mito::Process, pause: Duration| {
        let mut got = 0usize;
        loop {
            match p.next(Some(Instant::now() + Duration::from_secs(60))).expect("next") {
                ProcessEvent::Output { data, .. } => {
                    got += data.len();
                    std::thread::sleep(pause);
                }
                ProcessEvent::Exit(r) => return (got, r),
            }
        }
    };

    let mut p = ctx.spawn(&sh("i=0; while [ $i -lt 100000 ]; do printf x; i=$((i+1)); done", 0)).expect("spawn");
    std::thread::sleep(Duration::from_secs(2)); // nothing read meanwhile
    let (got, r) = read_all(&mut p, Duration::ZERO);
    assert_eq!((got, r.status.code), (100_000, Some(0)));

    let mut p = ctx.spawn(&sh("head -c 2000000 /dev/zero", 1000)).expect("spawn");
    std::thread::sleep(Duration::from_millis(200));
    let (got, r) = read_all(&mut p, Duration::from_micros(200));
    assert_eq!((got, r.status.code), (2_000_000, Some(0)));

    let mut p = ctx.spawn(&sh("sleep 1; wc -c", 0)).expect("spawn");
    let input = p.take_input().expect("input");
    for _ in 0..5000 {
        input.write(b"y").expect("write");
    }
    std::thread::sleep(Duration::from_millis(1500)); // the acknowledgements arrive, unread
    drop(input);
    let mut out = Vec::new();
    let r = loop {
        match p.next(Some(Instant::now() + Duration::from_secs(30))).expect("next") {
            ProcessEvent::Output { data, .. } => out.extend(data),
            ProcessEvent::Exit(r) => break r,
        }
    };
    assert_eq!((String::from_utf8_lossy(&out).trim(), r.status.code), ("5000", Some(0)));
}
