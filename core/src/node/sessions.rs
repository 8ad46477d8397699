//! The node's session side: the primary's commands and replication, the secondary's copies,
//! resume and failover, and the three session exchanges. The data types are in
//! [`crate::session`]; the rules are in its module documentation and in `core/ALGORITHM.md`.

use super::{Node, Purpose};
use crate::codec;
use crate::event::Event;
use crate::exchange::{
    self, ClaimReply, ReplicaPayload, ReplicateReply, SessionClaim, SessionRelease,
    SessionReplicate,
};
use crate::http::{Request, Response};
use crate::ids::{MemberKey, RequestId, Rng, stable_hash};
use crate::membership::MemberState;
use crate::session::{
    Change, ExpiredReason, MAX_EPOCH, Resume, SessionError, SessionId, SessionInfo, SessionState,
    SessionToken, Value,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// A session's generation: `(epoch, primary)`, ordered lexicographically.
type Generation = (u64, MemberKey);

/// A copy's rank: its generation, then which of that primary's choices of secondary it was
/// made for (`SessionReplicate::assignment`). Releases drop copies ranked below theirs.
type Rank = (u64, MemberKey, u64);

fn rank(g: Generation, assignment: u64) -> Rank {
    (g.0, g.1, assignment)
}

/// An epoch a peer may name: below `MAX_EPOCH`, so the next one still fits.
fn valid_epoch(epoch: u64) -> bool {
    epoch < MAX_EPOCH
}

/// The next attempt after a failure: `backoff` stretched by up to half at random, which then
/// doubles up to `max`.
fn back_off(now: Instant, backoff: &mut Duration, max: Duration, rng: &mut Rng) -> Instant {
    let at = now + backoff.mul_f64(1.0 + rng.unit() / 2.0);
    *backoff = (*backoff * 2).min(max);
    at
}

/// Most members a resume asks, following `Moved` answers included.
const MAX_CLAIM_HOPS: usize = 8;

/// A session this member serves.
#[derive(Debug)]
struct Owned {
    state: SessionState,
    bytes: usize,
    version: u64,
    epoch: u64,
    /// The secondary and the incarnation it had when chosen (a restart loses its copies).
    secondary: Option<(MemberKey, u64)>,
    /// Rises each time a secondary is chosen (see [`Rank`]).
    assignment: u64,
    /// Version the secondary holds in this generation.
    acked: Option<u64>,
    /// Committed changes after `acked`, one entry per version, contiguous.
    log: VecDeque<(u64, Vec<Change>)>,
    log_bytes: usize,
    /// Changes since the last commit, the latest per (pool, key): an interaction that puts one
    /// key many times holds one change, so this never outgrows the state and what it replaced.
    pending: BTreeMap<(String, String), Change>,
    /// What restores each (pool, key) of `pending` to its committed value (the undo of its first
    /// change; see [`Owned::committed_state`]).
    undo: BTreeMap<(String, String), Change>,
    /// Puts or removes were made since the last commit (even ones that changed nothing, which
    /// `pending` does not keep): the commit makes a version.
    staged: bool,
    in_flight: Option<RequestId>,
    queued: bool,
    /// The secondary's idle clock needs a refresh even without new versions.
    refresh: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_used: Instant,
    last_replicated: Instant,
}

impl Owned {
    fn generation(&self, me: MemberKey) -> Generation {
        (self.epoch, me)
    }

    fn needs_replication(&self) -> bool {
        self.secondary.is_some()
            && self.in_flight.is_none()
            && (self.acked != Some(self.version) || self.refresh)
    }

    /// The state as of `version`: the uncommitted changes undone. Full copies and handovers
    /// carry this, never an interaction in progress.
    fn committed_state(&self) -> SessionState {
        let mut state = self.state.clone();
        for change in self.undo.values() {
            state.apply(change.clone());
        }
        state
    }
}

/// A copy this member holds for another member's session.
#[derive(Debug)]
struct Replica {
    state: SessionState,
    version: u64,
    epoch: u64,
    primary: MemberKey,
    assignment: u64,
    /// Handed over by a claim to this newer generation: the copy is kept only in case the
    /// claimant never got the answer.
    handed: Option<Generation>,
    /// When the primary last replicated to this member.
    heard: Instant,
    /// Where the primary serves (from its replications).
    primary_addr: std::net::SocketAddr,
    last_used: Instant,
}

impl Replica {
    /// The generation the copy came from.
    fn generation(&self) -> Generation {
        (self.epoch, self.primary)
    }

    fn rank(&self) -> Rank {
        rank(self.generation(), self.assignment)
    }

    /// The newest generation this holder knows to own the session.
    fn owner(&self) -> Generation {
        self.handed.unwrap_or(self.generation())
    }
}

/// What this member remembers of a session it no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tomb {
    TimedOut,
    /// Another generation owns it; copies ranked below this were dropped.
    Moved(Rank),
}

/// A resume waiting for a claim.
#[derive(Debug)]
struct Resuming {
    token: SessionToken,
    /// Claims start once this member has joined (before, it does not know the cluster).
    started: bool,
    candidates: VecDeque<MemberKey>,
    asked: usize,
    /// Members whose claim failed (unreachable, or no useful answer).
    unreachable: Vec<MemberKey>,
    /// The newest generation heard of: claims ask to serve above its epoch, a `Moved` to an
    /// older one is not followed, and a copy is taken over only above it.
    newest: Generation,
    /// Members asked so far (released after a takeover: any may keep a copy).
    asked_members: Vec<MemberKey>,
    /// Members whose claim failed in transit once already (asked once more before giving up
    /// on them: a lost answer is not a lost session).
    retried: Vec<MemberKey>,
    /// A member answered `Busy`: the next claim waits until then.
    retry_at: Option<Instant>,
    backoff: Duration,
    timed_out: bool,
    /// The members that may hold the session are all unknown here (never heard of: this
    /// member joined without hearing them, under loss): looking waits for them until then.
    unknown_until: Option<Instant>,
}

impl Resuming {
    /// Notes a member that could not be asked or did not help (at most `MAX_CLAIM_HOPS`, the
    /// most a holder accepts in a claim).
    fn mark_unreachable(&mut self, k: MemberKey) {
        if !self.unreachable.contains(&k) && self.unreachable.len() < MAX_CLAIM_HOPS {
            self.unreachable.push(k);
        }
    }
}

/// Session tables of one node.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    owned: BTreeMap<SessionId, Owned>,
    replicas: BTreeMap<SessionId, Replica>,
    tombs: BTreeMap<SessionId, Tomb>,
    tomb_order: VecDeque<SessionId>,
    resuming: BTreeMap<SessionId, Resuming>,
    ready: VecDeque<SessionId>,
    retries: BTreeSet<(Instant, SessionId)>,
    /// Resumes waiting to ask again a member that answered `Busy`.
    claim_retries: BTreeSet<(Instant, SessionId)>,
    in_flight: usize,
    /// Releases not yet acknowledged: (session, former holder) → (generation, give up at,
    /// request in flight). Resent while the holder is alive, so a holder cut off when the
    /// session moved still drops its copy when it comes back.
    releases: BTreeMap<(SessionId, MemberKey), (Rank, Instant, Option<RequestId>)>,
    /// Membership changed: secondaries must be checked.
    dirty: bool,
    /// Resumes wait for this member to join.
    deferred: bool,
    next_sweep: Option<Instant>,
}

