//! The hub and the member's link, wired together in memory: registration, relaying, direct
//! routing, acknowledgements, announcements, slow consumers, authentication, reconnects.

use bytes::Bytes;
use hybridcast_core::hub::frame::{Frame, FrameDecoder};
use hybridcast_core::hub::{
    CloseReason, ConnId, Hub, HubAction, HubConfig, HubEvent, HubLink, LinkAction, LinkConfig,
    LinkEvent, LinkLoss,
};
use hybridcast_core::wire::{self, Header};
use hybridcast_core::{ClusterId, ClusterKey, Config, Identity, Keyring, MemberKey};
use hybridcast_core::{Event, Node, Transmit};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const CLUSTER: &str = "hubtest";

fn hub_addr() -> SocketAddr {
    "127.0.0.1:4000".parse().expect("addr")
}

/// A datagram whose header names `member` (the hub checks only the header).
fn datagram(member: MemberKey, incarnation: u64, body: &[u8]) -> Bytes {
    let h = Header {
        cluster: ClusterId::of(CLUSTER),
        sender: member,
        incarnation,
    };
    let mut d = wire::encode_leave(&h).to_vec();
    d.extend_from_slice(body);
    Bytes::from(d)
}

struct Member {
    link: HubLink,
    conn: Option<ConnId>,
    got: Vec<LinkEvent>,
    /// While false, nothing is written to or read from this member's connection.
    reading: bool,
    /// While false, the member's process is gone: its link neither acts nor is timed.
    alive: bool,
}

/// A hub and members joined by in-memory pipes, on a virtual clock.
struct Net {
    now: Instant,
    hub: Hub,
    members: Vec<Member>,
    next_conn: u64,
    closed_by_hub: Vec<(ConnId, CloseReason)>,
    hub_events: Vec<HubEvent>,
}

impl Net {
    fn new(config: HubConfig) -> Self {
        Net {
            now: Instant::now(),
            hub: Hub::new(config, [7; 32]).expect("hub"),
            members: Vec::new(),
            next_conn: 1,
            closed_by_hub: Vec::new(),
            hub_events: Vec::new(),
        }
    }

    fn add(&mut self, name: &str, incarnation: u64, keys: Option<Keyring>) -> usize {
        let link = HubLink::new(
            LinkConfig::new(hub_addr()),
            ClusterId::of(CLUSTER),
            MemberKey::of(name),
            incarnation,
            keys,
            self.now,
            self.members.len() as u64,
        )
        .expect("link");
        self.members.push(Member {
            link,
            conn: None,
            got: Vec::new(),
            reading: true,
            alive: true,
        });
        self.pump();
        self.members.len() - 1
    }

