//! Hub mode (seed 004) on the deterministic simulator: a cluster whose group traffic goes only
//! through a message server, the server crashing and coming back, members cut off from it,
//! a killed member detected through the server's departure notice, and a slow consumer.
//!
//! Every run goes through the simulator's invariant checker; `settle` ends each with the
//! quiescence checks (views equal the live members' offers, every message delivered once and in
//! order or reported missing, bounds held) and, in hub mode, requires every live member to be
//! registered at the hub at its current incarnation.

use hybridcast_core::hub::frame::{LEN_PREFIX, MAX_FRAME_LEN};
use hybridcast_core::hub::{CloseReason, HubEvent, LinkEvent, LinkLoss};
use hybridcast_core::{Event, MemberKey, MemberState};
use hybridcast_tests::sim::{HUB, HubParams, LinkParams, Op, Sim, SimConfig, Transport};
use std::collections::BTreeMap;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn config(seed: u64, link: LinkParams, transport: Transport) -> SimConfig {
    SimConfig {
        seed,
        link,
        record_events: true,
        transport,
        ..SimConfig::default()
    }
}

fn hub() -> Transport {
    Transport::hub(HubParams::sim())
}

/// `n` members, each offering `svc-<i>` and a share of `shared`, converged.
fn cluster(cfg: SimConfig, n: usize) -> Sim {
    let mut sim = Sim::new(cfg);
    for i in 0..n {
        let s = sim.add(&format!("n{i}"));
        sim.bind(s, &format!("svc-{i}"), "v1");
        sim.bind(s, "shared", &format!("from-{i}"));
    }
    let converged = sim.run_until_converged(30 * SECOND, 50 * MS);
    assert!(converged.is_some(), "{:?}", sim.divergence());
    sim
}

fn settle(sim: &mut Sim) {
    let s = sim.settle(60 * SECOND);
    assert!(s.converged && s.violations.is_empty(), "{s:#?}");
}

fn events_since(sim: &Sim, i: usize, since: Duration) -> Vec<Event> {
    sim.events(i)
        .iter()
        .filter(|(t, _)| *t >= since)
        .map(|(_, e)| e.clone())
        .collect()
}

/// When slot `i` first reported `key` failed at or after `since`.
fn failed_at(sim: &Sim, i: usize, key: MemberKey, since: Duration) -> Option<Duration> {
    sim.events(i).iter().find_map(|(t, e)| match e {
        Event::MemberFailed { peer } if peer.key == key && *t >= since => Some(*t),
        _ => None,
    })
}

fn any_failure_since(sim: &Sim, i: usize, since: Duration) -> bool {
    events_since(sim, i, since)
        .iter()
        .any(|e| matches!(e, Event::MemberFailed { .. }))
}

/// Publishes `count` messages from `node`, one every `every`; counts them in `sent`.
fn publish(
    sim: &mut Sim,
    sent: &mut BTreeMap<usize, u64>,
    node: usize,
    count: usize,
    len: usize,
    every: Duration,
) {
    for k in 0..count {
        let payload = vec![(k % 251) as u8; len];
        sim.publish(node, "t", payload.into());
        *sent.entry(node).or_default() += 1;
        sim.run_for(every);
    }
}

/// Every slot of `to` other than the sender delivered all `sent` messages of each sender's
/// current process, none reported missing.
fn assert_all_delivered(sim: &Sim, sent: &BTreeMap<usize, u64>, to: impl Iterator<Item = usize>) {
    let to: Vec<usize> = to.collect();
    for (&from, &count) in sent {
        let key = sim.node(from).key();
        for &to in &to {
            if to == from {
                continue;
            }
            let d = sim
                .checker()
                .delivery(to, sim.slot(to).life, key)
                .unwrap_or_else(|| panic!("{to} follows {from}"));
            assert_eq!((d.messages, d.missing), (count, 0), "{to} from {from}");
        }
    }
}

