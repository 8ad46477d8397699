//! mio and smol members in one cluster on real loopback sockets: the wire protocol, not the
//! runtime, defines the cluster. Each test has its own group port.

use hybridcast_mio::NodeHandle;
use hybridcast_mio::core::{Config, Event, MemberKey};
use hybridcast_mio::endpoints::ClusterView;
use hybridcast_mio::{RuntimeConfig, spawn};
use hybridcast_smol::Node;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

fn config(port: u16, name: &str, drop_rate: f64) -> RuntimeConfig {
    let mut c = RuntimeConfig::new("interop-test", name);
    c.group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 79, 1), port);
    c.core = Config {
        heartbeat_interval: Duration::from_millis(100),
        // Generous for a loaded machine: a retried join would make two dump requests.
        request_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    c.receive_drop_rate = drop_rate;
    c
}

fn mio(port: u16, name: &str, drop_rate: f64) -> NodeHandle {
    spawn(config(port, name, drop_rate)).expect("spawn a mio member")
}

async fn smol(port: u16, name: &str, drop_rate: f64) -> Node {
    Node::start(config(port, name, drop_rate))
        .await
        .expect("start a smol member")
}

/// A cluster of both kinds, for looking at every member's view at once.
#[derive(Default)]
struct Mixed<'a> {
    mio: Vec<&'a NodeHandle>,
    smol: Vec<&'a Node>,
}

impl Mixed<'_> {
    async fn views(&self) -> Vec<ClusterView> {
        let mut v: Vec<ClusterView> = self
            .mio
            .iter()
            .map(|h| h.view().expect("mio member running"))
            .collect();
        for n in &self.smol {
            v.push(n.view().await.expect("smol member running"));
        }
        v
    }

    /// Every member joined, sees all the others live, and holds the same offers, `offers`
    /// names in all.
    async fn converged(&self, offers: usize) -> bool {
        let views = self.views().await;
        let peers = views.len() - 1;
        views.iter().all(|v| {
            let live = v
                .members
                .iter()
                .filter(|m| m.state == "alive" || m.state == "suspect")
                .count();
            v.joined && live == peers && v.offers.len() == offers && v.offers == views[0].offers
        })
    }
}

/// Polls `f` until it holds or 30 s pass (a bound on waiting, not a timing assertion).
async fn eventually<F: Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if f().await {
            return true;
        }
        async_io::Timer::after(Duration::from_millis(20)).await;
    }
    false
}

/// The sequence numbers of `from`'s messages among `events`, and whether any gap was
/// reported for it.
fn messages_from(events: &[Event], from: MemberKey) -> (Vec<u64>, bool) {
    let mut seqs = Vec::new();
    let mut gap = false;
    for e in events {
        match e {
            Event::Message { member, seq, .. } if *member == from => seqs.push(*seq),
            Event::Gap { member, .. } if *member == from => gap = true,
            _ => {}
        }
    }
    (seqs, gap)
}

#[test]
fn naming_converges_and_loss_is_repaired_across_runtimes() {
    smol::block_on(async {
        let port = 47_501;
        let a = mio(port, "mio-a", 0.0);
        let b = mio(port, "mio-lossy", 0.3);
        let c = smol(port, "smol-c", 0.0).await;
        let d = smol(port, "smol-lossy", 0.3).await;
        for (h, name) in [(&a, "mio-a"), (&b, "mio-lossy")] {
            h.bind(&format!("svc-{name}"), name)
                .expect("running")
                .expect("bind");
            h.bind("shared", name).expect("running").expect("bind");
        }
        for (n, name) in [(&c, "smol-c"), (&d, "smol-lossy")] {
            n.bind(&format!("svc-{name}"), name)
                .await
                .expect("running")
                .expect("bind");
            n.bind("shared", name)
                .await
                .expect("running")
                .expect("bind");
        }
        let cluster = Mixed {
            mio: vec![&a, &b],
            smol: vec![&c, &d],
        };
        assert!(
            eventually(|| cluster.converged(5)).await,
            "naming never converged"
        );
        let views = cluster.views().await;
        assert!(
            views.iter().all(|v| v.offers["shared"].len() == 4),
            "{views:#?}"
        );

        // The mio member publishes to the lossy smol member, the smol member to the lossy
        // mio member. A lost message is asked of its sender only, so each one the lossy
        // receivers miss is recovered from a member of the other runtime.
        let d_events = d.events();
        for k in 0..100 {
            a.publish("t", format!("from mio {k}"))
                .expect("running")
                .expect("publish");
            c.publish("t", format!("from smol {k}"))
                .await
                .expect("running")
                .expect("publish");
            async_io::Timer::after(Duration::from_millis(3)).await;
        }
        let (a_key, c_key) = (MemberKey::of("mio-a"), MemberKey::of("smol-c"));
        let mut at_d = Vec::new();
        let mut at_b = Vec::new();
        let got_all = eventually(|| {
            while let Some(e) = d_events.try_recv() {
                at_d.push(e);
            }
            at_b.extend(b.events().try_iter());
            let done = messages_from(&at_d, a_key).0.len() >= 100
                && messages_from(&at_b, c_key).0.len() >= 100;
            async move { done }
        })
        .await;
        assert!(got_all, "not every message arrived");
        let all: Vec<u64> = (1..=100).collect();
        assert_eq!(
            messages_from(&at_d, a_key),
            (all.clone(), false),
            "smol from mio"
        );
        assert_eq!(messages_from(&at_b, c_key), (all, false), "mio from smol");

        let (b_core, b_runtime) = b.stats().expect("running");
        let (d_core, d_runtime) = d.stats().await.expect("running");
        assert!(b_runtime.injected_drops > 0 && d_runtime.injected_drops > 0);
        assert!(
            b_core.recoveries_requested > 0,
            "the mio member recovered nothing"
        );
        assert!(
            d_core.recoveries_requested > 0,
            "the smol member recovered nothing"
        );
        let (a_core, _) = a.stats().expect("running");
        let (c_core, _) = c.stats().await.expect("running");
        assert!(a_core.recoveries_served > 0 && c_core.recoveries_served > 0);
        c.leave().await;
        d.leave().await;
    });
}

