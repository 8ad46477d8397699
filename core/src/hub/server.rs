//! [`Hub`]: the message server's state machine.

use super::frame::{
    CloseReason, Frame, FrameDecoder, Hello, LEN_PREFIX, MAX_FRAME_LEN, NONCE_LEN, deliver_header,
    verify_hello,
};
use super::outbox::Outbox;
use crate::auth::Keyring;
use crate::ids::{ClusterId, MemberKey};
use crate::wire;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Names one stream connection of a [`Hub`]. The runtime picks it (a socket token, a counter)
/// and must not reuse it while the hub still knows the connection (until
/// [`Hub::disconnect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// A hub's settings. [`HubConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The cluster this hub serves; registrations of other clusters are refused
    /// ([`CloseReason::WrongCluster`]).
    pub cluster: ClusterId,
    /// The cluster's keys. With keys, a registration must carry a tag made with one of them
    /// over this connection's challenge, or it is refused ([`CloseReason::Unauthenticated`]).
    /// The hub does not check the datagrams it relays: their tags are end to end, checked by
    /// the members. Default none.
    pub keys: Option<Keyring>,
    /// Most connections at once, registered or not. A connection beyond it gets
    /// [`Frame::Bye`] with [`CloseReason::Full`] and is closed. Default 1024.
    pub max_connections: usize,
    /// Most bytes queued for one connection and not yet written. A relay that would go beyond
    /// it disconnects that member as a slow consumer ([`CloseReason::SlowConsumer`]): one
    /// member that cannot keep up must neither hold the hub's memory nor slow the others, and
    /// what it missed is repaired by the protocol's recovery once it is back. Default 8 MiB;
    /// at least two of the largest frames.
    pub max_queued_bytes: usize,
    /// Most bytes queued for all connections together. A relay that would go beyond it
    /// disconnects the member with the longest queue as a slow consumer (until the relay
    /// fits), so members that do not read cannot together hold `max_connections` ×
    /// `max_queued_bytes`. Default 256 MiB; at least `max_queued_bytes`.
    pub max_total_queued_bytes: usize,
    /// A connection must register within this time of being accepted, or it is closed
    /// ([`CloseReason::Idle`]). Default 5 s.
    pub hello_timeout: Duration,
    /// A registered connection on which nothing arrives for this long is closed
    /// ([`CloseReason::Idle`]) and its member announced departed: this is how the hub notices
    /// a member whose host vanished without closing its connection. Members send at least a
    /// ping every [`super::LinkConfig::keepalive`]. Default 10 s.
    pub idle_timeout: Duration,
}

