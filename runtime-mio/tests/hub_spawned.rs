//! Members on threads of their own in hub mode, over loopback: a graceful leave through the
//! hub is a leave for the others (not a failure), and a member whose HTTP listens on every
//! address is advertised with the address it reaches the hub from.

use hybridcast_mio::core::hub::LinkConfig;
use hybridcast_mio::core::{Config, Event};
use hybridcast_mio::{HubServerConfig, NodeHandle, RuntimeConfig, Transport, spawn, spawn_hub};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

fn member(hub: SocketAddr, name: &str, http: SocketAddr) -> NodeHandle {
    let mut c = RuntimeConfig::new("hub-spawn", name);
    c.transport = Transport::Hub(LinkConfig::new(hub));
    c.http = http;
    c.allow_unauthenticated = true;
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

fn state_of(h: &NodeHandle, name: &str) -> Option<String> {
    h.view()
        .expect("running")
        .members
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.state.clone())
}

#[test]
fn a_graceful_leave_through_the_hub_is_a_leave_not_a_failure() {
    let mut hc = HubServerConfig::new("hub-spawn");
    hc.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let hub = spawn_hub(hc).expect("hub");
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let a = member(hub.addr(), "a", local);
    let b = member(hub.addr(), "b", local);
    // Listens on every address: advertised with the address towards the hub (loopback here).
    let c = member(
        hub.addr(),
        "c",
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
    );
    assert!(c.http_addr().ip().is_loopback(), "{}", c.http_addr());
    assert!(eventually(|| {
        [&a, &b].iter().all(|h| {
            h.view()
                .expect("running")
                .members
                .iter()
                .filter(|m| m.state == "alive")
                .count()
                == 2
        })
    }));
    let mut c = Some(c);
    for round in 0..3 {
        // The others publish throughout, so c has relayed traffic unread when it closes:
        // closing then must not reset the connection before the hub read c's goodbye.
        for k in 0..200 {
            let _ = a.publish("t", vec![k as u8; 2000]);
            let _ = b.publish("t", vec![k as u8; 2000]);
        }
        if let Some(h) = c.take() {
            h.shutdown();
        }
        assert!(
            eventually(|| state_of(&a, "c").as_deref() == Some("left")
                && state_of(&b, "c").as_deref() == Some("left")),
            "round {round}: a sees {:?}, b sees {:?}",
            state_of(&a, "c"),
            state_of(&b, "c")
        );
        let failed = |h: &NodeHandle| {
            h.events()
                .try_iter()
                .any(|e| matches!(&e, Event::MemberFailed { peer } if peer.name == "c"))
        };
        assert!(
            !failed(&a) && !failed(&b),
            "round {round}: c reported failed"
        );
        // The same member again (a newer incarnation), for the next round.
        c = Some(member(hub.addr(), "c", local));
        assert!(eventually(|| state_of(&a, "c").as_deref() == Some("alive")
            && state_of(&b, "c").as_deref() == Some("alive")));
    }
    let (stats, _) = hub.stats().expect("hub running");
    assert!(stats.closed_for(hybridcast_mio::core::hub::CloseReason::Closed) >= 1);
}