#[test]
fn joins_by_one_state_dump_across_runtimes() {
    smol::block_on(async {
        // A smol member joins a mio cluster.
        let port = 47_502;
        let a = mio(port, "mio-a", 0.0);
        let b = mio(port, "mio-b", 0.0);
        for (h, n) in [(&a, "a"), (&b, "b")] {
            for k in 0..50 {
                h.bind(&format!("svc-{n}-{k}"), "v")
                    .expect("running")
                    .expect("bind");
            }
        }
        let old = Mixed {
            mio: vec![&a, &b],
            ..Mixed::default()
        };
        assert!(eventually(|| old.converged(100)).await);
        let newcomer = smol(port, "smol-new", 0.0).await;
        let events = newcomer.events();
        let all = Mixed {
            mio: vec![&a, &b],
            smol: vec![&newcomer],
        };
        assert!(eventually(|| all.converged(100)).await);
        let (stats, _) = newcomer.stats().await.expect("running");
        assert_eq!(stats.dump_requests, 1, "one state dump");
        let mut via = None;
        while let Some(e) = events.try_recv() {
            if let Event::Joined { via: Some(p), .. } = e {
                via = Some(p.name);
            }
        }
        assert!(
            via.as_deref().is_some_and(|v| v.starts_with("mio-")),
            "{via:?}"
        );
        newcomer.leave().await;

        // A mio member joins a smol cluster.
        let port = 47_503;
        let c = smol(port, "smol-c", 0.0).await;
        let d = smol(port, "smol-d", 0.0).await;
        for (n, name) in [(&c, "c"), (&d, "d")] {
            for k in 0..50 {
                n.bind(&format!("svc-{name}-{k}"), "v")
                    .await
                    .expect("running")
                    .expect("bind");
            }
        }
        let old = Mixed {
            smol: vec![&c, &d],
            ..Mixed::default()
        };
        assert!(eventually(|| old.converged(100)).await);
        let newcomer = mio(port, "mio-new", 0.0);
        let all = Mixed {
            mio: vec![&newcomer],
            smol: vec![&c, &d],
        };
        assert!(eventually(|| all.converged(100)).await);
        let (stats, _) = newcomer.stats().expect("running");
        assert_eq!(stats.dump_requests, 1, "one state dump");
        let via = newcomer.events().try_iter().find_map(|e| match e {
            Event::Joined { via: Some(p), .. } => Some(p.name),
            _ => None,
        });
        assert!(
            via.as_deref().is_some_and(|v| v.starts_with("smol-")),
            "{via:?}"
        );
        c.leave().await;
        d.leave().await;
    });
}

async fn sees(view: ClusterView, name: &str, state: &str) -> bool {
    view.members
        .iter()
        .any(|m| m.name == name && m.state == state)
}

#[test]
fn failures_and_leaves_are_seen_across_runtimes() {
    smol::block_on(async {
        let port = 47_504;
        let a = mio(port, "mio-a", 0.0);
        let b = mio(port, "mio-b", 0.0);
        let c = smol(port, "smol-c", 0.0).await;
        let d = smol(port, "smol-d", 0.0).await;
        let cluster = Mixed {
            mio: vec![&a, &b],
            smol: vec![&c, &d],
        };
        assert!(eventually(|| cluster.converged(0)).await);
        drop(cluster);

        // A smol member crashes: the mio members find it failed.
        c.crash().await;
        assert!(
            eventually(|| async {
                sees(a.view().expect("running"), "smol-c", "failed").await
                    && sees(b.view().expect("running"), "smol-c", "failed").await
            })
            .await
        );
        // A mio member crashes: the smol member finds it failed.
        b.crash();
        assert!(
            eventually(|| async {
                sees(d.view().await.expect("running"), "mio-b", "failed").await
            })
            .await
        );
        // Graceful leaves are seen both ways.
        d.leave().await;
        assert!(
            eventually(|| async { sees(a.view().expect("running"), "smol-d", "left").await }).await
        );
        let e = smol(port, "smol-e", 0.0).await;
        assert!(
            eventually(|| async { sees(e.view().await.expect("running"), "mio-a", "alive").await })
                .await
        );
        a.shutdown();
        assert!(
            eventually(|| async { sees(e.view().await.expect("running"), "mio-a", "left").await })
                .await
        );
        e.leave().await;
    });
}
