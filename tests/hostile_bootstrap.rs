//! A target that floods its stderr while the agent starts (login banners,
//! a hostile shell) costs the master neither memory nor time in proportion:
//! only the tail is kept and scanned for prompts (ARCHITECTURE.md,
//! "Security"). One test in this binary, so its peak RSS is its own.

mod common;

use mito::{LocalOptions, Router};

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_stderr_flood_during_bootstrap_keeps_the_master_small() {
    let d = common::TempDir::new("stderr-flood");
    // 256 MiB on stderr, no newline, then the real bootstrap.
    let sh = d.path().join("noisy-sh");
    std::fs::write(&sh, "#!/bin/sh\nhead -c 268435456 /dev/zero | tr '\\0' x >&2\nexec /bin/sh \"$@\"\n")
        .expect("write");
    std::fs::set_permissions(&sh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let before = peak_rss_kib();
    let router = Router::new().expect("router");
    let opts = LocalOptions { sh, connect_timeout: std::time::Duration::from_secs(120), ..LocalOptions::default() };
    let ctx = router.local(opts).expect("the context starts after the flood");
    ctx.ping().expect("ping");
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "the master's peak RSS grew by {grown} KiB while 256 MiB went by on stderr");
    eprintln!("peak RSS growth during a 256 MiB stderr flood: {grown} KiB");
}
