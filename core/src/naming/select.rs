//! Smart-stub selection over a service pool.
//!
//! Providers in quarantine (reported failed within `provider_quarantine`) and members not alive
//! are skipped; if every provider is skipped, selection returns nothing rather than a provider
//! known to be bad.

use super::Provider;
use crate::ids::{MemberKey, Rng, stable_hash};
use std::collections::BTreeMap;
use std::time::Instant;

/// Round-robin positions remembered before they are reset.
const MAX_POSITIONS: usize = 4096;

/// How to pick one provider from a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy<'a> {
    /// Each call takes the next provider of the pool, in member-key order.
    RoundRobin,
    /// A uniformly random provider (from the node's seeded generator).
    Random,
    /// Random, weighted by `1 / (1 + load)` from the providers' heartbeats.
    WeightByLoad,
    /// This node if it is a provider, otherwise round-robin.
    PreferLocal,
    /// The same provider for the same key while the pool is unchanged, and a minimal reshuffle
    /// when it changes (rendezvous hashing).
    Affinity(&'a [u8]),
}

/// Per-node selection state: round-robin positions and quarantined providers.
#[derive(Debug, Default)]
pub(crate) struct Selector {
    positions: BTreeMap<String, u64>,
    quarantine: BTreeMap<MemberKey, Instant>,
}

impl Selector {
    /// Skips `member` until `until`.
    pub(crate) fn quarantine(&mut self, member: MemberKey, until: Instant, now: Instant) {
        self.quarantine.retain(|_, u| *u > now);
        self.quarantine.insert(member, until);
    }

    /// Ends `member`'s quarantine (it restarted).
    pub(crate) fn release(&mut self, member: MemberKey) {
        self.quarantine.remove(&member);
    }

    /// Picks one of `candidates` (`(provider, load)`, eligible members only) for `name`.
    pub(crate) fn select(
        &mut self,
        now: Instant,
        name: &str,
        strategy: Strategy<'_>,
        local: MemberKey,
        candidates: Vec<(Provider, u32)>,
        rng: &mut Rng,
    ) -> Option<Provider> {
        self.quarantine.retain(|_, until| *until > now);
        let mut pool: Vec<(Provider, u32)> = candidates
            .into_iter()
            .filter(|(p, _)| !self.quarantine.contains_key(&p.member))
            .collect();
        if pool.is_empty() {
            return None;
        }
        let index = match strategy {
            Strategy::RoundRobin => self.next_position(name, pool.len()),
            Strategy::PreferLocal => match pool.iter().position(|(p, _)| p.member == local) {
                Some(i) => i,
                None => self.next_position(name, pool.len()),
            },
            Strategy::Random => rng.below(pool.len() as u64) as usize,
            Strategy::WeightByLoad => {
                let weights: Vec<f64> = pool
                    .iter()
                    .map(|(_, l)| 1.0 / (1.0 + f64::from(*l)))
                    .collect();
                let mut x = rng.unit() * weights.iter().sum::<f64>();
                let mut chosen = pool.len() - 1;
                for (i, w) in weights.iter().enumerate() {
                    if x < *w {
                        chosen = i;
                        break;
                    }
                    x -= w;
                }
                chosen
            }
            Strategy::Affinity(key) => pool
                .iter()
                .enumerate()
                .max_by_key(|(_, (p, _))| stable_hash(&[key, &p.member.0.to_be_bytes()]))
                .map_or(0, |(i, _)| i),
        };
        Some(pool.swap_remove(index).0)
    }

    fn next_position(&mut self, name: &str, len: usize) -> usize {
        if self.positions.len() >= MAX_POSITIONS && !self.positions.contains_key(name) {
            // Round-robin state is a convenience: forget it rather than grow without bound.
            self.positions.clear();
        }
        let pos = match self.positions.get_mut(name) {
            Some(p) => p,
            None => self.positions.entry(name.to_owned()).or_insert(0),
        };
        let i = (*pos % len as u64) as usize;
        *pos = pos.wrapping_add(1);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(n: u64) -> Vec<(Provider, u32)> {
        (1..=n)
            .map(|i| {
                (
                    Provider {
                        member: MemberKey(i),
                        value: format!("v{i}"),
                    },
                    (i as u32 - 1) * 100,
                )
            })
            .collect()
    }

    #[test]
    fn strategies() {
        let t = Instant::now();
        let mut s = Selector::default();
        let mut rng = Rng::new(3);
        let me = MemberKey(2);
        let rr: Vec<u64> = (0..4)
            .map(|_| {
                s.select(t, "x", Strategy::RoundRobin, me, pool(3), &mut rng)
                    .map_or(0, |p| p.member.0)
            })
            .collect();
        assert_eq!(rr, vec![1, 2, 3, 1]);
        let local = s.select(t, "x", Strategy::PreferLocal, me, pool(3), &mut rng);
        assert_eq!(local.map(|p| p.member), Some(me));
        let a1 = s.select(t, "x", Strategy::Affinity(b"user-7"), me, pool(3), &mut rng);
        let a2 = s.select(t, "x", Strategy::Affinity(b"user-7"), me, pool(3), &mut rng);
        assert_eq!(a1, a2);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            if let Some(p) = s.select(t, "x", Strategy::WeightByLoad, me, pool(3), &mut rng) {
                counts[p.member.0 as usize - 1] += 1;
            }
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[2], "{counts:?}");
        s.quarantine(MemberKey(1), t + Duration::from_secs(1), t);
        for _ in 0..20 {
            let p = s.select(t, "x", Strategy::Random, me, pool(3), &mut rng);
            assert_ne!(p.map(|p| p.member), Some(MemberKey(1)));
        }
        let later = t + Duration::from_secs(2);
        let back = (0..50).any(|_| {
            s.select(later, "x", Strategy::Random, me, pool(3), &mut rng)
                .map(|p| p.member)
                == Some(MemberKey(1))
        });
        assert!(back, "quarantine ends");
    }
}
