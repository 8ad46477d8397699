//! [`Node`]: one cluster member as a pure state machine.

mod auth;
#[cfg(fuzzing)]
mod fuzzing;
mod p2p;
mod sessions;

use crate::channel::receiver::{Delivery, FragmentOutcome, ReceiverLimits};
use crate::channel::{Packer, Retention, Sender};
use crate::codec;
use crate::config::{Config, ConfigError, Identity};
use crate::event::{Event, Peer};
use crate::exchange::{Announcement, NamingChange, Published};
use crate::ids::{Channel, ClusterId, MemberKey, RequestId, Rng, stable_hash};
use crate::membership::{Member, MemberInfo, MemberState};
use crate::naming::{OfferLimits, Provider, Registry, Selector, Strategy};
use crate::stats::Stats;
use crate::wire::{self, Body, Header, Heartbeat, WireError};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use p2p::RequestFailure;

/// Something the node wants its runtime to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Send these bytes as one datagram to the cluster's multicast group (or hub).
    Group(Bytes),
    /// Open (or reuse) an HTTP/1.1 connection to `to`, write `request`, read one response and
    /// hand it to [`Node::handle_http_response`] with `id` (or a [`RequestFailure`]).
    Request {
        /// Names the request in the answer.
        id: RequestId,
        /// The member's point-to-point address.
        to: SocketAddr,
        /// The complete encoded HTTP request.
        request: Bytes,
    },
}

/// Misuse of the node's command API. The node's state is unchanged by a refused command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The node has left the cluster; it accepts no more commands.
    #[error("the node has left the cluster")]
    Left,
    /// A service name must not be empty.
    #[error("empty service name")]
    EmptyName,
    /// A name, value or topic is longer than the configured limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// `"name"`, `"value"` or `"topic"`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit (`max_name_len`, `max_value_len` or `max_topic_len`).
        max: usize,
    },
    /// This node already offers `max_offers_per_member` services.
    #[error("already offering the maximum of {max} services")]
    TooManyOffers {
        /// `max_offers_per_member`.
        max: usize,
    },
    /// The encoded message is larger than `max_message_size`.
    #[error("message of {len} bytes exceeds max_message_size {max}")]
    MessageTooLarge {
        /// Encoded length.
        len: usize,
        /// `max_message_size`.
        max: usize,
    },
}

#[derive(Debug)]
enum Phase {
    /// Listening to find out who is there.
    Discovering { until: Instant },
    /// One state-dump request in flight; `tried` are the members asked so far.
    Dumping {
        id: RequestId,
        tried: Vec<MemberKey>,
    },
    /// In sync (or recovering per member).
    Joined,
}

#[derive(Debug, Clone)]
enum Purpose {
    Recovery {
        member: MemberKey,
        incarnation: u64,
        channel: Channel,
    },
    Probe {
        member: MemberKey,
        incarnation: u64,
    },
    Dump {
        member: MemberKey,
    },
    Replicate {
        id: crate::session::SessionId,
        version: u64,
    },
    Claim {
        id: crate::session::SessionId,
        member: MemberKey,
    },
    Release {
        id: crate::session::SessionId,
        member: MemberKey,
    },
}

#[derive(Debug)]
struct Pending {
    purpose: Purpose,
    deadline: Instant,
    /// The request's nonce when it was authenticated: its answer must be tagged with it.
    nonce: Option<u128>,
}

/// One cluster member: a sans-IO state machine that never reads a clock, opens a socket,
/// spawns a thread or draws randomness of its own.
///
/// # Driving a node
///
/// The owner (a runtime) feeds it input and drains its output:
///
/// - **handle**: [`handle_datagram`](Node::handle_datagram) for every group datagram,
///   [`handle_http_request`](Node::handle_http_request) for every point-to-point request it
///   serves, [`handle_http_response`](Node::handle_http_response) for the outcome of every
///   request the node asked for, [`handle_timeout`](Node::handle_timeout) when the time from
///   [`poll_timeout`](Node::poll_timeout) is reached (calling it early or twice is harmless);
/// - **commands**: [`bind`](Node::bind), [`unbind`](Node::unbind), [`publish`](Node::publish),
///   [`set_load`](Node::set_load), [`leave`](Node::leave);
/// - **poll**: after each input or command, drain [`poll_transmit`](Node::poll_transmit) and
///   [`poll_event`](Node::poll_event) until they return `None`, then wait for input or until
///   [`poll_timeout`](Node::poll_timeout).
///
/// **Point-to-point HTTP.** Serving: accumulate a connection's bytes and call
/// [`http::parse_request`](crate::http::parse_request) with `node.config().http`; `Ok(None)`
/// means read more; `Err(e)` means write `e.to_response().encode()` and close; `Ok(Some((req,
/// used)))` means answer with `node.handle_http_request(now, &req).encode()`, drop `used` bytes,
/// and keep the connection open if `req.keep_alive()`. Asking: for each
/// [`Transmit::Request`] write its bytes to `to`, read with
/// [`http::parse_response`](crate::http::parse_response), and report the parsed response or a
/// [`RequestFailure`] with the same id. The node times requests out itself after
/// `request_timeout`; a late answer is ignored, so a runtime need not cancel anything.
///
/// Every `now` is a monotonic instant and must never go backwards between calls. Commands
/// issued between two drains of `poll_transmit` form one *tick*: their naming changes are
/// coalesced into one announcement and their messages are bundled into as few datagrams as fit.
///
/// ```no_run
/// use hybridcast_core::{Config, Identity, Node, Transmit};
/// use std::time::{Duration, Instant};
///
/// let id = Identity::new("prod", Identity::clone_name("web", 1), 1, "127.0.0.1:7070".parse().unwrap());
/// let mut node = Node::new(Config::default(), id, Instant::now(), 42).unwrap();
/// node.bind("orders", "127.0.0.1:9000").unwrap();
/// loop {
///     let now = Instant::now(); // the runtime's clock, never the core's
///     // ... feed received datagrams: node.handle_datagram(now, from, bytes);
///     node.handle_timeout(now);
///     while let Some(t) = node.poll_transmit() {
///         match t {
///             Transmit::Group(_datagram) => { /* send to the multicast group */ }
///             Transmit::Request { .. } => { /* perform the HTTP request */ }
///         }
///     }
///     while let Some(event) = node.poll_event() {
///         println!("{event:?}");
///     }
///     let _sleep_until = node.poll_timeout();
///     # break;
/// }
/// ```
#[derive(Debug)]
pub struct Node {
    config: Config,
    identity: Identity,
    key: MemberKey,
    cluster: ClusterId,
    rng: Rng,
    load: u32,
    phase: Phase,
    left: bool,
    members: BTreeMap<MemberKey, Member>,
    registry: Registry,
    selector: Selector,
    announced: BTreeMap<String, String>,
    touched: BTreeSet<String>,
    senders: [Sender; 2],
    limits: ReceiverLimits,
    /// Bytes held by all receivers' caches (kept within `max_cached_bytes_total`).
    cached_total: usize,
    requests: BTreeMap<RequestId, Pending>,
    /// (member, channel) pairs with a recovery request outstanding, whatever the member's
    /// incarnation: a request to a departed incarnation still occupies its slot until it is
    /// answered or times out, so at most one is ever on the wire per pair.
    recovering: BTreeSet<(MemberKey, Channel)>,
    next_request: u64,
    next_heartbeat: Instant,
    /// When this node was built: it claims to be *joining* (new to everyone) only during its
    /// first `tombstone_ttl`.
    started: Instant,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// How many of `events` are membership events (not deliveries): they have their own quota
    /// so that a burst of deliveries (a state dump) never crowds them out.
    queued_membership: usize,
    /// Bytes the queued events hold ([`event_bytes`]), against `max_queued_event_bytes`.
    queued_bytes: usize,
    /// Deliveries taken out of a receiver while the event queue was full, waiting (in order)
    /// for the owner to drain it: (member, incarnation, channel, deliveries).
    parked: VecDeque<(MemberKey, u64, Channel, VecDeque<Delivery>)>,
    scratch: Vec<Event>,
    conflicts_reported: BTreeSet<u64>,
    sessions: sessions::Sessions,
    auth: auth::AuthState,
    stats: Stats,
}

