//! Several drivers in one process, one mio loop, real sockets on loopback multicast (each
//! test on its own group port).

use hybridcast_mio::core::{Config, Event};
use hybridcast_mio::{Driver, RuntimeConfig};
use mio::{Events, Poll, Token};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

struct Loop {
    poll: Poll,
    drivers: Vec<Option<Driver>>,
    bases: Vec<usize>,
    events: Vec<Vec<Event>>,
    group: SocketAddrV4,
}

fn config(group: SocketAddrV4, name: &str) -> RuntimeConfig {
    let mut c = RuntimeConfig::new("loopback-test", name);
    c.group = group;
    c.core = Config {
        heartbeat_interval: Duration::from_millis(100),
        request_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    c
}

impl Loop {
    fn new(port: u16) -> Loop {
        Loop {
            poll: Poll::new().expect("poll"),
            drivers: Vec::new(),
            bases: Vec::new(),
            events: Vec::new(),
            group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 2), port),
        }
    }

    fn add_with(&mut self, cfg: RuntimeConfig) -> usize {
        let mut d = Driver::new(cfg).expect("driver");
        let base = self.bases.last().map_or(0, |b| b + 1000);
        d.register(self.poll.registry(), Token(base))
            .expect("register");
        self.drivers.push(Some(d));
        self.bases.push(base);
        self.events.push(Vec::new());
        self.drivers.len() - 1
    }

    fn add(&mut self, name: &str) -> usize {
        let cfg = config(self.group, name);
        self.add_with(cfg)
    }

    fn d(&mut self, i: usize) -> &mut Driver {
        self.drivers[i].as_mut().expect("running")
    }

    /// Runs the loop until `done` holds or `limit` passes; returns whether it held.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Loop) -> bool) -> bool {
        let end = Instant::now() + limit;
        let mut events = Events::with_capacity(1024);
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            let next = self
                .drivers
                .iter()
                .flatten()
                .filter_map(Driver::poll_timeout)
                .min()
                .unwrap_or(end)
                .min(end);
            let wait = next
                .saturating_duration_since(now)
                .min(Duration::from_millis(50));
            self.poll.poll(&mut events, Some(wait)).expect("poll");
            let now = Instant::now();
            for e in events.iter() {
                for d in self.drivers.iter_mut().flatten() {
                    if d.owns(e.token()) {
                        d.handle_event(e, now);
                    }
                }
            }
            for (i, d) in self.drivers.iter_mut().enumerate() {
                if let Some(d) = d {
                    if d.poll_timeout().is_some_and(|t| t <= now) {
                        d.handle_timeout(now);
                    }
                    while let Some(e) = d.poll_event() {
                        self.events[i].push(e);
                    }
                }
            }
        }
    }

    fn views_agree(&self) -> bool {
        let live: Vec<&Driver> = self.drivers.iter().flatten().collect();
        let mut want = std::collections::BTreeMap::new();
        for d in &live {
            let n = d.node();
            for (name, value) in n.registry().offers_of(n.key()).into_iter().flatten() {
                want.entry(name.clone())
                    .or_insert_with(std::collections::BTreeMap::new)
                    .insert(n.key(), value.clone());
            }
        }
        live.iter().all(|d| {
            d.node().is_joined()
                && d.node().registry().view() == &want
                && d.node().members().filter(|m| m.state.is_live()).count() == live.len() - 1
        })
    }
}

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn bindings_propagate_and_unbinds_withdraw_them() {
    let mut l = Loop::new(47_201);
    for i in 0..3 {
        let n = l.add(&format!("m{i}"));
        l.d(n).bind(&format!("svc-{i}"), "v1").expect("bind");
        l.d(n).bind("shared", &format!("m{i}")).expect("bind");
    }
    assert!(
        l.run_until(LIMIT, |l| l.views_agree()),
        "views never agreed"
    );
    assert_eq!(l.d(0).node().registry().view()["shared"].len(), 3);
    l.d(1).unbind("shared").expect("unbind");
    assert!(l.run_until(LIMIT, |l| l.views_agree()
        && l.d(0).node().registry().view()["shared"].len() == 2));
}

#[test]
fn loss_is_repaired_point_to_point() {
    let mut l = Loop::new(47_202);
    l.add("a");
    let mut lossy = config(l.group, "b");
    lossy.receive_drop_rate = 0.3;
    let b = l.add_with(lossy);
    assert!(l.run_until(LIMIT, |l| l.views_agree()));
    for k in 0..200 {
        l.d(0).bind(&format!("k{k}"), "v").expect("bind");
        l.d(0).publish("t", format!("m{k}")).expect("publish");
        l.run_until(Duration::from_millis(5), |_| false);
    }
    assert!(l.run_until(LIMIT, |l| {
        l.views_agree()
            && l.events[1]
                .iter()
                .filter(|e| matches!(e, Event::Message { .. }))
                .count()
                == 200
    }));
    assert!(l.d(b).driver_stats().injected_drops > 0);
    assert!(
        l.d(b).stats().recoveries_requested > 0,
        "loss must be repaired by requests"
    );
    let seqs: Vec<u64> = l.events[b]
        .iter()
        .filter_map(|e| match e {
            Event::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<_>>(),
        "in order, exactly once"
    );
}
