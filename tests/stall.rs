//! A child behind a hop that stops reading (issue 13): the hop drops it
//! after [`STALL`] without write progress, so its siblings, the hop and the
//! master's senders carry on, and its pending calls fail naming the hop. A
//! child that is slow but live is never dropped.
//!
//! The children here are real agents behind a local hop: one stopped with
//! SIGSTOP (it reads nothing), one whose stdin is throttled to 256 KiB/s
//! (a slow link: its queue in the hop stays above the high-water mark for
//! longer than [`STALL`], making progress all along), one stopped and
//! continued every 200 ms. And a direct context stopped with the master's
//! queue full: control sends (close stdin, signal, `Process` drop) do not
//! wait for room.

mod common;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{local_in, TempDir};
use mito::functions::{self as f, ExecArgs};
use mito::{CallError, Context, Router, TransferError};
use serde_bytes::ByteBuf;

/// The hop's stall window (`STALL_MS` in `src/agent/children.rs`).
const STALL: Duration = Duration::from_secs(10);

/// Slack for the drop and for the siblings' pings around it.
const SLACK: Duration = Duration::from_secs(4);

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// A process that is continued and killed when the test ends, however it
/// ends (a stopped agent would otherwise outlive a failing test).
struct Cleanup(u32);

impl Drop for Cleanup {
    fn drop(&mut self) {
        signal(self.0, rustix::process::Signal::CONT);
        signal(self.0, rustix::process::Signal::KILL);
    }
}

fn write_data(path: &std::path::Path, size: usize, seed: usize) -> [u8; 32] {
    let data: Vec<u8> = (0..size).map(|i| ((i * 7 + seed) % 251) as u8).collect();
    std::fs::write(path, &data).expect("write source");
    mito::core::sha256::digest(&data)
}

