//! A seeded fuzz run over everything a peer's bytes reach before any
//! check of ours: the frame decoder, the header, payload decompression, the
//! call envelope, and every postcard type the master or the agent decodes
//! (function arguments and replies, hello, logs, routes, relays, command
//! control, remote errors). The rule it holds to (ARCHITECTURE.md,
//! "Security"): input from the wire gets an error, never a panic.
//!
//! Inputs are random bytes and mutations (bit flips, truncations, spliced
//! runs, lengths set to extremes) of real encodings. The run is
//! deterministic: `MITO_FUZZ_SEED` and `MITO_FUZZ_CASES` change it; a panic
//! reports the seed and case that found it, so it can be replayed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

/// Frames the decoder accepted: the run must reach past the header checks.
static FRAMES: AtomicU64 = AtomicU64::new(0);

use mito::core::stream::{Decoder, TxBuffer};
use mito::functions::*;
use mito::proto::message::{decode_call, encode_call, AddRoute, DelRoute, Goodbye, Hello, LinkEnd, LogRecord, Relay};
use mito::proto::{Header, Message, RemoteError, HEADER_LEN};
use serde::de::DeserializeOwned;

/// Decodes `bytes` as `T`; a panic here is the bug this test looks for.
fn try_type<T: DeserializeOwned>(bytes: &[u8]) {
    let _ = postcard::from_bytes::<T>(bytes);
}

/// Both halves of a function's wire types.
fn try_function<F: Function>(bytes: &[u8]) {
    try_type::<F::Args>(bytes);
    try_type::<F::Reply>(bytes);
}

/// Everything a peer's payload can be decoded as.
fn decode_everything(bytes: &[u8]) {
    try_function::<Ping>(bytes);
    try_function::<Info>(bytes);
    try_function::<Exec>(bytes);
    try_function::<ReadFile>(bytes);
    try_function::<WriteFile>(bytes);
    try_function::<Stat>(bytes);
    try_function::<Remove>(bytes);
    try_function::<FileOpenRead>(bytes);
    try_function::<FileRead>(bytes);
    try_function::<FileOpenWrite>(bytes);
    try_function::<FileWrite>(bytes);
    try_function::<FileClose>(bytes);
    try_function::<ListDir>(bytes);
    try_function::<MakeDirs>(bytes);
    try_function::<Chmod>(bytes);
    try_function::<Chown>(bytes);
    try_function::<Symlink>(bytes);
    try_function::<ReadLink>(bytes);
    try_function::<Rename>(bytes);
    try_function::<RemoveTree>(bytes);
    try_function::<DiskUsage>(bytes);
    try_function::<Facts>(bytes);
    try_type::<Hello>(bytes);
    try_type::<LogRecord>(bytes);
    try_type::<AddRoute>(bytes);
    try_type::<DelRoute>(bytes);
    try_type::<ExecControl>(bytes);
    try_type::<ExecOutput>(bytes);
    try_type::<RemoteError>(bytes);
    try_type::<u32>(bytes);
    let _ = postcard::from_bytes::<Relay<'_>>(bytes);
    let _ = postcard::from_bytes::<Goodbye<'_>>(bytes);
    let _ = postcard::from_bytes::<FileWriteRef<'_>>(bytes);
    if let Ok((name, args)) = decode_call(bytes) {
        let _ = (name.len(), args.len());
    }
}

