//! Authenticated clusters: tags on every datagram and exchange, key rotation, intruders with
//! the wrong key or none, replayed datagrams and requests.

mod harness;

use bytes::Bytes;
use harness::{Cluster, WALL_CLOCK_AT_START, test_config};
use hybridcast_core::http::{self, HttpLimits, Request, Response};
use hybridcast_core::{
    AuthConfig, ClusterId, ClusterKey, Config, Identity, Keyring, MemberState, Node, RequestId,
    Transmit, exchange,
};
use std::time::{Duration, Instant};

fn key(b: u8) -> ClusterKey {
    ClusterKey::new(vec![b; 32]).expect("key")
}

fn with_keys(keys: Vec<ClusterKey>) -> Config {
    Config {
        auth: Some(AuthConfig::new(Keyring::new(keys).expect("ring"))),
        ..test_config()
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn an_authenticated_cluster_converges_and_ignores_intruders() {
    let mut c = Cluster::with_config(1, with_keys(vec![key(1)]));
    for i in 0..3 {
        c.add(&format!("web/{i}"));
    }
    let wrong_key = c.add_with("evil/0", with_keys(vec![key(2)]));
    let no_key = c.add_with("plain/0", test_config());
    for i in 0..5 {
        c.with(i, |n| n.bind(&format!("svc-{i}"), "x").expect("bind"));
    }
    c.run_for(secs(5.0));
    for i in 0..3 {
        let n = &c.nodes[i].node;
        let names: Vec<String> = n.members().map(|m| m.name).collect();
        assert_eq!(
            names.len(),
            2,
            "node {i} knows exactly the other two: {names:?}"
        );
        assert!(names.iter().all(|m| m.starts_with("web/")), "{names:?}");
        for j in 0..3 {
            assert_eq!(n.registry().pool(&format!("svc-{j}")).count(), 1, "svc-{j}");
        }
        let s = n.stats();
        assert!(
            s.auth.datagram_bad_tag > 0,
            "the wrong key's datagrams are refused"
        );
        assert!(
            s.auth.datagram_untagged > 0,
            "untagged datagrams are refused"
        );
        assert_eq!(s.auth.datagram_replayed, 0);
        assert_eq!(n.registry().pool("svc-3").count(), 0);
        assert_eq!(n.registry().pool("svc-4").count(), 0);
    }
    // Everything the members sent was sealed: the keyless node could read none of it, and the
    // intruder with another key could verify none of it.
    let plain = c.nodes[no_key].node.stats();
    assert!(plain.drops.unsupported > 0);
    assert_eq!(c.nodes[no_key].node.members().count(), 0);
    let evil = c.nodes[wrong_key].node.stats();
    assert!(evil.auth.datagram_bad_tag > 0);
    assert_eq!(c.nodes[wrong_key].node.members().count(), 0);
}

#[test]
fn key_rotation_keeps_the_cluster_together_at_every_step() {
    let (old, new) = (key(1), key(2));
    let mut c = Cluster::with_config(2, with_keys(vec![old.clone()]));
    for i in 0..3 {
        c.add(&format!("web/{i}"));
        c.with(i, |n| n.bind(&format!("svc-{i}"), "v0").expect("bind"));
    }
    c.run_for(secs(3.0));
    assert!(c.converged(), "{:?}", c.divergent());
    let steps = [
        vec![old.clone(), new.clone()],
        vec![new.clone(), old.clone()],
        vec![new.clone()],
    ];
    let mut round = 0;
    for keys in steps {
        // A rolling restart: one member at a time, the cluster converged in between.
        for i in 0..3 {
            round += 1;
            c.restart_with(i, with_keys(keys.clone()));
            c.with(i, |n| {
                n.bind(&format!("svc-{i}"), &format!("v{round}"))
                    .expect("bind")
            });
            let until = c.elapsed() + secs(4.0);
            c.run_until(until);
            assert!(c.converged(), "round {round}: {:?}", c.divergent());
            for j in 0..3 {
                assert_eq!(
                    c.nodes[j]
                        .node
                        .members()
                        .filter(|m| m.state == MemberState::Alive)
                        .count(),
                    2,
                    "round {round}: node {j} sees both others alive"
                );
            }
        }
    }
    // At the end nobody holds the old key any more, and nothing was refused along the way
    // except the old incarnations' stragglers.
    for n in &c.nodes {
        assert_eq!(n.node.config().auth.as_ref().map(|a| a.keys.len()), Some(1));
        assert_eq!(n.node.stats().auth.datagram_bad_tag, 0);
        assert_eq!(n.node.stats().auth.response_bad, 0);
    }
}

#[test]
fn replayed_datagrams_are_refused_and_cannot_revive_a_failed_member() {
    let mut c = Cluster::with_config(3, with_keys(vec![key(7)]));
    let a = c.add("web/0");
    let b = c.add("web/1");
    c.sent = Some(Vec::new());
    c.with(a, |n| n.bind("orders", "10.0.0.1:80").expect("bind"));
    c.run_for(secs(2.0));
    let from = c.nodes[a].addr;
    let recorded: Vec<Bytes> = c
        .sent
        .take()
        .expect("recording")
        .into_iter()
        .filter(|(i, _)| *i == a)
        .map(|(_, d)| d)
        .collect();
    assert!(recorded.len() > 5);
    // Let whatever was still on the way arrive first.
    c.run_for(secs(0.1));
    // Every datagram again, at once: each is refused as a replay.
    let before = c.nodes[b].node.stats();
    for d in &recorded {
        c.inject(b, from, d.clone());
    }
    let after = c.nodes[b].node.stats();
    assert_eq!(
        after.auth.datagram_replayed - before.auth.datagram_replayed,
        recorded.len() as u64
    );
    assert_eq!(after.messages_delivered, before.messages_delivered);
    // A crashes; b declares it failed; replaying its heartbeats does not bring it back.
    c.crash(a);
    c.run_for(secs(3.0));
    let key_a = c.nodes[a].node.key();
    let state = |c: &Cluster| c.nodes[b].node.member(key_a).map(|m| m.state);
    assert_eq!(state(&c), Some(MemberState::Failed));
    for d in &recorded {
        c.inject(b, from, d.clone());
    }
    c.run_for(secs(0.5));
    assert_eq!(state(&c), Some(MemberState::Failed));
    assert_eq!(c.nodes[b].node.registry().pool("orders").count(), 0);
    // A member that starts later, when the recordings are older than the skew, refuses them by
    // their stamps (it has no window for `a` to refuse them by).
    c.run_for(secs(31.0));
    let late = c.add("web/9");
    let stale_before = c.nodes[late].node.stats().auth.datagram_stale;
    for d in &recorded {
        c.inject(late, from, d.clone());
    }
    let s = c.nodes[late].node.stats();
    assert_eq!(s.auth.datagram_stale - stale_before, recorded.len() as u64);
    assert!(
        c.nodes[late].node.member(key_a).is_none(),
        "a stays unknown"
    );
    // A forged datagram (one byte changed) is refused for its tag.
    let mut forged = recorded[0].to_vec();
    forged[40] ^= 1;
    let bad_before = c.nodes[b].node.stats().auth.datagram_bad_tag;
    c.inject(b, from, Bytes::from(forged));
    assert_eq!(
        c.nodes[b].node.stats().auth.datagram_bad_tag,
        bad_before + 1
    );
}

/// A joined member `b` driven by hand, and newcomers asking it for the state dump, so the
/// test holds the very bytes of their requests and answers.
struct Pair {
    start: Instant,
    now: Instant,
    b: Node,
    newcomers: u64,
}

const B_ADDR: &str = "127.0.0.1:7002";

fn node(
    name: &str,
    addr: &str,
    config: Config,
    now: Instant,
    wall: Option<u64>,
    seed: u64,
) -> Node {
    let id = Identity::new("sim", name, 5, addr.parse().expect("addr"));
    let mut n = Node::new(config, id, now, seed).expect("node");
    if let Some(w) = wall {
        n.set_wall_clock(now, w);
    }
    n
}

fn group(n: &mut Node) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(t) = n.poll_transmit() {
        if let Transmit::Group(d) = t {
            out.push(d);
        }
    }
    out
}

fn requests(n: &mut Node) -> Vec<(RequestId, Request)> {
    let mut out = Vec::new();
    while let Some(t) = n.poll_transmit() {
        if let Transmit::Request { id, request, .. } = t {
            let (req, _) = http::parse_request(&request, &HttpLimits::default())
                .expect("valid")
                .expect("complete");
            out.push((id, req));
        }
    }
    out
}

fn round_trip(resp: &Response) -> Response {
    let bytes = resp.encode();
    http::parse_response(&bytes, &HttpLimits::default())
        .expect("valid")
        .expect("complete")
        .0
}

impl Pair {
    /// `b` starts alone, offers `orders` and joins (nobody to ask).
    fn new(b_config: Config, b_wall: Option<u64>) -> Pair {
        let start = Instant::now();
        let mut now = start;
        let mut b = node("web/1", B_ADDR, b_config, now, b_wall, 1);
        b.bind("orders", "10.0.0.2:80").expect("bind");
        now += secs(0.7);
        b.handle_timeout(now);
        assert!(b.is_joined());
        group(&mut b);
        Pair {
            start,
            now,
            b,
            newcomers: 0,
        }
    }

    /// A newcomer (key 9, wall clock right) hears `b` and, once its discovery is over, asks
    /// `b` for the state dump.
    fn dump_request(&mut self) -> (Node, RequestId, Request) {
        self.newcomers += 1;
        let k = self.newcomers;
        let wall = WALL_CLOCK_AT_START + (self.now - self.start).as_millis() as u64;
        let addr = format!("127.0.0.1:{}", 7100 + k);
        let mut a = node(
            &format!("web/new{k}"),
            &addr,
            with_keys(vec![key(9)]),
            self.now,
            Some(wall),
            100 + k,
        );
        let from = B_ADDR.parse().expect("addr");
        for _ in 0..2 {
            self.now += secs(0.21);
            self.b.handle_timeout(self.now);
            for d in group(&mut self.b) {
                a.handle_datagram(self.now, from, d);
            }
            a.handle_timeout(self.now);
            group(&mut a);
        }
        self.now += secs(0.2);
        a.handle_timeout(self.now);
        let mut asked = requests(&mut a);
        assert_eq!(asked.len(), 1, "one dump request: {asked:?}");
        let (id, req) = asked.remove(0);
        assert_eq!(req.path, exchange::PATH_DUMP);
        assert!(req.header(exchange::HEADER_AUTH).is_some());
        (a, id, req)
    }
}

fn knows_orders(n: &Node) -> bool {
    n.registry().pool("orders").count() == 1
}

#[test]
fn requests_need_fresh_unreplayed_credentials_and_answers_need_theirs() {
    let mut p = Pair::new(with_keys(vec![key(9)]), Some(WALL_CLOCK_AT_START));
    let (mut a, id, req) = p.dump_request();
    let now = p.now;
    let resp = p.b.handle_http_request(now, &req);
    assert_eq!(resp.status, 200);
    assert!(resp.header(exchange::HEADER_AUTH).is_some());
    // The very same request again: a replay.
    let again = p.b.handle_http_request(now, &req);
    assert_eq!(again.status, 401);
    assert_eq!(p.b.stats().auth.request_replayed, 1);
    // Changed in any covered part: a bad tag.
    let mut moved = req.clone();
    moved.path = exchange::PATH_PROBE.into();
    assert_eq!(p.b.handle_http_request(now, &moved).status, 401);
    let mut other_body = req.clone();
    other_body.body = Bytes::from_static(b"x");
    assert_eq!(p.b.handle_http_request(now, &other_body).status, 401);
    assert_eq!(p.b.stats().auth.request_bad_tag, 2);
    // Without credentials.
    let mut bare = req.clone();
    bare.headers.retain(|(n, _)| n != exchange::HEADER_AUTH);
    assert_eq!(p.b.handle_http_request(now, &bare).status, 401);
    assert_eq!(p.b.stats().auth.request_untagged, 1);
    // A tampered answer is not taken.
    let mut tampered = round_trip(&resp);
    tampered.body = Bytes::from(vec![0u8; 3]);
    a.handle_http_response(now, id, Ok(tampered));
    assert_eq!(a.stats().auth.response_bad, 1);
    assert!(!knows_orders(&a));
    // A genuine answer, but to another request, is not taken either.
    let (mut a2, id2, _) = p.dump_request();
    a2.handle_http_response(p.now, id2, Ok(round_trip(&resp)));
    assert_eq!(a2.stats().auth.response_bad, 1);
    assert!(!knows_orders(&a2));
    // The answer to its own request is.
    let (mut a3, id3, req3) = p.dump_request();
    let resp3 = p.b.handle_http_request(p.now, &req3);
    a3.handle_http_response(p.now, id3, Ok(round_trip(&resp3)));
    assert_eq!(a3.stats().auth.response_bad, 0);
    assert!(a3.is_joined() && knows_orders(&a3));
}

#[test]
fn clocks_apart_beyond_the_skew_or_unset_refuse_requests() {
    let wall = Some(WALL_CLOCK_AT_START);
    // b's clock is set a minute ahead (after the two heard each other): outside the 30 s
    // window, for its requests and its datagrams alike.
    let mut p = Pair::new(with_keys(vec![key(9)]), wall);
    let (mut a, _, req) = p.dump_request();
    let at =
        |p: &Pair, ahead: u64| WALL_CLOCK_AT_START + (p.now - p.start).as_millis() as u64 + ahead;
    let ahead = at(&p, 60_000);
    p.b.set_wall_clock(p.now, ahead);
    assert_eq!(p.b.handle_http_request(p.now, &req).status, 401);
    assert_eq!(p.b.stats().auth.request_stale, 1);
    p.now += secs(0.3);
    p.b.handle_timeout(p.now);
    let stale = a.stats().auth.datagram_stale;
    for d in group(&mut p.b) {
        a.handle_datagram(p.now, B_ADDR.parse().expect("addr"), d);
    }
    assert!(
        a.stats().auth.datagram_stale > stale,
        "b's datagrams are stale to a"
    );
    // 20 s ahead is within it.
    let mut p = Pair::new(with_keys(vec![key(9)]), wall);
    let (_, _, req) = p.dump_request();
    let ahead = at(&p, 20_000);
    p.b.set_wall_clock(p.now, ahead);
    assert_eq!(p.b.handle_http_request(p.now, &req).status, 200);
    // A member never told the wall clock: 503, and counted.
    let mut p = Pair::new(with_keys(vec![key(9)]), wall);
    let (_, _, req) = p.dump_request();
    let mut clockless = node("web/1", B_ADDR, with_keys(vec![key(9)]), p.now, None, 9);
    assert_eq!(clockless.handle_http_request(p.now, &req).status, 503);
    assert_eq!(clockless.stats().auth.request_no_clock, 1);
}

#[test]
fn the_nonce_cache_is_bounded_and_refuses_rather_than_forgets() {
    let mut config = with_keys(vec![key(9)]);
    if let Some(a) = &mut config.auth {
        a.max_nonces = 1;
        a.max_clock_skew = secs(5.0);
    }
    let mut p = Pair::new(config, Some(WALL_CLOCK_AT_START));
    let (_, _, first) = p.dump_request();
    assert_eq!(p.b.handle_http_request(p.now, &first).status, 200);
    let (_, _, second) = p.dump_request();
    assert_eq!(p.b.handle_http_request(p.now, &second).status, 503);
    assert_eq!(p.b.stats().auth.request_nonces_full, 1);
    // Once the first nonce's stamp has left the window there is room again, and the first
    // request itself is refused by its stamp.
    p.now += secs(6.0);
    assert_eq!(p.b.handle_http_request(p.now, &first).status, 401);
    assert_eq!(p.b.stats().auth.request_stale, 1);
    let (_, _, third) = p.dump_request();
    assert_eq!(p.b.handle_http_request(p.now, &third).status, 200);
}

#[test]
fn a_keyless_or_wrong_key_request_is_refused() {
    let mut p = Pair::new(with_keys(vec![key(9)]), Some(WALL_CLOCK_AT_START));
    let (_, _, req) = p.dump_request();
    // a signed with key 9; a member holding key 8 refuses it.
    let wall = Some(WALL_CLOCK_AT_START);
    let mut other = node(
        "web/2",
        "127.0.0.1:7003",
        with_keys(vec![key(8)]),
        p.now,
        wall,
        3,
    );
    assert_eq!(other.handle_http_request(p.now, &req).status, 401);
    assert_eq!(other.stats().auth.request_bad_tag, 1);
    let mut plain = Request::get(exchange::PATH_PROBE);
    plain.headers.push((
        exchange::HEADER_CLUSTER.into(),
        ClusterId::of("sim").to_string(),
    ));
    assert_eq!(p.b.handle_http_request(p.now, &plain).status, 401);
}

#[test]
fn auth_settings_are_validated_and_keys_never_shown() {
    let mut c = with_keys(vec![key(1)]);
    if let Some(a) = &mut c.auth {
        a.max_nonces = 0;
    }
    assert_eq!(c.validate().map_err(|e| e.field), Err("auth.max_nonces"));
    let mut c = with_keys(vec![key(1)]);
    if let Some(a) = &mut c.auth {
        a.max_clock_skew = Duration::ZERO;
    }
    assert_eq!(
        c.validate().map_err(|e| e.field),
        Err("auth.max_clock_skew")
    );
    let shown = format!(
        "{:?}",
        with_keys(vec![ClusterKey::new(*b"0123456789abcdefXYZ").expect("k")])
    );
    assert!(!shown.contains("0123456789"), "{shown}");
}

/// From review: a request captured on its way to one member used to be accepted by every other
/// member holding the key (their nonce caches are their own), and its answer taken as the
/// first member's. The tag now covers the member it is for.
#[test]
fn a_request_for_one_member_is_refused_by_another() {
    let mut p = Pair::new(with_keys(vec![key(9)]), Some(WALL_CLOCK_AT_START));
    let (_, _, req) = p.dump_request();
    assert_eq!(req.header("host"), Some(B_ADDR));
    let wall = Some(WALL_CLOCK_AT_START);
    let mut c = node(
        "web/3",
        "127.0.0.1:7004",
        with_keys(vec![key(9)]),
        p.now,
        wall,
        4,
    );
    assert_eq!(c.handle_http_request(p.now, &req).status, 401);
    assert_eq!(c.stats().auth.request_misdirected, 1);
    // Rewriting the host to the other member breaks the tag.
    let mut moved = req.clone();
    moved.headers.retain(|(n, _)| n != "host");
    moved.headers.push(("host".into(), "127.0.0.1:7004".into()));
    assert_eq!(c.handle_http_request(p.now, &moved).status, 401);
    assert_eq!(c.stats().auth.request_bad_tag, 1);
    // The member it was for takes it.
    assert_eq!(p.b.handle_http_request(p.now, &req).status, 200);
}
