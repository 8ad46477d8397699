//! Fault schedules: operations at virtual times, generated from one seed.
//!
//! [`Schedule::generate`] derives everything — cluster size, link parameters, node
//! configuration and the timed operations (binds, unbinds, publishes, crashes, restarts,
//! joins, leaves, partitions, pauses, slow owners, link changes) — from a single `u64`, so a
//! failing case is replayed exactly by its seed. A quarter of the seeds run in hub mode
//! ([`Schedule::into_hub`]), with the hub's own faults (crashes, restarts, members cut off
//! from it alone) on top; `HYBRIDCAST_SIM_TRANSPORT=hub` runs every seed in hub mode. [`check_schedules`] draws seeds with
//! quickcheck, runs each schedule and settles it; a failure names its seed, and
//! `HYBRIDCAST_SIM_SEED=<seed>` makes [`check_schedules`] run just that one.

use super::{HubParams, LinkParams, Settled, Sim, SimConfig, Traffic, Transport, sim_node_config};
use hybridcast_core::Config;
use hybridcast_core::hub::frame;
use hybridcast_core::ids::{Rng, stable_hash};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use std::time::Duration;

/// One scheduled operation. Operations on slots that do not exist (yet) or are not live are
/// ignored.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `Node::bind` on a slot.
    Bind {
        /// Slot.
        node: usize,
        /// Offer name.
        name: String,
        /// Offer value.
        value: String,
    },
    /// `Node::unbind` on a slot.
    Unbind {
        /// Slot.
        node: usize,
        /// Offer name.
        name: String,
    },
    /// `count` calls of `Node::publish`, each of `len` deterministic bytes, on a slot.
    Publish {
        /// Slot.
        node: usize,
        /// Topic.
        topic: String,
        /// Payload length.
        len: usize,
        /// Messages published back to back.
        count: usize,
    },
    /// Crash a slot.
    Crash(usize),
    /// Restart a slot with a new incarnation.
    Restart(usize),
    /// Graceful leave.
    Leave(usize),
    /// A fresh node joins (a new slot).
    Join(String),
    /// Cut these slots off from all others (and from the hub, in hub mode).
    Split(Vec<usize>),
    /// Remove every partition.
    Heal,
    /// Freeze a slot for a while.
    Pause {
        /// Slot.
        node: usize,
        /// How long.
        for_: Duration,
    },
    /// Start or stop leaving a slot's events undrained.
    HoldEvents {
        /// Slot.
        node: usize,
        /// Whether events are held.
        on: bool,
    },
    /// Change the default link parameters.
    Link(LinkParams),
    /// Hub mode: cut these slots off from the hub only (they still reach each other).
    HubCut(Vec<usize>),
    /// Hub mode: the hub crashes (its connections close, its state is lost).
    HubCrash,
    /// Hub mode: a fresh hub process starts (crashing a running one first).
    HubRestart,
    /// Hub mode: a slot's connection to the hub is reset (by a middlebox, say).
    HubReset(usize),
}

/// A generated fault schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The seed everything was derived from.
    pub seed: u64,
    /// Nodes started at time zero.
    pub nodes: usize,
    /// Default link parameters at the start.
    pub link: LinkParams,
    /// Node configuration: the simulator's, with some bounds and timers drawn small so their
    /// edge paths run (short retention forces `Gap`s, small caches force evictions, a short
    /// event queue backlogs slow owners, a short tombstone TTL forgets departed members).
    pub node: Config,
    /// Operations with their virtual times, ascending.
    pub ops: Vec<(Duration, Op)>,
    /// Virtual time the schedule runs before settling.
    pub duration: Duration,
    /// How long settling may take.
    pub settle_limit: Duration,
    /// Multicast or hub mode.
    pub transport: Transport,
}

