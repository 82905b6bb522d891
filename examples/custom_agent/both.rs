//! One file, both halves: this program is the master and, uploaded by
//! itself, the agent. Its `main` first asks whether stage0 started it as an
//! agent (`serve_if_agent`: then it serves the example's functions and never
//! returns); otherwise it is the master and uploads its own executable
//! (`Agent::this_executable`). It must be a static musl binary with both
//! halves' features:
//!
//! ```sh
//! cargo build --release --example custom_both --features agent --target x86_64-unknown-linux-musl
//! target/x86_64-unknown-linux-musl/release/examples/custom_both /etc
//! ```
//!
//! It calls the functions on a local context and on one behind it (the hop
//! sends its own copy of this file onwards).

#[path = "bodies.rs"]
mod bodies;
#[path = "functions.rs"]
mod functions;

use functions::{DiskUsage, Grep, GrepArgs, Pattern};
use mito::agent::{function, serve_if_agent};
use mito::{Agent, LocalOptions, Router, RouterOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First thing: in agent mode this serves and never returns.
    serve_if_agent(|| vec![function::<DiskUsage, _>(bodies::disk_usage), function::<Grep, _>(bodies::grep)]);

    // The master: this very file is the agent it uploads.
    let agent = Agent::this_executable()?;
    println!("this executable: sha256 {}, {} bytes", agent.sha256(), agent.len());
    let router = Router::with_options(RouterOptions { agents: vec![agent], ..Default::default() })?;
    let local = router.local(LocalOptions::default())?;
    let behind = local.local(LocalOptions::default())?;

    let dir = std::env::args().nth(1).unwrap_or_else(|| "/etc".into());
    for ctx in [&local, &behind] {
        let usage = ctx.call::<DiskUsage>(&dir)?;
        let args = GrepArgs { path: "/etc/passwd".into(), pattern: Pattern::Prefix("root:".into()), max: 1 };
        let root = ctx.call::<Grep>(&args)?;
        println!(
            "{}: agent {} pid {} from {}: {dir}: {} files, {} directories, {} bytes; /etc/passwd: {root:?}",
            ctx.name(),
            ctx.connect_info().agent_hash,
            ctx.connect_info().pid,
            ctx.connect_info().exe,
            usage.files,
            usage.dirs,
            usage.bytes
        );
    }
    Ok(())
}
