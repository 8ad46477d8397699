//! A small multi-node harness with virtual time, shared by core's integration tests.
//!
//! Nodes exchange group datagrams through a seeded network (loss, duplication, delay jitter)
//! and point-to-point requests through real HTTP bytes (encoded by the node, parsed with
//! `http::parse_request`, answered, the answer encoded and parsed again). The clock jumps to the
//! next delivery or node deadline; runs are bounded. The harness also checks, on every request,
//! that no node has two recovery requests in flight for one (member, channel).
#![allow(dead_code)]

use bytes::Bytes;
use hybridcast_core::http::{self, HttpLimits};
use hybridcast_core::ids::Rng;
use hybridcast_core::{
    Config, Event, Identity, MemberKey, Node, RequestFailure, RequestId, Transmit,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What travels through the simulated network.
#[derive(Debug)]
enum Item {
    Datagram {
        to: usize,
        from: SocketAddr,
        bytes: Bytes,
    },
    Request {
        from: usize,
        id: RequestId,
        to: SocketAddr,
        bytes: Bytes,
    },
    Response {
        to: usize,
        id: RequestId,
        result: Result<http::Response, RequestFailure>,
    },
}

/// Decides whether a group datagram from `from` to `to` is dropped.
pub type DropFn = Box<dyn FnMut(usize, usize, &Bytes, &mut Rng) -> bool>;

/// One simulated member.
pub struct SimNode {
    pub node: Node,
    pub addr: SocketAddr,
    pub events: Vec<Event>,
    /// Virtual time (since the cluster's start) of each entry of `events`.
    pub event_times: Vec<Duration>,
    pub up: bool,
    /// While true, the node's events are left in its queue (a slow owner).
    pub hold_events: bool,
}

/// A cluster on a virtual clock.
pub struct Cluster {
    pub start: Instant,
    pub now: Instant,
    pub nodes: Vec<SimNode>,
    pub rng: Rng,
    pub latency: Duration,
    pub jitter: Duration,
    pub duplicate: f64,
    pub drop: DropFn,
    /// Pairs of node indices that cannot reach each other (either direction).
    pub partitions: Vec<(usize, usize)>,
    /// Nodes whose point-to-point server refuses connections (multicast still flows).
    pub http_down: Vec<usize>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    items: HashMap<usize, Item>,
    counter: u64,
    /// Recovery requests in flight: (node, target addr, path) -> count.
    recovery_in_flight: HashMap<(usize, SocketAddr, String), u32>,
    request_paths: HashMap<(usize, RequestId), (SocketAddr, String)>,
    pub max_recovery_in_flight: u32,
    pub dump_requests: HashMap<usize, u32>,
    pub config: Config,
    pub steps: u64,
    /// When `Some`, every group datagram sent is recorded here with its sender's index.
    pub sent: Option<Vec<(usize, Bytes)>>,
}

/// The wall clock (Unix ms) every simulated node is told at the cluster's start.
pub const WALL_CLOCK_AT_START: u64 = 1_790_000_000_000;

pub fn test_config() -> Config {
    Config {
        heartbeat_interval: Duration::from_millis(200),
        discovery_period: None,
        request_timeout: Duration::from_millis(500),
        recovery_backoff_initial: Duration::from_millis(50),
        recovery_backoff_max: Duration::from_millis(800),
        ..Config::default()
    }
}

impl Cluster {
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, test_config())
    }

    pub fn with_config(seed: u64, config: Config) -> Self {
        let start = Instant::now();
        Cluster {
            start,
            now: start,
            nodes: Vec::new(),
            rng: Rng::new(seed),
            latency: Duration::from_millis(1),
            jitter: Duration::from_millis(2),
            duplicate: 0.0,
            drop: Box::new(|_, _, _, _| false),
            partitions: Vec::new(),
            http_down: Vec::new(),
            queue: BinaryHeap::new(),
            items: HashMap::new(),
            counter: 0,
            recovery_in_flight: HashMap::new(),
            request_paths: HashMap::new(),
            max_recovery_in_flight: 0,
            dump_requests: HashMap::new(),
            config,
            steps: 0,
            sent: None,
        }
    }

    /// Starts a node called `name` (incarnation derived from the virtual time) and returns its index.
    pub fn add(&mut self, name: &str) -> usize {
        self.add_with(name, self.config.clone())
    }

    /// Starts a node called `name` with its own `config` (a different key, say).
    pub fn add_with(&mut self, name: &str, config: Config) -> usize {
        let idx = self.nodes.len();
        let addr: SocketAddr = format!("127.0.0.{}:{}", 1 + idx % 200, 7000 + idx)
            .parse()
            .expect("addr");
        let node = self.make_node(name, addr, 0, config);
        self.nodes.push(node);
        idx
    }

    /// A fresh simulated member (incarnation from the virtual time, above `bump`).
    fn make_node(&mut self, name: &str, addr: SocketAddr, bump: u64, config: Config) -> SimNode {
        let incarnation = 1 + (self.now - self.start).as_millis() as u64 + bump;
        let mut id = Identity::new("sim", name, incarnation, addr);
        id.host_id = format!("host-{}", addr.port() % 3);
        let mut node = Node::new(config, id, self.now, self.rng.next_u64()).expect("node");
        node.set_wall_clock(
            self.now,
            WALL_CLOCK_AT_START + (self.now - self.start).as_millis() as u64,
        );
        SimNode {
            node,
            addr,
            events: Vec::new(),
            event_times: Vec::new(),
            up: true,
            hold_events: false,
        }
    }

    /// Crash: the node stops, its state is gone; requests to it fail.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    /// Restart a crashed (or running) node with a new incarnation, same name and address.
    pub fn restart(&mut self, i: usize) {
        let config = self.nodes[i].node.config().clone();
        self.restart_with(i, config);
    }

    /// Restarts node `i` (new incarnation, same name and address) with `config`.
    pub fn restart_with(&mut self, i: usize, config: Config) {
        let name = self.nodes[i].node.identity().name.clone();
        let addr = self.nodes[i].addr;
        let old = self.nodes[i].node.identity().incarnation;
        self.nodes[i] = self.make_node(&name, addr, old, config);
    }

    /// Hands node `to` a datagram now, as if it came from `from` (a replay, a forgery).
    pub fn inject(&mut self, to: usize, from: SocketAddr, bytes: Bytes) {
        let now = self.now;
        self.nodes[to].node.handle_datagram(now, from, bytes);
        self.drain(to);
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn schedule(&mut self, at: Instant, item: Item) {
        self.counter += 1;
        let key = self.counter as usize;
        self.items.insert(key, item);
        self.queue.push(Reverse((at, self.counter, key)));
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        !self
            .partitions
            .iter()
            .any(|&(x, y)| (x == a && y == b) || (x == b && y == a))
    }

    fn delay(&mut self) -> Duration {
        let j = self.jitter.mul_f64(self.rng.unit());
        self.latency + j
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    /// Drains node `i`'s transmits and events into the network and its event log.
    pub fn drain(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        while let Some(t) = self.nodes[i].node.poll_transmit() {
            match t {
                Transmit::Group(bytes) => {
                    if let Some(sent) = &mut self.sent {
                        sent.push((i, bytes.clone()));
                    }
                    for j in 0..self.nodes.len() {
                        if j == i || !self.reachable(i, j) {
                            continue;
                        }
                        let mut rng = self.rng.clone();
                        let dropped = (self.drop)(i, j, &bytes, &mut rng);
                        self.rng = rng;
                        if dropped {
                            continue;
                        }
                        let copies = if self.rng.unit() < self.duplicate {
                            2
                        } else {
                            1
                        };
                        for _ in 0..copies {
                            let at = self.now + self.delay();
                            let from = self.nodes[i].addr;
                            self.schedule(
                                at,
                                Item::Datagram {
                                    to: j,
                                    from,
                                    bytes: bytes.clone(),
                                },
                            );
                        }
                    }
                }
                Transmit::Request { id, to, request } => {
                    let (parsed, _) = http::parse_request(&request, &HttpLimits::default())
                        .expect("node encodes valid requests")
                        .expect("complete request");
                    if parsed.path.contains("/channel/") {
                        let key = (i, to, parsed.path.clone());
                        let n = self.recovery_in_flight.entry(key).or_insert(0);
                        *n += 1;
                        self.max_recovery_in_flight = self.max_recovery_in_flight.max(*n);
                        assert!(
                            *n <= 1,
                            "two recovery requests in flight from node {i} to {to} for {}",
                            parsed.path
                        );
                    }
                    if parsed.path.ends_with("/dump") {
                        *self.dump_requests.entry(i).or_insert(0) += 1;
                    }
                    self.request_paths.insert((i, id), (to, parsed.path));
                    let at = self.now + self.delay();
                    self.schedule(
                        at,
                        Item::Request {
                            from: i,
                            id,
                            to,
                            bytes: request,
                        },
                    );
                }
            }
        }
        let at = self.now - self.start;
        if self.nodes[i].hold_events {
            return;
        }
        while let Some(e) = self.nodes[i].node.poll_event() {
            self.nodes[i].events.push(e);
            self.nodes[i].event_times.push(at);
        }
    }

    fn deliver(&mut self, item: Item) {
        match item {
            Item::Datagram { to, from, bytes } => {
                if self.nodes[to].up {
                    let now = self.now;
                    self.nodes[to].node.handle_datagram(now, from, bytes);
                    self.drain(to);
                }
            }
            Item::Request {
                from,
                id,
                to,
                bytes,
            } => {
                let target = self.index_of(to);
                let result = match target {
                    Some(t)
                        if self.nodes[t].up
                            && self.reachable(from, t)
                            && !self.http_down.contains(&t) =>
                    {
                        let limits = self.config.http;
                        let (req, _) = http::parse_request(&bytes, &limits)
                            .expect("valid request")
                            .expect("complete");
                        let now = self.now;
                        let resp = self.nodes[t].node.handle_http_request(now, &req);
                        self.drain(t);
                        let encoded = resp.encode();
                        match http::parse_response(&encoded, &limits) {
                            Ok(Some((r, _))) => Ok(r),
                            other => Err(RequestFailure::InvalidResponse(format!("{other:?}"))),
                        }
                    }
                    _ => Err(RequestFailure::Connect("unreachable".into())),
                };
                let at = self.now + self.delay();
                self.schedule(
                    at,
                    Item::Response {
                        to: from,
                        id,
                        result,
                    },
                );
            }
            Item::Response { to, id, result } => {
                if let Some((addr, path)) = self.request_paths.remove(&(to, id)) {
                    if let Some(n) = self.recovery_in_flight.get_mut(&(to, addr, path)) {
                        *n = n.saturating_sub(1);
                    }
                }
                if self.nodes[to].up {
                    let now = self.now;
                    self.nodes[to].node.handle_http_response(now, id, result);
                    self.drain(to);
                }
            }
        }
    }

    /// Runs the cluster until virtual time `until` (relative to start). Bounded.
    pub fn run_until(&mut self, until: Duration) {
        let end = self.start + until;
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
        loop {
            self.steps += 1;
            assert!(self.steps < 20_000_000, "simulation did not settle");
            let next_item = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let next_timer = self
                .nodes
                .iter()
                .filter(|n| n.up)
                .filter_map(|n| n.node.poll_timeout())
                .min();
            let next = match (next_item, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            while let Some(Reverse((t, _, key))) = self.queue.peek().copied() {
                if t > self.now {
                    break;
                }
                self.queue.pop();
                if let Some(item) = self.items.remove(&key) {
                    self.deliver(item);
                }
            }
            for i in 0..self.nodes.len() {
                if !self.nodes[i].up {
                    continue;
                }
                if self.nodes[i]
                    .node
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now)
                {
                    let now = self.now;
                    self.nodes[i].node.handle_timeout(now);
                    self.drain(i);
                    let next = self.nodes[i].node.poll_timeout();
                    assert!(
                        next.is_none_or(|t| t > now),
                        "node {i} asks to be woken at {next:?} again after handle_timeout({now:?})"
                    );
                }
            }
        }
        self.now = self.now.max(end);
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.elapsed() + d;
        self.run_until(until);
    }

    /// Runs a command on node `i` and drains it.
    pub fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Node) -> R) -> R {
        let r = f(&mut self.nodes[i].node);
        self.drain(i);
        r
    }

    /// The offers every live node should see: union of up nodes' own offers.
    pub fn expected_view(&self) -> BTreeMap<String, BTreeMap<MemberKey, String>> {
        let mut view: BTreeMap<String, BTreeMap<MemberKey, String>> = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.up) {
            let key = n.node.key();
            if let Some(offers) = n.node.registry().offers_of(key) {
                for (name, value) in offers {
                    view.entry(name.clone())
                        .or_default()
                        .insert(key, value.clone());
                }
            }
        }
        view
    }

    /// True if every up node's view equals the expected view.
    pub fn converged(&self) -> bool {
        let want = self.expected_view();
        self.nodes
            .iter()
            .filter(|n| n.up)
            .all(|n| n.node.registry().view() == &want)
    }

    /// Names of up nodes whose view differs, for failure messages.
    pub fn divergent(&self) -> Vec<String> {
        let want = self.expected_view();
        self.nodes
            .iter()
            .filter(|n| n.up && n.node.registry().view() != &want)
            .map(|n| n.node.identity().name.clone())
            .collect()
    }

    pub fn events(&self, i: usize) -> &[Event] {
        &self.nodes[i].events
    }
}
