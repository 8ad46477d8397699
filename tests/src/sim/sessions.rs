//! The session checker: one owner at a time, and no acknowledged commit lost.
//!
//! Switched on with [`Sim::check_sessions`](super::Sim::check_sessions). From then on the
//! simulator:
//!
//! - after every step (a delivery, a served request, a timer, a command run with
//!   [`Sim::with`](super::Sim::with)) counts, for every session id, the live nodes that serve it
//!   ([`Node::session`] is `Some`), and records a violation when two do. While the network is
//!   partitioned both sides may legitimately serve a session (each takes it over from what it
//!   can reach), so from the first step that sees a partition the count waits until
//!   [`Sim::settle`](super::Sim::settle) has healed it and converged, and is taken then;
//! - at every [`crash`](super::Sim::crash) (restart, leave) remembers, for each session the
//!   node served, the highest version its secondary had acknowledged: the larger of
//!   [`SessionInfo::replicated`](hybridcast_core::SessionInfo::replicated) and the
//!   `SessionReplicated` events of the session's current ownership on that node. That is the
//!   session's **floor**: commits up to it must survive;
//! - at every `SessionFailover` checks that the new primary serves the session at a version
//!   no lower than the floor, and, for a session whose commits the test records
//!   ([`SessionChecker::record_commit`]), with exactly the state recorded for that version.
//!   Version 0 of a [`tracked`](SessionChecker::track) session is the empty state.
//!
//! The test drives put / commit on the primary and keeps the expected state itself; this
//! checker only compares. It also logs failovers, expiries and supersessions per session for
//! the test to inspect.

use super::Checker;
use hybridcast_core::{Event, ExpiredReason, MemberKey, Node, SessionId, SessionState, SessionToken};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One `SessionFailover` as the checker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// Slot of the new primary.
    pub node: usize,
    /// Its process lifetime.
    pub life: u64,
    /// Virtual time the event was drained.
    pub at: Duration,
    /// The session.
    pub id: SessionId,
    /// The former primary the event names.
    pub from: MemberKey,
    /// The new token.
    pub token: SessionToken,
    /// The version the new primary served when the event was drained (`None` if it no longer
    /// served it by then).
    pub version: Option<u64>,
    /// The state the event carried.
    pub state: SessionState,
}

/// Another session event as the checker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionNote {
    /// Slot that reported it.
    pub node: usize,
    /// Its process lifetime.
    pub life: u64,
    /// Virtual time the event was drained.
    pub at: Duration,
    /// The session.
    pub id: SessionId,
}

/// Session invariants over a run; see the module docs.
#[derive(Debug, Default)]
pub struct SessionChecker {
    enabled: bool,
    /// A partition was seen: the one-owner count waits for the end of the next settle.
    suspended: bool,
    /// States the test committed, per session and version (more than one per version when
    /// an unacknowledged version was lost and the number reused, or both sides of a
    /// partition committed).
    committed: BTreeMap<SessionId, BTreeMap<u64, Vec<SessionState>>>,
    /// Highest version acknowledged to a primary that then stopped.
    floor: BTreeMap<SessionId, u64>,
    /// Highest `SessionReplicated` per (slot, life, session) in the current ownership.
    acked: BTreeMap<(usize, u64, SessionId), u64>,
    /// Owner sets already reported, so a lasting violation is reported once.
    reported: BTreeSet<(SessionId, Vec<usize>)>,
    /// Every failover seen.
    pub failovers: Vec<Failover>,
    /// Every `SessionExpired` seen, with its reason.
    pub expiries: Vec<(SessionNote, ExpiredReason)>,
    /// Every `SessionSuperseded` seen, with the new primary.
    pub superseded: Vec<(SessionNote, MemberKey)>,
    /// Every `SessionReplicated` seen, with the version.
    pub replicated: Vec<(SessionNote, u64)>,
    /// One-owner counts taken.
    pub owner_checks: u64,
    /// Most live nodes seen serving one session at a step where the count applied.
    pub max_owners: usize,
}

