//! The scale scenario behind the `sim` binary and the scale tests: start a cluster where every
//! member offers many services, let a newcomer join, churn, crash and restart members, and
//! compare what the hybrid protocol spent with the two baselines.
//!
//! Phases, each run until the cluster converges (or a limit passes):
//!
//! 1. **start**: `nodes` members start together, each binding `offers` services (the same
//!    names on every member, so every name has `nodes` providers);
//! 2. **join**: a newcomer with its own `offers` joins; its state dump is compared with asking
//!    every member separately ([`JoinBaseline`]);
//! 3. **churn**: over [`Scenario::churn_window`], `churn` changes (rebinds, unbinds,
//!    publishes) on random members, one member crashes and another restarts with a new
//!    incarnation; the time to converge after the last change is the headline figure.
//!
//! Losses of the whole run are replayed under the NAK baseline ([`NakBaseline`]).

use super::{
    JoinBaseline, LinkParams, NakBaseline, Op, PathCost, Sim, SimConfig, Traffic, sim_node_config,
};
use hybridcast_core::Config;
use hybridcast_core::ids::Rng;
use std::fmt::Write as _;
use std::time::Duration;

/// A scale scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Members at the start (the newcomer comes on top).
    pub nodes: usize,
    /// Offers bound by every member.
    pub offers: usize,
    /// Link parameters for the whole run.
    pub link: LinkParams,
    /// Seed of the network, the nodes and the churn.
    pub seed: u64,
    /// Changes during the churn phase.
    pub churn: usize,
    /// Length of the churn phase.
    pub churn_window: Duration,
    /// Crash one member and restart another during churn.
    pub faults: bool,
    /// Longest simulated time each phase may take to converge.
    pub limit: Duration,
    /// Node configuration.
    pub node: Config,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            nodes: 8,
            offers: 50,
            link: LinkParams::default(),
            seed: 1,
            churn: 40,
            churn_window: Duration::from_secs(2),
            faults: true,
            limit: Duration::from_secs(60),
            node: sim_node_config(),
        }
    }
}

/// One phase's outcome.
#[derive(Debug, Clone)]
pub struct Phase {
    /// `start`, `join` or `churn`.
    pub name: &'static str,
    /// Whether the cluster converged within the limit.
    pub converged: bool,
    /// Simulated time from the phase's last change to convergence.
    pub after_last_change: Option<Duration>,
    /// Traffic during the phase.
    pub traffic: Traffic,
}

/// Everything a scenario run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// Phases in order.
    pub phases: Vec<Phase>,
    /// The join baseline at the newcomer's (first) dump request.
    pub join_baseline: Option<JoinBaseline>,
    /// Recovery requests the newcomer itself made before the join phase converged (zero when
    /// the dump alone brought it up to date).
    pub newcomer_recoveries: u64,
    /// The NAK baseline over the whole run's losses.
    pub nak: NakBaseline,
    /// Whole-run traffic.
    pub traffic: Traffic,
    /// Invariant violations (empty on success), including settling at the end.
    pub violations: Vec<String>,
    /// Log messages delivered and reported missing.
    pub messages: (u64, u64),
    /// Simulated time of the run.
    pub simulated: Duration,
    /// Simulation steps.
    pub steps: u64,
}

impl Report {
    /// True if every phase converged and no invariant was violated.
    pub fn converged(&self) -> bool {
        self.phases.iter().all(|p| p.converged) && self.violations.is_empty()
    }

    /// The phase called `name`.
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// The hybrid join's point-to-point cost: the newcomer's dump request(s).
    pub fn join_cost(&self) -> PathCost {
        self.phase("join")
            .map(|p| p.traffic.cost(super::Exchange::Dump))
            .unwrap_or_default()
    }

