//! A custom agent: mito's runtime and built-ins plus this program's own
//! functions. It is a static musl `std` binary; the master uploads it
//! instead of the embedded agent (see `master.rs`). Build it with:
//!
//! ```sh
//! cargo build --release --example custom_agent --no-default-features --features agent,std \
//!     --target x86_64-unknown-linux-musl
//! ```
//!
//! In your own crate: depend on `mito` with `default-features = false,
//! features = ["agent", "std"]` for this binary (and the default features
//! for the master), and build it the same way with `--bin`.

#[path = "bodies.rs"]
mod bodies;
#[path = "functions.rs"]
mod functions;

use bodies::{disk_usage, grep};
use functions::{DiskUsage, Grep};
use mito::agent::{function, serve};

fn main() {
    // One call: the agent loop, serving the built-ins and these.
    serve(vec![function::<DiskUsage, _>(disk_usage), function::<Grep, _>(grep)])
}
