//! The custom agent tests/custom_agent.rs runs: the example's functions
//! plus test ones (round trips, errors, panics).

#[path = "../../examples/custom_agent/functions.rs"]
#[allow(dead_code)]
mod example;
mod functions;

use functions::{Echo, Fail, Panic, ReadText};

fn main() {
    mito::agent::serve(vec![
        mito::agent::function::<Echo, _>(Ok::<_, String>),
        mito::agent::function::<Fail, _>(|why: String| Err::<(), _>(why)),
        mito::agent::function::<Panic, _>(|why: String| -> Result<(), String> { panic!("{why}") }),
        mito::agent::function::<ReadText, _>(|p: String| std::fs::read_to_string(p)),
        // The example's disk_usage answers here too, differently: the
        // test tells the two agents apart by it.
        mito::agent::function::<example::DiskUsage, _>(|_: String| {
            Ok::<_, String>(example::Usage { files: 0, dirs: 0, bytes: u64::MAX })
        }),
    ])
}
