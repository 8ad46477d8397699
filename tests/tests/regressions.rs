//! Situations the generated schedules once found, rebuilt as fixed scenarios so they keep
//! testing the same thing when the schedule generator or the network model changes (a seed
//! names a schedule only for one version of `Schedule::generate`). The exact core
//! reproductions are in `core/tests/regressions.rs`.

use hybridcast_core::{Config, Event};
use hybridcast_tests::sim::{LinkParams, Sim, SimConfig, sim_node_config};
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

fn sim(seed: u64, node: Config) -> Sim {
    Sim::new(SimConfig {
        seed,
        node,
        link: LinkParams::lossy(0.05),
        record_events: true,
        ..SimConfig::default()
    })
}

fn settle(sim: &mut Sim) {
    let s = sim.settle(30 * SECOND);
    assert!(s.converged && s.violations.is_empty(), "{s:#?}");
}

/// Found as schedule seed 5484295377125782787: a slow owner's queue dropped a
/// `MemberRestarted`, and the new incarnation's messages (numbered from 1 again) could not be
/// told from the old one's. Deliveries now name the sender's incarnation.
#[test]
fn deliveries_name_their_incarnation_when_a_restart_event_was_dropped() {
    let mut sim = sim(
        1,
        Config {
            max_queued_events: 2,
            ..sim_node_config()
        },
    );
    for name in ["a", "b", "c"] {
        sim.add(name);
    }
    assert!(sim.run_until_converged(10 * SECOND, SECOND / 10).is_some());
    sim.publish(0, "t", "before".into());
    sim.run_for(SECOND / 2);
    sim.hold_events(1, true);
    for _ in 0..8 {
        sim.restart(2);
        sim.run_for(SECOND * 3 / 10);
    }
    sim.restart(0);
    sim.run_for(2 * SECOND);
    sim.publish(0, "t", "after".into());
    sim.run_for(SECOND);
    assert!(sim.node(1).stats().events_dropped > 0);
    settle(&mut sim);
    let key = sim.node(0).key();
    let new = sim.node(0).identity().incarnation;
    let seen: Vec<(u64, u64)> = sim
        .events(1)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Message {
                member,
                incarnation,
                seq,
                ..
            } if *member == key => Some((*incarnation, *seq)),
            _ => None,
        })
        .collect();
    assert_eq!(seen.last(), Some(&(new, 1)), "{seen:?}");
}

/// Found as schedule seed 3239553284838952896: a member paused while still joining was failed
/// and its tombstone forgotten; waking, its heartbeats still said *joining*, so a peer took
/// its log from 1 again and delivered a message twice (the checker reports any duplicate).
#[test]
fn a_member_paused_while_joining_is_delivered_once() {
    let mut sim = sim(
        2,
        Config {
            tombstone_ttl: 2 * SECOND,
            ..sim_node_config()
        },
    );
    sim.add("a");
    sim.add("b");
    assert!(sim.run_until_converged(10 * SECOND, SECOND / 10).is_some());
    let c = sim.add("c");
    sim.publish(c, "t", "first".into());
    sim.run_for(SECOND * 4 / 10);
    assert!(!sim.node(c).is_joined());
    sim.pause(c, 5 * SECOND);
    sim.run_for(5 * SECOND);
    let key = sim.node(c).key();
    assert!(sim.node(0).member(key).is_none(), "tombstone forgotten");
    settle(&mut sim);
    for i in 0..2 {
        let d = sim.checker().delivery(i, 0, key).expect("followed");
        assert_eq!(d.messages, 1, "node {i}");
    }
}

/// Found as schedule seed 6198003576509398602: a newcomer's state dump carried more offers than
/// `max_queued_events`, the `Bound` deliveries filled the event queue within one step, and the
/// `MemberJoined` of a member listed later in the dump was dropped, so that member's messages
/// arrived with no admission. Membership events now have their own quota.
#[test]
fn a_large_state_dump_does_not_crowd_out_member_admissions() {
    let mut sim = sim(
        3,
        Config {
            max_queued_events: 4,
            ..sim_node_config()
        },
    );
    for name in ["a", "b", "c"] {
        let i = sim.add(name);
        for k in 0..10 {
            sim.bind(i, &format!("svc-{name}-{k}"), "v");
        }
    }
    assert!(sim.run_until_converged(10 * SECOND, SECOND / 10).is_some());
    let d = sim.add("d");
    settle(&mut sim);
    assert_eq!(sim.node(d).stats().events_dropped, 0);
    let events = sim.events(d);
    for i in 0..3 {
        let key = sim.node(i).key();
        let joined = events
            .iter()
            .position(|(_, e)| matches!(e, Event::MemberJoined { peer, .. } if peer.key == key));
        let first_bound = events
            .iter()
            .position(|(_, e)| matches!(e, Event::Bound { member, .. } if *member == key));
        assert!(
            joined.is_some(),
            "no MemberJoined for member {i}: {events:?}"
        );
        assert!(
            joined < first_bound,
            "member {i} bound before it joined: {events:?}"
        );
    }
}