    /// The report as text, ending with `BENCH` lines and `CONVERGED` or `NOT CONVERGED`.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let s = &self.scenario;
        let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1e3);
        let _ = writeln!(
            o,
            "scenario: {} members x {} offers, loss {:.2} ({}), seed {}, {} churn changes{}",
            s.nodes,
            s.offers,
            s.link.mean_loss(),
            if s.link.burst.is_some() {
                "bursts"
            } else {
                "independent"
            },
            s.seed,
            s.churn,
            if s.faults {
                ", one crash, one restart"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "simulated {:.1} s in {} steps; {} log messages delivered, {} reported missing",
            self.simulated.as_secs_f64(),
            self.steps,
            self.messages.0,
            self.messages.1
        );
        let _ = writeln!(
            o,
            "\nphase   converged  after last change  datagrams  p2p requests"
        );
        for p in &self.phases {
            let reqs: u64 = p.traffic.exchanges.values().map(|c| c.requests).sum();
            let _ = writeln!(
                o,
                "{:<7} {:<10} {:>14.0} ms  {:>9}  {:>12}",
                p.name,
                p.converged,
                ms(p.after_last_change),
                p.traffic.group_datagrams,
                reqs
            );
        }
        let t = &self.traffic;
        let _ = writeln!(
            o,
            "\ngroup datagrams sent {}, copies received {}, lost {}, duplicated {}",
            t.group_datagrams, t.receptions, t.lost, t.duplicated
        );
        for (k, c) in &t.exchanges {
            let _ = writeln!(
                o,
                "  {:?}: {} requests ({} failed), {} B out, {} B back",
                k, c.requests, c.failed, c.request_bytes, c.response_bytes
            );
        }
        let join = self.join_cost();
        let rec = t.recovery();
        let nak = &self.nak;
        let _ = writeln!(o, "\nbaseline comparison");
        let row = |o: &mut String, c: [&dyn std::fmt::Display; 4]| {
            let _ = writeln!(o, "  {:<38} {:>12} {:>12} {:>14}", c[0], c[1], c[2], c[3]);
        };
        row(&mut o, [&"", &"p2p requests", &"multicast", &"bytes"]);
        if let Some(b) = &self.join_baseline {
            let hybrid = "join, hybrid (one state dump)";
            row(&mut o, [&hybrid, &join.requests, &0, &join.bytes()]);
            row(
                &mut o,
                [
                    &"join, baseline (ask every member)",
                    &b.requests,
                    &0,
                    &b.bytes,
                ],
            );
        }
        let hybrid = "recovery, hybrid (all state/log requests)";
        row(&mut o, [&hybrid, &rec.requests, &0, &rec.bytes()]);
        let baseline = "loss recovery, baseline (NAK + resend)";
        row(
            &mut o,
            [&baseline, &0, &nak.multicast_datagrams(), &nak.bytes_sent],
        );
        let _ = writeln!(
            o,
            "  lost (datagram, receiver) pairs: {} ({} left unrepaired by the baseline after its \
             round limit); the baseline's NAKs and resends reach {} member copies ({} B), {} of \
             them resends to members that had the datagram; the hybrid's answers reach only the \
             asker, and its count includes recoveries after crashes, restarts and joins",
            nak.losses,
            nak.unrepaired,
            nak.receptions,
            nak.bytes_received,
            nak.redundant_receptions
        );
        for v in &self.violations {
            let _ = writeln!(o, "VIOLATION {v}");
        }
        let _ = writeln!(o);
        let bench = |o: &mut String, name: &str, v: f64, unit: &str| {
            let _ = writeln!(o, "BENCH {name} {v} {unit}");
        };
        bench(&mut o, "sim_join_requests", join.requests as f64, "count");
        if let Some(b) = &self.join_baseline {
            bench(
                &mut o,
                "sim_join_baseline_requests",
                b.requests as f64,
                "count",
            );
            bench(&mut o, "sim_join_bytes", join.bytes() as f64, "bytes");
            bench(&mut o, "sim_join_baseline_bytes", b.bytes as f64, "bytes");
        }
        for p in &self.phases {
            let name = format!("sim_converge_{}", p.name);
            bench(&mut o, &name, ms(p.after_last_change).round(), "ms");
        }
        let last = self.phases.last().and_then(|p| p.after_last_change);
        bench(
            &mut o,
            "sim_converge_after_last_change",
            ms(last).round(),
            "ms",
        );
        bench(
            &mut o,
            "sim_recovery_requests",
            rec.requests as f64,
            "count",
        );
        bench(&mut o, "sim_recovery_bytes", rec.bytes() as f64, "bytes");
        bench(&mut o, "sim_recovery_multicast", 0.0, "count");
        bench(
            &mut o,
            "sim_nak_multicast",
            nak.multicast_datagrams() as f64,
            "count",
        );
        bench(&mut o, "sim_nak_bytes", nak.bytes_sent as f64, "bytes");
        bench(&mut o, "sim_nak_receptions", nak.receptions as f64, "count");
        let _ = writeln!(
            o,
            "{}",
            if self.converged() {
                "CONVERGED"
            } else {
                "NOT CONVERGED"
            }
        );
        o
    }
}

