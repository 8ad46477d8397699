//! The `node_ops` target: a whole [`Node`] driven by the input as a deterministic stream of
//! time steps, datagrams, HTTP exchanges and commands.
//!
//! The input plays six peers of the node's cluster. Their datagrams are either raw bytes or
//! built with the real encoders from fields the input picks (so they pass decoding and reach
//! the protocol), their answers to the node's requests either raw bytes through
//! `parse_response`, a failure, or well-formed bodies for the path asked. After every input the
//! harness drains the node like a runtime (a bounded loop; events may be left to pile up on
//! purpose) and checks the bounds the configuration promises: cached bytes, members, requests
//! in flight, queued events, sessions, offers, the size and validity of what the node sends,
//! and that the timer never asks to be called again at a time already handled.

use super::input::{Input, Script};
use bytes::Bytes;
use hybridcast_core::auth;
use hybridcast_core::codec;
use hybridcast_core::exchange::{
    self, Announcement, ClaimReply, ClusterDump, DumpEntry, LogRange, NamingChange, ProbeReply,
    Published, ReplicaPayload, ReplicateReply, SessionClaim, SessionRelease, SessionReplicate,
    StateSnapshot, WireIdentity,
};
use hybridcast_core::http::{self, HttpLimits, Method, Request, Response};
use hybridcast_core::ids::{Channel, ClusterId, MemberKey, RequestId};
use hybridcast_core::session::{Change, MAX_EPOCH};
use hybridcast_core::wire::{self, FragmentPacker, Header, Heartbeat};
use hybridcast_core::{
    AuthConfig, ClusterKey, Config, Event, Identity, Keyring, LogicalRef, Node, RequestFailure,
    SessionId, SessionState, SessionToken, Strategy, Transmit, Value,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Operation codes of the stream (one byte each, taken modulo the count, each followed by its
/// arguments as a chunk read with [`Input::bytes`]).
pub mod op {
    /// Time passes; the node's timer is fired.
    pub const ADVANCE: u8 = 0;
    /// Time jumps to the node's own next deadline, which is fired.
    pub const TIMER: u8 = 1;
    /// A datagram of arbitrary bytes.
    pub const RAW_DATAGRAM: u8 = 2;
    /// A heartbeat of one peer.
    pub const HEARTBEAT: u8 = 3;
    /// A peer sends its next message (some fragments may be lost).
    pub const MESSAGE: u8 = 4;
    /// A fragments datagram with fields the input picks.
    pub const FRAGMENT: u8 = 5;
    /// A peer leaves.
    pub const LEAVE: u8 = 6;
    /// An HTTP request of arbitrary bytes.
    pub const RAW_REQUEST: u8 = 7;
    /// A well-formed GET to a protocol path.
    pub const GET: u8 = 8;
    /// A session POST (built body or arbitrary bytes).
    pub const SESSION_POST: u8 = 9;
    /// One of the node's requests is answered.
    pub const ANSWER: u8 = 10;
    /// A command of the owner.
    pub const COMMAND: u8 = 11;
    /// The owner stops (or resumes) draining events.
    pub const HOLD: u8 = 12;
    /// Number of operations.
    pub const COUNT: u8 = 13;
}

/// The node's cluster.
const CLUSTER: &str = "fz";
/// The node's name.
const SELF: &str = "self/0";
/// Names the peers use.
const PEERS: [&str; 6] = ["p/0", "p/1", "p/2", "p/3", "p/4", "p/5"];
/// Offer names used most of the time (so binds and unbinds meet).
const NAMES: [&str; 4] = ["a", "b", "svc", "x/y"];
/// Transmits or events one drain may yield before it counts as unbounded.
const DRAIN_LIMIT: usize = 100_000;
/// Requests of the node kept for answering (older ones are left to time out).
const KEEP_PENDING: usize = 32;

/// The small configuration under test: every bound is reachable with short inputs.
pub fn config() -> Config {
    let http = HttpLimits {
        max_header_bytes: 1024,
        max_headers: 16,
        max_body_bytes: 70_000,
    };
    Config {
        max_datagram_size: 300,
        max_message_size: 2048,
        max_fragments_per_message: 32,
        max_cached_bytes_per_sender: 3000,
        max_cached_bytes_total: 6000,
        max_cached_messages_per_sender: 6,
        log_retention_messages: 6,
        log_retention_bytes: 2048,
        max_members: 4,
        max_offers_per_member: 6,
        max_name_len: 16,
        max_value_len: 32,
        max_topic_len: 16,
        max_queued_events: 12,
        max_queued_event_bytes: 4096,
        max_offers_total: 12,
        http,
        heartbeat_interval: Duration::from_millis(100),
        suspect_after_intervals: 3,
        request_timeout: Duration::from_millis(250),
        discovery_period: Some(Duration::from_millis(200)),
        reorder_grace: Duration::from_millis(10),
        recovery_backoff_initial: Duration::from_millis(20),
        recovery_backoff_max: Duration::from_millis(400),
        provider_quarantine: Duration::from_millis(300),
        tombstone_ttl: Duration::from_millis(1500),
        max_sessions: 3,
        max_session_bytes: 4096,
        session_idle_timeout: Duration::from_secs(5),
        max_replications_in_flight: 2,
        auth: None,
    }
}

fn peer_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16))
}

/// What the harness knows of one peer it plays.
#[derive(Debug, Clone)]
struct PeerModel {
    incarnation: u64,
    /// Last sequence sent per channel.
    sent: [u64; 2],
}

/// A request of the node, waiting for an answer.
#[derive(Debug)]
struct PendingRequest {
    id: RequestId,
    to: SocketAddr,
    request: Request,
    /// The request's nonce when the cluster is authenticated (its answer is tagged with it).
    nonce: Option<u128>,
}

