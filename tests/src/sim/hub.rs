//! Hub mode in the simulator: one simulated [`Hub`] relays group datagrams over simulated
//! stream connections, one per member ([`Transport::Hub`]).
//!
//! # Model
//!
//! - **The hub** is a process at [`HUB_ADDR`], index [`HUB`] in the [`super::Network`] (so
//!   `net.block(i, HUB)` cuts member `i` off from the hub only, and link overrides apply to
//!   its connections). [`Sim::crash_hub`] loses its state and closes every connection (its
//!   kernel sends a FIN on each); [`Sim::restart_hub`] starts a fresh [`Hub`]. Connection
//!   attempts while it is down are refused after a round trip.
//! - **Members.** Every node has a [`HubLink`] that lives and dies with its process (paused
//!   with it, replaced on restart). Every `Transmit::Group` goes to [`HubLink::send_group`];
//!   [`HubLink::poll_for_node`] feeds relayed datagrams and departure notices to the node. The
//!   multicast path is never used (the simulator panics if it is). Point-to-point HTTP goes
//!   member to member exactly as in multicast mode.
//! - **Connections** are TCP-like byte streams: in order, never lost or duplicated, each
//!   direction taking the link's delay and jitter, like the simulator's point-to-point
//!   exchanges. With [`HubParams::stream_loss`] the link's loss model costs retransmissions
//!   instead: an attempt to deliver what a direction holds is lost with the link's loss
//!   probability and retried after [`HubParams::retransmit`], holding everything behind it
//!   (head-of-line blocking). Across a partition nothing flows either way: segments wait and
//!   are retried every [`HubParams::retransmit`] until it heals (so a partition breaks nothing by itself; the link's ack
//!   timeout and the hub's idle timeout notice the silence and close their ends, and a
//!   connection attempt across it times out). Each direction has a flow-control window
//!   ([`HubParams::window`]): a writer writes only while fewer bytes than that are written and
//!   not yet read, so a member that stops reading (paused) makes the hub's queue for it grow
//!   until the hub drops it as a slow consumer. A closed end answers what still arrives with
//!   a reset, which the other end sees as the connection lost.

use super::{Item, Sim};
use bytes::Bytes;
use hybridcast_core::hub::{
    CloseReason, ConnId, Hub, HubAction, HubConfig, HubEvent, HubLink, LinkAction, LinkConfig,
    LinkEvent,
};
use hybridcast_core::{ClusterId, Node};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The hub's index in the [`super::Network`]: use it to cut members off from the hub
/// (`sim.net.block(i, HUB)`) or to give its connections link parameters of their own.
pub const HUB: usize = usize::MAX;

/// The hub's simulated address (no member slot maps to it).
pub const HUB_ADDR: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    4000,
);

/// How group datagrams travel.
#[derive(Debug, Clone, Default)]
pub enum Transport {
    /// IP multicast: every group datagram goes to every other node over the lossy network.
    #[default]
    Multicast,
    /// A message server relays them over stream connections (seed 004).
    Hub(Box<HubParams>),
}

impl Transport {
    /// Hub mode with `params`.
    pub fn hub(params: HubParams) -> Transport {
        Transport::Hub(Box::new(params))
    }
}

/// Hub-mode settings.
#[derive(Debug, Clone)]
pub struct HubParams {
    /// The hub's settings; the simulator sets its cluster (and keys, when the nodes have some).
    pub hub: HubConfig,
    /// Every member's link settings; the simulator sets the hub's address.
    pub link: LinkConfig,
    /// Flow-control window of each direction of a connection: bytes written and not yet read
    /// by the other end (the two sockets' buffers together).
    pub window: usize,
    /// How long a delivery attempt that did not get through (lost, or across a partition)
    /// waits before it is retried.
    pub retransmit: Duration,
    /// Whether the link's loss model applies to the connections, as retransmissions (off: the
    /// connections are as reliable as the point-to-point exchanges, and loss only hits
    /// multicast).
    pub stream_loss: bool,
}

