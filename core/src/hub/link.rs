//! [`HubLink`]: a member's side of its connection to the hub.

use super::frame::{
    CloseReason, Frame, FrameDecoder, Hello, LEN_PREFIX, MAX_FRAME_DATAGRAM, MAX_FRAME_LEN,
    hello_tag,
};
use super::outbox::Outbox;
use crate::auth::Keyring;
use crate::ids::{ClusterId, MemberKey, Rng};
use crate::node::Node;
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A member's hub-mode settings: where the hub is and how the link keeps itself up.
/// [`LinkConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// The hub's address.
    pub hub: SocketAddr,
    /// With nothing else sent for this long and nothing awaiting acknowledgement, the link
    /// sends a ping, so the hub (whose idle timeout must be longer than `ack_timeout`) sees
    /// the member alive and the link sees the hub answer.
    /// No ping goes out while frames wait for their acknowledgement: the hub sees those
    /// frames, `ack_timeout` already watches for its answer, and pings piling up behind a
    /// stalled connection would take the unacknowledged bytes beyond `max_unacked_bytes`.
    /// Default 1 s.
    pub keepalive: Duration,
    /// With frames unacknowledged, this long without hearing anything from the hub (counted
    /// from the later of the oldest one's sending and the last frame received: the hub sends
    /// in order, so a member reading a deep queue is still making progress towards the
    /// acknowledgement) means the hub is gone: the link closes the connection and connects
    /// again. Default 5 s; longer than `keepalive`, and shorter than the hub's
    /// `idle_timeout` (while frames wait, the link sends no pings).
    pub ack_timeout: Duration,
    /// Connecting and registering must complete within this time. Default 5 s.
    pub connect_timeout: Duration,
    /// The first wait before connecting again after a loss; it doubles after each attempt
    /// that does not lead to a registration lasting `backoff_max` × 4 (so a connection the
    /// hub keeps dropping does not reconnect at the first rate), up to `backoff_max`, with up
    /// to a quarter of random jitter. Default 50 ms.
    pub backoff_min: Duration,
    /// The longest wait between attempts. Default 2 s.
    pub backoff_max: Duration,
    /// Most bytes of frames sent and not yet acknowledged by the hub (queued to be written
    /// included). A datagram beyond it is dropped and counted, as a datagram multicast into
    /// a full socket buffer would be; the protocol's recovery repairs it. Default 4 MiB.
    pub max_unacked_bytes: usize,
}

impl LinkConfig {
    /// Defaults for a hub at `hub`.
    pub fn new(hub: SocketAddr) -> Self {
        LinkConfig {
            hub,
            keepalive: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_unacked_bytes: 4 << 20,
        }
    }

    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), super::HubConfigError> {
        let bad =
            |field: &'static str, reason: String| Err(super::HubConfigError { field, reason });
        if self.hub.port() == 0 {
            return bad("hub", format!("{} has no port", self.hub));
        }
        for (field, d) in [
            ("keepalive", self.keepalive),
            ("ack_timeout", self.ack_timeout),
            ("connect_timeout", self.connect_timeout),
            ("backoff_min", self.backoff_min),
            ("backoff_max", self.backoff_max),
        ] {
            if d.is_zero() || d > super::server::MAX_TIMEOUT {
                return bad(
                    field,
                    format!("{d:?} is not within (0, {:?}]", super::server::MAX_TIMEOUT),
                );
            }
        }
        if self.ack_timeout <= self.keepalive {
            return bad(
                "ack_timeout",
                format!(
                    "{:?} must be longer than keepalive {:?}",
                    self.ack_timeout, self.keepalive
                ),
            );
        }
        if self.backoff_max < self.backoff_min {
            return bad(
                "backoff_min",
                format!(
                    "need 0 < backoff_min ({:?}) <= backoff_max ({:?})",
                    self.backoff_min, self.backoff_max
                ),
            );
        }
        let min = LEN_PREFIX + MAX_FRAME_LEN;
        if self.max_unacked_bytes < min {
            return bad(
                "max_unacked_bytes",
                format!(
                    "{} is below {min} (one of the largest frames)",
                    self.max_unacked_bytes
                ),
            );
        }
        Ok(())
    }
}

