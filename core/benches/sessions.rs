//! Session benchmark: what a commit costs on the wire, and how long core takes to resume a
//! failed-over session.
//!
//! Two nodes on a virtual clock exchange their heartbeats and HTTP bytes by hand (the requests
//! are parsed with core's parser and answered by the other node, so every byte counted is a
//! byte a runtime would send). Node A serves sessions of 100 keys (16-byte keys, a mix of
//! logical references and 16-byte raw values) whose secondary is B.
//!
//! Figures (`BENCH` lines):
//! - `session_commit_bytes_delta_1of100`: request body bytes of the replication after a commit
//!   that changed one key (the delta from the acknowledged version);
//! - `session_commit_bytes_full_100`: the same commit when the secondary is new or behind (the
//!   whole state);
//! - `session_delta_vs_full`: their ratio;
//! - `session_resume_failover_us`: core time for B to resume one of A's sessions after A's
//!   failure (promote the replica, pick a new secondary, queue the full copy, report the
//!   failover), per session, best of several rounds;
//! - `session_resume_vs_encode`: that time over the time to bincode-encode the same state once
//!   (the baseline: one copy of the state in its wire form).
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p hybridcast-core --bench sessions
//! HYBRIDCAST_BENCH_QUICK=1 cargo bench -p hybridcast-core --bench sessions
//! ```

use hybridcast_core::http;
use hybridcast_core::session::{LogicalRef, pool};
use hybridcast_core::{Config, Identity, Node, Resume, SessionToken, Transmit, Value, codec};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const KEYS: usize = 100;

struct Pair {
    nodes: [Node; 2],
    addrs: [SocketAddr; 2],
    now: Instant,
    /// Replication request body bytes sent by each node.
    replication_bodies: [Vec<usize>; 2],
}

impl Pair {
    fn new() -> Pair {
        let now = Instant::now();
        let addrs: [SocketAddr; 2] =
            ["127.0.0.1:7001", "127.0.0.2:7002"].map(|a| a.parse().expect("addr"));
        let config = Config {
            max_sessions: 100_000,
            ..Config::default()
        };
        let make = |i: usize| {
            let mut id = Identity::new("bench", format!("node-{i}"), 1, addrs[i]);
            id.host_id = format!("host-{i}");
            Node::new(config.clone(), id, now, i as u64).expect("node")
        };
        let mut p = Pair {
            nodes: [make(0), make(1)],
            addrs,
            now,
            replication_bodies: [Vec::new(), Vec::new()],
        };
        for _ in 0..6 {
            p.advance(Duration::from_millis(600));
        }
        assert!(p.nodes.iter().all(Node::is_joined), "both joined");
        p
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for n in &mut self.nodes {
            n.handle_timeout(self.now);
        }
        self.settle();
    }

    /// Moves datagrams and requests between the two nodes until both are quiet.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..2 {
                while let Some(t) = self.nodes[i].poll_transmit() {
                    moved = true;
                    let j = 1 - i;
                    match t {
                        Transmit::Group(d) => {
                            let from = self.addrs[i];
                            self.nodes[j].handle_datagram(self.now, from, d);
                        }
                        Transmit::Request { id, request, .. } => {
                            let limits = http::HttpLimits::default();
                            let (req, _) = http::parse_request(&request, &limits)
                                .expect("parse")
                                .expect("whole request");
                            if req.path.ends_with("/session/replicate") {
                                self.replication_bodies[i].push(req.body.len());
                            }
                            let resp = self.nodes[j].handle_http_request(self.now, &req);
                            let bytes = resp.encode();
                            let (resp, _) = http::parse_response(&bytes, &limits)
                                .expect("parse")
                                .expect("whole response");
                            self.nodes[i].handle_http_response(self.now, id, Ok(resp));
                        }
                    }
                }
                while self.nodes[i].poll_event().is_some() {}
            }
            if !moved {
                return;
            }
        }
    }

    /// A replicated 100-key session on node 0.
    fn session(&mut self, n: usize) -> SessionToken {
        let now = self.now;
        let a = &mut self.nodes[0];
        let token = a.session_create(now).expect("create");
        for k in 0..KEYS {
            let key = format!("key-{n:06}-{k:05}");
            let value = if k % 2 == 0 {
                Value::Ref(LogicalRef::new("product", format!("p-{k:012}")))
            } else {
                Value::raw(format!("raw-{k:012}").into_bytes())
            };
            a.session_put(now, token.id, &pool::application("bench"), &key, value)
                .expect("put");
        }
        let token = a.session_commit(now, token.id).expect("commit");
        self.settle();
        token
    }
}

