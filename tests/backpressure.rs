//! A gigabyte of command output read slowly: the command is held back
//! (output credit, see `mito::Process`) instead of memory filling up in the
//! master, the agent, or the ssh client carrying the stream. Its own test
//! binary, so the master's peak RSS is not other tests' data.

mod common;

use std::time::Duration;

use common::sshd::Sshd;
use mito::functions::ExecArgs;
use mito::{Context, LocalOptions, ProcessEvent, Router};
use serde_bytes::ByteBuf;

/// VmHWM (peak RSS) of a process, KiB.
fn peak_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Reads 1 GiB of `head -c … /dev/zero` at about 250 MB/s (a quarter of
/// what the command can produce locally), then checks every process on the
/// way. Without credit the master alone would queue hundreds of MiB.
fn slow_reader_keeps_memory_bounded(ctx: &Context, carriers: &[u32]) {
    let agent = ctx.connect_info().pid;
    let total: u64 = 1 << 30;
    let argv = ["head", "-c", &total.to_string(), "/dev/zero"].map(|a| ByteBuf::from(a.as_bytes())).to_vec();
    let mut p = ctx.spawn(&ExecArgs { argv, ..ExecArgs::default() }).expect("spawn");
    let (mut got, mut chunks) = (0u64, 0u64);
    loop {
        match p.next(None).expect("next") {
            ProcessEvent::Output { data, .. } => {
                got += data.len() as u64;
                chunks += 1;
                if chunks % 4 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            ProcessEvent::Exit(r) => {
                assert_eq!(r.status.code, Some(0));
                break;
            }
        }
    }
    assert_eq!(got, total);
    let master = peak_kib(std::process::id());
    let agent_peak = peak_kib(agent);
    eprintln!("{}: 1 GiB read slowly: master peak {master} KiB, agent peak {agent_peak} KiB", ctx.name());
    assert!(agent_peak < 32 * 1024, "agent peak RSS {agent_peak} KiB");
    assert!(master < 100 * 1024, "master (this test process) peak RSS {master} KiB");
    for pid in carriers {
        let k = peak_kib(*pid);
        eprintln!("{}: carrier {pid} peak {k} KiB", ctx.name());
        assert!(k < 64 * 1024, "carrier process {pid} peak RSS {k} KiB");
    }
    ctx.ping().expect("the context still works");
}

#[test]
fn slow_reader_of_a_gigabyte_local() {
    let router = Router::new().expect("router");
    let ctx = router.local(LocalOptions::default()).expect("connect");
    slow_reader_keeps_memory_bounded(&ctx, &[]);
}

#[test]
fn slow_reader_of_a_gigabyte_over_ssh() {
    let Some(sshd) = Sshd::start("slow_reader_of_a_gigabyte_over_ssh") else { return };
    let router = Router::new().expect("router");
    let ctx = router.ssh(sshd.opts("mito-user")).expect("connect");
    let ssh_client = ctx.connect_info().transport_pid.expect("ssh pid");
    // The sshd session process that relays between the socket and the agent.
    let session = common::parent_of(ctx.connect_info().pid).expect("agent's parent");
    slow_reader_keeps_memory_bounded(&ctx, &[ssh_client, session]);
}

#[test]
fn slow_reader_of_a_gigabyte_through_a_hop() {
    let router = Router::new().expect("router");
    let hop = router.local(LocalOptions::default()).expect("hop");
    let ctx = hop.local(LocalOptions::default()).expect("connect through the hop");
    // The hop agent forwards every byte: credit must bound it too.
    slow_reader_keeps_memory_bounded(&ctx, &[hop.connect_info().pid]);
}