/// Something the runtime must do for the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    /// Open a stream connection to `to`; report [`HubLink::connected`] or
    /// [`HubLink::connection_lost`].
    Connect {
        /// The hub's address.
        to: SocketAddr,
    },
    /// Close the current connection (without reporting it lost: the link knows). Bytes still
    /// in [`HubLink::peek_output`] belong to no connection any more and were discarded.
    Close,
}

/// Why the link lost its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLoss {
    /// The connection could not be opened.
    ConnectFailed,
    /// The connection closed or broke.
    Closed,
    /// Connecting and registering took longer than `connect_timeout`.
    HandshakeTimeout,
    /// The hub acknowledged nothing for `ack_timeout`.
    AckTimeout,
    /// The hub sent something this link cannot read.
    Protocol,
    /// The hub closed the connection, saying why ([`Frame::Bye`]).
    Bye(CloseReason),
}

/// What came over the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The hub accepted the registration; group datagrams flow.
    Registered,
    /// The connection is gone; the link connects again after a backoff.
    Lost(LinkLoss),
    /// A datagram another member sent, for [`Node::handle_datagram`].
    Datagram {
        /// The member whose connection it came from.
        from: MemberKey,
        /// The datagram.
        datagram: Bytes,
    },
    /// A member registered at the hub.
    Joined {
        /// Its key.
        member: MemberKey,
        /// Its incarnation.
        incarnation: u64,
    },
    /// A member's connection to the hub ended (for [`Node::handle_departure_notice`]).
    Departed {
        /// Its key.
        member: MemberKey,
        /// Its incarnation.
        incarnation: u64,
        /// Why.
        reason: CloseReason,
    },
    /// A direct datagram's destination is not registered at the hub.
    Undeliverable {
        /// The destination.
        to: MemberKey,
    },
}

/// The link's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Connection attempts.
    pub connects: u64,
    /// Registrations the hub accepted.
    pub registrations: u64,
    /// Connections lost after (or while) connecting.
    pub losses: u64,
    /// Datagrams handed to the hub.
    pub datagrams_out: u64,
    /// Datagrams received from the hub.
    pub datagrams_in: u64,
    /// Datagrams dropped because no connection was registered.
    pub dropped_offline: u64,
    /// Datagrams dropped because `max_unacked_bytes` were unacknowledged.
    pub dropped_window: u64,
    /// Bytes sent and not yet acknowledged now.
    pub unacked_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection; the next attempt is due at `until`.
    Waiting { until: Instant },
    /// Connecting, or connected and registering, until `deadline`.
    Connecting { deadline: Instant, open: bool },
    /// Registered since `since`: datagrams flow.
    Registered { since: Instant },
    /// Closed for good ([`HubLink::close`]).
    Closed,
}

/// A member's side of hub mode: one stream connection to the hub, kept up with backoff, over
/// which the member's group datagrams go out and the other members' come in.
///
/// The link is transport only: the [`Node`] produces and consumes exactly the datagrams it
/// would multicast, and its sequences, heartbeats and recovery repair whatever a lost
/// connection missed. The runtime:
/// - carries out [`HubLink::poll_action`] (connect, close) and reports
///   [`HubLink::connected`], [`HubLink::connection_lost`] and the bytes read
///   ([`HubLink::handle_bytes`]);
/// - hands every [`crate::Transmit::Group`] to [`HubLink::send_group`];
/// - drains [`HubLink::poll_for_node`], which feeds relayed datagrams and the hub's departure
///   notices to the node and returns the rest for the log;
/// - writes [`HubLink::peek_output`] and reports [`HubLink::consume_output`];
/// - calls [`HubLink::handle_timeout`] at [`HubLink::poll_timeout`].
#[derive(Debug)]
pub struct HubLink {
    config: LinkConfig,
    cluster: ClusterId,
    member: MemberKey,
    incarnation: u64,
    keys: Option<Keyring>,
    rng: Rng,
    state: State,
    decoder: FrameDecoder,
    out: Outbox,
    /// Frames sent and not acknowledged: number, length, when queued.
    unacked: VecDeque<(u64, usize, Instant)>,
    unacked_bytes: usize,
    next_id: u64,
    last_sent: Instant,
    /// The last time anything arrived from the hub on this connection (or the registration):
    /// frames come in order, so whatever arrives means the acknowledgement queued behind it
    /// is on its way.
    last_heard: Instant,
    /// A challenge was answered on this connection.
    challenged: bool,
    backoff: Duration,
    actions: VecDeque<LinkAction>,
    events: VecDeque<LinkEvent>,
    stats: LinkStats,
}

