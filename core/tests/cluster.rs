//! Multi-node scenarios on the in-crate harness: propagation, loss recovery, join, failure
//! detection, leave, restart, partitions, pub/sub gaps, name conflicts.

mod harness;

use harness::{Cluster, test_config};
use hybridcast_core::{Channel, Event, MemberState, Strategy};
use std::time::Duration;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn cluster_of(n: usize, seed: u64) -> Cluster {
    let mut c = Cluster::new(seed);
    for i in 0..n {
        c.add(&format!("web/{i}"));
    }
    c.run_for(secs(2.0));
    c
}

#[test]
fn offers_propagate_and_views_converge() {
    let mut c = cluster_of(4, 1);
    for i in 0..4 {
        c.with(i, |n| {
            n.bind("orders", &format!("10.0.0.{i}:80")).expect("bind");
            n.bind(&format!("only-{i}"), "x").expect("bind");
        });
    }
    c.run_for(secs(1.0));
    assert!(c.converged(), "divergent: {:?}", c.divergent());
    assert_eq!(c.nodes[0].node.registry().pool("orders").count(), 4);
    for n in &c.nodes {
        assert!(n.node.is_joined());
        assert_eq!(
            n.node.stats().recoveries_requested,
            0,
            "no loss, no recovery"
        );
    }
    c.with(2, |n| n.unbind("orders").expect("unbind"));
    c.run_for(secs(1.0));
    assert!(c.converged());
    assert_eq!(c.nodes[0].node.registry().pool("orders").count(), 3);
}

#[test]
fn binds_in_one_tick_are_one_announcement() {
    let mut c = cluster_of(2, 2);
    c.with(0, |n| {
        for k in 0..50 {
            n.bind(&format!("svc-{k}"), "v").expect("bind");
        }
        n.unbind("svc-3").expect("unbind");
    });
    assert_eq!(c.nodes[0].node.last_sent(Channel::State), 1);
    c.run_for(secs(1.0));
    assert!(c.converged());
    assert_eq!(c.nodes[1].node.registry().len(), 49);
}

#[test]
fn loss_is_recovered_point_to_point() {
    let mut c = cluster_of(4, 3);
    c.drop = Box::new(|_, _, _, rng| rng.unit() < 0.3);
    for round in 0..30 {
        for i in 0..4 {
            c.with(i, |n| {
                n.bind(&format!("svc-{}", round % 7), &format!("{i}-{round}"))
                    .expect("bind");
                if round % 3 == 0 {
                    n.unbind(&format!("svc-{}", (round + 2) % 7))
                        .expect("unbind");
                }
                n.publish("inval", format!("{i}:{round}")).expect("publish");
            });
        }
        c.run_for(secs(0.1));
    }
    c.drop = Box::new(|_, _, _, _| false);
    c.run_for(secs(5.0));
    assert!(c.converged(), "divergent: {:?}", c.divergent());
    let total: u64 = c
        .nodes
        .iter()
        .map(|n| n.node.stats().recoveries_requested)
        .sum();
    assert!(total > 0, "30% loss must have caused recoveries");
    assert!(c.max_recovery_in_flight <= 1);
    // Every node got every other node's 30 messages, in order, exactly once.
    for (i, n) in c.nodes.iter().enumerate() {
        for sender in 0..4 {
            if sender == i {
                continue;
            }
            let key = c.nodes[sender].node.key();
            let seqs: Vec<u64> = n
                .events
                .iter()
                .filter_map(|e| match e {
                    Event::Message { member, seq, .. } if *member == key => Some(*seq),
                    _ => None,
                })
                .collect();
            assert_eq!(seqs, (1..=30).collect::<Vec<_>>(), "node {i} from {sender}");
        }
    }
}

#[test]
fn joiner_uses_one_state_dump() {
    let mut c = cluster_of(5, 4);
    for i in 0..5 {
        c.with(i, |n| {
            for k in 0..20 {
                n.bind(&format!("svc-{i}-{k}"), "v").expect("bind");
            }
        });
    }
    c.run_for(secs(1.0));
    let j = c.add("web/new");
    c.run_for(secs(2.0));
    assert!(c.converged(), "divergent: {:?}", c.divergent());
    let s = c.nodes[j].node.stats();
    assert_eq!(s.dump_requests, 1);
    assert_eq!(s.recoveries_requested, 0);
    assert_eq!(c.nodes[j].node.registry().len(), 100);
    assert!(c.events(j).iter().any(|e| matches!(
        e,
        Event::Joined {
            via: Some(_),
            members: 5
        }
    )));
}