impl Sessions {
    fn has_timers(&self) -> bool {
        !self.owned.is_empty() || !self.replicas.is_empty() || !self.releases.is_empty()
    }

    fn held(&self) -> usize {
        self.owned.len() + self.replicas.len() + self.resuming.len()
    }

    /// Forgets what was recorded of `id` (it is held again).
    fn unbury(&mut self, id: SessionId) {
        if self.tombs.remove(&id).is_some() {
            self.tomb_order.retain(|t| *t != id);
        }
    }

    fn bury(&mut self, id: SessionId, tomb: Tomb, max: usize) {
        if self.tombs.insert(id, tomb).is_none() {
            self.tomb_order.push_back(id);
        }
        while self.tomb_order.len() > max {
            if let Some(old) = self.tomb_order.pop_front() {
                self.tombs.remove(&old);
            }
        }
    }

    /// Membership changed in a way that may concern secondaries.
    pub(super) fn membership_changed(&mut self) {
        if !self.owned.is_empty() || !self.releases.is_empty() {
            self.dirty = true;
        }
    }

    pub(super) fn counts(&self) -> (u64, u64) {
        (self.owned.len() as u64, self.replicas.len() as u64)
    }

    /// The earliest session timer.
    pub(super) fn deadline(&self) -> Option<Instant> {
        [
            self.retries.first().map(|(t, _)| *t),
            self.claim_retries.first().map(|(t, _)| *t),
            self.next_sweep,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl Node {
    // ----- the primary's commands -----

    /// Starts a session served by this member and returns its token. Its secondary is chosen
    /// at once if another member is alive; nothing is replicated before the first commit.
    pub fn session_create(&mut self, now: Instant) -> Result<SessionToken, SessionError> {
        self.session_check_live()?;
        if self.sessions.held() >= self.config.max_sessions {
            return Err(SessionError::TooManySessions {
                max: self.config.max_sessions,
            });
        }
        let id = loop {
            let id = self.new_session_id();
            if !self.sessions.owned.contains_key(&id) && !self.sessions.replicas.contains_key(&id) {
                break id;
            }
        };
        let secondary = self.pick_secondary(id);
        Ok(self.serve_new(now, id, SessionState::default(), 0, 1, secondary))
    }

    /// Sets `pool[key] = value` in a session this member serves; returns the value replaced.
    /// Takes effect locally at once and is replicated at the next commit.
    pub fn session_put(
        &mut self,
        now: Instant,
        id: SessionId,
        pool: &str,
        key: &str,
        value: Value,
    ) -> Result<Option<Value>, SessionError> {
        self.session_check_names(pool, key)?;
        self.session_change(
            now,
            id,
            Change::Put {
                pool: pool.to_owned(),
                key: key.to_owned(),
                value,
            },
        )
    }

    /// Removes `pool[key]` from a session this member serves; returns the value removed.
    pub fn session_remove(
        &mut self,
        now: Instant,
        id: SessionId,
        pool: &str,
        key: &str,
    ) -> Result<Option<Value>, SessionError> {
        self.session_check_names(pool, key)?;
        self.session_change(
            now,
            id,
            Change::Remove {
                pool: pool.to_owned(),
                key: key.to_owned(),
            },
        )
    }

    /// Ends a user interaction: the changes since the last commit become the next version and
    /// are shipped to the secondary (as a delta from the version it acknowledged, or whole when
    /// it is new or behind). Returns the current token, which the application should hand to
    /// the user. A commit without changes keeps the version.
    pub fn session_commit(
        &mut self,
        now: Instant,
        id: SessionId,
    ) -> Result<SessionToken, SessionError> {
        self.session_check_live()?;
        let max_log = self.config.max_session_bytes;
        let o = self
            .sessions
            .owned
            .get_mut(&id)
            .ok_or(SessionError::NotHere(id))?;
        o.last_used = now;
        if o.staged {
            o.staged = false;
            o.version += 1;
            let changes: Vec<Change> = std::mem::take(&mut o.pending).into_values().collect();
            o.undo.clear();
            if o.secondary.is_some() {
                o.log_bytes += changes.iter().map(Change::cost).sum::<usize>();
                o.log.push_back((o.version, changes));
                if o.log_bytes > max_log {
                    // A delta this long costs more than the whole state: send that instead.
                    o.log.clear();
                    o.log_bytes = 0;
                }
            }
        }
        self.queue_replication(id);
        self.sessions_settle(now);
        self.owned_token(id).ok_or(SessionError::NotHere(id))
    }

    /// Ends a session this member serves (a logout): the local state goes and the secondary
    /// is told to drop its copy. Returns whether there was one.
    pub fn session_end(&mut self, now: Instant, id: SessionId) -> Result<bool, SessionError> {
        self.session_check_live()?;
        let Some(o) = self.sessions.owned.remove(&id) else {
            return Ok(false);
        };
        let next = (o.epoch.saturating_add(1), self.key);
        if let Some((s, _)) = o.secondary {
            self.send_release(now, s, id, rank(next, 0));
        }
        self.sessions
            .bury(id, Tomb::Moved(rank(next, 0)), self.config.max_sessions);
        Ok(true)
    }

    /// Finds the session `token` names and makes this member its primary. Call it at the start
    /// of every request that carries a token: on the primary it only marks the session used.
    ///
    /// - This member serves it: [`Resume::Ready`].
    /// - This member has not joined yet: [`Resume::Pending`]; it starts looking once it has
    ///   (before, it cannot tell a lost session from a live one).
    /// - This member holds the replica the token names and the primary is known gone (failed
    ///   or left, and not heard from since): the replica is promoted at once
    ///   ([`Resume::FailedOver`]). A merely suspect primary is asked first.
    /// - Otherwise the members that may hold a copy (the primary, the secondary, any member a
    ///   copy moved to) are asked point-to-point, one at a time ([`Resume::Pending`]),
    ///   following `Moved` answers to the current owner; the first copy found is taken over
    ///   (its committed state: an interaction in progress there is not carried). If none
    ///   answers with a copy, a local replica (even one the token does not name) is promoted
    ///   as a last resort.
    /// - No copy can exist: [`Resume::Expired`].
    ///
    /// Every takeover is reported by exactly one [`Event::SessionFailover`], which carries the
    /// state, and every failure by one [`Event::SessionExpired`].
    pub fn session_resume(
        &mut self,
        now: Instant,
        token: SessionToken,
    ) -> Result<Resume, SessionError> {
        self.session_check_live()?;
        let id = token.id;
        if self.sessions.resuming.contains_key(&id) {
            return Err(SessionError::Resuming(id));
        }
        let wanted = (token.epoch, token.primary);
        let me = self.key;
        if let Some(o) = self.sessions.owned.get_mut(&id) {
            if o.generation(me) >= wanted {
                o.last_used = now;
                let idle = self.config.session_idle_timeout;
                if now.saturating_duration_since(o.last_replicated) >= idle / 2 {
                    o.refresh = true;
                    self.queue_replication(id);
                    self.sessions_settle(now);
                }
                return Ok(Resume::Ready(self.owned_token(id).unwrap_or(token)));
            }
            // The token names a newer generation: this copy is stale.
            self.drop_owned(now, id, wanted);
        }
        if !self.sessions.replicas.contains_key(&id)
            && self.sessions.held() >= self.config.max_sessions
        {
            return Err(SessionError::TooManySessions {
                max: self.config.max_sessions,
            });
        }
        self.sessions.resuming.insert(
            id,
            Resuming {
                token,
                started: false,
                candidates: VecDeque::new(),
                asked: 0,
                unreachable: Vec::new(),
                newest: wanted,
                asked_members: Vec::new(),
                retried: Vec::new(),
                retry_at: None,
                backoff: self.config.recovery_backoff_initial,
                timed_out: self.sessions.tombs.get(&id) == Some(&Tomb::TimedOut),
                unknown_until: None,
            },
        );
        if !self.is_joined() {
            // Not knowing the cluster yet, this member cannot tell a lost session from a live
            // one: the claims start once it has joined (see `sessions_settle`).
            self.sessions.deferred = true;
            return Ok(Resume::Pending);
        }
        Ok(self.start_claims(now, id))
    }

    /// Starts looking for a session being resumed: asks the members that may hold a copy, or
    /// promotes a local replica, or reports it expired.
    fn start_claims(&mut self, now: Instant, id: SessionId) -> Resume {
        let Some(r) = self.sessions.resuming.get(&id) else {
            return Resume::Pending;
        };
        let token = r.token;
        let mut newest = r.newest;
        let local = self.sessions.replicas.get(&id);
        // Who can be asked: a live member, or the primary of the local copy unless it is known
        // gone (one not known as a member yet is asked at the address its replications carry).
        let askable = |n: &Node, k: MemberKey| {
            k != n.key
                && match local {
                    Some(l) if l.primary == k => n.may_be_up(k, Some(l.heard)),
                    _ => n.members.get(&k).is_some_and(|m| m.state.is_live()),
                }
        };
        if let Some(l) = local {
            // The token names this very copy (the secondary of its generation; a copy of a
            // newer one has an owner to ask first) and its primary is known gone: promote. A
            // suspect primary is asked first (it may be slow, not gone): it hands over its
            // latest committed state, and two members never serve the session.
            let named = token.secondary == Some(self.key)
                && l.handed.is_none()
                && l.generation() == (token.epoch, token.primary);
            if named && !askable(self, token.primary) {
                self.sessions.resuming.remove(&id);
                return self.promote_replica(now, id, &token, newest);
            }
        }
        let mut order: Vec<MemberKey> = Vec::new();
        if let Some(Tomb::Moved((epoch, primary, _))) = self.sessions.tombs.get(&id) {
            order.push(*primary);
            newest = newest.max((*epoch, *primary));
        }
        order.push(token.primary);
        order.extend(token.secondary);
        if let Some(l) = local {
            order.push(l.owner().1);
            order.push(l.primary);
            newest = newest.max(l.owner());
        }
        let has_local = local.is_some();
        let alive = |n: &Node, k: MemberKey| {
            n.members
                .get(&k)
                .is_some_and(|m| m.state == MemberState::Alive)
        };
        let mut candidates = VecDeque::new();
        // Alive members first: a suspect one probably cannot answer.
        for pass_alive in [true, false] {
            for &k in &order {
                if askable(self, k) && alive(self, k) == pass_alive && !candidates.contains(&k) {
                    candidates.push_back(k);
                }
            }
        }
        if candidates.is_empty() && !has_local {
            // Members this one has never heard of may be alive all the same (it joined alone,
            // hearing nobody under loss): wait a while for their heartbeats before calling the
            // session lost.
            let unknown = order
                .iter()
                .any(|k| *k != self.key && !self.members.contains_key(k));
            let wait = self.config.discovery() + self.config.suspect_timeout();
            let interval = self.config.heartbeat_interval;
            if let Some(r) = self.sessions.resuming.get_mut(&id) {
                let until = *r.unknown_until.get_or_insert(now + wait);
                if unknown && now < until && !r.timed_out {
                    let at = (now + interval).min(until);
                    r.retry_at = Some(at);
                    self.sessions.claim_retries.insert((at, id));
                    return Resume::Pending;
                }
            }
        }
        if candidates.is_empty() {
            let Some(r) = self.sessions.resuming.remove(&id) else {
                return Resume::Pending;
            };
            if has_local {
                return self.promote_replica(now, id, &r.token, newest);
            }
            let reason = if r.timed_out {
                ExpiredReason::TimedOut
            } else {
                ExpiredReason::Lost
            };
            return self.resume_expired(id, reason);
        }
        if let Some(r) = self.sessions.resuming.get_mut(&id) {
            r.started = true;
            r.candidates = candidates;
            r.newest = newest;
        }
        self.next_claim(now, id);
        Resume::Pending
    }

    // ----- getters -----

    /// A session this member serves.
    pub fn session(&self, id: SessionId) -> Option<SessionInfo> {
        let o = self.sessions.owned.get(&id)?;
        Some(SessionInfo {
            token: self.owned_token(id)?,
            version: o.version,
            replicated: o.acked,
            uncommitted: o.staged,
            bytes: o.bytes,
        })
    }

    /// The state of a session this member serves (uncommitted changes included).
    pub fn session_state(&self, id: SessionId) -> Option<&SessionState> {
        self.sessions.owned.get(&id).map(|o| &o.state)
    }

    /// Ids of the sessions this member serves.
    pub fn session_ids(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.sessions.owned.keys().copied()
    }

    /// The replica this member holds of another member's session: `(epoch, primary,
    /// version, state)`.
    pub fn session_replica(&self, id: SessionId) -> Option<(u64, MemberKey, u64, &SessionState)> {
        let r = self.sessions.replicas.get(&id)?;
        Some((r.epoch, r.primary, r.version, &r.state))
    }

    // ----- internals: primary -----

    fn session_check_live(&self) -> Result<(), SessionError> {
        if self.left {
            Err(SessionError::Left)
        } else {
            Ok(())
        }
    }

    fn session_check_names(&self, pool: &str, key: &str) -> Result<(), SessionError> {
        self.session_check_live()?;
        if pool.is_empty() {
            return Err(SessionError::EmptyPool);
        }
        let max = self.config.max_name_len;
        for (what, len) in [("pool", pool.len()), ("key", key.len())] {
            if len > max {
                return Err(SessionError::TooLong { what, len, max });
            }
        }
        Ok(())
    }

    fn session_change(
        &mut self,
        now: Instant,
        id: SessionId,
        change: Change,
    ) -> Result<Option<Value>, SessionError> {
        let max = self.config.max_session_bytes;
        let o = self
            .sessions
            .owned
            .get_mut(&id)
            .ok_or(SessionError::NotHere(id))?;
        let bytes = o.state.bytes_after(o.bytes, &change);
        if bytes > max {
            return Err(SessionError::TooLarge { bytes, max });
        }
        o.bytes = bytes;
        o.last_used = now;
        o.staged = true;
        let (pool, key) = (change.target().0.to_owned(), change.target().1.to_owned());
        let old = o.state.apply(change.clone());
        if old.is_none() && matches!(change, Change::Remove { .. }) {
            // Removing what is not there changes nothing: it makes a version, but holds nothing.
            return Ok(None);
        }
        let target = (pool.clone(), key.clone());
        o.undo
            .entry(target.clone())
            .or_insert_with(|| match old.clone() {
                Some(value) => Change::Put { pool, key, value },
                None => Change::Remove { pool, key },
            });
        o.pending.insert(target, change);
        Ok(old)
    }

    /// Starts serving `state` as `version` of generation `(epoch, self)` with `secondary`;
    /// returns its token.
    fn serve_new(
        &mut self,
        now: Instant,
        id: SessionId,
        state: SessionState,
        version: u64,
        epoch: u64,
        secondary: Option<(MemberKey, u64)>,
    ) -> SessionToken {
        self.sessions.owned.insert(
            id,
            Owned {
                bytes: state.bytes(),
                state,
                version,
                epoch,
                secondary,
                assignment: 1,
                acked: None,
                log: VecDeque::new(),
                log_bytes: 0,
                pending: BTreeMap::new(),
                undo: BTreeMap::new(),
                staged: false,
                in_flight: None,
                queued: false,
                refresh: false,
                retry_at: None,
                backoff: self.config.recovery_backoff_initial,
                last_used: now,
                last_replicated: now,
            },
        );
        self.schedule_sweep(now);
        SessionToken {
            id,
            epoch,
            primary: self.key,
            secondary: secondary.map(|(k, _)| k),
        }
    }

    /// False only if `k` is known gone: departed (failed or left) and, if it replicated to
    /// this member at `heard`, not since it was declared so (then it restarted, or was wrongly
    /// declared failed, and membership has not caught up yet). A member not known yet may be
    /// up.
    fn may_be_up(&self, k: MemberKey, heard: Option<Instant>) -> bool {
        self.members.get(&k).is_none_or(|m| {
            m.state.is_live() || heard.is_some_and(|h| m.departed_at.is_some_and(|d| h > d))
        })
    }

    fn owned_token(&self, id: SessionId) -> Option<SessionToken> {
        let o = self.sessions.owned.get(&id)?;
        Some(SessionToken {
            id,
            epoch: o.epoch,
            primary: self.key,
            secondary: o.secondary.map(|(k, _)| k),
        })
    }

    /// The secondary for `id`: the live member with the highest rendezvous score, among
    /// members on another host if there are any.
    fn pick_secondary(&self, id: SessionId) -> Option<(MemberKey, u64)> {
        self.pick_secondary_except(id, None)
    }

    /// [`Node::pick_secondary`] passing over `except` (a former primary just taken over from:
    /// crashed, or keeping only an older copy), unless it is the only member left.
    fn pick_secondary_except(
        &self,
        id: SessionId,
        except: Option<MemberKey>,
    ) -> Option<(MemberKey, u64)> {
        let own_host = &self.identity.host_id;
        let id_bytes = id.0.to_be_bytes();
        self.members
            .values()
            .filter(|m| m.state == MemberState::Alive)
            .max_by_key(|m| {
                let elsewhere = own_host.is_empty() || m.host_id != *own_host;
                let score = stable_hash(&[b"secondary", &id_bytes, &m.key.0.to_be_bytes()]);
                (Some(m.key) != except, elsewhere, score)
            })
            .map(|m| (m.key, m.incarnation))
    }

    fn queue_replication(&mut self, id: SessionId) {
        if let Some(o) = self.sessions.owned.get_mut(&id) {
            if !o.queued && o.retry_at.is_none() && o.needs_replication() {
                o.queued = true;
                self.sessions.ready.push_back(id);
            }
        }
    }

    /// This member leaves: resumes under way cannot finish, and each ends with its
    /// `SessionExpired { Lost }` (no copy was taken over here).
    pub(super) fn sessions_leave(&mut self) {
        let ids: Vec<SessionId> = self.sessions.resuming.keys().copied().collect();
        self.sessions.resuming.clear();
        self.sessions.claim_retries.clear();
        for id in ids {
            self.resume_expired(id, ExpiredReason::Lost);
        }
    }

    /// Work after any input: new secondaries where membership changed, due retries, expiry,
    /// and replication requests up to `max_replications_in_flight`.
    pub(super) fn sessions_settle(&mut self, now: Instant) {
        if self.left {
            return;
        }
        if std::mem::take(&mut self.sessions.dirty) {
            self.reassign_secondaries(now);
            self.resend_releases(now);
        }
        if self.sessions.deferred && self.is_joined() {
            self.sessions.deferred = false;
            let waiting: Vec<SessionId> = self
                .sessions
                .resuming
                .iter()
                .filter(|(_, r)| !r.started)
                .map(|(id, _)| *id)
                .collect();
            for id in waiting {
                self.start_claims(now, id);
            }
        }
        while let Some(&(at, id)) = self.sessions.claim_retries.first() {
            if at > now {
                break;
            }
            self.sessions.claim_retries.pop_first();
            let due = self
                .sessions
                .resuming
                .get(&id)
                .filter(|r| r.retry_at == Some(at))
                .map(|r| r.started);
            match due {
                Some(true) => self.next_claim(now, id),
                Some(false) => {
                    // Waiting for members it had never heard of: look again.
                    if let Some(r) = self.sessions.resuming.get_mut(&id) {
                        r.retry_at = None;
                    }
                    self.start_claims(now, id);
                }
                None => {}
            }
        }
        while let Some(&(at, id)) = self.sessions.retries.first() {
            if at > now {
                break;
            }
            self.sessions.retries.pop_first();
            if let Some(o) = self.sessions.owned.get_mut(&id) {
                if o.retry_at == Some(at) {
                    o.retry_at = None;
                }
            }
            self.queue_replication(id);
        }
        if self.sessions.next_sweep.is_some_and(|t| now >= t) {
            self.sweep_idle(now);
        }
        while self.sessions.in_flight < self.config.max_replications_in_flight {
            let Some(id) = self.sessions.ready.pop_front() else {
                break;
            };
            if let Some(o) = self.sessions.owned.get_mut(&id) {
                o.queued = false;
            }
            self.send_replication(now, id);
        }
    }

    /// Checks every served session's secondary after a membership change.
    fn reassign_secondaries(&mut self, now: Instant) {
        let ids: Vec<SessionId> = self.sessions.owned.keys().copied().collect();
        for id in ids {
            let current = self.sessions.owned.get(&id).and_then(|o| o.secondary);
            let still = current.is_some_and(|(k, inc)| {
                self.members
                    .get(&k)
                    .is_some_and(|m| m.state.is_live() && m.incarnation == inc)
            });
            if still {
                continue;
            }
            let next = self.pick_secondary(id);
            if next == current {
                continue;
            }
            let me = self.key;
            let backoff = self.config.recovery_backoff_initial;
            let Some(o) = self.sessions.owned.get_mut(&id) else {
                continue;
            };
            o.secondary = next;
            o.assignment += 1;
            // A replication in flight went to the former secondary: its answer says nothing
            // about the new one (it is ignored when it comes).
            o.in_flight = None;
            o.acked = None;
            o.log.clear();
            o.log_bytes = 0;
            o.retry_at = None;
            o.backoff = backoff;
            let below = rank(o.generation(me), o.assignment);
            if next.is_some() {
                self.queue_replication(id);
            }
            // A former secondary that is still around (suspect, or declared failed but only
            // cut off) keeps a copy nobody would update: once it answers, it drops it. One
            // that restarted has none.
            if let Some((k, _)) = current {
                if next.is_none_or(|(n, _)| n != k) {
                    self.release_holders(now, id, below, [k]);
                }
            }
        }
    }

    fn send_replication(&mut self, now: Instant, id: SessionId) {
        let me = self.key;
        let Some(o) = self.sessions.owned.get_mut(&id) else {
            return;
        };
        if !o.needs_replication() {
            return;
        }
        let Some((secondary, _)) = o.secondary else {
            return;
        };
        let delta_from = o
            .acked
            .filter(|&a| a == o.version || o.log.front().is_some_and(|(v, _)| *v == a + 1));
        let payload = match delta_from {
            Some(base) => ReplicaPayload::Delta {
                base,
                changes: o
                    .log
                    .iter()
                    .filter(|(v, _)| *v > base)
                    .flat_map(|(_, c)| c.iter().cloned())
                    .collect(),
            },
            None => ReplicaPayload::Full(o.committed_state()),
        };
        let full = matches!(payload, ReplicaPayload::Full(_));
        let body = SessionReplicate {
            id,
            epoch: o.epoch,
            primary: me,
            assignment: o.assignment,
            primary_addr: self.identity.http_addr,
            version: o.version,
            payload,
        };
        let version = o.version;
        o.refresh = false;
        let Ok(bytes) = codec::encode(&body) else {
            debug_assert!(false, "session replications always encode");
            return;
        };
        let Some(to) = self.members.get(&secondary).map(|m| m.http_addr) else {
            return;
        };
        self.stats.replications_sent += 1;
        self.stats.replication_bytes += bytes.len() as u64;
        if full {
            self.stats.replications_full += 1;
        }
        let rid = self.send_post(
            now,
            to,
            exchange::PATH_SESSION_REPLICATE,
            Bytes::from(bytes),
            Purpose::Replicate { id, version },
        );
        if let Some(o) = self.sessions.owned.get_mut(&id) {
            o.in_flight = Some(rid);
            o.last_replicated = now;
        }
        self.sessions.in_flight += 1;
    }

    pub(super) fn on_replicate_reply(
        &mut self,
        now: Instant,
        rid: RequestId,
        id: SessionId,
        sent_version: u64,
        body: Option<&[u8]>,
    ) {
        // Every replication sent gets exactly one answer or failure, whether or not its session
        // is still served: this is the only place the count goes down.
        self.sessions.in_flight = self.sessions.in_flight.saturating_sub(1);
        let Some(o) = self.sessions.owned.get_mut(&id) else {
            return;
        };
        if o.in_flight != Some(rid) {
            return;
        }
        o.in_flight = None;
        let reply = body.and_then(|b| codec::decode::<ReplicateReply>(b, 1024).ok());
        match reply {
            Some(ReplicateReply::Ack { version }) if version <= o.version => {
                let advanced = o.acked.is_none_or(|a| version > a);
                o.acked = Some(version);
                while o.log.front().is_some_and(|(v, _)| *v <= version) {
                    if let Some((_, c)) = o.log.pop_front() {
                        o.log_bytes -= c.iter().map(Change::cost).sum::<usize>();
                    }
                }
                o.backoff = self.config.recovery_backoff_initial;
                if advanced || version == sent_version {
                    self.push_event(Event::SessionReplicated { id, version });
                }
                self.queue_replication(id);
            }
            Some(ReplicateReply::NeedFull) => {
                o.acked = None;
                o.log.clear();
                o.log_bytes = 0;
                self.queue_replication(id);
            }
            Some(ReplicateReply::Superseded { epoch, primary }) => {
                self.stats.replications_failed += 1;
                if valid_epoch(epoch) && (epoch, primary) > o.generation(self.key) {
                    self.drop_owned(now, id, (epoch, primary));
                } else {
                    self.retry_replication(now, id);
                }
            }
            Some(ReplicateReply::Ack { .. } | ReplicateReply::Refused) | None => {
                self.stats.replications_failed += 1;
                self.retry_replication(now, id);
            }
        }
    }

    fn retry_replication(&mut self, now: Instant, id: SessionId) {
        let max = self.config.recovery_backoff_max;
        let Some(o) = self.sessions.owned.get_mut(&id) else {
            return;
        };
        let at = back_off(now, &mut o.backoff, max, &mut self.rng);
        o.retry_at = Some(at);
        self.sessions.retries.insert((at, id));
    }

    /// Another generation owns `id`: this member stops serving it, and its secondary is told
    /// to drop the copy of the generation that ended.
    fn drop_owned(&mut self, now: Instant, id: SessionId, by: Generation) {
        let Some(o) = self.sessions.owned.remove(&id) else {
            return;
        };
        self.stats.sessions_superseded += 1;
        self.sessions
            .bury(id, Tomb::Moved(rank(by, 0)), self.config.max_sessions);
        self.push_event(Event::SessionSuperseded { id, by: by.1 });
        if let Some((s, _)) = o.secondary {
            self.release_holders(now, id, rank(by, 0), [s]);
        }
    }

    /// Tells every member in `holders` (but this one and `below`'s primary) to drop its
    /// copies of `id` ranked below `below`. A copy of that rank or above is never dropped: a
    /// takeover releases with assignment 0, so the new generation's own secondary can be among
    /// them.
    fn release_holders(
        &mut self,
        now: Instant,
        id: SessionId,
        below: Rank,
        holders: impl IntoIterator<Item = MemberKey>,
    ) {
        let mut done: Vec<MemberKey> = vec![self.key, below.1];
        for k in holders {
            if !done.contains(&k) {
                done.push(k);
                self.send_release(now, k, id, below);
            }
        }
    }

    fn schedule_sweep(&mut self, now: Instant) {
        if self.sessions.next_sweep.is_none() {
            self.sessions.next_sweep = Some(now + self.sweep_period());
        }
    }

    fn sweep_period(&self) -> Duration {
        (self.config.session_idle_timeout / 8)
            .clamp(Duration::from_millis(1), Duration::from_secs(1))
    }

    /// Expires sessions and replicas unused for `session_idle_timeout`.
    fn sweep_idle(&mut self, now: Instant) {
        let idle = self.config.session_idle_timeout;
        let max = self.config.max_sessions;
        let stale = |t: Instant| t + idle <= now;
        let expired: Vec<SessionId> = self
            .sessions
            .owned
            .iter()
            .filter(|(_, o)| stale(o.last_used))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.sessions.owned.remove(&id);
            self.sessions.bury(id, Tomb::TimedOut, max);
            self.stats.sessions_expired += 1;
            self.push_event(Event::SessionExpired {
                id,
                reason: ExpiredReason::TimedOut,
            });
        }
        let expired: Vec<SessionId> = self
            .sessions
            .replicas
            .iter()
            .filter(|(_, r)| stale(r.last_used))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.sessions.replicas.remove(&id);
            self.sessions.bury(id, Tomb::TimedOut, max);
        }
        self.sessions
            .releases
            .retain(|_, (_, give_up, _)| *give_up > now);
        self.resend_releases(now);
        self.sessions.next_sweep = self
            .sessions
            .has_timers()
            .then(|| now + self.sweep_period());
    }

    // ----- internals: resume -----

    fn resume_expired(&mut self, id: SessionId, reason: ExpiredReason) -> Resume {
        self.stats.sessions_expired += 1;
        self.push_event(Event::SessionExpired { id, reason });
        Resume::Expired(reason)
    }

    /// The local replica becomes the served session of a new generation, above every one
    /// the replica, `token` or `newest` (heard of while looking) names; the other holders are
    /// told to drop their copies.
    fn promote_replica(
        &mut self,
        now: Instant,
        id: SessionId,
        token: &SessionToken,
        newest: Generation,
    ) -> Resume {
        let Some(r) = self.sessions.replicas.remove(&id) else {
            return self.resume_expired(id, ExpiredReason::Lost);
        };
        let owner = r.owner();
        let epoch = owner.0.max(token.epoch).max(newest.0).saturating_add(1);
        let new = self.install(now, id, epoch, r.primary, r.version, r.state);
        // The former primary may be alive but cut off: once it is back, it must drop its copy.
        let holders = [r.primary, owner.1, token.primary, newest.1];
        let below = rank((epoch, self.key), 0);
        self.release_holders(now, id, below, holders.into_iter().chain(token.secondary));
        Resume::FailedOver(new)
    }

    /// Serves `state` from now on as generation `(epoch, self)`, picks a secondary, and
    /// reports the failover.
    fn install(
        &mut self,
        now: Instant,
        id: SessionId,
        epoch: u64,
        from: MemberKey,
        version: u64,
        state: SessionState,
    ) -> SessionToken {
        let secondary = self.pick_secondary_except(id, Some(from));
        self.sessions.unbury(id);
        let token = self.serve_new(now, id, state.clone(), version, epoch, secondary);
        self.stats.sessions_failed_over += 1;
        self.push_event(Event::SessionFailover {
            id,
            from,
            token,
            state,
        });
        self.queue_replication(id);
        self.sessions_settle(now);
        token
    }

    /// Asks the next candidate for the session, or ends the resume.
    fn next_claim(&mut self, now: Instant, id: SessionId) {
        let Some(r) = self.sessions.resuming.get_mut(&id) else {
            return;
        };
        if let Some(at) = r.retry_at {
            if at > now {
                // Waiting to ask a member that was busy taking the session over itself.
                return;
            }
            r.retry_at = None;
        }
        let next = if r.asked < MAX_CLAIM_HOPS {
            r.candidates.pop_front()
        } else {
            None
        };
        let target = next.and_then(|k| {
            let addr = self.members.get(&k).map(|m| m.http_addr).or_else(|| {
                // The primary of a local copy, not known as a member yet.
                let r = self.sessions.replicas.get(&id)?;
                (r.primary == k).then_some(r.primary_addr)
            })?;
            Some((k, addr))
        });
        let Some(r) = self.sessions.resuming.get_mut(&id) else {
            return;
        };
        match (next, target) {
            (Some(_), Some((member, to))) => {
                r.asked += 1;
                if !r.asked_members.contains(&member) {
                    r.asked_members.push(member);
                }
                let claim = SessionClaim {
                    id,
                    claimant: self.key,
                    epoch: r.newest.0,
                    unreachable: r.unreachable.clone(),
                };
                let Ok(bytes) = codec::encode(&claim) else {
                    return;
                };
                self.send_post(
                    now,
                    to,
                    exchange::PATH_SESSION_CLAIM,
                    Bytes::from(bytes),
                    Purpose::Claim { id, member },
                );
            }
            (Some(k), None) => {
                // Not a member this one knows: it cannot be asked.
                r.mark_unreachable(k);
                self.next_claim(now, id)
            }
            (None, _) => {
                let Some(r) = self.sessions.resuming.remove(&id) else {
                    return;
                };
                if self.sessions.replicas.contains_key(&id) {
                    self.promote_replica(now, id, &r.token, r.newest);
                } else {
                    let reason = if r.timed_out {
                        ExpiredReason::TimedOut
                    } else {
                        ExpiredReason::Lost
                    };
                    self.resume_expired(id, reason);
                }
            }
        }
    }

    pub(super) fn on_claim_reply(
        &mut self,
        now: Instant,
        from: MemberKey,
        id: SessionId,
        body: Option<&[u8]>,
    ) {
        if !self.sessions.resuming.contains_key(&id) {
            return;
        }
        let limit = self.config.max_request_body();
        let Some(body) = body else {
            // Failed in transit (refused, timed out, or an error status). The holder may have
            // handed its copy over and only the answer was lost: ask it once more, first.
            if let Some(r) = self.sessions.resuming.get_mut(&id) {
                if r.retried.contains(&from) {
                    r.mark_unreachable(from);
                } else {
                    r.retried.push(from);
                    r.candidates.retain(|k| *k != from);
                    r.candidates.push_front(from);
                }
            }
            self.next_claim(now, id);
            return;
        };
        let reply = codec::decode::<ClaimReply>(body, limit).ok();
        let me = self.key;
        match reply {
            Some(ClaimReply::Copy {
                serve_epoch,
                primary,
                version,
                state,
            }) if state.bytes() <= self.config.max_session_bytes
                && state.is_valid(self.config.max_name_len)
                && valid_epoch(serve_epoch)
                && version <= MAX_EPOCH
                && self
                    .sessions
                    .resuming
                    .get(&id)
                    .is_some_and(|r| (serve_epoch, me) > r.newest) =>
            {
                let Some(r) = self.sessions.resuming.remove(&id) else {
                    return;
                };
                // A local replica is superseded by the copy taken over.
                let local = self.sessions.replicas.remove(&id);
                self.install(now, id, serve_epoch, primary, version, state);
                // Every member that may keep an older copy drops it: the holders the token
                // names, every member asked (the one that answered kept the copy in case this
                // answer was lost), the copy's primary, the newest owner heard of, and whoever
                // this member's own replica came from.
                let t = r.token;
                let mut holders = vec![t.primary, from, primary, r.newest.1];
                holders.extend(t.secondary);
                holders.extend(r.asked_members);
                if let Some(l) = local {
                    holders.extend([l.primary, l.owner().1]);
                }
                self.release_holders(now, id, rank((serve_epoch, me), 0), holders);
            }
            Some(ClaimReply::Moved {
                epoch,
                primary,
                copy,
            }) if valid_epoch(epoch) => {
                if let Some(r) = self.sessions.resuming.get_mut(&id) {
                    let g = (epoch, primary);
                    // Follow it to a generation at least as new as any heard of, unless it
                    // names a member already found unreachable (or this one).
                    let follow =
                        primary != me && !r.unreachable.contains(&primary) && g >= r.newest;
                    if copy {
                        // The holder hands its copy over once the owner is known unreachable:
                        // ask it again, right after the owner.
                        r.candidates.retain(|k| *k != from);
                        if follow {
                            r.candidates.push_front(from);
                        } else {
                            r.candidates.push_back(from);
                        }
                    }
                    if follow {
                        r.newest = g;
                        r.candidates.retain(|k| *k != primary);
                        r.candidates.push_front(primary);
                    }
                }
                self.next_claim(now, id);
            }
            Some(ClaimReply::Busy) => {
                // It is taking the session over itself: ask it again after a pause (the ask
                // counts, so two members waiting on each other give up).
                let max = self.config.recovery_backoff_max;
                if let Some(r) = self.sessions.resuming.get_mut(&id) {
                    let at = back_off(now, &mut r.backoff, max, &mut self.rng);
                    r.retry_at = Some(at);
                    r.candidates.retain(|k| *k != from);
                    r.candidates.push_front(from);
                    self.sessions.claim_retries.insert((at, id));
                }
            }
            Some(ClaimReply::TimedOut) => {
                if let Some(r) = self.sessions.resuming.get_mut(&id) {
                    r.timed_out = true;
                }
                self.next_claim(now, id);
            }
            _ => {
                // No copy there (or an answer that makes no sense): holders asked later may
                // hand theirs over without sending this member's way again.
                if let Some(r) = self.sessions.resuming.get_mut(&id) {
                    r.mark_unreachable(from);
                }
                self.next_claim(now, id);
            }
        }
    }

    /// Tells `to` to drop its copies of `id` older than `g`, until it acknowledges or
    /// `session_idle_timeout` passes (its copy has expired by then).
    fn send_release(&mut self, now: Instant, to: MemberKey, id: SessionId, below: Rank) {
        if self.sessions.releases.len() >= self.config.max_sessions {
            // Full: the release closest to giving up makes room.
            let oldest = self
                .sessions
                .releases
                .iter()
                .min_by_key(|(_, (_, give_up, _))| *give_up)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.sessions.releases.remove(&k);
            }
        }
        let give_up = now + self.config.session_idle_timeout;
        let below = match self.sessions.releases.get(&(id, to)) {
            Some((earlier, _, _)) => below.max(*earlier),
            None => below,
        };
        self.sessions
            .releases
            .insert((id, to), (below, give_up, None));
        self.schedule_sweep(now);
        self.resend_releases(now);
    }

