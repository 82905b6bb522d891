//! A master that uploads the custom agent (`agent.rs`) and calls its two
//! functions on a local context. Build the agent first, then:
//!
//! ```sh
//! cargo run --release --example custom_master -- /etc
//! ```
//!
//! The first argument is the directory to measure; the agent is read from
//! `target/x86_64-unknown-linux-musl/release/examples/custom_agent`, or
//! from `$MITO_AGENT`.

#[path = "functions.rs"]
mod functions;

use functions::{DiskUsage, Grep, GrepArgs, Pattern};
use mito::{Agent, LocalOptions, Router, RouterOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/etc".into());
    let path = std::env::var("MITO_AGENT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/x86_64-unknown-linux-musl/release/examples/custom_agent").into()
    });
    // The router uploads this agent instead of the embedded one; the
    // target caches it by its hash, beside any other agent.
    let agent = Agent::from_path(&path)?;
    let router = Router::with_options(RouterOptions { agents: vec![agent], ..Default::default() })?;
    let ctx = router.local(LocalOptions::default())?;
    println!("agent {} ({:?})", ctx.connect_info().agent_hash, ctx.connect_info().upload);

    let usage = ctx.call::<DiskUsage>(&dir)?;
    println!("{dir}: {} files, {} directories, {} bytes", usage.files, usage.dirs, usage.bytes);

    let args = GrepArgs { path: "/etc/passwd".into(), pattern: Pattern::Prefix("root:".into()), max: 5 };
    for (n, line) in ctx.call::<Grep>(&args)? {
        println!("/etc/passwd:{n}: {line}");
    }

    // A user error arrives typed (kind User, the function's text).
    if let Err(e) = ctx.call::<DiskUsage>(&"/no/such/dir".to_string()) {
        println!("error: {e}");
    }
    Ok(())
}
