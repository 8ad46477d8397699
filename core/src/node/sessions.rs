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
use crate::ids::{MemberKey, RequestId, stable_hash};
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
    /// Version the secondary holds in this generation.
    acked: Option<u64>,
    /// Committed changes after `acked`, one entry per version, contiguous.
    log: VecDeque<(u64, Vec<Change>)>,
    log_bytes: usize,
    /// Changes since the last commit.
    pending: Vec<Change>,
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
}

/// A copy this member holds for another member's session.
#[derive(Debug)]
struct Replica {
    state: SessionState,
    version: u64,
    epoch: u64,
    primary: MemberKey,
    last_used: Instant,
}

impl Replica {
    fn generation(&self) -> Generation {
        (self.epoch, self.primary)
    }
}

/// What this member remembers of a session it no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tomb {
    TimedOut,
    Moved(Generation),
}

/// A resume waiting for a claim.
#[derive(Debug)]
struct Resuming {
    token: SessionToken,
    candidates: VecDeque<MemberKey>,
    asked: usize,
    /// Members whose claim failed (unreachable, or no useful answer).
    unreachable: Vec<MemberKey>,
    timed_out: bool,
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
    in_flight: usize,
    /// Releases not yet acknowledged: (session, former holder) → (generation, give up at,
    /// request in flight). Resent while the holder is alive, so a holder cut off when the
    /// session moved still drops its copy when it comes back.
    releases: BTreeMap<(SessionId, MemberKey), (Generation, Instant, Option<RequestId>)>,
    /// Membership changed: secondaries must be checked.
    dirty: bool,
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
        let retry = self.retries.first().map(|(t, _)| *t);
        match (retry, self.next_sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
            let hi = u128::from(self.rng.next_u64() ^ self.key.0);
            let id = SessionId((hi << 64) | u128::from(self.rng.next_u64()));
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
        if !o.pending.is_empty() {
            o.version += 1;
            let changes = std::mem::take(&mut o.pending);
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
            self.send_release(now, s, id, next);
        }
        self.sessions
            .bury(id, Tomb::Moved(next), self.config.max_sessions);
        Ok(true)
    }