impl SessionChecker {
    /// True once [`Sim::check_sessions`](super::Sim::check_sessions) switched it on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn enable(&mut self) {
        self.enabled = true;
    }

    /// True while the one-owner count waits for a settle after a partition.
    pub fn suspended(&self) -> bool {
        self.suspended
    }

    pub(crate) fn suspend(&mut self) {
        self.suspended = true;
    }

    pub(crate) fn resume_counting(&mut self) {
        self.suspended = false;
    }

    /// Starts recording `id`: its version 0 is the empty state.
    pub fn track(&mut self, id: SessionId) {
        let v0 = self
            .committed
            .entry(id)
            .or_default()
            .entry(0)
            .or_default();
        if v0.is_empty() {
            v0.push(SessionState::default());
        }
    }

    /// The test committed `state` as `version` of `id` (tracking it if needed).
    pub fn record_commit(&mut self, id: SessionId, version: u64, state: SessionState) {
        self.track(id);
        let states = self
            .committed
            .entry(id)
            .or_default()
            .entry(version)
            .or_default();
        if !states.contains(&state) {
            states.push(state);
        }
    }

    /// The states recorded for `version` of `id`.
    pub fn committed(&self, id: SessionId, version: u64) -> &[SessionState] {
        self.committed
            .get(&id)
            .and_then(|v| v.get(&version))
            .map_or(&[], Vec::as_slice)
    }

    /// True if `state` was recorded as `version` of `id`.
    pub fn is_committed(&self, id: SessionId, version: u64, state: &SessionState) -> bool {
        self.committed(id, version).contains(state)
    }

    /// Sessions the test records.
    pub fn tracked(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.committed.keys().copied()
    }

    /// The highest version of `id` acknowledged to a primary that then stopped (0 if none).
    pub fn floor(&self, id: SessionId) -> u64 {
        self.floor.get(&id).copied().unwrap_or(0)
    }

    /// The failovers of `id`, oldest first.
    pub fn failovers_of(&self, id: SessionId) -> impl Iterator<Item = &Failover> + '_ {
        self.failovers.iter().filter(move |f| f.id == id)
    }

    /// The expiries of `id`, oldest first.
    pub fn expiries_of(
        &self,
        id: SessionId,
    ) -> impl Iterator<Item = (SessionNote, ExpiredReason)> + '_ {
        self.expiries
            .iter()
            .filter(move |(n, _)| n.id == id)
            .copied()
    }

    /// The highest version slot `node` (process `life`) heard acknowledged for `id` in its
    /// current ownership.
    pub fn acked(&self, node: usize, life: u64, id: SessionId) -> Option<u64> {
        self.acked.get(&(node, life, id)).copied()
    }

    /// Slot `node` (process `life`) stops: what its secondaries acknowledged becomes floors.
    pub(crate) fn stopped(&mut self, node: usize, life: u64, n: &Node) {
        for id in n.session_ids() {
            let info = n.session(id).and_then(|i| i.replicated);
            let events = self.acked.get(&(node, life, id)).copied();
            if let Some(v) = info.max(events) {
                let f = self.floor.entry(id).or_insert(0);
                *f = (*f).max(v);
            }
        }
        self.acked.retain(|&(s, l, _), _| (s, l) != (node, life));
    }

    /// One event of process `life` of slot `node` (whose node is `n`), drained at `at`.
    pub(crate) fn event(
        &mut self,
        node: usize,
        life: u64,
        at: Duration,
        e: &Event,
        n: &Node,
        out: &mut Checker,
    ) {
        let note = |id| SessionNote { node, life, at, id };
        match e {
            Event::SessionReplicated { id, version } => {
                let served = n.session(*id).map(|i| i.version);
                if served.is_some_and(|v| *version > v) {
                    out.violation(format!(
                        "node {node}: {id} replicated v{version}, beyond its version {served:?}"
                    ));
                }
                let a = self.acked.entry((node, life, *id)).or_insert(0);
                *a = (*a).max(*version);
                self.replicated.push((note(*id), *version));
            }
            Event::SessionSuperseded { id, by } => {
                self.acked.remove(&(node, life, *id));
                self.superseded.push((note(*id), *by));
            }
            Event::SessionExpired { id, reason } => {
                self.acked.remove(&(node, life, *id));
                self.expiries.push((note(*id), *reason));
            }
            Event::SessionFailover {
                id,
                from,
                token,
                state,
            } => {
                self.acked.remove(&(node, life, *id));
                let served = n.session(*id);
                let version = served.map(|i| i.version);
                if token.primary != n.key() || token.id != *id {
                    out.violation(format!(
                        "node {node}: failover of {id} with a token naming {:?} for {}",
                        token.primary, token.id
                    ));
                }
                if let Some(i) = served {
                    if n.session_state(*id) != Some(state) || i.uncommitted {
                        out.violation(format!(
                            "node {node}: failover of {id} serves another state than the event's"
                        ));
                    }
                }
                let floor = self.floor(*id);
                match version {
                    Some(v) if v < floor => out.violation(format!(
                        "node {node}: failover of {id} to v{v}, below v{floor} acknowledged \
                         before its primary stopped"
                    )),
                    _ => {}
                }
                if let Some(recorded) = self.committed.get(id) {
                    let ok = match version {
                        Some(v) => recorded.get(&v).is_some_and(|s| s.contains(state)),
                        // Already gone again: the state must be some recorded version at or
                        // above the floor.
                        None => recorded.range(floor..).any(|(_, s)| s.contains(state)),
                    };
                    if !ok {
                        let known = recorded.get(&version.unwrap_or(u64::MAX)).is_some();
                        out.violation(format!(
                            "node {node}: failover of {id} at {version:?} with a state {} \
                             (from {from:?}, {} entries)",
                            if known {
                                "other than the one committed as that version"
                            } else {
                                "of a version never committed"
                            },
                            state.len()
                        ));
                    }
                }
                self.failovers.push(Failover {
                    node,
                    life,
                    at,
                    id: *id,
                    from: *from,
                    token: *token,
                    version,
                    state: state.clone(),
                });
            }
            _ => {}
        }
    }

    /// The one-owner count over the live nodes `live` (slot, node).
    pub(crate) fn count_owners<'a>(
        &mut self,
        live: impl Iterator<Item = (usize, &'a Node)>,
        at: Duration,
        out: &mut Checker,
    ) {
        self.owner_checks += 1;
        let mut owners: BTreeMap<SessionId, Vec<usize>> = BTreeMap::new();
        for (i, n) in live {
            for id in n.session_ids() {
                owners.entry(id).or_default().push(i);
            }
        }
        for (id, nodes) in owners {
            self.max_owners = self.max_owners.max(nodes.len());
            if nodes.len() > 1 && self.reported.insert((id, nodes.clone())) {
                out.violation(format!(
                    "at {at:?} session {id} is served by nodes {nodes:?} at once"
                ));
            }
        }
    }
}
