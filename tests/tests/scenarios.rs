//! Scenario tests on the deterministic simulator: scale under loss, a join into a large
//! cluster, partitions, crashes and restarts, a quickly restarting sender, slow members.
//!
//! Every run goes through the simulator's invariant checker; `settle` ends each with the
//! quiescence checks (views equal the live members' offers, every message delivered once and in
//! order or reported missing, bounds held).

use hybridcast_core::{Event, MemberState};
use hybridcast_tests::sim::{Exchange, LinkParams, Op, Scenario, Sim, SimConfig, sim_node_config};
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

fn assert_report(r: &hybridcast_tests::sim::Report) {
    assert!(r.converged(), "{}", r.render());
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
}

#[test]
fn sixteen_members_with_200_offers_converge_under_20_percent_loss_during_churn() {
    let r = Scenario {
        nodes: 16,
        offers: 200,
        link: LinkParams::lossy(0.2),
        seed: 16,
        churn: 80,
        ..Scenario::default()
    }
    .run();
    assert_report(&r);
    // Loss happened and was repaired point to point only.
    assert!(r.traffic.lost > 500, "{}", r.render());
    assert!(r.traffic.recovery().requests > 0);
    assert!(r.nak.multicast_datagrams() > 0);
    // The churn published messages; all were delivered (none reported missing).
    assert!(r.messages.0 > 0 && r.messages.1 == 0, "{:?}", r.messages);
}

#[test]
fn an_authenticated_cluster_converges_under_loss_duplication_and_churn() {
    let key = hybridcast_core::ClusterKey::new(vec![0x33; 32]).expect("key");
    let mut node = sim_node_config();
    node.auth = Some(hybridcast_core::AuthConfig::new(
        hybridcast_core::Keyring::single(key),
    ));
    let mut link = LinkParams::lossy(0.2);
    link.duplicate = 0.05;
    let r = Scenario {
        nodes: 12,
        offers: 100,
        link,
        seed: 61,
        churn: 60,
        node,
        ..Scenario::default()
    }
    .run();
    assert_report(&r);
    assert!(r.traffic.lost > 100, "{}", r.render());
    assert!(
        r.traffic.recovery().requests > 0,
        "recovery went through authenticated requests"
    );
}

#[test]
fn sixty_four_members_with_50_offers_converge_under_30_percent_burst_loss() {
    let r = Scenario {
        nodes: 64,
        offers: 50,
        link: LinkParams::bursty(0.3, 4.0),
        seed: 64,
        churn: 60,
        ..Scenario::default()
    }
    .run();
    assert_report(&r);
    let lost = r.traffic.lost as f64 / (r.traffic.lost + r.traffic.receptions) as f64;
    assert!((0.2..0.4).contains(&lost), "loss rate {lost}");
}

#[test]
fn a_newcomer_joins_32_members_with_1000_offers_by_one_state_dump() {
    let r = Scenario {
        nodes: 32,
        offers: 1000,
        link: LinkParams::lossy(0.05),
        seed: 32,
        churn: 0,
        faults: false,
        ..Scenario::default()
    }
    .run();
    assert_report(&r);
    let join = r.join_cost();
    assert_eq!(join.requests, 1, "{}", r.render());
    assert_eq!(join.failed, 0);
    let baseline = r.join_baseline.as_ref().expect("baseline measured");
    assert_eq!(baseline.requests, 32);
    assert_eq!(baseline.failed, 0);
    // The baseline fetched every member's 1000 offers; the dump carried them all too.
    assert_eq!(baseline.offers, 32 * 1000);
    assert!(join.response_bytes > 32 * 1000 * 8, "{join:?}");
    // The dump alone brought the newcomer up to date: it asked no member for anything else.
    assert_eq!(r.newcomer_recoveries, 0, "{}", r.render());
}

fn cluster(seed: u64, n: usize, link: LinkParams) -> Sim {
    let mut sim = Sim::new(SimConfig {
        seed,
        link,
        record_events: true,
        ..SimConfig::default()
    });
    for i in 0..n {
        let s = sim.add(&format!("n{i}"));
        sim.bind(s, &format!("svc-{i}"), "v1");
        sim.bind(s, "shared", &format!("from-{i}"));
    }
    let settled = sim.run_until_converged(30 * SECOND, Duration::from_millis(50));
    assert!(settled.is_some(), "{:?}", sim.divergence());
    sim
}

fn events_since(sim: &Sim, i: usize, since: Duration) -> Vec<Event> {
    sim.events(i)
        .iter()
        .filter(|(t, _)| *t >= since)
        .map(|(_, e)| e.clone())
        .collect()
}