/// What running a schedule showed.
#[derive(Debug, Clone)]
pub struct ScheduleOutcome {
    /// The schedule's seed.
    pub seed: u64,
    /// Whether it ran in hub mode.
    pub hub: bool,
    /// The quiescence check.
    pub settled: Settled,
    /// Traffic of the run.
    pub traffic: Traffic,
    /// Log messages delivered / reported missing in all.
    pub messages: u64,
    /// Messages reported missing.
    pub gap_messages: u64,
    /// Virtual time at the end of the run.
    pub elapsed: Duration,
    /// Simulation steps taken.
    pub steps: u64,
}

const NAMES: usize = 8;
const MAX_SLOTS: usize = 14;

impl Schedule {
    /// The schedule of `seed`: in hub mode for a quarter of the seeds (drawn from a stream of
    /// its own, so a multicast schedule is the same as [`Schedule::multicast`]'s).
    pub fn generate(seed: u64) -> Schedule {
        let s = Schedule::multicast(seed);
        if Rng::new(stable_hash(&[b"hub?", &seed.to_be_bytes()])).below(4) == 0 {
            s.into_hub()
        } else {
            s
        }
    }

    /// The multicast schedule of `seed`.
    pub fn multicast(seed: u64) -> Schedule {
        let mut r = Rng::new(seed);
        let nodes = 3 + r.below(8) as usize;
        let loss = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5][r.below(6) as usize];
        let mut link = if r.below(3) == 0 {
            LinkParams::bursty(loss, 2.0 + r.below(5) as f64)
        } else {
            LinkParams::lossy(loss)
        };
        link.duplicate = if r.below(3) == 0 { 0.05 } else { 0.0 };
        link.reorder = if r.below(3) == 0 { 0.1 } else { 0.0 };
        link.jitter = Duration::from_millis(1 + r.below(5));
        let mut node = sim_node_config();
        let mut one_in = |n: u64| r.below(n) == 0;
        if one_in(4) {
            node.log_retention_messages = 4;
        }
        if one_in(5) {
            node.log_retention_bytes = 16 * 1024;
        }
        if one_in(4) {
            node.max_cached_messages_per_sender = 4;
        }
        if one_in(4) {
            node.max_cached_bytes_per_sender = 64 * 1024;
        }
        if one_in(4) {
            node.max_queued_events = 8;
        }
        if one_in(4) {
            node.tombstone_ttl = Duration::from_secs(2);
        }
        if one_in(5) {
            node.suspect_after_intervals = 1;
        }
        if one_in(5) {
            node.reorder_grace = Duration::ZERO;
        }
        if one_in(5) {
            node.max_cached_bytes_total = 256 * 1024;
            node.max_cached_bytes_per_sender = node.max_cached_bytes_per_sender.min(128 * 1024);
        }
        if one_in(4) {
            node.max_datagram_size = 512;
        }
        if let Err(e) = node.validate() {
            panic!("schedule {seed} drew an invalid node config: {e}");
        }
        let duration = Duration::from_millis(8_000 + r.below(12_000));
        let count = 10 + r.below(50) as usize;
        let mut slots = nodes;
        let mut ops = Vec::with_capacity(count + 8);
        for _ in 0..count {
            let at = Duration::from_millis(500 + r.below(duration.as_millis() as u64 - 500));
            let node = r.below(slots as u64) as usize;
            let name = format!("svc-{}", r.below(NAMES as u64));
            let op = match r.below(100) {
                0..30 => Op::Bind {
                    node,
                    name,
                    value: format!("v{}", r.below(1000)),
                },
                30..40 => Op::Unbind { node, name },
                40..65 => Op::Publish {
                    node,
                    topic: format!("t{}", r.below(3)),
                    len: [0, 10, 300, 3000, 20_000, 100_000][r.below(6) as usize],
                    count: [1, 1, 1, 3, 20][r.below(5) as usize],
                },
                65..70 => Op::Crash(node),
                70..76 => Op::Restart(node),
                76..78 => Op::Leave(node),
                78..82 if slots < MAX_SLOTS => {
                    slots += 1;
                    Op::Join(format!("joiner-{slots}"))
                }
                78..82 => Op::Restart(node),
                82..87 => {
                    let k = 1 + r.below((slots as u64 / 2).max(1)) as usize;
                    let side = (0..k).map(|_| r.below(slots as u64) as usize).collect();
                    Op::Split(side)
                }
                87..91 => Op::Heal,
                91..96 => Op::Pause {
                    node,
                    for_: Duration::from_millis(100 + r.below(4_000)),
                },
                96..98 => {
                    let until = at + Duration::from_millis(200 + r.below(3_000));
                    ops.push((until, Op::HoldEvents { node, on: false }));
                    Op::HoldEvents { node, on: true }
                }
                _ => {
                    let mut l = link;
                    l.loss = [0.0, 0.1, 0.4][r.below(3) as usize];
                    l.burst = None;
                    Op::Link(l)
                }
            };
            ops.push((at, op));
        }
        ops.sort_by_key(|(at, _)| *at);
        Schedule {
            seed,
            nodes,
            link,
            node,
            ops,
            duration,
            settle_limit: Duration::from_secs(120),
            transport: Transport::Multicast,
        }
    }

    /// The same schedule in hub mode, with the hub's faults added (from a random stream of
    /// their own): up to two hub crashes, most followed by a restart within 3 s (settling
    /// restarts the others), up to two groups of members cut off from the hub alone, up to two
    /// connections reset, and
    /// sometimes a small hub queue (slow consumers), small windows or loss on the connections
    /// (as retransmissions).
    pub fn into_hub(mut self) -> Schedule {
        let mut r = Rng::new(stable_hash(&[b"hub", &self.seed.to_be_bytes()]));
        let mut p = HubParams::sim();
        if r.below(4) == 0 {
            // The least the hub accepts: two of the largest frames.
            p.hub.max_queued_bytes = 2 * (frame::LEN_PREFIX + frame::MAX_FRAME_LEN);
        }
        if r.below(4) == 0 {
            p.window = 16 * 1024;
        }
        if r.below(3) == 0 {
            // Loss costs retransmissions on the connections too; slow ones (a TCP timeout
            // rather than a fast retransmit) only where loss is light enough for TCP to work.
            p.stream_loss = true;
            if self.link.burst.is_none() && self.link.loss <= 0.1 && r.below(2) == 0 {
                p.retransmit = Duration::from_millis(200);
            }
        }
        let span = self.duration.as_millis() as u64 - 500;
        let slots = self.nodes
            + self
                .ops
                .iter()
                .filter(|(_, op)| matches!(op, Op::Join(_)))
                .count();
        for _ in 0..r.below(3) {
            let at = Duration::from_millis(500 + r.below(span));
            self.ops.push((at, Op::HubCrash));
            if r.below(4) != 0 {
                let back = at + Duration::from_millis(100 + r.below(3_000));
                self.ops.push((back, Op::HubRestart));
            }
        }
        for _ in 0..r.below(3) {
            let at = Duration::from_millis(500 + r.below(span));
            let k = 1 + r.below((slots as u64 / 2).max(1)) as usize;
            let side = (0..k).map(|_| r.below(slots as u64) as usize).collect();
            self.ops.push((at, Op::HubCut(side)));
        }
        for _ in 0..r.below(3) {
            let at = Duration::from_millis(500 + r.below(span));
            self.ops
                .push((at, Op::HubReset(r.below(slots as u64) as usize)));
        }
        self.ops.sort_by_key(|(at, _)| *at);
        self.transport = Transport::hub(p);
        self
    }

    /// The simulation configuration this schedule runs with.
    pub fn sim_config(&self) -> SimConfig {
        SimConfig {
            seed: self.seed,
            node: self.node.clone(),
            link: self.link,
            transport: self.transport.clone(),
            ..SimConfig::default()
        }
    }

    /// Runs the schedule, then settles.
    pub fn run(&self) -> ScheduleOutcome {
        let mut sim = Sim::new(self.sim_config());
        for i in 0..self.nodes {
            sim.add(&format!("node-{i}"));
        }
        for (at, op) in &self.ops {
            sim.schedule(*at, op.clone());
        }
        sim.run_until(self.duration);
        let settled = sim.settle(self.settle_limit);
        ScheduleOutcome {
            seed: self.seed,
            hub: matches!(self.transport, Transport::Hub(_)),
            settled,
            traffic: sim.traffic().clone(),
            messages: sim.checker().messages,
            gap_messages: sim.checker().gap_messages,
            elapsed: sim.elapsed(),
            steps: sim.steps(),
        }
    }
}