impl HubParams {
    /// Settings scaled to the simulator's 200 ms heartbeats: keepalive 250 ms, ack and
    /// connect timeouts 1 s, reconnect backoff 50 ms doubling to 800 ms, hub idle timeout 2 s
    /// and hello timeout 1 s, 1 MiB queued per member at the hub, 256 KiB windows, 20 ms
    /// retransmissions (a fast retransmit on a LAN), no stream loss.
    pub fn sim() -> HubParams {
        let mut hub = HubConfig::new("sim");
        hub.idle_timeout = Duration::from_secs(2);
        hub.hello_timeout = Duration::from_secs(1);
        hub.max_queued_bytes = 1 << 20;
        let mut link = LinkConfig::new(HUB_ADDR);
        link.keepalive = Duration::from_millis(250);
        link.ack_timeout = Duration::from_secs(1);
        link.connect_timeout = Duration::from_secs(1);
        link.backoff_min = Duration::from_millis(50);
        link.backoff_max = Duration::from_millis(800);
        link.max_unacked_bytes = 1 << 20;
        HubParams {
            hub,
            link,
            window: 256 * 1024,
            retransmit: Duration::from_millis(20),
            stream_loss: false,
        }
    }
}

impl Default for HubParams {
    fn default() -> Self {
        HubParams::sim()
    }
}

/// Hub-mode traffic counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubTraffic {
    /// Group datagrams the members' links refused (not registered, or window full).
    pub dropped: u64,
    /// Bytes written member → hub.
    pub bytes_up: u64,
    /// Bytes written hub → member.
    pub bytes_down: u64,
    /// Delivery attempts lost (retried later) or held by a partition.
    pub retransmits: u64,
    /// Connection attempts.
    pub connects: u64,
    /// Connection attempts refused because the hub was down.
    pub refused: u64,
}

impl HubTraffic {
    pub(super) fn since(&self, e: &HubTraffic) -> HubTraffic {
        HubTraffic {
            dropped: self.dropped.saturating_sub(e.dropped),
            bytes_up: self.bytes_up.saturating_sub(e.bytes_up),
            bytes_down: self.bytes_down.saturating_sub(e.bytes_down),
            retransmits: self.retransmits.saturating_sub(e.retransmits),
            connects: self.connects.saturating_sub(e.connects),
            refused: self.refused.saturating_sub(e.refused),
        }
    }
}

/// One thing the hub did, as [`Sim::hub_events`] records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubNote {
    /// Virtual time since the start.
    pub at: Duration,
    /// Which hub process (0 for the first, bumped by every restart).
    pub life: u64,
    /// What happened.
    pub event: HubEvent,
}

/// Direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// Member → hub.
    Up,
    /// Hub → member.
    Down,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::Up => 0,
            Dir::Down => 1,
        }
    }
}

/// What travels on a connection.
#[derive(Debug, Clone)]
pub(super) enum Seg {
    /// Connection request (member → hub).
    Syn,
    /// Connection accepted (hub → member).
    SynAck,
    /// Connection refused: nothing listens at the hub's address (hub → member).
    Refused,
    /// Stream bytes.
    Data(Bytes),
    /// The sender closed its end (or answers a closed end with a reset).
    Fin,
}

#[derive(Debug, Default)]
struct Pipe {
    /// Segments on their way, with the time each may arrive; delivered in order.
    inflight: VecDeque<(Instant, Seg)>,
    /// When the next delivery attempt is scheduled.
    wake: Option<Instant>,
    /// Data bytes written and not yet read by the other end.
    unread: usize,
    last_due: Option<Instant>,
}

#[derive(Debug)]
struct Conn {
    node: usize,
    /// The member process that opened it.
    life: u64,
    /// The member's end is open (its link uses the connection).
    node_open: bool,
    /// The hub accepted it and has not closed or lost it.
    hub_open: bool,
    pipes: [Pipe; 2],
}