/// What one run of [`node_ops`] reached (for the tests that keep the seeds meaningful).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// The node finished its join.
    pub joined: bool,
    /// Events drained, by kind: messages, bindings, membership, session events.
    pub messages: usize,
    /// `Bound` events.
    pub bound: usize,
    /// `MemberJoined` events.
    pub member_joined: usize,
    /// Session events of any kind.
    pub session_events: usize,
    /// Requests the node asked for.
    pub requests: usize,
    /// Answers with status 200 the node served.
    pub served_ok: usize,
}

struct Run {
    tally: Tally,
    cfg: Config,
    node: Node,
    now: Instant,
    peers: Vec<PeerModel>,
    pending: Vec<PendingRequest>,
    tokens: Vec<SessionToken>,
    hold_events: bool,
    cluster_header: String,
    /// The cluster key in [`node_auth_ops`]: the harness plays peers that hold it.
    keys: Option<Keyring>,
    /// Counter of the harness's sealed datagrams and nonces.
    counter: u64,
    start: Instant,
}

/// The wall clock the node is told at the start of a run (Unix ms).
const WALL_MS: u64 = 1_790_000_000_000;

/// Drives a node with the operations the input encodes (the `op` codes of its module).
pub fn node_ops(data: &[u8]) {
    drive(data);
}

/// [`node_ops`] in an authenticated cluster: the harness's peers hold the key, so every
/// datagram it hands the node is sealed and every request and answer tagged (the node's own
/// requests must verify), and the node's datagrams must open with the key.
pub fn node_auth_ops(data: &[u8]) {
    drive_with(data, true);
}

/// [`node_ops`], returning what the run reached.
pub fn drive(data: &[u8]) -> Tally {
    drive_with(data, false)
}

fn drive_with(data: &[u8], authenticated: bool) -> Tally {
    let mut inp = Input::new(data);
    let mut cfg = config();
    let keys = authenticated
        .then(|| Keyring::single(ClusterKey::new(vec![0x42; 32]).expect("a valid key")));
    if let Some(k) = &keys {
        let mut a = AuthConfig::new(k.clone());
        a.max_nonces = 8;
        a.max_clock_skew = Duration::from_secs(5);
        cfg.auth = Some(a);
    }
    let now = Instant::now();
    let identity = Identity::new(CLUSTER, SELF, 1, SocketAddr::from(([127, 0, 0, 1], 7000)));
    let mut node =
        Node::new(cfg.clone(), identity, now, inp.u64()).expect("the fuzz config is valid");
    node.set_wall_clock(now, WALL_MS);
    let mut run = Run {
        tally: Tally::default(),
        cfg,
        node,
        now,
        peers: vec![
            PeerModel {
                incarnation: 1,
                sent: [0, 0],
            };
            PEERS.len()
        ],
        pending: Vec::new(),
        tokens: Vec::new(),
        hold_events: false,
        cluster_header: ClusterId::of(CLUSTER).to_string(),
        keys,
        counter: 0,
        start: now,
    };
    run.drain();
    let mut ops = 0;
    while !inp.is_empty() && ops < 2048 {
        ops += 1;
        run.step(&mut inp);
        run.drain();
        run.check();
    }
    // The owner catches up at the end: everything queued comes out.
    run.hold_events = false;
    run.drain();
    run.tally.joined = run.node.is_joined();
    run.tally
}

impl Run {
    fn header(&self, peer: usize) -> Header {
        Header {
            cluster: ClusterId::of(CLUSTER),
            sender: MemberKey::of(PEERS[peer]),
            incarnation: self.peers[peer].incarnation,
        }
    }

    fn datagram(&mut self, bytes: Bytes) {
        let bytes = match &self.keys {
            Some(k) => {
                self.counter += 1;
                let wall = WALL_MS + (self.now - self.start).as_millis() as u64;
                wire::seal(&bytes, self.counter, wall, k)
            }
            None => bytes,
        };
        self.node.handle_datagram(self.now, peer_addr(0), bytes);
    }

    /// `resp` tagged for the request that carried `nonce`, in an authenticated run.
    fn tagged(&self, nonce: Option<u128>, mut resp: Response) -> Response {
        if let (Some(k), Some(n)) = (&self.keys, nonce) {
            auth::sign_response(k, n, &mut resp);
        }
        resp
    }

    /// One operation: its code, then its arguments as one length-prefixed chunk (so an
    /// operation reading fewer or more bytes than expected never shifts the ones after it).
    fn step(&mut self, stream: &mut Input<'_>) {
        let code = stream.u8() % op::COUNT;
        let mut args = Input::new(stream.bytes(usize::MAX));
        let inp = &mut args;
        match code {
            op::ADVANCE => {
                self.now += Duration::from_millis(u64::from(inp.u16() % 4000));
                self.node.handle_timeout(self.now);
            }
            op::TIMER => self.fire_timer(),
            op::RAW_DATAGRAM => {
                let b = Bytes::copy_from_slice(inp.bytes(4096));
                self.datagram(b);
            }
            op::HEARTBEAT => self.heartbeat(inp),
            op::MESSAGE => self.message(inp),
            op::FRAGMENT => self.fragment(inp),
            op::LEAVE => {
                let p = inp.below(PEERS.len());
                let b = wire::encode_leave(&self.header(p));
                self.datagram(b);
            }
            op::RAW_REQUEST => {
                let raw = inp.bytes(8192);
                if let Ok(Some((req, _))) = http::parse_request(raw, &self.cfg.http) {
                    self.serve(&req);
                }
            }
            op::GET => self.get(inp),
            op::SESSION_POST => self.session_post(inp),
            op::ANSWER => self.answer(inp),
            op::COMMAND => self.command(inp),
            _ => self.hold_events = inp.bool(),
        }
    }

    /// The runtime's timer: jump to the deadline, fire it, drain; the next deadline must lie
    /// in the future (a deadline already handled would make a runtime spin).
    fn fire_timer(&mut self) {
        let Some(t) = self.node.poll_timeout() else {
            return;
        };
        self.now = self.now.max(t);
        self.node.handle_timeout(self.now);
        self.drain();
        if !self.hold_events {
            if let Some(next) = self.node.poll_timeout() {
                assert!(
                    next > self.now,
                    "timer due again at once after handle_timeout"
                );
            }
        }
    }

