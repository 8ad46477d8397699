//! Decoder targets: the datagram codec, the point-to-point bodies and the session bodies.
//!
//! Each decodes the input as it comes; whatever decodes must encode again and decode to the
//! same value, and an encoding is never longer than the input it came from (the encoders
//! write the shortest form, the decoders accept no padding).

use super::input::Input;
use bytes::Bytes;
use hybridcast_core::codec::{self, CodecError};
use hybridcast_core::exchange::{
    Announcement, ClaimReply, ClusterDump, LogRange, ProbeReply, Published, ReplicaPayload,
    ReplicateReply, SessionClaim, SessionRelease, SessionReplicate, StateSnapshot,
};
use hybridcast_core::ids::{Channel, ClusterId, MemberKey};
use hybridcast_core::session::MAX_TOKEN_LEN;
use hybridcast_core::wire::{
    self, Body, Datagram, FragmentPacker, Header, Heartbeat, MAX_HEARTBEAT_CHANNELS, MAX_SEQ,
    MAX_UDP_PAYLOAD, MAX_WIRE_STRING, WireError,
};
use hybridcast_core::{ClusterKey, Keyring, SessionState, SessionToken};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::net::SocketAddr;

/// Limit the body targets decode with (the inputs libFuzzer makes are far shorter).
const BODY_LIMIT: usize = 1 << 20;

/// Re-encodes a decoded datagram with the real encoders.
fn encode_datagram(d: &Datagram) -> Option<Bytes> {
    match &d.body {
        Body::Heartbeat(hb) => Some(wire::encode_heartbeat(&d.header, hb)),
        Body::Leave => Some(wire::encode_leave(&d.header)),
        Body::Fragments(frags) => {
            let mut p = FragmentPacker::new(&d.header, MAX_UDP_PAYLOAD);
            for f in frags {
                let pushed = p.push(f.channel, f.seq, f.index, f.count, f.total_len, &f.data);
                if !pushed {
                    // Only a datagram above the UDP limit can hold more than the packer takes.
                    return None;
                }
            }
            Some(p.finish())
        }
    }
}

/// `wire::decode` on arbitrary bytes, then the round trip through the encoders; then a datagram
/// built from fields the input chooses must decode to exactly what was encoded.
pub fn datagram_decode(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(d) = wire::decode(&bytes) {
        let (header, _) = wire::decode_header(data).expect("a decoded datagram has a header");
        assert_eq!(header, d.header);
        if let Body::Fragments(frags) = &d.body {
            assert!(!frags.is_empty(), "a fragments datagram carries a record");
            for f in frags {
                assert!(f.seq >= 1 && f.seq <= MAX_SEQ, "seq {} accepted", f.seq);
                let span = wire::fragment_span(f.total_len, f.count, f.index);
                assert_eq!(span.map(|s| s.1), Some(f.data.len()), "{f:?}");
            }
            let data_len: usize = frags.iter().map(|f| f.data.len()).sum();
            assert!(data_len <= data.len());
        }
        match encode_datagram(&d) {
            Some(again) => {
                assert!(again.len() <= data.len(), "encoding grew: {d:?}");
                if !matches!(d.body, Body::Heartbeat(_)) {
                    // Only heartbeats may skip something (channels of a later version).
                    assert_eq!(&again[..], data, "not the canonical encoding: {d:?}");
                }
                assert_eq!(wire::decode(&again).as_ref(), Ok(&d), "round trip");
                // Sealed, it opens to the same datagram under the key and no other, and
                // plain decoding refuses it.
                let sealed = wire::seal(&again, 7, 11, &fuzz_keys(1));
                let opened = wire::open(&sealed, &fuzz_keys(1)).expect("a sealed datagram opens");
                assert_eq!(
                    (&opened.datagram, opened.counter, opened.stamp_ms),
                    (&d, 7, 11)
                );
                assert_eq!(wire::open(&sealed, &fuzz_keys(2)), Err(WireError::BadTag));
                assert!(wire::decode(&sealed).is_err());
            }
            None => assert!(data.len() > MAX_UDP_PAYLOAD),
        }
    }
    // The same bytes as an authenticated datagram: whatever they hold, opening never panics
    // and never reads outside them.
    let _ = wire::open(&bytes, &fuzz_keys(1));
    built_datagram_round_trip(&mut Input::new(data));
}

/// A keyring of one fixed key, for sealing and opening in the harness.
fn fuzz_keys(b: u8) -> Keyring {
    Keyring::single(ClusterKey::new(vec![b; 32]).expect("a valid key"))
}

/// A string of at most `MAX_WIRE_STRING` bytes (what `Identity::validate` allows).
fn wire_string(inp: &mut Input<'_>) -> String {
    let mut s = inp.string(MAX_WIRE_STRING);
    while s.len() > MAX_WIRE_STRING {
        s.pop();
    }
    s
}

