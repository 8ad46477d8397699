//! The simulated network: per-link loss (independent or Gilbert–Elliott bursts), duplication,
//! reordering, delay and jitter, and partitions.
//!
//! Every directed link `(from, to)` has its own random stream, derived from the simulation seed
//! and the two node indices, so changing the traffic on one link never changes what happens on
//! another: a schedule replays exactly, and the two sides of a comparison see the same losses.

use hybridcast_core::ids::{Rng, stable_hash};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Gilbert–Elliott burst loss: a two-state Markov chain stepped once per datagram.
///
/// In the *good* state a datagram is lost with `loss_good`, in the *bad* state with `loss_bad`.
/// The chain moves good → bad with probability `p` and bad → good with probability `r`, so bursts
/// last `1 / r` datagrams on average and the long-run loss rate is
/// `(r · loss_good + p · loss_bad) / (p + r)` ([`Burst::mean_loss`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    /// Probability of entering the bad state after a datagram in the good state.
    pub p: f64,
    /// Probability of leaving the bad state after a datagram in the bad state.
    pub r: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl Burst {
    /// A chain with the given long-run loss rate and mean burst length (in datagrams), losing
    /// everything in the bad state and nothing in the good one.
    ///
    /// `mean_loss` is clamped to `[0, 0.95]`, `mean_burst` to at least 1.
    pub fn with_mean(mean_loss: f64, mean_burst: f64) -> Burst {
        let loss = mean_loss.clamp(0.0, 0.95);
        let r = 1.0 / mean_burst.max(1.0);
        // Stationary share of the bad state is p / (p + r) = loss.
        let p = if loss <= 0.0 {
            0.0
        } else {
            (loss * r / (1.0 - loss)).min(1.0)
        };
        Burst {
            p,
            r,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// The long-run loss rate of the chain.
    pub fn mean_loss(&self) -> f64 {
        if self.p + self.r <= 0.0 {
            return self.loss_good;
        }
        (self.r * self.loss_good + self.p * self.loss_bad) / (self.p + self.r)
    }
}

/// How one directed link treats group datagrams. Point-to-point exchanges (TCP in a real
/// runtime) are never lost or duplicated; they only take `delay + jitter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    /// Independent loss probability per datagram (applied when `burst` is `None`).
    pub loss: f64,
    /// Burst loss; replaces `loss` when set.
    pub burst: Option<Burst>,
    /// Probability that a datagram that got through arrives twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by an extra `reorder_delay`, so later ones
    /// overtake it.
    pub reorder: f64,
    /// The extra delay of a reordered datagram.
    pub reorder_delay: Duration,
    /// Base one-way delay.
    pub delay: Duration,
    /// Uniform extra delay in `[0, jitter)`.
    pub jitter: Duration,
}

impl Default for LinkParams {
    /// A clean LAN: 1 ms delay, 1 ms jitter, nothing lost, duplicated or reordered.
    fn default() -> Self {
        LinkParams {
            loss: 0.0,
            burst: None,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
        }
    }
}

impl LinkParams {
    /// Default link with independent loss `loss`.
    pub fn lossy(loss: f64) -> Self {
        LinkParams {
            loss,
            ..LinkParams::default()
        }
    }

    /// Default link with burst loss of the given long-run rate and mean burst length.
    pub fn bursty(mean_loss: f64, mean_burst: f64) -> Self {
        LinkParams {
            burst: Some(Burst::with_mean(mean_loss, mean_burst)),
            ..LinkParams::default()
        }
    }

    /// The long-run loss rate of this link.
    pub fn mean_loss(&self) -> f64 {
        match &self.burst {
            Some(b) => b.mean_loss(),
            None => self.loss,
        }
    }
}

/// What the network did with one group datagram on one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Lost by the link's loss model.
    Lost,
    /// Delivered after each of these delays (two entries when duplicated).
    Delivered(Vec<Duration>),
}

/// One directed link's random stream and burst state.
#[derive(Debug, Clone)]
pub(crate) struct LinkState {
    rng: Rng,
    bad: bool,
}

impl LinkState {
    pub(crate) fn new(seed: u64, from: usize, to: usize, salt: &[u8]) -> Self {
        let h = stable_hash(&[
            &seed.to_be_bytes(),
            &(from as u64).to_be_bytes(),
            &(to as u64).to_be_bytes(),
            salt,
        ]);
        LinkState {
            rng: Rng::new(h),
            bad: false,
        }
    }

    /// Steps the loss model once: true if this datagram is lost.
    pub(crate) fn lose(&mut self, p: &LinkParams) -> bool {
        match &p.burst {
            Some(b) => {
                let lost = self.rng.unit() < if self.bad { b.loss_bad } else { b.loss_good };
                let flip = if self.bad { b.r } else { b.p };
                if self.rng.unit() < flip {
                    self.bad = !self.bad;
                }
                lost
            }
            None => self.rng.unit() < p.loss,
        }
    }

    /// Decides one datagram's fate on this link.
    pub(crate) fn fate(&mut self, p: &LinkParams) -> Fate {
        if self.lose(p) {
            return Fate::Lost;
        }
        let copies = if self.rng.unit() < p.duplicate { 2 } else { 1 };
        let mut delays = Vec::with_capacity(copies);
        for _ in 0..copies {
            let mut d = p.delay + p.jitter.mul_f64(self.rng.unit());
            if self.rng.unit() < p.reorder {
                d += p.reorder_delay;
            }
            delays.push(d);
        }
        Fate::Delivered(delays)
    }