/// The hub process, its connections and its log.
#[derive(Debug)]
pub(super) struct HubSide {
    pub(super) params: HubParams,
    hub: Option<Hub>,
    life: u64,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    pub(super) deadline: Option<Instant>,
    events: Vec<HubNote>,
}

impl HubSide {
    pub(super) fn new(
        mut params: HubParams,
        cluster: &str,
        node: &hybridcast_core::Config,
    ) -> Self {
        params.hub.cluster = ClusterId::of(cluster);
        if params.hub.keys.is_none() {
            params.hub.keys = node.auth.as_ref().map(|a| a.keys.clone());
        }
        params.link.hub = HUB_ADDR;
        if let Err(e) = params.hub.validate() {
            panic!("hub settings rejected by core: {e}");
        }
        if let Err(e) = params.link.validate() {
            panic!("link settings rejected by core: {e}");
        }
        HubSide {
            params,
            hub: None,
            life: 0,
            conns: BTreeMap::new(),
            next_conn: 1,
            deadline: None,
            events: Vec::new(),
        }
    }
}

/// A member's end: its link and the connection it uses.
#[derive(Debug)]
pub(super) struct MemberEnd {
    pub(super) link: HubLink,
    conn: Option<u64>,
    /// What arrived while the process was paused, read when it wakes.
    rx: VecDeque<(u64, Seg)>,
    /// The link's received-datagram count when its events were last drained.
    fed: u64,
    /// Link events other than datagrams and departures (with `record_events`).
    pub(super) events: Vec<(Duration, LinkEvent)>,
}

impl Sim {
    // ----- inspection -----

    /// True in hub mode.
    pub fn is_hub_mode(&self) -> bool {
        self.hub.is_some()
    }

    /// The hub process, while it runs (hub mode only).
    pub fn hub(&self) -> Option<&Hub> {
        self.hub.as_ref().and_then(|h| h.hub.as_ref())
    }

    /// Times the hub was restarted.
    pub fn hub_life(&self) -> u64 {
        self.hub.as_ref().map_or(0, |h| h.life)
    }

    /// Everything the hub processes reported, in order (hub mode only).
    pub fn hub_events(&self) -> &[HubNote] {
        self.hub.as_ref().map_or(&[], |h| &h.events)
    }

    /// Connections the hubs closed for `reason`, over every hub process so far.
    pub fn hub_departures(&self, reason: CloseReason) -> usize {
        self.hub_events()
            .iter()
            .filter(|n| matches!(n.event, HubEvent::Departed { reason: r, .. } if r == reason))
            .count()
    }

    /// Slot `i`'s hub link (hub mode only).
    pub fn hub_link(&self, i: usize) -> Option<&HubLink> {
        self.nodes[i].hub.as_ref().map(|m| &m.link)
    }

    /// Slot `i`'s link events other than datagrams (with [`super::SimConfig::record_events`]).
    pub fn link_events(&self, i: usize) -> &[(Duration, LinkEvent)] {
        self.nodes[i].hub.as_ref().map_or(&[], |m| &m.events)
    }

    // ----- the hub process -----

    /// Crashes the hub: its state is gone, every connection is closed (a FIN from its host
    /// to each member), connection attempts are refused until [`Sim::restart_hub`].
    pub fn crash_hub(&mut self) {
        let Some(h) = self.hub.as_mut() else {
            return;
        };
        if h.hub.take().is_none() {
            return;
        }
        let open: Vec<u64> = h
            .conns
            .iter_mut()
            .filter(|(_, c)| c.hub_open)
            .map(|(id, c)| {
                c.hub_open = false;
                *id
            })
            .collect();
        for id in open {
            self.push_seg(id, Dir::Down, Seg::Fin);
        }
        self.set_hub_deadline(None);
        self.changed();
    }

    /// Starts a fresh hub process (crashing the running one first).
    pub fn restart_hub(&mut self) {
        if self.hub.is_none() {
            return;
        }
        self.crash_hub();
        if let Some(h) = self.hub.as_mut() {
            h.life += 1;
        }
        self.start_hub();
    }

