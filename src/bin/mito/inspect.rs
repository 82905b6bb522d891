//! `mito ping`, `mito facts` and `mito info`: connect, ask the context
//! about itself, print the answer (see `render`).

use std::io::Write;
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
    if let Some(code) = print(&render::ping_connected(&ctx, connected, t0.elapsed()))? {
        return Ok(code);
    }
    let mut rtts = Vec::new();
    for _ in 1..a.count {
        let t = Instant::now();
        ctx.ping().map_err(|e| e.to_string())?;
        rtts.push(t.elapsed());
    }
    if !rtts.is_empty() {
        rtts.sort();
        if let Some(code) = print(&render::ping_round_trips(&rtts))? {
            return Ok(code);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The host's facts, as text or JSON.
pub fn facts(a: &FactsArgs, targets: &mut Targets<'_>) -> Result<ExitCode, String> {
    let ctx = targets.connect(&a.target)?;
    let f = ctx.facts().map_err(|e| e.to_string())?;
    let facts = render::Facts::new(&ctx, &f);
    let text = if a.json { facts.json()? } else { facts.text() };
    Ok(print(&text)?.unwrap_or(ExitCode::SUCCESS))
}

/// Who and where the agent is, as text or JSON.
pub fn info(a: &InfoArgs, targets: &mut Targets<'_>) -> Result<ExitCode, String> {
    let ctx = targets.connect(&a.target)?;
    let info = ctx.info().map_err(|e| e.to_string())?;
    let text = if a.json { render::info_json(&ctx, &info)? } else { render::info_text(&ctx, &info) };
    Ok(print(&text)?.unwrap_or(ExitCode::SUCCESS))
}

/// Prints `text` and a newline on stdout. A reader that went away
/// (`mito info local | head -1`) ends mito quietly with 141, the status of
/// a program killed by SIGPIPE, as `cat` would (Rust's `println!` panics
/// there instead): `Some(141)`.
fn print(text: &str) -> Result<Option<ExitCode>, String> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Some(ExitCode::from(141))),
        Err(e) => Err(format!("writing to stdout: {e}")),
    }
}