    /// A point-to-point one-way delay.
    pub(crate) fn delay(&mut self, p: &LinkParams) -> Duration {
        p.delay + p.jitter.mul_f64(self.rng.unit())
    }
}

/// Link parameters (a default plus overrides), link states and partitions.
#[derive(Debug, Clone)]
pub struct Network {
    seed: u64,
    default: LinkParams,
    overrides: BTreeMap<(usize, usize), LinkParams>,
    into: BTreeMap<usize, LinkParams>,
    links: BTreeMap<(usize, usize), LinkState>,
    /// Point-to-point delays draw from streams of their own, so recovery traffic never shifts
    /// which group datagrams are lost.
    p2p: BTreeMap<(usize, usize), LinkState>,
    blocked: BTreeSet<(usize, usize)>,
}

impl Network {
    /// A network where every link follows `default`.
    pub fn new(seed: u64, default: LinkParams) -> Self {
        Network {
            seed,
            default,
            overrides: BTreeMap::new(),
            into: BTreeMap::new(),
            links: BTreeMap::new(),
            p2p: BTreeMap::new(),
            blocked: BTreeSet::new(),
        }
    }

    /// The parameters of the link `from → to`: a per-link override, else a per-receiver one,
    /// else the default.
    pub fn params(&self, from: usize, to: usize) -> LinkParams {
        self.overrides
            .get(&(from, to))
            .or_else(|| self.into.get(&to))
            .copied()
            .unwrap_or(self.default)
    }

    /// Sets the default for every link without an override.
    pub fn set_default(&mut self, p: LinkParams) {
        self.default = p;
    }

    /// The default link parameters.
    pub fn default_params(&self) -> LinkParams {
        self.default
    }

    /// Overrides one directed link.
    pub fn set_link(&mut self, from: usize, to: usize, p: LinkParams) {
        self.overrides.insert((from, to), p);
    }

    /// Overrides every link into `to` (a receiver that loses what it receives).
    pub fn set_links_into(&mut self, to: usize, p: LinkParams) {
        self.into.insert(to, p);
    }

    /// Removes every override.
    pub fn clear_overrides(&mut self) {
        self.overrides.clear();
        self.into.clear();
    }

    /// Cuts `side` off from every node of `others` (both directions, group and point-to-point).
    pub fn split(&mut self, side: &[usize], others: impl IntoIterator<Item = usize>) {
        let others: Vec<usize> = others.into_iter().filter(|o| !side.contains(o)).collect();
        for &a in side {
            for &b in &others {
                self.blocked.insert((a.min(b), a.max(b)));
            }
        }
    }

    /// Cuts the pair `a`, `b` off from each other.
    pub fn block(&mut self, a: usize, b: usize) {
        self.blocked.insert((a.min(b), a.max(b)));
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// True if any partition is in force.
    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// True if `a` and `b` can reach each other.
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        !self.blocked.contains(&(a.min(b), a.max(b)))
    }

    pub(crate) fn link(&mut self, from: usize, to: usize) -> &mut LinkState {
        let seed = self.seed;
        self.links
            .entry((from, to))
            .or_insert_with(|| LinkState::new(seed, from, to, b"group"))
    }

    /// The fate of one group datagram `from → to`.
    pub(crate) fn fate(&mut self, from: usize, to: usize) -> Fate {
        let p = self.params(from, to);
        self.link(from, to).fate(&p)
    }

    /// One point-to-point one-way delay `from → to`.
    pub(crate) fn p2p_delay(&mut self, from: usize, to: usize) -> Duration {
        let p = self.params(from, to);
        let seed = self.seed;
        self.p2p
            .entry((from, to))
            .or_insert_with(|| LinkState::new(seed, from, to, b"p2p"))
            .delay(&p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_chain_has_the_asked_mean_and_burst_length() {
        let b = Burst::with_mean(0.3, 4.0);
        assert!((b.mean_loss() - 0.3).abs() < 1e-9);
        let p = LinkParams {
            burst: Some(b),
            ..LinkParams::default()
        };
        let mut link = LinkState::new(1, 0, 1, b"t");
        let n = 200_000;
        let (mut lost, mut runs, mut prev) = (0u32, 0u32, false);
        for _ in 0..n {
            let l = link.lose(&p);
            lost += u32::from(l);
            if l && !prev {
                runs += 1;
            }
            prev = l;
        }
        let rate = f64::from(lost) / f64::from(n);
        let mean_run = f64::from(lost) / f64::from(runs);
        assert!((rate - 0.3).abs() < 0.02, "loss rate {rate}");
        assert!((mean_run - 4.0).abs() < 0.4, "mean burst {mean_run}");
    }

    #[test]
    fn links_have_independent_streams() {
        let mut a = Network::new(7, LinkParams::lossy(0.5));
        let mut b = Network::new(7, LinkParams::lossy(0.5));
        // Traffic on another link in `b` must not change link (0, 1).
        for _ in 0..100 {
            b.fate(2, 3);
        }
        let fa: Vec<Fate> = (0..100).map(|_| a.fate(0, 1)).collect();
        let fb: Vec<Fate> = (0..100).map(|_| b.fate(0, 1)).collect();
        assert_eq!(fa, fb);
        assert!(fa.contains(&Fate::Lost));
    }

    #[test]
    fn partitions_cut_both_directions_and_heal() {
        let mut n = Network::new(1, LinkParams::default());
        n.split(&[0, 1], 0..4);
        assert!(n.reachable(0, 1));
        assert!(!n.reachable(0, 2) && !n.reachable(3, 1));
        assert!(n.reachable(2, 3));
        n.heal();
        assert!(n.reachable(0, 3));
    }
}
