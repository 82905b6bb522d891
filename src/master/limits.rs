//! Process limits a master holding many contexts needs.
//!
//! Each direct context costs the master three file descriptors (measured
//! by `tests/scale.rs`: its stream, the transport's stderr, the handle
//! that reaps the transport) and no thread: the broker does all I/O on
//! one thread, whatever the number of contexts. The usual soft limit of
//! 1024 descriptors therefore stops a master near 300 direct contexts;
//! [`raise_fd_limit`] lifts it to the hard limit, which needs no
//! privilege.

/// Raises the soft `RLIMIT_NOFILE` of this process to its hard limit and
/// returns the new soft limit (unchanged if it already was the hard one).
/// Children inherit it: an agent started after this (a local one) may hold
/// as many descriptors too.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current.is_some() && lim.current == lim.maximum {
        return Ok(lim.current.unwrap_or(u64::MAX));
    }
    lim.current = lim.maximum;
    setrlimit(Resource::Nofile, lim)?;
    Ok(lim.current.unwrap_or(u64::MAX))
}