    pub(super) fn start_hub(&mut self) {
        if self.hub.as_ref().is_none_or(|h| h.hub.is_some()) {
            return;
        }
        let mut secret = [0u8; 32];
        for chunk in secret.chunks_mut(8) {
            chunk.copy_from_slice(&self.rng.next_u64().to_be_bytes());
        }
        let Some(h) = self.hub.as_mut() else {
            return;
        };
        let hub = match Hub::new(h.params.hub.clone(), secret) {
            Ok(hub) => hub,
            Err(e) => panic!("hub settings rejected by core: {e}"),
        };
        h.hub = Some(hub);
        self.changed();
        self.hub_after();
    }

    /// Breaks slot `i`'s connection to the hub as a middlebox's reset would: each end hears
    /// of it after the link's delay (once the two can reach each other), the hub announces the
    /// member departed, and the link connects again after its backoff.
    pub fn reset_hub_connection(&mut self, i: usize) {
        let Some(id) = self
            .nodes
            .get(i)
            .and_then(|s| s.hub.as_ref())
            .and_then(|e| e.conn)
        else {
            return;
        };
        let Some(c) = self.hub.as_ref().and_then(|h| h.conns.get(&id)) else {
            return;
        };
        let (to_hub, to_node) = (c.hub_open, c.node_open);
        if to_hub {
            self.push_seg(id, Dir::Up, Seg::Fin);
        }
        if to_node {
            self.push_seg(id, Dir::Down, Seg::Fin);
        }
        self.changed();
    }

    /// A new link for the process now in slot `i`.
    pub(super) fn new_member_end(&mut self, node: &Node) -> Option<MemberEnd> {
        let h = self.hub.as_ref()?;
        let seed = self.rng.next_u64();
        let link = match HubLink::for_node(h.params.link.clone(), node, self.now, seed) {
            Ok(l) => l,
            Err(e) => panic!("link settings rejected by core: {e}"),
        };
        Some(MemberEnd {
            link,
            conn: None,
            rx: VecDeque::new(),
            fed: 0,
            events: Vec::new(),
        })
    }

    /// Slot `i`'s process stopped: its kernel closes the connection.
    pub(super) fn member_stopped(&mut self, i: usize) {
        let Some(end) = self.nodes[i].hub.as_mut() else {
            return;
        };
        end.rx.clear();
        if let Some(id) = end.conn.take() {
            self.close_member_end(id);
        }
    }

    /// Slot `i` leaves: it says goodbye to the hub after what it queued, then closes.
    pub(super) fn member_leaves(&mut self, i: usize) {
        let Some(end) = self.nodes[i].hub.as_mut() else {
            return;
        };
        end.link.close();
        self.flush_link(i);
        self.member_stopped(i);
    }

    fn close_member_end(&mut self, id: u64) {
        let Some(h) = self.hub.as_mut() else {
            return;
        };
        if let Some(c) = h.conns.get_mut(&id) {
            if c.node_open {
                c.node_open = false;
                self.push_seg(id, Dir::Up, Seg::Fin);
            }
        }
    }

    // ----- the member side -----

    /// Hands slot `i`'s group datagram to its link.
    pub(super) fn send_group(&mut self, i: usize, bytes: Bytes) {
        let now = self.now;
        let Some(end) = self.nodes[i].hub.as_mut() else {
            panic!("node {i} has no hub link in hub mode");
        };
        if !end.link.send_group(now, bytes) {
            self.traffic.hub.dropped += 1;
        }
    }