impl HubConfig {
    /// Defaults for a hub serving cluster `cluster` (its name, as the members have it).
    pub fn new(cluster: &str) -> Self {
        HubConfig {
            cluster: ClusterId::of(cluster),
            keys: None,
            max_connections: 1024,
            max_queued_bytes: 8 << 20,
            max_total_queued_bytes: 256 << 20,
            hello_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), HubConfigError> {
        let bad = |field: &'static str, reason: String| Err(HubConfigError { field, reason });
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
        }
        let min_queue = 2 * (LEN_PREFIX + MAX_FRAME_LEN);
        if self.max_queued_bytes < min_queue {
            return bad(
                "max_queued_bytes",
                format!(
                    "{} is below {min_queue} (two of the largest frames)",
                    self.max_queued_bytes
                ),
            );
        }
        if self.max_total_queued_bytes < self.max_queued_bytes {
            return bad(
                "max_total_queued_bytes",
                format!(
                    "{} is below max_queued_bytes {}",
                    self.max_total_queued_bytes, self.max_queued_bytes
                ),
            );
        }
        for (field, d) in [
            ("hello_timeout", self.hello_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() || d > MAX_TIMEOUT {
                return bad(field, format!("{d:?} is not within (0, {MAX_TIMEOUT:?}]"));
            }
        }
        Ok(())
    }
}

/// The longest timeout a hub or link setting may have (one day): longer ones would make
/// deadline arithmetic overflow and mean nothing in practice.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// A [`HubConfig`] field with a value the hub cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hub setting {field}: {reason}")]
pub struct HubConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// Something the runtime must do for the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubAction {
    /// Write what [`Hub::peek_output`] still holds for `conn` (a [`Frame::Bye`] naming the
    /// reason), as far as the socket takes it without waiting, then close the connection and
    /// call [`Hub::disconnect`].
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// What happened at the hub, for the operator's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubEvent {
    /// A member registered on `conn`.
    Registered {
        /// The connection.
        conn: ConnId,
        /// The member.
        member: MemberKey,
        /// Its incarnation.
        incarnation: u64,
    },
    /// A registered member's connection ended; the other members were told.
    Departed {
        /// The connection.
        conn: ConnId,
        /// The member.
        member: MemberKey,
        /// Its incarnation.
        incarnation: u64,
        /// Why.
        reason: CloseReason,
    },
    /// A connection that never registered was closed.
    Refused {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// The hub's counters and gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Connections the hub knows now (registering, registered, closing).
    pub connections: usize,
    /// Members registered now.
    pub registered: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Registrations accepted since start.
    pub registrations: u64,
    /// Frames received from members.
    pub frames_in: u64,
    /// Bytes received from members.
    pub bytes_in: u64,
    /// Group frames relayed.
    pub group_frames: u64,
    /// Direct frames routed to their destination.
    pub direct_frames: u64,
    /// Datagram copies queued to members (one group frame makes one per other member).
    pub copies_out: u64,
    /// Direct frames whose destination was not registered.
    pub undeliverable: u64,
    /// Relayed frames whose datagram header did not name the registered member (another
    /// cluster, member or incarnation, or no hybridcast datagram at all): dropped.
    pub foreign_datagrams: u64,
    /// Bytes queued for all connections and not yet written.
    pub queued_bytes: usize,
    /// The most bytes ever queued for one connection.
    pub peak_queued_bytes: usize,
    /// Connections closed, by reason ([`CloseReason::ALL`] order).
    pub closed: [u64; 10],
}

impl HubStats {
    /// Connections closed for `reason`.
    pub fn closed_for(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }
}

#[derive(Debug)]
enum Phase {
    /// Challenge sent; waiting for the member's hello.
    Challenged { nonce: [u8; NONCE_LEN] },
    /// Registered as `member`.
    Registered { member: MemberKey, incarnation: u64 },
    /// Closed by the hub; only the bye remains to be written.
    Closing,
}

#[derive(Debug)]
struct Conn {
    decoder: FrameDecoder,
    out: Outbox,
    phase: Phase,
    /// Hello deadline while challenged, idle deadline once registered.
    deadline: Instant,
    /// The frame number the member must send next.
    next_id: u64,
    /// In `Hub::to_close`: nothing more is queued for it.
    doomed: bool,
}

/// The message server of hub mode (seed 004), as a pure state machine over stream
/// connections.
///
/// Every member holds one connection to the hub. The hub challenges it, registers it under its
/// member key, relays each group frame to every other registered member (the multicast
/// replica), routes each direct frame to its destination, acknowledges every frame to its
/// sender and announces registrations and departures to all members. The frame layout is in
/// [`super::frame`] and `WIRE.md` §9.
///
/// The runtime owns the sockets. It calls:
/// - [`Hub::accept`] for a new connection, [`Hub::handle_bytes`] with what it read from one,
///   and [`Hub::disconnect`] when one closed (or after carrying out a [`HubAction::Close`]);
/// - [`Hub::handle_timeout`] at [`Hub::poll_timeout`];
/// - after each of those: [`Hub::poll_action`] until `None`, then [`Hub::poll_ready`] to learn
///   which connections have something to write, writing [`Hub::peek_output`] and reporting
///   progress with [`Hub::consume_output`] (again whenever the socket becomes writable).
///
/// Memory is bounded: at most `max_connections` connections, each with at most one partial
/// frame read and `max_queued_bytes` queued (plus one closing frame); a relayed datagram is
/// stored once however many members it goes to.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    /// Keys the challenges' nonces: each is a MAC of a counter under it.
    nonces: Hmac<Sha256>,
    challenges: u64,
    /// Bytes queued over every connection.
    queued: usize,
    conns: BTreeMap<ConnId, Conn>,
    /// Registered members and the connection each is on.
    members: BTreeMap<MemberKey, ConnId>,
    ready: VecDeque<ConnId>,
    ready_set: HashSet<ConnId>,
    actions: VecDeque<HubAction>,
    events: VecDeque<HubEvent>,
    /// Closes decided while relaying, carried out once the relay is done, with the queued
    /// bytes each close will free.
    to_close: Vec<(ConnId, CloseReason, usize)>,
    /// Bytes the closes in `to_close` will free.
    doomed_bytes: usize,
    open: usize,
    stats: HubStats,
}

