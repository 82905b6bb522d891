//! `mito ping`, `mito facts` and `mito info`: connect, ask the context
//! about itself, print the answer (see `render`).

use std::process::ExitCode;
use std::time::Instant;

use super::cli::{FactsArgs, InfoArgs, PingArgs};
use super::render;
use super::target::Targets;

/// Connects, makes one call, then `count - 1` more to time round trips.
pub fn ping(a: &PingArgs, targets: &mut Targets<'_>) -> Result<ExitCode, String> {
    let t0 = Instant::now();
    let ctx = targets.connect(&a.target)?;
    let connected = t0.elapsed();
    ctx.ping().map_err(|e| e.to_string())?;
    println!("{}", render::ping_connected(&ctx, connected, t0.elapsed()));
    let mut rtts = Vec::new();
    for _ in 1..a.count {
        let t = Instant::now();
        ctx.ping().map_err(|e| e.to_string())?;
        rtts.push(t.elapsed());
    }
    if !rtts.is_empty() {
        rtts.sort();
        println!("{}", render::ping_round_trips(&rtts));
    }
    Ok(ExitCode::SUCCESS)
}

/// The host's facts, as text or JSON.
pub fn facts(a: &FactsArgs, targets: &mut Targets<'_>) -> Result<ExitCode, String> {
    let ctx = targets.connect(&a.target)?;
    let f = ctx.facts().map_err(|e| e.to_string())?;
    let facts = render::Facts::new(&ctx, &f);
    println!("{}", if a.json { facts.json()? } else { facts.text() });
    Ok(ExitCode::SUCCESS)
}

/// Who and where the agent is, as text or JSON.
pub fn info(a: &InfoArgs, targets: &mut Targets<'_>) -> Result<ExitCode, String> {
    let ctx = targets.connect(&a.target)?;
    let info = ctx.info().map_err(|e| e.to_string())?;
    println!("{}", if a.json { render::info_json(&ctx, &info)? } else { render::info_text(&ctx, &info) });
    Ok(ExitCode::SUCCESS)
}
