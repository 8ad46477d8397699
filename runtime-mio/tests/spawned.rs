//! Spawned members on real loopback sockets: propagation, failure detection, a join by one
//! state dump, and a graceful leave.

use hybridcast_mio::core::{Config, Event};
use hybridcast_mio::{NodeHandle, RuntimeConfig, spawn};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

fn member(port: u16, name: &str) -> NodeHandle {
    let mut c = RuntimeConfig::new("spawn-test", name);
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

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let resp = hybridcast_mio::endpoints::get(&addr.to_string(), path, Duration::from_secs(10))
        .expect("an answer");
    (
        resp.status,
        String::from_utf8_lossy(&resp.body).into_owned(),
    )
}

#[test]
fn whoami_and_metrics_are_served() {
    let mut c = RuntimeConfig::new("spawn-test", "web/3");
    c.clone = Some(("web".into(), 3));
    c.group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 3), 47_302);
    let h = spawn(c).expect("spawn");
    let (status, body) = get(h.http_addr(), "/hybridcast/v1/whoami");
    assert_eq!(status, 200);
    let who: hybridcast_mio::endpoints::WhoAmI = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (
            who.cluster.as_str(),
            who.group.as_deref(),
            who.clone_index,
            who.name.as_str()
        ),
        ("spawn-test", Some("web"), Some(3), "web/3")
    );
    let (status, body) = get(h.http_addr(), "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE hybridcast_datagrams_out_total counter"));
    assert!(body.contains("hybridcast_members{state=\"alive\"} 0"));
    let (status, _) = get(h.http_addr(), "/nowhere");
    assert_eq!(status, 404);
}

#[test]
fn idle_connections_beyond_the_limit_evict_the_oldest_and_the_rest_close_when_idle() {
    use std::io::Read;
    let mut c = RuntimeConfig::new("spawn-test", "limited");
    c.group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 3), 47_303);
    c.max_served_connections = 4;
    c.idle_timeout = Duration::from_millis(300);
    let h = spawn(c).expect("spawn");
    let mut conns: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(h.http_addr()).expect("connect"))
        .collect();
    // Every connection ends: the oldest when newer ones need their place, the others when
    // idle too long.
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).expect("closed, not timed out"), 0);
    }
    let (_, d) = h.stats().expect("running");
    // Each was either evicted for a newer one or closed idle; none was refused, as the
    // connections in place were all idle.
    assert_eq!(d.connections_evicted + d.connections_timed_out, 10, "{d:?}");
    assert!(d.connections_evicted > 0, "{d:?}");
    assert_eq!(d.connections_refused, 0, "{d:?}");
    assert!(d.served_connections_peak <= 4, "{d:?}");
    assert_eq!(d.served_connections, 0, "{d:?}");
}

#[test]
fn a_large_request_body_is_refused_at_once() {
    use std::io::{Read, Write};
    let mut c = RuntimeConfig::new("spawn-test", "bodies");
    c.group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 3), 47_304);
    let h = spawn(c).expect("spawn");
    let mut s = std::net::TcpStream::connect(h.http_addr()).expect("connect");
    s.write_all(b"POST /hybridcast/v1/probe HTTP/1.1\r\ncontent-length: 1000000\r\n\r\n")
        .expect("send");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("answer, then close");
    let head = String::from_utf8_lossy(&buf);
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
}
