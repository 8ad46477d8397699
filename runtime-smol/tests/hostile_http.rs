//! A smol member under hostile HTTP peers, on real loopback sockets (each test on its own
//! group port), the same checks as the mio runtime's: a flood of idle connections, a client
//! dripping a request one byte at a time, a megabyte of request headers and a 1 GiB
//! `content-length`. The member stays up within its connection limits, closes what it
//! must, and its cluster keeps converging. Nothing here asserts a duration: conditions are
//! awaited within a generous bound.

#[path = "../../runtime-mio/tests/hostile/attacks.rs"]
mod attacks;

use attacks::{Flood, KeepAlive, PATIENCE};
use hybridcast_runtime::serve;
use hybridcast_smol::core::{Config, Event};
use hybridcast_smol::{Events, Node, RuntimeConfig};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The attack helpers name core through this.
use hybridcast_smol::core as hc;

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 78, 6);

fn config(port: u16, name: &str) -> RuntimeConfig {
    let mut c = RuntimeConfig::new("hostile-smol-test", name);
    c.group = SocketAddrV4::new(GROUP, port);
    c.core = Config {
        heartbeat_interval: Duration::from_millis(100),
        request_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    c
}

/// The attacked member's limits: small, so that a flood fills them many times over.
fn victim_config(port: u16) -> RuntimeConfig {
    let mut c = config(port, "victim");
    c.max_served_connections = 32;
    c.max_outgoing_connections = 8;
    c.idle_timeout = Duration::from_secs(5);
    c.request_read_timeout = Duration::from_secs(1);
    // Its own requests are needed all along: it recovers this loss point to point.
    c.receive_drop_rate = 0.2;
    c
}

/// Polls `f` until it holds or [`PATIENCE`] passes (a bound on waiting, not a timing
/// assertion).
async fn eventually<F: Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        async_io::Timer::after(Duration::from_millis(20)).await;
    }
    false
}

/// Every node's view is joined, holds exactly `offers` names and `peers` live members.
async fn agree(nodes: &[&Node], offers: usize, peers: usize) -> bool {
    for n in nodes {
        let v = n.view().await.expect("running");
        let live = v
            .members
            .iter()
            .filter(|m| m.state == "alive" || m.state == "suspect")
            .count();
        if !v.joined || v.offers.len() != offers || live != peers {
            return false;
        }
    }
    true
}

/// Counts the messages among the events waiting in `events`, into `count`; notes a join
/// by a state dump in `dumped`.
fn tally(events: &Events, count: &Cell<usize>, dumped: &Cell<bool>) {
    while let Some(e) = events.try_recv() {
        match e {
            Event::Message { .. } => count.set(count.get() + 1),
            Event::Joined { via: Some(_), .. } => dumped.set(true),
            _ => {}
        }
    }
}

/// Waits (off the executor's thread) for a client thread to end; its result.
async fn join<T: Send + 'static>(t: JoinHandle<T>) -> T {
    smol::unblock(move || t.join().expect("the client thread panicked")).await
}