#[test]
fn six_members_converge_through_the_hub_deliver_once_in_order_and_a_joiner_takes_one_dump() {
    // A lossy, duplicating, reordering network: none of it touches the hub's connections,
    // which the group traffic takes, only the (unused) multicast path.
    let link = LinkParams {
        duplicate: 0.1,
        reorder: 0.2,
        jitter: 3 * MS,
        ..LinkParams::lossy(0.3)
    };
    let mut sim = cluster(config(21, link, hub()), 6);
    assert!(sim.is_hub_mode());
    let mut sent = BTreeMap::new();
    for round in 0..5 {
        for i in 0..6 {
            // Small messages and ones fragmented over several datagrams.
            let len = if (round + i) % 3 == 0 { 5_000 } else { 40 };
            publish(&mut sim, &mut sent, i, 1, len, 10 * MS);
        }
    }
    sim.bind(2, "late", "v2");
    let join_at = sim.elapsed();
    let j = sim.add("joiner");
    sim.bind(j, "svc-joiner", "v1");
    settle(&mut sim);

    // Every message once, in order, at every member (the checker saw the order).
    assert_all_delivered(&sim, &sent, 0..6);
    // The joiner caught up with one state dump and asked nobody for anything else.
    let js = sim.node(j).stats();
    assert_eq!(
        (js.dump_requests, js.recoveries_requested),
        (1, 0),
        "{js:?}"
    );
    assert!(sim.elapsed() > join_at);
    let view = sim.node(j).registry().view();
    assert_eq!(view["shared"].len(), 6);
    assert_eq!(view["late"].len(), 1);
    for i in 0..6 {
        assert_eq!(sim.node(i).registry().view()["svc-joiner"].len(), 1);
    }

    // Group traffic went through the hub only: nothing on the lossy multicast path, and
    // every datagram a member received is a copy the hub relayed.
    let t = sim.traffic().clone();
    assert_eq!((t.lost, t.duplicated), (0, 0), "{t:?}");
    let hs = sim.hub().expect("hub up").stats();
    // Each datagram was relayed once or refused by its link (not registered yet), but for
    // the last heartbeats still on their way (at most one per member).
    let in_flight = t.group_datagrams - t.hub.dropped - hs.group_frames;
    assert!(in_flight <= 7, "{t:?} {hs:?}");
    assert!(t.receptions <= hs.copies_out, "{t:?} {hs:?}");
    assert!(hs.copies_out - t.receptions <= 7 * 6, "{t:?} {hs:?}");
    assert!(t.receptions > 30 * 6, "{t:?}");
    assert_eq!(hs.registered, 7);
    assert_eq!(sim.hub_life(), 0);
}

#[test]
fn the_hub_restarting_loses_nothing_and_recovery_repairs_the_outage() {
    let mut sim = cluster(config(22, LinkParams::default(), hub()), 5);
    let mut sent = BTreeMap::new();
    publish(&mut sim, &mut sent, 0, 5, 100, 20 * MS);
    assert!(sim.run_until_converged(10 * SECOND, 50 * MS).is_some());
    let links = |sim: &Sim| -> Vec<_> {
        (0..5)
            .map(|i| sim.hub_link(i).expect("link").stats())
            .collect()
    };
    let before = links(&sim);
    let requested = |sim: &Sim| -> u64 {
        (0..5)
            .map(|i| sim.node(i).stats().recoveries_requested)
            .sum()
    };
    let recoveries_before = requested(&sim);

    let crash = sim.elapsed();
    sim.crash_hub();
    assert!(sim.hub().is_none());
    // Traffic during the outage: offers change, messages are published.
    sim.bind(1, "during", "outage");
    sim.unbind(2, "shared");
    publish(&mut sim, &mut sent, 0, 10, 100, 100 * MS);
    publish(&mut sim, &mut sent, 3, 10, 3_000, 100 * MS);
    sim.run_for(SECOND);
    let outage = sim.elapsed() - crash;
    assert_eq!(outage, 3 * SECOND);

    let during = links(&sim);
    for i in 0..5 {
        let (b, d) = (&before[i], &during[i]);
        assert!(!sim.hub_link(i).expect("link").is_registered(), "{i}");
        assert!(d.losses > b.losses, "{i} noticed nothing");
        // Refused attempts back off (50 ms doubling to 800 ms): a handful in 3 s, not the
        // sixty a fixed 50 ms would make.
        let attempts = d.connects - b.connects;
        assert!((4..=10).contains(&attempts), "{i}: {attempts} attempts");
        assert!(d.dropped_offline > b.dropped_offline, "{i}");
    }
    assert!(sim.traffic().hub.refused >= 20);
    // Heartbeats stopped, but probes answer: nobody was declared failed.
    for i in 0..5 {
        assert!(!any_failure_since(&sim, i, crash), "{i} declared a failure");
        assert!(!sim.node(i).registry().view().contains_key("during") || i == 1);
    }

    sim.restart_hub();
    assert_eq!(sim.hub_life(), 1);
    let back = sim.elapsed();
    let traffic = sim.traffic().clone();
    settle(&mut sim);
    let after = links(&sim);
    for i in 0..5 {
        assert_eq!(after[i].registrations, during[i].registrations + 1, "{i}");
    }
    // What the outage kept from the members came through recovery.
    let repaired = sim.traffic().since(&traffic).recovery();
    assert!(repaired.requests >= 4, "{repaired:?}");
    assert!(requested(&sim) > recoveries_before);
    assert_all_delivered(&sim, &sent, 0..sim.len());
    for i in 0..5 {
        let view = sim.node(i).registry().view();
        assert_eq!(view["during"].len(), 1, "{i}");
        assert_eq!(view["shared"].len(), 4, "{i}");
    }
    // The registrations after the restart are all the fresh hub's.
    let regs = sim
        .hub_events()
        .iter()
        .filter(|n| n.life == 1 && n.at >= back)
        .filter(|n| matches!(n.event, HubEvent::Registered { .. }))
        .count();
    assert_eq!(regs, 5);
}

