//! Lines a command writes to the agent's own fd 1/2 (`Stdio::Log`) are
//! read only while the agent's link upstream drains: when it does not, the
//! writer blocks on its pipe instead of filling the agent's memory.

mod common;

use std::time::{Duration, Instant};

use mito::functions::{Exec, ExecArgs, Stdio as ExecStdio};
use mito::{LocalOptions, Router};
use serde_bytes::ByteBuf;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(str::to_string))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let p = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(p, sig).expect("kill");
}

#[test]
fn a_log_flood_waits_for_a_link_that_does_not_drain() {
    let router = Router::new().expect("router");
    let hop = router.local(LocalOptions::default()).expect("hop");
    let child = hop.local(LocalOptions::default()).expect("child behind the hop");
    let (hop_pid, child_pid) = (hop.info().expect("info").pid, child.info().expect("info").pid);
    // The hop stops reading its child: the child's link upstream is full.
    signal(hop_pid, rustix::process::Signal::STOP);
    let args = ExecArgs {
        argv: ["sh", "-c", "exec yes 'a log line that goes on and on'"]
            .iter()
            .map(|a| ByteBuf::from(a.as_bytes()))
            .collect(),
        stdio: ExecStdio::Log,
        ..ExecArgs::default()
    };
    // Queued towards the stopped hop; the child starts the flood when the
    // hop resumes reading its parent, so let it through first.
    signal(hop_pid, rustix::process::Signal::CONT);
    let pending = child.call_async::<Exec>(&args).expect("send");
    std::thread::sleep(Duration::from_millis(300));
    signal(hop_pid, rustix::process::Signal::STOP);
    let t0 = Instant::now();
    let mut peak = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kib(child_pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(hop_pid, rustix::process::Signal::CONT);
    common::kill9(child_pid);
    drop(pending);
    eprintln!("child agent peak RSS during a log flood over a stalled link: {peak} KiB");
    assert!(peak > 0, "the child agent was measured");
    assert!(peak < 32 * 1024, "the child agent grew to {peak} KiB with its link upstream stalled");
    hop.ping().expect("the hop carries on");
}