    /// Moves bytes until nothing moves.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.members.len() {
                if !self.members[i].alive {
                    continue;
                }
                while let Some(a) = self.members[i].link.poll_action() {
                    moved = true;
                    match a {
                        LinkAction::Connect { to } => {
                            assert_eq!(to, hub_addr());
                            let c = ConnId(self.next_conn);
                            self.next_conn += 1;
                            self.members[i].conn = Some(c);
                            self.hub.accept(self.now, c);
                            self.members[i].link.connected(self.now);
                        }
                        LinkAction::Close => {
                            if let Some(c) = self.members[i].conn.take() {
                                self.hub.disconnect(self.now, c);
                            }
                        }
                    }
                }
                let m = &mut self.members[i];
                if let (Some(c), true) = (m.conn, m.reading) {
                    while let Some(b) = m.link.peek_output() {
                        let b = b.to_vec();
                        m.link.consume_output(b.len());
                        self.hub.handle_bytes(self.now, c, &b);
                        moved = true;
                    }
                }
            }
            while let Some(HubAction::Close { conn, reason }) = self.hub.poll_action() {
                moved = true;
                self.closed_by_hub.push((conn, reason));
                // Deliver the bye, then close.
                let out = self.drain_hub(conn);
                if let Some(i) = self.members.iter().position(|m| m.conn == Some(conn)) {
                    self.members[i].link.handle_bytes(self.now, &out);
                    if self.members[i].conn == Some(conn) {
                        self.members[i].link.connection_lost(self.now);
                        self.members[i].conn = None;
                    }
                }
                self.hub.disconnect(self.now, conn);
            }
            while let Some(e) = self.hub.poll_event() {
                self.hub_events.push(e);
            }
            while let Some(c) = self.hub.poll_ready() {
                let Some(i) = self.members.iter().position(|m| m.conn == Some(c)) else {
                    continue;
                };
                if !self.members[i].reading {
                    continue;
                }
                let out = self.drain_hub(c);
                if !out.is_empty() {
                    moved = true;
                    self.members[i].link.handle_bytes(self.now, &out);
                }
            }
            for m in &mut self.members {
                while let Some(e) = m.link.poll_event() {
                    m.got.push(e);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the pipes never settled");
    }

    fn drain_hub(&mut self, c: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = self.hub.peek_output(c) {
            let n = b.len();
            out.extend_from_slice(b);
            self.hub.consume_output(c, n);
        }
        out
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let mut next = self.hub.poll_timeout();
            for m in self.members.iter().filter(|m| m.alive) {
                next = match (next, m.link.poll_timeout()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.hub.handle_timeout(self.now);
                    for m in self.members.iter_mut().filter(|m| m.alive) {
                        m.link.handle_timeout(self.now);
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = end;
        self.pump();
    }

    fn datagrams(&self, i: usize) -> Vec<(MemberKey, Bytes)> {
        self.members[i]
            .got
            .iter()
            .filter_map(|e| match e {
                LinkEvent::Datagram { from, datagram } => Some((*from, datagram.clone())),
                _ => None,
            })
            .collect()
    }
}

fn key(n: u8) -> Keyring {
    Keyring::single(ClusterKey::new(vec![n; 32]).expect("key"))
}

#[test]
fn a_group_frame_reaches_every_other_member_once_and_is_acknowledged() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let a = net.add("a", 1, None);
    let b = net.add("b", 1, None);
    let c = net.add("c", 1, None);
    for i in [a, b, c] {
        assert!(net.members[i].link.is_registered(), "member {i}");
        assert_eq!(net.members[i].got.first(), Some(&LinkEvent::Registered));
    }
    // Each learns of the others: those before it from its welcome, later ones as they come.
    let joined = |net: &Net, i: usize| {
        let mut v: Vec<MemberKey> = net.members[i]
            .got
            .iter()
            .filter_map(|e| match e {
                LinkEvent::Joined { member, .. } => Some(*member),
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    let mut bc = vec![MemberKey::of("b"), MemberKey::of("c")];
    bc.sort();
    assert_eq!(joined(&net, a), bc);

    let d = datagram(MemberKey::of("a"), 1, b"hello");
    assert!(net.members[a].link.send_group(net.now, d.clone()));
    assert!(net.members[a].link.stats().unacked_bytes > 0);
    net.pump();
    assert_eq!(net.datagrams(b), vec![(MemberKey::of("a"), d.clone())]);
    assert_eq!(net.datagrams(c), vec![(MemberKey::of("a"), d)]);
    assert!(net.datagrams(a).is_empty(), "no echo to the sender");
    assert_eq!(net.members[a].link.stats().unacked_bytes, 0, "acknowledged");
    let s = net.hub.stats();
    assert_eq!((s.group_frames, s.copies_out, s.registered), (1, 2, 3));
}

#[test]
fn direct_frames_go_to_their_destination_only_and_unknown_ones_come_back() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let a = net.add("a", 1, None);
    let b = net.add("b", 1, None);
    let c = net.add("c", 1, None);
    let d = datagram(MemberKey::of("a"), 1, b"for b");
    assert!(
        net.members[a]
            .link
            .send_direct(net.now, MemberKey::of("b"), d.clone())
    );
    assert!(
        net.members[a]
            .link
            .send_direct(net.now, MemberKey::of("nobody"), d.clone())
    );
    net.pump();
    assert_eq!(net.datagrams(b), vec![(MemberKey::of("a"), d)]);
    assert!(net.datagrams(c).is_empty());
    assert!(net.members[a].got.contains(&LinkEvent::Undeliverable {
        to: MemberKey::of("nobody")
    }));
    assert_eq!(net.hub.stats().undeliverable, 1);
    assert_eq!(net.members[a].link.stats().unacked_bytes, 0);
}

#[test]
fn a_datagram_naming_another_sender_is_not_relayed() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let a = net.add("a", 1, None);
    let b = net.add("b", 1, None);
    for forged in [
        datagram(MemberKey::of("b"), 1, b"x"),
        datagram(MemberKey::of("a"), 2, b"x"),
        Bytes::from_static(b"not a datagram at all, but long enough to hold a header"),
    ] {
        assert!(net.members[a].link.send_group(net.now, forged));
    }
    net.pump();
    assert!(net.datagrams(b).is_empty());
    assert_eq!(net.hub.stats().foreign_datagrams, 3);
    assert!(
        net.members[a].link.is_registered(),
        "dropped, not disconnected"
    );
}

#[test]
fn a_departure_is_announced_to_every_other_member_with_its_reason() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let a = net.add("a", 5, None);
    let b = net.add("b", 1, None);
    let c = net.add("c", 1, None);
    let conn = net.members[a].conn.take().expect("connected");
    net.hub.disconnect(net.now, conn);
    net.pump();
    for i in [b, c] {
        assert!(
            net.members[i].got.contains(&LinkEvent::Departed {
                member: MemberKey::of("a"),
                incarnation: 5,
                reason: CloseReason::Closed,
            }),
            "member {i}: {:?}",
            net.members[i].got
        );
    }
    assert_eq!(net.hub.stats().registered, 2);
}

#[test]
fn a_slow_consumer_is_disconnected_with_its_reason_and_the_hub_stays_bounded() {
    let mut config = HubConfig::new(CLUSTER);
    config.max_queued_bytes = 300_000;
    let max = config.max_queued_bytes;
    let mut net = Net::new(config);
    let a = net.add("a", 1, None);
    let slow = net.add("slow", 1, None);
    let c = net.add("c", 1, None);
    net.members[slow].reading = false;
    let body = vec![7u8; 10_000];
    let mut sent = 0;
    while sent < 100 {
        let d = datagram(MemberKey::of("a"), 1, &body);
        assert!(net.members[a].link.send_group(net.now, d));
        net.pump();
        sent += 1;
        assert!(net.hub.stats().peak_queued_bytes <= max);
    }
    let closed: Vec<CloseReason> = net.closed_by_hub.iter().map(|(_, r)| *r).collect();
    assert_eq!(closed, vec![CloseReason::SlowConsumer]);
    assert_eq!(net.datagrams(c).len(), 100, "the others are not held back");
    assert!(net.members[c].got.contains(&LinkEvent::Departed {
        member: MemberKey::of("slow"),
        incarnation: 1,
        reason: CloseReason::SlowConsumer,
    }));
    assert_eq!(net.hub.stats().closed_for(CloseReason::SlowConsumer), 1);
    // The slow member reads again: it hears why, reconnects after its backoff, registers.
    net.members[slow].reading = true;
    net.advance(Duration::from_secs(1));
    assert!(
        net.members[slow]
            .got
            .contains(&LinkEvent::Lost(LinkLoss::Closed))
            || net.members[slow]
                .got
                .contains(&LinkEvent::Lost(LinkLoss::Bye(CloseReason::SlowConsumer))),
        "{:?}",
        net.members[slow].got
    );
    assert!(net.members[slow].link.is_registered());
    assert_eq!(net.hub.stats().registered, 3);
}

#[test]
fn with_a_key_only_a_tagged_registration_is_accepted() {
    let mut config = HubConfig::new(CLUSTER);
    config.keys = Some(key(1));
    let mut net = Net::new(config);
    let good = net.add("good", 1, Some(key(1)));
    let wrong = net.add("wrong", 1, Some(key(2)));
    let none = net.add("none", 1, None);
    assert!(net.members[good].link.is_registered());
    for i in [wrong, none] {
        assert!(!net.members[i].link.is_registered());
        assert!(
            net.members[i].got.contains(&LinkEvent::Lost(LinkLoss::Bye(
                CloseReason::Unauthenticated
            ))),
            "{:?}",
            net.members[i].got
        );
    }
    assert_eq!(net.hub.stats().closed_for(CloseReason::Unauthenticated), 2);
    assert!(
        !net.members[good]
            .got
            .iter()
            .any(|e| matches!(e, LinkEvent::Joined { .. }))
    );
}

#[test]
fn another_cluster_is_refused() {
    let mut net = Net::new(HubConfig::new("elsewhere"));
    let a = net.add("a", 1, None);
    assert!(!net.members[a].link.is_registered());
    assert!(
        net.members[a]
            .got
            .contains(&LinkEvent::Lost(LinkLoss::Bye(CloseReason::WrongCluster)))
    );
}

#[test]
fn a_newer_incarnation_replaces_the_old_one_and_everyone_hears_it() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let old = net.add("a", 1, None);
    let b = net.add("b", 1, None);
    let new = net.add("a", 2, None);
    assert!(net.members[new].link.is_registered());
    assert!(net.members[b].got.contains(&LinkEvent::Departed {
        member: MemberKey::of("a"),
        incarnation: 1,
        reason: CloseReason::Replaced,
    }));
    assert!(net.members[b].got.contains(&LinkEvent::Joined {
        member: MemberKey::of("a"),
        incarnation: 2,
    }));
    assert!(
        net.members[old]
            .got
            .contains(&LinkEvent::Lost(LinkLoss::Bye(CloseReason::Replaced)))
    );
    // The old incarnation coming back is stale.
    net.advance(Duration::from_secs(1));
    assert!(!net.members[old].link.is_registered());
    assert!(
        net.members[old]
            .got
            .contains(&LinkEvent::Lost(LinkLoss::Bye(CloseReason::Stale)))
    );
    assert_eq!(net.hub.stats().registered, 2);
}

#[test]
fn the_same_incarnation_reconnecting_moves_over_quietly() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let a = net.add("a", 1, None);
    let b = net.add("b", 1, None);
    // a's link believes its connection broke; the hub has not noticed yet.
    let stale = net.members[a].conn.take().expect("conn");
    net.members[a].link.connection_lost(net.now);
    net.advance(Duration::from_millis(200));
    assert!(net.members[a].link.is_registered());
    assert!(net.members[a].conn != Some(stale));
    assert!(
        !net.members[b]
            .got
            .iter()
            .any(|e| matches!(e, LinkEvent::Departed { .. })),
        "{:?}",
        net.members[b].got
    );
    assert_eq!(net.hub.stats().registered, 2);
    let d = datagram(MemberKey::of("a"), 1, b"after");
    assert!(net.members[a].link.send_group(net.now, d.clone()));
    net.pump();
    assert_eq!(net.datagrams(b), vec![(MemberKey::of("a"), d)]);
}

