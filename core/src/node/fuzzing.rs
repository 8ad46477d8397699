//! Consistency checks of a node's internals, for the fuzz targets only (`--cfg fuzzing`).
//!
//! They restate, as assertions over the private state, the bookkeeping invariants the rest of
//! the node relies on: running totals equal the sums they summarise, and every index points at
//! something that exists.

use super::{Node, Purpose, is_delivery};

impl Node {
    /// Panics if a running total or index of the node disagrees with the state it summarises.
    pub fn check_consistency(&self) {
        let cached: usize = self.members.values().map(|m| m.budget.bytes).sum();
        assert_eq!(
            self.cached_total, cached,
            "cached_total is not the sum of the budgets"
        );
        for m in self.members.values() {
            assert!(
                m.budget.bytes <= self.config.max_cached_bytes_per_sender,
                "member {} caches {} bytes",
                m.key,
                m.budget.bytes
            );
            assert!(m.budget.messages <= self.config.max_cached_messages_per_sender);
            if !m.state.is_live() {
                assert_eq!(m.budget.bytes, 0, "departed member {} keeps a cache", m.key);
            }
        }
        let membership = self.events.iter().filter(|e| !is_delivery(e)).count();
        assert_eq!(
            self.queued_membership, membership,
            "membership event count drifted"
        );
        assert!(self.queued_membership <= self.config.max_queued_events);
        let recovering: std::collections::BTreeSet<_> = self
            .requests
            .values()
            .filter_map(|p| match p.purpose {
                Purpose::Recovery {
                    member, channel, ..
                } => Some((member, channel)),
                _ => None,
            })
            .collect();
        assert_eq!(
            self.recovering, recovering,
            "recovery slots drifted from the requests"
        );
        if self.left {
            assert!(self.requests.is_empty(), "requests kept after leaving");
        }
    }
}
