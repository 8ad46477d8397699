//! A deterministic cluster simulator: many core [`Node`]s on one virtual clock.
//!
//! # Model
//!
//! - **Clock.** [`Sim::run_until`] jumps to the earliest of the next delivery, the next
//!   scheduled operation and the next node deadline (`Node::poll_timeout`, cached per node).
//!   Ties go to deliveries (and client timeouts) first, in the order they were scheduled, then
//!   operations, then timers in slot order; a deadline already in the past counts as due now,
//!   after the input ready now, as in a runtime's event loop. A run is a pure function of its
//!   seed and schedule.
//! - **Group datagrams** go to every other node through the [`Network`]: per-link loss
//!   (independent or Gilbert–Elliott), duplication, reordering, delay and jitter; nothing
//!   crosses a partition.
//! - **Hub mode** ([`SimConfig::transport`] = [`Transport::Hub`]): group datagrams travel only
//!   as frames over simulated TCP connections to one simulated core `Hub`, each node holding a
//!   core `HubLink`; the multicast path above is not used at all (the simulator panics if a
//!   node multicasts). Connections are reliable and in order with the links' delay; a partition
//!   stalls them both ways until the link's ack timeout or the hub's idle timeout closes them;
//!   [`Sim::crash_hub`] and [`Sim::restart_hub`] stop and replace the hub. See the `hub`
//!   module's docs for the connection model.
//! - **Point-to-point requests** are real HTTP bytes: the requester's encoded request is parsed
//!   with core's parser, answered by the target's `handle_http_request`, and the encoded answer
//!   parsed again, each way taking the link's delay. The client side behaves like a runtime's:
//!   a crashed target refuses the connection (`RequestFailure::Connect` after a round trip), a
//!   partitioned one never answers and the request fails with `Timeout` after
//!   `request_timeout`, a paused one answers when it resumes (usually too late).
//! - **Processes.** [`Sim::crash`] loses a node's state; [`Sim::restart`] starts a new process
//!   with the same name and address and a higher incarnation; [`Sim::add`] is a fresh join;
//!   [`Sim::pause`] freezes a node (no timers, no input, no commands: scheduled ones wait;
//!   up to [`SimConfig::pause_buffer`] datagrams wait in its socket buffer, the rest are
//!   lost; what waits is dropped if the process is replaced meanwhile);
//!   [`Sim::hold_events`] makes its owner stop draining events (a slow owner).
//! - **Checks.** Every event goes through the [`Checker`]; every request through the
//!   one-recovery-in-flight check; every input through the cache-size bound; every
//!   `handle_timeout` through a no-busy-loop check; every convergence probe through the
//!   member-table and requests-per-member bounds; in hub mode, every write through the hub's
//!   queue bound and the links' unacknowledged-bytes bound, every timer of the hub and the
//!   links through the no-busy-loop check. [`Sim::settle`] checks convergence (in hub mode:
//!   every live node registered at the hub at its current incarnation, nothing else), stability,
//!   completeness and the offer bounds at quiescence. With [`Sim::check_sessions`],
//!   the [`SessionChecker`] also counts the owners of every session after every step and
//!   checks every session failover (see its module).
//!
//! # Example
//!
//! ```
//! use hybridcast_tests::sim::{LinkParams, Sim, SimConfig};
//! use std::time::Duration;
//!
//! let mut sim = Sim::new(SimConfig { seed: 7, link: LinkParams::lossy(0.2), ..SimConfig::default() });
//! let nodes: Vec<usize> = (0..4).map(|i| sim.add(&format!("n{i}"))).collect();
//! for &n in &nodes {
//!     sim.bind(n, &format!("svc-{n}"), "v1");
//! }
//! let settled = sim.settle(Duration::from_secs(30));
//! assert!(settled.converged, "{:?}", settled.violations);
//! assert!(settled.violations.is_empty());
//! ```

mod baseline;
mod check;
mod hub;
mod net;
mod scenario;
mod schedule;
mod sessions;

pub use baseline::{JoinBaseline, LossRecord, NakBaseline, nak_baseline};
pub use check::{Checker, Delivery};
pub use hub::{HUB, HUB_ADDR, HubNote, HubParams, HubTraffic, Transport};
pub use net::{Burst, Fate, LinkParams, Network};
pub use scenario::{Phase, Report, Scenario};
pub use schedule::{Op, Schedule, ScheduleOutcome, check_schedules, replay_seed};
pub use sessions::{Failover, SessionChecker, SessionNote};

use bytes::Bytes;
use hybridcast_core::exchange::{self, StateSnapshot};
use hybridcast_core::http::{self, Request};
use hybridcast_core::ids::Rng;
use hybridcast_core::wire::{self, Kind};
use hybridcast_core::{
    Channel, Config, Event, Identity, MemberKey, Node, RequestFailure, RequestId, Transmit, codec,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The wall clock (Unix ms) at a simulation's start, as every node is told it.
pub const SIM_WALL_CLOCK_MS: u64 = 1_790_000_000_000;

/// Everything a simulation is built from.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds the network, the nodes' random streams and generated schedules.
    pub seed: u64,
    /// Configuration of every node.
    pub node: Config,
    /// Default parameters of every link.
    pub link: LinkParams,
    /// Cluster name.
    pub cluster: String,
    /// Number of distinct host ids nodes are spread over (`host-{index % hosts}`).
    pub hosts: usize,
    /// Keep every event per node in [`SimNode::events`] (off for large runs: the checker sees
    /// them anyway).
    pub record_events: bool,
    /// Datagrams a paused node's socket buffer holds; later ones are lost.
    pub pause_buffer: usize,
    /// Record every group-datagram loss for the NAK baseline ([`Sim::nak_baseline`]).
    pub trace_losses: bool,
    /// Measure the one-request-per-member join baseline at every state-dump request.
    pub join_baseline: bool,
    /// Bound on simulation steps; exceeding it is reported as a violation and stops the run.
    pub max_steps: u64,
    /// Deliver each group datagram back to its sender too, as multicast sockets do with
    /// loopback on (the runtimes' setting); the node recognises and drops its own.
    pub loopback: bool,
    /// How group datagrams travel: multicast (the default) or through a hub.
    pub transport: Transport,
}

