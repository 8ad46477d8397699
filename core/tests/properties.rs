//! quickcheck properties of the core:
//! (a) fragment permutations and duplicates reassemble exactly once, in order;
//! (b) under any loss pattern, with point-to-point requests answered, a receiver ends in sync
//!     and never has two recovery requests in flight for one (member, channel);
//! (c) decoders and `Node::handle_datagram` never panic and respect their bounds on arbitrary bytes;
//! (d) a joiner into N members sends exactly one state-dump request.

mod harness;

use bytes::Bytes;
use harness::Cluster;
use hybridcast_core::channel::receiver::{Budget, Delivery, Receiver, ReceiverLimits};
use hybridcast_core::exchange::{
    Announcement, ClusterDump, LogRange, ProbeReply, Published, StateSnapshot,
};
use hybridcast_core::ids::Rng;
use hybridcast_core::wire::{self, Fragment, FragmentPacker, Header};
use hybridcast_core::{Channel, ClusterId, Config, Event, Identity, MemberKey, Node, codec, http};
use quickcheck::{QuickCheck, TestResult};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn limits() -> ReceiverLimits {
    ReceiverLimits {
        max_bytes: 64 << 20,
        max_messages: 4096,
        max_message_size: 16 << 20,
        max_fragments: 1 << 20,
        min_chunk: 1,
        grace: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
    }
}

fn fragments_of(seq: u64, msg: &[u8], payload: usize) -> Vec<Fragment> {
    let count = wire::fragment_count(msg.len(), payload) as u32;
    (0..count)
        .map(|i| {
            let (off, len) = wire::fragment_span(msg.len() as u32, count, i).expect("span");
            Fragment {
                channel: Channel::Log,
                seq,
                index: i,
                count,
                total_len: msg.len() as u32,
                data: Bytes::copy_from_slice(&msg[off..off + len]),
            }
        })
        .collect()
}

/// (a) Any interleaving, permutation and duplication of several messages' fragments delivers
/// each message exactly once, in order.
#[test]
fn fragments_in_any_order_deliver_exactly_once_in_order() {
    fn prop(msgs: Vec<Vec<u8>>, payload: u8, order_seed: u64, dup_every: u8) -> TestResult {
        if msgs.is_empty() || msgs.len() > 12 {
            return TestResult::discard();
        }
        let payload = usize::from(payload % 64) + 1;
        let mut all = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            all.extend(fragments_of(i as u64 + 1, m, payload));
        }
        // Duplicate some fragments, then shuffle everything with a seeded Fisher-Yates.
        let dup_every = usize::from(dup_every % 5) + 1;
        let dups: Vec<Fragment> = all.iter().step_by(dup_every).cloned().collect();
        all.extend(dups);
        let mut rng = Rng::new(order_seed);
        for i in (1..all.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            all.swap(i, j);
        }
        let t = Instant::now();
        let l = limits();
        let mut r = Receiver::new(Channel::Log);
        let mut budget = Budget::default();
        let mut out = Vec::new();
        r.on_last_seq(t, 0, &l);
        for f in all {
            r.on_fragment(t, f, &mut budget, &l, &mut out);
        }
        let want: Vec<Delivery> = msgs
            .into_iter()
            .enumerate()
            .map(|(i, m)| Delivery::Message {
                seq: i as u64 + 1,
                payload: Bytes::from(m),
            })
            .collect();
        TestResult::from_bool(out == want && budget == Budget::default())
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(Vec<Vec<u8>>, u8, u64, u8) -> TestResult);
}