impl Node {
    /// Builds a node after validating `config` and `identity`. `rng_seed` is the only source
    /// of randomness (retry jitter, random selection).
    pub fn new(
        config: Config,
        identity: Identity,
        now: Instant,
        rng_seed: u64,
    ) -> Result<Node, ConfigError> {
        config.validate()?;
        identity.validate()?;
        let limits = ReceiverLimits {
            max_bytes: config.max_cached_bytes_per_sender,
            max_messages: config.max_cached_messages_per_sender,
            max_message_size: config.max_message_size,
            max_fragments: config.max_fragments_per_message,
            min_chunk: crate::channel::receiver::MIN_CHUNK,
            grace: config.reorder_grace,
            backoff_initial: config.recovery_backoff_initial,
            backoff_max: config.recovery_backoff_max,
        };
        let senders = [
            Sender::new(Channel::State, Retention::new(0, 0)),
            Sender::new(
                Channel::Log,
                Retention::new(config.log_retention_messages, config.log_retention_bytes),
            ),
        ];
        let mut node = Node {
            key: MemberKey::of(&identity.name),
            cluster: ClusterId::of(&identity.cluster),
            rng: Rng::new(rng_seed),
            load: 0,
            phase: Phase::Discovering {
                until: now + config.discovery(),
            },
            left: false,
            members: BTreeMap::new(),
            registry: Registry::default(),
            selector: Selector::default(),
            announced: BTreeMap::new(),
            touched: BTreeSet::new(),
            senders,
            limits,
            cached_total: 0,
            requests: BTreeMap::new(),
            recovering: BTreeSet::new(),
            next_request: 1,
            next_heartbeat: now,
            started: now,
            out: VecDeque::new(),
            events: VecDeque::new(),
            queued_membership: 0,
            queued_bytes: 0,
            parked: VecDeque::new(),
            scratch: Vec::new(),
            conflicts_reported: BTreeSet::new(),
            sessions: sessions::Sessions::default(),
            auth: auth::AuthState::default(),
            stats: Stats::default(),
            config,
            identity,
        };
        // The first heartbeat is queued at once, ahead of anything the owner sends, so peers
        // admit this member before its first messages arrive.
        node.handle_timeout(now);
        Ok(node)
    }

    // ----- getters -----

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This node's member key.
    pub fn key(&self) -> MemberKey {
        self.key
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// True once the join finished (see [`Event::Joined`]).
    pub fn is_joined(&self) -> bool {
        matches!(self.phase, Phase::Joined)
    }

    /// True after [`Node::leave`].
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// The cluster view: every live member's offers, this node's included.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Remote members tracked (live ones and remembered departed ones).
    pub fn members(&self) -> impl Iterator<Item = MemberInfo> + '_ {
        self.members.values().map(Member::info)
    }

    /// One remote member.
    pub fn member(&self, key: MemberKey) -> Option<MemberInfo> {
        self.members.get(&key).map(Member::info)
    }

    /// Last sequence sent on each channel by this node.
    pub fn last_sent(&self, channel: Channel) -> u64 {
        self.senders[channel.index()].last_seq()
    }

    /// Point-to-point requests currently in flight.
    pub fn requests_in_flight(&self) -> usize {
        self.requests.len()
    }