    /// Carries out slot `i`'s link actions and feeds its link's news to the node; returns
    /// whether anything happened (the node may have more to send).
    pub(super) fn pump_link(&mut self, i: usize) -> bool {
        let now = self.now;
        let at = self.elapsed();
        let record = self.cfg.record_events;
        let mut any = false;
        loop {
            let Some(end) = self.nodes[i].hub.as_mut() else {
                return any;
            };
            let Some(a) = end.link.poll_action() else {
                break;
            };
            any = true;
            match a {
                LinkAction::Connect { to } => {
                    assert_eq!(to, HUB_ADDR, "node {i} connects to {to}, not to the hub");
                    let old = end.conn.take();
                    let life = self.nodes[i].life;
                    if let Some(old) = old {
                        // An attempt the link gave up on (it timed out): abandoned.
                        self.close_member_end(old);
                    }
                    self.connect(i, life);
                }
                LinkAction::Close => {
                    if let Some(id) = end.conn.take() {
                        self.close_member_end(id);
                    }
                }
            }
        }
        let s = &mut self.nodes[i];
        let Some(end) = s.hub.as_mut() else {
            return any;
        };
        while let Some(e) = end.link.poll_for_node(now, &mut s.node) {
            any = true;
            if record {
                end.events.push((at, e));
            }
        }
        // Relayed datagrams went to the node without an event: it may have more to send.
        let received = end.link.stats().datagrams_in;
        if received != end.fed {
            end.fed = received;
            any = true;
        }
        any
    }

    fn connect(&mut self, i: usize, life: u64) {
        let Some(h) = self.hub.as_mut() else {
            return;
        };
        let id = h.next_conn;
        h.next_conn += 1;
        h.conns.insert(
            id,
            Conn {
                node: i,
                life,
                node_open: true,
                hub_open: false,
                pipes: [Pipe::default(), Pipe::default()],
            },
        );
        if let Some(end) = self.nodes[i].hub.as_mut() {
            end.conn = Some(id);
        }
        self.traffic.hub.connects += 1;
        self.push_seg(id, Dir::Up, Seg::Syn);
    }

    /// Writes slot `i`'s link output as far as the window takes it.
    pub(super) fn flush_link(&mut self, i: usize) {
        if !self.nodes[i].up || self.paused(i) {
            return;
        }
        let window = match &self.hub {
            Some(h) => h.params.window,
            None => return,
        };
        let Some(id) = self.nodes[i].hub.as_ref().and_then(|e| e.conn) else {
            return;
        };
        let Some(c) = self.hub.as_ref().and_then(|h| h.conns.get(&id)) else {
            return;
        };
        if !c.node_open {
            return;
        }
        let mut room = window.saturating_sub(c.pipes[Dir::Up.index()].unread);
        let Some(end) = self.nodes[i].hub.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while room > 0 {
            let Some(b) = end.link.peek_output() else {
                break;
            };
            let n = b.len().min(room);
            out.extend_from_slice(&b[..n]);
            end.link.consume_output(n);
            room -= n;
        }
        let max_unacked = end.link.config().max_unacked_bytes;
        let unacked = end.link.stats().unacked_bytes;
        if unacked > max_unacked {
            let msg = format!("node {i}'s link holds {unacked} unacknowledged bytes");
            self.checker.violation(msg);
        }
        if !out.is_empty() {
            self.traffic.hub.bytes_up += out.len() as u64;
            self.push_seg(id, Dir::Up, Seg::Data(Bytes::from(out)));
        }
    }

    /// Slot `i` woke up: it reads what waited in its sockets.
    pub(super) fn read_buffered(&mut self, i: usize) {
        while let Some((id, seg)) = self.nodes[i].hub.as_mut().and_then(|e| e.rx.pop_front()) {
            self.member_reads(i, id, seg);
        }
    }

    fn member_reads(&mut self, i: usize, id: u64, seg: Seg) {
        let now = self.now;
        let Some(h) = self.hub.as_mut() else {
            return;
        };
        let Some(c) = h.conns.get_mut(&id) else {
            return;
        };
        if let Seg::Data(b) = &seg {
            c.pipes[Dir::Down.index()].unread -= b.len();
        }
        if !c.node_open || !self.nodes[i].up || self.nodes[i].life != c.life {
            self.reset_from(id, Dir::Up, &seg);
            return;
        }
        let Some(end) = self.nodes[i].hub.as_mut() else {
            return;
        };
        match seg {
            Seg::SynAck => end.link.connected(now),
            Seg::Refused => {
                c.node_open = false;
                end.conn = None;
                self.traffic.hub.refused += 1;
                end.link.connection_lost(now);
            }
            Seg::Fin => {
                c.node_open = false;
                end.conn = None;
                end.link.connection_lost(now);
            }
            Seg::Data(b) => {
                let before = end.link.stats().datagrams_in;
                end.link.handle_bytes(now, &b);
                self.traffic.receptions += end.link.stats().datagrams_in - before;
                self.flush_hub_conn(id);
            }
            Seg::Syn => {}
        }
        self.touch(i);
        self.hub_after();
    }

