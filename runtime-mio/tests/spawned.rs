//! Spawned members on real loopback sockets: propagation, failure detection, a join by one
//! state dump, and a graceful leave.

use hybridcast_mio::core::{Config, Event};
use hybridcast_mio::{DriverConfig, NodeHandle, spawn};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

fn member(port: u16, name: &str) -> NodeHandle {
    let mut c = DriverConfig::new("spawn-test", name);
    c.group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 3), port);
    c.core = Config {
        heartbeat_interval: Duration::from_millis(100),
        request_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    spawn(c).expect("spawn")
}

/// Polls `f` until it holds or 30 s pass (a bound on waiting, not a timing assertion).
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn sees(h: &NodeHandle, name: &str, state: &str) -> bool {
    h.view()
        .expect("running")
        .members
        .iter()
        .any(|m| m.name == name && m.state == state)
}

#[test]
fn detection_join_by_one_dump_and_leave() {
    let port = 47_301;
    let a = member(port, "a");
    let b = member(port, "b");
    let c = member(port, "c");
    for (h, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        h.bind(&format!("svc-{n}"), "1")
            .expect("running")
            .expect("bind");
    }
    assert!(eventually(|| {
        let v = a.view().expect("running");
        v.offers.len() == 3 && v.members.iter().filter(|m| m.state == "alive").count() == 2
    }));

    // A crash (no Leave) is detected by heartbeats and a failed probe.
    c.crash();
    assert!(eventually(
        || sees(&a, "c", "failed") && sees(&b, "c", "failed")
    ));
    assert!(!a.view().expect("running").offers.contains_key("svc-c"));
    // A graceful leave is seen at once.
    b.shutdown();
    assert!(eventually(|| sees(&a, "b", "left")));

    // A newcomer joins with one state dump.
    let d = member(port, "d");
    assert!(eventually(|| {
        let v = d.view().expect("running");
        v.joined && v.offers.contains_key("svc-a") && !v.offers.contains_key("svc-b")
    }));
    let (stats, _) = d.stats().expect("running");
    assert_eq!(stats.dump_requests, 1, "one state dump");
    let joined_via_dump = d
        .events()
        .try_iter()
        .any(|e| matches!(e, Event::Joined { via: Some(_), .. }));
    assert!(joined_via_dump);
    drop((a, d));
}
