//! A cluster of five core nodes on a simulated network (virtual time, seeded loss), showing
//! out-of-sync detection and point-to-point recovery, failure detection, and a join with one
//! state dump. Exits 0 once every view converged, 1 otherwise.
//!
//! ```text
//! cargo run --release -p hybridcast-core --example cluster [-- --loss 0.2 --seed 7]
//! ```
//!
//! It reuses the in-crate test harness (`core/tests/harness`): every point-to-point exchange
//! goes through real HTTP bytes, only the sockets and the clock are simulated.

#[path = "../tests/harness/mod.rs"]
mod harness;

use harness::Cluster;
use hybridcast_core::{Event, MemberState};
use std::process::ExitCode;
use std::time::Duration;

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn describe(e: &Event) -> Option<String> {
    Some(match e {
        Event::Joined { via, members } => format!(
            "joined: {members} members, state dump from {}",
            via.as_ref()
                .map_or("nobody (alone)".to_owned(), |p| p.name.clone())
        ),
        Event::MemberJoined { peer, .. } => format!("member {} joined", peer.name),
        Event::MemberSuspect { peer } => format!("member {} is suspect, probing", peer.name),
        Event::MemberAlive { peer } => format!("member {} answered: alive", peer.name),
        Event::MemberFailed { peer } => format!("member {} FAILED (probe failed)", peer.name),
        Event::MemberLeft { peer } => format!("member {} left", peer.name),
        Event::Gap { range, .. } => format!("gap {range:?}"),
        _ => return None,
    })
}

fn print_events(c: &mut Cluster, seen: &mut Vec<usize>) {
    for (i, n) in c.nodes.iter().enumerate() {
        if seen.len() <= i {
            seen.push(0);
        }
        for (e, at) in n.events[seen[i]..].iter().zip(&n.event_times[seen[i]..]) {
            if let Some(d) = describe(e) {
                println!(
                    "  [{:>7.3}s] {:<8} {d}",
                    at.as_secs_f64(),
                    n.node.identity().name
                );
            }
        }
        seen[i] = n.events.len();
    }
}

fn main() -> ExitCode {
    let loss = arg("--loss", 0.2);
    let seed = arg("--seed", 7.0) as u64;
    let mut c = Cluster::new(seed);
    let mut seen = Vec::new();
    println!(
        "hybridcast core demo: 5 members, member web/4 drops {:.0}% of received datagrams",
        loss * 100.0
    );
    for i in 0..5 {
        c.add(&format!("web/{i}"));
    }
    c.drop = Box::new(move |_, to, _, rng| to == 4 && rng.unit() < loss);

    println!("\n== start and join");
    c.run_for(Duration::from_secs(2));
    print_events(&mut c, &mut seen);

    println!("\n== every member binds 40 services, in 4 ticks");
    for tick in 0..4 {
        for i in 0..5 {
            c.with(i, |n| {
                for k in 0..10 {
                    n.bind(
                        &format!("svc-{}", tick * 10 + k),
                        &format!("10.0.0.{i}:{}", 8000 + k),
                    )
                    .expect("bind");
                }
            });
        }
        c.run_for(Duration::from_millis(100));
    }
    c.run_for(Duration::from_secs(3));
    print_events(&mut c, &mut seen);
    let s4 = c.nodes[4].node.stats();
    println!(
        "  web/4 recovered point-to-point: {} requests, {} served elsewhere, view converged: {}",
        s4.recoveries_requested,
        c.nodes
            .iter()
            .map(|n| n.node.stats().recoveries_served)
            .sum::<u64>(),
        c.converged()
    );

    println!("\n== web/2 crashes");
    let crash_at = c.elapsed();
    c.crash(2);
    c.run_for(Duration::from_secs(3));
    print_events(&mut c, &mut seen);
    let key2 = c.nodes[2].node.key();
    let detected = c.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::MemberFailed { peer } if peer.key == key2));
    println!(
        "  detected by web/0: {detected} (crash at {:.1}s)",
        crash_at.as_secs_f64()
    );

    println!("\n== web/5 joins");
    let j = c.add("web/5");
    c.run_for(Duration::from_secs(3));
    print_events(&mut c, &mut seen);
    let sj = c.nodes[j].node.stats();
    println!(
        "  web/5: {} state-dump request(s), {} recovery requests, {} offers in its view",
        sj.dump_requests,
        sj.recoveries_requested,
        c.nodes[j].node.registry().len()
    );

    println!("\n== final table");
    println!(
        "  {:<8} {:>7} {:>7} {:>7} {:>9} {:>9} {:>6}",
        "member", "offers", "alive", "failed", "dgrams_in", "dropped", "p2p"
    );
    for n in c.nodes.iter().filter(|n| n.up) {
        let s = n.node.stats();
        let dropped = s.drops.cache_full + s.drops.malformed + s.drops.not_hybridcast;
        println!(
            "  {:<8} {:>7} {:>7} {:>7} {:>9} {:>9} {:>6}",
            n.node.identity().name,
            n.node.registry().len(),
            n.node
                .members()
                .filter(|m| m.state == MemberState::Alive)
                .count(),
            n.node
                .members()
                .filter(|m| m.state == MemberState::Failed)
                .count(),
            s.datagrams_in,
            dropped,
            s.recoveries_requested + s.dump_requests + s.probes_sent,
        );
    }
    if c.converged() && detected && sj.dump_requests == 1 {
        println!("\nCONVERGED");
        ExitCode::SUCCESS
    } else {
        println!("\nNOT CONVERGED (divergent: {:?})", c.divergent());
        ExitCode::FAILURE
    }
}