impl HubLink {
    /// A link for member `member` (incarnation `incarnation`) of `cluster`, tagging its
    /// registration with `keys` when the cluster has them. It asks to connect at once.
    pub fn new(
        config: LinkConfig,
        cluster: ClusterId,
        member: MemberKey,
        incarnation: u64,
        keys: Option<Keyring>,
        now: Instant,
        seed: u64,
    ) -> Result<Self, super::HubConfigError> {
        config.validate()?;
        let backoff = config.backoff_min;
        let mut link = HubLink {
            config,
            cluster,
            member,
            incarnation,
            keys,
            rng: Rng::new(seed),
            state: State::Waiting { until: now },
            decoder: FrameDecoder::new(),
            out: Outbox::default(),
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            next_id: 1,
            last_sent: now,
            last_heard: now,
            challenged: false,
            backoff,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            stats: LinkStats::default(),
        };
        link.handle_timeout(now);
        Ok(link)
    }

    /// A link for `node`: its cluster, key, incarnation and cluster keys.
    pub fn for_node(
        config: LinkConfig,
        node: &Node,
        now: Instant,
        seed: u64,
    ) -> Result<Self, super::HubConfigError> {
        let id = node.identity();
        HubLink::new(
            config,
            ClusterId::of(&id.cluster),
            node.key(),
            id.incarnation,
            node.config().auth.as_ref().map(|a| a.keys.clone()),
            now,
            seed,
        )
    }

    /// The settings.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Whether the hub has accepted the registration on the current connection.
    pub fn is_registered(&self) -> bool {
        matches!(self.state, State::Registered { .. })
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        let mut s = self.stats.clone();
        s.unacked_bytes = self.unacked_bytes;
        s
    }

    /// The connection asked for by [`LinkAction::Connect`] is open.
    pub fn connected(&mut self, _now: Instant) {
        if let State::Connecting { deadline, .. } = self.state {
            self.state = State::Connecting {
                deadline,
                open: true,
            };
        }
    }

    /// The connection failed to open, closed or broke.
    pub fn connection_lost(&mut self, now: Instant) {
        match self.state {
            State::Connecting { open: false, .. } => self.lose(now, LinkLoss::ConnectFailed, false),
            State::Connecting { .. } | State::Registered { .. } => {
                self.lose(now, LinkLoss::Closed, false)
            }
            State::Waiting { .. } | State::Closed => {}
        }
    }

