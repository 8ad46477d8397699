//! The member table's entries: identity, liveness state and the per-channel receivers of each
//! remote member.
//!
//! Invariant: one entry per member key, holding the newest incarnation heard of. Datagrams of
//! older incarnations are ignored; a newer incarnation replaces the entry (and its offers).
//! Departed members (failed or left) stay as tombstones for `tombstone_ttl` so their late
//! packets are recognised; a failed member heard again with the same incarnation is readmitted
//! (it was partitioned, not dead), a member that left is not.

use crate::channel::receiver::{Budget, Receiver};
use crate::ids::{Channel, MemberKey, RequestId};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Liveness of a remote member as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Heard from recently.
    Alive,
    /// Silent for `suspect_after_intervals` heartbeats; a probe decides.
    Suspect,
    /// Its probe failed; offers removed. Kept as a tombstone.
    Failed,
    /// It announced its departure; offers removed. Kept as a tombstone.
    Left,
}

impl MemberState {
    /// True for `Alive` and `Suspect`.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    /// Lower-case name, for logs and endpoints.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Failed => "failed",
            MemberState::Left => "left",
        }
    }
}

/// A read-only view of one remote member, from [`crate::Node::members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Stable key.
    pub key: MemberKey,
    /// Name.
    pub name: String,
    /// Newest incarnation heard of.
    pub incarnation: u64,
    /// Point-to-point address.
    pub http_addr: SocketAddr,
    /// Host id.
    pub host_id: String,
    /// Load from its last heartbeat.
    pub load: u32,
    /// Liveness.
    pub state: MemberState,
    /// Per channel: last sequence delivered here and highest sequence known sent.
    pub sequences: Vec<(Channel, u64, u64)>,
    /// True while it reports that it is still joining.
    pub joining: bool,
}

/// Everything this node keeps about one remote member.
#[derive(Debug)]
pub(crate) struct Member {
    pub key: MemberKey,
    pub name: String,
    pub incarnation: u64,
    pub http_addr: SocketAddr,
    pub host_id: String,
    pub load: u32,
    pub joining: bool,
    pub state: MemberState,
    pub last_heard: Instant,
    pub departed_at: Option<Instant>,
    pub receivers: [Receiver; 2],
    pub budget: Budget,
    pub probe: Option<RequestId>,
    /// Log position kept while departed, to resume from if it is readmitted.
    pub log_resume: Option<u64>,
    /// Heartbeat interval the member announces.
    pub interval: Duration,
    /// Heartbeats heard for this name from another process (an older incarnation, or the same
    /// incarnation at another address): name conflict evidence.
    pub conflict_evidence: u32,
}

impl Member {
    /// A live member first heard of at `now`.
    pub(crate) fn new(
        key: MemberKey,
        name: String,
        incarnation: u64,
        http_addr: SocketAddr,
        now: Instant,
    ) -> Self {
        Member {
            key,
            name,
            incarnation,
            http_addr,
            host_id: String::new(),
            load: 0,
            joining: false,
            state: MemberState::Alive,
            last_heard: now,
            departed_at: None,
            receivers: [Receiver::new(Channel::State), Receiver::new(Channel::Log)],
            budget: Budget::default(),
            probe: None,
            log_resume: None,
            interval: Duration::ZERO,
            conflict_evidence: 0,
        }
    }

    /// Drops receivers' caches and marks the member departed.
    pub(crate) fn depart(&mut self, state: MemberState, now: Instant) {
        self.log_resume = self.receivers[Channel::Log.index()].next();
        for r in &mut self.receivers {
            r.clear(&mut self.budget);
        }
        self.receivers = [Receiver::new(Channel::State), Receiver::new(Channel::Log)];
        self.state = state;
        self.departed_at = Some(now);
        self.probe = None;
    }

    /// The public view of this entry.
    pub(crate) fn info(&self) -> MemberInfo {
        MemberInfo {
            key: self.key,
            name: self.name.clone(),
            incarnation: self.incarnation,
            http_addr: self.http_addr,
            host_id: self.host_id.clone(),
            load: self.load,
            state: self.state,
            sequences: Channel::ALL
                .iter()
                .map(|c| {
                    let r = &self.receivers[c.index()];
                    (*c, r.delivered(), r.known_last())
                })
                .collect(),
            joining: self.joining,
        }
    }
}
