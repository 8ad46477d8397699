//! Hub mode with both runtimes in one cluster, on real loopback sockets: a hub from
//! [`spawn_hub`], two smol members and two mio members whose group traffic goes only through
//! it. Offers and messages reach everyone; the hub crashes, the members change things during
//! the outage, a new hub comes up on the same address, and the members reconnect to it on
//! their own and converge again. A multicast member of the same cluster, on the group the hub
//! members are configured with, checks that none of them multicasts anything.

use hybridcast_mio::core::hub::{CloseReason, LinkConfig};
use hybridcast_mio::core::{Config, Event};
use hybridcast_mio::endpoints::ClusterView;
use hybridcast_mio::{
    HubHandle, HubServerConfig, NodeHandle, RuntimeConfig, Transport, spawn, spawn_hub,
};
use hybridcast_smol::Node;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

const CLUSTER: &str = "hub-smol-test";
/// The multicast group the hub members are configured with (and never use) and the spy
/// listens on.
const GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 12), 47_901);

fn base_config(name: &str) -> RuntimeConfig {
    let mut c = RuntimeConfig::new(CLUSTER, name);
    c.group = GROUP;
    c.core = Config {
        heartbeat_interval: Duration::from_millis(100),
        // Generous for a loaded machine: a retried join would make two dump requests.
        request_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    c
}

fn hub_config(hub: SocketAddr, name: &str) -> RuntimeConfig {
    let mut c = base_config(name);
    c.transport = Transport::Hub(LinkConfig::new(hub));
    c
}

fn hub_at(listen: SocketAddr) -> Result<HubHandle, hybridcast_mio::Error> {
    let mut c = HubServerConfig::new(CLUSTER);
    c.listen = listen;
    spawn_hub(c)
}

/// A hub on `addr`, the address a crashed hub listened on: binding is retried for a while
/// (the listener reuses the address, but the old one's sockets may take a moment to go).
fn hub_again(addr: SocketAddr) -> HubHandle {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match hub_at(addr) {
            Ok(h) => return h,
            Err(e) if Instant::now() < end => {
                eprintln!("binding the new hub on {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("no new hub on {addr}: {e}"),
        }
    }
}

/// Polls `f` until it holds or 30 s pass (a bound on waiting, not a timing assertion).
async fn eventually<F: Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if f().await {
            return true;
        }
        async_io::Timer::after(Duration::from_millis(50)).await;
    }
    false
}

/// The four hub members, and the messages each has received so far (payloads, by the name
/// of the member that received them).
struct Cluster {
    mio: Vec<(String, NodeHandle)>,
    smol: Vec<(String, Node)>,
    received: RefCell<BTreeMap<String, BTreeSet<String>>>,
}

impl Cluster {
    async fn views(&self) -> Vec<ClusterView> {
        let mut v: Vec<ClusterView> = self
            .mio
            .iter()
            .map(|(_, h)| h.view().expect("mio member running"))
            .collect();
        for (_, n) in &self.smol {
            v.push(n.view().await.expect("smol member running"));
        }
        v
    }

    /// Every member joined, sees all the others live, and every view's offers are
    /// `offers`: name → member name → value.
    async fn converged(&self, offers: &BTreeMap<String, BTreeMap<String, String>>) -> bool {
        let views = self.views().await;
        let peers = views.len() - 1;
        views.iter().all(|v| {
            let live = v
                .members
                .iter()
                .filter(|m| m.state == "alive" || m.state == "suspect")
                .count();
            v.joined && live == peers && &v.offers == offers
        })
    }

    /// Takes the events waiting and records the messages among them.
    fn collect(&self) {
        let mut received = self.received.borrow_mut();
        for (name, h) in &self.mio {
            while let Ok(e) = h.events().try_recv() {
                record(&mut received, name, e);
            }
        }
        for (name, n) in &self.smol {
            let events = n.events();
            while let Some(e) = events.try_recv() {
                record(&mut received, name, e);
            }
        }
    }