/// Node configuration for simulations: 200 ms heartbeats so scenarios take a few simulated
/// seconds, otherwise core's defaults.
pub fn sim_node_config() -> Config {
    Config {
        heartbeat_interval: Duration::from_millis(200),
        request_timeout: Duration::from_millis(500),
        recovery_backoff_initial: Duration::from_millis(50),
        recovery_backoff_max: Duration::from_millis(800),
        ..Config::default()
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            node: sim_node_config(),
            link: LinkParams::default(),
            cluster: "sim".into(),
            hosts: 3,
            record_events: false,
            pause_buffer: 256,
            trace_losses: false,
            join_baseline: false,
            max_steps: 200_000_000,
            loopback: true,
            transport: Transport::Multicast,
        }
    }
}

/// One simulated member process slot (an index keeps its name and address across restarts).
#[derive(Debug)]
pub struct SimNode {
    /// The core node of the current process.
    pub node: Node,
    /// Point-to-point address (stable across restarts).
    pub addr: SocketAddr,
    /// False once crashed or after it left.
    pub up: bool,
    /// Process lifetime counter: bumped by every restart.
    pub life: u64,
    /// Virtual time (since start) and event, when [`SimConfig::record_events`] is on.
    pub events: Vec<(Duration, Event)>,
    paused_until: Option<Instant>,
    /// Since when the owner has not drained events (a slow owner).
    held: Option<Duration>,
    buffered: usize,
    /// Hub mode: the process's link to the hub.
    hub: Option<hub::MemberEnd>,
}

impl SimNode {
    /// True while the process runs and has not left.
    pub fn is_live(&self) -> bool {
        self.up && !self.node.has_left()
    }
}

/// Bytes and counts of one kind of point-to-point exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCost {
    /// Requests sent.
    pub requests: u64,
    /// Requests that got no answer (refused, timed out, partitioned).
    pub failed: u64,
    /// Encoded request bytes.
    pub request_bytes: u64,
    /// Encoded response bytes (answers that arrived in time).
    pub response_bytes: u64,
}

impl PathCost {
    fn add(&mut self, o: &PathCost) {
        self.requests += o.requests;
        self.failed += o.failed;
        self.request_bytes += o.request_bytes;
        self.response_bytes += o.response_bytes;
    }

    /// Request plus response bytes.
    pub fn bytes(&self) -> u64 {
        self.request_bytes + self.response_bytes
    }
}

/// What point-to-point request a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Exchange {
    /// State-channel recovery.
    State,
    /// Log-channel recovery.
    Log,
    /// A joiner's state dump.
    Dump,
    /// A liveness probe.
    Probe,
    /// Anything else.
    Other,
}

impl Exchange {
    fn of(path: &str) -> Exchange {
        match path {
            exchange::PATH_STATE => Exchange::State,
            exchange::PATH_LOG => Exchange::Log,
            exchange::PATH_DUMP => Exchange::Dump,
            exchange::PATH_PROBE => Exchange::Probe,
            _ => Exchange::Other,
        }
    }

    fn channel(self) -> Option<Channel> {
        match self {
            Exchange::State => Some(Channel::State),
            Exchange::Log => Some(Channel::Log),
            _ => None,
        }
    }
}

/// Traffic counters of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Group datagrams sent (one per multicast send).
    pub group_datagrams: u64,
    /// Bytes of those datagrams (counted once per send).
    pub group_bytes: u64,
    /// Group datagrams carrying fragments (announcements, published messages).
    pub fragment_datagrams: u64,
    /// Datagram copies handed to a receiving node.
    pub receptions: u64,
    /// Copies lost by the link loss model.
    pub lost: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Copies lost because a paused node's buffer was full.
    pub overflowed: u64,
    /// Point-to-point exchanges by kind.
    pub exchanges: BTreeMap<Exchange, PathCost>,
    /// Hub mode: the connections' counters.
    pub hub: HubTraffic,
}

impl Traffic {
    /// What happened since `earlier` (a copy taken from the same run).
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        let mut exchanges = self.exchanges.clone();
        for (k, e) in &earlier.exchanges {
            let c = exchanges.entry(*k).or_default();
            c.requests = c.requests.saturating_sub(e.requests);
            c.failed = c.failed.saturating_sub(e.failed);
            c.request_bytes = c.request_bytes.saturating_sub(e.request_bytes);
            c.response_bytes = c.response_bytes.saturating_sub(e.response_bytes);
        }
        Traffic {
            group_datagrams: self.group_datagrams.saturating_sub(earlier.group_datagrams),
            group_bytes: self.group_bytes.saturating_sub(earlier.group_bytes),
            fragment_datagrams: self
                .fragment_datagrams
                .saturating_sub(earlier.fragment_datagrams),
            receptions: self.receptions.saturating_sub(earlier.receptions),
            lost: self.lost.saturating_sub(earlier.lost),
            duplicated: self.duplicated.saturating_sub(earlier.duplicated),
            overflowed: self.overflowed.saturating_sub(earlier.overflowed),
            exchanges,
            hub: self.hub.since(&earlier.hub),
        }
    }

    /// The cost of one kind of exchange.
    pub fn cost(&self, e: Exchange) -> PathCost {
        self.exchanges.get(&e).copied().unwrap_or_default()
    }

    /// State plus log recoveries.
    pub fn recovery(&self) -> PathCost {
        let mut c = self.cost(Exchange::State);
        c.add(&self.cost(Exchange::Log));
        c
    }
}

/// What [`Sim::settle`] found.
#[derive(Debug, Clone)]
pub struct Settled {
    /// Every live node agreed on members and offers, and stayed so for two heartbeat intervals.
    pub converged: bool,
    /// Simulated time from the last change (operation) to the first converged probe.
    pub after_last_change: Option<Duration>,
    /// Every invariant violation of the run so far.
    pub violations: Vec<String>,
}

#[derive(Debug)]
enum Item {
    Datagram {
        to: usize,
        from: SocketAddr,
        bytes: Bytes,
        /// Set when it waits in a paused process's socket buffer: only that process gets it.
        waits_for: Option<u64>,
    },
    Request {
        from: usize,
        life: u64,
        id: RequestId,
        to: SocketAddr,
        bytes: Bytes,
        /// Set when it waits for a paused target: a process replacing it refuses it.
        target_life: Option<u64>,
    },
    Response {
        to: usize,
        life: u64,
        id: RequestId,
        result: Result<http::Response, RequestFailure>,
    },
    ClientTimeout {
        to: usize,
        life: u64,
        id: RequestId,
    },
    /// A delivery attempt on one direction of a hub connection.
    Pipe {
        conn: u64,
        dir: hub::Dir,
    },
    Op(Op),
}

#[derive(Debug)]
struct Pending {
    target: SocketAddr,
    kind: Exchange,
}

