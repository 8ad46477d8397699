//! The node's API driven directly: point-to-point status codes and bodies, datagram drop
//! counting, stale incarnations, commands and their errors, timer idempotence.

use bytes::Bytes;
use hybridcast_core::exchange::{self, ClusterDump, LogRange, ProbeReply, StateSnapshot};
use hybridcast_core::http::{self, HttpError, HttpLimits, Method, Request};
use hybridcast_core::wire::{self, FragmentPacker, Header, Heartbeat};
use hybridcast_core::{
    Channel, ClusterId, CommandError, Config, Identity, MemberKey, Node, Transmit, codec,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn node(t: Instant) -> Node {
    Node::new(
        Config::default(),
        Identity::new("prod", "web/1", 5, addr(7001)),
        t,
        9,
    )
    .expect("node")
}

fn request(n: &Node, path: &str) -> Request {
    let mut r = Request::get(path);
    r.headers.push((
        exchange::HEADER_CLUSTER.into(),
        ClusterId::of(&n.identity().cluster).to_string(),
    ));
    r
}

fn drain(n: &mut Node) -> Vec<Transmit> {
    std::iter::from_fn(|| n.poll_transmit()).collect()
}

#[test]
fn status_codes_of_the_point_to_point_server() {
    let t = Instant::now();
    let mut n = node(t);
    assert_eq!(
        n.handle_http_request(t, &request(&n, "/elsewhere")).status,
        404
    );
    assert_eq!(
        n.handle_http_request(t, &request(&n, "/hybridcast/v1/nope"))
            .status,
        404
    );
    let mut post = request(&n, exchange::PATH_PROBE);
    post.method = Method::Post;
    assert_eq!(n.handle_http_request(t, &post).status, 405);
    assert_eq!(
        n.handle_http_request(t, &Request::get(exchange::PATH_PROBE))
            .status,
        400
    );
    let mut foreign = Request::get(exchange::PATH_PROBE);
    foreign.headers.push((
        exchange::HEADER_CLUSTER.into(),
        ClusterId::of("other").to_string(),
    ));
    assert_eq!(n.handle_http_request(t, &foreign).status, 403);
    for bad in ["?from=x&to=2", "?from=0&to=2", "?from=5&to=2", ""] {
        let r = request(&n, &format!("{}{bad}", exchange::PATH_LOG));
        let resp = n.handle_http_request(t, &r);
        assert_eq!(resp.status, 400, "{bad}");
        assert!(!resp.body.is_empty(), "errors carry a reason");
    }
    assert_eq!(n.stats().http_errors, 9);
    n.leave();
    assert_eq!(
        n.handle_http_request(t, &request(&n, exchange::PATH_PROBE))
            .status,
        410
    );
}

#[test]
fn parse_errors_map_to_statuses() {
    let limits = HttpLimits {
        max_header_bytes: 1024,
        max_headers: 32,
        max_body_bytes: 10,
    };
    let big_body = b"POST /x HTTP/1.1\r\ncontent-length: 11\r\n\r\n";
    let err = http::parse_request(big_body, &limits).expect_err("too large");
    assert_eq!(err.status(), 413);
    let huge_headers = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(2000));
    let err = http::parse_request(huge_headers.as_bytes(), &limits).expect_err("headers");
    assert!(matches!(err, HttpError::HeadersTooLarge { .. }));
    let err = http::parse_request(b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n", &limits)
        .expect_err("malformed");
    assert_eq!(err.status(), 400);
    assert_eq!(err.to_response().status, 400);
}

#[test]
fn answers_decode_and_reflect_state() {
    let t = Instant::now();
    let mut n = node(t);
    n.bind("orders", "10.0.0.1:80").expect("bind");
    n.bind("users", "10.0.0.1:81").expect("bind");
    n.publish("inval", "k1").expect("publish");
    n.publish("inval", "k2").expect("publish");
    // Before the tick ends, the snapshot reflects what was announced (nothing yet).
    let body = |n: &mut Node, path: &str| {
        let r = n.handle_http_request(t, &request(n, path));
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(exchange::CONTENT_TYPE));
        r.body
    };
    let snap: StateSnapshot =
        codec::decode(&body(&mut n, exchange::PATH_STATE), 1 << 20).expect("snap");
    assert_eq!((snap.seq, snap.offers.len()), (0, 0));
    drain(&mut n);
    let snap: StateSnapshot =
        codec::decode(&body(&mut n, exchange::PATH_STATE), 1 << 20).expect("snap");
    assert_eq!(snap.seq, 1, "two binds in one tick: one announcement");
    assert_eq!(snap.incarnation, 5);
    assert_eq!(
        snap.offers,
        vec![
            ("orders".into(), "10.0.0.1:80".into()),
            ("users".into(), "10.0.0.1:81".into())
        ]
    );
    let log: LogRange = codec::decode(
        &body(&mut n, &format!("{}?from=2&to=9", exchange::PATH_LOG)),
        1 << 20,
    )
    .expect("log");
    assert_eq!(
        (log.first_retained, log.last_seq, log.messages.len()),
        (1, 2, 1)
    );
    assert_eq!(log.messages[0].0, 2);
    let probe: ProbeReply =
        codec::decode(&body(&mut n, exchange::PATH_PROBE), 1 << 20).expect("probe");
    assert_eq!(probe.identity.name, "web/1");
    let dump: ClusterDump =
        codec::decode(&body(&mut n, exchange::PATH_DUMP), 1 << 20).expect("dump");
    assert_eq!(dump.members.len(), 1);
    assert_eq!(dump.members[0].state.as_ref().map(|s| s.0), Some(1));
    assert_eq!(dump.members[0].log_seq, Some(2));
}