#[test]
fn join_falls_back_when_the_chosen_member_is_unreachable() {
    let mut fell_back = 0;
    for seed in 0..6 {
        let mut c = cluster_of(3, 100 + seed);
        for i in 0..3 {
            c.with(i, |n| n.bind(&format!("svc-{i}"), "v").expect("bind"));
        }
        c.run_for(secs(1.0));
        // Only node 2 serves point-to-point requests; the joiner hears everyone's multicast.
        c.http_down = vec![0, 1];
        let j = c.add(&format!("web/new-{seed}"));
        c.run_for(secs(3.0));
        let via_two = c.events(j).iter().any(
            |e| matches!(e, Event::Joined { via: Some(p), .. } if p.key == c.nodes[2].node.key()),
        );
        assert!(
            via_two,
            "seed {seed}: joined through the one reachable member"
        );
        assert!(c.converged(), "divergent: {:?}", c.divergent());
        let dumps = c.nodes[j].node.stats().dump_requests;
        assert!((1..=3).contains(&dumps));
        assert_eq!(c.nodes[j].node.stats().recoveries_requested, 0);
        if dumps > 1 {
            fell_back += 1;
        }
    }
    assert!(
        fell_back > 0,
        "some seed must have tried an unreachable member first"
    );
}

#[test]
fn crashed_member_is_detected_and_its_offers_leave() {
    let mut c = cluster_of(3, 6);
    c.with(2, |n| n.bind("svc", "two").expect("bind"));
    c.run_for(secs(1.0));
    assert_eq!(c.nodes[0].node.registry().pool("svc").count(), 1);
    c.crash(2);
    c.run_for(secs(3.0));
    let key = c.nodes[2].node.key();
    for i in 0..2 {
        assert_eq!(
            c.nodes[i].node.member(key).map(|m| m.state),
            Some(MemberState::Failed)
        );
        assert!(
            c.events(i)
                .iter()
                .any(|e| matches!(e, Event::MemberSuspect { .. }))
        );
        assert!(
            c.events(i)
                .iter()
                .any(|e| matches!(e, Event::MemberFailed { peer } if peer.key == key))
        );
        assert_eq!(c.nodes[i].node.registry().pool("svc").count(), 0);
    }
    assert!(c.converged());
}

#[test]
fn slow_member_is_suspected_but_not_failed() {
    let mut c = cluster_of(2, 7);
    // Node 1's heartbeats are lost for a while, but it answers its probe.
    c.drop = Box::new(|from, _, _, _| from == 1);
    c.run_for(secs(1.5));
    c.drop = Box::new(|_, _, _, _| false);
    c.run_for(secs(1.0));
    let key = c.nodes[1].node.key();
    assert!(
        c.events(0)
            .iter()
            .any(|e| matches!(e, Event::MemberSuspect { .. }))
    );
    assert!(
        c.events(0)
            .iter()
            .any(|e| matches!(e, Event::MemberAlive { .. }))
    );
    assert!(
        !c.events(0)
            .iter()
            .any(|e| matches!(e, Event::MemberFailed { .. }))
    );
    assert_eq!(
        c.nodes[0].node.member(key).map(|m| m.state),
        Some(MemberState::Alive)
    );
}

#[test]
fn leave_is_announced() {
    let mut c = cluster_of(3, 8);
    c.with(1, |n| n.bind("svc", "one").expect("bind"));
    c.run_for(secs(1.0));
    c.with(1, |n| n.leave());
    c.run_for(secs(0.5));
    c.crash(1);
    let key = c.nodes[1].node.key();
    for i in [0, 2] {
        assert!(
            c.events(i)
                .iter()
                .any(|e| matches!(e, Event::MemberLeft { peer } if peer.key == key))
        );
        assert_eq!(c.nodes[i].node.registry().pool("svc").count(), 0);
    }
    assert!(c.nodes[1].node.bind("x", "y").is_err());
}

#[test]
fn restart_with_new_incarnation_replaces_member_and_offers() {
    let mut c = cluster_of(3, 9);
    c.with(1, |n| {
        for k in 0..10 {
            n.bind(&format!("old-{k}"), "v").expect("bind");
        }
    });
    c.run_for(secs(1.0));
    c.restart(1);
    c.with(1, |n| n.bind("new", "v").expect("bind"));
    c.run_for(secs(3.0));
    assert!(c.converged(), "divergent: {:?}", c.divergent());
    assert_eq!(c.nodes[0].node.registry().len(), 1);
    assert!(
        c.events(0)
            .iter()
            .any(|e| matches!(e, Event::MemberRestarted { .. }))
    );
    // The new incarnation's sequence 1 was not blocked by the old incarnation's sequence 10.
    let key = c.nodes[1].node.key();
    let info = c.nodes[0].node.member(key).expect("member");
    assert_eq!(info.incarnation, c.nodes[1].node.identity().incarnation);
}