/// Most checked-bounds violations recorded before the checker stops adding more.
const MAX_VIOLATIONS: usize = 64;

/// A simulated cluster.
pub struct Sim {
    cfg: SimConfig,
    start: Instant,
    now: Instant,
    nodes: Vec<SimNode>,
    /// The network model; change it at any time.
    pub net: Network,
    rng: Rng,
    queue: BTreeMap<(Instant, u8, u64), Item>,
    counter: u64,
    timers: BTreeSet<(Instant, usize)>,
    deadline: Vec<Option<Instant>>,
    pending: BTreeMap<(usize, u64, RequestId), Pending>,
    recovering: BTreeMap<(usize, u64, SocketAddr, Channel), u32>,
    incarnations: BTreeMap<String, u64>,
    checker: Checker,
    sessions: SessionChecker,
    /// Slots that handled something since the last one-owner count.
    touched: Vec<usize>,
    traffic: Traffic,
    losses: Vec<LossRecord>,
    joins: Vec<JoinBaseline>,
    last_change: Instant,
    steps: u64,
    /// The most recovery requests ever in flight for one (node, member, channel).
    pub max_recovery_in_flight: u32,
    /// Hub mode: the hub process and the connections.
    hub: Option<hub::HubSide>,
}

impl Sim {
    /// An empty cluster at virtual time zero.
    pub fn new(cfg: SimConfig) -> Sim {
        let start = Instant::now();
        let checker = Checker::new(&cfg.node);
        let hub = match &cfg.transport {
            Transport::Multicast => None,
            Transport::Hub(p) => Some(hub::HubSide::new((**p).clone(), &cfg.cluster, &cfg.node)),
        };
        let mut sim = Sim {
            net: Network::new(cfg.seed, cfg.link),
            rng: Rng::new(cfg.seed ^ 0x5157_5eed),
            start,
            now: start,
            nodes: Vec::new(),
            queue: BTreeMap::new(),
            counter: 0,
            timers: BTreeSet::new(),
            deadline: Vec::new(),
            pending: BTreeMap::new(),
            recovering: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            checker,
            sessions: SessionChecker::default(),
            touched: Vec::new(),
            traffic: Traffic::default(),
            losses: Vec::new(),
            joins: Vec::new(),
            last_change: start,
            steps: 0,
            max_recovery_in_flight: 0,
            hub,
            cfg,
        };
        sim.start_hub();
        sim
    }

    // ----- inspection -----

    /// The configuration the simulation was built from.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Number of node slots (live or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if no node was ever added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node slot `i`.
    pub fn slot(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// The core node in slot `i`.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].node
    }