    /// A segment arrived at an end that is closed: data and connection requests are answered
    /// with a reset (`back` is the direction towards their sender), if that end is open.
    fn reset_from(&mut self, id: u64, back: Dir, seg: &Seg) {
        if !matches!(seg, Seg::Data(_) | Seg::Syn) {
            return;
        }
        let Some(c) = self.hub.as_ref().and_then(|h| h.conns.get(&id)) else {
            return;
        };
        let sender_open = match back {
            Dir::Up => c.hub_open,
            Dir::Down => c.node_open,
        };
        if sender_open {
            self.push_seg(id, back, Seg::Fin);
        }
    }

    // ----- the hub side -----

    fn hub_reads(&mut self, id: u64, seg: Seg) {
        let now = self.now;
        let Some(h) = self.hub.as_mut() else {
            return;
        };
        let hub_up = h.hub.is_some();
        let Some(c) = h.conns.get_mut(&id) else {
            return;
        };
        let node = c.node;
        if let Seg::Data(b) = &seg {
            c.pipes[Dir::Up.index()].unread -= b.len();
        }
        let conn = ConnId(id);
        match seg {
            Seg::Syn if hub_up => {
                c.hub_open = true;
                // The acceptance goes first; the challenge follows it when the hub's output
                // is written.
                self.push_seg(id, Dir::Down, Seg::SynAck);
                if let Some(hub) = self.hub.as_mut().and_then(|h| h.hub.as_mut()) {
                    hub.accept(now, conn);
                }
            }
            Seg::Syn => {
                if c.node_open {
                    self.push_seg(id, Dir::Down, Seg::Refused);
                }
            }
            Seg::Data(b) if c.hub_open => {
                if let Some(hub) = h.hub.as_mut() {
                    hub.handle_bytes(now, conn, &b);
                }
            }
            Seg::Data(b) => self.reset_from(id, Dir::Down, &Seg::Data(b)),
            Seg::Fin if c.hub_open => {
                c.hub_open = false;
                if let Some(hub) = h.hub.as_mut() {
                    hub.disconnect(now, conn);
                }
            }
            Seg::Fin | Seg::SynAck | Seg::Refused => {}
        }
        self.hub_after();
        // The window opened: the member may write more.
        if self.nodes[node].hub.as_ref().and_then(|e| e.conn) == Some(id) {
            self.flush_link(node);
        }
    }

    /// Carries out what the hub asks after every input: closes, writes, its log, its timer.
    pub(super) fn hub_after(&mut self) {
        let now = self.now;
        let at = self.elapsed();
        loop {
            let Some(h) = self.hub.as_mut() else {
                return;
            };
            let Some(hub) = h.hub.as_mut() else {
                return;
            };
            let life = h.life;
            let mut any = false;
            while let Some(e) = hub.poll_event() {
                h.events.push(HubNote { at, life, event: e });
            }
            if let Some(HubAction::Close { conn, .. }) = hub.poll_action() {
                // The bye, as far as the socket takes it; then the FIN.
                self.flush_hub_conn(conn.0);
                let Some(h) = self.hub.as_mut() else {
                    return;
                };
                if let Some(c) = h.conns.get_mut(&conn.0) {
                    if c.hub_open {
                        c.hub_open = false;
                        self.push_seg(conn.0, Dir::Down, Seg::Fin);
                    }
                }
                if let Some(hub) = self.hub.as_mut().and_then(|h| h.hub.as_mut()) {
                    hub.disconnect(now, conn);
                }
                continue;
            }
            while let Some(c) = self
                .hub
                .as_mut()
                .and_then(|h| h.hub.as_mut())
                .and_then(Hub::poll_ready)
            {
                any = true;
                self.flush_hub_conn(c.0);
            }
            if !any {
                break;
            }
        }
        let d = self.hub().and_then(Hub::poll_timeout);
        self.set_hub_deadline(d);
    }