    /// Sends every unacknowledged release whose target is alive and not already asked.
    fn resend_releases(&mut self, now: Instant) {
        let due: Vec<((SessionId, MemberKey), Rank, std::net::SocketAddr)> = self
            .sessions
            .releases
            .iter()
            .filter(|(_, (_, _, in_flight))| in_flight.is_none())
            .filter_map(|(&(id, to), &(g, _, _))| {
                let m = self.members.get(&to)?;
                (m.state == MemberState::Alive).then_some(((id, to), g, m.http_addr))
            })
            .collect();
        for ((id, to), g, addr) in due {
            let body = SessionRelease {
                id,
                epoch: g.0,
                primary: g.1,
                assignment: g.2,
            };
            let Ok(bytes) = codec::encode(&body) else {
                continue;
            };
            let rid = self.send_post(
                now,
                addr,
                exchange::PATH_SESSION_RELEASE,
                Bytes::from(bytes),
                Purpose::Release { id, member: to },
            );
            if let Some(entry) = self.sessions.releases.get_mut(&(id, to)) {
                entry.2 = Some(rid);
            }
        }
    }

    /// The outcome of a release: acknowledged (done) or not (resent later).
    pub(super) fn on_release_reply(
        &mut self,
        rid: RequestId,
        id: SessionId,
        member: MemberKey,
        ok: bool,
    ) {
        let key = (id, member);
        if self
            .sessions
            .releases
            .get(&key)
            .is_some_and(|e| e.2 == Some(rid))
        {
            if ok {
                self.sessions.releases.remove(&key);
            } else if let Some(e) = self.sessions.releases.get_mut(&key) {
                e.2 = None;
            }
        }
    }