    /// Every member has received `payload`, except `from`, which sent it.
    fn all_received(&self, from: &str, payload: &str) -> bool {
        self.collect();
        let received = self.received.borrow();
        self.names()
            .iter()
            .filter(|n| n.as_str() != from)
            .all(|n| received.get(n).is_some_and(|got| got.contains(payload)))
    }

    fn names(&self) -> Vec<String> {
        let mio = self.mio.iter().map(|(n, _)| n.clone());
        mio.chain(self.smol.iter().map(|(n, _)| n.clone()))
            .collect()
    }

    /// Whether every smol member's link is registered (`true`) or not (`false`).
    async fn smol_registered(&self, registered: bool) -> bool {
        for (_, n) in &self.smol {
            if n.hub_registered().await.expect("smol member running") != registered {
                return false;
            }
        }
        true
    }
}

fn record(received: &mut BTreeMap<String, BTreeSet<String>>, at: &str, e: Event) {
    if let Event::Message { topic, payload, .. } = e {
        if topic == "news" {
            let text = String::from_utf8_lossy(&payload).into_owned();
            received.entry(at.to_owned()).or_default().insert(text);
        }
    }
}

/// The registered members the hub counts now.
fn hub_registered(hub: &HubHandle) -> usize {
    hub.stats().expect("hub running").0.registered
}

