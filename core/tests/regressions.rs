//! Regression tests for defects found in review: each one failed before its fix.

mod harness;

use bytes::Bytes;
use harness::{Cluster, test_config};
use hybridcast_core::exchange::{self, ProbeReply, StateSnapshot, WireIdentity};
use hybridcast_core::http::{self, HttpLimits, Request, Response};
use hybridcast_core::wire::{self, FragmentPacker, Header, Heartbeat};
use hybridcast_core::{
    Channel, ClusterId, Config, Event, Identity, MemberKey, Node, Transmit, codec,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn node(t: Instant, seed: u64, config: Config) -> Node {
    Node::new(
        config,
        Identity::new("prod", "web/1", 5, addr(7001)),
        t,
        seed,
    )
    .expect("node")
}

fn header(name: &str, incarnation: u64) -> Header {
    Header {
        cluster: ClusterId::of("prod"),
        sender: MemberKey::of(name),
        incarnation,
    }
}

fn heartbeat(name: &str, port: u16, state: u64, log: u64) -> Heartbeat {
    Heartbeat {
        cluster_name: "prod".into(),
        name: name.into(),
        http_addr: addr(port),
        host_id: String::new(),
        load: 0,
        interval_ms: 1000,
        joining: false,
        last_seq: vec![(Channel::State, state), (Channel::Log, log)],
    }
}

fn fragment(
    h: &Header,
    channel: Channel,
    seq: u64,
    index: u32,
    count: u32,
    total: u32,
    data: &[u8],
) -> Bytes {
    let mut p = FragmentPacker::new(h, 1400);
    assert!(p.push(channel, seq, index, count, total, data));
    p.finish()
}

fn drain(n: &mut Node) -> Vec<Transmit> {
    std::iter::from_fn(|| n.poll_transmit()).collect()
}

/// A node that finished joining (alone) and then heard the member `web/2` (incarnation 3)
/// announce `hb`; returns the node, `web/2`'s header and the current time.
fn joined_with_peer(hb: &Heartbeat) -> (Node, Header, Instant) {
    let t0 = Instant::now();
    let mut n = node(t0, 1, Config::default());
    let t = t0 + Duration::from_secs(4);
    n.handle_timeout(t);
    assert!(n.is_joined());
    drain(&mut n);
    let h = header("web/2", 3);
    n.handle_datagram(t, addr(2), wire::encode_heartbeat(&h, hb));
    (n, h, t)
}

fn seqs(events: &[Event]) -> (Vec<u64>, usize) {
    let msgs = events
        .iter()
        .filter_map(|e| match e {
            Event::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    let gaps = events
        .iter()
        .filter(|e| matches!(e, Event::Gap { .. }))
        .count();
    (msgs, gaps)
}

/// One forged far-future state sequence used to make the receiver ask for snapshots 20 times a
/// second forever; the owner's answer now settles what it has sent.
#[test]
fn forged_high_sequence_does_not_cause_endless_polling() {
    let (mut n, peer, t) = joined_with_peer(&heartbeat("web/2", 7002, 0, 0));
    n.handle_datagram(
        t,
        addr(2),
        fragment(&peer, Channel::State, wire::MAX_SEQ, 0, 1, 1, b"x"),
    );
    let snapshots = snapshot_requests_answered_with_seq_zero(&mut n, t, 10);
    assert_eq!(
        snapshots, 1,
        "one forged datagram costs one snapshot request"
    );
}

/// A runtime waking late (a recovery and a suspicion both due) used to get a deadline that was
/// already due right after `handle_timeout`.
#[test]
fn late_wakeup_leaves_no_due_deadline() {
    let (mut n, peer, t) = joined_with_peer(&heartbeat("web/2", 7002, 0, 0));
    let msg = codec::encode(&exchange::Published {
        topic: "t".into(),
        payload: Bytes::from_static(b"x"),
    })
    .expect("encode");
    n.handle_datagram(
        t,
        addr(2),
        fragment(&peer, Channel::Log, 2, 0, 1, msg.len() as u32, &msg),
    );
    let late = t + Duration::from_secs(10);
    n.handle_timeout(late);
    drain(&mut n);
    assert!(n.poll_timeout().expect("timeout") > late);
}

/// Identical nodes fed identical inputs must produce identical outputs.
#[test]
fn same_seed_and_inputs_give_the_same_outputs() {
    let t = Instant::now();
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let mut n = node(t, 7, Config::default());
        for i in 0..20u16 {
            let name = format!("m/{i}");
            n.handle_datagram(
                t,
                addr(2),
                wire::encode_heartbeat(&header(&name, 1), &heartbeat(&name, 8000 + i, 3, 0)),
            );
        }
        let mut r = Request::get(exchange::PATH_DUMP);
        r.headers.push((
            exchange::HEADER_CLUSTER.into(),
            ClusterId::of("prod").to_string(),
        ));
        let dump = n.handle_http_request(t, &r).body;
        n.handle_timeout(t + Duration::from_secs(5));
        let sent: Vec<Transmit> = drain(&mut n);
        outputs.push((dump, sent));
    }
    assert_eq!(outputs[0], outputs[1]);
}

/// A member declared failed during a partition and readmitted after it used to have what it
/// published meanwhile skipped without a Gap.
#[test]
fn readmitted_member_resumes_its_log() {
    let mut c = Cluster::new(11);
    c.add("a");
    c.add("b");
    c.run_for(Duration::from_secs(2));
    c.with(0, |n| n.publish("t", "before").expect("publish"));
    c.run_for(Duration::from_secs(1));
    c.partitions.push((0, 1));
    c.run_for(Duration::from_secs(3));
    for k in 0..5 {
        c.with(0, |n| {
            n.publish("t", format!("during-{k}")).expect("publish")
        });
    }
    c.run_for(Duration::from_secs(2));
    c.partitions.clear();
    c.run_for(Duration::from_secs(3));
    c.with(0, |n| n.publish("t", "after").expect("publish"));
    c.run_for(Duration::from_secs(1));
    assert!(
        c.events(1)
            .iter()
            .any(|e| matches!(e, Event::MemberFailed { .. }))
    );
    let (msgs, gaps) = seqs(c.events(1));
    assert_eq!((msgs, gaps), ((1..=7).collect::<Vec<_>>(), 0));
}

/// A restarted member's first messages used to be skipped without a Gap.
#[test]
fn restarted_member_is_received_from_sequence_one() {
    let mut c = Cluster::new(12);
    c.add("a");
    c.add("b");
    c.run_for(Duration::from_secs(2));
    c.crash(0);
    c.run_for(Duration::from_millis(300));
    c.restart(0);
    c.with(0, |n| n.publish("t", "first").expect("publish"));
    c.run_for(Duration::from_secs(2));
    c.with(0, |n| n.publish("t", "second").expect("publish"));
    c.run_for(Duration::from_secs(1));
    assert!(
        c.events(1)
            .iter()
            .any(|e| matches!(e, Event::MemberRestarted { .. }))
    );
    assert_eq!(seqs(c.events(1)), (vec![1, 2], 0));
}

/// Even when the first heartbeat of a new member is lost, its first messages arrive: it is
/// still joining when it is first heard, so its log is received from sequence 1.
#[test]
fn new_member_whose_first_heartbeat_is_lost_is_received_from_one() {
    let mut c = Cluster::new(13);
    c.add("a");
    c.run_for(Duration::from_secs(2));
    let b = c.add("b");
    let mut lost = 0;
    c.drop = Box::new(move |from, _, _, _| {
        lost += 1;
        from == b && lost <= 2
    });
    c.with(b, |n| n.publish("t", "hello").expect("publish"));
    c.run_for(Duration::from_secs(2));
    assert_eq!(seqs(c.events(0)), (vec![1], 0));
}

/// A configuration whose full snapshot cannot fit a response used to pass validation and then
/// never converge (507 forever).
#[test]
fn config_whose_snapshot_cannot_fit_a_response_is_refused() {
    let mut cfg = test_config();
    cfg.max_message_size = 64 << 10;
    cfg.http.max_body_bytes = 2 * (64 << 10) + 8192;
    let err = cfg.validate().expect_err("refused");
    assert_eq!(err.field, "max_offers_per_member");
    cfg.max_offers_per_member = 25;
    cfg.max_value_len = 4000;
    assert_eq!(cfg.validate(), Ok(()));
}

/// Forged first fragments of huge messages used to commit their whole size (32 MiB per member);
/// memory now follows the data received, and all members together stay within
/// `max_cached_bytes_total`.
#[test]
fn forged_fragments_hold_little_and_the_node_wide_bound_holds() {
    let t = Instant::now();
    let config = Config {
        max_cached_bytes_total: 1 << 20,
        ..Config::default()
    };
    let mut n = node(t, 1, config);
    let (total, count) = (16u32 << 20, 12_493u32);
    let (_, len) = wire::fragment_span(total, count, 1).expect("span");
    let data = vec![0u8; len];
    for i in 0..4 {
        let name = format!("evil/{i}");
        let h = header(&name, 1);
        n.handle_datagram(
            t,
            addr(9),
            wire::encode_heartbeat(&h, &heartbeat(&name, 9000, 0, 0)),
        );
        for seq in [2u64, 3] {
            n.handle_datagram(
                t,
                addr(9),
                fragment(&h, Channel::Log, seq, 1, count, total, &data),
            );
        }
    }
    assert!(n.cached_bytes() < 64 << 10, "held {}", n.cached_bytes());
    // Small messages are buffered whole at once (64 KiB each); 100 members x 4 would be 25 MiB.
    let (total, count) = (60_000u32, 45u32);
    let (_, len) = wire::fragment_span(total, count, 1).expect("span");
    let data = vec![0u8; len];
    for i in 0..100 {
        let name = format!("many/{i}");
        let h = header(&name, 1);
        n.handle_datagram(
            t,
            addr(9),
            wire::encode_heartbeat(&h, &heartbeat(&name, 9000, 0, 0)),
        );
        for seq in 2..6u64 {
            n.handle_datagram(
                t,
                addr(9),
                fragment(&h, Channel::Log, seq, 1, count, total, &data),
            );
        }
    }
    assert!(n.cached_bytes() <= 1 << 20, "held {}", n.cached_bytes());
    assert!(n.stats().drops.cache_full > 0);
}

/// An owner that does not drain its events used to lose the oldest (counted); now new data is
/// refused while `max_queued_events` wait, and recovered once the owner drains them.
#[test]
fn a_slow_owner_loses_no_messages() {
    let config = Config {
        max_queued_events: 10,
        ..test_config()
    };
    let mut c = Cluster::with_config(14, config);
    c.add("a");
    c.add("b");
    c.run_for(Duration::from_secs(2));
    c.nodes[1].hold_events = true;
    for k in 0..50 {
        c.with(0, |n| n.publish("t", format!("m{k}")).expect("publish"));
        c.run_for(Duration::from_millis(20));
    }
    c.run_for(Duration::from_secs(1));
    assert!(c.nodes[1].node.stats().drops.backlogged > 0);
    c.nodes[1].hold_events = false;
    for _ in 0..40 {
        c.drain(1);
        c.run_for(Duration::from_millis(200));
    }
    assert_eq!(seqs(c.events(1)), ((1..=50).collect::<Vec<_>>(), 0));
    assert_eq!(c.nodes[1].node.stats().events_dropped, 0);
}

fn messages(n: &mut Node) -> Vec<u64> {
    std::iter::from_fn(|| n.poll_event())
        .filter_map(|e| match e {
            Event::Message { seq, .. } => Some(seq),
            _ => None,
        })
        .collect()
}

fn published(payload: impl Into<Bytes>) -> Vec<u8> {
    codec::encode(&exchange::Published {
        topic: "t".into(),
        payload: payload.into(),
    })
    .expect("encode")
}

/// Switching a large message to offset placement used to over-allocate (amortised growth), so a
/// message that fits the per-sender budget was evicted after a single reordering.
#[test]
fn one_reordering_does_not_evict_a_message_that_fits() {
    let t = Instant::now();
    let config = Config {
        max_cached_bytes_per_sender: 100_000,
        ..Config::default()
    };
    let mut n = node(t, 1, config);
    let h = header("web/2", 3);
    n.handle_datagram(
        t,
        addr(2),
        wire::encode_heartbeat(&h, &heartbeat("web/2", 7002, 0, 0)),
    );
    let msg = published(vec![7u8; 84_990]);
    let (total, count) = (msg.len() as u32, 85u32);
    let mut order: Vec<u32> = (0..22).collect();
    order.push(50);
    order.extend((22..85).filter(|i| *i != 50));
    for i in order {
        let (o, l) = wire::fragment_span(total, count, i).expect("span");
        n.handle_datagram(
            t,
            addr(2),
            fragment(&h, Channel::Log, 1, i, count, total, &msg[o..o + l]),
        );
        drain(&mut n);
    }
    assert_eq!(n.stats().drops.cache_full, 0);
    assert_eq!(messages(&mut n), vec![1]);
}

/// One fragment completing the message at `next` drains every cached successor at once; those
/// deliveries used to be dropped past a hard cap although the owner drains after every input.
#[test]
fn a_long_drain_loses_no_messages() {
    let t = Instant::now();
    let config = Config {
        max_queued_events: 10,
        log_retention_messages: 16,
        max_offers_per_member: 10,
        max_members: 8,
        ..Config::default()
    };
    let mut n = node(t, 1, config);
    let h = header("web/2", 3);
    n.handle_datagram(
        t,
        addr(2),
        wire::encode_heartbeat(&h, &heartbeat("web/2", 7002, 0, 0)),
    );
    while n.poll_event().is_some() {}
    let m = published(Bytes::from_static(b"x"));
    for seq in 2..=300u64 {
        n.handle_datagram(
            t,
            addr(2),
            fragment(&h, Channel::Log, seq, 0, 1, m.len() as u32, &m),
        );
        drain(&mut n);
        while n.poll_event().is_some() {}
    }
    n.handle_datagram(
        t,
        addr(2),
        fragment(&h, Channel::Log, 1, 0, 1, m.len() as u32, &m),
    );
    assert_eq!(messages(&mut n), (1..=300).collect::<Vec<_>>());
    assert_eq!(n.stats().events_dropped, 0);
}

/// Drives `n` for `secs` seconds, answering its requests as the member `web/2` (incarnation 3)
/// whose state-channel snapshot is at sequence 0; returns the snapshot requests made.
fn snapshot_requests_answered_with_seq_zero(n: &mut Node, mut t: Instant, secs: u64) -> usize {
    let h = header("web/2", 3);
    let end = t + Duration::from_secs(secs);
    let mut next_hb = t;
    let mut snapshots = 0;
    while t < end {
        if t >= next_hb {
            n.handle_datagram(
                t,
                addr(2),
                wire::encode_heartbeat(&h, &heartbeat("web/2", 7002, 0, 0)),
            );
            next_hb = t + Duration::from_secs(1);
        }
        n.handle_timeout(t);
        for tx in drain(n) {
            if let Transmit::Request { id, request, .. } = tx {
                let (req, _) = http::parse_request(&request, &HttpLimits::default())
                    .expect("valid")
                    .expect("complete");
                let body = if req.path == exchange::PATH_STATE {
                    snapshots += 1;
                    codec::encode(&StateSnapshot {
                        incarnation: 3,
                        seq: 0,
                        offers: vec![],
                    })
                } else {
                    codec::encode(&ProbeReply {
                        identity: WireIdentity {
                            name: "web/2".into(),
                            incarnation: 3,
                            http_addr: addr(7002),
                            host_id: String::new(),
                            load: 0,
                        },
                    })
                }
                .expect("encode");
                n.handle_http_response(t, id, Ok(Response::ok(exchange::CONTENT_TYPE, body)));
            }
        }
        t = n
            .poll_timeout()
            .expect("timeout")
            .min(next_hb)
            .max(t + Duration::from_millis(1));
    }
    snapshots
}

/// A snapshot below what was already delivered (forged fragments, or two processes with one
/// identity) used to be retried every reorder_grace, forever.
#[test]
fn a_contradicting_snapshot_backs_off() {
    let (mut n, h, t) = joined_with_peer(&heartbeat("web/2", 7002, 0, 0));
    let a = codec::encode(&exchange::Announcement { changes: vec![] }).expect("encode");
    for seq in [1u64, 2, 3, 5] {
        n.handle_datagram(
            t,
            addr(2),
            fragment(&h, Channel::State, seq, 0, 1, a.len() as u32, &a),
        );
    }
    let snapshots = snapshot_requests_answered_with_seq_zero(&mut n, t, 10);
    // Exponential backoff from 250 ms: about log2(10 s / 125 ms) requests, not 200.
    assert!(snapshots <= 7, "{snapshots} snapshot requests in 10 s");
}

/// An owner's answer built before its latest message used to erase the evidence of a loss that
/// a cached later message gives; the receiver then waited for the next heartbeat.
#[test]
fn a_cached_later_message_still_proves_a_loss_after_an_answer() {
    let mut hb = heartbeat("web/2", 7002, 0, 0);
    hb.interval_ms = 10_000;
    let (mut n, h, mut t) = joined_with_peer(&hb);
    let m = published(Bytes::from_static(b"x"));
    let f = |seq| fragment(&h, Channel::Log, seq, 0, 1, m.len() as u32, &m);
    n.handle_datagram(t, addr(2), f(2)); // 1 lost
    t += Duration::from_millis(60);
    n.handle_timeout(t);
    let id = drain(&mut n)
        .into_iter()
        .find_map(|tx| match tx {
            Transmit::Request { id, .. } => Some(id),
            Transmit::Group(_) => None,
        })
        .expect("range request");
    n.handle_datagram(t, addr(2), f(4)); // 3 lost; 4 arrives before the (older) answer
    let body = codec::encode(&exchange::LogRange {
        incarnation: 3,
        first_retained: 1,
        last_seq: 2,
        messages: vec![(1, Bytes::from(m.clone()))],
    })
    .expect("encode");
    n.handle_http_response(t, id, Ok(Response::ok(exchange::CONTENT_TYPE, body)));
    assert_eq!(messages(&mut n), vec![1, 2]);
    let end = t + Duration::from_secs(2);
    let mut asked = false;
    while t < end {
        n.handle_timeout(t);
        asked |= drain(&mut n)
            .iter()
            .any(|tx| matches!(tx, Transmit::Request { .. }));
        t = n
            .poll_timeout()
            .expect("timeout")
            .min(end)
            .max(t + Duration::from_millis(1));
    }
    assert!(asked, "message 3 asked for although no heartbeat came");
}

/// Found by the simulator (schedule seed 5484295377125782787 in `hybridcast-tests`): a slow
/// owner's queue dropped the `MemberRestarted` of a sender, and the new incarnation's messages
/// (numbered from 1 again) could not be told from the old one's. Deliveries now carry the
/// sender's incarnation.
#[test]
fn deliveries_name_the_senders_incarnation_even_if_its_restart_event_was_dropped() {
    let config = Config {
        max_queued_events: 2,
        ..test_config()
    };
    let mut c = Cluster::with_config(15, config);
    c.add("a");
    c.add("b");
    c.add("c");
    c.run_for(Duration::from_secs(2));
    c.with(0, |n| n.publish("t", "before").expect("publish"));
    c.run_for(Duration::from_millis(500));
    let old = c.nodes[0].node.identity().incarnation;
    // The owner of node 1 stops draining; membership noise overflows its queue.
    c.nodes[1].hold_events = true;
    for _ in 0..8 {
        c.restart(2);
        c.run_for(Duration::from_millis(300));
    }
    c.restart(0);
    let new = c.nodes[0].node.identity().incarnation;
    c.run_for(Duration::from_secs(2));
    c.with(0, |n| n.publish("t", "after").expect("publish"));
    c.run_for(Duration::from_secs(1));
    assert!(
        c.nodes[1].node.stats().events_dropped > 0,
        "the restart event must be dropped"
    );
    c.nodes[1].hold_events = false;
    c.drain(1);
    c.run_for(Duration::from_secs(1));
    let key = c.nodes[0].node.key();
    let restart_seen = c.events(1).iter().any(|e| {
        matches!(e, Event::MemberRestarted { peer, .. } if peer.key == key && peer.incarnation == new)
    });
    assert!(
        !restart_seen,
        "this schedule drops node 0's MemberRestarted at node 1"
    );
    let deliveries: Vec<(u64, u64, Bytes)> = c
        .events(1)
        .iter()
        .filter_map(|e| match e {
            Event::Message {
                member,
                incarnation,
                seq,
                payload,
                ..
            } if *member == key => Some((*incarnation, *seq, payload.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        deliveries,
        vec![
            (old, 1, Bytes::from_static(b"before")),
            (new, 1, Bytes::from_static(b"after"))
        ]
    );
}

/// Found by the simulator (schedule seed 3239553284838952896 in `hybridcast-tests`): a member
/// paused while still joining was failed and its tombstone forgotten; waking, its heartbeats
/// still said *joining*, so peers took its log from 1 again and delivered its first message
/// twice. A node now claims *joining* only during its first `tombstone_ttl`.
#[test]
fn a_member_paused_while_joining_is_not_delivered_twice_after_its_tombstone_expires() {
    let config = Config {
        tombstone_ttl: Duration::from_secs(2),
        ..test_config()
    };
    let mut c = Cluster::with_config(16, config);
    c.add("a");
    c.add("b");
    c.run_for(Duration::from_secs(2));
    let j = c.add("c");
    c.with(j, |n| n.publish("t", "first").expect("publish"));
    c.run_for(Duration::from_millis(400));
    assert!(!c.nodes[j].node.is_joined(), "still joining when paused");
    // Paused (not crashed): its state stays, its timers do not run, nothing reaches it.
    c.nodes[j].up = false;
    c.run_for(Duration::from_secs(5));
    let key = c.nodes[j].node.key();
    assert!(c.nodes[0].node.member(key).is_none(), "tombstone forgotten");
    c.nodes[j].up = true;
    c.run_for(Duration::from_secs(3));
    assert!(c.converged(), "divergent: {:?}", c.divergent());
    for i in 0..2 {
        let from_c: Vec<u64> = c
            .events(i)
            .iter()
            .filter_map(|e| match e {
                Event::Message { member, seq, .. } if *member == key => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(from_c, vec![1], "node {i}");
    }
}

/// Found by the simulator once multicast looped back: a process restarted within a
/// millisecond heard its predecessor's last heartbeat (older incarnation, its own address)
/// and reported a name conflict with itself. Only another address is evidence of a conflict.
#[test]
fn a_predecessors_late_heartbeat_is_not_a_name_conflict() {
    let t = Instant::now();
    let mut n = node(t, 1, Config::default()); // "web/1", incarnation 5, port 7001
    while n.poll_event().is_some() {}
    let before = n.stats().drops.stale_incarnation;
    let old = wire::encode_heartbeat(&header("web/1", 4), &heartbeat("web/1", 7001, 0, 0));
    n.handle_datagram(t, addr(7001), old);
    assert_eq!(n.stats().drops.stale_incarnation, before + 1);
    assert!(
        !std::iter::from_fn(|| n.poll_event()).any(|e| matches!(e, Event::NameConflict { .. })),
        "its own predecessor is no conflict"
    );
    // The same older incarnation serving another address is another process: reported.
    let other = wire::encode_heartbeat(&header("web/1", 4), &heartbeat("web/1", 7009, 0, 0));
    n.handle_datagram(t, addr(7009), other);
    let conflicts: Vec<Event> = std::iter::from_fn(|| n.poll_event())
        .filter(|e| matches!(e, Event::NameConflict { .. }))
        .collect();
    assert_eq!(
        conflicts,
        vec![Event::NameConflict {
            name: "web/1".into(),
            winner_incarnation: 5,
            loser_incarnation: 4,
            this_node_lost: false,
        }]
    );
}

/// Forged members each announcing their full quota of offers used to fill the registry up to
/// `max_members × max_offers_per_member`; `max_offers_total` now caps all remote offers.
#[test]
fn forged_members_cannot_fill_the_registry_past_its_total() {
    let t0 = Instant::now();
    let config = Config {
        max_offers_per_member: 10,
        max_offers_total: 25,
        ..Config::default()
    };
    let mut n = node(t0, 1, config);
    let t = t0 + Duration::from_secs(4);
    n.handle_timeout(t);
    for m in 2..=6u16 {
        let name = format!("web/{m}");
        let h = header(&name, 3);
        n.handle_datagram(
            t,
            addr(m),
            wire::encode_heartbeat(&h, &heartbeat(&name, 7000 + m, 0, 0)),
        );
        let changes = (0..10)
            .map(|k| exchange::NamingChange::Bind(format!("svc-{k}"), "v".into()))
            .collect();
        let a = codec::encode(&exchange::Announcement { changes }).expect("encode");
        n.handle_datagram(
            t,
            addr(m),
            fragment(&h, Channel::State, 1, 0, 1, a.len() as u32, &a),
        );
        drain(&mut n);
    }
    assert_eq!(n.registry().len(), 25, "remote offers stop at the total");
    assert_eq!(n.stats().drops.offers_over_limit, 50 - 25);
    for k in 0..10 {
        n.bind(&format!("own-{k}"), "x")
            .expect("own binds are bounded per member only");
    }
    assert_eq!(n.registry().len(), 35);
}

fn announcement(changes: Vec<exchange::NamingChange>) -> Vec<u8> {
    codec::encode(&exchange::Announcement { changes }).expect("encode")
}

fn naming_events(n: &mut Node) -> Vec<Event> {
    std::iter::from_fn(|| n.poll_event())
        .filter(|e| matches!(e, Event::Bound { .. } | Event::Unbound { .. }))
        .collect()
}

/// One announcement rebinding one name ten thousand times (and binding and unbinding another)
/// used to queue ten thousand events (the audit's F1: a few bytes of changes became a hundred
/// bytes of events each); the owner now hears its net effect only.
#[test]
fn one_announcement_costs_one_event_per_name_it_changes() {
    let (mut n, h, t) = joined_with_peer(&heartbeat("web/2", 7002, 0, 0));
    n.poll_event();
    while n.poll_event().is_some() {}
    use exchange::NamingChange::{Bind, Unbind};
    let mut changes = Vec::new();
    for k in 0..10_000 {
        changes.push(Bind("x".into(), format!("v{}", k % 2)));
        changes.push(Bind("gone".into(), "y".into()));
        changes.push(Unbind("gone".into()));
    }
    changes.push(Bind("x".into(), "final".into()));
    let payload = announcement(changes);
    let total = payload.len() as u32;
    let count = payload.len().div_ceil(1_300) as u32;
    for i in 0..count {
        let (at, len) = wire::fragment_span(total, count, i).expect("a valid split");
        let d = fragment(
            &h,
            Channel::State,
            1,
            i,
            count,
            total,
            &payload[at..at + len],
        );
        n.handle_datagram(t, addr(2), d);
    }
    let events = naming_events(&mut n);
    assert_eq!(
        events,
        vec![Event::Bound {
            name: "x".into(),
            member: h.sender,
            value: "final".into(),
        }]
    );
}

/// A gap filled at last releases a whole cache of announcements at once; their events used to
/// be queued all together whatever the limits (F1). Now the node queues up to the limits (one
/// announcement's events over at most), keeps the rest in order until the owner drains, and
/// loses nothing.
#[test]
fn a_released_cache_waits_for_the_owner_in_order_and_loses_nothing() {
    let config = Config {
        max_queued_events: 50,
        max_queued_event_bytes: 16 << 10,
        ..Config::default()
    };
    let t0 = Instant::now();
    let mut n = node(t0, 1, config);
    let mut t = t0 + Duration::from_secs(4);
    n.handle_timeout(t);
    assert!(n.is_joined());
    drain(&mut n);
    let h = header("web/2", 3);
    n.handle_datagram(
        t,
        addr(2),
        wire::encode_heartbeat(&h, &heartbeat("web/2", 7002, 0, 0)),
    );
    while n.poll_event().is_some() {}
    use exchange::NamingChange::Bind;
    let rounds = 200u64;
    let per_round = 20;
    let tick = |round: u64| {
        let changes = (0..per_round)
            .map(|k| Bind(format!("svc-{k}"), format!("r{round}-{}", "z".repeat(40))))
            .collect();
        announcement(changes)
    };
    // Rounds 2.. arrive first and are cached; round 1 fills the gap.
    for round in 2..=rounds {
        let p = tick(round);
        n.handle_datagram(
            t,
            addr(2),
            fragment(&h, Channel::State, round, 0, 1, p.len() as u32, &p),
        );
    }
    assert_eq!(n.stats().drops.backlogged, 0);
    let p = tick(1);
    n.handle_datagram(
        t,
        addr(2),
        fragment(&h, Channel::State, 1, 0, 1, p.len() as u32, &p),
    );
    let s = n.stats();
    assert!(
        s.events_queued <= 50 + per_round as u64,
        "one input queued {} events",
        s.events_queued
    );
    assert!(
        s.event_bytes_queued < (16 << 10) + 4096,
        "{} bytes",
        s.event_bytes_queued
    );
    // While deliveries wait, new sequenced data is refused (and recovered later).
    let p = tick(rounds + 1);
    n.handle_datagram(
        t,
        addr(2),
        fragment(&h, Channel::State, rounds + 1, 0, 1, p.len() as u32, &p),
    );
    assert_eq!(n.stats().drops.backlogged, 1);
    // The owner drains a few events at a time; the queue stays within its limits.
    let mut seen: Vec<Event> = Vec::new();
    for _ in 0..10_000 {
        let Some(e) = n.poll_event() else {
            break;
        };
        assert!(n.stats().events_queued <= 50 + per_round as u64);
        seen.push(e);
        t += Duration::from_millis(1);
        n.handle_timeout(t);
        drain(&mut n);
    }
    seen.retain(|e| matches!(e, Event::Bound { .. } | Event::Unbound { .. }));
    assert_eq!(seen.len(), (rounds as usize) * per_round);
    // In order: svc-k's values go r1, r2, ... r200.
    for k in 0..per_round {
        let name = format!("svc-{k}");
        let order: Vec<u64> = seen
            .iter()
            .filter_map(|e| match e {
                Event::Bound { name: n, value, .. } if *n == name => {
                    value[1..].split('-').next()?.parse().ok()
                }
                _ => None,
            })
            .collect();
        assert_eq!(order, (1..=rounds).collect::<Vec<_>>(), "{name}");
    }
    let offers = n.registry().offers_of(h.sender).expect("offers");
    assert!(
        offers
            .values()
            .all(|v| v.starts_with(&format!("r{rounds}-")))
    );
    assert_eq!(n.stats().events_dropped, 0);
}

/// From review: log messages waiting for a slow owner were dropped without a Gap if their
/// sender left (or failed, or restarted) before the owner drained. They are delivered, before
/// the news of the departure (delivering them after it was what schedule seed
/// 18263006321300634764 caught): had the owner kept up it would have had them then.
#[test]
fn waiting_messages_of_a_member_that_leaves_are_still_delivered() {
    let config = Config {
        max_queued_events: 5,
        ..Config::default()
    };
    let t0 = Instant::now();
    let mut n = node(t0, 1, config);
    let t = t0 + Duration::from_secs(4);
    n.handle_timeout(t);
    assert!(n.is_joined());
    drain(&mut n);
    let h = header("web/2", 3);
    n.handle_datagram(
        t,
        addr(2),
        wire::encode_heartbeat(&h, &heartbeat("web/2", 7002, 0, 0)),
    );
    while n.poll_event().is_some() {}
    // Messages 2..=40 are cached behind a gap; 1 releases them all at once.
    for seq in (2..=40).chain([1]) {
        let p = published(format!("m{seq}"));
        n.handle_datagram(
            t,
            addr(2),
            fragment(&h, Channel::Log, seq, 0, 1, p.len() as u32, &p),
        );
    }
    assert!(n.stats().events_queued <= 6);
    // The sender leaves before the owner drains anything.
    n.handle_datagram(t, addr(2), wire::encode_leave(&h));
    let events: Vec<Event> = std::iter::from_fn(|| n.poll_event()).collect();
    let (got, gaps) = seqs(&events);
    assert_eq!(got, (1..=40).collect::<Vec<_>>());
    assert_eq!(gaps, 0);
    let left = events
        .iter()
        .position(|e| matches!(e, Event::MemberLeft { .. }))
        .expect("the departure is reported");
    let last_message = events
        .iter()
        .rposition(|e| matches!(e, Event::Message { .. }))
        .expect("messages");
    assert!(last_message < left, "a message after the departure");
}
