//! What the bench examples (`bench`, `bench_containers`) measure with:
//! one copy, included by each as `mod bench_common;` (a folder without a
//! `main.rs` is no example of its own).

use std::time::Duration;

/// `d` in milliseconds, as the rows report it.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Bytes this process has written so far (all write syscalls): what the
/// master sent on every link, the same measure mitogen's rows use.
pub fn wchar() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("wchar:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