    /// Indices of live nodes (up and not left).
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_live())
            .collect()
    }

    /// Recorded events of slot `i` (needs [`SimConfig::record_events`]).
    pub fn events(&self, i: usize) -> &[(Duration, Event)] {
        &self.nodes[i].events
    }

    /// Traffic so far.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// The invariant checker (deliveries per member, violations so far).
    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// The checker, to record violations found outside the simulator.
    pub fn checker_mut(&mut self) -> &mut Checker {
        &mut self.checker
    }

    /// The session checker (see [`Sim::check_sessions`]).
    pub fn sessions(&self) -> &SessionChecker {
        &self.sessions
    }

    /// The session checker, to record the states the test commits.
    pub fn sessions_mut(&mut self) -> &mut SessionChecker {
        &mut self.sessions
    }

    /// Switches the session checks on: from now on every step counts the owners of the
    /// sessions the nodes it touched serve, every stop turns acknowledged versions into floors,
    /// every failover is checked (see [`SessionChecker`]).
    pub fn check_sessions(&mut self) {
        self.sessions.enable();
        self.count_all_owners();
    }

    /// The slot whose current process has member key `key`.
    pub fn slot_of(&self, key: MemberKey) -> Option<usize> {
        self.nodes.iter().position(|s| s.node.key() == key)
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Join baselines measured so far (with [`SimConfig::join_baseline`]).
    pub fn join_baselines(&self) -> &[JoinBaseline] {
        &self.joins
    }

    /// Group-datagram losses recorded so far (with [`SimConfig::trace_losses`]).
    pub fn losses(&self) -> &[LossRecord] {
        &self.losses
    }

    /// The NAK + multicast-retransmission baseline over the losses of this run.
    pub fn nak_baseline(&self) -> NakBaseline {
        nak_baseline(self.cfg.seed, &self.losses)
    }

    // ----- processes -----

    /// Starts a fresh node called `name` and returns its slot.
    pub fn add(&mut self, name: &str) -> usize {
        let idx = self.nodes.len();
        let addr = SocketAddr::from(([127, 0, (1 + idx / 250) as u8, (1 + idx % 250) as u8], 7000));
        let node = self.spawn(name, addr, idx);
        let hub = self.new_member_end(&node);
        self.nodes.push(SimNode {
            node,
            addr,
            up: true,
            life: 0,
            events: Vec::new(),
            paused_until: None,
            held: None,
            buffered: 0,
            hub,
        });
        self.deadline.push(None);
        self.changed();
        self.touch(idx);
        idx
    }

    fn spawn(&mut self, name: &str, addr: SocketAddr, idx: usize) -> Node {
        let ms = u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.incarnations.get(name).copied().unwrap_or(0);
        let incarnation = (ms + 1).max(last + 1);
        self.incarnations.insert(name.to_owned(), incarnation);
        let mut id = Identity::new(&self.cfg.cluster, name, incarnation, addr);
        id.host_id = format!("host-{}", idx % self.cfg.hosts.max(1));
        let mut node = match Node::new(self.cfg.node.clone(), id, self.now, self.rng.next_u64()) {
            Ok(n) => n,
            Err(e) => panic!("simulation config rejected by core: {e}"),
        };
        // Every simulated host's wall clock reads the same virtual time (authenticated
        // requests carry it); a fixed date keeps runs replayable.
        node.set_wall_clock(self.now, SIM_WALL_CLOCK_MS + ms);
        self.checker.started(node.key(), incarnation);
        node
    }

    /// Crashes slot `i`: its process and state are gone, requests to it are refused.
    pub fn crash(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        self.sessions_stopped(i);
        self.member_stopped(i);
        self.nodes[i].up = false;
        self.nodes[i].paused_until = None;
        self.set_deadline(i, None);
        let n = &self.nodes[i].node;
        self.checker.stopped(n.key(), n.identity().incarnation);
        self.changed();
    }

    /// Slot `i` stops serving its sessions: what was acknowledged to it must survive.
    fn sessions_stopped(&mut self, i: usize) {
        if self.sessions.enabled() && self.nodes[i].is_live() {
            let life = self.nodes[i].life;
            let nodes = &self.nodes;
            let holder = |k: MemberKey| {
                let s = nodes.iter().position(|s| s.node.key() == k)?;
                Some((s, nodes[s].life))
            };
            self.sessions.stopped(i, life, &nodes[i].node, holder);
        }
    }

    /// Restarts slot `i` (crashing it first if it runs): same name and address, a new
    /// incarnation, empty state.
    pub fn restart(&mut self, i: usize) {
        self.crash(i);
        let name = self.nodes[i].node.identity().name.clone();
        let addr = self.nodes[i].addr;
        let node = self.spawn(&name, addr, i);
        let hub = self.new_member_end(&node);
        let s = &mut self.nodes[i];
        s.hub = hub;
        s.node = node;
        s.up = true;
        s.life += 1;
        s.held = None;
        s.paused_until = None;
        s.buffered = 0;
        self.changed();
        self.touch(i);
    }

    /// Slot `i` leaves gracefully (sends Leave), then stops.
    pub fn leave(&mut self, i: usize) {
        if !self.nodes[i].is_live() {
            return;
        }
        self.sessions_stopped(i);
        self.nodes[i].node.leave();
        self.touch(i);
        self.member_leaves(i);
        let n = &self.nodes[i].node;
        self.checker.stopped(n.key(), n.identity().incarnation);
        self.nodes[i].up = false;
        self.nodes[i].paused_until = None;
        self.set_deadline(i, None);
        self.changed();
    }

    /// Freezes slot `i` for `d`: no timers, no input handled, requests to it wait.
    pub fn pause(&mut self, i: usize, d: Duration) {
        if !self.nodes[i].up {
            return;
        }
        let until = self.now + d;
        let s = &mut self.nodes[i];
        s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        self.changed();
        self.touch(i);
    }

    /// While `on`, slot `i`'s owner leaves its events undrained (a slow owner).
    pub fn hold_events(&mut self, i: usize, on: bool) {
        if on {
            if self.nodes[i].held.is_none() {
                self.nodes[i].held = Some(self.elapsed());
            }
            return;
        }
        let Some(since) = self.nodes[i].held.take() else {
            return;
        };
        self.drain_events(i, since);
        self.touch(i);
    }

    /// Hands slot `i`'s queued events to the checker (and the record); they were produced no
    /// earlier than `earliest`.
    fn drain_events(&mut self, i: usize, earliest: Duration) {
        if !self.nodes[i].up {
            return;
        }
        let at = self.elapsed();
        let life = self.nodes[i].life;
        if self.nodes[i].node.stats().events_dropped > 0 {
            // Membership events beyond `max_queued_events` waiting were dropped (by design).
            self.checker.events_dropped(i, life);
        }
        while let Some(e) = self.nodes[i].node.poll_event() {
            self.checker.event_within(i, life, earliest, at, &e);
            if self.sessions.enabled() {
                let n = &self.nodes[i].node;
                self.sessions.event(i, life, at, &e, n, &mut self.checker);
            }
            if self.cfg.record_events {
                self.nodes[i].events.push((at, e));
            }
        }
    }

    fn paused(&self, i: usize) -> bool {
        self.nodes[i].paused_until.is_some_and(|p| self.now < p)
    }

    fn changed(&mut self) {
        self.last_change = self.now;
    }

    // ----- commands -----

    /// Runs `f` on slot `i`'s node, then drains it. Counts as a change.
    ///
    /// # Panics
    ///
    /// If the node is paused: a frozen process runs no commands ([`Sim::schedule`] an [`Op`]
    /// instead, which waits for it to wake).
    pub fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Node) -> R) -> R {
        assert!(
            !self.paused(i),
            "node {i} is paused; schedule the command instead"
        );
        let r = f(&mut self.nodes[i].node);
        self.changed();
        self.touch(i);
        self.count_owners();
        r
    }

    /// Binds `name = value` on slot `i` (ignored if the node is not live).
    pub fn bind(&mut self, i: usize, name: &str, value: &str) {
        if self.nodes[i].is_live() {
            let r = self.with(i, |n| n.bind(name, value));
            if let Err(e) = r {
                self.checker
                    .violation(format!("bind {name} on {i} refused: {e}"));
            }
        }
    }

    /// Unbinds `name` on slot `i` (ignored if the node is not live).
    pub fn unbind(&mut self, i: usize, name: &str) {
        if self.nodes[i].is_live() {
            let r = self.with(i, |n| n.unbind(name));
            if let Err(e) = r {
                self.checker
                    .violation(format!("unbind {name} on {i} refused: {e}"));
            }
        }
    }

    /// Publishes on slot `i` (ignored if the node is not live); the checker remembers the
    /// payload to verify every delivery.
    pub fn publish(&mut self, i: usize, topic: &str, payload: Bytes) {
        if !self.nodes[i].is_live() {
            return;
        }
        let p = payload.clone();
        match self.with(i, |n| n.publish(topic, p)) {
            Ok(seq) => {
                let n = &self.nodes[i].node;
                let (key, inc) = (n.key(), n.identity().incarnation);
                let at = self.elapsed();
                self.checker.published(key, inc, seq, topic, payload, at);
            }
            Err(e) => self
                .checker
                .violation(format!("publish on {i} refused: {e}")),
        }
    }

    /// Applies one scheduled operation now; a command for a paused node waits until it wakes
    /// (its owner is frozen too).
    pub fn apply(&mut self, op: &Op) {
        let n = self.nodes.len();
        let ok = |i: usize| i < n;
        let target = match op {
            Op::Bind { node, .. }
            | Op::Unbind { node, .. }
            | Op::Publish { node, .. }
            | Op::Leave(node) => Some(*node),
            _ => None,
        };
        if let Some(i) = target.filter(|&i| ok(i) && self.paused(i)) {
            let at = self.nodes[i].paused_until.unwrap_or(self.now);
            self.push(at, 1, Item::Op(op.clone()));
            return;
        }
        match op {
            Op::Bind { node, name, value } if ok(*node) => self.bind(*node, name, value),
            Op::Unbind { node, name } if ok(*node) => self.unbind(*node, name),
            Op::Publish {
                node,
                topic,
                len,
                count,
            } if ok(*node) => {
                for k in 0..*count {
                    let payload = payload_for(*node, self.steps + k as u64, *len);
                    self.publish(*node, topic, payload);
                }
            }
            Op::Crash(i) if ok(*i) => self.crash(*i),
            Op::Restart(i) if ok(*i) => self.restart(*i),
            Op::Leave(i) if ok(*i) => self.leave(*i),
            Op::Join(name) => {
                self.add(name);
            }
            Op::Split(side) => {
                // The hub, if any, stays with the others.
                let hub = self.hub.is_some().then_some(HUB);
                self.net.split(side, (0..n).chain(hub));
                self.changed();
            }
            Op::HubCut(side) if self.hub.is_some() => {
                for &i in side {
                    self.net.block(i, HUB);
                }
                self.changed();
            }
            Op::HubReset(i) if ok(*i) => self.reset_hub_connection(*i),
            Op::HubCrash => self.crash_hub(),
            Op::HubRestart => self.restart_hub(),
            Op::Heal => {
                self.net.heal();
                self.changed();
            }
            Op::Pause { node, for_ } if ok(*node) => self.pause(*node, *for_),
            Op::HoldEvents { node, on } if ok(*node) => self.hold_events(*node, *on),
            Op::Link(p) => self.net.set_default(*p),
            _ => {}
        }
    }

    /// Schedules `op` at virtual time `at` (since the start; past times mean now).
    pub fn schedule(&mut self, at: Duration, op: Op) {
        let when = (self.start + at).max(self.now);
        self.push(when, 1, Item::Op(op));
    }

    // ----- the network -----

    fn push(&mut self, at: Instant, class: u8, item: Item) {
        self.counter += 1;
        self.queue.insert((at, class, self.counter), item);
    }

    fn set_deadline(&mut self, i: usize, d: Option<Instant>) {
        if let Some(old) = self.deadline[i].take() {
            self.timers.remove(&(old, i));
        }
        if let Some(t) = d {
            self.timers.insert((t, i));
        }
        self.deadline[i] = d;
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        // Addresses are assigned from the slot index.
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) => v4.octets(),
            std::net::IpAddr::V6(_) => return None,
        };
        let idx = (usize::from(ip[2]).checked_sub(1)? * 250) + usize::from(ip[3]).checked_sub(1)?;
        (idx < self.nodes.len() && self.nodes[idx].addr == addr).then_some(idx)
    }

    /// Sends out whatever slot `i` queued, feeds its events to the checker and refreshes its
    /// deadline.
    fn touch(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        if self.sessions.enabled() && !self.touched.contains(&i) {
            self.touched.push(i);
        }
        loop {
            let mut any = false;
            while let Some(t) = self.nodes[i].node.poll_transmit() {
                any = true;
                match t {
                    Transmit::Group(bytes) if self.hub.is_some() => {
                        self.count_group(&bytes);
                        self.send_group(i, bytes);
                    }
                    Transmit::Group(bytes) => self.multicast(i, bytes),
                    Transmit::Request { id, to, request } => self.request(i, id, to, request),
                }
            }
            // Hub mode: the link's actions and news (relayed datagrams make the node send
            // more, so go round until nothing moves).
            any |= self.pump_link(i);
            if !any || self.hub.is_none() {
                break;
            }
        }
        self.flush_link(i);
        if self.nodes[i].held.is_none() {
            let now = self.elapsed();
            self.drain_events(i, now);
        }
        self.check_bounds(i);
        let mut d = if self.nodes[i].node.has_left() {
            None
        } else {
            self.nodes[i].node.poll_timeout()
        };
        if let Some(link) = self.nodes[i]
            .hub
            .as_ref()
            .and_then(|e| e.link.poll_timeout())
        {
            d = Some(d.map_or(link, |t| t.min(link)));
        }
        if let (Some(t), Some(p)) = (d, self.nodes[i].paused_until) {
            d = Some(t.max(p));
        }
        self.set_deadline(i, d);
    }

    /// Counts one group datagram a node sent.
    fn count_group(&mut self, bytes: &Bytes) -> bool {
        self.traffic.group_datagrams += 1;
        self.traffic.group_bytes += bytes.len() as u64;
        let fragments = matches!(wire::decode_header(bytes), Ok((_, Kind::Fragments)));
        if fragments {
            self.traffic.fragment_datagrams += 1;
        }
        fragments
    }

    fn multicast(&mut self, from: usize, bytes: Bytes) {
        assert!(
            self.hub.is_none(),
            "node {from} multicast a datagram in hub mode"
        );
        let fragments = self.count_group(&bytes);
        let src = self.nodes[from].addr;
        if self.cfg.loopback {
            let item = Item::Datagram {
                to: from,
                from: src,
                bytes: bytes.clone(),
                waits_for: None,
            };
            self.push(self.now + self.cfg.link.delay, 0, item);
        }
        let mut lost_at = Vec::new();
        let mut links = Vec::new();
        let mut receivers = 0u32;
        for to in 0..self.nodes.len() {
            if to == from || !self.net.reachable(from, to) {
                continue;
            }
            if self.nodes[to].is_live() {
                receivers += 1;
            }
            match self.net.fate(from, to) {
                Fate::Lost => {
                    self.traffic.lost += 1;
                    if fragments && self.nodes[to].is_live() {
                        lost_at.push(to);
                        links.push((self.net.params(from, to), self.net.params(to, from)));
                    }
                }
                Fate::Delivered(delays) => {
                    self.traffic.duplicated += delays.len() as u64 - 1;
                    for d in delays {
                        let item = Item::Datagram {
                            to,
                            from: src,
                            bytes: bytes.clone(),
                            waits_for: None,
                        };
                        self.push(self.now + d, 0, item);
                    }
                }
            }
        }
        if self.cfg.trace_losses && fragments && !lost_at.is_empty() {
            self.losses.push(LossRecord {
                sender: from,
                size: bytes.len(),
                receivers,
                lost_at,
                links,
            });
        }
    }

    fn request(&mut self, from: usize, id: RequestId, to: SocketAddr, bytes: Bytes) {
        let limits = self.cfg.node.http;
        let parsed = match http::parse_request(&bytes, &limits) {
            Ok(Some((r, used))) if used == bytes.len() => r,
            other => {
                self.checker
                    .violation(format!("node {from} sent an unparsable request: {other:?}"));
                return;
            }
        };
        let kind = Exchange::of(&parsed.path);
        if self.sessions.enabled() {
            let target = self.index_of(to);
            let (path, body) = (&parsed.path, &parsed.body);
            self.sessions
                .request(from, target, path, body, &mut self.checker);
        }
        let life = self.nodes[from].life;
        if let Some(ch) = kind.channel() {
            let n = self.recovering.entry((from, life, to, ch)).or_insert(0);
            *n += 1;
            self.max_recovery_in_flight = self.max_recovery_in_flight.max(*n);
            if *n > 1 {
                let msg = format!(
                    "node {from} has {n} {} recovery requests in flight to {to}",
                    ch.name()
                );
                self.checker.violation(msg);
            }
        }
        if kind == Exchange::Dump && self.cfg.join_baseline {
            self.measure_join_baseline(from, &parsed);
        }
        let cost = self.traffic.exchanges.entry(kind).or_default();
        cost.requests += 1;
        cost.request_bytes += bytes.len() as u64;
        self.pending
            .insert((from, life, id), Pending { target: to, kind });
        let timeout = self.now + self.cfg.node.request_timeout;
        self.push(timeout, 0, Item::ClientTimeout { to: from, life, id });
        let delay = match self.index_of(to) {
            Some(t) => self.net.p2p_delay(from, t),
            None => self.cfg.link.delay,
        };
        let item = Item::Request {
            from,
            life,
            id,
            to,
            bytes,
            target_life: None,
        };
        self.push(self.now + delay, 0, item);
    }

    /// Out of band, at the moment a joiner asks for a dump: what asking every live member
    /// separately for its state would have cost (the targets answer with their real handler).
    fn measure_join_baseline(&mut self, joiner: usize, dump_request: &Request) {
        let mut b = JoinBaseline {
            joiner,
            at: self.elapsed(),
            ..JoinBaseline::default()
        };
        for t in 0..self.nodes.len() {
            if t == joiner
                || !self.nodes[t].is_live()
                || self.paused(t)
                || !self.net.reachable(joiner, t)
            {
                continue;
            }
            let mut req = Request::get(exchange::PATH_STATE);
            for (name, value) in &dump_request.headers {
                if name == exchange::HEADER_CLUSTER || name == exchange::HEADER_FROM {
                    req.headers.push((name.clone(), value.clone()));
                }
            }
            let req_len = req.encode(&self.nodes[t].addr.to_string()).len();
            let now = self.now;
            let resp = self.nodes[t].node.handle_http_request(now, &req);
            b.requests += 1;
            b.bytes += (req_len + resp.encode().len()) as u64;
            match codec::decode::<StateSnapshot>(&resp.body, resp.body.len()) {
                Ok(s) => b.offers += s.offers.len() as u64,
                Err(_) => b.failed += 1,
            }
        }
        self.joins.push(b);
    }

    fn deliver(&mut self, item: Item) {
        match item {
            Item::Datagram {
                to,
                from,
                bytes,
                waits_for,
            } => {
                assert!(self.hub.is_none(), "a multicast datagram in hub mode");
                if !self.nodes[to].up || waits_for.is_some_and(|l| l != self.nodes[to].life) {
                    return;
                }
                if self.paused(to) {
                    let s = &mut self.nodes[to];
                    if s.buffered < self.cfg.pause_buffer {
                        s.buffered += 1;
                        let at = s.paused_until.unwrap_or(self.now);
                        let waits_for = Some(s.life);
                        let item = Item::Datagram {
                            to,
                            from,
                            bytes,
                            waits_for,
                        };
                        self.push(at, 0, item);
                    } else {
                        self.traffic.overflowed += 1;
                    }
                    return;
                }
                self.nodes[to].buffered = 0;
                self.traffic.receptions += 1;
                let now = self.now;
                self.nodes[to].node.handle_datagram(now, from, bytes);
                self.touch(to);
            }
            Item::Request {
                from,
                life,
                id,
                to,
                bytes,
                target_life,
            } => self.serve(from, life, id, to, bytes, target_life),
            Item::Response { to, .. } | Item::ClientTimeout { to, .. } if self.paused(to) => {
                // Waits in the paused process's connection until it wakes.
                let at = self.nodes[to].paused_until.unwrap_or(self.now);
                self.push(at, 0, item);
            }
            Item::Response {
                to,
                life,
                id,
                result,
            } => {
                let Some(p) = self.finish(to, life, id) else {
                    return; // timed out already: the client closed the connection
                };
                let cost = self.traffic.exchanges.entry(p.kind).or_default();
                match &result {
                    Ok(r) => cost.response_bytes += r.encode().len() as u64,
                    Err(_) => cost.failed += 1,
                }
                if self.nodes[to].up && self.nodes[to].life == life {
                    let now = self.now;
                    self.nodes[to].node.handle_http_response(now, id, result);
                    self.touch(to);
                }
            }
            Item::ClientTimeout { to, life, id } => {
                let Some(p) = self.finish(to, life, id) else {
                    return;
                };
                self.traffic.exchanges.entry(p.kind).or_default().failed += 1;
                if self.nodes[to].up && self.nodes[to].life == life {
                    let now = self.now;
                    self.nodes[to]
                        .node
                        .handle_http_response(now, id, Err(RequestFailure::Timeout));
                    self.touch(to);
                }
            }
            Item::Pipe { conn, dir } => self.pipe_wake(conn, dir),
            Item::Op(op) => self.apply(&op),
        }
    }

    fn finish(&mut self, node: usize, life: u64, id: RequestId) -> Option<Pending> {
        let p = self.pending.remove(&(node, life, id))?;
        if let Some(ch) = p.kind.channel() {
            let key = (node, life, p.target, ch);
            if let Some(n) = self.recovering.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.recovering.remove(&key);
                }
            }
        }
        Some(p)
    }

    fn serve(
        &mut self,
        from: usize,
        life: u64,
        id: RequestId,
        to: SocketAddr,
        bytes: Bytes,
        target_life: Option<u64>,
    ) {
        let target = self.index_of(to);
        let back = |sim: &mut Sim, t: Option<usize>, result| {
            let d = match t {
                Some(t) => sim.net.p2p_delay(t, from),
                None => sim.cfg.link.delay,
            };
            let item = Item::Response {
                to: from,
                life,
                id,
                result,
            };
            sim.push(sim.now + d, 0, item);
        };
        let alive =
            |t: usize| self.nodes[t].up && target_life.is_none_or(|l| l == self.nodes[t].life);
        let Some(t) = target.filter(|&t| alive(t)) else {
            back(self, target, Err(RequestFailure::Connect("refused".into())));
            return;
        };
        if !self.net.reachable(from, t) {
            return; // no answer: the client times out
        }
        if self.paused(t) {
            let at = self.nodes[t].paused_until.unwrap_or(self.now);
            let item = Item::Request {
                from,
                life,
                id,
                to,
                bytes,
                target_life: Some(self.nodes[t].life),
            };
            self.push(at, 0, item);
            return;
        }
        let limits = self.cfg.node.http;
        let result = match http::parse_request(&bytes, &limits) {
            Ok(Some((req, _))) => {
                let now = self.now;
                let resp = self.nodes[t].node.handle_http_request(now, &req);
                self.touch(t);
                let encoded = resp.encode();
                match http::parse_response(&encoded, &limits) {
                    Ok(Some((r, _))) => Ok(r),
                    other => Err(RequestFailure::InvalidResponse(format!("{other:?}"))),
                }
            }
            other => Err(RequestFailure::InvalidResponse(format!("{other:?}"))),
        };
        back(self, Some(t), result);
    }

    fn check_bounds(&mut self, i: usize) {
        if self.checker.violations().len() >= MAX_VIOLATIONS {
            return;
        }
        let c = &self.cfg.node;
        let n = &self.nodes[i].node;
        if n.cached_bytes() > c.max_cached_bytes_total {
            let msg = format!("node {i} caches {} bytes", n.cached_bytes());
            self.checker.violation(msg);
        }
        // Per member at most one recovery per channel and a probe, plus one dump.
        let most = 3 * c.max_members + 1;
        if n.requests_in_flight() > most {
            let msg = format!("node {i} has {} requests in flight", n.requests_in_flight());
            self.checker.violation(msg);
        }
    }

    /// The bounds that take a walk over a node's tables; run at quiescence and every
    /// convergence probe.
    fn check_table_bounds(&mut self) {
        self.check_member_bounds();
        let c = self.cfg.node.clone();
        for i in self.live() {
            let n = &self.nodes[i].node;
            for (name, offers) in n.registry().view() {
                if offers.len() > c.max_members + 1 {
                    self.checker
                        .violation(format!("node {i}: {} offers of {name}", offers.len()));
                }
            }
            for m in n.members() {
                let held = n.registry().offers_of(m.key).map_or(0, |o| o.len());
                if held > c.max_offers_per_member {
                    self.checker
                        .violation(format!("node {i} holds {held} offers of {}", m.name));
                }
            }
        }
    }

    /// The member-table bounds: cheap enough for every convergence probe.
    fn check_member_bounds(&mut self) {
        let max_members = self.cfg.node.max_members;
        for i in self.live() {
            let n = &self.nodes[i].node;
            let members = n.members().count();
            if members > max_members {
                self.checker
                    .violation(format!("node {i} tracks {members} members"));
            }
            // Per member at most one recovery per channel and a probe, plus one dump.
            if n.requests_in_flight() > 3 * members + 1 {
                let msg = format!(
                    "node {i} has {} requests in flight for {members} members",
                    n.requests_in_flight()
                );
                self.checker.violation(msg);
            }
        }
    }

    /// The one-owner count after a step, over the sessions of the slots it touched.
    fn count_owners(&mut self) {
        if !self.sessions.enabled() || self.touched.is_empty() {
            return;
        }
        let focus = std::mem::take(&mut self.touched);
        self.count_owners_of(&focus);
        self.touched = focus;
        self.touched.clear();
    }

    /// The one-owner count over every session of every live slot.
    fn count_all_owners(&mut self) {
        if self.sessions.enabled() {
            let all: Vec<usize> = (0..self.nodes.len()).collect();
            self.count_owners_of(&all);
        }
    }

    fn count_owners_of(&mut self, focus: &[usize]) {
        if self.net.is_partitioned() {
            let n = self.nodes.len();
            let net = &self.net;
            let pairs = (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b)));
            self.sessions
                .cut(pairs.filter(|&(a, b)| !net.reachable(a, b)));
        }
        let at = self.elapsed();
        let live: Vec<(usize, &Node)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_live())
            .map(|(i, s)| (i, &s.node))
            .collect();
        self.sessions
            .count_owners(focus, &live, at, &mut self.checker);
    }

    // ----- running -----

    /// Runs until virtual time `until` (since the start). Stops early, recording a violation,
    /// if [`SimConfig::max_steps`] is exceeded.
    pub fn run_until(&mut self, until: Duration) {
        let end = self.start + until;
        loop {
            self.steps += 1;
            if self.steps > self.cfg.max_steps {
                let msg = format!("simulation exceeded {} steps", self.cfg.max_steps);
                self.checker.violation(msg);
                return;
            }
            let item_at = self.queue.first_key_value().map(|(k, _)| k.0);
            let timer = self.timers.first().copied();
            // Like a runtime's loop: input ready now is handled before timers already due
            // (a deadline that an input just moved into the past counts as due now).
            let take_item = match (item_at, timer) {
                (Some(a), Some((b, _))) => a <= b.max(self.now),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let at = if take_item {
                item_at.unwrap_or(end)
            } else {
                timer.map_or(end, |t| t.0)
            };
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            if take_item {
                if let Some((_, item)) = self.queue.pop_first() {
                    self.deliver(item);
                }
            } else if let Some((_, i)) = timer {
                self.fire(i);
            }
            self.count_owners();
        }
        self.now = self.now.max(end);
    }

    fn fire(&mut self, i: usize) {
        if i == HUB {
            self.fire_hub();
            return;
        }
        self.set_deadline(i, None);
        if !self.nodes[i].up || self.nodes[i].node.has_left() {
            return;
        }
        if self.paused(i) {
            self.touch(i);
            return;
        }
        let now = self.now;
        // Awake: what waited in its sockets is read first, as a runtime's loop would.
        self.read_buffered(i);
        self.nodes[i].node.handle_timeout(now);
        if let Some(end) = self.nodes[i].hub.as_mut() {
            end.link.handle_timeout(now);
        }
        self.touch(i);
        if self.nodes[i].node.poll_timeout().is_some_and(|t| t <= now) {
            let msg = format!("node {i} asks to be woken again at {now:?} after handle_timeout");
            self.checker.violation(msg);
            // Keep the run going without spinning.
            self.set_deadline(i, Some(now + Duration::from_millis(1)));
        }
        let link_due = self.nodes[i]
            .hub
            .as_ref()
            .and_then(|e| e.link.poll_timeout());
        if link_due.is_some_and(|t| t <= now) {
            let msg = format!("node {i}'s hub link asks to be woken again at {now:?}");
            self.checker.violation(msg);
            self.set_deadline(i, Some(now + Duration::from_millis(1)));
        }
    }

    /// Runs for `d` more virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.elapsed() + d;
        self.run_until(until);
    }

    // ----- convergence -----

    /// The offers every live node should see: the union of live nodes' own offers.
    pub fn expected_view(&self) -> BTreeMap<String, BTreeMap<MemberKey, String>> {
        let mut view: BTreeMap<String, BTreeMap<MemberKey, String>> = BTreeMap::new();
        for s in self.nodes.iter().filter(|s| s.is_live()) {
            let key = s.node.key();
            for (name, value) in s.node.registry().offers_of(key).into_iter().flatten() {
                view.entry(name.clone())
                    .or_default()
                    .insert(key, value.clone());
            }
        }
        view
    }

    /// Why the cluster has not converged (empty when it has): every live node joined, sees
    /// every other live node live (alive, or suspect under loss) at its current incarnation, no stopped node as live, has
    /// delivered (or skipped past, on a channel it started later) every live node's last message
    /// on both channels, and holds exactly the expected view.
    pub fn divergence(&self) -> Vec<String> {
        let mut why = Vec::new();
        self.hub_divergence(&mut why);
        let live = self.live();
        for &a in &live {
            let na = &self.nodes[a].node;
            if !na.is_joined() {
                why.push(format!("{} still joining", na.identity().name));
                continue;
            }
            for (b, sb) in self.nodes.iter().enumerate() {
                if a == b {
                    continue;
                }
                let nb = &sb.node;
                let info = na.member(nb.key());
                let seen_live = info.as_ref().is_some_and(|m| m.state.is_live());
                if sb.is_live() {
                    let synced = info.as_ref().is_some_and(|m| {
                        m.state.is_live()
                            && m.incarnation == nb.identity().incarnation
                            && Channel::ALL.iter().all(|&ch| {
                                m.sequences.iter().any(|&(c, delivered, _)| {
                                    c == ch && delivered == nb.last_sent(ch)
                                })
                            })
                    });
                    if !synced {
                        why.push(format!(
                            "{} not in sync with {}: {:?}",
                            na.identity().name,
                            nb.identity().name,
                            info.map(|m| (m.state, m.incarnation, m.sequences))
                        ));
                    }
                } else if seen_live {
                    why.push(format!(
                        "{} still sees stopped {} as live",
                        na.identity().name,
                        nb.identity().name
                    ));
                }
            }
        }
        if why.is_empty() {
            let want = self.expected_view();
            for &a in &live {
                if self.nodes[a].node.registry().view() != &want {
                    why.push(format!(
                        "{} is in sync with everyone but its view differs",
                        self.nodes[a].node.identity().name
                    ));
                }
            }
        }
        why
    }

    /// True if [`Sim::divergence`] is empty.
    pub fn converged(&self) -> bool {
        self.divergence().is_empty()
    }

    /// Runs, probing every `probe`, until converged or `limit` more virtual time passed.
    /// Returns the time from the last change to the first converged probe.
    pub fn run_until_converged(&mut self, limit: Duration, probe: Duration) -> Option<Duration> {
        let end = self.elapsed() + limit;
        loop {
            self.check_member_bounds();
            if self.converged() {
                return Some(self.now - self.last_change);
            }
            if self.elapsed() >= end || self.checker.violations().len() >= MAX_VIOLATIONS {
                return None;
            }
            let next = (self.elapsed() + probe).min(end);
            self.run_until(next);
        }
    }

    /// Quiescence: heals partitions, restarts a crashed hub, lets pauses run out, resumes slow owners, then runs until
    /// converged (within `limit`) and until no request is in flight, then requires every probe
    /// of the next two heartbeat intervals to find it converged (else converges again), and
    /// checks completeness and bounds.
    ///
    /// Loss, duplication and reordering stay as they are: convergence must not need a clean
    /// network.
    pub fn settle(&mut self, limit: Duration) -> Settled {
        if self.net.is_partitioned() {
            self.net.heal();
            self.changed();
        }
        if self.hub.is_some() && self.hub().is_none() {
            self.restart_hub();
        }
        // Pauses run out rather than being cut short: what waited in a paused node's socket
        // buffer arrives when it wakes, as it would for a real process.
        if let Some(wake) = self.nodes.iter().filter_map(|s| s.paused_until).max() {
            if wake > self.now {
                let until = wake - self.start;
                self.run_until(until);
                self.changed();
            }
        }
        for i in 0..self.nodes.len() {
            self.nodes[i].paused_until = None;
            if self.nodes[i].held.is_some() {
                self.hold_events(i, false);
            }
            self.touch(i);
        }
        let probe = self.cfg.node.heartbeat_interval / 4;
        let hb = self.cfg.node.heartbeat_interval;
        let deadline = self.elapsed() + limit;
        let mut after = None;
        let mut converged = false;
        while self.elapsed() < deadline {
            after = self.run_until_converged(deadline - self.elapsed(), probe);
            if after.is_none() {
                break;
            }
            // Let requests in flight finish (a probe sent across a partition before the heal
            // may still fail a member, which its next heartbeat readmits), then prove the
            // state stable for two heartbeat intervals; else converge again.
            while !self.pending.is_empty() && self.elapsed() < deadline {
                self.run_for(hb);
            }
            let stable_until = self.elapsed() + 2 * hb;
            let mut stable = true;
            while stable && self.elapsed() < stable_until {
                self.run_until((self.elapsed() + probe).min(stable_until));
                stable = self.converged();
            }
            if stable {
                converged = true;
                break;
            }
        }
        if !converged {
            let why = self.divergence();
            let msg = format!("no stable convergence within {limit:?}: {:?}", first(&why));
            self.checker.violation(msg);
        }
        self.check_table_bounds();
        if self.sessions.enabled() {
            // Healed and settled: both sides of a former partition count again.
            self.sessions.healed();
            self.count_all_owners();
        }
        if converged {
            let sim = &*self;
            let live: Vec<(usize, u64)> =
                sim.live().iter().map(|&i| (i, sim.nodes[i].life)).collect();
            let mut checker = std::mem::take(&mut self.checker);
            checker.check_complete(&live);
            self.checker = checker;
        }
        Settled {
            converged,
            after_last_change: after,
            violations: self.checker.violations().to_vec(),
        }
    }
}

fn first(v: &[String]) -> &[String] {
    &v[..v.len().min(3)]
}

/// Deterministic payload bytes for a publish operation.
pub fn payload_for(node: usize, salt: u64, len: usize) -> Bytes {
    let mut rng = Rng::new((node as u64) << 32 ^ salt);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}