fn built_datagram_round_trip(inp: &mut Input<'_>) {
    let header = Header {
        cluster: ClusterId(inp.u64()),
        sender: MemberKey(inp.u64()),
        incarnation: inp.u64(),
    };
    let d = match inp.below(3) {
        0 => {
            let ip = if inp.bool() {
                std::net::IpAddr::from(inp.u32().to_le_bytes())
            } else {
                let mut a = [0u8; 16];
                a[..8].copy_from_slice(&inp.u64().to_le_bytes());
                std::net::IpAddr::from(a)
            };
            let mut last_seq = Vec::new();
            for c in Channel::ALL {
                if inp.bool() {
                    last_seq.push((c, inp.u64() % (MAX_SEQ + 1)));
                }
            }
            assert!(last_seq.len() <= MAX_HEARTBEAT_CHANNELS);
            Datagram {
                header,
                body: Body::Heartbeat(Heartbeat {
                    cluster_name: wire_string(inp),
                    name: wire_string(inp),
                    http_addr: SocketAddr::new(ip, inp.u16()),
                    host_id: wire_string(inp),
                    load: inp.u32(),
                    interval_ms: inp.u32(),
                    joining: inp.bool(),
                    last_seq,
                }),
            }
        }
        1 => Datagram {
            header,
            body: Body::Leave,
        },
        _ => {
            let mut frags = Vec::new();
            for _ in 0..1 + inp.below(4) {
                let total_len = u32::from(inp.u16() % 2048);
                let count = 1 + u32::from(inp.u8() % 16);
                let index = u32::from(inp.u8()) % count;
                let Some((_, len)) = wire::fragment_span(total_len, count, index) else {
                    continue;
                };
                let seq = 1 + inp.u64() % MAX_SEQ;
                let channel = if inp.bool() {
                    Channel::State
                } else {
                    Channel::Log
                };
                let data = Bytes::from(vec![inp.u8(); len]);
                frags.push(wire::Fragment {
                    channel,
                    seq,
                    index,
                    count,
                    total_len,
                    data,
                });
            }
            if frags.is_empty() {
                return;
            }
            Datagram {
                header,
                body: Body::Fragments(frags),
            }
        }
    };
    let encoded = encode_datagram(&d).expect("small datagrams encode");
    assert_eq!(wire::decode(&encoded).as_ref(), Ok(&d), "built datagram");
}

/// Decodes `data` as a `T`; if it decodes, the value encodes, the encoding is no longer than
/// the input, and it decodes to the same value. Returns the value.
fn body_round_trip<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let limit = BODY_LIMIT.min(data.len().max(1) * 2);
    let v: T = match codec::decode(data, limit) {
        Ok(v) => v,
        Err(CodecError::TooLarge { .. }) => panic!("input within the limit refused"),
        Err(_) => return None,
    };
    let again = codec::encode(&v).expect("a decoded value encodes");
    assert!(
        again.len() <= data.len(),
        "encoding of {} bytes from {} bytes: {v:?}",
        again.len(),
        data.len()
    );
    let back: T = codec::decode(&again, again.len()).expect("an encoding decodes");
    assert_eq!(back, v, "round trip");
    if !data.is_empty() {
        // The caller's bound is enforced.
        assert!(matches!(
            codec::decode::<T>(data, data.len() - 1),
            Err(CodecError::TooLarge { .. })
        ));
    }
    Some(v)
}

/// Every point-to-point body of `exchange` (dump, probe reply, state snapshot, log range,
/// announcement, published message) decoded from the input, with round trips.
pub fn state_dump_decode(data: &[u8]) {
    if let Some(dump) = body_round_trip::<ClusterDump>(data) {
        assert!(dump.members.len() <= data.len(), "entries out of nothing");
    }
    body_round_trip::<ProbeReply>(data);
    body_round_trip::<StateSnapshot>(data);
    if let Some(range) = body_round_trip::<LogRange>(data) {
        assert!(range.messages.len() <= data.len());
    }
    body_round_trip::<Announcement>(data);
    body_round_trip::<Published>(data);
}

/// Every session body decoded from the input, with round trips; the input read as a session
/// token too.
pub fn session_decode(data: &[u8]) {
    body_round_trip::<SessionReplicate>(data);
    body_round_trip::<ReplicateReply>(data);
    body_round_trip::<SessionClaim>(data);
    body_round_trip::<ClaimReply>(data);
    body_round_trip::<SessionRelease>(data);
    if let Some(state) = body_round_trip::<SessionState>(data) {
        check_state(&state);
    }
    if let Some(ReplicaPayload::Full(state)) = body_round_trip::<ReplicaPayload>(data) {
        check_state(&state);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        token_round_trip(text);
    }
}

/// What `SessionState` promises of any state, even one a peer made up.
fn check_state(state: &SessionState) {
    let encoded = codec::encode(state).expect("a state encodes");
    // The pool count that starts the encoding is the one thing `bytes()` leaves out.
    let count_prefix = codec::encode(&(state.pool_names().count() as u64)).expect("encodes");
    assert!(
        encoded.len() <= state.bytes() + count_prefix.len(),
        "bytes() = {} below the encoded size {}: {state:?}",
        state.bytes(),
        encoded.len()
    );
    assert_eq!(
        state.is_empty(),
        state.entries().next().is_none(),
        "{state:?}"
    );
    assert_eq!(state.len(), state.entries().count());
}

fn token_round_trip(text: &str) {
    let Ok(token) = text.parse::<SessionToken>() else {
        return;
    };
    assert!(text.len() <= MAX_TOKEN_LEN);
    let shown = token.to_string();
    assert!(shown.len() <= 90, "{shown}");
    assert!(
        shown
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'),
        "not URL-safe: {shown}"
    );
    assert_eq!(shown.parse::<SessionToken>(), Ok(token), "{shown}");
}
