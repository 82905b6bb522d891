//! Keeps a test container's namespaces alive: the only program in the
//! root filesystem `scripts/test-container` builds (a static musl binary,
//! no shell, no libc beside it). Sleeps until killed.

fn main() {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