#[test]
fn keepalives_hold_an_idle_member_and_a_silent_one_times_out() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let a = net.add("a", 1, None);
    let b = net.add("b", 1, None);
    net.advance(Duration::from_secs(60));
    assert!(net.members[a].link.is_registered(), "pings kept it");
    assert_eq!(net.hub.stats().closed_for(CloseReason::Idle), 0);
    // b goes silent (its host vanished): no bytes either way.
    net.members[b].reading = false;
    net.members[b].alive = false;
    net.advance(Duration::from_secs(11));
    assert_eq!(net.hub.stats().closed_for(CloseReason::Idle), 1);
    assert!(net.members[a].got.contains(&LinkEvent::Departed {
        member: MemberKey::of("b"),
        incarnation: 1,
        reason: CloseReason::Idle,
    }));
}

#[test]
fn a_hub_that_stops_acknowledging_is_left_and_reconnects_back_off() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let a = net.add("a", 1, None);
    // The hub stops reading a's connection (as if it hung).
    net.members[a].reading = false;
    let t0 = net.now;
    net.advance(Duration::from_secs(6));
    assert!(
        net.members[a]
            .got
            .contains(&LinkEvent::Lost(LinkLoss::AckTimeout)),
        "{:?}",
        net.members[a].got
    );
    assert!(net.now >= t0 + Duration::from_secs(5));
    // Connection attempts that fail back off: the gaps grow up to the maximum.
    net.members[a].reading = true;
    let mut starts = Vec::new();
    for _ in 0..8 {
        while net.members[a].link.poll_action().is_some() {}
        let next = net.members[a].link.poll_timeout().expect("timer");
        net.now = net.now.max(next);
        net.members[a].link.handle_timeout(net.now);
        if let Some(LinkAction::Connect { .. }) = net.members[a].link.poll_action() {
            starts.push(net.now);
            net.members[a].link.connection_lost(net.now);
        }
    }
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 6, "{starts:?}");
    assert!(gaps[1] > gaps[0], "{gaps:?}");
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_millis(2500)),
        "{gaps:?}"
    );
}