fn quick() -> bool {
    std::env::var_os("HYBRIDCAST_BENCH_QUICK").is_some()
        || !std::env::args().any(|a| a == "--bench")
}

fn main() {
    let quick = quick();
    // 1. Bytes per commit.
    let mut p = Pair::new();
    let token = p.session(0);
    let full = *p.replication_bodies[0]
        .last()
        .expect("a full copy was sent");
    let now = p.now;
    p.nodes[0]
        .session_put(
            now,
            token.id,
            &pool::application("bench"),
            "key-000000-00007",
            Value::raw(&b"changed"[..]),
        )
        .expect("put");
    p.nodes[0].session_commit(now, token.id).expect("commit");
    p.settle();
    let delta = *p.replication_bodies[0].last().expect("a delta was sent");
    let stats = p.nodes[0].stats();
    assert_eq!(stats.replications_full, 1, "one full copy, then a delta");
    assert_eq!(
        p.nodes[0].session(token.id).and_then(|i| i.replicated),
        Some(2)
    );
    let state = p.nodes[0].session_state(token.id).cloned().expect("state");
    let (_, _, v, replica) = p.nodes[1].session_replica(token.id).expect("replica");
    assert_eq!((v, replica), (2, &state), "the replica follows");
    println!("BENCH session_commit_bytes_delta_1of100 {delta} bytes");
    println!("BENCH session_commit_bytes_full_100 {full} bytes");
    println!(
        "BENCH session_delta_vs_full {:.3} ratio",
        delta as f64 / full as f64
    );

    // 2. Resume after failover, against encoding the same state once.
    let per_round = if quick { 200 } else { 2_000 };
    let rounds = if quick { 3 } else { 7 };
    let mut best_resume = f64::MAX;
    let mut best_encode = f64::MAX;
    for round in 0..rounds {
        let mut p = Pair::new();
        let tokens: Vec<SessionToken> = (0..per_round)
            .map(|n| p.session(round * per_round + n))
            .collect();
        let states: Vec<_> = tokens
            .iter()
            .map(|t| p.nodes[0].session_state(t.id).cloned().expect("state"))
            .collect();
        // Node 0 dies: node 1 holds every replica. (No third member: the new secondary is
        // none, as in a two-member cluster after a crash.) Node 1 suspects it, its probes go
        // unanswered, and it declares it failed.
        let dead = p.nodes[0].key();
        let mut now = p.now;
        let b = &mut p.nodes[1];
        while b.member(dead).is_some_and(|m| m.state.is_live()) {
            now += Duration::from_millis(100);
            assert!(
                now < p.now + Duration::from_secs(60),
                "never declared failed"
            );
            b.handle_timeout(now);
            while b.poll_transmit().is_some() {}
        }
        while b.poll_event().is_some() {}
        let start = Instant::now();
        for t in &tokens {
            let r = b.session_resume(now, *t).expect("resume");
            assert!(matches!(r, Resume::FailedOver(_)), "{r:?}");
        }
        let resume = start.elapsed().as_secs_f64() / tokens.len() as f64;
        let mut failovers = 0;
        while let Some(e) = b.poll_event() {
            if let hybridcast_core::Event::SessionFailover { id, state, .. } = e {
                let i = tokens.iter().position(|t| t.id == id).expect("known");
                assert_eq!(state, states[i]);
                failovers += 1;
            }
        }
        assert_eq!(failovers, tokens.len());
        let start = Instant::now();
        let mut total = 0usize;
        for s in &states {
            total += codec::encode(s).map_or(0, |b| b.len());
        }
        let encode = start.elapsed().as_secs_f64() / states.len() as f64;
        assert!(total > 0);
        best_resume = best_resume.min(resume);
        best_encode = best_encode.min(encode);
    }
    println!(
        "BENCH session_resume_failover_us {:.2} us",
        best_resume * 1e6
    );
    println!(
        "BENCH session_resume_vs_encode {:.2} ratio",
        best_resume / best_encode
    );
}