    /// Counters, with member gauges filled in.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        for m in self.members.values() {
            match m.state {
                MemberState::Alive => s.members_alive += 1,
                MemberState::Suspect => s.members_suspect += 1,
                MemberState::Failed => s.members_failed += 1,
                MemberState::Left => s.members_left += 1,
            }
        }
        (s.sessions_primary, s.sessions_replica) = self.sessions.counts();
        s.cached_bytes = self.cached_total as u64;
        s.events_queued = self.events.len() as u64;
        s.event_bytes_queued = self.queued_bytes as u64;
        s
    }

    /// Bytes held in receive caches for all members (bounded by `max_cached_bytes_per_sender`
    /// per member and `max_cached_bytes_total` in all).
    pub fn cached_bytes(&self) -> usize {
        debug_assert_eq!(
            self.cached_total,
            self.members.values().map(|m| m.budget.bytes).sum::<usize>()
        );
        self.cached_total
    }

    /// Picks a provider of `name` with `strategy`, skipping members that are not alive and
    /// providers in quarantine.
    pub fn select(&mut self, now: Instant, name: &str, strategy: Strategy<'_>) -> Option<Provider> {
        let candidates: Vec<(Provider, u32)> = self
            .registry
            .pool(name)
            .filter_map(|p| {
                if p.member == self.key {
                    return Some((p, self.load));
                }
                let m = self.members.get(&p.member)?;
                (m.state == MemberState::Alive).then_some((p, m.load))
            })
            .collect();
        self.selector
            .select(now, name, strategy, self.key, candidates, &mut self.rng)
    }

    /// The application found `member` failing: selection skips it for `provider_quarantine`.
    pub fn report_failed(&mut self, now: Instant, member: MemberKey) {
        self.selector
            .quarantine(member, now + self.config.provider_quarantine, now);
    }

    /// A transport learned that `member`, at `incarnation`, lost its connection: in hub mode,
    /// the hub's announcement that the member's connection ended ([`crate::hub::LinkEvent`]).
    ///
    /// The member is suspected at once and probed point to point; only a failed probe declares
    /// it failed, exactly as after missed heartbeats. A member that merely lost its hub
    /// connection (and still answers) stays alive. Notices about another incarnation, an
    /// unknown member or this node itself are ignored.
    pub fn handle_departure_notice(&mut self, now: Instant, member: MemberKey, incarnation: u64) {
        self.note_time(now);
        if self.left || member == self.key {
            return;
        }
        let Some(m) = self.members.get_mut(&member) else {
            return;
        };
        if m.incarnation != incarnation || !m.state.is_live() {
            return;
        }
        self.stats.departure_notices += 1;
        let probing = m.probe.is_some();
        if m.state == MemberState::Alive {
            m.state = MemberState::Suspect;
            let peer = peer_of(m);
            self.push_event(Event::MemberSuspect { peer });
        }
        if !probing {
            self.start_probe(now, member);
        }
        self.sessions_settle(now);
    }

    // ----- commands -----

    /// Offers `name` with `value` (replacing a previous value). Announced at the end of the tick.
    pub fn bind(&mut self, name: &str, value: &str) -> Result<(), CommandError> {
        self.check_live()?;
        if name.is_empty() {
            return Err(CommandError::EmptyName);
        }
        check_len("name", name.len(), self.config.max_name_len)?;
        check_len("value", value.len(), self.config.max_value_len)?;
        let mut events = std::mem::take(&mut self.scratch);
        let own = OfferLimits {
            per_member: self.config.max_offers_per_member,
            total: usize::MAX,
        };
        let ok = self.registry.bind(self.key, name, value, own, &mut events);
        self.push_events(&mut events);
        self.scratch = events;
        if !ok {
            return Err(CommandError::TooManyOffers {
                max: self.config.max_offers_per_member,
            });
        }
        self.touched.insert(name.to_owned());
        Ok(())
    }

    /// Withdraws the offer of `name`; returns whether there was one.
    pub fn unbind(&mut self, name: &str) -> Result<bool, CommandError> {
        self.check_live()?;
        let mut events = std::mem::take(&mut self.scratch);
        let had = self.registry.unbind(self.key, name, &mut events);
        self.push_events(&mut events);
        self.scratch = events;
        if had {
            self.touched.insert(name.to_owned());
        }
        Ok(had)
    }

    /// Publishes `payload` on `topic` to every member; returns its log-channel sequence.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Bytes>) -> Result<u64, CommandError> {
        self.check_live()?;
        check_len("topic", topic.len(), self.config.max_topic_len)?;
        let msg = Published {
            topic: topic.to_owned(),
            payload: payload.into(),
        };
        let bytes = codec::encode(&msg).map_err(|_| CommandError::MessageTooLarge {
            len: msg.payload.len(),
            max: self.config.max_message_size,
        })?;
        if bytes.len() > self.config.max_message_size {
            return Err(CommandError::MessageTooLarge {
                len: bytes.len(),
                max: self.config.max_message_size,
            });
        }
        Ok(self.senders[Channel::Log.index()].push(Bytes::from(bytes)))
    }

    /// Sets the load reported in heartbeats (used by weight-by-load selection).
    pub fn set_load(&mut self, load: u32) {
        self.load = load;
    }

    /// Leaves the cluster: pending output is flushed, a Leave datagram is queued, and the node
    /// stops reacting to input. Drain `poll_transmit` once more to send it. A session resume
    /// still under way ends with [`Event::SessionExpired`] (`Lost`).
    pub fn leave(&mut self) {
        if self.left {
            return;
        }
        self.flush();
        self.out
            .push_back(Transmit::Group(wire::encode_leave(&self.header())));
        self.sessions_leave();
        self.left = true;
        self.requests.clear();
        self.recovering.clear();
    }

    /// What a remote member's offers may take of the registry.
    pub(crate) fn offer_limits(&self) -> OfferLimits {
        OfferLimits {
            per_member: self.config.max_offers_per_member,
            total: self.config.max_offers_total,
        }
    }

    fn check_live(&self) -> Result<(), CommandError> {
        if self.left {
            Err(CommandError::Left)
        } else {
            Ok(())
        }
    }

    // ----- poll -----

    /// The next thing to send, if any. Draining it ends the current tick.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if !self.left {
            self.flush();
        }
        let t = match self.out.pop_front()? {
            Transmit::Group(d) => {
                let d = self.seal_group(d);
                self.stats.datagrams_out += 1;
                self.stats.bytes_out += d.len() as u64;
                Transmit::Group(d)
            }
            request => request,
        };
        Some(t)
    }

    /// The next event for the owner, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if !self.parked.is_empty() && !self.queue_full() {
            // The owner is draining: deliveries that waited for room go on, in order.
            self.resume_parked();
        }
        let e = self.events.pop_front()?;
        if !is_delivery(&e) {
            self.queued_membership -= 1;
        }
        self.queued_bytes -= event_bytes(&e);
        Some(e)
    }

    /// When [`Node::handle_timeout`] should next be called; `None` after leaving.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        let mut t = self.next_heartbeat;
        let mut consider = |d: Option<Instant>| {
            if let Some(d) = d {
                t = t.min(d);
            }
        };
        if let Phase::Discovering { until } = self.phase {
            consider(Some(until));
        }
        for p in self.requests.values() {
            consider(Some(p.deadline));
        }
        consider(self.sessions.deadline());
        // While the owner has events to drain, recovery waits (and must not spin the timer).
        let recovering = self.is_joined() && !self.events_backlogged();
        for m in self.members.values() {
            match m.state {
                MemberState::Alive => consider(Some(m.last_heard + self.suspect_timeout(m))),
                MemberState::Suspect => {}
                MemberState::Failed | MemberState::Left => {
                    consider(m.departed_at.map(|d| d + self.config.tombstone_ttl));
                }
            }
            if recovering && m.state.is_live() {
                for c in Channel::ALL {
                    // A slot held by an older request frees itself through that request's own
                    // deadline, which is already considered.
                    if !self.recovering.contains(&(m.key, c)) {
                        consider(m.receivers[c.index()].deadline());
                    }
                }
            }
        }
        Some(t)
    }

    // ----- handle -----

    /// Handles one group datagram. Malformed, foreign and stale datagrams are dropped and
    /// counted in [`Stats::drops`]; nothing here can fail.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: Bytes) {
        self.note_time(now);
        self.on_datagram(now, from, datagram);
        self.sessions_settle(now);
    }

    fn on_datagram(&mut self, now: Instant, _from: SocketAddr, datagram: Bytes) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        if self.left {
            return;
        }
        self.resume_parked();
        let Some(d) = self.open_datagram(now, &datagram) else {
            return;
        };
        if d.header.cluster != self.cluster {
            self.stats.drops.wrong_cluster += 1;
            return;
        }
        if d.header.sender == self.key {
            self.on_own_key(d.header, &d.body);
            return;
        }
        match d.body {
            Body::Heartbeat(hb) => self.on_heartbeat(now, d.header, hb),
            Body::Fragments(frags) if self.events_backlogged() => {
                // Nothing is lost: the receivers will see the gap and recover it later.
                self.stats.drops.backlogged += frags.len() as u64;
            }
            Body::Fragments(frags) => self.on_fragments(now, d.header, frags),
            Body::Leave => self.on_leave(now, d.header),
        }
    }

    /// Fires whatever timers are due at `now`: heartbeats, join steps, request timeouts,
    /// suspicion and probes, recovery requests. Calling it early is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.note_time(now);
        if self.left {
            return;
        }
        self.resume_parked();
        if now >= self.next_heartbeat {
            self.flush();
            let hb = self.heartbeat(now);
            self.out
                .push_back(Transmit::Group(wire::encode_heartbeat(&self.header(), &hb)));
            let interval = self.config.heartbeat_interval;
            self.next_heartbeat = if self.next_heartbeat + interval > now {
                self.next_heartbeat + interval
            } else {
                now + interval
            };
        }
        if let Phase::Discovering { until } = self.phase {
            if now >= until {
                self.start_dump(now, Vec::new());
            }
        }
        let expired: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.take_request(id) {
                self.request_failed(now, id, p.purpose);
            }
        }
        self.check_members(now);
        self.sessions_settle(now);
    }

    fn check_members(&mut self, now: Instant) {
        let ttl = self.config.tombstone_ttl;
        self.members
            .retain(|_, m| m.state.is_live() || m.departed_at.is_none_or(|d| d + ttl > now));
        self.prune_replay_windows(now);
        let joined = self.is_joined();
        let keys: Vec<MemberKey> = self.members.keys().copied().collect();
        for key in keys {
            let Some(suspect_after) = self.members.get(&key).map(|m| self.suspect_timeout(m))
            else {
                continue;
            };
            let Some(m) = self.members.get_mut(&key) else {
                continue;
            };
            let live = m.state.is_live();
            if m.state == MemberState::Alive && now >= m.last_heard + suspect_after {
                m.state = MemberState::Suspect;
                let peer = peer_of(m);
                self.push_event(Event::MemberSuspect { peer });
                self.start_probe(now, key);
            }
            if !joined || !live || self.events_backlogged() {
                continue;
            }
            for channel in Channel::ALL {
                let Some(m) = self.members.get(&key) else {
                    break;
                };
                if self.recovering.contains(&(key, channel)) {
                    continue;
                }
                if let Some(ask) = m.receivers[channel.index()].poll_ask(now) {
                    self.start_recovery(now, key, channel, ask);
                }
            }
        }
    }

    // ----- internals: datagrams -----

    fn count_wire_error(&mut self, e: WireError) {
        let d = &mut self.stats.drops;
        match e {
            WireError::TooShort | WireError::BadMagic => d.not_hybridcast += 1,
            WireError::UnsupportedVersion(_)
            | WireError::UnknownKind(_)
            | WireError::UnsupportedFlags(_) => d.unsupported += 1,
            WireError::Truncated
            | WireError::TrailingBytes
            | WireError::BadFragment
            | WireError::BadField => d.malformed += 1,
            WireError::Unauthenticated => self.stats.auth.datagram_untagged += 1,
            WireError::BadTag => self.stats.auth.datagram_bad_tag += 1,
        }
    }

    fn header(&self) -> Header {
        Header {
            cluster: self.cluster,
            sender: self.key,
            incarnation: self.identity.incarnation,
        }
    }

    fn heartbeat(&self, now: Instant) -> Heartbeat {
        Heartbeat {
            cluster_name: self.identity.cluster.clone(),
            name: self.identity.name.clone(),
            http_addr: self.identity.http_addr,
            host_id: self.identity.host_id.clone(),
            load: self.load,
            interval_ms: u32::try_from(self.config.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            // A peer that hears "joining" and knows nothing of us takes our log from 1. No
            // peer can have admitted us, failed us and forgotten our tombstone within
            // `tombstone_ttl` of our start; after that (a long pause or a join that keeps
            // failing) the claim could make such a peer deliver our messages twice.
            joining: !self.is_joined() && now < self.started + self.config.tombstone_ttl,
            last_seq: Channel::ALL
                .iter()
                .map(|c| (*c, self.senders[c.index()].last_seq()))
                .collect(),
        }
    }

    /// Our own key: our loopback copy, or another process using our name.
    fn on_own_key(&mut self, h: Header, body: &Body) {
        let ours = self.identity.incarnation;
        let Body::Heartbeat(hb) = body else {
            self.stats.drops.own += 1;
            return;
        };
        if h.incarnation == ours && hb.http_addr == self.identity.http_addr {
            self.stats.drops.own += 1;
            return;
        }
        if MemberKey::of(&hb.name) != self.key || ClusterId::of(&hb.cluster_name) != self.cluster {
            self.stats.drops.bad_identity += 1;
            return;
        }
        self.stats.drops.stale_incarnation += 1;
        if h.incarnation < ours && hb.http_addr == self.identity.http_addr {
            // Our own predecessor at our own address (a restart's late packets): no process
            // can still be serving that address beside us, so this is no conflict.
            return;
        }
        let we_win = wins(
            (ours, self.identity.http_addr),
            (h.incarnation, hb.http_addr),
        );
        if self.conflicts_reported.len() < MAX_CONFLICTS_REPORTED
            && self.conflicts_reported.insert(h.incarnation)
        {
            let (winner, loser) = if we_win {
                (ours, h.incarnation)
            } else {
                (h.incarnation, ours)
            };
            self.push_event(Event::NameConflict {
                name: self.identity.name.clone(),
                winner_incarnation: winner,
                loser_incarnation: loser,
                this_node_lost: !we_win,
            });
        }
    }

    fn on_heartbeat(&mut self, now: Instant, h: Header, hb: Heartbeat) {
        if ClusterId::of(&hb.cluster_name) != h.cluster || MemberKey::of(&hb.name) != h.sender {
            self.stats.drops.bad_identity += 1;
            return;
        }
        let key = h.sender;
        let admitted = match self.members.get_mut(&key) {
            None => self.admit(now, key, &hb.name, h.incarnation, hb.http_addr),
            Some(m) if h.incarnation < m.incarnation => {
                self.stats.drops.stale_incarnation += 1;
                if m.state.is_live() && hb.http_addr != m.http_addr {
                    m.conflict_evidence = m.conflict_evidence.saturating_add(1);
                    if m.conflict_evidence == 2 {
                        let (name, winner) = (m.name.clone(), m.incarnation);
                        self.push_event(Event::NameConflict {
                            name,
                            winner_incarnation: winner,
                            loser_incarnation: h.incarnation,
                            this_node_lost: false,
                        });
                    }
                }
                return;
            }
            Some(m) if h.incarnation > m.incarnation => {
                self.restart_member(now, key, &hb.name, h.incarnation, hb.http_addr);
                true
            }
            Some(m) => match m.state {
                MemberState::Left => {
                    self.stats.drops.stale_incarnation += 1;
                    return;
                }
                MemberState::Failed => {
                    // Declared failed, yet alive: it was cut off. Readmit it with fresh state.
                    self.replace_member(now, key, &hb.name, h.incarnation, hb.http_addr);
                    self.announce_joined(key);
                    true
                }
                MemberState::Alive | MemberState::Suspect if hb.http_addr != m.http_addr => {
                    // Two processes with one name and one incarnation: keep the lower address,
                    // refuse the other's heartbeats, report after repeated evidence.
                    m.conflict_evidence = m.conflict_evidence.saturating_add(1);
                    let report =
                        (m.conflict_evidence == 2).then(|| (m.name.clone(), m.incarnation));
                    let lower = hb.http_addr < m.http_addr;
                    if let Some((name, inc)) = report {
                        self.push_event(Event::NameConflict {
                            name,
                            winner_incarnation: inc,
                            loser_incarnation: inc,
                            this_node_lost: false,
                        });
                    }
                    if !lower {
                        self.stats.drops.stale_incarnation += 1;
                        return;
                    }
                    self.replace_member(now, key, &hb.name, h.incarnation, hb.http_addr);
                    true
                }
                MemberState::Alive | MemberState::Suspect => {
                    m.last_heard = now;
                    if m.state == MemberState::Suspect {
                        m.state = MemberState::Alive;
                        let peer = peer_of(m);
                        self.push_event(Event::MemberAlive { peer });
                        self.sessions.membership_changed();
                    }
                    true
                }
            },
        };
        if !admitted {
            return;
        }
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if hb.joining && m.receivers[Channel::Log.index()].next().is_none() {
            // It started moments ago: everything it published is new to everyone.
            m.receivers[Channel::Log.index()].sync_to(0, &mut m.budget);
        }
        m.load = hb.load;
        m.interval = Duration::from_millis(u64::from(hb.interval_ms)).min(MAX_REMOTE_INTERVAL);
        m.joining = hb.joining;
        m.http_addr = hb.http_addr;
        m.host_id = hb.host_id;
        for (channel, last) in hb.last_seq {
            m.receivers[channel.index()].on_last_seq(now, last, &self.limits);
        }
    }

    /// Adds a member never seen before; false if the table is full.
    fn admit(
        &mut self,
        now: Instant,
        key: MemberKey,
        name: &str,
        incarnation: u64,
        http_addr: SocketAddr,
    ) -> bool {
        if self.members.len() >= self.config.max_members {
            // Make room by forgetting the oldest departed member, if there is one.
            let oldest = self
                .members
                .values()
                .filter(|m| !m.state.is_live())
                .min_by_key(|m| m.departed_at)
                .map(|m| m.key);
            match oldest {
                Some(k) => {
                    let old = self.members.remove(&k);
                    self.release_entry(old);
                }
                None => {
                    self.stats.drops.members_over_limit += 1;
                    return false;
                }
            }
        }
        let old = self.members.insert(
            key,
            Member::new(key, name.to_owned(), incarnation, http_addr, now),
        );
        self.release_entry(old);
        self.announce_joined(key);
        self.sessions.membership_changed();
        true
    }

    /// Accounts for a member entry leaving the table: its cached bytes leave the node's total.
    fn release_entry(&mut self, old: Option<Member>) -> Option<Member> {
        if let Some(m) = &old {
            self.cached_total -= m.budget.bytes;
        }
        old
    }

    fn announce_joined(&mut self, key: MemberKey) {
        if let Some(m) = self.members.get(&key) {
            let (peer, http_addr) = (peer_of(m), m.http_addr);
            self.push_event(Event::MemberJoined { peer, http_addr });
        }
    }

    /// A newer incarnation of `key` replaces the entry: `MemberRestarted` if the old one was
    /// live, `MemberJoined` if it had departed.
    fn restart_member(
        &mut self,
        now: Instant,
        key: MemberKey,
        name: &str,
        incarnation: u64,
        http_addr: SocketAddr,
    ) {
        let old = self
            .members
            .get(&key)
            .map(|m| (m.incarnation, m.state.is_live()));
        self.settle_parked(key);
        self.replace_member(now, key, name, incarnation, http_addr);
        match (old, self.members.get(&key)) {
            (Some((old_incarnation, true)), Some(m)) => {
                let peer = peer_of(m);
                self.push_event(Event::MemberRestarted {
                    peer,
                    old_incarnation,
                });
            }
            _ => self.announce_joined(key),
        }
    }

    /// Replaces `key`'s entry by a fresh live one (restart or readmission); old offers go.
    fn replace_member(
        &mut self,
        now: Instant,
        key: MemberKey,
        name: &str,
        incarnation: u64,
        http_addr: SocketAddr,
    ) {
        self.settle_parked(key);
        self.remove_offers(key);
        self.selector.release(key);
        self.sessions.membership_changed();
        let fresh = Member::new(key, name.to_owned(), incarnation, http_addr, now);
        let old = self.members.insert(key, fresh);
        if let Some(old) = self.release_entry(old) {
            let resume = old.incarnation == incarnation;
            if let (true, Some(m)) = (resume, self.members.get_mut(&key)) {
                // Readmitted after being declared failed: continue its log where this node
                // stopped, so what it published meanwhile is recovered or reported as a gap.
                if let Some(next) = old.log_resume {
                    m.receivers[Channel::Log.index()].sync_to(next - 1, &mut m.budget);
                }
            } else if let Some(m) = self.members.get_mut(&key) {
                // A new incarnation numbers its messages from 1: receive them all.
                m.receivers[Channel::Log.index()].sync_to(0, &mut m.budget);
            }
        }
    }

    fn remove_offers(&mut self, key: MemberKey) {
        let mut events = std::mem::take(&mut self.scratch);
        self.registry.remove_member(key, &mut events);
        self.push_events(&mut events);
        self.scratch = events;
    }

    /// Marks a live member departed (failed or left) and removes its offers.
    fn depart(&mut self, now: Instant, key: MemberKey, state: MemberState) {
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        if !m.state.is_live() {
            return;
        }
        self.settle_parked(key);
        let Some(m) = self.members.get_mut(&key) else {
            return;
        };
        self.cached_total -= m.budget.bytes;
        m.depart(state, now);
        self.sessions.membership_changed();
        let peer = peer_of(m);
        self.remove_offers(key);
        self.push_event(match state {
            MemberState::Left => Event::MemberLeft { peer },
            _ => Event::MemberFailed { peer },
        });
    }

    fn on_leave(&mut self, now: Instant, h: Header) {
        match self.members.get(&h.sender) {
            Some(m) if m.incarnation == h.incarnation && m.state.is_live() => {
                self.depart(now, h.sender, MemberState::Left);
            }
            Some(m) if m.incarnation < h.incarnation => {
                // A newer incarnation we never heard from leaves: the old one is gone too.
                self.depart(now, h.sender, MemberState::Left);
                if let Some(m) = self.members.get_mut(&h.sender) {
                    m.incarnation = h.incarnation;
                    m.state = MemberState::Left;
                    m.departed_at = Some(now);
                }
            }
            Some(_) => self.stats.drops.stale_incarnation += 1,
            None => self.stats.drops.unknown_member += 1,
        }
    }

    fn on_fragments(&mut self, now: Instant, h: Header, frags: Vec<wire::Fragment>) {
        let Some(m) = self.members.get_mut(&h.sender) else {
            self.stats.drops.unknown_member += frags.len() as u64;
            return;
        };
        if m.incarnation != h.incarnation || !m.state.is_live() {
            if h.incarnation > m.incarnation {
                // Its heartbeat will introduce the new incarnation.
                self.stats.drops.unknown_member += frags.len() as u64;
            } else {
                self.stats.drops.stale_incarnation += frags.len() as u64;
            }
            return;
        }
        m.last_heard = now;
        let mut deliveries: [Vec<Delivery>; 2] = [Vec::new(), Vec::new()];
        let before = m.budget.bytes;
        // This member may use its own budget, but never more than the node has left.
        let mut limits = self.limits;
        let room = self
            .config
            .max_cached_bytes_total
            .saturating_sub(self.cached_total);
        limits.max_bytes = limits.max_bytes.min(before + room);
        for f in frags {
            let c = f.channel.index();
            let outcome =
                m.receivers[c].on_fragment(now, f, &mut m.budget, &limits, &mut deliveries[c]);
            let drops = &mut self.stats.drops;
            match outcome {
                FragmentOutcome::Accepted => {}
                FragmentOutcome::Duplicate => drops.duplicate += 1,
                FragmentOutcome::TooLarge => drops.too_large += 1,
                FragmentOutcome::Inconsistent => drops.inconsistent += 1,
                FragmentOutcome::CacheFull => drops.cache_full += 1,
            }
        }
        self.cached_total = self.cached_total + m.budget.bytes - before;
        if m.state == MemberState::Suspect {
            m.state = MemberState::Alive;
            let peer = peer_of(m);
            self.push_event(Event::MemberAlive { peer });
            self.sessions.membership_changed();
        }
        for channel in Channel::ALL {
            let d = std::mem::take(&mut deliveries[channel.index()]);
            if !d.is_empty() {
                self.deliver(h.sender, h.incarnation, channel, d);
            }
        }
    }

    /// Applies delivered messages of `member` (at `incarnation`) on `channel`, in order.
    fn deliver(
        &mut self,
        member: MemberKey,
        incarnation: u64,
        channel: Channel,
        deliveries: impl IntoIterator<Item = Delivery>,
    ) {
        self.deliver_with(member, incarnation, channel, deliveries, false);
    }

    /// [`Node::deliver`]; `force` delivers everything whatever the queue holds.
    fn deliver_with(
        &mut self,
        member: MemberKey,
        incarnation: u64,
        channel: Channel,
        deliveries: impl IntoIterator<Item = Delivery>,
        force: bool,
    ) {
        let mut deliveries = deliveries.into_iter();
        while let Some(d) = deliveries.next() {
            if !force && self.queue_full() {
                // The owner is behind: the rest waits, in order, for room (one message's
                // events may overshoot the limits, never more).
                let rest: VecDeque<Delivery> = std::iter::once(d).chain(deliveries).collect();
                self.parked.push_back((member, incarnation, channel, rest));
                return;
            }
            match d {
                Delivery::Message { seq, payload } => {
                    self.stats.messages_delivered += 1;
                    match channel {
                        Channel::State => self.apply_announcement(member, &payload),
                        Channel::Log => {
                            match codec::decode::<Published>(&payload, self.config.max_message_size)
                            {
                                Ok(p) if p.topic.len() > self.config.max_topic_len => {
                                    self.stats.drops.bad_payload += 1;
                                }
                                Ok(p) => self.push_event(Event::Message {
                                    member,
                                    incarnation,
                                    seq,
                                    topic: p.topic,
                                    payload: p.payload,
                                }),
                                Err(_) => self.stats.drops.bad_payload += 1,
                            }
                        }
                    }
                }
                Delivery::Gap { from, to } => {
                    self.stats.gaps += 1;
                    self.stats.gap_messages += to - from + 1;
                    self.push_event(Event::Gap {
                        member,
                        incarnation,
                        channel,
                        range: from..=to,
                    });
                }
            }
        }
    }

    /// Applies one announcement (one tick of `member`'s naming changes) and reports only its net
    /// effect, one event per name whose offer it changed: a name bound and unbound again, or
    /// rebound many times, within one announcement costs the owner at most one event, so an
    /// announcement yields at most twice `max_offers_per_member` events whatever its length.
    fn apply_announcement(&mut self, member: MemberKey, payload: &[u8]) {
        let Ok(a) = codec::decode::<Announcement>(payload, self.config.max_message_size) else {
            self.stats.drops.bad_payload += 1;
            return;
        };
        let mut before: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut ignored = std::mem::take(&mut self.scratch);
        for change in a.changes {
            let name = match &change {
                NamingChange::Bind(name, _) | NamingChange::Unbind(name) => name,
            };
            if !before.contains_key(name) {
                let held = self
                    .registry
                    .offers_of(member)
                    .and_then(|o| o.get(name))
                    .cloned();
                before.insert(name.clone(), held);
            }
            match change {
                NamingChange::Bind(name, value) => {
                    if name.len() > self.config.max_name_len
                        || value.len() > self.config.max_value_len
                    {
                        self.stats.drops.bad_payload += 1;
                    } else if !self.registry.bind(
                        member,
                        &name,
                        &value,
                        self.offer_limits(),
                        &mut ignored,
                    ) {
                        self.stats.drops.offers_over_limit += 1;
                    }
                }
                NamingChange::Unbind(name) => {
                    self.registry.unbind(member, &name, &mut ignored);
                }
            }
            ignored.clear();
        }
        self.scratch = ignored;
        for (name, was) in before {
            let now = self.registry.offers_of(member).and_then(|o| o.get(&name));
            match (was, now) {
                (was, Some(value)) if was.as_ref() != Some(value) => {
                    let value = value.clone();
                    self.push_event(Event::Bound {
                        name,
                        member,
                        value,
                    });
                }
                (Some(_), None) => self.push_event(Event::Unbound { name, member }),
                _ => {}
            }
        }
    }

    /// Ends the tick: coalesces naming changes into one announcement and packs queued messages.
    fn flush(&mut self) {
        if !self.touched.is_empty() {
            let mut batches = Vec::new();
            let mut changes = Vec::new();
            let mut size = 0usize;
            let own = self.registry.offers_of(self.key);
            for name in std::mem::take(&mut self.touched) {
                let now_value = own.and_then(|o| o.get(&name));
                if now_value == self.announced.get(&name) {
                    continue;
                }
                // Bincode spends at most 11 bytes on a change besides its strings; validation
                // guarantees one change fits, so batches always stay within max_message_size.
                let cost = name.len() + now_value.map_or(0, String::len) + 24;
                if !changes.is_empty() && size + cost > self.config.max_message_size - 16 {
                    batches.push(std::mem::take(&mut changes));
                    size = 0;
                }
                size += cost;
                match now_value {
                    Some(v) => {
                        self.announced.insert(name.clone(), v.clone());
                        changes.push(NamingChange::Bind(name, v.clone()));
                    }
                    None => {
                        self.announced.remove(&name);
                        changes.push(NamingChange::Unbind(name));
                    }
                }
            }
            if !changes.is_empty() {
                batches.push(changes);
            }
            for changes in batches {
                self.push_announcement(changes);
            }
        }
        if self.senders.iter().any(Sender::has_queued) {
            let mut datagrams = VecDeque::new();
            {
                let mut packer =
                    Packer::new(self.header(), self.config.datagram_budget(), &mut datagrams);
                for s in &mut self.senders {
                    s.pack(&mut packer);
                }
            }
            self.out.extend(datagrams.into_iter().map(Transmit::Group));
        }
    }

    fn push_announcement(&mut self, changes: Vec<NamingChange>) {
        match codec::encode(&Announcement { changes }) {
            Ok(bytes) => {
                self.senders[Channel::State.index()].push(Bytes::from(bytes));
            }
            Err(_) => debug_assert!(false, "announcements always encode"),
        }
    }

    // ----- internals: events -----

    /// True while the owner has let `max_queued_events` events or `max_queued_event_bytes`
    /// pile up, or deliveries wait for room: new sequenced data is then refused (and recovered
    /// later) instead of queueing more deliveries.
    fn events_backlogged(&self) -> bool {
        self.queue_full() || !self.parked.is_empty()
    }

    fn queue_full(&self) -> bool {
        self.events.len() >= self.config.max_queued_events
            || self.queued_bytes >= self.config.max_queued_event_bytes
    }

    /// Applies parked deliveries, in order, while the event queue has room.
    fn resume_parked(&mut self) {
        while !self.queue_full() {
            let Some((member, incarnation, channel, deliveries)) = self.parked.pop_front() else {
                return;
            };
            let before = self.parked.len();
            self.deliver(member, incarnation, channel, deliveries);
            if self.parked.len() > before {
                // What did not fit goes back to the front: it comes before anything parked
                // after it.
                if let Some(rest) = self.parked.pop_back() {
                    self.parked.push_front(rest);
                }
            }
        }
    }

    /// Before `key` departs or is replaced: its waiting log messages are delivered now, past
    /// the queue's limits (they came before the news, and would have been delivered had the
    /// owner kept up; what waits is bounded by what one input released); its waiting
    /// announcements are dropped (its offers go with it, and a readmission brings a fresh
    /// snapshot).
    fn settle_parked(&mut self, key: MemberKey) {
        if self.parked.iter().all(|(k, ..)| *k != key) {
            return;
        }
        let (mine, rest): (VecDeque<_>, VecDeque<_>) =
            self.parked.drain(..).partition(|(k, ..)| *k == key);
        self.parked = rest;
        for (member, incarnation, channel, deliveries) in mine {
            if channel == Channel::Log {
                self.deliver_with(member, incarnation, channel, deliveries, true);
            }
        }
    }

    fn push_event(&mut self, e: Event) {
        // Deliveries (messages, gaps, bindings) are never dropped: from `max_queued_events` on no
        // new sequenced data is taken in, so what still arrives is bounded by the receive caches
        // and one answer already accepted. Membership events are the only ones that can keep
        // coming from a peer's traffic alone; they are counted on their own, so a burst of
        // deliveries cannot push one out, and past `max_queued_events` waiting they are dropped.
        if !is_delivery(&e) {
            if self.queued_membership >= self.config.max_queued_events {
                self.stats.events_dropped += 1;
                return;
            }
            self.queued_membership += 1;
        }
        self.queued_bytes += event_bytes(&e);
        self.events.push_back(e);
    }

    fn push_events(&mut self, events: &mut Vec<Event>) {
        for e in events.drain(..) {
            self.push_event(e);
        }
    }

    /// Removes a pending request, freeing its (member, channel) recovery slot.
    fn take_request(&mut self, id: RequestId) -> Option<Pending> {
        let p = self.requests.remove(&id)?;
        if let Purpose::Recovery {
            member, channel, ..
        } = p.purpose
        {
            self.recovering.remove(&(member, channel));
        }
        Some(p)
    }

    fn next_request_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        id
    }

    /// Silence after which `m` becomes suspect: `suspect_after_intervals` intervals plus half
    /// an interval of slack for delivery jitter, using this node's interval or the member's
    /// announced one, whichever is longer.
    fn suspect_timeout(&self, m: &Member) -> Duration {
        let interval = self.config.heartbeat_interval.max(m.interval);
        interval * self.config.suspect_after_intervals + interval / 2
    }

    /// Rendezvous rank of `member` for this node (used to pick the state-dump source).
    fn rank(&self, member: MemberKey) -> u64 {
        stable_hash(&[&self.key.0.to_be_bytes(), &member.0.to_be_bytes()])
    }
}