fn peer_header(incarnation: u64) -> Header {
    Header {
        cluster: ClusterId::of("prod"),
        sender: MemberKey::of("web/2"),
        incarnation,
    }
}

fn peer_heartbeat(state_seq: u64) -> Heartbeat {
    Heartbeat {
        cluster_name: "prod".into(),
        name: "web/2".into(),
        http_addr: addr(7002),
        host_id: "h2".into(),
        load: 0,
        interval_ms: 1000,
        joining: false,
        last_seq: vec![(Channel::State, state_seq), (Channel::Log, 0)],
    }
}

#[test]
fn drops_are_counted_by_reason() {
    let t = Instant::now();
    let mut n = node(t);
    n.handle_datagram(t, addr(1), Bytes::from_static(b"garbage"));
    let mut foreign = peer_header(1);
    foreign.cluster = ClusterId::of("other");
    n.handle_datagram(
        t,
        addr(1),
        wire::encode_heartbeat(&foreign, &peer_heartbeat(0)),
    );
    let own = Header {
        cluster: ClusterId::of("prod"),
        sender: MemberKey::of("web/1"),
        incarnation: 5,
    };
    n.handle_datagram(t, addr(1), wire::encode_leave(&own));
    let mut p = FragmentPacker::new(&peer_header(1), 1400);
    p.push(Channel::State, 1, 0, 1, 1, b"x");
    n.handle_datagram(t, addr(1), p.finish());
    let mut liar = peer_heartbeat(0);
    liar.name = "someone-else".into();
    n.handle_datagram(t, addr(1), wire::encode_heartbeat(&peer_header(1), &liar));
    let d = n.stats().drops;
    assert_eq!(
        (
            d.not_hybridcast,
            d.wrong_cluster,
            d.own,
            d.unknown_member,
            d.bad_identity
        ),
        (1, 1, 1, 1, 1)
    );
    assert_eq!(n.stats().datagrams_in, 5);
}

#[test]
fn stale_incarnation_is_ignored_and_new_one_starts_at_one() {
    let t = Instant::now();
    let mut n = node(t);
    n.handle_datagram(
        t,
        addr(2),
        wire::encode_heartbeat(&peer_header(10), &peer_heartbeat(0)),
    );
    // The member restarts quickly: incarnation 11 begins at sequence 1 while late packets of
    // incarnation 10 (sequence 50) still arrive.
    n.handle_datagram(
        t,
        addr(2),
        wire::encode_heartbeat(&peer_header(11), &peer_heartbeat(0)),
    );
    let mut old = FragmentPacker::new(&peer_header(10), 1400);
    old.push(Channel::State, 50, 0, 1, 1, b"x");
    n.handle_datagram(t, addr(2), old.finish());
    assert_eq!(n.stats().drops.stale_incarnation, 1);
    let announcement = codec::encode(&exchange::Announcement {
        changes: vec![exchange::NamingChange::Bind("svc".into(), "v".into())],
    })
    .expect("encode");
    let mut new = FragmentPacker::new(&peer_header(11), 1400);
    new.push(
        Channel::State,
        1,
        0,
        1,
        announcement.len() as u32,
        &announcement,
    );
    n.handle_datagram(t, addr(2), new.finish());
    assert_eq!(n.registry().pool("svc").count(), 1);
    let info = n.member(MemberKey::of("web/2")).expect("member");
    assert_eq!(info.incarnation, 11);
    assert_eq!(info.sequences[0], (Channel::State, 1, 1));
}