#[test]
fn a_stopped_child_is_dropped_and_its_hop_siblings_and_senders_carry_on() {
    let dir = TempDir::new("stall-stopped");
    let cache = dir.path().join("cache");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&cache)).expect("hop");
    let stalled = hop.local(local_in(&cache)).expect("child to stop");
    let sibling = hop.local(local_in(&cache)).expect("sibling");
    let pid = stalled.info().expect("info").pid;
    let hop_name = hop.name().to_string();

    // A command in the child whose stdin the master feeds: once the child
    // stops, no credit comes back.
    let cat = ExecArgs {
        argv: ["sh", "-c", "exec cat >/dev/null"].map(|a| ByteBuf::from(a.as_bytes())).to_vec(),
        ..ExecArgs::default()
    };
    let mut process = Some(stalled.spawn(&cat).expect("spawn cat"));
    let input = process.as_mut().and_then(|p| p.take_input()).expect("stdin");
    // Declared after the Process: on a failure it is dropped first, so the
    // stopped agent is gone before anything else waits for it.
    let _cleanup = Cleanup(pid);

    // What each sending thread reports: when it returned, and whether with
    // a Disconnected error naming the hop (else what it got).
    type Done = (&'static str, Instant, Result<(), String>);
    let lost = {
        let hop = hop_name.clone();
        move |e: &CallError| match e {
            CallError::Disconnected { reason, .. } if reason.contains(&hop) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    let (done_tx, done_rx) = mpsc::channel::<Done>();

    // A put that is under way when the child stops (the window's chunks
    // then pile up in the hop).
    let src = dir.path().join("big.bin");
    write_data(&src, 48 << 20, 1);
    let moved = Arc::new(AtomicU64::new(0));
    {
        let (ctx, dst, moved, done, lost) =
            (stalled.clone(), dir.path().join("big.copy"), moved.clone(), done_tx.clone(), lost.clone());
        let src = src.clone();
        std::thread::spawn(move || {
            let r = ctx.put_with_progress(&src, &dst, &|n| {
                moved.fetch_add(n, Ordering::Relaxed);
            });
            let r = match r {
                Err(TransferError::Remote(e)) => lost(&e),
                other => Err(format!("{other:?}")),
            };
            let _ = done.send(("put", Instant::now(), r));
        });
    }
    let t_wait = Instant::now();
    while moved.load(Ordering::Relaxed) < 2 << 20 {
        assert!(t_wait.elapsed() < Duration::from_secs(20), "the put never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(pid, rustix::process::Signal::STOP);
    let stopped_at = Instant::now();
    let pending = stalled.call_async::<f::Ping>(&()).expect("a call to the stopped child is sent");

    // Siblings keep answering: a ping every 50 ms, each timed (the one in
    // progress too: when it started, in ms after the stop, 0 when none).
    let stop_pings = Arc::new(AtomicBool::new(false));
    let in_progress = Arc::new(AtomicU64::new(0));
    // (when it ended after the stop, how long it took, its result)
    type Ping = (Duration, Duration, Result<(), String>);
    let pings: Arc<Mutex<Vec<Ping>>> = Arc::default();
    let pinger = {
        let (ctx, stop, pings, busy) =
            (sibling.with_timeout(Some(STALL * 3)), stop_pings.clone(), pings.clone(), in_progress.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                busy.store(stopped_at.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                let r = ctx.ping().map_err(|e| e.to_string());
                busy.store(0, Ordering::Relaxed);
                pings.lock().unwrap().push((stopped_at.elapsed(), t.elapsed(), r));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // Many large calls from another thread, more than the master's queue
    // holds: its sends wait for room.
    {
        let (ctx, done, lost) = (stalled.clone(), done_tx.clone(), lost.clone());
        std::thread::spawn(move || {
            let data = ByteBuf::from(vec![7u8; 1 << 20]);
            let mut first_error = None;
            let mut pendings = Vec::new();
            for i in 0..32 {
                let path = ByteBuf::from(format!("/nonexistent/flood-{i}"));
                match ctx.call_async::<f::WriteFile>(&f::WriteFileArgs { path, data: data.clone(), mode: None }) {
                    Ok(p) => pendings.push(p),
                    Err(e) => {
                        first_error = Some(e);
                        break;
                    }
                }
            }
            for p in pendings {
                if let Err(e) = p.wait() {
                    first_error.get_or_insert(e);
                }
            }
            let r = first_error.map_or_else(|| Err("the flood succeeded".into()), |e| lost(&e));
            let _ = done.send(("flood", Instant::now(), r));
        });
    }

    // The master's stdin writer, waiting for credit that never comes.
    {
        let (done, lost) = (done_tx.clone(), lost.clone());
        std::thread::spawn(move || {
            let r = input.write(&vec![1u8; 16 << 20]);
            let r = r.map_or_else(|e| lost(&e), |()| Err("the write succeeded".into()));
            let _ = done.send(("stdin", Instant::now(), r));
        });
    }
    drop(done_tx);

    // Every sending thread returns, within the window plus slack.
    let mut finished: Vec<Done> = Vec::new();
    while finished.len() < 3 {
        let left = (STALL + SLACK * 2).saturating_sub(stopped_at.elapsed());
        match done_rx.recv_timeout(left) {
            Ok(x) => finished.push(x),
            Err(_) => break,
        }
    }
    let mut failures = Vec::new();
    // (c) the master's senders returned (the put, many calls, a stdin
    // write waiting for credit), each with the hop's error.
    if finished.len() < 3 {
        failures.push(format!(
            "(c) senders still blocked {:?} after the child stopped; returned: {finished:?}",
            stopped_at.elapsed()
        ));
    }
    for (what, _, r) in &finished {
        if let Err(e) = r {
            failures.push(format!("(c) {what}: expected Disconnected naming the hop {hop_name}, got {e}"));
        }
    }
    // (b) the child was dropped by the hop's rule: not before the window,
    // soon after it; its pending call failed naming the hop; its agent
    // (stopped, and its transport) was killed.
    match stalled.disconnect_reason() {
        Some(reason) if reason.contains(&hop_name) => {}
        other => failures.push(format!("(b) the stopped child's disconnect reason: {other:?}")),
    }
    if let Some(dropped) = finished.iter().map(|(_, t, _)| t.duration_since(stopped_at)).min() {
        if dropped < STALL - Duration::from_secs(1) || dropped > STALL + SLACK {
            failures.push(format!("(b) dropped {dropped:?} after the stop, not within {STALL:?} + {SLACK:?}"));
        }
    }
    match pending.wait_until(Some(Instant::now() + Duration::from_secs(1))) {
        Err(e) if lost(&e).is_ok() => {}
        other => failures.push(format!("(b) the pending ping: expected Disconnected naming the hop, got {other:?}")),
    }
    // Dropping a Process of the lost child returns at once (in a thread:
    // a drop that blocks must fail the test, not hang it).
    let (dropped_tx, dropped_rx) = mpsc::channel();
    let p = process.take();
    std::thread::spawn(move || {
        drop(p);
        let _ = dropped_tx.send(());
    });
    if dropped_rx.recv_timeout(Duration::from_secs(1)).is_err() {
        failures.push("(c) dropping the Process blocks".to_string());
    }
    if common::wait_gone(pid, Duration::from_secs(5)).is_none() {
        failures.push(format!("(b) stopped agent {pid} still there"));
    }
    // (a) the sibling answered throughout: no ping waited longer than the
    // window plus slack, and after the drop they are quick again.
    std::thread::sleep(Duration::from_secs(1));
    let busy = in_progress.load(Ordering::Relaxed);
    if busy != 0 {
        let age = stopped_at.elapsed().saturating_sub(Duration::from_millis(busy - 1));
        if age > STALL + SLACK {
            failures.push(format!("(a) a sibling ping has been waiting {age:?}"));
        }
    }
    {
        let pings = pings.lock().unwrap();
        let failed: Vec<_> = pings.iter().filter(|p| p.2.is_err()).collect();
        if !failed.is_empty() {
            failures.push(format!("(a) sibling pings failed: {failed:?}"));
        }
        let worst = pings.iter().map(|p| p.1).max().unwrap_or_default();
        let dropped = finished.iter().map(|(_, t, _)| t.duration_since(stopped_at)).min();
        eprintln!("senders returned {dropped:?} after the stop; {} sibling pings, slowest {worst:?}", pings.len());
        if worst > STALL + SLACK {
            failures.push(format!("(a) a sibling ping took {worst:?}"));
        }
        let quick_after = pings.iter().rev().take_while(|p| p.1 < Duration::from_secs(1)).count();
        if quick_after < 5 {
            failures.push(format!("(a) only {quick_after} quick sibling pings at the end"));
        }
    }
    if failures.is_empty() {
        stop_pings.store(true, Ordering::Relaxed);
        pinger.join().expect("pinger");
        sibling.ping().expect("sibling");
        hop.ping().expect("hop");
        let again = stalled.ping().expect_err("the dropped child stays gone");
        assert!(again.is_disconnected(), "{again:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A shell for stage0 whose stdin (everything the hop sends the agent)
/// passes through a pipe that carries `rate` bytes per second.
fn throttled_sh(dir: &std::path::Path, rate: u32) -> std::path::PathBuf {
    let sh = dir.join("throttled.sh");
    let block = 16384;
    let pause = f64::from(block) / f64::from(rate);
    let perl = format!(
        "$|=1; while (($n = sysread(STDIN, $b, {block})) > 0) {{ $o = 0; \
         while ($o < $n) {{ $w = syswrite(STDOUT, $b, $n - $o, $o); exit 1 unless defined $w; $o += $w }} \
         select(undef, undef, undef, {pause}) }}"
    );
    let mut f = std::fs::File::create(&sh).expect("create");
    writeln!(f, "#!/bin/sh\nperl -e '{perl}' | /bin/sh \"$@\"").expect("write");
    drop(f);
    std::fs::set_permissions(&sh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    sh
}

#[test]
fn slow_but_live_children_are_not_dropped() {
    let dir = TempDir::new("stall-slow");
    let cache = dir.path().join("cache");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&cache)).expect("hop");
    // 256 KiB/s: the hop's queue for it goes above 4 MiB and takes ~12 s
    // (more than the stall window) to drain to 1 MiB, moving all along.
    let slow = hop
        .local(mito::LocalOptions { sh: throttled_sh(dir.path(), 256 << 10), ..local_in(&cache) })
        .expect("throttled child");
    let toggled = hop.local(local_in(&cache)).expect("toggled child");
    let toggled_pid = toggled.info().expect("info").pid;
    let _cleanup = Cleanup(toggled_pid);
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                signal(toggled_pid, rustix::process::Signal::STOP);
                std::thread::sleep(Duration::from_millis(200));
                signal(toggled_pid, rustix::process::Signal::CONT);
                std::thread::sleep(Duration::from_millis(200));
            }
            signal(toggled_pid, rustix::process::Signal::CONT);
        })
    };
    let put = |ctx: &Context, name: &str, size: usize, seed: usize| {
        let (ctx, src, dst) =
            (ctx.clone(), dir.path().join(format!("{name}.src")), dir.path().join(format!("{name}.dst")));
        let sha = write_data(&src, size, seed);
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = ctx.put(&src, &dst);
            (r.map(|s| s.checksum), sha, t.elapsed(), dst)
        })
    };
    let t0 = Instant::now();
    let slow_put = put(&slow, "slow", 5 << 20, 3);
    let toggled_put = put(&toggled, "toggled", 24 << 20, 5);
    for (name, ctx, h) in [("throttled", &slow, slow_put), ("toggled", &toggled, toggled_put)] {
        let (r, sha, took, dst) = h.join().expect("put thread");
        eprintln!("{name} child: put took {took:?}");
        assert_eq!(r.expect(name), mito::Digest::Sha256(sha), "{name}: checksum (the importer's SHA-256)");
        assert_eq!(mito::core::sha256::digest(&std::fs::read(&dst).expect("read copy")), sha, "{name}: the copy");
        assert!(ctx.disconnect_reason().is_none(), "{name} child dropped: {:?}", ctx.disconnect_reason());
        ctx.ping().expect(name);
    }
    stop.store(true, Ordering::Relaxed);
    toggler.join().expect("toggler");
    // The slow one really was held up for longer than the stall window.
    assert!(t0.elapsed() > STALL + Duration::from_secs(2), "the throttled put took only {:?}", t0.elapsed());
    hop.ping().expect("hop");
}

/// The master side on its own: a direct context that stops reading fills
/// the master's queue, and a sender waits for room there; closing stdin,
/// signalling and dropping a `Process` are control frames that do not
/// wait, so they return at once (they waited for ever before).
#[test]
fn control_sends_return_while_the_queue_is_full() {
    let dir = TempDir::new("stall-direct");
    let router = Router::new().expect("router");
    let ctx = router.local(local_in(&dir.path().join("cache"))).expect("context");
    let cat = ExecArgs {
        argv: ["sh", "-c", "exec cat >/dev/null"].map(|a| ByteBuf::from(a.as_bytes())).to_vec(),
        ..ExecArgs::default()
    };
    let mut process = ctx.spawn(&cat).expect("spawn");
    let input = process.take_input().expect("stdin");
    let pid = ctx.info().expect("info").pid;
    let _cleanup = Cleanup(pid);
    signal(pid, rustix::process::Signal::STOP);
    {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            let data = ByteBuf::from(vec![7u8; 1 << 20]);
            for i in 0..64 {
                let path = ByteBuf::from(format!("/nonexistent/flood-{i}"));
                if ctx.call_async::<f::WriteFile>(&f::WriteFileArgs { path, data: data.clone(), mode: None }).is_err() {
                    return;
                }
            }
        });
    }
    // The flood is stuck once the bytes accepted stop growing, above the
    // master's high-water mark.
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let sent = ctx.bytes_sent();
        if sent != last {
            (last, since) = (sent, Instant::now());
        } else if since.elapsed() > Duration::from_millis(500) && sent > 8 << 20 {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(20), "the flood never filled the queue ({sent} bytes)");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let closed = input.close();
        let signalled = process.signal(libc::SIGTERM);
        drop(process);
        let _ = tx.send((closed, signalled, t.elapsed()));
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok((closed, signalled, took)) => {
            closed.expect("close stdin");
            signalled.expect("signal");
            assert!(took < Duration::from_secs(1), "close, signal and drop took {took:?}");
        }
        Err(_) => panic!("closing stdin / signalling / dropping a Process blocks on the full queue"),
    }
}