#[test]
fn a_member_cut_off_from_the_hub_alone_stays_alive_and_catches_up() {
    let mut sim = cluster(config(23, LinkParams::default(), hub()), 5);
    let cut = 4;
    let key = sim.node(cut).key();
    let incarnation = sim.node(cut).identity().incarnation;
    let mut sent = BTreeMap::new();
    let t0 = sim.elapsed();
    sim.net.block(cut, HUB);
    sim.bind(cut, "cut-off", "x");
    sim.bind(0, "while-cut", "y");
    publish(&mut sim, &mut sent, 0, 10, 200, 100 * MS);
    publish(&mut sim, &mut sent, cut, 10, 200, 100 * MS);
    sim.run_for(4 * SECOND);

    // The hub's idle timeout and the link's ack timeout noticed the silence; attempts to
    // connect again time out.
    let departed_idle = sim.hub_events().iter().any(|n| {
        matches!(n.event, HubEvent::Departed { member, reason: CloseReason::Idle, .. } if member == key)
    });
    assert!(departed_idle, "{:?}", sim.hub_events());
    let lost: Vec<LinkLoss> = sim
        .link_events(cut)
        .iter()
        .filter(|(t, _)| *t >= t0)
        .filter_map(|(_, e)| match e {
            LinkEvent::Lost(l) => Some(*l),
            _ => None,
        })
        .collect();
    assert_eq!(lost.first(), Some(&LinkLoss::AckTimeout), "{lost:?}");
    assert!(lost.contains(&LinkLoss::HandshakeTimeout), "{lost:?}");
    assert!(!sim.hub_link(cut).expect("link").is_registered());
    // The hub's notice made the others probe; the member answers point to point, so nobody
    // declared anybody failed, and it is still live everywhere.
    for i in 0..5 {
        assert!(!any_failure_since(&sim, i, t0), "{i} declared a failure");
        if i != cut {
            assert!(sim.node(i).stats().departure_notices >= 1, "{i}");
            let m = sim.node(i).member(key).expect("tracked");
            assert!(m.state.is_live(), "{i} sees it {:?}", m.state);
        }
    }
    // The group path is cut: the offer made meanwhile has not reached the others.
    assert!(!sim.node(0).registry().view().contains_key("cut-off"));

    settle(&mut sim);
    assert!(sim.hub_link(cut).expect("link").is_registered());
    assert_all_delivered(&sim, &sent, 0..sim.len());
    for i in 0..5 {
        let view = sim.node(i).registry().view();
        assert_eq!(view["cut-off"].len(), 1, "{i}");
        assert_eq!(view["while-cut"].len(), 1, "{i}");
        if i != cut {
            let m = sim.node(i).member(key).expect("tracked");
            assert_eq!((m.state, m.incarnation), (MemberState::Alive, incarnation));
        }
    }
}