/// Real encodings to mutate: calls, frames, compressed payloads.
fn corpus() -> Vec<Vec<u8>> {
    let mut c = Vec::new();
    let exec = ExecArgs {
        argv: ["sh", "-c", "echo hi"].iter().map(|a| serde_bytes::ByteBuf::from(a.as_bytes())).collect(),
        ..ExecArgs::default()
    };
    c.push(encode_call(Exec::NAME, &exec).expect("encode"));
    c.push(postcard::to_allocvec(&exec).expect("encode"));
    c.push(postcard::to_allocvec(&FactsReply::default()).expect("encode"));
    c.push(postcard::to_allocvec(&DiskUsageReply::default()).expect("encode"));
    c.push(postcard::to_allocvec(&AddRoute { id: 7, via: 3 }).expect("encode"));
    let del = DelRoute {
        id: 7,
        end: LinkEnd::ReadError(5),
        pid: 300,
        status: Some(mito::proto::ExitStatus { code: None, signal: Some(9) }),
    };
    c.push(postcard::to_allocvec(&del).expect("encode"));
    c.push(postcard::to_allocvec(&Goodbye::Fatal { what: "epoll_wait", errno: 9 }).expect("encode"));
    c.push(postcard::to_allocvec(&(1u32, "name", u64::MAX, i64::MIN)).expect("encode"));
    // Whole frames, one plain and one with a deflated payload.
    let mut tx = TxBuffer::default();
    let h = Header { dst: 0, src: 5, auth: 5, handle: 1000, reply_to: 1001, len: 0, flags: 0 };
    tx.push(&h, &c[0]);
    let big = vec![b'a'; 20_000];
    let deflated = mito::proto::compress::compress(&big).expect("compressible");
    let hc = Header { flags: mito::proto::FLAG_COMPRESSED, ..h };
    tx.push(&hc, &deflated);
    c.push(tx.pending().to_vec());
    c.push(deflated);
    c
}

fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.usize(1..8) {
        match rng.u8(0..6) {
            0 if !v.is_empty() => {
                let i = rng.usize(..v.len());
                v[i] ^= 1 << rng.u8(0..8);
            }
            1 if !v.is_empty() => v.truncate(rng.usize(..v.len())),
            2 => {
                let at = rng.usize(..=v.len());
                let run: Vec<u8> = (0..rng.usize(1..16)).map(|_| rng.u8(..)).collect();
                v.splice(at..at, run);
            }
            3 if !v.is_empty() => {
                // A length or varint pushed to an extreme.
                let i = rng.usize(..v.len());
                v[i] = if rng.bool() { 0xff } else { 0x80 };
            }
            4 if v.len() >= 4 => {
                let i = rng.usize(..v.len() - 3);
                v[i..i + 4].copy_from_slice(&rng.u32(..).to_le_bytes());
            }
            _ => v.push(rng.u8(..)),
        }
    }
    v
}

fn one_case(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) {
    let bytes = if rng.u8(0..4) == 0 {
        (0..rng.usize(0..256)).map(|_| rng.u8(..)).collect()
    } else {
        let pick = rng.usize(..corpus.len());
        mutate(rng, &corpus[pick])
    };
    decode_everything(&bytes);
    // As a stream of frames, fed in pieces, under a small and a large limit.
    for max in [64u32, 1 << 20] {
        let mut d = Decoder::new(max);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = rng.usize(1..=rest.len());
            for m in d.feed(&rest[..n]).into_iter().flatten() {
                FRAMES.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = m.payload(1 << 16) {
                    decode_everything(&p);
                }
            }
            rest = &rest[n..];
        }
    }
    if bytes.len() >= HEADER_LEN {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&bytes[..HEADER_LEN]);
        let _ = Header::decode(&h, u32::MAX);
    }
    let m = Message::new(0, 1, 1000, 0, bytes.clone());
    let compressed = Message { header: Header { flags: mito::proto::FLAG_COMPRESSED, ..m.header }, data: bytes };
    let _ = compressed.payload(1 << 16);
}

#[test]
fn wire_input_never_panics() {
    let seed: u64 = std::env::var("MITO_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6d69_746f);
    let cases: u64 = std::env::var("MITO_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let corpus = corpus();
    // Quiet the default hook: a panic is reported once, with its case.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = None;
    for case in 0..cases {
        let mut rng = fastrand::Rng::with_seed(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| one_case(&mut rng, &corpus))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed = Some((case, msg));
            break;
        }
    }
    std::panic::set_hook(hook);
    if let Some((case, msg)) = failed {
        panic!("wire input panicked: {msg} (replay: MITO_FUZZ_SEED={seed} case {case})");
    }
    let frames = FRAMES.load(Ordering::Relaxed);
    eprintln!("{cases} fuzz cases, seed {seed}: no panic; {frames} frames got past the decoder");
    assert!(cases < 1000 || frames > cases / 100, "mutations should still yield whole frames: {frames}");
}