#[test]
fn garbage_closes_the_connection_as_a_protocol_error() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let a = net.add("a", 1, None);
    let b = net.add("b", 1, None);
    let conn = net.members[a].conn.expect("conn");
    net.hub
        .handle_bytes(net.now, conn, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    net.pump();
    assert!(net.closed_by_hub.contains(&(conn, CloseReason::Protocol)));
    assert!(net.members[b].got.contains(&LinkEvent::Departed {
        member: MemberKey::of("a"),
        incarnation: 1,
        reason: CloseReason::Protocol,
    }));
    // A frame out of order is a protocol error too.
    let conn_b = net.members[b].conn.expect("conn");
    let f = Frame::Ping { id: 99 }.encode();
    net.hub.handle_bytes(net.now, conn_b, &f);
    net.pump();
    assert!(net.closed_by_hub.contains(&(conn_b, CloseReason::Protocol)));
}

#[test]
fn connections_beyond_the_limit_are_refused_as_full() {
    let mut config = HubConfig::new(CLUSTER);
    config.max_connections = 2;
    let mut net = Net::new(config);
    net.add("a", 1, None);
    net.add("b", 1, None);
    let c = net.add("c", 1, None);
    assert!(!net.members[c].link.is_registered());
    assert!(
        net.members[c]
            .got
            .contains(&LinkEvent::Lost(LinkLoss::Bye(CloseReason::Full)))
    );
    let s = net.hub.stats();
    assert_eq!((s.registered, s.connections), (2, 2));
}