    // ----- serving -----

    /// Serves the three session exchanges; `None` for any other path.
    pub(super) fn serve_session(&mut self, now: Instant, req: &Request) -> Option<Response> {
        let limit = self.config.max_request_body();
        let encoded = match req.path.as_str() {
            exchange::PATH_SESSION_REPLICATE => {
                let Ok(r) = codec::decode::<SessionReplicate>(&req.body, limit) else {
                    return Some(Response::error(400, "bad replication body"));
                };
                let reply = self.apply_replication(now, r);
                codec::encode(&reply)
            }
            exchange::PATH_SESSION_CLAIM => {
                let Ok(c) = codec::decode::<SessionClaim>(&req.body, limit) else {
                    return Some(Response::error(400, "bad claim body"));
                };
                self.stats.claims_served += 1;
                let reply = self.serve_claim(now, c);
                codec::encode(&reply)
            }
            exchange::PATH_SESSION_RELEASE => {
                let Ok(r) = codec::decode::<SessionRelease>(&req.body, limit) else {
                    return Some(Response::error(400, "bad release body"));
                };
                self.apply_release(now, r);
                Ok(Vec::new())
            }
            _ => return None,
        };
        Some(match encoded {
            Ok(b) if b.len() <= self.config.http.max_body_bytes => {
                Response::ok(exchange::CONTENT_TYPE, Bytes::from(b))
            }
            Ok(_) => Response::error(507, "answer exceeds http.max_body_bytes"),
            Err(_) => Response::error(500, "could not encode the answer"),
        })
    }

