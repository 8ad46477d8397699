//! The seed corpus: small valid inputs for every target, made with the real encoders.
//!
//! `fuzz/corpus/<target>/` holds exactly these files; the `fuzz_corpus` test checks that and
//! rewrites them when run with `HYBRIDCAST_WRITE_SEEDS=1`.

use super::http::request_bytes;
use super::{node, receiver};
use bytes::Bytes;
use hybridcast_core::codec;
use hybridcast_core::exchange::{
    self, Announcement, ClaimReply, ClusterDump, DumpEntry, LogRange, NamingChange, ProbeReply,
    Published, ReplicaPayload, ReplicateReply, SessionClaim, SessionRelease, SessionReplicate,
    StateSnapshot, WireIdentity,
};
use hybridcast_core::http::{HttpError, Method, Request, Response};
use hybridcast_core::ids::{Channel, ClusterId, MemberKey};
use hybridcast_core::session::Change;
use hybridcast_core::wire::{self, FragmentPacker, Header, Heartbeat};
use hybridcast_core::{LogicalRef, SessionId, SessionState, SessionToken, Value};
use serde::Serialize;

/// Seeds of one target, by file name.
type Named = Vec<(String, Vec<u8>)>;

fn header() -> Header {
    Header {
        cluster: ClusterId::of("fz"),
        sender: MemberKey::of("p/0"),
        incarnation: 3,
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    codec::encode(v).expect("seed bodies encode")
}

fn named(name: &str, bytes: Vec<u8>) -> (String, Vec<u8>) {
    (name.to_owned(), bytes)
}

fn identity(name: &str) -> WireIdentity {
    WireIdentity {
        name: name.to_owned(),
        incarnation: 2,
        http_addr: "127.0.0.1:9000".parse().expect("address"),
        host_id: "h0".to_owned(),
        load: 4,
    }
}

fn datagrams() -> Vec<(String, Vec<u8>)> {
    let hb = Heartbeat {
        cluster_name: "fz".to_owned(),
        name: "p/0".to_owned(),
        http_addr: "127.0.0.1:9000".parse().expect("address"),
        host_id: "h0".to_owned(),
        load: 2,
        interval_ms: 100,
        joining: false,
        last_seq: vec![(Channel::State, 4), (Channel::Log, 9)],
    };
    let hb6 = Heartbeat {
        http_addr: "[::1]:9001".parse().expect("address"),
        joining: true,
        last_seq: Vec::new(),
        ..hb.clone()
    };
    let mut one = FragmentPacker::new(&header(), 1400);
    one.push(Channel::Log, 1, 0, 1, 5, b"hello");
    let mut many = FragmentPacker::new(&header(), 1400);
    let msg = enc(&Announcement {
        changes: vec![NamingChange::Bind("svc".into(), "127.0.0.1:80".into())],
    });
    many.push(Channel::State, 1, 0, 1, msg.len() as u32, &msg);
    let big = vec![7u8; 300];
    for index in 0..3 {
        let (off, len) = wire::fragment_span(300, 3, index).expect("span");
        many.push(Channel::Log, 2, index, 3, 300, &big[off..off + len]);
    }
    vec![
        named("heartbeat", wire::encode_heartbeat(&header(), &hb).to_vec()),
        named(
            "heartbeat_v6",
            wire::encode_heartbeat(&header(), &hb6).to_vec(),
        ),
        named("leave", wire::encode_leave(&header()).to_vec()),
        named("fragments_one", one.finish().to_vec()),
        named("fragments_many", many.finish().to_vec()),
    ]
}

fn bodies() -> Vec<(String, Vec<u8>)> {
    let offers = vec![
        ("a".to_owned(), "1".to_owned()),
        ("b".to_owned(), "2".to_owned()),
    ];
    let dump = ClusterDump {
        members: vec![
            DumpEntry {
                identity: identity("self/0"),
                state: Some((3, offers.clone())),
                log_seq: Some(7),
            },
            DumpEntry {
                identity: identity("p/1"),
                state: None,
                log_seq: None,
            },
        ],
    };
    let published = Published {
        topic: "news".into(),
        payload: Bytes::from_static(b"payload"),
    };
    vec![
        named("dump", enc(&dump)),
        named(
            "probe_reply",
            enc(&ProbeReply {
                identity: identity("p/0"),
            }),
        ),
        named(
            "snapshot",
            enc(&StateSnapshot {
                incarnation: 2,
                seq: 5,
                offers,
            }),
        ),
        named(
            "log_range",
            enc(&LogRange {
                incarnation: 2,
                first_retained: 3,
                last_seq: 5,
                messages: vec![(3, Bytes::from(enc(&published))), (4, Bytes::new())],
            }),
        ),
        named(
            "announcement",
            enc(&Announcement {
                changes: vec![
                    NamingChange::Bind("svc".into(), "v".into()),
                    NamingChange::Unbind("old".into()),
                ],
            }),
        ),
        named("published", enc(&published)),
    ]
}

fn session_state() -> SessionState {
    let mut s = SessionState::default();
    for c in session_changes() {
        s.apply(c);
    }
    s
}

fn session_changes() -> Vec<Change> {
    vec![
        Change::Put {
            pool: "global".into(),
            key: "user".into(),
            value: Value::raw(&b"ann"[..]),
        },
        Change::Put {
            pool: "application/cart".into(),
            key: "item".into(),
            value: Value::Ref(LogicalRef::page("shoes", 20, 2)),
        },
        Change::Remove {
            pool: "global".into(),
            key: "draft".into(),
        },
    ]
}

fn sessions() -> Vec<(String, Vec<u8>)> {
    let id = SessionId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
    let (a, b) = (MemberKey::of("p/0"), MemberKey::of("p/1"));
    let replicate = |payload| SessionReplicate {
        id,
        epoch: 2,
        primary: a,
        assignment: 1,
        primary_addr: "127.0.0.1:9000".parse().expect("address"),
        version: 4,
        payload,
    };
    let token = SessionToken {
        id,
        epoch: 2,
        primary: a,
        secondary: Some(b),
    };
    let lone = SessionToken {
        secondary: None,
        ..token
    };
    vec![
        named(
            "replicate_full",
            enc(&replicate(ReplicaPayload::Full(session_state()))),
        ),
        named(
            "replicate_delta",
            enc(&replicate(ReplicaPayload::Delta {
                base: 3,
                changes: session_changes(),
            })),
        ),
        named("reply_ack", enc(&ReplicateReply::Ack { version: 4 })),
        named(
            "reply_superseded",
            enc(&ReplicateReply::Superseded {
                epoch: 3,
                primary: b,
            }),
        ),
        named(
            "claim",
            enc(&SessionClaim {
                id,
                claimant: b,
                epoch: 2,
                unreachable: vec![a],
            }),
        ),
        named(
            "claim_copy",
            enc(&ClaimReply::Copy {
                serve_epoch: 3,
                primary: a,
                version: 4,
                state: session_state(),
            }),
        ),
        named(
            "claim_moved",
            enc(&ClaimReply::Moved {
                epoch: 3,
                primary: b,
                copy: true,
            }),
        ),
        named(
            "release",
            enc(&SessionRelease {
                id,
                epoch: 3,
                primary: b,
                assignment: 0,
            }),
        ),
        named("state", enc(&session_state())),
        named("token", token.to_string().into_bytes()),
        named("token_no_secondary", lone.to_string().into_bytes()),
    ]
}

/// The three limit bytes `fuzz::http` reads first: defaults, except a small body limit.
const LIMITS: [u8; 3] = [255, 255, 255];

fn http_requests() -> Vec<(String, Vec<u8>)> {
    let with = |mut req: Request| {
        req.headers.push((
            exchange::HEADER_CLUSTER.into(),
            ClusterId::of("fz").to_string(),
        ));
        req
    };
    let mut post = with(Request::get(exchange::PATH_SESSION_CLAIM));
    post.method = Method::Post;
    post.body = Bytes::from_static(b"\x01\x02\x03");
    let log = with(Request::get("/hybridcast/v1/channel/log?from=3&to=9"));
    let odd = Request::get("/a%20b/c?x=1+2&y=%C3%A9&flag");
    let mut pipelined = request_bytes(&with(Request::get(exchange::PATH_PROBE)));
    pipelined.extend_from_slice(&request_bytes(&log));
    let mut out = vec![
        named(
            "probe",
            request_bytes(&with(Request::get(exchange::PATH_PROBE))),
        ),
        named("log", request_bytes(&log)),
        named("session_post", request_bytes(&post)),
        named("odd_path", request_bytes(&odd)),
        named("pipelined", pipelined),
        named(
            "http10_keepalive",
            b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        ),
    ];
    for (_, v) in &mut out {
        v.splice(0..0, LIMITS);
    }
    out.push(named(
        "small_limits",
        [
            &[40u8, 4, 2][..],
            b"POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
        ]
        .concat(),
    ));
    out
}

fn http_responses() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        named(
            "ok_bincode",
            Response::ok(exchange::CONTENT_TYPE, enc(&ReplicateReply::NeedFull)).encode(),
        ),
        named("error_404", Response::error(404, "unknown path").encode()),
        named(
            "error_close",
            HttpError::HeadersTooLarge { limit: 8192 }
                .to_response()
                .encode(),
        ),
        named("no_content", b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        named(
            "http10",
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
        ),
    ];
    for (_, v) in &mut out {
        v.splice(0..0, LIMITS);
    }
    out
}

/// Every seed: `(target, file name, bytes)`.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let sets: [(&'static str, Named); 10] = [
        ("datagram_decode", datagrams()),
        ("receiver_ops", receiver::seeds()),
        ("node_ops", node::seeds()),
        ("node_auth_ops", node::seeds()),
        ("http_request", http_requests()),
        ("http_response", http_responses()),
        ("state_dump_decode", bodies()),
        ("session_decode", sessions()),
        ("hub_frames", super::hub::frame_seeds()),
        ("hub_ops", super::hub::seeds()),
    ];
    let mut out = Vec::new();
    for (target, seeds) in sets {
        for (name, bytes) in seeds {
            out.push((target, name, bytes));
        }
    }
    out
}