#[test]
fn partition_then_heal_converges() {
    let mut c = cluster_of(4, 10);
    for i in 0..4 {
        c.with(i, |n| n.bind(&format!("svc-{i}"), "v").expect("bind"));
    }
    c.run_for(secs(1.0));
    for a in [0, 1] {
        for b in [2, 3] {
            c.partitions.push((a, b));
        }
    }
    c.with(0, |n| n.bind("during", "v").expect("bind"));
    c.with(3, |n| n.unbind("svc-3").expect("unbind"));
    c.run_for(secs(3.0));
    let key3 = c.nodes[3].node.key();
    assert_eq!(
        c.nodes[0].node.member(key3).map(|m| m.state),
        Some(MemberState::Failed)
    );
    c.partitions.clear();
    c.run_for(secs(3.0));
    assert!(c.converged(), "divergent: {:?}", c.divergent());
    assert_eq!(
        c.nodes[0].node.member(key3).map(|m| m.state),
        Some(MemberState::Alive)
    );
}

#[test]
fn log_gap_beyond_retention_is_reported_exactly() {
    let mut config = test_config();
    config.log_retention_messages = 5;
    let mut c = Cluster::with_config(11, config);
    c.add("a");
    c.add("b");
    c.run_for(secs(2.0));
    // Node 1 misses messages 1..=20 from node 0; only 16..=20 are still retained.
    c.drop = Box::new(|from, _, _, _| from == 0);
    c.with(0, |n| {
        for k in 0..20 {
            n.publish("t", format!("m{k}")).expect("publish");
        }
    });
    c.run_for(secs(0.05));
    c.drop = Box::new(|_, _, _, _| false);
    c.run_for(secs(2.0));
    let key = c.nodes[0].node.key();
    let gaps: Vec<_> = c
        .events(1)
        .iter()
        .filter_map(|e| match e {
            Event::Gap {
                member,
                channel,
                range,
                ..
            } if *member == key => Some((*channel, range.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(gaps, vec![(Channel::Log, 1..=15)]);
    let seqs: Vec<u64> = c
        .events(1)
        .iter()
        .filter_map(|e| match e {
            Event::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (16..=20).collect::<Vec<_>>());
    assert_eq!(c.nodes[1].node.stats().gap_messages, 15);
}

#[test]
fn large_messages_are_fragmented_and_reassembled() {
    let mut c = cluster_of(3, 12);
    c.duplicate = 0.2;
    c.jitter = Duration::from_millis(20);
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    c.with(0, |n| n.publish("blob", payload.clone()).expect("publish"));
    c.run_for(secs(1.0));
    for i in 1..3 {
        let got: Vec<_> = c
            .events(i)
            .iter()
            .filter_map(|e| match e {
                Event::Message { payload, .. } => Some(payload.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0][..], &payload[..]);
    }
}

#[test]
fn two_live_members_with_one_name_are_reported() {
    let mut c = cluster_of(2, 13);
    let dup = c.add("web/0");
    c.run_for(secs(2.0));
    let conflicts = |i: usize| {
        c.events(i)
            .iter()
            .filter_map(|e| match e {
                Event::NameConflict { this_node_lost, .. } => Some(*this_node_lost),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // The newer incarnation wins; the original hears it and learns it lost.
    assert_eq!(conflicts(0), vec![true]);
    assert_eq!(conflicts(dup), vec![false]);
    assert!(conflicts(1).contains(&false), "a bystander reports it too");
}

#[test]
fn selection_skips_failed_providers() {
    let mut c = cluster_of(3, 14);
    for i in 0..3 {
        c.with(i, |n| n.bind("svc", &format!("p{i}")).expect("bind"));
    }
    c.run_for(secs(1.0));
    let now = c.now;
    let bad = c.nodes[1].node.key();
    let n = &mut c.nodes[0].node;
    n.report_failed(now, bad);
    for _ in 0..10 {
        let p = n
            .select(now, "svc", Strategy::RoundRobin)
            .expect("provider");
        assert_ne!(p.member, bad);
    }
    assert_eq!(
        n.select(now, "svc", Strategy::PreferLocal).map(|p| p.value),
        Some("p0".into())
    );
    assert!(n.select(now, "missing", Strategy::Random).is_none());
}