    /// The secondary's side of a replication.
    fn apply_replication(&mut self, now: Instant, r: SessionReplicate) -> ReplicateReply {
        let incoming: Generation = (r.epoch, r.primary);
        let incoming_rank = rank(incoming, r.assignment);
        let id = r.id;
        if r.primary == self.key || !valid_epoch(r.epoch) || r.version > MAX_EPOCH {
            return ReplicateReply::Refused;
        }
        if let Some(o) = self.sessions.owned.get(&id) {
            let mine = o.generation(self.key);
            if mine > incoming {
                self.stats.replications_superseded += 1;
                return ReplicateReply::Superseded {
                    epoch: mine.0,
                    primary: mine.1,
                };
            }
            // A newer generation exists elsewhere: this member's copy is stale.
            self.drop_owned(now, id, incoming);
        }
        // What this member knows to be newer: the generation a copy it holds was handed to,
        // or the rank a release dropped copies below.
        let newer = match (
            self.sessions.replicas.get(&id),
            self.sessions.tombs.get(&id),
        ) {
            (Some(copy), _) => Some((copy.owner(), copy.rank())),
            (None, Some(Tomb::Moved(t))) => Some(((t.0, t.1), *t)),
            _ => None,
        };
        if let Some((owner, held)) = newer {
            if owner > incoming {
                self.stats.replications_superseded += 1;
                return ReplicateReply::Superseded {
                    epoch: owner.0,
                    primary: owner.1,
                };
            }
            if held > incoming_rank {
                // Sent to an earlier choice of secondary, and overtaken: never goes back.
                return ReplicateReply::Refused;
            }
        }
        let max_bytes = self.config.max_session_bytes;
        let max_name = self.config.max_name_len;
        match (self.sessions.replicas.get_mut(&id), r.payload) {
            (Some(copy), ReplicaPayload::Delta { base, changes })
                if copy.rank() == incoming_rank && copy.version == base && r.version >= base =>
            {
                if !changes.iter().all(|c| c.is_valid(max_name)) {
                    self.sessions.replicas.remove(&id);
                    return ReplicateReply::Refused;
                }
                let mut bytes = copy.state.bytes();
                for c in &changes {
                    bytes = copy.state.bytes_after(bytes, c);
                    if bytes > max_bytes {
                        break;
                    }
                    copy.state.apply(c.clone());
                }
                if bytes > max_bytes {
                    self.sessions.replicas.remove(&id);
                    return ReplicateReply::Refused;
                }
                copy.version = r.version;
                copy.last_used = now;
                copy.heard = now;
                self.stats.replications_applied += 1;
                ReplicateReply::Ack { version: r.version }
            }
            (Some(copy), ReplicaPayload::Delta { .. })
                if copy.rank() == incoming_rank && copy.version >= r.version =>
            {
                copy.last_used = now;
                copy.heard = now;
                ReplicateReply::Ack {
                    version: copy.version,
                }
            }
            (_, ReplicaPayload::Delta { .. }) => ReplicateReply::NeedFull,
            (Some(copy), ReplicaPayload::Full(_))
                if copy.rank() == incoming_rank && copy.version > r.version =>
            {
                // A late copy of an older version: keep the newer one.
                ReplicateReply::Ack {
                    version: copy.version,
                }
            }
            (existing, ReplicaPayload::Full(state)) => {
                if state.bytes() > max_bytes
                    || !state.is_valid(max_name)
                    || (existing.is_none() && self.sessions.held() >= self.config.max_sessions)
                {
                    return ReplicateReply::Refused;
                }
                self.sessions.replicas.insert(
                    id,
                    Replica {
                        state,
                        version: r.version,
                        epoch: r.epoch,
                        primary: r.primary,
                        assignment: r.assignment,
                        handed: None,
                        heard: now,
                        primary_addr: r.primary_addr,
                        last_used: now,
                    },
                );
                self.sessions.unbury(id);
                self.schedule_sweep(now);
                self.stats.replications_applied += 1;
                ReplicateReply::Ack { version: r.version }
            }
        }
    }