impl Hub {
    /// A hub with no connections. `secret` keys the challenges' nonces (each is a MAC of a
    /// counter under it), so whoever sees challenges cannot predict the next: give it 32 bytes
    /// of fresh randomness on every start (the runtimes draw them from the operating system).
    /// A repeated secret repeats the nonces, and a registration recorded on one connection
    /// would then be good on the same-numbered connection of another run.
    pub fn new(config: HubConfig, secret: [u8; 32]) -> Result<Hub, HubConfigError> {
        config.validate()?;
        let Ok(nonces) = Hmac::<Sha256>::new_from_slice(&secret) else {
            return Err(HubConfigError {
                field: "secret",
                reason: "unusable".into(),
            });
        };
        Ok(Hub {
            config,
            nonces,
            challenges: 0,
            queued: 0,
            conns: BTreeMap::new(),
            members: BTreeMap::new(),
            ready: VecDeque::new(),
            ready_set: HashSet::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            to_close: Vec::new(),
            doomed_bytes: 0,
            open: 0,
            stats: HubStats::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Counters and gauges.
    pub fn stats(&self) -> HubStats {
        let mut s = self.stats.clone();
        s.connections = self.conns.len();
        s.registered = self.members.len();
        s.queued_bytes = self.queued;
        s
    }

    /// The registered members and their incarnations.
    pub fn members(&self) -> impl Iterator<Item = (MemberKey, u64)> + '_ {
        self.members
            .values()
            .filter_map(|c| match self.conns.get(c)?.phase {
                Phase::Registered {
                    member,
                    incarnation,
                } => Some((member, incarnation)),
                _ => None,
            })
    }

    /// A new connection: the hub queues its challenge. Beyond `max_connections` the
    /// connection is closed at once ([`CloseReason::Full`]). An id the hub already knows is
    /// ignored.
    pub fn accept(&mut self, now: Instant, conn: ConnId) {
        if self.conns.contains_key(&conn) {
            return;
        }
        self.stats.accepted += 1;
        self.challenges += 1;
        let mut mac = self.nonces.clone();
        mac.update(&self.challenges.to_be_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&mac.finalize().into_bytes()[..NONCE_LEN]);
        self.conns.insert(
            conn,
            Conn {
                decoder: FrameDecoder::new(),
                out: Outbox::default(),
                phase: Phase::Challenged { nonce },
                deadline: now + self.config.hello_timeout,
                next_id: 1,
                doomed: false,
            },
        );
        self.open += 1;
        if self.open > self.config.max_connections {
            self.close(conn, CloseReason::Full);
        } else {
            self.send(conn, Frame::Challenge { nonce }.encode());
        }
        self.settle();
    }

    /// Bytes read from `conn` (any amount; frames may span calls). Frames are handled in
    /// order; a frame that cannot be read closes the connection ([`CloseReason::Protocol`]).
    /// After the frames of one call, the hub acknowledges the last one to the sender.
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.stats.bytes_in += bytes.len() as u64;
        // Feeding at most one frame's worth at a time keeps the decoder's buffer bounded
        // whatever the runtime passes in.
        for piece in bytes.chunks(LEN_PREFIX + MAX_FRAME_LEN) {
            match self.conns.get_mut(&conn) {
                Some(c) if !matches!(c.phase, Phase::Closing) => c.decoder.push(piece),
                _ => return,
            }
            let mut ack = None;
            while let Some(c) = self.conns.get_mut(&conn) {
                if matches!(c.phase, Phase::Closing) {
                    break;
                }
                match c.decoder.next_frame() {
                    Ok(Some(frame)) => {
                        self.stats.frames_in += 1;
                        if let Some(id) = self.on_frame(now, conn, frame) {
                            ack = Some(id);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => self.close(conn, CloseReason::Protocol),
                }
            }
            if let Some(id) = ack {
                if self.is_registered(conn) {
                    self.send(conn, Frame::Ack { id }.encode());
                }
            }
            self.settle();
        }
    }

    /// The connection closed (the peer closed it, it broke, or the runtime closed it after a
    /// [`HubAction::Close`]). A registered member is announced departed to all others.
    pub fn disconnect(&mut self, _now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.queued -= c.out.len();
        match c.phase {
            Phase::Registered {
                member,
                incarnation,
            } => {
                self.open -= 1;
                self.stats.closed[CloseReason::Closed.index()] += 1;
                self.depart(conn, member, incarnation, CloseReason::Closed);
            }
            Phase::Challenged { .. } => {
                self.open -= 1;
                self.stats.closed[CloseReason::Closed.index()] += 1;
                self.events.push_back(HubEvent::Refused {
                    conn,
                    reason: CloseReason::Closed,
                });
                self.trim_events();
            }
            Phase::Closing => {}
        }
        self.settle();
    }

    /// Closes every connection ([`CloseReason::Shutdown`]).
    pub fn shutdown(&mut self) {
        let all: Vec<ConnId> = self.conns.keys().copied().collect();
        for c in all {
            self.close(c, CloseReason::Shutdown);
        }
        self.settle();
    }

    /// Closes connections whose hello or idle deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !matches!(c.phase, Phase::Closing) && c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for c in due {
            self.close(c, CloseReason::Idle);
        }
        self.settle();
    }

    /// When [`Hub::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter(|c| !matches!(c.phase, Phase::Closing))
            .map(|c| c.deadline)
            .min()
    }

