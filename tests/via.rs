//! Multi-hop: contexts connected through other contexts (local → local,
//! → sudo with a password, ssh → sudo), routing, faults, and a file relayed
//! once through a hop to many contexts behind it.

mod common;

use std::time::Duration;

use common::{alive, local_in, TempDir};
use mito::Router;

#[test]
fn local_through_local_routes_calls_and_commands() {
    let dir = TempDir::new("via-basic");
    let router = Router::new().expect("router");
    let hop = router.local(local_in(&dir.path().join("cache"))).expect("hop");
    let child = hop.local(local_in(&dir.path().join("cache"))).expect("child through hop");
    assert!(child.name().starts_with(hop.name()), "named after its hop: {}", child.name());
    let hi = hop.info().expect("hop info");
    let ci = child.info().expect("child info");
    assert_ne!(hi.pid, ci.pid);
    // The child agent runs under the hop: sh → agent, parent chain reaches the hop's pid.
    let mut p = ci.pid;
    let mut found = false;
    for _ in 0..4 {
        match common::parent_of(p) {
            Some(pp) if pp == hi.pid => {
                found = true;
                break;
            }
            Some(pp) => p = pp,
            None => break,
        }
    }
    assert!(found, "child agent {} is a descendant of the hop agent {}", ci.pid, hi.pid);
    let r = child.exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]).expect("exec");
    assert_eq!((r.code, &r.stdout[..], &r.stderr[..]), (Some(3), &b"out\n"[..], &b"err\n"[..]));
    for _ in 0..1000 {
        child.ping().expect("ping");
    }
    drop(router);
    assert!(common::wait_gone(ci.pid, Duration::from_secs(5)).is_some(), "child agent gone with the router");
    assert!(!alive(hi.pid) || common::wait_gone(hi.pid, Duration::from_secs(5)).is_some());
}