    /// A member takes over a session this member holds a copy of.
    fn serve_claim(&mut self, now: Instant, c: SessionClaim) -> ClaimReply {
        let id = c.id;
        if c.claimant == self.key || c.unreachable.len() > MAX_CLAIM_HOPS || !valid_epoch(c.epoch) {
            return ClaimReply::Unknown;
        }
        if self.sessions.resuming.contains_key(&id) {
            return ClaimReply::Busy;
        }
        // The owner may still serve the session unless the claimant could not reach it or
        // this member knows it departed (one it does not know yet, having just started, gets
        // the benefit of the doubt: at worst the claimant comes back naming it unreachable).
        let heard = self
            .sessions
            .replicas
            .get(&id)
            .map(|r| (r.primary, r.heard));
        let reachable = |n: &Node, k: MemberKey| {
            let heard = heard.and_then(|(p, at)| (p == k).then_some(at));
            !c.unreachable.contains(&k) && n.may_be_up(k, heard)
        };
        if let Some(o) = self.sessions.owned.remove(&id) {
            let handed = (o.epoch.max(c.epoch) + 1, c.claimant);
            let state = o.committed_state();
            // Keep the committed state: if the answer is lost, a retried claim finds it again.
            self.sessions.replicas.insert(
                id,
                Replica {
                    state: state.clone(),
                    version: o.version,
                    epoch: o.epoch,
                    primary: self.key,
                    assignment: o.assignment,
                    handed: Some(handed),
                    heard: now,
                    primary_addr: self.identity.http_addr,
                    last_used: now,
                },
            );
            self.stats.sessions_superseded += 1;
            self.push_event(Event::SessionSuperseded { id, by: c.claimant });
            // The secondary keeps a copy of the generation that just ended.
            if let Some((s, _)) = o.secondary {
                self.release_holders(now, id, rank(handed, 0), [s]);
            }
            return ClaimReply::Copy {
                serve_epoch: handed.0,
                primary: self.key,
                version: o.version,
                state,
            };
        }
        if let Some(owner) = self.sessions.replicas.get(&id).map(Replica::owner) {
            let again = self
                .sessions
                .replicas
                .get(&id)
                .is_some_and(|r| r.handed.is_some_and(|h| h.1 == c.claimant));
            let serve_epoch = if again {
                // A retried claim: the same generation, unless the claimant knows a newer one.
                owner.0.max(c.epoch + 1)
            } else if owner.1 != c.claimant && reachable(self, owner.1) {
                return ClaimReply::Moved {
                    epoch: owner.0,
                    primary: owner.1,
                    copy: true,
                };
            } else {
                owner.0.max(c.epoch) + 1
            };
            let Some(r) = self.sessions.replicas.get_mut(&id) else {
                return ClaimReply::Unknown;
            };
            r.handed = Some((serve_epoch, c.claimant));
            r.last_used = now;
            return ClaimReply::Copy {
                serve_epoch,
                primary: r.primary,
                version: r.version,
                state: r.state.clone(),
            };
        }
        match self.sessions.tombs.get(&id) {
            Some(Tomb::TimedOut) => ClaimReply::TimedOut,
            Some(Tomb::Moved((epoch, primary, _)))
                if *primary != c.claimant && *primary != self.key && reachable(self, *primary) =>
            {
                ClaimReply::Moved {
                    epoch: *epoch,
                    primary: *primary,
                    copy: false,
                }
            }
            _ => ClaimReply::Unknown,
        }
    }

    /// A newer generation, or a primary that chose another secondary, tells this member to
    /// drop its older copies.
    fn apply_release(&mut self, now: Instant, r: SessionRelease) {
        let g: Generation = (r.epoch, r.primary);
        let below = rank(g, r.assignment);
        if r.primary == self.key || !valid_epoch(r.epoch) {
            return;
        }
        let owned_older = self
            .sessions
            .owned
            .get(&r.id)
            .is_some_and(|o| o.generation(self.key) < g);
        if owned_older {
            self.drop_owned(now, r.id, g);
        }
        let replica_older = self
            .sessions
            .replicas
            .get(&r.id)
            .is_some_and(|c| c.rank() < below);
        if replica_older {
            self.sessions.replicas.remove(&r.id);
        }
        let held =
            self.sessions.owned.contains_key(&r.id) || self.sessions.replicas.contains_key(&r.id);
        if !held {
            let newer = match self.sessions.tombs.get(&r.id) {
                Some(Tomb::Moved(old)) => *old < below,
                _ => true,
            };
            if newer {
                self.sessions
                    .bury(r.id, Tomb::Moved(below), self.config.max_sessions);
            }
        }
    }
}