#[test]
fn a_partition_is_detected_on_both_sides_and_heals_into_one_view() {
    let mut sim = cluster(3, 6, LinkParams::lossy(0.1));
    let cut = sim.elapsed();
    sim.net.split(&[0, 1], 0..6);
    // Both sides keep changing while cut off.
    sim.bind(0, "during", "left-side");
    sim.bind(4, "during", "right-side");
    sim.unbind(5, "shared");
    sim.run_for(5 * SECOND);
    let key = |i: usize| sim.node(i).key();
    for (a, b) in [(0, 3), (1, 5), (4, 0), (2, 1)] {
        let m = sim.node(a).member(key(b)).expect("still tracked");
        assert_eq!(
            m.state,
            MemberState::Failed,
            "{a} sees {b} as {:?}",
            m.state
        );
        let failed = events_since(&sim, a, cut)
            .iter()
            .any(|e| matches!(e, Event::MemberFailed { peer } if peer.key == key(b)));
        assert!(failed, "{a} never reported {b} failed");
    }
    // Each side's view holds only its own side's offers.
    let left = sim.node(0).registry().view();
    assert!(left["shared"].keys().all(|k| *k == key(0) || *k == key(1)));
    assert!(!left["during"].contains_key(&key(4)));

    let heal = sim.elapsed();
    sim.net.heal();
    let settled = sim.settle(30 * SECOND);
    assert!(settled.converged, "{:?}", settled.violations);
    assert!(settled.violations.is_empty(), "{:?}", settled.violations);
    let view = sim.node(2).registry().view();
    assert_eq!(view["during"].len(), 2);
    assert_eq!(view["shared"].len(), 5);
    // Readmission, not a restart: same incarnations.
    let rejoined = events_since(&sim, 0, heal)
        .iter()
        .filter(|e| matches!(e, Event::MemberJoined { .. }))
        .count();
    assert_eq!(rejoined, 4);
}

#[test]
fn a_crashed_member_is_detected_and_its_restart_replaces_its_offers() {
    let mut sim = cluster(5, 5, LinkParams::lossy(0.1));
    let old = sim.node(3).identity().incarnation;
    let key = sim.node(3).key();
    let crash = sim.elapsed();
    sim.crash(3);
    assert!(
        sim.run_until_converged(10 * SECOND, Duration::from_millis(20))
            .is_some()
    );
    let detected = sim.elapsed() - crash;
    for i in [0, 1, 2, 4] {
        let failed = events_since(&sim, i, crash)
            .iter()
            .any(|e| matches!(e, Event::MemberFailed { peer } if peer.key == key));
        assert!(failed, "node {i} did not report the crash");
        assert!(!sim.node(i).registry().view()["shared"].contains_key(&key));
    }
    // Detection is bounded by the suspicion timeout plus a probe timeout (simulated time).
    let c = &sim.config().node;
    let bound = c.heartbeat_interval * (c.suspect_after_intervals + 1) + c.request_timeout;
    assert!(
        detected <= bound,
        "detected after {detected:?}, bound {bound:?}"
    );

    sim.restart(3);
    sim.bind(3, "svc-new", "after-restart");
    let settled = sim.settle(30 * SECOND);
    assert!(
        settled.converged && settled.violations.is_empty(),
        "{settled:?}"
    );
    let new = sim.node(3).identity().incarnation;
    assert!(new > old);
    for i in [0, 1, 2, 4] {
        let m = sim.node(i).member(key).expect("tracked");
        assert_eq!((m.incarnation, m.state), (new, MemberState::Alive));
        let view = sim.node(i).registry().view();
        assert!(!view.contains_key("svc-3"), "old offers must be gone");
        assert_eq!(view["svc-new"][&key], "after-restart");
    }
}

#[test]
fn a_sender_restarting_quickly_is_not_blocked_by_its_old_sequence_numbers() {
    let mut sim = cluster(9, 4, LinkParams::lossy(0.1));
    for k in 0..30 {
        sim.publish(2, "t", format!("old-{k}").into());
        sim.bind(2, &format!("old-{k}"), "x");
    }
    sim.run_for(Duration::from_millis(300));
    // Restart within one heartbeat interval: nobody has suspected it.
    sim.restart(2);
    let key = sim.node(2).key();
    let new = sim.node(2).identity().incarnation;
    for k in 0..5 {
        sim.publish(2, "t", format!("new-{k}").into());
    }
    sim.bind(2, "fresh", "yes");
    let settled = sim.settle(30 * SECOND);
    assert!(
        settled.converged && settled.violations.is_empty(),
        "{settled:?}"
    );
    for i in [0, 1, 3] {
        let life = sim.slot(i).life;
        let d = sim.checker().delivery(i, life, key).expect("followed");
        assert_eq!(d.incarnation, new);
        assert_eq!(
            (d.first, d.next, d.messages),
            (Some(1), Some(6), 5),
            "node {i}"
        );
        let restarted = sim.events(i).iter().any(|(_, e)| {
            matches!(e, Event::MemberRestarted { peer, .. } if peer.key == key && peer.incarnation == new)
        });
        assert!(restarted, "node {i} did not see the restart");
        let view = sim.node(i).registry().view();
        assert!(view.keys().all(|n| !n.starts_with("old-")));
        assert_eq!(view["fresh"][&key], "yes");
    }
}