#[test]
fn a_member_cut_off_from_everyone_is_declared_failed_and_readmitted_after_the_heal() {
    let mut sim = cluster(config(24, LinkParams::default(), hub()), 5);
    let cut = 1;
    let key = sim.node(cut).key();
    let incarnation = sim.node(cut).identity().incarnation;
    let t0 = sim.elapsed();
    // A partition that leaves the member alone on its side: the hub is with the others.
    sim.apply(&Op::Split(vec![cut]));
    sim.bind(cut, "alone", "x");
    sim.run_for(5 * SECOND);
    for i in (0..5).filter(|&i| i != cut) {
        assert!(failed_at(&sim, i, key, t0).is_some(), "{i} never failed it");
        let other = sim.node(i).key();
        assert!(
            failed_at(&sim, cut, other, t0).is_some(),
            "it never failed {i}"
        );
        assert!(!sim.node(i).registry().view().contains_key("alone"));
        assert!(!sim.node(i).registry().view()["shared"].contains_key(&key));
    }
    assert!(sim.hub().expect("hub").members().all(|(m, _)| m != key));

    let heal = sim.elapsed();
    settle(&mut sim);
    for i in (0..5).filter(|&i| i != cut) {
        let m = sim.node(i).member(key).expect("tracked");
        assert_eq!((m.state, m.incarnation), (MemberState::Alive, incarnation));
        let rejoined = events_since(&sim, i, heal)
            .iter()
            .any(|e| matches!(e, Event::MemberJoined { peer, .. } if peer.key == key));
        assert!(rejoined, "{i} did not readmit it");
        assert_eq!(sim.node(i).registry().view()["alone"].len(), 1);
    }
}

/// Detection time of a killed member in a run with `transport`: from the crash to the last
/// survivor's `MemberFailed`, and the departure notices the survivors got.
fn detection(transport: Transport) -> (Duration, u64) {
    let mut sim = cluster(config(25, LinkParams::default(), transport), 5);
    sim.run_for(SECOND);
    let victim = 3;
    let key = sim.node(victim).key();
    let crash = sim.elapsed();
    sim.crash(victim);
    let survivors = [0, 1, 2, 4];
    let mut slowest = Duration::ZERO;
    for _ in 0..500 {
        sim.run_for(10 * MS);
        let seen: Vec<_> = survivors
            .iter()
            .map(|&i| failed_at(&sim, i, key, crash))
            .collect();
        if seen.iter().all(Option::is_some) {
            slowest = seen.into_iter().flatten().max().unwrap_or_default() - crash;
            break;
        }
    }
    assert!(slowest > Duration::ZERO, "not every survivor detected it");
    let notices = survivors
        .iter()
        .map(|&i| sim.node(i).stats().departure_notices)
        .sum();
    settle(&mut sim);
    (slowest, notices)
}

#[test]
fn a_killed_member_is_detected_through_the_hubs_notice_before_any_suspicion_timeout() {
    let (hub_mode, hub_notices) = detection(hub());
    let (multicast, multicast_notices) = detection(Transport::Multicast);
    let c = hybridcast_tests::sim::sim_node_config();
    // Hub mode: its kernel's FIN tells the hub at once, the hub tells everyone, each probes
    // and finds the port closed — a few network delays. Multicast: heartbeats must go
    // missing first.
    assert_eq!(hub_notices, 4);
    assert_eq!(multicast_notices, 0);
    assert!(
        hub_mode < c.heartbeat_interval,
        "hub mode took {hub_mode:?}"
    );
    assert!(
        multicast >= c.suspect_timeout() - c.heartbeat_interval,
        "multicast took {multicast:?}"
    );
    assert!(hub_mode * 10 < multicast, "{hub_mode:?} vs {multicast:?}");
}