/// The schedule of `seed`, in hub mode whatever the seed draws if
/// `HYBRIDCAST_SIM_TRANSPORT=hub`.
fn schedule_of(seed: u64) -> Schedule {
    match std::env::var("HYBRIDCAST_SIM_TRANSPORT").as_deref() {
        Ok("hub") => Schedule::multicast(seed).into_hub(),
        Ok("multicast") => Schedule::multicast(seed),
        _ => Schedule::generate(seed),
    }
}

/// A schedule seed, drawn by quickcheck (not shrunk: the seed is the whole case).
#[derive(Debug, Clone, Copy)]
struct Seed(u64);

impl Arbitrary for Seed {
    fn arbitrary(g: &mut Gen) -> Self {
        // quickcheck draws 0, 1 and u64::MAX a tenth of the time; hashing four draws makes
        // repeated seeds rare.
        let parts: [u64; 4] = Arbitrary::arbitrary(g);
        let bytes: Vec<u8> = parts.iter().flat_map(|p| p.to_be_bytes()).collect();
        Seed(stable_hash(&[&bytes]))
    }
}

/// The seed in `HYBRIDCAST_SIM_SEED`, if set (decimal or `0x` hex).
pub fn replay_seed() -> Option<u64> {
    let s = std::env::var("HYBRIDCAST_SIM_SEED").ok()?;
    let s = s.trim();
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    match parsed {
        Ok(v) => Some(v),
        Err(e) => panic!("HYBRIDCAST_SIM_SEED={s:?} is not a u64: {e}"),
    }
}