    fn heartbeat(&mut self, inp: &mut Input<'_>) {
        let p = inp.below(PEERS.len());
        let flags = inp.u8();
        if flags & 1 != 0 {
            // The peer restarts: a new incarnation numbers its messages from 1 again.
            self.peers[p].incarnation += 1;
            self.peers[p].sent = [0, 0];
        }
        let mut last_seq = Vec::new();
        for c in Channel::ALL {
            let truth = self.peers[p].sent[c.index_for_fuzz()];
            let v = match inp.u8() {
                0..=199 => truth,
                200..=239 => truth + u64::from(inp.u8() % 4),
                240..=254 => inp.u64() % (wire::MAX_SEQ + 2),
                _ => continue,
            };
            last_seq.push((c, v));
        }
        let hb = Heartbeat {
            cluster_name: if flags & 2 != 0 { "other" } else { CLUSTER }.to_owned(),
            name: if flags & 4 != 0 {
                PEERS[(p + 1) % PEERS.len()]
            } else {
                PEERS[p]
            }
            .to_owned(),
            http_addr: peer_addr(p),
            host_id: format!("h{}", p % 2),
            load: u32::from(inp.u8()),
            interval_ms: 50 + u32::from(inp.u8()) * 4,
            joining: flags & 8 != 0,
            last_seq,
        };
        let mut header = self.header(p);
        if flags & 16 != 0 {
            header.sender = MemberKey::of(SELF);
        }
        let b = wire::encode_heartbeat(&header, &hb);
        self.datagram(b);
    }

    /// A peer's next message on one channel, fragmented like its sender would, with some
    /// fragments lost and the order possibly reversed.
    fn message(&mut self, inp: &mut Input<'_>) {
        let p = inp.below(PEERS.len());
        let channel = if inp.bool() {
            Channel::Log
        } else {
            Channel::State
        };
        let payload = match channel {
            Channel::State => {
                let mut changes = Vec::new();
                for _ in 0..1 + inp.below(3) {
                    let name = pick_name(inp);
                    changes.push(if inp.u8() < 200 {
                        NamingChange::Bind(name, inp.string(40))
                    } else {
                        NamingChange::Unbind(name)
                    });
                }
                codec::encode(&Announcement { changes })
            }
            Channel::Log => codec::encode(&Published {
                topic: inp.string(20),
                payload: Bytes::from(vec![inp.u8(); usize::from(inp.u16() % 2500)]),
            }),
        }
        .expect("bodies encode");
        let skip = u64::from(inp.u8() % 8).saturating_sub(5);
        let ci = channel.index_for_fuzz();
        let seq = self.peers[p].sent[ci] + 1 + skip;
        self.peers[p].sent[ci] = seq;
        let count = wire::fragment_count(payload.len(), self.cfg.fragment_payload()) as u32;
        let loss = inp.u8();
        let mut order: Vec<u32> = (0..count).collect();
        if loss & 0x80 != 0 {
            order.reverse();
        }
        let header = self.header(p);
        let mut packer = FragmentPacker::new(&header, self.cfg.max_datagram_size);
        for (n, index) in order.into_iter().enumerate() {
            if n < 7 && loss & (1 << n) != 0 {
                continue;
            }
            let Some((off, len)) = wire::fragment_span(payload.len() as u32, count, index) else {
                continue;
            };
            let data = &payload[off..off + len];
            if !packer.push(channel, seq, index, count, payload.len() as u32, data) {
                let full = std::mem::replace(
                    &mut packer,
                    FragmentPacker::new(&header, self.cfg.max_datagram_size),
                );
                if !full.is_empty() {
                    self.datagram(full.finish());
                }
                let pushed = packer.push(channel, seq, index, count, payload.len() as u32, data);
                assert!(pushed, "a fragment fits an empty datagram");
            }
        }
        if !packer.is_empty() {
            self.datagram(packer.finish());
        }
    }

    /// A fragments datagram of up to four records with fields the input picks.
    fn fragment(&mut self, inp: &mut Input<'_>) {
        let p = inp.below(PEERS.len());
        let header = self.header(p);
        let mut packer = FragmentPacker::new(&header, wire::MAX_UDP_PAYLOAD);
        for _ in 0..1 + inp.below(4) {
            let channel = if inp.bool() {
                Channel::Log
            } else {
                Channel::State
            };
            let sent = self.peers[p].sent[channel.index_for_fuzz()];
            let seq = match inp.u8() {
                0..=239 => (sent + u64::from(inp.u8() % 8)).saturating_sub(2).max(1),
                _ => 1 + inp.u64() % wire::MAX_SEQ,
            };
            let total_len = u32::from(inp.u16() % 4096);
            let count = 1 + u32::from(inp.u8() % 40);
            let index = u32::from(inp.u8()) % count;
            let Some((_, len)) = wire::fragment_span(total_len, count, index) else {
                continue;
            };
            let fill = inp.u8();
            packer.push(channel, seq, index, count, total_len, &vec![fill; len]);
        }
        if !packer.is_empty() {
            self.datagram(packer.finish());
        }
    }

    /// Serves a request and checks the response is a well-formed HTTP answer.
    fn serve(&mut self, req: &Request) -> Response {
        let mut signed;
        let req = match &self.keys {
            Some(k) => {
                self.counter += 1;
                signed = req.clone();
                let wall = WALL_MS + (self.now - self.start).as_millis() as u64;
                let host = self.node.identity().http_addr.to_string();
                auth::sign_request(k, &mut signed, &host, wall, u128::from(self.counter));
                &signed
            }
            None => req,
        };
        let resp = self.node.handle_http_request(self.now, req);
        if resp.status == 200 {
            self.tally.served_ok += 1;
        }
        let encoded = resp.encode();
        let limits = HttpLimits {
            max_body_bytes: self.cfg.http.max_body_bytes,
            ..HttpLimits::default()
        };
        match http::parse_response(&encoded, &limits) {
            Ok(Some((back, used))) => {
                assert_eq!(used, encoded.len());
                assert_eq!((back.status, &back.body), (resp.status, &resp.body));
            }
            other => panic!("the node's answer {resp:?} parses as {other:?}"),
        }
        resp
    }