    /// Bytes read from the connection.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        for piece in bytes.chunks(LEN_PREFIX + MAX_FRAME_LEN) {
            if !matches!(
                self.state,
                State::Connecting { open: true, .. } | State::Registered { .. }
            ) {
                return;
            }
            self.decoder.push(piece);
            loop {
                match self.decoder.next_frame() {
                    Ok(Some(frame)) => {
                        if !self.on_frame(now, frame) {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        self.lose(now, LinkLoss::Protocol, true);
                        break;
                    }
                }
            }
        }
    }

    /// Sends a group datagram through the hub to every other member. Returns false (and
    /// counts it) when it was dropped: no registered connection, or the unacknowledged
    /// window is full.
    pub fn send_group(&mut self, now: Instant, datagram: Bytes) -> bool {
        self.send_datagram(now, None, datagram)
    }

    /// Sends a datagram through the hub to member `to` only.
    pub fn send_direct(&mut self, now: Instant, to: MemberKey, datagram: Bytes) -> bool {
        self.send_datagram(now, Some(to), datagram)
    }

    /// Says goodbye to the hub: queues a [`Frame::Bye`] after what is queued, and never
    /// connects again. Write what [`HubLink::peek_output`] holds, then close the connection.
    pub fn close(&mut self) {
        if !self.is_registered() {
            // A registration still on its way would only register a member that is going.
            self.out.clear();
        } else {
            self.out.push(
                Frame::Bye {
                    reason: CloseReason::Closed,
                }
                .encode(),
            );
        }
        self.state = State::Closed;
    }

    /// Connects, times out a silent hub, sends keepalives.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Waiting { until } if now >= until => {
                self.state = State::Connecting {
                    deadline: now + self.config.connect_timeout,
                    open: false,
                };
                self.stats.connects += 1;
                self.actions.push_back(LinkAction::Connect {
                    to: self.config.hub,
                });
            }
            State::Connecting { deadline, .. } if now >= deadline => {
                // Closed even if not yet open: the attempt is abandoned.
                self.lose(now, LinkLoss::HandshakeTimeout, true)
            }
            State::Registered { .. } => {
                if let Some(&(_, _, sent)) = self.unacked.front() {
                    if now >= sent.max(self.last_heard) + self.config.ack_timeout {
                        self.lose(now, LinkLoss::AckTimeout, true);
                        return;
                    }
                }
                if self.unacked.is_empty() && now >= self.last_sent + self.config.keepalive {
                    let id = self.next_id;
                    self.push_numbered(now, id, Frame::Ping { id }.encode());
                }
            }
            _ => {}
        }
    }

    /// When [`HubLink::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { until } => Some(until),
            State::Connecting { deadline, .. } => Some(deadline),
            State::Registered { .. } => Some(match self.unacked.front() {
                Some(&(_, _, sent)) => sent.max(self.last_heard) + self.config.ack_timeout,
                None => self.last_sent + self.config.keepalive,
            }),
            State::Closed => None,
        }
    }

    /// The next thing the runtime must do.
    pub fn poll_action(&mut self) -> Option<LinkAction> {
        self.actions.pop_front()
    }

    /// The next event, whatever it is.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// Feeds events to `node` until one is left the node has no use for, and returns that
    /// one (registration news and the like, for the log); `None` once drained. Relayed
    /// datagrams go to [`Node::handle_datagram`] (from the hub's address), departure notices
    /// to [`Node::handle_departure_notice`] (and are returned too, for the log).
    pub fn poll_for_node(&mut self, now: Instant, node: &mut Node) -> Option<LinkEvent> {
        self.poll_for_node_with(now, node, || true)
    }

    /// [`HubLink::poll_for_node`], handing the node only the relayed datagrams `admit`
    /// accepts (a runtime's loss injection for demos and tests).
    pub fn poll_for_node_with(
        &mut self,
        now: Instant,
        node: &mut Node,
        mut admit: impl FnMut() -> bool,
    ) -> Option<LinkEvent> {
        loop {
            let e = self.events.pop_front()?;
            match &e {
                LinkEvent::Datagram { datagram, .. } => {
                    if admit() {
                        node.handle_datagram(now, self.config.hub, datagram.clone());
                    }
                    continue;
                }
                LinkEvent::Departed {
                    member,
                    incarnation,
                    ..
                } => node.handle_departure_notice(now, *member, *incarnation),
                _ => {}
            }
            return Some(e);
        }
    }

    /// The next bytes to write on the connection.
    pub fn peek_output(&self) -> Option<&[u8]> {
        self.out.peek()
    }

    /// `n` bytes of [`HubLink::peek_output`] were written.
    pub fn consume_output(&mut self, n: usize) {
        self.out.consume(n);
    }

    /// Bytes queued to be written.
    pub fn queued_bytes(&self) -> usize {
        self.out.len()
    }

    // ----- internals -----

    fn send_datagram(&mut self, now: Instant, to: Option<MemberKey>, datagram: Bytes) -> bool {
        if !self.is_registered() || datagram.is_empty() {
            self.stats.dropped_offline += 1;
            return false;
        }
        if datagram.len() > MAX_FRAME_DATAGRAM
            || self.unacked_bytes + LEN_PREFIX + 17 + datagram.len() > self.config.max_unacked_bytes
        {
            self.stats.dropped_window += 1;
            return false;
        }
        let id = self.next_id;
        let frame = match to {
            None => Frame::Group { id, datagram },
            Some(to) => Frame::Direct { id, to, datagram },
        };
        self.push_numbered(now, id, frame.encode());
        self.stats.datagrams_out += 1;
        true
    }

    fn push_numbered(&mut self, now: Instant, id: u64, frame: Bytes) {
        self.next_id += 1;
        self.unacked_bytes += frame.len();
        self.unacked.push_back((id, frame.len(), now));
        self.out.push(frame);
        self.last_sent = now;
    }

    /// Handles one frame from the hub; false when the connection was lost by it.
    fn on_frame(&mut self, now: Instant, frame: Frame) -> bool {
        if let Frame::Bye { reason } = frame {
            self.lose(now, LinkLoss::Bye(reason), true);
            return false;
        }
        if !self.is_registered() {
            match frame {
                Frame::Challenge { nonce } if !self.challenged => {
                    self.challenged = true;
                    let tag = self
                        .keys
                        .as_ref()
                        .map(|k| hello_tag(k, &nonce, self.cluster, self.member, self.incarnation));
                    self.out.push(
                        Frame::Hello(Hello {
                            cluster: self.cluster,
                            member: self.member,
                            incarnation: self.incarnation,
                            tag,
                        })
                        .encode(),
                    );
                }
                Frame::Welcome if self.challenged => {
                    self.state = State::Registered { since: now };
                    self.last_sent = now;
                    self.last_heard = now;
                    self.stats.registrations += 1;
                    self.events.push_back(LinkEvent::Registered);
                }
                _ => {
                    self.lose(now, LinkLoss::Protocol, true);
                    return false;
                }
            }
            return true;
        }
        self.last_heard = now;
        match frame {
            Frame::Deliver { from, datagram } => {
                self.stats.datagrams_in += 1;
                self.events
                    .push_back(LinkEvent::Datagram { from, datagram });
            }
            Frame::Ack { id } => {
                if id >= self.next_id {
                    self.lose(now, LinkLoss::Protocol, true);
                    return false;
                }
                while let Some(&(first, len, _)) = self.unacked.front() {
                    if first > id {
                        break;
                    }
                    self.unacked.pop_front();
                    self.unacked_bytes -= len;
                }
            }
            Frame::Undeliverable { to, .. } => {
                self.events.push_back(LinkEvent::Undeliverable { to })
            }
            Frame::Joined {
                member,
                incarnation,
            } => self.events.push_back(LinkEvent::Joined {
                member,
                incarnation,
            }),
            Frame::Departed {
                member,
                incarnation,
                reason,
            } => self.events.push_back(LinkEvent::Departed {
                member,
                incarnation,
                reason,
            }),
            _ => {
                self.lose(now, LinkLoss::Protocol, true);
                return false;
            }
        }
        true
    }

    /// Drops the connection and schedules the next attempt.
    fn lose(&mut self, now: Instant, why: LinkLoss, close: bool) {
        if self.state == State::Closed {
            return;
        }
        if let State::Registered { since } = self.state {
            if now >= since + self.config.backoff_max * 4 {
                // A registration that lasted: this loss starts a fresh series of attempts.
                self.backoff = self.config.backoff_min;
            }
        }
        if let LinkLoss::Bye(
            CloseReason::Stale | CloseReason::WrongCluster | CloseReason::Unauthenticated,
        ) = why
        {
            // The hub will refuse again until someone changes the configuration (or, for a
            // stale incarnation, forever: a newer process of this member is registered).
            self.backoff = self.config.backoff_max;
        }
        self.decoder = FrameDecoder::new();
        self.out.clear();
        self.unacked.clear();
        self.unacked_bytes = 0;
        self.next_id = 1;
        self.challenged = false;
        let jitter = self.backoff.mul_f64(self.rng.unit() / 4.0);
        self.state = State::Waiting {
            until: now + self.backoff + jitter,
        };
        self.backoff = (self.backoff * 2).min(self.config.backoff_max);
        self.stats.losses += 1;
        if close {
            self.actions.push_back(LinkAction::Close);
        }
        self.events.push_back(LinkEvent::Lost(why));
    }
}