#[test]
fn hub_mode_across_runtimes_survives_a_hub_crash() {
    smol::block_on(async {
        // The spy: a multicast member of the same cluster on the hub members' group.
        let spy = Node::start(base_config("spy"))
            .await
            .expect("start the spy");

        let hub = hub_at(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("start a hub");
        let addr = hub.addr();
        let mut cluster = Cluster {
            mio: Vec::new(),
            smol: Vec::new(),
            received: RefCell::new(BTreeMap::new()),
        };
        for name in ["mio-a", "mio-b"] {
            let h = spawn(hub_config(addr, name)).expect("spawn a mio member");
            cluster.mio.push((name.to_owned(), h));
        }
        for name in ["smol-c", "smol-d"] {
            let n = Node::start(hub_config(addr, name))
                .await
                .expect("start a smol member");
            cluster.smol.push((name.to_owned(), n));
        }

        // Each offers a service of its own and a provider of a shared one.
        let mut offers: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut offer = |service: &str, member: &str| {
            offers
                .entry(service.to_owned())
                .or_default()
                .insert(member.to_owned(), format!("{member}:{service}"));
        };
        for (name, h) in &cluster.mio {
            for service in [format!("svc-{name}"), "shared".to_owned()] {
                h.bind(&service, &format!("{name}:{service}"))
                    .expect("running")
                    .expect("bind");
                offer(&service, name);
            }
        }
        for (name, n) in &cluster.smol {
            for service in [format!("svc-{name}"), "shared".to_owned()] {
                n.bind(&service, &format!("{name}:{service}"))
                    .await
                    .expect("running")
                    .expect("bind");
                offer(&service, name);
            }
        }
        assert!(
            eventually(|| cluster.converged(&offers)).await,
            "the hub members never converged: {:#?}",
            cluster.views().await
        );
        assert_eq!(
            hub_registered(&hub),
            4,
            "every member registered at the hub"
        );
        assert!(cluster.smol_registered(true).await);

        // A message from each reaches all the others.
        for (name, h) in &cluster.mio {
            h.publish("news", format!("hello from {name}"))
                .expect("running")
                .expect("publish");
        }
        for (name, n) in &cluster.smol {
            n.publish("news", format!("hello from {name}"))
                .await
                .expect("running")
                .expect("publish");
        }
        for from in cluster.names() {
            let payload = format!("hello from {from}");
            assert!(
                eventually(|| async { cluster.all_received(&from, &payload) }).await,
                "{payload:?} did not reach everyone: {:?}",
                cluster.received
            );
        }
        let (before, _) = hub.stats().expect("hub running");
        assert!(
            before.group_frames > 0 && before.copies_out > 0,
            "{before:?}"
        );

        // The hub crashes: every link notices and stops counting itself registered.
        hub.crash();
        assert!(
            eventually(|| cluster.smol_registered(false)).await,
            "a smol member still counts itself registered with a crashed hub"
        );
        // With no hub, nothing reaches a member: every datagram its node was ever handed
        // came through its link (there is no multicast socket).
        for (name, n) in &cluster.smol {
            let (core, runtime) = n.stats().await.expect("running");
            let link = n.hub_stats().await.expect("running").expect("hub mode");
            assert!(
                link.datagrams_in > 0 && link.datagrams_out > 0,
                "{name}: {link:?}"
            );
            // What `/metrics` shows: the runtime's copy of the link's counters.
            let shown = runtime.hub.expect("smol reports the link in its stats");
            assert!(
                shown.datagrams_in > 0 && !runtime.hub_registered,
                "{name}: {shown:?}"
            );
            assert_eq!(
                core.datagrams_in, link.datagrams_in,
                "{name}: datagrams from elsewhere than the hub"
            );
            assert!(link.losses >= 1, "{name}: {link:?}");
        }

        // Changes during the outage: a mio member withdraws its shared offer, a smol member
        // offers something new, and one of each publishes.
        let (a_name, a) = &cluster.mio[0];
        assert!(a.unbind("shared").expect("running").expect("unbind"));
        offers
            .get_mut("shared")
            .expect("shared offered")
            .remove(a_name);
        let (c_name, c) = &cluster.smol[0];
        c.bind("during-outage", "c:late")
            .await
            .expect("running")
            .expect("bind");
        offers
            .entry("during-outage".to_owned())
            .or_default()
            .insert(c_name.clone(), "c:late".to_owned());
        let (b_name, b) = &cluster.mio[1];
        b.publish("news", "mio published during the outage")
            .expect("running")
            .expect("publish");
        let (d_name, d) = &cluster.smol[1];
        d.publish("news", "smol published during the outage")
            .await
            .expect("running")
            .expect("publish");
        let (b_name, d_name) = (b_name.clone(), d_name.clone());

        // A new hub on the same address: the members find it by themselves.
        let hub = hub_again(addr);
        assert!(
            eventually(|| async { hub_registered(&hub) == 4 }).await,
            "not every member registered at the new hub: {:?}",
            hub.stats()
        );
        assert!(
            eventually(|| cluster.converged(&offers)).await,
            "the members never converged after the hub came back: {:#?}",
            cluster.views().await
        );
        for (from, payload) in [
            (&b_name, "mio published during the outage"),
            (&d_name, "smol published during the outage"),
        ] {
            assert!(
                eventually(|| async { cluster.all_received(from, payload) }).await,
                "{payload:?} did not reach everyone: {:?}",
                cluster.received
            );
        }
        for (name, n) in &cluster.smol {
            let link = n.hub_stats().await.expect("running").expect("hub mode");
            assert!(link.registrations >= 2, "{name}: {link:?}");
        }

        // A smol member leaves gracefully: its Leave datagram reaches the others through the
        // hub (a departure notice alone would make them probe it and find it failed), and it
        // says goodbye to the hub.
        let (leaver, d) = cluster.smol.pop().expect("two smol members");
        d.leave().await;
        assert!(
            eventually(|| async {
                cluster.views().await.iter().all(|v| {
                    v.members
                        .iter()
                        .any(|m| m.name == leaver && m.state == "left")
                })
            })
            .await,
            "{leaver} was not seen leaving: {:#?}",
            cluster.views().await
        );
        assert!(
            eventually(|| async { hub_registered(&hub) == 3 }).await,
            "{:?}",
            hub.stats()
        );
        let (after, _) = hub.stats().expect("hub running");
        assert!(after.closed_for(CloseReason::Closed) >= 1, "{after:?}");

        // No hub member ever multicast: the spy saw nobody.
        let seen = spy.view().await.expect("spy running");
        assert_eq!(
            seen.members.len(),
            1,
            "the spy saw multicast from hub members: {seen:#?}"
        );

        for (_, n) in cluster.smol.drain(..) {
            n.leave().await;
        }
        for (_, h) in cluster.mio.drain(..) {
            h.shutdown();
        }
        spy.leave().await;
        hub.shutdown();
    });
}