    /// Writes what the hub queued for connection `id` as far as the window takes it.
    fn flush_hub_conn(&mut self, id: u64) {
        let Some(h) = self.hub.as_mut() else {
            return;
        };
        let window = h.params.window;
        let max_queued = h.params.hub.max_queued_bytes;
        let Some(hub) = h.hub.as_mut() else {
            return;
        };
        let Some(c) = h.conns.get(&id) else {
            return;
        };
        if !c.hub_open {
            return;
        }
        let conn = ConnId(id);
        let queued = hub.queued_bytes(conn);
        let mut room = window.saturating_sub(c.pipes[Dir::Down.index()].unread);
        let mut out = Vec::new();
        while room > 0 {
            let Some(b) = hub.peek_output(conn) else {
                break;
            };
            let n = b.len().min(room);
            out.extend_from_slice(&b[..n]);
            hub.consume_output(conn, n);
            room -= n;
        }
        // The queue bound, plus the closing frame that may exceed it.
        if queued > max_queued + 64 {
            let msg = format!("the hub queues {queued} bytes for connection {id}");
            self.checker.violation(msg);
        }
        if !out.is_empty() {
            self.traffic.hub.bytes_down += out.len() as u64;
            self.push_seg(id, Dir::Down, Seg::Data(Bytes::from(out)));
        }
    }

    pub(super) fn set_hub_deadline(&mut self, d: Option<Instant>) {
        let Some(h) = self.hub.as_mut() else {
            return;
        };
        if let Some(old) = h.deadline.take() {
            self.timers.remove(&(old, HUB));
        }
        if let Some(t) = d {
            self.timers.insert((t, HUB));
        }
        h.deadline = d;
    }

    /// The hub's timer fired.
    pub(super) fn fire_hub(&mut self) {
        let now = self.now;
        self.set_hub_deadline(None);
        let Some(hub) = self.hub.as_mut().and_then(|h| h.hub.as_mut()) else {
            return;
        };
        hub.handle_timeout(now);
        self.hub_after();
        if self
            .hub()
            .and_then(Hub::poll_timeout)
            .is_some_and(|t| t <= now)
        {
            let msg = format!("the hub asks to be woken again at {now:?} after handle_timeout");
            self.checker.violation(msg);
            self.set_hub_deadline(Some(now + Duration::from_millis(1)));
        }
    }

    // ----- the connections -----

    fn push_seg(&mut self, id: u64, dir: Dir, seg: Seg) {
        let now = self.now;
        let Some(node) = self
            .hub
            .as_ref()
            .and_then(|h| h.conns.get(&id))
            .map(|c| c.node)
        else {
            return;
        };
        let (from, to) = ends(node, dir);
        let delay = self.net.p2p_delay(from, to);
        let Some(c) = self.hub.as_mut().and_then(|h| h.conns.get_mut(&id)) else {
            return;
        };
        let p = &mut c.pipes[dir.index()];
        let due = p.last_due.map_or(now + delay, |l| l.max(now + delay));
        p.last_due = Some(due);
        if let Seg::Data(b) = &seg {
            p.unread += b.len();
        }
        p.inflight.push_back((due, seg));
        if p.wake.is_none() {
            p.wake = Some(due);
            self.push(due, 0, Item::Pipe { conn: id, dir });
        }
    }