    fn protocol_request(&self, inp: &mut Input<'_>, method: Method, path: &str) -> Request {
        let mut req = Request::get(path);
        req.method = method;
        match inp.u8() {
            0..=239 => req.headers.push((
                exchange::HEADER_CLUSTER.to_owned(),
                self.cluster_header.clone(),
            )),
            240..=247 => req.headers.push((
                exchange::HEADER_CLUSTER.to_owned(),
                ClusterId::of("other").to_string(),
            )),
            _ => {}
        }
        req.headers
            .push((exchange::HEADER_FROM.to_owned(), PEERS[0].to_owned()));
        req
    }

    fn get(&mut self, inp: &mut Input<'_>) {
        let path = match inp.u8() % 6 {
            0 => exchange::PATH_PROBE.to_owned(),
            1 => exchange::PATH_STATE.to_owned(),
            2 => {
                let from = u64::from(inp.u8() % 12);
                let to = from + u64::from(inp.u8() % 12);
                format!("{}?from={from}&to={to}", exchange::PATH_LOG)
            }
            3 => exchange::PATH_DUMP.to_owned(),
            4 => format!("{}{}", exchange::PATH_PREFIX, inp.string(16)),
            _ => format!("/{}", inp.string(24)),
        };
        let method = if inp.u8() < 240 {
            Method::Get
        } else {
            Method::Post
        };
        let req = self.protocol_request(inp, method, &path);
        let resp = self.serve(&req);
        if resp.status != 200 {
            return;
        }
        let max = self.cfg.http.max_body_bytes;
        assert!(resp.body.len() <= max);
        match req.path.as_str() {
            exchange::PATH_PROBE => {
                let r: ProbeReply = codec::decode(&resp.body, max).expect("probe reply decodes");
                assert_eq!(r.identity.name, SELF);
            }
            exchange::PATH_STATE => {
                let s: StateSnapshot = codec::decode(&resp.body, max).expect("snapshot decodes");
                assert!(s.offers.len() <= self.cfg.max_offers_per_member);
                assert!(
                    s.offers.windows(2).all(|w| w[0].0 < w[1].0),
                    "offers unsorted"
                );
            }
            exchange::PATH_LOG => {
                let r: LogRange = codec::decode(&resp.body, max).expect("log range decodes");
                assert!(r.messages.len() <= self.cfg.log_retention_messages);
                assert!(r.messages.windows(2).all(|w| w[1].0 == w[0].0 + 1), "{r:?}");
                assert!(r.messages.last().is_none_or(|m| m.0 <= r.last_seq), "{r:?}");
            }
            exchange::PATH_DUMP => {
                let d: ClusterDump = codec::decode(&resp.body, max).expect("dump decodes");
                assert_eq!(
                    d.members.first().map(|e| e.identity.name.as_str()),
                    Some(SELF)
                );
                assert!(d.members.len() <= self.cfg.max_members + 1);
            }
            _ => {}
        }
    }

    fn session_id(&self, inp: &mut Input<'_>) -> SessionId {
        match self.tokens.get(inp.below(self.tokens.len() + 2)) {
            Some(t) => t.id,
            None => SessionId(u128::from(inp.u8())),
        }
    }

    fn session_post(&mut self, inp: &mut Input<'_>) {
        let kind = inp.u8() % 4;
        let path = [
            exchange::PATH_SESSION_REPLICATE,
            exchange::PATH_SESSION_CLAIM,
            exchange::PATH_SESSION_RELEASE,
            "/hybridcast/v1/session/other",
        ][usize::from(kind)];
        let mut req = self.protocol_request(inp, Method::Post, path);
        let p = inp.below(PEERS.len());
        let id = self.session_id(inp);
        let epoch = epoch(inp);
        let body = match (inp.u8() % 4, kind) {
            (0, _) => Ok(inp.bytes(4096).to_vec()),
            (_, 0) => {
                let payload = if inp.bool() {
                    ReplicaPayload::Full(state(inp))
                } else {
                    ReplicaPayload::Delta {
                        base: u64::from(inp.u8() % 4),
                        changes: changes(inp),
                    }
                };
                codec::encode(&SessionReplicate {
                    id,
                    epoch,
                    primary: MemberKey::of(PEERS[p]),
                    assignment: u64::from(inp.u8() % 4),
                    primary_addr: peer_addr(p),
                    version: u64::from(inp.u8() % 6),
                    payload,
                })
            }
            (_, 1) => codec::encode(&SessionClaim {
                id,
                claimant: MemberKey::of(PEERS[p]),
                epoch,
                unreachable: (0..inp.below(3))
                    .map(|_| MemberKey::of(PEERS[inp.below(PEERS.len())]))
                    .collect(),
            }),
            _ => codec::encode(&SessionRelease {
                id,
                epoch,
                primary: MemberKey::of(PEERS[p]),
                assignment: u64::from(inp.u8() % 4),
            }),
        }
        .expect("bodies encode");
        req.body = Bytes::from(body);
        let resp = self.serve(&req);
        if resp.status == 200 {
            let max = self.cfg.http.max_body_bytes;
            match kind {
                0 => drop(codec::decode::<ReplicateReply>(&resp.body, max).expect("reply")),
                1 => drop(codec::decode::<ClaimReply>(&resp.body, max).expect("claim reply")),
                _ => assert!(resp.body.is_empty()),
            }
        }
    }

