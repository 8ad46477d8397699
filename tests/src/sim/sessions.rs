//! The session checker: one owner at a time, and no acknowledged commit lost.
//!
//! Switched on with [`Sim::check_sessions`](super::Sim::check_sessions). From then on the
//! simulator:
//!
//! - after every step (a delivery, a served request, a timer, a command run with
//!   [`Sim::with`](super::Sim::with)) counts, for every session served by a node the step
//!   touched (a second owner can only appear on a node that handled something), the live
//!   nodes that serve it ([`Node::session`] is `Some`), and records a violation when two do.
//!   Two sides of a partition may legitimately both serve a session (each takes it over from
//!   what it can reach), and keep doing so until the heal has propagated, so a pair of nodes
//!   seen cut off from each other is exempt until the end of the next
//!   [`Sim::settle`](super::Sim::settle), which heals, converges and then counts every session
//!   over all live nodes;
//! - at every [`crash`](super::Sim::crash) (restart, leave) remembers, for each session the
//!   node served, the highest version its secondary had acknowledged: the larger of
//!   [`SessionInfo::replicated`](hybridcast_core::SessionInfo::replicated) and the
//!   `SessionReplicated` events of the session's current ownership on that node. That is the
//!   session's **floor**: commits up to it must survive;
//! - at every `SessionFailover` checks that the new primary serves the session at a version
//!   no lower than the floor, and, for a session whose commits the test records
//!   ([`SessionChecker::record_commit`]), with exactly the state recorded for that version.
//!   Version 0 of a [`tracked`](SessionChecker::track) session is the empty state;
//! - at every session request (replicate, claim, release) decodes the POST body — one that
//!   does not decode is a violation — and notes which members were told about which session
//!   ([`SessionChecker::contacts`]).
//!
//! The test drives put / commit on the primary and keeps the expected state itself; this
//! checker only compares. It also logs failovers, expiries, supersessions and acknowledgements
//! per session for the test to inspect.

use super::Checker;
use hybridcast_core::exchange::{self, SessionClaim, SessionRelease, SessionReplicate};
use hybridcast_core::{
    Event, ExpiredReason, MemberKey, Node, SessionId, SessionState, SessionToken, codec,
};
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
    /// The session whose exchanges, events and stops are printed to stderr
    /// (`HYBRIDCAST_SIM_TRACE_SESSION=<id>`): a debugging aid.
    trace: Option<SessionId>,
    /// Pairs partitioned from each other at some step since the last settle.
    cut: BTreeSet<(usize, usize)>,
    /// States the test committed, per session and version (more than one per version when
    /// an unacknowledged version was lost and the number reused, or both sides of a
    /// partition committed).
    committed: BTreeMap<SessionId, BTreeMap<u64, Vec<SessionState>>>,
    /// Highest version acknowledged to a primary that then stopped, and the secondary
    /// (slot, life) that held it then.
    floor: BTreeMap<SessionId, (u64, Option<(usize, u64)>)>,
    /// Highest `SessionReplicated` per (slot, life, session) in the current ownership.
    acked: BTreeMap<(usize, u64, SessionId), u64>,
    /// Slots that sent or were sent a session exchange about a session.
    contacts: BTreeMap<SessionId, BTreeSet<usize>>,
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
    /// Session exchanges (replicate, claim, release) sent, their bodies decoded.
    pub exchanges: u64,
    /// One-owner counts taken.
    pub owner_checks: u64,
    /// Most live nodes seen serving one session at once (cut-off pairs included).
    pub max_owners: usize,
}