    /// A delivery attempt on one direction of connection `id`: everything due goes through
    /// unless the attempt is lost or the ends cannot reach each other, in which case it is
    /// retried later.
    pub(super) fn pipe_wake(&mut self, id: u64, dir: Dir) {
        let now = self.now;
        let Some(h) = self.hub.as_mut() else {
            return;
        };
        let rto = h.params.retransmit;
        let lossy = h.params.stream_loss;
        let Some(c) = h.conns.get_mut(&id) else {
            return;
        };
        let node = c.node;
        let p = &mut c.pipes[dir.index()];
        p.wake = None;
        let Some(&(head, _)) = p.inflight.front() else {
            return;
        };
        if head > now {
            p.wake = Some(head);
            self.push(head, 0, Item::Pipe { conn: id, dir });
            return;
        }
        let (from, to) = ends(node, dir);
        let params = self.net.params(from, to);
        let through =
            self.net.reachable(from, to) && !(lossy && self.net.link(from, to).lose(&params));
        let Some(c) = self.hub.as_mut().and_then(|h| h.conns.get_mut(&id)) else {
            return;
        };
        let p = &mut c.pipes[dir.index()];
        if !through {
            self.traffic.hub.retransmits += 1;
            let retry = now + rto;
            if let Some(front) = p.inflight.front_mut() {
                front.0 = retry;
            }
            p.last_due = p.last_due.map(|l| l.max(retry));
            p.wake = Some(retry);
            self.push(retry, 0, Item::Pipe { conn: id, dir });
            return;
        }
        let mut due = Vec::new();
        while p.inflight.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, s)) = p.inflight.pop_front() {
                due.push(s);
            }
        }
        if let Some(&(next, _)) = p.inflight.front() {
            p.wake = Some(next);
            self.push(next, 0, Item::Pipe { conn: id, dir });
        }
        for seg in due {
            match dir {
                Dir::Up => self.hub_reads(id, seg),
                Dir::Down => self.member_receives(node, id, seg),
            }
        }
        self.forget_closed(id);
    }

    /// A segment reached slot `i`'s host: a paused process reads it when it wakes.
    fn member_receives(&mut self, i: usize, id: u64, seg: Seg) {
        let life = self
            .hub
            .as_ref()
            .and_then(|h| h.conns.get(&id))
            .map(|c| c.life);
        let current = self.nodes[i].up && Some(self.nodes[i].life) == life;
        if current && self.paused(i) {
            if let Some(end) = self.nodes[i].hub.as_mut() {
                end.rx.push_back((id, seg));
            }
            return;
        }
        self.member_reads(i, id, seg);
    }

    /// Drops a connection once both ends are closed and nothing is on its way.
    fn forget_closed(&mut self, id: u64) {
        let Some(h) = self.hub.as_mut() else {
            return;
        };
        let done = h.conns.get(&id).is_some_and(|c| {
            !c.node_open && !c.hub_open && c.pipes.iter().all(|p| p.inflight.is_empty())
        });
        if done {
            h.conns.remove(&id);
        }
    }

    /// Why hub mode has not converged: the hub is down, or its registrations differ from the
    /// live members (each registered once, at its current incarnation, its link registered).
    pub(super) fn hub_divergence(&self, why: &mut Vec<String>) {
        let Some(h) = self.hub.as_ref() else {
            return;
        };
        let Some(hub) = h.hub.as_ref() else {
            why.push("the hub is down".into());
            return;
        };
        let mut registered: BTreeMap<_, u64> = hub.members().collect();
        for i in self.live() {
            let n = &self.nodes[i].node;
            let linked = self.nodes[i]
                .hub
                .as_ref()
                .is_some_and(|e| e.link.is_registered());
            if !linked || registered.remove(&n.key()) != Some(n.identity().incarnation) {
                why.push(format!(
                    "{} is not registered at the hub",
                    n.identity().name
                ));
            }
        }
        if !registered.is_empty() {
            why.push(format!(
                "the hub still registers {} stopped members",
                registered.len()
            ));
        }
    }
}

fn ends(node: usize, dir: Dir) -> (usize, usize) {
    match dir {
        Dir::Up => (node, HUB),
        Dir::Down => (HUB, node),
    }
}