#[test]
fn a_slow_member_is_not_declared_dead_and_a_long_pause_loses_nothing() {
    let mut sim = cluster(11, 5, LinkParams::lossy(0.1));
    let key = sim.node(1).key();
    // Shorter than the suspicion timeout: nobody suspects anything.
    let t0 = sim.elapsed();
    sim.pause(1, Duration::from_millis(400));
    sim.publish(0, "t", "during-short-pause".into());
    sim.run_for(2 * SECOND);
    for i in [0, 2, 3, 4] {
        let failed = events_since(&sim, i, t0)
            .iter()
            .any(|e| matches!(e, Event::MemberFailed { .. }));
        assert!(!failed, "node {i} declared a failure during a short pause");
    }
    // A long pause: the others fail it, it comes back as the same incarnation, and what was
    // published meanwhile (both ways) still arrives exactly once.
    let t1 = sim.elapsed();
    sim.pause(1, 3 * SECOND);
    for k in 0..10 {
        sim.publish(0, "t", format!("during-long-pause-{k}").into());
        sim.run_for(Duration::from_millis(100));
    }
    // Its owner is frozen too: the command runs when it wakes.
    let at = sim.elapsed();
    sim.schedule(
        at,
        Op::Bind {
            node: 1,
            name: "after-pause".into(),
            value: "ok".into(),
        },
    );
    let settled = sim.settle(30 * SECOND);
    assert!(
        settled.converged && settled.violations.is_empty(),
        "{settled:?}"
    );
    let failed = events_since(&sim, 0, t1)
        .iter()
        .any(|e| matches!(e, Event::MemberFailed { peer } if peer.key == key));
    assert!(failed, "a 3 s pause should be detected");
    let m = sim.node(0).member(key).expect("tracked");
    assert_eq!(m.state, MemberState::Alive);
    let from0 = sim.node(0).key();
    let d = sim
        .checker()
        .delivery(1, sim.slot(1).life, from0)
        .expect("followed");
    assert_eq!(d.missing, 0);
    assert_eq!(
        d.next,
        Some(sim.node(0).last_sent(hybridcast_core::Channel::Log) + 1)
    );
}

#[test]
fn a_slow_owner_holding_events_loses_no_delivery() {
    let mut sim = Sim::new(SimConfig {
        seed: 13,
        link: LinkParams::lossy(0.2),
        node: hybridcast_core::Config {
            max_queued_events: 8,
            ..sim_node_config()
        },
        ..SimConfig::default()
    });
    for i in 0..3 {
        sim.add(&format!("n{i}"));
    }
    assert!(
        sim.run_until_converged(30 * SECOND, Duration::from_millis(50))
            .is_some()
    );
    sim.hold_events(2, true);
    for k in 0..50 {
        sim.publish(0, "t", format!("m{k}").into());
        sim.bind(1, &format!("b{k}"), "v");
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(2 * SECOND);
    let refused = sim.node(2).stats().drops.backlogged;
    assert!(refused > 0, "the backlog must have refused fragments");
    sim.hold_events(2, false);
    let settled = sim.settle(30 * SECOND);
    assert!(
        settled.converged && settled.violations.is_empty(),
        "{settled:?}"
    );
    let from0 = sim.node(0).key();
    let d = sim
        .checker()
        .delivery(2, sim.slot(2).life, from0)
        .expect("followed");
    assert_eq!((d.messages, d.missing), (50, 0));
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let run = || {
        Scenario {
            nodes: 6,
            offers: 20,
            link: LinkParams {
                duplicate: 0.05,
                reorder: 0.1,
                ..LinkParams::bursty(0.2, 3.0)
            },
            seed: 99,
            churn: 30,
            ..Scenario::default()
        }
        .run()
    };
    let (a, b) = (run(), run());
    assert_eq!(a.traffic, b.traffic);
    assert_eq!(a.render(), b.render());
    assert_eq!(a.steps, b.steps);
    assert!(a.traffic.exchanges[&Exchange::Dump].requests >= 1);
}
