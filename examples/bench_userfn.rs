//! The mito side of `scripts/bench`'s user-function rows (`userfn_local`,
//! `userfn_hop`): a round trip of a user's own function with a 1 KiB
//! argument, beside mitogen calling a plain Python function with 1 KiB of
//! bytes. One file, both halves, chosen by the features it is built with:
//!
//! - the agent (a custom agent serving [`Take`]):
//!   `mito build-agent --example bench_userfn --no-default-features --features agent,std`
//! - the master (the default features): `bench_userfn WORKLOAD ITERATIONS`
//!   uploads the agent named by `$BENCH_USERFN_AGENT` and prints one JSON
//!   line `{"unit": "us", "values": [...], "baseline": []}`, as
//!   `examples/bench.rs` does for the other rows. `BENCH_DIR`: scratch dir
//!   (its agent cache).

use serde_bytes::ByteBuf;

mito::declare_function!(
    /// Takes bytes and says how many: the argument is the payload, the
    /// reply a number (as the mitogen side's `take`).
    pub Take, "bench.take", ByteBuf, u64
);

/// The agent: the built-ins and [`Take`].
#[cfg(all(not(feature = "master"), feature = "agent", feature = "std"))]
fn main() {
    mito::agent::serve(vec![mito::agent::function::<Take, _>(|b: ByteBuf| Ok::<_, String>(b.len() as u64))])
}

/// Built with neither half's features: nothing to run.
#[cfg(all(not(feature = "master"), not(all(feature = "agent", feature = "std"))))]
fn main() {
    eprintln!("bench_userfn: build it with the default features (the master) or with --features agent,std");
    std::process::exit(2)
}

#[cfg(feature = "master")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::time::Instant;

    use mito::{Agent, Context, LocalOptions, Router, RouterOptions};

    let args: Vec<String> = std::env::args().collect();
    let workload = args.get(1).ok_or("usage: bench_userfn WORKLOAD ITERATIONS")?.as_str();
    let n: usize = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let cache = std::path::PathBuf::from(var("BENCH_DIR")?).join("mito-userfn-cache");
    std::fs::create_dir_all(cache.join("run"))?;
    let local = || LocalOptions {
        env: vec![
            ("XDG_CACHE_HOME".into(), cache.as_os_str().to_owned()),
            ("XDG_RUNTIME_DIR".into(), cache.join("run").into_os_string()),
        ],
        ..LocalOptions::default()
    };
    let agent = Agent::from_path(var("BENCH_USERFN_AGENT")?)?;
    let router = Router::with_options(RouterOptions { agents: vec![agent], ..Default::default() })?;
    let arg = ByteBuf::from(vec![b'x'; 1024]);
    let rtt = |ctx: &Context| -> Result<Vec<f64>, Box<dyn std::error::Error>> {
        // Warm up as the no-op rows do (rtt in examples/bench.rs).
        for _ in 0..1000 {
            ctx.call::<Take>(&arg)?;
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let len = ctx.call::<Take>(&arg)?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
            if len != 1024 {
                return Err(format!("bench.take replied {len}, not 1024").into());
            }
        }
        Ok(v)
    };
    let values = match workload {
        "userfn_local" => rtt(&router.local(local())?)?,
        "userfn_hop" => {
            let hop = router.local(local())?;
            rtt(&hop.local(local())?)?
        }
        other => return Err(format!("unknown workload {other}").into()),
    };
    let list: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
    println!("{{\"unit\": \"us\", \"values\": [{}], \"baseline\": []}}", list.join(", "));
    Ok(())
}