#[test]
fn a_registration_that_never_comes_times_out() {
    let mut hub = Hub::new(HubConfig::new(CLUSTER), [1; 32]).expect("hub");
    let now = Instant::now();
    hub.accept(now, ConnId(1));
    let mut dec = FrameDecoder::new();
    dec.push(hub.peek_output(ConnId(1)).expect("challenge"));
    assert!(matches!(
        dec.next_frame(),
        Ok(Some(Frame::Challenge { .. }))
    ));
    let t = hub.poll_timeout().expect("deadline");
    assert_eq!(t, now + Duration::from_secs(5));
    hub.handle_timeout(t);
    assert_eq!(
        hub.poll_action(),
        Some(HubAction::Close {
            conn: ConnId(1),
            reason: CloseReason::Idle
        })
    );
    hub.disconnect(t, ConnId(1));
    assert_eq!(hub.stats().connections, 0);
}

#[test]
fn bad_settings_are_refused_by_name() {
    let mut h = HubConfig::new(CLUSTER);
    h.max_queued_bytes = 10;
    assert_eq!(
        Hub::new(h, [1; 32]).expect_err("refused").field,
        "max_queued_bytes"
    );
    let mut l = LinkConfig::new(hub_addr());
    l.ack_timeout = l.keepalive;
    let e = HubLink::new(
        l,
        ClusterId::of(CLUSTER),
        MemberKey::of("a"),
        1,
        None,
        Instant::now(),
        1,
    )
    .expect_err("refused");
    assert_eq!(e.field, "ack_timeout");
}