    /// Answers one of the node's requests: well-formed, failed, raw bytes or an error status.
    fn answer(&mut self, inp: &mut Input<'_>) {
        let mode = inp.u8() % 5;
        if mode == 4 || self.pending.is_empty() {
            // An answer to a request the node never made, or one it already gave up on.
            let id = RequestId(u64::from(inp.u8()));
            let resp = Response::error(500, "stale");
            self.node.handle_http_response(self.now, id, Ok(resp));
            return;
        }
        let PendingRequest {
            id,
            to,
            request,
            nonce,
        } = self.pending.remove(inp.below(self.pending.len()));
        let result = match mode {
            0 => Ok(self.well_formed_answer(inp, to, &request)),
            1 => Err(match inp.u8() % 4 {
                0 => RequestFailure::Connect("refused".to_owned()),
                1 => RequestFailure::Timeout,
                2 => RequestFailure::Io("reset".to_owned()),
                _ => RequestFailure::InvalidResponse("garbage".to_owned()),
            }),
            2 => match http::parse_response(inp.bytes(8192), &self.cfg.http) {
                Ok(Some((resp, _))) => Ok(resp),
                Ok(None) => Err(RequestFailure::Io("closed early".to_owned())),
                Err(e) => Err(RequestFailure::InvalidResponse(e.to_string())),
            },
            _ => {
                let status = [200, 400, 403, 404, 500, 507][inp.below(6)];
                let mut resp = Response::error(status, "fuzz");
                resp.body = Bytes::copy_from_slice(inp.bytes(512));
                Ok(resp)
            }
        };
        let result = result.map(|r| self.tagged(nonce, r));
        self.node.handle_http_response(self.now, id, result);
    }

    fn well_formed_answer(&self, inp: &mut Input<'_>, to: SocketAddr, req: &Request) -> Response {
        let p = (0..PEERS.len())
            .find(|&i| peer_addr(i) == to)
            .unwrap_or_else(|| inp.below(PEERS.len()));
        let peer = &self.peers[p];
        let identity = |i: usize| WireIdentity {
            name: PEERS[i].to_owned(),
            incarnation: self.peers[i].incarnation,
            http_addr: peer_addr(i),
            host_id: format!("h{}", i % 2),
            load: 1,
        };
        let body = match req.path.as_str() {
            exchange::PATH_PROBE => codec::encode(&ProbeReply {
                identity: identity(p),
            }),
            exchange::PATH_STATE => codec::encode(&StateSnapshot {
                incarnation: peer.incarnation,
                seq: peer.sent[0] + u64::from(inp.u8() % 2),
                offers: offers(inp),
            }),
            exchange::PATH_LOG => {
                let q = |k: &str| req.query_param(k).and_then(|v| v.parse::<u64>().ok());
                let (from, to) = (q("from").unwrap_or(1), q("to").unwrap_or(1));
                let last = peer.sent[1];
                let first_retained = from + u64::from(inp.u8() % 3);
                let messages = (first_retained..=to.min(last).min(first_retained + 4))
                    .map(|s| {
                        let m = Published {
                            topic: "t".to_owned(),
                            payload: Bytes::from(vec![s as u8; usize::from(inp.u8())]),
                        };
                        (s, Bytes::from(codec::encode(&m).expect("encodes")))
                    })
                    .collect();
                codec::encode(&LogRange {
                    incarnation: peer.incarnation,
                    first_retained,
                    last_seq: last,
                    messages,
                })
            }
            exchange::PATH_DUMP => {
                let mut members = Vec::new();
                for i in 0..1 + inp.below(PEERS.len()) {
                    let i = (p + i) % PEERS.len();
                    members.push(DumpEntry {
                        identity: identity(i),
                        state: inp.bool().then(|| (self.peers[i].sent[0], offers(inp))),
                        log_seq: inp.bool().then_some(self.peers[i].sent[1]),
                    });
                }
                codec::encode(&ClusterDump { members })
            }
            exchange::PATH_SESSION_REPLICATE => {
                let asked = codec::decode::<SessionReplicate>(&req.body, usize::MAX);
                let r = asked.expect("the node's replication decodes");
                codec::encode(&match inp.u8() % 5 {
                    0 | 1 => ReplicateReply::Ack { version: r.version },
                    2 => ReplicateReply::NeedFull,
                    3 => ReplicateReply::Superseded {
                        epoch: epoch(inp),
                        primary: MemberKey::of(PEERS[inp.below(PEERS.len())]),
                    },
                    _ => ReplicateReply::Refused,
                })
            }
            exchange::PATH_SESSION_CLAIM => {
                let asked = codec::decode::<SessionClaim>(&req.body, usize::MAX);
                let c = asked.expect("the node's claim decodes");
                codec::encode(&match inp.u8() % 6 {
                    0 | 1 => ClaimReply::Copy {
                        serve_epoch: c.epoch + 1 + u64::from(inp.u8() % 2),
                        primary: MemberKey::of(PEERS[p]),
                        version: u64::from(inp.u8() % 5),
                        state: state(inp),
                    },
                    2 => ClaimReply::Moved {
                        epoch: epoch(inp),
                        primary: MemberKey::of(PEERS[inp.below(PEERS.len())]),
                        copy: inp.bool(),
                    },
                    3 => ClaimReply::TimedOut,
                    4 => ClaimReply::Unknown,
                    _ => ClaimReply::Busy,
                })
            }
            _ => Ok(Vec::new()),
        }
        .expect("answers encode");
        Response::ok(exchange::CONTENT_TYPE, Bytes::from(body))
    }

    fn token(&self, inp: &mut Input<'_>) -> SessionToken {
        match self.tokens.get(inp.below(self.tokens.len() + 1)) {
            Some(t) if inp.u8() < 200 => *t,
            other => {
                let pick = |inp: &mut Input<'_>| MemberKey::of(PEERS[inp.below(PEERS.len())]);
                SessionToken {
                    id: other.map_or(SessionId(u128::from(inp.u8())), |t| t.id),
                    epoch: epoch(inp),
                    primary: pick(inp),
                    secondary: inp.bool().then(|| pick(inp)),
                }
            }
        }
    }