fn verdict(o: &ScheduleOutcome) -> Result<(), String> {
    if o.settled.converged && o.settled.violations.is_empty() {
        return Ok(());
    }
    Err(format!(
        "schedule seed {seed} failed ({} mode, converged: {}); replay with \
         HYBRIDCAST_SIM_SEED={seed}\nviolations: {:#?}",
        if o.hub { "hub" } else { "multicast" },
        o.settled.converged,
        o.settled.violations,
        seed = o.seed,
    ))
}

/// Runs `cases` quickcheck-drawn schedules (or `QUICKCHECK_TESTS` if set), or only the one in
/// `HYBRIDCAST_SIM_SEED`; panics with the failing seed.
pub fn check_schedules(cases: u64) {
    if let Some(seed) = replay_seed() {
        let o = schedule_of(seed).run();
        eprintln!(
            "replayed seed {seed} ({} mode): converged {} ({:?} after the last change), \
             {} messages, {} missing, {:?} simulated in {} steps, traffic {:?}",
            if o.hub { "hub" } else { "multicast" },
            o.settled.converged,
            o.settled.after_last_change,
            o.messages,
            o.gap_messages,
            o.elapsed,
            o.steps,
            o.traffic
        );
        if let Err(e) = verdict(&o) {
            panic!("{e}");
        }
        return;
    }
    fn prop(seed: Seed) -> TestResult {
        match verdict(&schedule_of(seed.0).run()) {
            Ok(()) => TestResult::passed(),
            Err(e) => TestResult::error(e),
        }
    }
    let mut qc = QuickCheck::new();
    if std::env::var_os("QUICKCHECK_TESTS").is_none() {
        qc = qc.tests(cases);
    }
    qc.quickcheck(prop as fn(Seed) -> TestResult);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_determines_the_schedule() {
        let a = Schedule::generate(42);
        let b = Schedule::generate(42);
        assert_eq!(a.ops, b.ops);
        assert_eq!(a.link, b.link);
        assert_ne!(a.ops, Schedule::generate(43).ops);
    }
}