impl Scenario {
    /// Runs the scenario.
    pub fn run(&self) -> Report {
        let mut sim = Sim::new(SimConfig {
            seed: self.seed,
            node: self.node.clone(),
            link: self.link,
            trace_losses: true,
            join_baseline: true,
            ..SimConfig::default()
        });
        let probe = Duration::from_millis(10);
        let mut phases = Vec::new();
        let mut rng = Rng::new(self.seed ^ 0xc4a2);

        // 1. start
        let before = sim.traffic().clone();
        for i in 0..self.nodes {
            let n = sim.add(&format!("member-{i}"));
            self.bind_all(&mut sim, n);
        }
        phases.push(self.phase(&mut sim, "start", &before, probe));

        // 2. join
        let before = sim.traffic().clone();
        let joiner = sim.add("newcomer");
        self.bind_all(&mut sim, joiner);
        let baselines_before = sim.join_baselines().len();
        phases.push(self.phase(&mut sim, "join", &before, probe));
        let newcomer_recoveries = sim.node(joiner).stats().recoveries_requested;
        let join_baseline = sim
            .join_baselines()
            .get(baselines_before..)
            .and_then(|b| b.iter().find(|b| b.joiner == joiner))
            .cloned();

        // 3. churn
        let before = sim.traffic().clone();
        let start = sim.elapsed();
        let members = sim.len();
        let step = self.churn_window / (self.churn as u32 + 1);
        for k in 0..self.churn {
            let at = start + step * (k as u32 + 1);
            let node = rng.below(members as u64) as usize;
            let name = format!("svc-{}", rng.below(self.offers.max(1) as u64));
            let op = match rng.below(3) {
                0 => Op::Unbind { node, name },
                1 => Op::Bind {
                    node,
                    name,
                    value: format!("{node}:changed-{k}"),
                },
                _ => Op::Publish {
                    node,
                    topic: "invalidate".into(),
                    len: 100 + rng.below(3000) as usize,
                    count: 1,
                },
            };
            sim.schedule(at, op);
        }
        if self.faults && members >= 3 {
            sim.schedule(start + self.churn_window / 2, Op::Crash(1));
            sim.schedule(start + self.churn_window, Op::Restart(2));
        }
        sim.run_until(start + self.churn_window);
        phases.push(self.phase(&mut sim, "churn", &before, probe));

        let settled = sim.settle(self.limit);
        let mut violations = settled.violations;
        if !settled.converged && violations.is_empty() {
            violations.push("did not settle".into());
        }
        Report {
            scenario: self.clone(),
            phases,
            join_baseline,
            newcomer_recoveries,
            nak: sim.nak_baseline(),
            traffic: sim.traffic().clone(),
            violations,
            messages: (sim.checker().messages, sim.checker().gap_messages),
            simulated: sim.elapsed(),
            steps: sim.steps(),
        }
    }

    fn bind_all(&self, sim: &mut Sim, n: usize) {
        // One command batch, so the offers go out as one announcement.
        let refused: Vec<String> = sim.with(n, |node| {
            (0..self.offers)
                .filter_map(|k| node.bind(&format!("svc-{k}"), &format!("{n}:{k}")).err())
                .map(|e| e.to_string())
                .collect()
        });
        if let Some(e) = refused.first() {
            let msg = format!("{} binds refused on {n}, first: {e}", refused.len());
            sim.checker_mut().violation(msg);
        }
    }

    fn phase(&self, sim: &mut Sim, name: &'static str, before: &Traffic, probe: Duration) -> Phase {
        let after = sim.run_until_converged(self.limit, probe);
        Phase {
            name,
            converged: after.is_some(),
            after_last_change: after,
            traffic: sim.traffic().since(before),
        }
    }
}