    /// Finds the session `token` names and makes this member its primary. Call it at the start
    /// of every request that carries a token: on the primary it only marks the session used.
    ///
    /// - This member serves it: [`Resume::Ready`].
    /// - This member holds the replica the token names and the primary is not alive: the
    ///   replica is promoted at once ([`Resume::FailedOver`]).
    /// - Otherwise the members that may hold a copy (the primary if alive, the secondary, any
    ///   member a copy moved to) are asked point-to-point, one at a time ([`Resume::Pending`]);
    ///   the first copy found is taken over. If none answers with a copy, a local replica (even
    ///   one the token does not name) is promoted as a last resort.
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
            self.drop_owned(id, wanted);
        }
        let local = self.sessions.replicas.get(&id).map(|r| r.generation());
        let alive = |n: &Node, k: MemberKey| {
            n.members
                .get(&k)
                .is_some_and(|m| m.state == MemberState::Alive)
        };
        let live = |n: &Node, k: MemberKey| {
            k != n.key && n.members.get(&k).is_some_and(|m| m.state.is_live())
        };
        if let Some(gen_r) = local {
            let named = token.secondary == Some(me) && gen_r >= wanted;
            if named && !alive(self, token.primary) {
                return Ok(self.promote_replica(now, id));
            }
        }
        let mut order: Vec<MemberKey> = Vec::new();
        if let Some(Tomb::Moved((_, p))) = self.sessions.tombs.get(&id) {
            order.push(*p);
        }
        order.push(token.primary);
        order.extend(token.secondary);
        if let Some((_, p)) = local {
            order.push(p);
        }
        let mut candidates = VecDeque::new();
        // Alive members first: a suspect one probably cannot answer.
        for pass_alive in [true, false] {
            for &k in &order {
                if live(self, k) && alive(self, k) == pass_alive && !candidates.contains(&k) {
                    candidates.push_back(k);
                }
            }
        }
        if candidates.is_empty() {
            if local.is_some() {
                return Ok(self.promote_replica(now, id));
            }
            let reason = if self.sessions.tombs.get(&id) == Some(&Tomb::TimedOut) {
                ExpiredReason::TimedOut
            } else {
                ExpiredReason::Lost
            };
            return Ok(self.resume_expired(id, reason));
        }
        if self.sessions.held() >= self.config.max_sessions && local.is_none() {
            return Err(SessionError::TooManySessions {
                max: self.config.max_sessions,
            });
        }
        let timed_out = self.sessions.tombs.get(&id) == Some(&Tomb::TimedOut);
        self.sessions.resuming.insert(
            id,
            Resuming {
                token,
                candidates,
                asked: 0,
                unreachable: Vec::new(),
                timed_out,
            },
        );
        self.next_claim(now, id);
        Ok(Resume::Pending)
    }

    // ----- getters -----

    /// A session this member serves.
    pub fn session(&self, id: SessionId) -> Option<SessionInfo> {
        let o = self.sessions.owned.get(&id)?;
        Some(SessionInfo {
            token: self.owned_token(id)?,
            version: o.version,
            replicated: o.acked,
            uncommitted: !o.pending.is_empty(),
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
        o.pending.push(change.clone());
        Ok(o.state.apply(change))
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
                acked: None,
                log: VecDeque::new(),
                log_bytes: 0,
                pending: Vec::new(),
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

    /// Work after any input: new secondaries where membership changed, due retries, expiry,
    /// and replication requests up to `max_replications_in_flight`.
    pub(super) fn sessions_settle(&mut self, now: Instant) {
        if self.left {
            return;
        }
        if std::mem::take(&mut self.sessions.dirty) {
            self.reassign_secondaries();
            self.resend_releases(now);
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
    fn reassign_secondaries(&mut self) {
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
            if let Some(o) = self.sessions.owned.get_mut(&id) {
                o.secondary = next;
                o.acked = None;
                o.log.clear();
                o.log_bytes = 0;
                o.retry_at = None;
                o.backoff = self.config.recovery_backoff_initial;
            }
            if next.is_some() {
                self.queue_replication(id);
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
            None => ReplicaPayload::Full(o.state.clone()),
        };
        let full = matches!(payload, ReplicaPayload::Full(_));
        let body = SessionReplicate {
            id,
            epoch: o.epoch,
            primary: me,
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
                if (epoch, primary) > o.generation(self.key) {
                    self.drop_owned(id, (epoch, primary));
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
        let jitter = self.rng.unit();
        let Some(o) = self.sessions.owned.get_mut(&id) else {
            return;
        };
        let at = now + o.backoff.mul_f64(1.0 + jitter / 2.0);
        o.backoff = (o.backoff * 2).min(max);
        o.retry_at = Some(at);
        self.sessions.retries.insert((at, id));
    }

    /// Another generation owns `id`: this member stops serving it.
    fn drop_owned(&mut self, id: SessionId, by: Generation) {
        if self.sessions.owned.remove(&id).is_none() {
            return;
        }
        self.stats.sessions_superseded += 1;
        self.sessions
            .bury(id, Tomb::Moved(by), self.config.max_sessions);
        self.push_event(Event::SessionSuperseded { id, by: by.1 });
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

    /// The local replica becomes the served session of a new generation.
    fn promote_replica(&mut self, now: Instant, id: SessionId) -> Resume {
        let Some(r) = self.sessions.replicas.remove(&id) else {
            return self.resume_expired(id, ExpiredReason::Lost);
        };
        let epoch = r.epoch.saturating_add(1);
        let token = self.install(now, id, epoch, r.primary, r.version, r.state);
        // The former primary may be alive but cut off: once it is back, it must drop its copy.
        if r.primary != self.key && Some(r.primary) != token.secondary {
            self.send_release(now, r.primary, id, (token.epoch, self.key));
        }
        Resume::FailedOver(token)
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
        let next = if r.asked < MAX_CLAIM_HOPS {
            r.candidates.pop_front()
        } else {
            None
        };
        let target = next.and_then(|k| self.members.get(&k).map(|m| (k, m.http_addr)));
        match (next, target) {
            (Some(_), Some((member, to))) => {
                r.asked += 1;
                let claim = SessionClaim {
                    id,
                    claimant: self.key,
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
            (Some(_), None) => self.next_claim(now, id),
            (None, _) => {
                let Some(r) = self.sessions.resuming.remove(&id) else {
                    return;
                };
                if self.sessions.replicas.contains_key(&id) {
                    self.promote_replica(now, id);
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
        let reply = body.and_then(|b| codec::decode::<ClaimReply>(b, limit).ok());
        match reply {
            Some(ClaimReply::Copy {
                epoch,
                primary,
                version,
                state,
            }) if state.bytes() <= self.config.max_session_bytes
                && epoch <= MAX_EPOCH
                && version <= MAX_EPOCH =>
            {
                let Some(r) = self.sessions.resuming.remove(&id) else {
                    return;
                };
                // A local replica is superseded by the copy taken over.
                self.sessions.replicas.remove(&id);
                let new_epoch = epoch.max(r.token.epoch).saturating_add(1);
                let token = self.install(now, id, new_epoch, primary, version, state);
                // Holders the token names, and the one asked (it kept the copy as a replica in
                // case this answer was lost), keep an older copy unless one of them is the new
                // secondary: tell them to drop it.
                let mut others = vec![r.token.primary, from, primary];
                others.extend(r.token.secondary);
                others.sort();
                others.dedup();
                for k in others {
                    if k != self.key && Some(k) != token.secondary {
                        self.send_release(now, k, id, (new_epoch, self.key));
                    }
                }
            }
            Some(ClaimReply::Moved { primary, .. }) => {
                if let Some(r) = self.sessions.resuming.get_mut(&id) {
                    // Ask the owner it names, then this holder again: if the owner cannot be
                    // reached, the holder hands its copy over on the second ask.
                    if !r.candidates.contains(&from) {
                        r.candidates.push_front(from);
                    }
                    if primary != self.key
                        && !r.unreachable.contains(&primary)
                        && !r.candidates.contains(&primary)
                    {
                        r.candidates.push_front(primary);
                    }
                }
                self.next_claim(now, id);
            }
            Some(ClaimReply::TimedOut) => {
                if let Some(r) = self.sessions.resuming.get_mut(&id) {
                    r.timed_out = true;
                }
                self.next_claim(now, id);
            }
            _ => {
                if let Some(r) = self.sessions.resuming.get_mut(&id) {
                    if !r.unreachable.contains(&from) {
                        r.unreachable.push(from);
                    }
                }
                self.next_claim(now, id);
            }
        }
    }

    /// Tells `to` to drop its copies of `id` older than `g`, until it acknowledges or
    /// `session_idle_timeout` passes (its copy has expired by then).
    fn send_release(&mut self, now: Instant, to: MemberKey, id: SessionId, g: Generation) {
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
        self.sessions.releases.insert((id, to), (g, give_up, None));
        self.schedule_sweep(now);
        self.resend_releases(now);
    }

    /// Sends every unacknowledged release whose target is alive and not already asked.
    fn resend_releases(&mut self, now: Instant) {
        let due: Vec<((SessionId, MemberKey), Generation, std::net::SocketAddr)> = self
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
                self.apply_release(r);
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
        let id = r.id;
        if r.primary == self.key || r.epoch > MAX_EPOCH || r.version > MAX_EPOCH {
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
            self.drop_owned(id, incoming);
        }
        if let Some(Tomb::Moved(g)) = self.sessions.tombs.get(&id) {
            if *g > incoming {
                self.stats.replications_superseded += 1;
                return ReplicateReply::Superseded {
                    epoch: g.0,
                    primary: g.1,
                };
            }
        }
        let max_bytes = self.config.max_session_bytes;
        match (self.sessions.replicas.get_mut(&id), r.payload) {
            (Some(copy), _) if copy.generation() > incoming => {
                self.stats.replications_superseded += 1;
                ReplicateReply::Superseded {
                    epoch: copy.epoch,
                    primary: copy.primary,
                }
            }
            (Some(copy), ReplicaPayload::Delta { base, changes })
                if copy.generation() == incoming && copy.version == base && r.version >= base =>
            {
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
                self.stats.replications_applied += 1;
                ReplicateReply::Ack { version: r.version }
            }
            (Some(copy), ReplicaPayload::Delta { .. })
                if copy.generation() == incoming && copy.version >= r.version =>
            {
                copy.last_used = now;
                ReplicateReply::Ack {
                    version: copy.version,
                }
            }
            (_, ReplicaPayload::Delta { .. }) => ReplicateReply::NeedFull,
            (existing, ReplicaPayload::Full(state)) => {
                if state.bytes() > max_bytes
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
        if c.claimant == self.key || c.unreachable.len() > MAX_CLAIM_HOPS {
            return ClaimReply::Unknown;
        }
        if let Some(o) = self.sessions.owned.remove(&id) {
            let next = (o.epoch.saturating_add(1), c.claimant);
            // Keep the state as a replica of the claimant's generation: if the answer is lost,
            // a retried claim finds it again.
            self.sessions.replicas.insert(
                id,
                Replica {
                    state: o.state.clone(),
                    version: o.version,
                    epoch: next.0,
                    primary: c.claimant,
                    last_used: now,
                },
            );
            self.stats.sessions_superseded += 1;
            self.push_event(Event::SessionSuperseded { id, by: c.claimant });
            return ClaimReply::Copy {
                epoch: o.epoch,
                primary: self.key,
                version: o.version,
                state: o.state,
            };
        }
        if let Some(r) = self.sessions.replicas.get_mut(&id) {
            let primary_live = self
                .members
                .get(&r.primary)
                .is_some_and(|m| m.state == MemberState::Alive);
            if r.primary != c.claimant && primary_live && !c.unreachable.contains(&r.primary) {
                return ClaimReply::Moved {
                    epoch: r.epoch,
                    primary: r.primary,
                };
            }
            let (epoch, primary) = if r.primary == c.claimant {
                // A retried claim: the copy already belongs to the claimant's generation.
                (r.epoch.saturating_sub(1), r.primary)
            } else {
                (r.epoch, r.primary)
            };
            r.epoch = epoch.saturating_add(1);
            r.primary = c.claimant;
            r.last_used = now;
            return ClaimReply::Copy {
                epoch,
                primary,
                version: r.version,
                state: r.state.clone(),
            };
        }
        match self.sessions.tombs.get(&id) {
            Some(Tomb::TimedOut) => ClaimReply::TimedOut,
            Some(Tomb::Moved((epoch, primary))) if *primary != c.claimant => ClaimReply::Moved {
                epoch: *epoch,
                primary: *primary,
            },
            _ => ClaimReply::Unknown,
        }
    }

    /// A newer generation tells this member to drop an older copy.
    fn apply_release(&mut self, r: SessionRelease) {
        let g: Generation = (r.epoch, r.primary);
        if r.primary == self.key || r.epoch > MAX_EPOCH {
            return;
        }
        let owned_older = self
            .sessions
            .owned
            .get(&r.id)
            .is_some_and(|o| o.generation(self.key) < g);
        if owned_older {
            self.drop_owned(r.id, g);
        }
        let replica_older = self
            .sessions
            .replicas
            .get(&r.id)
            .is_some_and(|c| c.generation() <= g);
        if replica_older {
            self.sessions.replicas.remove(&r.id);
        }
        if !self.sessions.owned.contains_key(&r.id) {
            let newer = match self.sessions.tombs.get(&r.id) {
                Some(Tomb::Moved(old)) => *old < g,
                _ => true,
            };
            if newer {
                self.sessions
                    .bury(r.id, Tomb::Moved(g), self.config.max_sessions);
            }
        }
    }
}