#[test]
fn a_member_under_hostile_clients_stays_up_within_its_limits_and_its_cluster_converges() {
    smol::block_on(async {
        let port = 47_431;
        let a = Node::start(config(port, "a")).await.expect("start");
        let b = Node::start(config(port, "b")).await.expect("start");
        let victim_cfg = victim_config(port);
        let (max_served, max_outgoing) = (
            victim_cfg.max_served_connections as u64,
            victim_cfg.max_outgoing_connections as u64,
        );
        let served_limits =
            serve::serve_limits(&victim_cfg.core.http, victim_cfg.core.max_request_body());
        let v = Node::start(victim_cfg).await.expect("start");
        let (v_events, b_events) = (v.events(), b.events());
        for (n, name) in [(&a, "a"), (&b, "b"), (&v, "victim")] {
            n.bind(&format!("svc-{name}"), "1")
                .await
                .expect("running")
                .expect("bind");
        }
        let three = [&a, &b, &v];
        assert!(
            eventually(|| agree(&three, 3, 2)).await,
            "never converged before the attack"
        );
        let addr = v.http_addr();

        // The attack: a flood of idle connections, all taken in by the victim (evicting one
        // another), then, while the last of them are still held, the other hostile clients.
        // (Started together, a client could be evicted by the flood before its first byte
        // arrives, being idle the longest: that is the rule, not what is tested here.)
        let n = attacks::flood_size();
        let flood = Flood::start(addr, n);
        assert!(
            eventually(|| async {
                let (_, rt) = v.stats().await.expect("running");
                flood.all_open(n)
                    && rt.connections_evicted + rt.connections_timed_out + rt.served_connections
                        >= n as u64
            })
            .await,
            "the flood never got its connections"
        );
        let drip = attacks::drip(addr, Duration::from_millis(100));
        let headers = attacks::huge_headers(addr, 1 << 20);
        let body = attacks::huge_body(addr, 1 << 30);
        let recoveries_before = v.stats().await.expect("running").0.recoveries_requested;

        // While it lasts: a binding and messages from a, which the victim (losing some of
        // them) must fetch with requests of its own, and a newcomer that joins by a dump.
        a.bind("during-attack", "1")
            .await
            .expect("running")
            .expect("bind");
        for k in 0..100 {
            a.publish("t", format!("m{k}"))
                .await
                .expect("running")
                .expect("publish");
            async_io::Timer::after(Duration::from_millis(5)).await;
        }
        let d = Node::start(config(port, "d")).await.expect("start");
        let d_events = d.events();
        let (v_msgs, b_msgs, d_dumped, ignored) = (
            Cell::new(0),
            Cell::new(0),
            Cell::new(false),
            Cell::new(false),
        );
        let four = [&a, &b, &v, &d];
        assert!(
            eventually(|| async {
                tally(&v_events, &v_msgs, &ignored);
                tally(&b_events, &b_msgs, &ignored);
                tally(&d_events, &Cell::new(0), &d_dumped);
                v_msgs.get() >= 100 && b_msgs.get() >= 100 && agree(&four, 4, 3).await
            })
            .await,
            "the cluster did not converge during the attack"
        );

        // Each hostile client got what it deserved.
        let drip = join(drip).await;
        assert!(drip.closed && !drip.answered, "{drip:?}");
        assert!(drip.sent < drip.request_len, "{drip:?}");
        let headers = join(headers).await;
        let status = headers.response.as_ref().map(|r| r.status);
        assert_eq!(status, Some(431), "{headers:?}");
        assert!(headers.closed, "{headers:?}");
        let body = join(body).await;
        let status = body.response.as_ref().map(|r| r.status);
        assert_eq!(status, Some(413), "{body:?}");
        assert!(body.closed, "{body:?}");
        let flood = smol::unblock(move || flood.join()).await;
        assert_eq!(
            (flood.opened, flood.closed),
            (n, n),
            "every idle connection is closed"
        );

        // The victim kept within its limits, said why it closed what it closed, and its own
        // requests kept working.
        let (core, rt) = v.stats().await.expect("running");
        assert!(rt.served_connections_peak <= max_served, "{rt:?}");
        assert!(rt.outgoing_connections_peak <= max_outgoing, "{rt:?}");
        assert!(rt.slow_requests >= 1, "the drip was not counted: {rt:?}");
        assert!(rt.connections_evicted > 0, "{rt:?}");
        assert!(
            rt.connections_evicted + rt.connections_timed_out >= n as u64,
            "every flood connection is evicted or closed idle: {rt:?}"
        );
        let buffer_limit = serve::buffer_limit(&served_limits) as u64;
        assert!(
            rt.served_buffer_peak <= buffer_limit,
            "{rt:?} vs {buffer_limit}"
        );
        assert!(rt.injected_drops > 0, "{rt:?}");
        assert!(
            core.recoveries_requested > recoveries_before,
            "the victim recovered nothing during the attack"
        );
        assert!(d_dumped.get(), "the newcomer did not join by a state dump");

        // And it still answers, and says all this on /metrics.
        let (who, metrics) = smol::unblock(move || {
            let get = |path| {
                hybridcast_smol::endpoints::get(&addr.to_string(), path, PATIENCE)
                    .expect("an answer")
            };
            (get("/hybridcast/v1/whoami"), get("/metrics"))
        })
        .await;
        assert_eq!(who.status, 200);
        let body = String::from_utf8_lossy(&metrics.body).into_owned();
        let peak = attacks::metric(&body, "hybridcast_connections_open_peak{role=\"served\"}");
        assert!(peak.is_some_and(|p| p <= max_served), "{body}");
        let slow = attacks::metric(&body, "hybridcast_slow_requests_total");
        assert!(slow.is_some_and(|s| s >= 1), "{body}");
        let evicted = attacks::metric(&body, "hybridcast_connections_evicted_total");
        assert!(evicted.is_some_and(|e| e > 0), "{body}");
        for n in [a, b, v, d] {
            n.leave().await;
        }
    });
}

#[test]
fn a_partly_read_request_is_bounded_by_the_read_timeout_and_an_idle_keep_alive_is_not() {
    smol::block_on(async {
        let mut c = config(47_432, "timeouts");
        c.idle_timeout = Duration::from_secs(120);
        c.request_read_timeout = Duration::from_millis(300);
        let n = Node::start(c).await.expect("start");
        let addr = n.http_addr();
        let _keep = smol::unblock(move || {
            let mut keep = KeepAlive::connect(addr).expect("connect");
            assert_eq!(
                keep.get("/hybridcast/v1/whoami").expect("answer").status,
                200
            );
            // Another connection starts a request and stops: it is closed at the read
            // timeout...
            assert!(attacks::half_request(addr).expect("connect"));
            // ...which has passed since `keep` went idle, and `keep` still carries requests.
            assert_eq!(
                keep.get("/hybridcast/v1/whoami").expect("answer").status,
                200
            );
            // (`keep` stays open until the checks below are done.)
            keep
        })
        .await;
        let (_, rt) = n.stats().await.expect("running");
        assert_eq!(rt.slow_requests, 1, "{rt:?}");
        assert_eq!(rt.connections_timed_out, 0, "{rt:?}");
        assert!(
            eventually(|| async { n.stats().await.expect("running").1.served_connections == 1 })
                .await
        );
        n.leave().await;
    });
}