    fn keep_token(&mut self, t: SessionToken) {
        self.tokens.retain(|k| k.id != t.id);
        if self.tokens.len() >= 6 {
            self.tokens.remove(0);
        }
        self.tokens.push(t);
    }

    fn command(&mut self, inp: &mut Input<'_>) {
        let now = self.now;
        match inp.u8() % 15 {
            0 => {
                let name = pick_name(inp);
                let _ = self.node.bind(&name, &inp.string(40));
            }
            1 => {
                let _ = self.node.unbind(&pick_name(inp));
            }
            2 => {
                let topic = inp.string(20);
                let payload = vec![inp.u8(); usize::from(inp.u16() % 2600)];
                let _ = self.node.publish(&topic, payload);
            }
            3 => self.node.set_load(u32::from(inp.u8())),
            4 => {
                if let Ok(t) = self.node.session_create(now) {
                    self.keep_token(t);
                }
            }
            5 => {
                let id = self.session_id(inp);
                let (pool, key) = (pick_name(inp), pick_name(inp));
                let _ = self.node.session_put(now, id, &pool, &key, value(inp));
            }
            6 => {
                let id = self.session_id(inp);
                let (pool, key) = (pick_name(inp), pick_name(inp));
                let _ = self.node.session_remove(now, id, &pool, &key);
            }
            7 => {
                let id = self.session_id(inp);
                if let Ok(t) = self.node.session_commit(now, id) {
                    self.keep_token(t);
                }
            }
            8 => {
                let t = self.token(inp);
                if let Ok(
                    hybridcast_core::Resume::Ready(t) | hybridcast_core::Resume::FailedOver(t),
                ) = self.node.session_resume(now, t)
                {
                    self.keep_token(t);
                }
            }
            9 => {
                let id = self.session_id(inp);
                let _ = self.node.session_end(now, id);
            }
            10 => {
                let name = pick_name(inp);
                let key = inp.bytes(8);
                let strategy = match inp.u8() % 5 {
                    0 => Strategy::RoundRobin,
                    1 => Strategy::Random,
                    2 => Strategy::WeightByLoad,
                    3 => Strategy::PreferLocal,
                    _ => Strategy::Affinity(key),
                };
                let _ = self.node.select(now, &name, strategy);
            }
            11 => {
                let p = inp.below(PEERS.len());
                self.node.report_failed(now, MemberKey::of(PEERS[p]));
            }
            12 => {
                if let Ok(t) = inp.string(96).parse::<SessionToken>() {
                    let _ = self.node.session_resume(now, t);
                }
            }
            13 => {
                // Rare on purpose: a node that left ignores everything after.
                if inp.u8() == 0xa5 {
                    self.node.leave();
                }
            }
            _ => {
                let id = self.session_id(inp);
                let _ = self.node.session(id);
                let _ = self.node.session_state(id);
                let _ = self.node.session_replica(id);
            }
        }
    }

    /// Drains transmits (always) and events (unless held), checking what comes out.
    fn drain(&mut self) {
        let key = self.node.key();
        let mut n = 0;
        while let Some(t) = self.node.poll_transmit() {
            n += 1;
            assert!(n <= DRAIN_LIMIT, "poll_transmit does not run dry");
            match t {
                Transmit::Group(d) => {
                    assert!(
                        d.len() <= self.cfg.max_datagram_size,
                        "datagram of {}",
                        d.len()
                    );
                    let decoded = match &self.keys {
                        Some(k) => {
                            wire::open(&d, k)
                                .expect("the node's datagrams open")
                                .datagram
                        }
                        None => wire::decode(&d).expect("the node's datagrams decode"),
                    };
                    assert_eq!(decoded.header.cluster, ClusterId::of(CLUSTER));
                    assert_eq!(decoded.header.sender, key);
                }
                Transmit::Request { id, to, request } => {
                    let limits = HttpLimits {
                        max_body_bytes: self.cfg.max_request_body(),
                        ..self.cfg.http
                    };
                    let (req, used) = match http::parse_request(&request, &limits) {
                        Ok(Some(r)) => r,
                        other => panic!("the node's request parses as {other:?}"),
                    };
                    assert_eq!(used, request.len());
                    assert!(req.path.starts_with(exchange::PATH_PREFIX), "{req:?}");
                    assert_eq!(
                        req.header(exchange::HEADER_CLUSTER),
                        Some(self.cluster_header.as_str())
                    );
                    self.tally.requests += 1;
                    if self.pending.len() >= KEEP_PENDING {
                        self.pending.remove(0);
                    }
                    let nonce = self.keys.as_ref().map(|k| {
                        auth::verify_request(k, &req)
                            .expect("the node's requests carry valid credentials")
                            .1
                    });
                    self.pending.push(PendingRequest {
                        id,
                        to,
                        request: req,
                        nonce,
                    });
                }
            }
        }
        if self.hold_events {
            return;
        }
        let mut n = 0;
        while let Some(e) = self.node.poll_event() {
            n += 1;
            assert!(n <= self.event_bound(), "{n} events queued");
            self.check_event(&e);
            match e {
                Event::Message { .. } => self.tally.messages += 1,
                Event::Bound { .. } => self.tally.bound += 1,
                Event::MemberJoined { .. } => self.tally.member_joined += 1,
                Event::SessionFailover { .. }
                | Event::SessionExpired { .. }
                | Event::SessionSuperseded { .. }
                | Event::SessionReplicated { .. } => self.tally.session_events += 1,
                _ => {}
            }
        }
    }