/// A node whose hub link announces a member's departure probes that member at once.
#[test]
fn a_departure_notice_makes_the_node_probe_at_once() {
    let now = Instant::now();
    let mk = |name: &str, port: u16| {
        Identity::new(CLUSTER, name, 3, SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let config = Config::default();
    let mut a = Node::new(config.clone(), mk("a", 9001), now, 1).expect("node");
    let mut b = Node::new(config, mk("b", 9002), now, 2).expect("node");
    // b's heartbeat reaches a.
    b.handle_timeout(now);
    let mut hb = None;
    while let Some(t) = b.poll_transmit() {
        if let Transmit::Group(d) = t {
            hb = Some(d);
        }
    }
    a.handle_datagram(now, hub_addr(), hb.expect("heartbeat"));
    while a.poll_transmit().is_some() {}
    while a.poll_event().is_some() {}
    assert!(a.member(MemberKey::of("b")).is_some());
    // A notice about another incarnation changes nothing.
    a.handle_departure_notice(now, MemberKey::of("b"), 2);
    assert_eq!(a.stats().probes_sent, 0);
    a.handle_departure_notice(now, MemberKey::of("b"), 3);
    assert_eq!(a.stats().departure_notices, 1);
    let probe = std::iter::from_fn(|| a.poll_transmit()).find_map(|t| match t {
        Transmit::Request { to, request, .. } => Some((to, request)),
        _ => None,
    });
    let (to, request) = probe.expect("a probe");
    assert_eq!(to, SocketAddr::from(([127, 0, 0, 1], 9002)));
    assert!(request.windows(5).any(|w| w == b"probe"), "{request:?}");
    assert!(
        std::iter::from_fn(|| a.poll_event()).any(|e| matches!(e, Event::MemberSuspect { .. }))
    );
}

#[test]
fn a_close_after_a_partial_write_finishes_the_frame_before_the_bye() {
    let mut config = HubConfig::new(CLUSTER);
    config.idle_timeout = Duration::from_secs(1);
    let mut net = Net::new(config);
    let a = net.add("a", 1, None);
    let b = net.add("b", 1, None);
    net.members[b].reading = false;
    let d = datagram(MemberKey::of("a"), 1, &[9u8; 5000]);
    assert!(net.members[a].link.send_group(net.now, d.clone()));
    net.pump();
    // b's connection takes the Deliver's header and part of its datagram, then stalls.
    let conn = net.members[b].conn.expect("conn");
    let mut written = Vec::new();
    while written.len() < 13 + 100 {
        let chunk = net.hub.peek_output(conn).expect("queued").to_vec();
        let n = chunk.len().min(13 + 100 - written.len());
        written.extend_from_slice(&chunk[..n]);
        net.hub.consume_output(conn, n);
    }
    // The hub closes it now (b went silent): the rest of the frame, then the bye.
    let later = net.now + Duration::from_secs(2);
    net.hub.handle_timeout(later);
    assert!(std::iter::from_fn(|| net.hub.poll_action()).any(|a| a
        == HubAction::Close {
            conn,
            reason: CloseReason::Idle
        }));
    while let Some(chunk) = net.hub.peek_output(conn) {
        let chunk = chunk.to_vec();
        written.extend_from_slice(&chunk);
        net.hub.consume_output(conn, chunk.len());
    }
    let mut dec = FrameDecoder::new();
    dec.push(&written);
    let mut frames = Vec::new();
    while let Some(f) = dec.next_frame().expect("whole frames") {
        frames.push(f);
    }
    assert_eq!(
        frames,
        vec![
            Frame::Deliver {
                from: MemberKey::of("a"),
                datagram: d
            },
            Frame::Bye {
                reason: CloseReason::Idle
            }
        ]
    );
}

#[test]
fn over_the_total_queue_limit_the_longest_queue_goes() {
    let mut config = HubConfig::new(CLUSTER);
    config.max_queued_bytes = 200_000;
    config.max_total_queued_bytes = 300_000;
    let mut net = Net::new(config);
    let a = net.add("a", 1, None);
    let s1 = net.add("s1", 1, None);
    let s2 = net.add("s2", 1, None);
    let fast = net.add("fast", 1, None);
    net.members[s1].reading = false;
    net.members[s2].reading = false;
    let mut sent = 0;
    while net.closed_by_hub.is_empty() && sent < 100 {
        let d = datagram(MemberKey::of("a"), 1, &[1u8; 10_000]);
        assert!(net.members[a].link.send_group(net.now, d));
        net.pump();
        sent += 1;
        assert!(net.hub.stats().queued_bytes <= 300_000 + 64);
    }
    // Two queues of about 150 KB each: the total is reached before either limit alone.
    let closed: Vec<CloseReason> = net.closed_by_hub.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        closed,
        vec![CloseReason::SlowConsumer],
        "after {sent} datagrams"
    );
    assert!(sent < 20, "{sent}");
    assert_eq!(net.datagrams(fast).len(), sent);
    assert!(net.members[fast].link.is_registered());
}

#[test]
fn a_slow_hub_that_keeps_acknowledging_is_not_left() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let a = net.add("a", 1, None);
    net.add("b", 1, None);
    // a queues far more than the hub takes at once; the hub reads a little every second.
    net.members[a].reading = false;
    for _ in 0..300 {
        let d = datagram(MemberKey::of("a"), 1, &[3u8; 10_000]);
        assert!(net.members[a].link.send_group(net.now, d));
    }
    let conn = net.members[a].conn.expect("conn");
    for _ in 0..20 {
        net.advance(Duration::from_secs(1));
        for _ in 0..20 {
            let Some(b) = net.members[a].link.peek_output() else {
                break;
            };
            let b = b.to_vec();
            net.members[a].link.consume_output(b.len());
            net.hub.handle_bytes(net.now, conn, &b);
        }
        let acks = net.drain_hub(conn);
        net.members[a].link.handle_bytes(net.now, &acks);
    }
    assert!(
        !net.members[a]
            .got
            .iter()
            .any(|e| matches!(e, LinkEvent::Lost(_))),
        "{:?}",
        net.members[a]
            .got
            .iter()
            .filter(|e| matches!(e, LinkEvent::Lost(_)))
            .collect::<Vec<_>>()
    );
    assert!(net.members[a].link.is_registered());
}