impl SessionChecker {
    /// True once [`Sim::check_sessions`](super::Sim::check_sessions) switched it on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn enable(&mut self) {
        self.enabled = true;
        self.trace = std::env::var("HYBRIDCAST_SIM_TRACE_SESSION")
            .ok()
            .and_then(|s| s.parse().ok());
    }

    /// Starts recording `id`: its version 0 is the empty state.
    pub fn track(&mut self, id: SessionId) {
        let v0 = self.committed.entry(id).or_default().entry(0).or_default();
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

    /// The highest version of `id` acknowledged to a primary that then stopped (0 if none).
    pub fn floor(&self, id: SessionId) -> u64 {
        self.floor.get(&id).map_or(0, |f| f.0)
    }

    /// The secondary (slot, process life) that had acknowledged [`SessionChecker::floor`]
    /// when the primary stopped: if that process is gone too, the session may be lost.
    pub fn floor_holder(&self, id: SessionId) -> Option<(usize, u64)> {
        self.floor.get(&id).and_then(|f| f.1)
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

    /// Slots that ever sent or were sent a replication, claim or release of `id`: the members
    /// that may hold a copy of it or a record of where it went.
    pub fn contacts(&self, id: SessionId) -> impl Iterator<Item = usize> + '_ {
        self.contacts.get(&id).into_iter().flatten().copied()
    }

    /// A session request from slot `from` to slot `to` (if it names one) on `path` with
    /// `body`: notes who was told about which session. A session path whose body does not
    /// decode is a violation (the simulator must carry POST bodies intact).
    pub(crate) fn request(
        &mut self,
        from: usize,
        to: Option<usize>,
        path: &str,
        body: &[u8],
        out: &mut Checker,
    ) {
        if !path.starts_with(exchange::PATH_SESSION_PREFIX) {
            return;
        }
        let id = session_id_of(path, body);
        if let (Ok(id), Some(t)) = (&id, self.trace) {
            if *id == t {
                eprintln!("trace: {from} -> {to:?} {}", describe(path, body));
            }
        }
        match id {
            Ok(id) => {
                self.exchanges += 1;
                let c = self.contacts.entry(id).or_default();
                c.insert(from);
                c.extend(to);
            }
            Err(e) => out.violation(format!(
                "node {from} sent {path} with a body of {} bytes that does not decode: {e}",
                body.len()
            )),
        }
    }

    /// Slot `node` (process `life`) stops: what its secondaries acknowledged becomes floors.
    /// `holder` names the slot and life of a member key's process.
    pub(crate) fn stopped(
        &mut self,
        node: usize,
        life: u64,
        n: &Node,
        holder: impl Fn(MemberKey) -> Option<(usize, u64)>,
    ) {
        if let Some(t) = self.trace {
            eprintln!(
                "trace: node {node}/{life} stops serving {:?}, holding {:?}",
                n.session(t),
                n.session_replica(t).map(|r| (r.0, r.1, r.2))
            );
        }
        for id in n.session_ids() {
            let Some(info) = n.session(id) else {
                continue;
            };
            let events = self.acked.get(&(node, life, id)).copied();
            if let Some(v) = info.replicated.max(events) {
                let secondary = info.token.secondary.and_then(&holder);
                let f = self.floor.entry(id).or_insert((0, None));
                if v >= f.0 {
                    *f = (v, secondary);
                }
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
        if let Some(t) = self.trace {
            let about = match e {
                Event::SessionReplicated { id, .. }
                | Event::SessionSuperseded { id, .. }
                | Event::SessionExpired { id, .. }
                | Event::SessionFailover { id, .. } => *id == t,
                _ => false,
            };
            if about {
                eprintln!("trace: {at:?} node {node}/{life}: {e:?}");
            }
        }
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

    /// Pairs cut off from each other now (the network is partitioned): from now until the
    /// end of the next settle, two owners on such a pair are tolerated.
    pub(crate) fn cut(&mut self, pairs: impl Iterator<Item = (usize, usize)>) {
        self.cut.extend(pairs);
    }

    /// The settle after a partition healed and converged: every pair counts again.
    pub(crate) fn healed(&mut self) {
        self.cut.clear();
    }

    /// True if owners `a` and `b` of one session may legitimately coexist.
    fn tolerated(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// The one-owner count: every session served by a node of `focus` (the nodes that
    /// handled something this step; all of them for a full count) against every node of
    /// `live`.
    pub(crate) fn count_owners(
        &mut self,
        focus: &[usize],
        live: &[(usize, &Node)],
        at: Duration,
        out: &mut Checker,
    ) {
        self.owner_checks += 1;
        for &(i, n) in live.iter().filter(|(i, _)| focus.contains(i)) {
            for id in n.session_ids() {
                let owners: Vec<usize> = live
                    .iter()
                    .filter(|(j, m)| *j == i || m.session(id).is_some())
                    .map(|(j, _)| *j)
                    .collect();
                self.max_owners = self.max_owners.max(owners.len());
                let clash = owners
                    .iter()
                    .enumerate()
                    .any(|(k, &a)| owners[k + 1..].iter().any(|&b| !self.tolerated(a, b)));
                if clash && self.reported.insert((id, owners.clone())) {
                    out.violation(format!(
                        "at {at:?} session {id} is served by nodes {owners:?} at once"
                    ));
                }
            }
        }
    }
}

/// The session a replication, claim or release body is about.
pub(crate) fn session_id_of(path: &str, body: &[u8]) -> Result<SessionId, String> {
    let limit = body.len();
    let id = match path {
        exchange::PATH_SESSION_REPLICATE => {
            codec::decode::<SessionReplicate>(body, limit).map(|r| r.id)
        }
        exchange::PATH_SESSION_CLAIM => codec::decode::<SessionClaim>(body, limit).map(|c| c.id),
        exchange::PATH_SESSION_RELEASE => {
            codec::decode::<SessionRelease>(body, limit).map(|r| r.id)
        }
        _ => return Err(format!("not a session path: {path}")),
    };
    id.map_err(|e| e.to_string())
}

/// A session request body in words, for the trace.
fn describe(path: &str, body: &[u8]) -> String {
    let limit = body.len();
    let d = match path {
        exchange::PATH_SESSION_REPLICATE => {
            codec::decode::<SessionReplicate>(body, limit).map(|r| {
                format!(
                    "replicate e{} {} v{} {:?}",
                    r.epoch,
                    r.primary,
                    r.version,
                    matches!(r.payload, exchange::ReplicaPayload::Full(_))
                )
            })
        }
        exchange::PATH_SESSION_CLAIM => {
            codec::decode::<SessionClaim>(body, limit).map(|c| format!("{c:?}"))
        }
        exchange::PATH_SESSION_RELEASE => {
            codec::decode::<SessionRelease>(body, limit).map(|r| format!("{r:?}"))
        }
        _ => return path.to_owned(),
    };
    d.unwrap_or_else(|e| e.to_string())
}
