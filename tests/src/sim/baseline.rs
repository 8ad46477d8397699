//! The two designs the patent improves on, simulated beside the hybrid protocol on the same
//! schedules.
//!
//! - **Join by asking everyone** ([`JoinBaseline`]): at the moment a hybrid joiner asks one
//!   member for a state dump, the simulator also asks every live member for its own state, the
//!   way a joiner without dumps would, through the members' real HTTP handlers, and counts the
//!   requests and bytes. (The targets answer for real, so their `recoveries_served` counter
//!   includes these requests.)
//! - **Multicast NAK + multicast retransmission** ([`nak_baseline`]): replayed over the exact
//!   fragment-datagram losses of the hybrid run ([`LossRecord`]). For each lost datagram, a
//!   receiver that misses it multicasts a NAK; the sender multicasts the datagram again, which
//!   every other member receives; receivers still missing it repeat in the next round. NAK
//!   suppression is assumed perfect (one NAK per datagram per round, however many receivers
//!   lost it), which favours the baseline. A NAK can be lost on its way to the sender and a
//!   retransmission on its way to each receiver, with the parameters those links had when
//!   the datagram was lost, on a random stream of their own.
//!
//! The hybrid figure it is compared with counts every state and log recovery request of the
//! run, including those after crashes, restarts, partitions and evictions, which the baseline
//! is not asked to repair: the comparison leans towards the baseline.

use super::net::{LinkParams, LinkState};
use hybridcast_core::wire::HEADER_LEN;
use std::time::Duration;

/// What a join without state dumps would have cost at one joiner's dump request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinBaseline {
    /// The joiner's slot.
    pub joiner: usize,
    /// When the joiner asked for its dump.
    pub at: Duration,
    /// Requests, one per live reachable member.
    pub requests: u64,
    /// Request plus response bytes.
    pub bytes: u64,
    /// Offers received in all.
    pub offers: u64,
    /// Answers that did not decode (should be none).
    pub failed: u64,
}

/// One fragment datagram that at least one live receiver lost in the hybrid run.
#[derive(Debug, Clone, PartialEq)]
pub struct LossRecord {
    /// Sending slot.
    pub sender: usize,
    /// Datagram size in bytes.
    pub size: usize,
    /// How many nodes it was sent to (reachable at the time).
    pub receivers: u32,
    /// Live slots that lost it.
    pub lost_at: Vec<usize>,
    /// For each of `lost_at`: the link parameters sender → receiver and receiver → sender at
    /// the time of the loss.
    pub links: Vec<(LinkParams, LinkParams)>,
}

/// The NAK baseline's cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NakBaseline {
    /// Lost (datagram, receiver) pairs it had to repair.
    pub losses: u64,
    /// NAK datagrams multicast.
    pub naks: u64,
    /// Retransmissions multicast.
    pub retransmissions: u64,
    /// Bytes multicast on recovery (NAKs plus retransmissions, counted once per send).
    pub bytes_sent: u64,
    /// Recovery datagrams received by members, summed over members.
    pub receptions: u64,
    /// Bytes of those receptions.
    pub bytes_received: u64,
    /// Retransmission copies received by members that already had the datagram.
    pub redundant_receptions: u64,
    /// Losses still unrepaired after the round limit.
    pub unrepaired: u64,
}

impl NakBaseline {
    /// Multicast datagrams spent on recovery.
    pub fn multicast_datagrams(&self) -> u64 {
        self.naks + self.retransmissions
    }
}

/// Size of a NAK: a datagram header plus channel, sequence and fragment index.
pub const NAK_BYTES: usize = HEADER_LEN + 16;

/// Rounds of NAK and retransmission tried per datagram before giving up.
const ROUNDS: usize = 64;

/// Replays `losses` under the NAK design (see the module docs).
pub fn nak_baseline(seed: u64, losses: &[LossRecord]) -> NakBaseline {
    let mut out = NakBaseline::default();
    let mut links: std::collections::BTreeMap<(usize, usize), LinkState> = Default::default();
    let mut lose = |from: usize, to: usize, p: &LinkParams| {
        links
            .entry((from, to))
            .or_insert_with(|| LinkState::new(seed, from, to, b"nak-baseline"))
            .lose(p)
    };
    for rec in losses {
        out.losses += rec.lost_at.len() as u64;
        let others = u64::from(rec.receivers);
        let mut missing: Vec<(usize, (LinkParams, LinkParams))> = rec
            .lost_at
            .iter()
            .copied()
            .zip(rec.links.iter().copied())
            .collect();
        let mut rounds = 0;
        while !missing.is_empty() && rounds < ROUNDS {
            rounds += 1;
            // One NAK (perfect suppression), from the first receiver still missing it; every
            // member but the NAK's sender receives it.
            out.naks += 1;
            out.bytes_sent += NAK_BYTES as u64;
            out.receptions += others;
            out.bytes_received += others * NAK_BYTES as u64;
            let (first, (_, back)) = missing[0];
            if lose(first, rec.sender, &back) {
                continue;
            }
            out.retransmissions += 1;
            out.bytes_sent += rec.size as u64;
            out.receptions += others;
            out.bytes_received += others * rec.size as u64;
            out.redundant_receptions += others - missing.len() as u64;
            missing.retain(|(r, (forth, _))| lose(rec.sender, *r, forth));
        }
        out.unrepaired += missing.len() as u64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossless_retransmission_repairs_in_one_round() {
        let clean = (LinkParams::default(), LinkParams::default());
        let losses = vec![LossRecord {
            sender: 0,
            size: 1000,
            receivers: 9,
            lost_at: vec![3, 4],
            links: vec![clean, clean],
        }];
        let b = nak_baseline(1, &losses);
        assert_eq!(b.losses, 2);
        assert_eq!((b.naks, b.retransmissions), (1, 1));
        assert_eq!(b.receptions, 18);
        assert_eq!(b.redundant_receptions, 7);
        assert_eq!(b.bytes_sent, 1000 + NAK_BYTES as u64);
        assert_eq!(b.unrepaired, 0);
    }

    #[test]
    fn lossy_links_take_more_rounds() {
        let half = (LinkParams::lossy(0.5), LinkParams::lossy(0.5));
        let losses: Vec<LossRecord> = (0..200)
            .map(|i| LossRecord {
                sender: i % 4,
                size: 500,
                receivers: 3,
                lost_at: vec![(i + 1) % 4],
                links: vec![half],
            })
            .collect();
        let b = nak_baseline(9, &losses);
        assert_eq!(b.unrepaired, 0);
        // Each round succeeds with probability 1/4 (NAK and retransmission both through).
        assert!(b.naks > 600, "{b:?}");
        assert!(
            b.retransmissions > 300 && b.retransmissions < b.naks,
            "{b:?}"
        );
    }
}