    /// Most events that can be queued: `max_queued_events` membership events, and deliveries
    /// up to the backlog mark plus what one input can still add past it (one datagram's
    /// fragments and the messages they release, one dump's offers, one answer's messages).
    fn event_bound(&self) -> usize {
        let c = &self.cfg;
        2 * c.max_queued_events
            + wire::MAX_UDP_PAYLOAD / wire::FRAGMENT_OVERHEAD
            + c.max_members * c.max_cached_messages_per_sender * 2
            + (c.max_members + 1) * c.max_offers_per_member * 2
            + c.http.max_body_bytes
    }

    fn check_event(&self, e: &Event) {
        let key = self.node.key();
        match e {
            Event::Message {
                member, payload, ..
            } => {
                assert_ne!(*member, key, "own message delivered");
                assert!(payload.len() <= self.cfg.max_message_size);
            }
            Event::Gap { range, .. } => assert!(range.start() <= range.end(), "{e:?}"),
            Event::SessionFailover { token, state, .. } => {
                assert_eq!(token.primary, key, "{e:?}");
                assert!(state.bytes() <= self.cfg.max_session_bytes, "{e:?}");
            }
            _ => {}
        }
    }

    fn check(&self) {
        let c = &self.cfg;
        let cached = self.node.cached_bytes();
        assert!(cached <= c.max_cached_bytes_total, "{cached} cached bytes");
        let members = self.node.members().count();
        assert!(members <= c.max_members, "{members} members");
        let keys = c.max_members.max(PEERS.len() + 1);
        let requests = 3 * keys + 1 + c.max_replications_in_flight + 2 * c.max_sessions;
        let in_flight = self.node.requests_in_flight();
        assert!(in_flight <= requests, "{in_flight} requests in flight");
        let stats = self.node.stats();
        let sessions = stats.sessions_primary + stats.sessions_replica;
        assert!(
            sessions <= c.max_sessions as u64,
            "{sessions} sessions held"
        );
        for id in self.node.session_ids() {
            if let Some(s) = self.node.session_state(id) {
                assert!(s.bytes() <= c.max_session_bytes, "session of {}", s.bytes());
            }
        }
        let mut offers = std::collections::BTreeMap::<MemberKey, usize>::new();
        for pool in self.node.registry().view().values() {
            for member in pool.keys() {
                *offers.entry(*member).or_default() += 1;
            }
        }
        for (m, n) in offers {
            assert!(n <= c.max_offers_per_member, "{m:?} offers {n}");
        }
        #[cfg(fuzzing)]
        self.node.check_consistency();
    }
}

fn pick_name(inp: &mut Input<'_>) -> String {
    let i = inp.below(NAMES.len() + 1);
    match NAMES.get(i) {
        Some(n) => (*n).to_owned(),
        None => inp.string(20),
    }
}

fn epoch(inp: &mut Input<'_>) -> u64 {
    match inp.u8() {
        0..=249 => u64::from(inp.u8() % 6),
        _ => inp.u64() % (MAX_EPOCH + 2),
    }
}

fn value(inp: &mut Input<'_>) -> Value {
    if inp.bool() {
        Value::Ref(LogicalRef::new(pick_name(inp), inp.bytes(64).to_vec()))
    } else {
        Value::raw(inp.bytes(600).to_vec())
    }
}

fn changes(inp: &mut Input<'_>) -> Vec<Change> {
    (0..inp.below(4))
        .map(|_| {
            let (pool, key) = (pick_name(inp), pick_name(inp));
            if inp.u8() < 200 {
                Change::Put {
                    pool,
                    key,
                    value: value(inp),
                }
            } else {
                Change::Remove { pool, key }
            }
        })
        .collect()
}

fn state(inp: &mut Input<'_>) -> SessionState {
    let mut s = SessionState::default();
    for c in changes(inp) {
        s.apply(c);
    }
    s
}

fn offers(inp: &mut Input<'_>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = (0..inp.below(4))
        .map(|_| (pick_name(inp), inp.string(30)))
        .collect();
    v.sort();
    v.dedup_by(|a, b| a.0 == b.0);
    v
}

/// Index of a channel in the harness's per-channel arrays.
trait FuzzIndex {
    fn index_for_fuzz(self) -> usize;
}

impl FuzzIndex for Channel {
    fn index_for_fuzz(self) -> usize {
        match self {
            Channel::State => 0,
            Channel::Log => 1,
        }
    }
}

