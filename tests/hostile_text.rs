//! What a target prints about itself (log lines, its agent's stdout and
//! stderr) reaches the operator's terminal escaped and cut: a hostile
//! target cannot retitle or clear the terminal, or fill the screen and the
//! master's memory with one endless line (ARCHITECTURE.md, "Security").

mod common;

use std::time::{Duration, Instant};

use mito::functions::{ExecArgs, Stdio as ExecStdio};
use mito::{LocalOptions, Router};
use serde_bytes::ByteBuf;

#[test]
fn escape_sequences_and_endless_lines_from_a_target_are_defused() {
    common::capture_logs();
    let router = Router::new().expect("router");
    let ctx =
        router.local(LocalOptions { name: Some("hostile-text".into()), ..LocalOptions::default() }).expect("connect");
    // A title change, a screen clear and a bell; then a 200 000-character line.
    let script = "printf 'owned\\033]0;pwned\\007\\033[2J marker-esc\\n' >&2; \
                  head -c 200000 /dev/zero | tr '\\0' y; echo ' marker-long'";
    let args = ExecArgs {
        argv: ["sh", "-c", script].iter().map(|s| ByteBuf::from(s.as_bytes())).collect(),
        stdio: ExecStdio::Log,
        ..ExecArgs::default()
    };
    assert_eq!(ctx.exec_with(&args).expect("exec").status.code, Some(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::logs_containing("marker-esc").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let esc = common::logs_containing("marker-esc");
    assert!(!esc.is_empty(), "the line was logged");
    for l in &esc {
        assert!(!l.contains('\x1b') && !l.contains('\x07'), "raw control characters reached the log: {l:?}");
        assert!(l.contains("owned\\u{1b}]0;pwned\\u{7}\\u{1b}[2J marker-esc"), "escaped, not dropped: {l:?}");
    }
    // The long line arrives in pieces or cut, but no logged line is longer
    // than the cap plus its note and prefix.
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::logs_containing("yyyy").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let long = common::logs_containing("yyyy");
    assert!(!long.is_empty(), "the long line was logged");
    for l in &long {
        assert!(l.chars().count() < 4096 + 100, "a logged line of {} characters", l.chars().count());
    }
    ctx.ping().expect("the context keeps working");
}