/// Name conflicts reported per node (further ones are still refused, just not reported).
const MAX_CONFLICTS_REPORTED: usize = 64;

/// Longest heartbeat interval a member may announce for its own suspicion timeout.
const MAX_REMOTE_INTERVAL: Duration = Duration::from_secs(60);

/// The name-conflict rule: the higher incarnation wins; on a tie, the lower HTTP address.
fn wins(a: (u64, SocketAddr), b: (u64, SocketAddr)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// Deliveries and session outcomes are never dropped; membership news may be, under a backlog.
/// (Session events come only from this node's own commands and the answers to its requests.)
fn is_delivery(e: &Event) -> bool {
    matches!(
        e,
        Event::Message { .. }
            | Event::Gap { .. }
            | Event::Bound { .. }
            | Event::Unbound { .. }
            | Event::SessionFailover { .. }
            | Event::SessionExpired { .. }
            | Event::SessionSuperseded { .. }
            | Event::SessionReplicated { .. }
    )
}

/// What a queued event costs against `max_queued_event_bytes`: its own size plus the bytes it
/// holds on the heap.
fn event_bytes(e: &Event) -> usize {
    let held = match e {
        Event::Message { topic, payload, .. } => topic.len() + payload.len(),
        Event::Bound { name, value, .. } => name.len() + value.len(),
        Event::Unbound { name, .. } => name.len(),
        Event::SessionFailover { state, .. } => state.bytes(),
        _ => 0,
    };
    std::mem::size_of::<Event>() + held
}

fn peer_of(m: &Member) -> Peer {
    Peer {
        key: m.key,
        name: m.name.clone(),
        incarnation: m.incarnation,
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), CommandError> {
    if len > max {
        Err(CommandError::TooLong { what, len, max })
    } else {
        Ok(())
    }
}