#[test]
fn behind_receiver_asks_once_after_grace() {
    let t = Instant::now();
    let mut n = node(t);
    n.handle_timeout(t + Duration::from_secs(4)); // discovery over, alone: joined
    assert!(n.is_joined());
    drain(&mut n);
    let t = t + Duration::from_secs(4);
    n.handle_datagram(
        t,
        addr(2),
        wire::encode_heartbeat(&peer_header(3), &peer_heartbeat(7)),
    );
    assert!(drain(&mut n).is_empty(), "grace first");
    let due = n.poll_timeout().expect("deadline");
    assert!(due <= t + Config::default().reorder_grace);
    n.handle_timeout(due);
    let out = drain(&mut n);
    let reqs: Vec<_> = out
        .iter()
        .filter_map(|t| match t {
            Transmit::Request { to, request, .. } => Some((*to, request.clone())),
            Transmit::Group(_) => None,
        })
        .collect();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].0, addr(7002));
    let (parsed, _) = http::parse_request(&reqs[0].1, &HttpLimits::default())
        .expect("valid")
        .expect("complete");
    assert_eq!(parsed.path, exchange::PATH_STATE);
    // More heartbeats while it is in flight ask for nothing more.
    n.handle_datagram(
        due,
        addr(2),
        wire::encode_heartbeat(&peer_header(3), &peer_heartbeat(8)),
    );
    n.handle_timeout(due + Duration::from_millis(100));
    assert!(
        drain(&mut n)
            .iter()
            .all(|t| matches!(t, Transmit::Group(_)))
    );
    assert_eq!(n.requests_in_flight(), 1);
}

#[test]
fn commands_validate_and_timeouts_are_idempotent() {
    let t = Instant::now();
    let mut n = node(t);
    assert_eq!(n.bind("", "v"), Err(CommandError::EmptyName));
    assert!(matches!(
        n.bind(&"n".repeat(300), "v"),
        Err(CommandError::TooLong { what: "name", .. })
    ));
    assert!(matches!(
        n.publish(&"t".repeat(300), "p"),
        Err(CommandError::TooLong { what: "topic", .. })
    ));
    let big = vec![0u8; Config::default().max_message_size + 1];
    assert!(matches!(
        n.publish("t", big),
        Err(CommandError::MessageTooLarge { .. })
    ));
    assert_eq!(n.unbind("missing"), Ok(false));
    n.handle_timeout(t);
    let first = drain(&mut n).len();
    assert_eq!(first, 1, "one heartbeat");
    n.handle_timeout(t);
    n.handle_timeout(t);
    assert_eq!(drain(&mut n).len(), 0, "spurious timeouts do nothing");
    let c = Config {
        max_offers_per_member: 2,
        ..Config::default()
    };
    let mut small = Node::new(c, Identity::new("prod", "x", 1, addr(1)), t, 1).expect("node");
    small.bind("a", "1").expect("bind");
    small.bind("b", "1").expect("bind");
    assert_eq!(
        small.bind("c", "1"),
        Err(CommandError::TooManyOffers { max: 2 })
    );
    assert!(
        small.bind("a", "2").is_ok(),
        "replacing a value is not a new offer"
    );
}

#[test]
fn invalid_config_names_the_field() {
    let t = Instant::now();
    let c = Config {
        max_datagram_size: 70_000,
        ..Config::default()
    };
    let err = Node::new(c, Identity::new("prod", "x", 1, addr(1)), t, 1).expect_err("invalid");
    assert_eq!(err.field, "max_datagram_size");
    let err = Node::new(
        Config::default(),
        Identity::new("prod", "", 1, addr(1)),
        t,
        1,
    )
    .expect_err("invalid");
    assert_eq!(err.field, "name");
}

#[test]
fn large_batches_are_split_into_announcements_that_fit() {
    let t = Instant::now();
    let config = Config {
        max_message_size: 20_000,
        max_value_len: 1000,
        max_offers_per_member: 1000,
        ..Config::default()
    };
    let mut n = Node::new(config, Identity::new("prod", "x", 1, addr(1)), t, 1).expect("node");
    for k in 0..200 {
        n.bind(&format!("service-{k:04}"), &"v".repeat(900))
            .expect("bind");
    }
    let sent = drain(&mut n);
    let announcements = n.last_sent(Channel::State);
    assert!(
        announcements >= 10,
        "{announcements} announcements for ~180 KB of offers"
    );
    // Every announcement is reassembled and accepted by a peer with the same limits.
    let mut peer = Node::new(
        Config {
            max_message_size: 20_000,
            max_value_len: 1000,
            max_offers_per_member: 1000,
            ..Config::default()
        },
        Identity::new("prod", "y", 1, addr(2)),
        t,
        2,
    )
    .expect("peer");
    for d in sent {
        if let Transmit::Group(bytes) = d {
            peer.handle_datagram(t, addr(1), bytes);
        }
    }
    assert_eq!(peer.stats().drops.too_large, 0);
    assert_eq!(peer.registry().len(), 200);
}