#[test]
fn a_hub_that_drops_every_registration_at_once_is_retried_ever_more_slowly() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let a = net.add("a", 1, None);
    let mut registered_at = Vec::new();
    for _ in 0..8 {
        assert!(net.members[a].link.is_registered());
        registered_at.push(net.now);
        let conn = net.members[a].conn.expect("conn");
        net.hub.handle_bytes(net.now, conn, &[0xff; 8]); // garbage: closed as a protocol error
        net.pump();
        assert!(!net.members[a].link.is_registered());
        let next = net.members[a].link.poll_timeout().expect("retry");
        net.advance(next - net.now);
    }
    let gaps: Vec<Duration> = registered_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[3] > gaps[0] * 4, "{gaps:?}");
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_millis(2500)),
        "{gaps:?}"
    );
    // A registration that lasts starts the next series from the shortest wait again.
    net.advance(Duration::from_secs(10));
    let conn = net.members[a].conn.expect("conn");
    net.hub.handle_bytes(net.now, conn, &[0xff; 8]);
    net.pump();
    let wait = net.members[a].link.poll_timeout().expect("retry") - net.now;
    assert!(wait <= Duration::from_millis(63), "{wait:?}");
}

/// A link of member "a" whose connection just opened (no hub behind it: the test speaks).
fn connected_link(now: Instant) -> HubLink {
    let mut link = HubLink::new(
        LinkConfig::new(hub_addr()),
        ClusterId::of(CLUSTER),
        MemberKey::of("a"),
        1,
        None,
        now,
        1,
    )
    .expect("link");
    assert!(matches!(
        link.poll_action(),
        Some(LinkAction::Connect { .. })
    ));
    link.connected(now);
    link
}

#[test]
fn a_second_challenge_is_a_protocol_error_and_nonces_depend_on_the_secret() {
    let now = Instant::now();
    let mut link = connected_link(now);
    let challenge = Frame::Challenge { nonce: [1; 16] }.encode();
    link.handle_bytes(now, &challenge);
    assert!(link.peek_output().is_some(), "a hello");
    link.handle_bytes(now, &challenge);
    assert_eq!(link.poll_event(), Some(LinkEvent::Lost(LinkLoss::Protocol)));

    let nonce_of = |secret: [u8; 32], conn: u64| {
        let mut hub = Hub::new(HubConfig::new(CLUSTER), secret).expect("hub");
        for c in 1..=conn {
            hub.accept(now, ConnId(c));
        }
        let mut dec = FrameDecoder::new();
        dec.push(hub.peek_output(ConnId(conn)).expect("challenge"));
        match dec.next_frame() {
            Ok(Some(Frame::Challenge { nonce })) => nonce,
            other => panic!("{other:?}"),
        }
    };
    assert_ne!(nonce_of([1; 32], 1), nonce_of([2; 32], 1));
    assert_ne!(nonce_of([1; 32], 1), nonce_of([1; 32], 2));
    assert_eq!(nonce_of([1; 32], 2), nonce_of([1; 32], 2));
}