/// (b) Under any loss pattern (applied to the first datagrams of a busy period), with
/// point-to-point requests answered, the receiver ends in sync with the sender's state and the
/// harness never sees two recovery requests in flight for one (member, channel).
#[test]
fn any_loss_pattern_ends_in_sync_with_one_request_in_flight() {
    fn prop(pattern: Vec<bool>, ops: Vec<(u8, bool)>, seed: u64) -> TestResult {
        if pattern.is_empty() || ops.is_empty() {
            return TestResult::discard();
        }
        let mut c = Cluster::new(seed);
        c.add("sender");
        c.add("receiver");
        c.run_for(Duration::from_secs(2));
        let mut sent = 0usize;
        c.drop = Box::new(move |from, _, _, _| {
            if from != 0 {
                return false;
            }
            let lost = pattern.get(sent).copied().unwrap_or(false);
            sent += 1;
            lost
        });
        let mut published = 0u64;
        for (k, (name, publish)) in ops.iter().enumerate() {
            c.with(0, |n| {
                let name = format!("svc-{}", name % 16);
                if k % 3 == 2 {
                    n.unbind(&name).expect("unbind");
                } else {
                    n.bind(&name, &format!("v{k}")).expect("bind");
                }
                if *publish {
                    n.publish("t", format!("{k}")).expect("publish");
                }
            });
            if *publish {
                published += 1;
            }
            c.run_for(Duration::from_millis(30));
        }
        c.run_for(Duration::from_secs(5));
        let sender_key = c.nodes[0].node.key();
        let in_sync = c.nodes[1].node.registry().offers_of(sender_key)
            == c.nodes[0].node.registry().offers_of(sender_key);
        let seqs: Vec<u64> = c
            .events(1)
            .iter()
            .filter_map(|e| match e {
                Event::Message { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        let info = c.nodes[1].node.member(sender_key).expect("sender known");
        let state = info
            .sequences
            .iter()
            .find(|s| s.0 == Channel::State)
            .expect("state");
        TestResult::from_bool(
            in_sync
                && seqs == (1..=published).collect::<Vec<_>>()
                && state.1 == c.nodes[0].node.last_sent(Channel::State)
                && c.max_recovery_in_flight <= 1,
        )
    }
    QuickCheck::new()
        .tests(150)
        .quickcheck(prop as fn(Vec<bool>, Vec<(u8, bool)>, u64) -> TestResult);
}

/// (c) The datagram decoder, the HTTP parsers and every bincode body decoder never panic on
/// arbitrary bytes and stay within their bounds; a node fed arbitrary datagrams (raw, or with a
/// valid header of its own cluster) keeps its caches within the configured bound.
#[test]
fn decoders_and_node_survive_arbitrary_bytes() {
    fn prop(raw: Vec<u8>, with_header: bool, kind: u8) -> bool {
        let mut bytes = Vec::new();
        if with_header {
            bytes.extend_from_slice(&wire::MAGIC);
            bytes.extend_from_slice(&[wire::VERSION, 1 + kind % 3, 0, 0]);
            bytes.extend_from_slice(&ClusterId::of("sim").0.to_be_bytes());
            bytes.extend_from_slice(&MemberKey::of("peer").0.to_be_bytes());
            bytes.extend_from_slice(&7u64.to_be_bytes());
        }
        bytes.extend_from_slice(&raw);
        let bytes = Bytes::from(bytes);
        let _ = wire::decode(&bytes);
        let limits = http::HttpLimits::default();
        if let Ok(Some((r, used))) = http::parse_request(&bytes, &limits) {
            assert!(used <= bytes.len() && r.body.len() <= limits.max_body_bytes);
        }
        let _ = http::parse_response(&bytes, &limits);
        let _ = codec::decode::<Announcement>(&bytes, 1 << 20);
        let _ = codec::decode::<Published>(&bytes, 1 << 20);
        let _ = codec::decode::<StateSnapshot>(&bytes, 1 << 20);
        let _ = codec::decode::<LogRange>(&bytes, 1 << 20);
        let _ = codec::decode::<ClusterDump>(&bytes, 1 << 20);
        let _ = codec::decode::<ProbeReply>(&bytes, 1 << 20);
        true
    }
    QuickCheck::new()
        .tests(3000)
        .quickcheck(prop as fn(Vec<u8>, bool, u8) -> bool);

    // A node under a stream of forged-but-well-formed fragments of a huge message from a known
    // member stays within max_cached_bytes_per_sender.
    let mut config = Config {
        max_cached_bytes_per_sender: 1 << 20,
        ..Config::default()
    };
    config.max_message_size = 1 << 20;
    let t = Instant::now();
    let addr = "127.0.0.1:1".parse().expect("addr");
    let mut node = Node::new(config, Identity::new("sim", "me", 1, addr), t, 1).expect("node");
    let peer = Identity::new("sim", "peer", 7, addr);
    let header = Header {
        cluster: ClusterId::of("sim"),
        sender: MemberKey::of("peer"),
        incarnation: 7,
    };
    let hb = wire::Heartbeat {
        cluster_name: peer.cluster.clone(),
        name: peer.name.clone(),
        http_addr: addr,
        host_id: String::new(),
        load: 0,
        interval_ms: 1000,
        joining: false,
        last_seq: vec![(Channel::Log, 0)],
    };
    node.handle_datagram(t, addr, wire::encode_heartbeat(&header, &hb));
    let mut rng = Rng::new(5);
    for i in 0..5000u64 {
        let mut p = FragmentPacker::new(&header, 1400);
        let total = (rng.below(if i % 2 == 0 { 4 << 20 } else { 64 << 10 }) as u32).max(2);
        let count = wire::fragment_count(total as usize, 1343) as u32;
        let index = rng.below(u64::from(count)) as u32;
        let (_, len) = wire::fragment_span(total, count, index).expect("span");
        p.push(
            Channel::Log,
            2 + i % 300,
            index,
            count,
            total,
            &vec![0u8; len],
        );
        node.handle_datagram(t, addr, p.finish());
        assert!(node.cached_bytes() <= 1 << 20);
    }
    let s = node.stats();
    assert!(
        s.drops.too_large > 0 && s.drops.cache_full > 0,
        "{:?}",
        s.drops
    );
}

/// (d) A joiner into N members sends exactly one state-dump request and no other request, and
/// ends with the same view as everyone.
#[test]
fn joiner_sends_exactly_one_state_dump_request() {
    fn prop(n: u8, offers: u8, seed: u64) -> bool {
        let n = usize::from(n % 8) + 1;
        let mut c = Cluster::new(seed);
        for i in 0..n {
            c.add(&format!("m{i}"));
        }
        c.run_for(Duration::from_secs(2));
        for i in 0..n {
            c.with(i, |node| {
                for k in 0..usize::from(offers % 30) {
                    node.bind(&format!("s{i}-{k}"), "v").expect("bind");
                }
            });
        }
        c.run_for(Duration::from_secs(1));
        let j = c.add(&format!("joiner-{seed}"));
        c.run_for(Duration::from_secs(3));
        let s = c.nodes[j].node.stats();
        s.dump_requests == 1
            && c.dump_requests.get(&j) == Some(&1)
            && s.recoveries_requested == 0
            && c.converged()
            && c.nodes[j].node.is_joined()
    }
    QuickCheck::new()
        .tests(60)
        .quickcheck(prop as fn(u8, u8, u64) -> bool);
}

/// A random schedule of operations, loss, duplication, reordering, a crash with restart and a
/// partition, then a quiet period: every live view converges, per-sender delivery stays in order
/// without duplicates (gaps only as `Gap` events), and at most one recovery request is ever in
/// flight per (member, channel) (asserted by the harness on every request).
#[test]
fn chaos_schedules_converge() {
    fn prop(
        seed: u64,
        nodes: u8,
        loss: u8,
        ops: Vec<(u8, u8, u8)>,
        crash: Option<(u8, u8)>,
    ) -> TestResult {
        let n = usize::from(nodes % 5) + 2;
        if ops.len() > 60 {
            return TestResult::discard();
        }
        let loss = f64::from(loss % 40) / 100.0;
        let mut c = Cluster::new(seed);
        c.duplicate = 0.05;
        c.jitter = Duration::from_millis(30);
        for i in 0..n {
            c.add(&format!("n{i}"));
        }
        c.run_for(Duration::from_secs(2));
        c.drop = Box::new(move |_, _, _, rng| rng.unit() < loss);
        for (step, (who, what, name)) in ops.iter().enumerate() {
            let i = usize::from(*who) % n;
            if !c.nodes[i].up {
                continue;
            }
            c.with(i, |node| match what % 3 {
                0 => node
                    .bind(&format!("s{}", name % 12), &format!("v{step}"))
                    .map(|_| ()),
                1 => node.unbind(&format!("s{}", name % 12)).map(|_| ()),
                _ => node
                    .publish("t", vec![*name; usize::from(*name) * 20])
                    .map(|_| ()),
            })
            .expect("command");
            if let Some((victim, at)) = crash {
                let v = usize::from(victim) % n;
                if step == usize::from(at) % ops.len().max(1) {
                    c.crash(v);
                    c.run_for(Duration::from_millis(300));
                    c.restart(v);
                }
            }
            if step % 10 == 5 {
                c.partitions = vec![(0, 1)];
            }
            if step % 10 == 8 {
                c.partitions.clear();
            }
            c.run_for(Duration::from_millis(40));
        }
        c.partitions.clear();
        c.drop = Box::new(|_, _, _, _| false);
        c.run_for(Duration::from_secs(8));
        if !c.converged() {
            eprintln!("seed {seed}: divergent {:?}", c.divergent());
            return TestResult::failed();
        }
        // Per (receiver, sender): between membership changes, log sequences continue by one,
        // with gaps only where a Gap event says so.
        for r in 0..n {
            let mut expect: HashMap<MemberKey, Option<u64>> = HashMap::new();
            for e in c.events(r) {
                match e {
                    Event::MemberJoined { peer, .. }
                    | Event::MemberRestarted { peer, .. }
                    | Event::MemberFailed { peer }
                    | Event::MemberLeft { peer } => {
                        expect.insert(peer.key, None);
                    }
                    Event::Message { member, seq, .. } => {
                        let slot = expect.entry(*member).or_insert(None);
                        if slot.is_some_and(|want| want != *seq) {
                            eprintln!("seed {seed}: node {r} got seq {seq}, wanted {slot:?}");
                            return TestResult::failed();
                        }
                        *slot = Some(seq + 1);
                    }
                    Event::Gap { member, range, .. } => {
                        let slot = expect.entry(*member).or_insert(None);
                        if slot.is_some_and(|want| want != *range.start()) {
                            return TestResult::failed();
                        }
                        *slot = Some(range.end() + 1);
                    }
                    _ => {}
                }
            }
        }
        TestResult::from_bool(c.max_recovery_in_flight <= 1)
    }
    QuickCheck::new()
        .tests(80)
        .quickcheck(prop as fn(u64, u8, u8, Vec<(u8, u8, u8)>, Option<(u8, u8)>) -> TestResult);
}