#[test]
fn a_member_that_stops_reading_is_dropped_as_a_slow_consumer_and_catches_up() {
    let mut p = HubParams::sim();
    // The smallest queue the hub accepts and small socket buffers: a paused member's share
    // fills quickly.
    p.hub.max_queued_bytes = 2 * (LEN_PREFIX + MAX_FRAME_LEN);
    p.window = 32 * 1024;
    let mut sim = cluster(config(26, LinkParams::default(), Transport::hub(p)), 4);
    let slow = 2;
    let key = sim.node(slow).key();
    let t0 = sim.elapsed();
    let mut sent = BTreeMap::new();
    sim.pause(slow, 3 * SECOND);
    publish(&mut sim, &mut sent, 0, 40, 8_000, 20 * MS);
    sim.run_for(SECOND);
    let slow_departures: Vec<_> = sim
        .hub_events()
        .iter()
        .filter_map(|n| match n.event {
            HubEvent::Departed { member, reason, .. } => Some((member, reason)),
            _ => None,
        })
        .filter(|(_, r)| *r == CloseReason::SlowConsumer)
        .collect();
    assert_eq!(slow_departures, vec![(key, CloseReason::SlowConsumer)]);
    assert_eq!(sim.hub_departures(CloseReason::SlowConsumer), 1);
    // The others were not held back by it.
    let from0 = sim.node(0).key();
    for i in [1, 3] {
        let d = sim.checker().delivery(i, 0, from0).expect("followed");
        assert_eq!((d.messages, d.missing), (40, 0), "{i}");
    }

    settle(&mut sim);
    // Awake, it read what its socket held, found the connection closed, and came back.
    let lost = sim.link_events(slow).iter().any(|(t, e)| {
        *t >= t0
            && matches!(
                e,
                LinkEvent::Lost(LinkLoss::Closed | LinkLoss::Bye(CloseReason::SlowConsumer))
            )
    });
    assert!(lost, "{:?}", sim.link_events(slow));
    assert!(sim.hub_link(slow).expect("link").is_registered());
    assert!(sim.node(slow).stats().recoveries_requested > 0);
    assert_all_delivered(&sim, &sent, 0..sim.len());
    let m = sim.node(0).member(key).expect("tracked");
    assert_eq!(m.state, MemberState::Alive);
}

#[test]
fn an_authenticated_cluster_registers_with_tagged_hellos_and_converges_through_the_hub() {
    let key = hybridcast_core::ClusterKey::new(vec![0x44; 32]).expect("key");
    let mut cfg = config(27, LinkParams::default(), hub());
    cfg.node.auth = Some(hybridcast_core::AuthConfig::new(
        hybridcast_core::Keyring::single(key),
    ));
    let mut sim = cluster(cfg, 4);
    let mut sent = BTreeMap::new();
    publish(&mut sim, &mut sent, 1, 5, 2_000, 20 * MS);
    settle(&mut sim);
    assert_all_delivered(&sim, &sent, 0..4);
    let hs = sim.hub().expect("hub").stats();
    assert_eq!((hs.registrations, hs.registered), (4, 4), "{hs:?}");
    assert_eq!(hs.closed_for(CloseReason::Unauthenticated), 0);
    assert!(sim.hub().expect("hub").config().keys.is_some());
    // The relayed datagrams were checked end to end by the members.
    for i in 0..4 {
        let auth = sim.node(i).stats().auth;
        assert_eq!(
            (auth.datagram_untagged, auth.datagram_bad_tag),
            (0, 0),
            "{i}"
        );
    }
}

#[test]
fn a_reset_connection_is_noticed_at_both_ends_and_comes_back_without_a_false_failure() {
    let mut sim = cluster(config(28, LinkParams::default(), hub()), 4);
    let victim = 0;
    let key = sim.node(victim).key();
    let before = sim.hub_link(victim).expect("link").stats();
    let t0 = sim.elapsed();
    sim.reset_hub_connection(victim);
    sim.run_for(SECOND);
    // The link heard it, backed off and registered again on a new connection; the hub
    // announced the member departed, so the others probed it and found it alive.
    let after = sim.hub_link(victim).expect("link").stats();
    assert!(sim.hub_link(victim).expect("link").is_registered());
    assert_eq!(
        (after.losses, after.registrations),
        (before.losses + 1, before.registrations + 1)
    );
    let lost_at = sim
        .link_events(victim)
        .iter()
        .find(|(t, e)| *t >= t0 && *e == LinkEvent::Lost(LinkLoss::Closed))
        .map(|(t, _)| *t)
        .expect("the link heard the reset");
    assert!(lost_at - t0 < 10 * MS, "{:?}", lost_at - t0);
    let announced = sim.hub_events().iter().any(|n| {
        n.at >= t0
            && matches!(n.event, HubEvent::Departed { member, reason: CloseReason::Closed, .. } if member == key)
    });
    assert!(announced);
    for i in 1..4 {
        assert_eq!(sim.node(i).stats().departure_notices, 1, "{i}");
        assert!(!any_failure_since(&sim, i, t0), "{i} declared a failure");
    }
    let mut sent = BTreeMap::new();
    publish(&mut sim, &mut sent, victim, 3, 100, 20 * MS);
    settle(&mut sim);
    assert_all_delivered(&sim, &sent, 0..4);
}