/// Found by the simulator's hub-mode schedules: keepalive pings went out behind frames the hub
/// had not acknowledged, taking the unacknowledged bytes beyond `max_unacked_bytes`. No ping
/// goes out while frames wait for their acknowledgement; the ack timeout still fires.
#[test]
fn a_full_window_stays_within_its_bound_until_the_ack_timeout() {
    let mut net = Net::new(HubConfig::new(CLUSTER));
    let a = net.add("a", 1, None);
    net.add("b", 1, None);
    // The hub stops reading a's connection: nothing a sends is acknowledged.
    net.members[a].reading = false;
    let max = net.members[a].link.config().max_unacked_bytes;
    // Fill the window to the last byte a datagram can take.
    loop {
        let room = max - net.members[a].link.stats().unacked_bytes;
        let len = room.saturating_sub(4 + 17).min(60_000);
        if len == 0
            || !net.members[a]
                .link
                .send_group(net.now, Bytes::from(vec![1u8; len]))
        {
            break;
        }
    }
    assert!(max - net.members[a].link.stats().unacked_bytes < 4 + 17 + 1);
    assert!(
        !net.members[a]
            .link
            .send_group(net.now, Bytes::from_static(b"x"))
    );
    // Several keepalive intervals, short of the ack timeout.
    let config = net.members[a].link.config().clone();
    net.advance(config.ack_timeout - config.keepalive / 2);
    assert!(net.members[a].link.is_registered());
    let unacked = net.members[a].link.stats().unacked_bytes;
    assert!(
        unacked <= max,
        "{unacked} unacknowledged bytes, bound {max}"
    );
    net.advance(config.keepalive);
    assert!(
        net.members[a]
            .got
            .contains(&LinkEvent::Lost(LinkLoss::AckTimeout)),
        "{:?}",
        net.members[a].got
    );
}

/// A member reading a deep queue at the hub gets its acknowledgement late, behind the relayed
/// frames: while those keep arriving, the hub is alive and the link stays.
#[test]
fn frames_arriving_ahead_of_a_late_acknowledgement_keep_the_link() {
    let t0 = Instant::now();
    let mut link = connected_link(t0);
    link.handle_bytes(t0, &Frame::Challenge { nonce: [1; 16] }.encode());
    link.handle_bytes(t0, &Frame::Welcome.encode());
    assert!(link.is_registered());
    assert!(link.send_group(t0, datagram(MemberKey::of("a"), 1, b"hb")));
    let deliver = Frame::Deliver {
        from: MemberKey::of("b"),
        datagram: datagram(MemberKey::of("b"), 1, b"queued"),
    }
    .encode();
    // Relayed frames trickle in every second for 8 s: more than the ack timeout.
    for s in 1..=8 {
        let t = t0 + Duration::from_secs(s);
        link.handle_timeout(t);
        link.handle_bytes(t, &deliver);
        assert!(link.is_registered(), "left at {s} s");
    }
    // Then the acknowledgement.
    let t = t0 + Duration::from_secs(9);
    link.handle_bytes(t, &Frame::Ack { id: 1 }.encode());
    assert_eq!(link.stats().unacked_bytes, 0);
    // With something unacknowledged and nothing heard for the ack timeout, it leaves.
    assert!(link.send_group(t, datagram(MemberKey::of("a"), 1, b"hb")));
    link.handle_timeout(t + Duration::from_secs(5));
    assert!(!link.is_registered());
    assert!(
        std::iter::from_fn(|| link.poll_event())
            .any(|e| e == LinkEvent::Lost(LinkLoss::AckTimeout))
    );
}

#[test]
fn leaving_before_the_registration_is_accepted_sends_nothing() {
    let now = Instant::now();
    let mut link = connected_link(now);
    link.handle_bytes(now, &Frame::Challenge { nonce: [1; 16] }.encode());
    assert!(link.peek_output().is_some(), "a hello waits");
    link.close();
    assert!(link.peek_output().is_none(), "the hello is withdrawn");
}