/// Seed streams: a peer joins and sends state and log messages, the node joins through a
/// dump, serves every GET path, runs a session with a secondary, answers and fails requests.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    /// One operation with its argument chunk.
    fn op(s: Script, code: u8, args: Script) -> Script {
        s.u8(code).bytes(&args.finish())
    }
    let a = Script::new;
    let start = || Script::new().u64(42);
    // peer, flags, state and log last_seq truthful, load, interval.
    let heartbeat = |s, peer: u8| {
        op(
            s,
            op::HEARTBEAT,
            a().u8(peer).u8(0).u8(0).u8(0).u8(1).u8(12),
        )
    };
    let timer = |s: Script, n: usize| (0..n).fold(s, |s, _| op(s, op::TIMER, a()));
    // Answers the oldest request with a well-formed body (all other choices zero).
    let answer_ok = |s| op(s, op::ANSWER, a().u8(0).u8(0));
    let mut out = Vec::new();

    // Two peers, a join through a dump, a bind, messages on both channels.
    let mut s = heartbeat(start(), 0);
    s = heartbeat(s, 1);
    s = timer(s, 3);
    s = answer_ok(s);
    s = op(s, op::COMMAND, a().u8(0).u8(0).bytes(b"127.0.0.1:80"));
    // Peer 0, state channel, one change: bind "b" to "v1"; no skip, no loss.
    let bind = a().u8(0).u8(0).u8(0).u8(1).u8(0).bytes(b"v1").u8(5).u8(0);
    s = op(s, op::MESSAGE, bind);
    // Peer 1, log channel, topic, 700 bytes of 7; no skip, no loss.
    let publish = a().u8(1).u8(1).bytes(b"topic").u8(7).u16(700).u8(5).u8(0);
    s = op(s, op::MESSAGE, publish);
    s = timer(s, 4);
    out.push(("join_and_messages".to_owned(), s.finish()));

    // Loss: a message with a lost fragment, a later one, recovery asked and answered.
    let mut s = heartbeat(start(), 2);
    s = timer(s, 3);
    s = answer_ok(s);
    let lossy = a()
        .u8(2)
        .u8(1)
        .bytes(b"t")
        .u8(1)
        .u16(900)
        .u8(5)
        .u8(0b0000_0010);
    s = op(s, op::MESSAGE, lossy);
    s = op(
        s,
        op::MESSAGE,
        a().u8(2).u8(1).bytes(b"t").u8(2).u16(10).u8(5).u8(0),
    );
    s = heartbeat(s, 2);
    s = timer(s, 3);
    s = answer_ok(s);
    s = timer(s, 2);
    out.push(("log_loss_and_recovery".to_owned(), s.finish()));

    // Every GET path, a raw request, a foreign cluster.
    let mut s = start();
    for path in 0..6u8 {
        s = op(s, op::GET, a().u8(path).u8(1).u8(3).bytes(b"x").u8(0).u8(0));
    }
    let mut raw = Request::get(exchange::PATH_PROBE);
    let cluster = ClusterId::of(CLUSTER).to_string();
    raw.headers
        .push((exchange::HEADER_CLUSTER.to_owned(), cluster));
    let raw = raw.encode("127.0.0.1:7000");
    s = op(s, op::RAW_REQUEST, a().bytes(&raw));
    s = op(s, op::GET, a().u8(0).u8(0).u8(245));
    out.push(("serve_gets".to_owned(), s.finish()));

    // Sessions: a peer so a secondary exists; create, put, commit; the replication answered;
    // a replication and a claim served; a resume, an end.
    let mut s = heartbeat(start(), 3);
    s = timer(s, 3);
    s = answer_ok(s);
    s = op(s, op::COMMAND, a().u8(4));
    // First token, pool "a", key "b", raw value.
    s = op(
        s,
        op::COMMAND,
        a().u8(5).u8(0).u8(0).u8(1).u8(0).bytes(b"cart"),
    );
    s = op(s, op::COMMAND, a().u8(7).u8(0));
    s = answer_ok(s);
    // Replicate: cluster header, peer 3, a fresh id, epoch 2, built body, full state with one
    // change (put a/a raw "v"), assignment 0, version 1.
    let full = a()
        .u8(0)
        .u8(0)
        .u8(3)
        .u8(9)
        .u8(1)
        .u8(0)
        .u8(2)
        .u8(1)
        .u8(1)
        .u8(1);
    let full = full.u8(0).u8(0).u8(0).u8(0).bytes(b"v").u8(0).u8(1);
    s = op(s, op::SESSION_POST, full);
    // Claim of the same id by peer 3 at epoch 3.
    let claim = a().u8(1).u8(0).u8(3).u8(9).u8(1).u8(0).u8(3).u8(1).u8(0);
    s = op(s, op::SESSION_POST, claim);
    s = op(s, op::COMMAND, a().u8(8).u8(0).u8(0));
    s = op(s, op::ADVANCE, a().u16(300));
    s = op(s, op::COMMAND, a().u8(9).u8(0));
    s = timer(s, 3);
    out.push(("sessions".to_owned(), s.finish()));

    // Raw inputs: a garbage datagram, a leave, failed and raw answers, events held.
    let mut s = heartbeat(start(), 4);
    s = timer(s, 3);
    s = op(s, op::ANSWER, a().u8(1).u8(0).u8(1));
    s = op(s, op::RAW_DATAGRAM, a().bytes(b"HYBC\x01\x02garbage"));
    s = op(s, op::HOLD, a().u8(1));
    s = heartbeat(s, 5);
    s = op(s, op::LEAVE, a().u8(4));
    let resp = Response::ok(exchange::CONTENT_TYPE, Bytes::from_static(b"\x00")).encode();
    s = timer(s, 3);
    s = op(s, op::ANSWER, a().u8(2).u8(0).bytes(&resp));
    s = op(s, op::HOLD, a().u8(0));
    let frag = a().u8(5).u8(1).u8(3).u8(0).u16(100).u8(1).u8(0).u8(7);
    s = op(s, op::FRAGMENT, frag);
    s = timer(s, 5);
    out.push(("raw_and_leave".to_owned(), s.finish()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Tally {
        seed_with(name, false)
    }

    fn seed_with(name: &str, authenticated: bool) -> Tally {
        let all = seeds();
        let (_, data) = all.iter().find(|(n, _)| n == name).expect("seed exists");
        drive_with(data, authenticated)
    }

    #[test]
    fn seeds_reach_the_protocol_in_an_authenticated_cluster_too() {
        let t = seed_with("join_and_messages", true);
        assert!(t.joined && t.member_joined >= 2, "{t:?}");
        assert!(t.messages >= 1 && t.bound >= 2, "{t:?}");
        let t = seed_with("log_loss_and_recovery", true);
        assert!(t.joined && t.messages >= 2 && t.requests >= 2, "{t:?}");
        let t = seed_with("serve_gets", true);
        assert!(t.served_ok >= 5, "{t:?}");
        let t = seed_with("sessions", true);
        assert!(t.session_events >= 1 && t.served_ok >= 2, "{t:?}");
    }

    #[test]
    fn seeds_reach_the_protocol() {
        let t = seed("join_and_messages");
        assert!(t.joined && t.member_joined >= 2, "{t:?}");
        assert!(t.messages >= 1 && t.bound >= 2, "{t:?}");
        let t = seed("log_loss_and_recovery");
        assert!(t.joined && t.messages >= 2 && t.requests >= 2, "{t:?}");
        let t = seed("serve_gets");
        assert!(t.served_ok >= 5, "{t:?}");
        let t = seed("sessions");
        assert!(t.session_events >= 1 && t.served_ok >= 2, "{t:?}");
    }
}
