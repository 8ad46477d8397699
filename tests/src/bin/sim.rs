//! `sim`: runs the scale scenario on the deterministic simulator and prints a report ending
//! with `BENCH` lines and `CONVERGED` or `NOT CONVERGED` (exit status 0 or 1).
//!
//! ```text
//! cargo run -p hybridcast-tests --release --bin sim -- --nodes 32 --offers 1000 --loss 0.2 --seed 7
//! ```

use clap::Parser;
use hybridcast_tests::sim::{LinkParams, Scenario};
use std::process::ExitCode;
use std::time::Duration;

/// Simulate a hybridcast cluster: start, a join, churn with a crash and a restart, under loss;
/// compare with the NAK and ask-every-member baselines.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Members at the start (a newcomer joins on top).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(2..=1000))]
    nodes: u64,
    /// Offers bound by every member.
    #[arg(long, default_value_t = 1000)]
    offers: usize,
    /// Long-run loss rate of every link, 0 to 0.9.
    #[arg(long, default_value_t = 0.2, value_parser = probability)]
    loss: f64,
    /// Mean burst length in datagrams: Gilbert–Elliott burst loss instead of independent loss.
    #[arg(long)]
    burst: Option<f64>,
    /// Probability that a datagram is duplicated.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    duplicate: f64,
    /// Probability that a datagram is held back 5 ms (reordered).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    reorder: f64,
    /// Seed of everything random.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Changes (rebinds, unbinds, publishes) during the churn phase.
    #[arg(long, default_value_t = 100)]
    churn: usize,
    /// No crash and restart during churn.
    #[arg(long)]
    no_faults: bool,
    /// Longest simulated time, in seconds, each phase may take to converge.
    #[arg(long, default_value_t = 120)]
    limit: u64,
}

fn probability(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=0.9).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not within 0..=0.9"))
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Some(b) = a.burst {
        if !(b >= 1.0 && b.is_finite()) {
            eprintln!("error: --burst must be a mean burst length of at least 1 datagram");
            return ExitCode::from(2);
        }
    }
    if let Some(b) = a.burst {
        // A chain that loses everything in bursts of mean length b reaches at most b/(b+1).
        let most = b / (b + 1.0);
        if a.loss > most {
            eprintln!(
                "error: with --burst {b} the long-run loss can be at most {most:.3}; \
                 raise --burst or lower --loss"
            );
            return ExitCode::from(2);
        }
    }
    let mut link = match a.burst {
        Some(b) => LinkParams::bursty(a.loss, b),
        None => LinkParams::lossy(a.loss),
    };
    link.duplicate = a.duplicate;
    link.reorder = a.reorder;
    let scenario = Scenario {
        nodes: a.nodes as usize,
        offers: a.offers,
        link,
        seed: a.seed,
        churn: a.churn,
        faults: !a.no_faults,
        limit: Duration::from_secs(a.limit),
        ..Scenario::default()
    };
    let report = scenario.run();
    print!("{}", report.render());
    if report.converged() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