    /// The next thing the runtime must do.
    pub fn poll_action(&mut self) -> Option<HubAction> {
        self.actions.pop_front()
    }

    /// The next event for the operator's log. Events beyond 4096 unread are dropped, oldest
    /// first.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.events.pop_front()
    }

    /// A connection with new bytes to write since it was last returned.
    pub fn poll_ready(&mut self) -> Option<ConnId> {
        let c = self.ready.pop_front()?;
        self.ready_set.remove(&c);
        Some(c)
    }

    /// The next bytes to write on `conn`, `None` when nothing is queued.
    pub fn peek_output(&self, conn: ConnId) -> Option<&[u8]> {
        self.conns.get(&conn)?.out.peek()
    }

    /// `n` bytes of what [`Hub::peek_output`] returned were written.
    pub fn consume_output(&mut self, conn: ConnId, n: usize) {
        if let Some(c) = self.conns.get_mut(&conn) {
            let before = c.out.len();
            c.out.consume(n);
            self.queued -= before - c.out.len();
        }
    }

    /// Bytes queued for `conn` and not yet written.
    pub fn queued_bytes(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.out.len())
    }

    // ----- internals -----

    fn is_registered(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| matches!(c.phase, Phase::Registered { .. }))
    }

    /// Handles one frame; returns its number when it is to be acknowledged.
    fn on_frame(&mut self, now: Instant, conn: ConnId, frame: Frame) -> Option<u64> {
        let c = self.conns.get_mut(&conn)?;
        let (member, incarnation) = match c.phase {
            Phase::Challenged { nonce } => {
                match frame {
                    Frame::Hello(h) => self.on_hello(now, conn, nonce, h),
                    _ => self.close(conn, CloseReason::Protocol),
                }
                return None;
            }
            Phase::Registered {
                member,
                incarnation,
            } => (member, incarnation),
            Phase::Closing => return None,
        };
        let numbered = match &frame {
            Frame::Group { id, .. } | Frame::Direct { id, .. } | Frame::Ping { id } => Some(*id),
            _ => None,
        };
        if let Some(id) = numbered {
            if id != c.next_id {
                self.close(conn, CloseReason::Protocol);
                return None;
            }
            c.next_id += 1;
            c.deadline = now + self.config.idle_timeout;
        }
        match frame {
            Frame::Group { datagram, .. } => {
                if self.is_own(member, incarnation, &datagram) {
                    self.stats.group_frames += 1;
                    self.relay(conn, member, datagram, None);
                }
            }
            Frame::Direct { id, to, datagram } => {
                if self.is_own(member, incarnation, &datagram) {
                    match self.members.get(&to).copied() {
                        Some(dest) if dest != conn => {
                            self.stats.direct_frames += 1;
                            self.relay(conn, member, datagram, Some(dest));
                        }
                        _ => {
                            self.stats.undeliverable += 1;
                            self.send(conn, Frame::Undeliverable { id, to }.encode());
                        }
                    }
                }
            }
            Frame::Ping { .. } => {}
            Frame::Bye { .. } => {
                self.close(conn, CloseReason::Closed);
                return None;
            }
            _ => {
                self.close(conn, CloseReason::Protocol);
                return None;
            }
        }
        numbered
    }

    /// Whether a relayed datagram's header names the member registered on its connection.
    fn is_own(&mut self, member: MemberKey, incarnation: u64, datagram: &[u8]) -> bool {
        let ok = wire::decode_header(datagram).is_ok_and(|(h, _)| {
            h.cluster == self.config.cluster && h.sender == member && h.incarnation == incarnation
        });
        if !ok {
            self.stats.foreign_datagrams += 1;
        }
        ok
    }

    fn on_hello(&mut self, now: Instant, conn: ConnId, nonce: [u8; NONCE_LEN], h: Hello) {
        if h.cluster != self.config.cluster {
            return self.close(conn, CloseReason::WrongCluster);
        }
        if let Some(keys) = &self.config.keys {
            if !verify_hello(keys, &nonce, &h) {
                return self.close(conn, CloseReason::Unauthenticated);
            }
        }
        if let Some(&old) = self.members.get(&h.member) {
            let old_incarnation = match self.conns.get(&old).map(|c| &c.phase) {
                Some(Phase::Registered { incarnation, .. }) => *incarnation,
                _ => 0,
            };
            if h.incarnation < old_incarnation {
                return self.close(conn, CloseReason::Stale);
            }
            if h.incarnation == old_incarnation {
                // The same member again (its old connection broke without the hub noticing):
                // move it over quietly; for the others nothing changed.
                self.members.remove(&h.member);
                if let Some(c) = self.conns.get_mut(&old) {
                    c.phase = Phase::Closing;
                }
                self.finish_close(old, CloseReason::Replaced);
                self.register(now, conn, h, false);
                return;
            }
            // A newer incarnation: the old one is gone for good; everyone hears of it.
            self.close(old, CloseReason::Replaced);
        }
        self.register(now, conn, h, true);
    }

    fn register(&mut self, now: Instant, conn: ConnId, h: Hello, announce: bool) {
        let idle = self.config.idle_timeout;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.phase = Phase::Registered {
            member: h.member,
            incarnation: h.incarnation,
        };
        c.deadline = now + idle;
        self.stats.registrations += 1;
        let others: Vec<(MemberKey, ConnId, u64)> = self
            .members
            .iter()
            .filter_map(|(m, c)| match self.conns.get(c)?.phase {
                Phase::Registered { incarnation, .. } => Some((*m, *c, incarnation)),
                _ => None,
            })
            .collect();
        self.members.insert(h.member, conn);
        self.send(conn, Frame::Welcome.encode());
        for (member, _, incarnation) in &others {
            self.send(
                conn,
                Frame::Joined {
                    member: *member,
                    incarnation: *incarnation,
                }
                .encode(),
            );
        }
        if announce {
            let joined = Frame::Joined {
                member: h.member,
                incarnation: h.incarnation,
            }
            .encode();
            for (_, other, _) in &others {
                self.send(*other, joined.clone());
            }
        }
        self.events.push_back(HubEvent::Registered {
            conn,
            member: h.member,
            incarnation: h.incarnation,
        });
        self.trim_events();
    }

    /// Queues `datagram` from `member` to `dest`, or to every other registered member.
    fn relay(&mut self, from: ConnId, member: MemberKey, datagram: Bytes, dest: Option<ConnId>) {
        let header = Bytes::copy_from_slice(&deliver_header(member, datagram.len()));
        let targets: Vec<ConnId> = match dest {
            Some(d) => vec![d],
            None => self
                .members
                .values()
                .copied()
                .filter(|c| *c != from)
                .collect(),
        };
        for t in targets {
            if self.enqueue(t, &[header.clone(), datagram.clone()]) {
                self.stats.copies_out += 1;
            }
        }
    }

    /// Queues a frame for `conn` within its limit; over the limit the connection is marked to
    /// close as a slow consumer and nothing is queued.
    fn enqueue(&mut self, conn: ConnId, chunks: &[Bytes]) -> bool {
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        if matches!(c.phase, Phase::Closing) || c.doomed {
            return false;
        }
        if c.out.len() + len > self.config.max_queued_bytes {
            self.doom(conn, CloseReason::SlowConsumer);
            return false;
        }
        // Over the total, the longest queues go first (they are the slowest readers), until
        // this frame fits; it may be this connection's own.
        while self.queued.saturating_sub(self.doomed_bytes) + len
            > self.config.max_total_queued_bytes
        {
            let longest = self
                .conns
                .iter()
                .filter(|(_, c)| !matches!(c.phase, Phase::Closing) && !c.doomed)
                .max_by_key(|(id, c)| (c.out.len(), **id))
                .map(|(id, _)| *id);
            let Some(longest) = longest else {
                return false;
            };
            self.doom(longest, CloseReason::SlowConsumer);
            if longest == conn {
                return false;
            }
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        c.out.push_frame(chunks);
        self.queued += len;
        self.stats.peak_queued_bytes = self.stats.peak_queued_bytes.max(c.out.len());
        if self.ready_set.insert(conn) {
            self.ready.push_back(conn);
        }
        true
    }

    /// Marks `conn` to be closed once the current relay is done; what its close will free
    /// no longer counts against the total.
    fn doom(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.doomed {
            return;
        }
        c.doomed = true;
        let going = c.out.len() - c.out.committed();
        self.doomed_bytes += going;
        self.to_close.push((conn, reason, going));
    }

    fn send(&mut self, conn: ConnId, frame: Bytes) {
        self.enqueue(conn, &[frame]);
    }

    /// Closes `conn` now (a registered member is announced departed).
    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let phase = std::mem::replace(&mut c.phase, Phase::Closing);
        if matches!(phase, Phase::Closing) {
            return;
        }
        // Its queue goes first, so the announcement below is measured against what stays.
        self.finish_close(conn, reason);
        match phase {
            Phase::Registered {
                member,
                incarnation,
            } => self.depart(conn, member, incarnation, reason),
            _ => {
                self.events.push_back(HubEvent::Refused { conn, reason });
                self.trim_events();
            }
        }
    }

    /// The connection (already `Closing`) gets its bye and the runtime is told to close it.
    fn finish_close(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // A frame partly written is finished first, or the bye would land inside it.
        let before = c.out.len();
        c.out.cut_after_current();
        // The bye may exceed the queue limit: it is the last frame, and it is small.
        c.out.push(Frame::Bye { reason }.encode());
        self.queued = self.queued - before + c.out.len();
        if self.ready_set.insert(conn) {
            self.ready.push_back(conn);
        }
        self.open -= 1;
        self.stats.closed[reason.index()] += 1;
        self.actions.push_back(HubAction::Close { conn, reason });
    }

    /// Tells every registered member that `member` departed.
    fn depart(&mut self, conn: ConnId, member: MemberKey, incarnation: u64, reason: CloseReason) {
        if self.members.get(&member) == Some(&conn) {
            self.members.remove(&member);
        }
        let frame = Frame::Departed {
            member,
            incarnation,
            reason,
        }
        .encode();
        let others: Vec<ConnId> = self.members.values().copied().collect();
        for o in others {
            self.send(o, frame.clone());
        }
        self.events.push_back(HubEvent::Departed {
            conn,
            member,
            incarnation,
            reason,
        });
        self.trim_events();
    }

    /// Carries out the closes decided while relaying (a close announces a departure, which
    /// may overflow more queues: repeat until none is left).
    fn settle(&mut self) {
        while let Some((conn, reason, going)) = self.to_close.pop() {
            self.doomed_bytes -= going;
            self.close(conn, reason);
        }
    }

    fn trim_events(&mut self) {
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }
}

/// Unread hub events kept for the operator.
const MAX_EVENTS: usize = 4096;
