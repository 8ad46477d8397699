//! The hub's frame codec: the byte layout of everything a member and a hub say to each other
//! over their stream connection (`WIRE.md` §9).
//!
//! A frame is a big-endian `u32` length (of what follows it), a kind byte and a body. The
//! [`FrameDecoder`] turns a byte stream into frames, buffering at most one frame
//! ([`MAX_FRAME_LEN`]); the payloads of relayed datagrams are zero-copy slices of the frame.

use crate::auth::{Domain, Keyring, TAG_LEN};
use crate::ids::{ClusterId, MemberKey};
use crate::wire::MAX_UDP_PAYLOAD;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The four bytes a hub's challenge starts with.
pub const HUB_MAGIC: [u8; 4] = *b"HYBH";
/// The hub protocol version this codec speaks.
pub const HUB_VERSION: u8 = 1;
/// Length of the nonce a hub's challenge carries.
pub const NONCE_LEN: usize = 16;
/// Bytes before a frame's kind: its length.
pub const LEN_PREFIX: usize = 4;
/// Largest frame, kind byte included (a relayed datagram of up to [`MAX_UDP_PAYLOAD`] bytes
/// with the largest frame header fits).
pub const MAX_FRAME_LEN: usize = 1 + 8 + 8 + MAX_UDP_PAYLOAD;
/// Largest datagram a frame carries: the same limit as a UDP datagram, so a member sends the
/// same datagrams through a hub as it would multicast.
pub const MAX_FRAME_DATAGRAM: usize = MAX_UDP_PAYLOAD;

const KIND_CHALLENGE: u8 = 1;
const KIND_HELLO: u8 = 2;
const KIND_WELCOME: u8 = 3;
const KIND_GROUP: u8 = 4;
const KIND_DIRECT: u8 = 5;
const KIND_PING: u8 = 6;
const KIND_DELIVER: u8 = 7;
const KIND_ACK: u8 = 8;
const KIND_UNDELIVERABLE: u8 = 9;
const KIND_JOINED: u8 = 10;
const KIND_DEPARTED: u8 = 11;
const KIND_BYE: u8 = 12;

/// Why a hub connection ended: sent in a [`Frame::Bye`] to the member whose connection ends,
/// and in [`Frame::Departed`] to every other member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The connection was closed (by the member, or it broke).
    Closed,
    /// The member did not read what the hub relayed to it fast enough: its queue at the hub
    /// reached `HubConfig::max_queued_bytes`.
    SlowConsumer,
    /// The member registered again on a newer connection.
    Replaced,
    /// Nothing arrived within the hub's idle timeout (or no registration within its hello
    /// timeout).
    Idle,
    /// A frame that does not parse, is too long, is out of order or is not allowed here.
    Protocol,
    /// The member belongs to another cluster.
    WrongCluster,
    /// The registration carried no tag, or a tag no key of the hub made.
    Unauthenticated,
    /// A registration older than the member's current one (a lower incarnation).
    Stale,
    /// The hub holds its maximum number of connections.
    Full,
    /// The hub is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Every reason, in wire order.
    pub const ALL: [CloseReason; 10] = [
        CloseReason::Closed,
        CloseReason::SlowConsumer,
        CloseReason::Replaced,
        CloseReason::Idle,
        CloseReason::Protocol,
        CloseReason::WrongCluster,
        CloseReason::Unauthenticated,
        CloseReason::Stale,
        CloseReason::Full,
        CloseReason::Shutdown,
    ];

    /// The reason's byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            CloseReason::Closed => 1,
            CloseReason::SlowConsumer => 2,
            CloseReason::Replaced => 3,
            CloseReason::Idle => 4,
            CloseReason::Protocol => 5,
            CloseReason::WrongCluster => 6,
            CloseReason::Unauthenticated => 7,
            CloseReason::Stale => 8,
            CloseReason::Full => 9,
            CloseReason::Shutdown => 10,
        }
    }

    /// Position in [`CloseReason::ALL`] (the wire byte less one).
    pub(crate) fn index(self) -> usize {
        usize::from(self.byte() - 1)
    }

    /// The reason a byte names, if any.
    pub fn from_byte(b: u8) -> Option<Self> {
        CloseReason::ALL.into_iter().find(|r| r.byte() == b)
    }

    /// A short name for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Closed => "closed",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Replaced => "replaced",
            CloseReason::Idle => "idle",
            CloseReason::Protocol => "protocol",
            CloseReason::WrongCluster => "wrong_cluster",
            CloseReason::Unauthenticated => "unauthenticated",
            CloseReason::Stale => "stale",
            CloseReason::Full => "full",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A member's registration ([`Frame::Hello`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The member's cluster.
    pub cluster: ClusterId,
    /// The member's key (the hash of its name, as in its datagrams' headers).
    pub member: MemberKey,
    /// The member's incarnation.
    pub incarnation: u64,
    /// The tag over the hub's challenge and the fields above ([`hello_tag`]), when the
    /// cluster has a key.
    pub tag: Option<[u8; TAG_LEN]>,
}

/// One frame of the hub protocol. `id`s number a member's frames to the hub on one
/// connection, from 1 up without gaps; the hub acknowledges them cumulatively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Hub → member, first on every connection: the nonce the registration must tag.
    Challenge {
        /// Fresh per connection.
        nonce: [u8; NONCE_LEN],
    },
    /// Member → hub, once, in answer to the challenge.
    Hello(Hello),
    /// Hub → member: the registration is accepted. [`Frame::Joined`] for every member already
    /// registered follows.
    Welcome,
    /// Member → hub: relay `datagram` to every other registered member.
    Group {
        /// Frame number.
        id: u64,
        /// One hybridcast datagram, as it would be multicast.
        datagram: Bytes,
    },
    /// Member → hub: relay `datagram` to member `to` only.
    Direct {
        /// Frame number.
        id: u64,
        /// The destination member.
        to: MemberKey,
        /// One hybridcast datagram.
        datagram: Bytes,
    },
    /// Member → hub: nothing to relay; keeps the connection alive and is acknowledged.
    Ping {
        /// Frame number.
        id: u64,
    },
    /// Hub → member: a datagram another member sent.
    Deliver {
        /// The member whose connection it came from.
        from: MemberKey,
        /// The datagram, unchanged.
        datagram: Bytes,
    },
    /// Hub → member: every frame numbered up to `id` arrived and was relayed (queued to its
    /// destinations).
    Ack {
        /// Highest frame number received.
        id: u64,
    },
    /// Hub → member: the destination of direct frame `id` is not registered.
    Undeliverable {
        /// The direct frame's number.
        id: u64,
        /// Its destination.
        to: MemberKey,
    },
    /// Hub → member: a member registered.
    Joined {
        /// Its key.
        member: MemberKey,
        /// Its incarnation.
        incarnation: u64,
    },
    /// Hub → member: a member's connection ended.
    Departed {
        /// Its key.
        member: MemberKey,
        /// The incarnation it had registered.
        incarnation: u64,
        /// Why.
        reason: CloseReason,
    },
    /// Either way: the sender closes the connection after this frame.
    Bye {
        /// Why.
        reason: CloseReason,
    },
}

/// A frame that cannot be read. The connection it came on is closed
/// ([`CloseReason::Protocol`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length prefix of 0 or above [`MAX_FRAME_LEN`].
    #[error("frame length {0} outside 1..={MAX_FRAME_LEN}")]
    BadLength(usize),
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A body shorter or longer than its kind requires, or a field out of range.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

impl Frame {
    /// The frame's encoding, length prefix included.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(LEN_PREFIX + self.body_len());
        b.put_u32(self.body_len() as u32);
        match self {
            Frame::Challenge { nonce } => {
                b.put_u8(KIND_CHALLENGE);
                b.put_slice(&HUB_MAGIC);
                b.put_u8(HUB_VERSION);
                b.put_slice(nonce);
            }
            Frame::Hello(h) => {
                b.put_u8(KIND_HELLO);
                b.put_u64(h.cluster.0);
                b.put_u64(h.member.0);
                b.put_u64(h.incarnation);
                match &h.tag {
                    Some(t) => {
                        b.put_u8(1);
                        b.put_slice(t);
                    }
                    None => b.put_u8(0),
                }
            }
            Frame::Welcome => b.put_u8(KIND_WELCOME),
            Frame::Group { id, datagram } => {
                b.put_u8(KIND_GROUP);
                b.put_u64(*id);
                b.put_slice(datagram);
            }
            Frame::Direct { id, to, datagram } => {
                b.put_u8(KIND_DIRECT);
                b.put_u64(*id);
                b.put_u64(to.0);
                b.put_slice(datagram);
            }
            Frame::Ping { id } => {
                b.put_u8(KIND_PING);
                b.put_u64(*id);
            }
            Frame::Deliver { from, datagram } => {
                b.put_u8(KIND_DELIVER);
                b.put_u64(from.0);
                b.put_slice(datagram);
            }
            Frame::Ack { id } => {
                b.put_u8(KIND_ACK);
                b.put_u64(*id);
            }
            Frame::Undeliverable { id, to } => {
                b.put_u8(KIND_UNDELIVERABLE);
                b.put_u64(*id);
                b.put_u64(to.0);
            }
            Frame::Joined {
                member,
                incarnation,
            } => {
                b.put_u8(KIND_JOINED);
                b.put_u64(member.0);
                b.put_u64(*incarnation);
            }
            Frame::Departed {
                member,
                incarnation,
                reason,
            } => {
                b.put_u8(KIND_DEPARTED);
                b.put_u64(member.0);
                b.put_u64(*incarnation);
                b.put_u8(reason.byte());
            }
            Frame::Bye { reason } => {
                b.put_u8(KIND_BYE);
                b.put_u8(reason.byte());
            }
        }
        b.freeze()
    }

    /// Length of the frame after its length prefix (kind byte included).
    fn body_len(&self) -> usize {
        1 + match self {
            Frame::Challenge { .. } => 4 + 1 + NONCE_LEN,
            Frame::Hello(h) => 24 + 1 + if h.tag.is_some() { TAG_LEN } else { 0 },
            Frame::Welcome => 0,
            Frame::Group { datagram, .. } => 8 + datagram.len(),
            Frame::Direct { datagram, .. } => 16 + datagram.len(),
            Frame::Ping { .. } | Frame::Ack { .. } => 8,
            Frame::Deliver { datagram, .. } => 8 + datagram.len(),
            Frame::Undeliverable { .. } | Frame::Joined { .. } => 16,
            Frame::Departed { .. } => 17,
            Frame::Bye { .. } => 1,
        }
    }

    /// Decodes one frame's body (after the length prefix, kind byte first). Relayed datagrams
    /// are slices of `frame`.
    pub fn decode(frame: Bytes) -> Result<Frame, FrameError> {
        if frame.is_empty() || frame.len() > MAX_FRAME_LEN {
            return Err(FrameError::BadLength(frame.len()));
        }
        let kind = frame[0];
        let mut body = frame.slice(1..);
        let exact = |body: &Bytes, len: usize, what: &'static str| {
            if body.len() == len {
                Ok(())
            } else {
                Err(FrameError::Malformed(what))
            }
        };
        let datagram = |body: &Bytes, what: &'static str| {
            if body.is_empty() || body.len() > MAX_FRAME_DATAGRAM {
                Err(FrameError::Malformed(what))
            } else {
                Ok(body.clone())
            }
        };
        let f = match kind {
            KIND_CHALLENGE => {
                exact(&body, 4 + 1 + NONCE_LEN, "challenge")?;
                if body[..4] != HUB_MAGIC || body[4] != HUB_VERSION {
                    return Err(FrameError::Malformed("challenge"));
                }
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&body[5..]);
                Frame::Challenge { nonce }
            }
            KIND_HELLO => {
                if body.len() != 25 && body.len() != 25 + TAG_LEN {
                    return Err(FrameError::Malformed("hello"));
                }
                let cluster = ClusterId(body.get_u64());
                let member = MemberKey(body.get_u64());
                let incarnation = body.get_u64();
                let tag = match (body.get_u8(), body.len()) {
                    (0, 0) => None,
                    (1, TAG_LEN) => {
                        let mut t = [0u8; TAG_LEN];
                        t.copy_from_slice(&body);
                        Some(t)
                    }
                    _ => return Err(FrameError::Malformed("hello")),
                };
                Frame::Hello(Hello {
                    cluster,
                    member,
                    incarnation,
                    tag,
                })
            }
            KIND_WELCOME => {
                exact(&body, 0, "welcome")?;
                Frame::Welcome
            }
            KIND_GROUP => {
                if body.len() < 8 {
                    return Err(FrameError::Malformed("group"));
                }
                let id = body.get_u64();
                Frame::Group {
                    id,
                    datagram: datagram(&body, "group")?,
                }
            }
            KIND_DIRECT => {
                if body.len() < 16 {
                    return Err(FrameError::Malformed("direct"));
                }
                let id = body.get_u64();
                let to = MemberKey(body.get_u64());
                Frame::Direct {
                    id,
                    to,
                    datagram: datagram(&body, "direct")?,
                }
            }
            KIND_PING => {
                exact(&body, 8, "ping")?;
                Frame::Ping { id: body.get_u64() }
            }
            KIND_DELIVER => {
                if body.len() < 8 {
                    return Err(FrameError::Malformed("deliver"));
                }
                let from = MemberKey(body.get_u64());
                Frame::Deliver {
                    from,
                    datagram: datagram(&body, "deliver")?,
                }
            }
            KIND_ACK => {
                exact(&body, 8, "ack")?;
                Frame::Ack { id: body.get_u64() }
            }
            KIND_UNDELIVERABLE => {
                exact(&body, 16, "undeliverable")?;
                Frame::Undeliverable {
                    id: body.get_u64(),
                    to: MemberKey(body.get_u64()),
                }
            }
            KIND_JOINED => {
                exact(&body, 16, "joined")?;
                Frame::Joined {
                    member: MemberKey(body.get_u64()),
                    incarnation: body.get_u64(),
                }
            }
            KIND_DEPARTED => {
                exact(&body, 17, "departed")?;
                let member = MemberKey(body.get_u64());
                let incarnation = body.get_u64();
                let reason = CloseReason::from_byte(body.get_u8())
                    .ok_or(FrameError::Malformed("departed"))?;
                Frame::Departed {
                    member,
                    incarnation,
                    reason,
                }
            }
            KIND_BYE => {
                exact(&body, 1, "bye")?;
                let reason =
                    CloseReason::from_byte(body.get_u8()).ok_or(FrameError::Malformed("bye"))?;
                Frame::Bye { reason }
            }
            other => return Err(FrameError::UnknownKind(other)),
        };
        Ok(f)
    }
}

/// The length prefix, kind and origin of a [`Frame::Deliver`] carrying `datagram_len` bytes:
/// the hub sends this header and then the datagram it received, shared, not copied.
pub fn deliver_header(from: MemberKey, datagram_len: usize) -> [u8; LEN_PREFIX + 9] {
    let mut h = [0u8; LEN_PREFIX + 9];
    h[..4].copy_from_slice(&((1 + 8 + datagram_len) as u32).to_be_bytes());
    h[4] = KIND_DELIVER;
    h[5..].copy_from_slice(&from.0.to_be_bytes());
    h
}

/// The tag a member's [`Hello`] carries: over the hub's challenge nonce, the cluster, the
/// member and its incarnation, in [`Domain::HubHello`]. A recorded registration is useless on
/// another connection, whose nonce differs.
pub fn hello_tag(
    keys: &Keyring,
    nonce: &[u8; NONCE_LEN],
    cluster: ClusterId,
    member: MemberKey,
    incarnation: u64,
) -> [u8; TAG_LEN] {
    keys.tag(
        Domain::HubHello,
        &[
            nonce,
            &cluster.0.to_be_bytes(),
            &member.0.to_be_bytes(),
            &incarnation.to_be_bytes(),
        ],
    )
}

/// True if `hello`'s tag is valid for `nonce` under one of `keys`.
pub fn verify_hello(keys: &Keyring, nonce: &[u8; NONCE_LEN], hello: &Hello) -> bool {
    let Some(tag) = &hello.tag else {
        return false;
    };
    keys.verify(
        Domain::HubHello,
        &[
            nonce,
            &hello.cluster.0.to_be_bytes(),
            &hello.member.0.to_be_bytes(),
            &hello.incarnation.to_be_bytes(),
        ],
        tag,
    )
}

/// Splits a byte stream into frames. Holds at most one partial frame: a length prefix above
/// [`MAX_FRAME_LEN`] is refused before anything of the frame is buffered.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    failed: bool,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        FrameDecoder::default()
    }

    /// Bytes buffered (a partial frame, or complete frames not yet taken).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends bytes read from the stream. Call [`FrameDecoder::next_frame`] until it returns
    /// `Ok(None)` before pushing more, which keeps the buffer within one frame plus what
    /// was pushed.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error the
    /// decoder stays failed (the stream cannot be resynchronised) and returns the error again.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.failed {
            return Err(FrameError::Malformed("stream"));
        }
        if self.buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len == 0 || len > MAX_FRAME_LEN {
            self.failed = true;
            self.buf = BytesMut::new();
            return Err(FrameError::BadLength(len));
        }
        if self.buf.len() < LEN_PREFIX + len {
            self.buf.reserve(LEN_PREFIX + len - self.buf.len());
            return Ok(None);
        }
        // The frame is copied out of the stream buffer, not split from it: a relayed datagram
        // may be held for long in queues, and a slice of the buffer would keep the whole block
        // it was read into alive (up to a frame and a read of memory for a 13-byte frame).
        // The buffer stays unshared and is reused.
        let frame = Bytes::copy_from_slice(&self.buf[LEN_PREFIX..LEN_PREFIX + len]);
        self.buf.advance(LEN_PREFIX + len);
        match Frame::decode(frame) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                self.failed = true;
                self.buf = BytesMut::new();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ClusterKey;

    fn samples() -> Vec<Frame> {
        let d = Bytes::from_static(b"HYBC-some-datagram");
        vec![
            Frame::Challenge { nonce: [7; 16] },
            Frame::Hello(Hello {
                cluster: ClusterId(1),
                member: MemberKey(2),
                incarnation: 3,
                tag: None,
            }),
            Frame::Hello(Hello {
                cluster: ClusterId(1),
                member: MemberKey(2),
                incarnation: 3,
                tag: Some([9; TAG_LEN]),
            }),
            Frame::Welcome,
            Frame::Group {
                id: 1,
                datagram: d.clone(),
            },
            Frame::Direct {
                id: 2,
                to: MemberKey(5),
                datagram: d.clone(),
            },
            Frame::Ping { id: 3 },
            Frame::Deliver {
                from: MemberKey(8),
                datagram: d,
            },
            Frame::Ack { id: u64::MAX },
            Frame::Undeliverable {
                id: 4,
                to: MemberKey(6),
            },
            Frame::Joined {
                member: MemberKey(1),
                incarnation: 9,
            },
            Frame::Departed {
                member: MemberKey(1),
                incarnation: 9,
                reason: CloseReason::SlowConsumer,
            },
            Frame::Bye {
                reason: CloseReason::Shutdown,
            },
        ]
    }

    #[test]
    fn every_frame_round_trips_through_a_byte_at_a_time_stream() {
        let frames = samples();
        let stream: Vec<u8> = frames.iter().flat_map(|f| f.encode().to_vec()).collect();
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &stream {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().expect("valid stream") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn a_decoded_datagram_holds_only_its_own_frame() {
        // Three frames read at once: what the first carries must not keep the stream buffer
        // (and the other frames) alive, or a member could pin a whole read per tiny frame.
        let d = Bytes::from_static(b"HYBC-a-small-datagram");
        let mut stream = Vec::new();
        for id in 1..=3 {
            stream.extend_from_slice(
                &Frame::Group {
                    id,
                    datagram: d.clone(),
                }
                .encode(),
            );
        }
        stream.extend_from_slice(&[0, 0, 1, 0]); // and the start of a fourth
        let mut dec = FrameDecoder::new();
        dec.push(&stream);
        let Ok(Some(Frame::Group { datagram, .. })) = dec.next_frame() else {
            panic!("a group frame");
        };
        assert_eq!(datagram, d);
        assert!(
            datagram.is_unique(),
            "the datagram shares its memory with the stream buffer"
        );
    }

    #[test]
    fn deliver_header_matches_the_encoded_frame() {
        let d = Bytes::from_static(b"datagram");
        let f = Frame::Deliver {
            from: MemberKey(77),
            datagram: d.clone(),
        }
        .encode();
        let mut manual = deliver_header(MemberKey(77), d.len()).to_vec();
        manual.extend_from_slice(&d);
        assert_eq!(&f[..], &manual[..]);
    }

    #[test]
    fn an_oversized_length_is_refused_before_buffering_and_the_decoder_stays_failed() {
        let mut dec = FrameDecoder::new();
        dec.push(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::BadLength(MAX_FRAME_LEN + 1))
        );
        assert_eq!(dec.buffered(), 0);
        dec.push(&Frame::Welcome.encode());
        assert!(dec.next_frame().is_err(), "no resynchronisation");
        assert_eq!(dec.buffered(), 0);
        let mut zero = FrameDecoder::new();
        zero.push(&[0, 0, 0, 0]);
        assert_eq!(zero.next_frame(), Err(FrameError::BadLength(0)));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let bad: &[&[u8]] = &[
            &[KIND_WELCOME, 0],
            &[KIND_ACK, 1, 2],
            &[KIND_GROUP, 0, 0, 0, 0, 0, 0, 0, 1],
            &[KIND_BYE, 0],
            &[KIND_BYE, 200],
            &[99],
            &[
                KIND_CHALLENGE,
                b'X',
                b'Y',
                b'B',
                b'H',
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
        ];
        for b in bad {
            assert!(
                Frame::decode(Bytes::copy_from_slice(b)).is_err(),
                "{b:?} decoded"
            );
        }
        let mut hello = Frame::Hello(Hello {
            cluster: ClusterId(1),
            member: MemberKey(2),
            incarnation: 3,
            tag: Some([1; TAG_LEN]),
        })
        .encode()
        .to_vec();
        hello[LEN_PREFIX + 25] = 0; // says untagged, yet a tag follows
        assert!(Frame::decode(Bytes::copy_from_slice(&hello[LEN_PREFIX..])).is_err());
    }

    #[test]
    fn reasons_are_listed_in_wire_order() {
        for (i, r) in CloseReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(CloseReason::from_byte(r.byte()), Some(r));
        }
    }

    #[test]
    fn a_hello_tag_binds_the_nonce_and_every_field() {
        let keys = Keyring::single(ClusterKey::new(vec![3; 32]).expect("key"));
        let other = Keyring::single(ClusterKey::new(vec![4; 32]).expect("key"));
        let nonce = [5; NONCE_LEN];
        let mut h = Hello {
            cluster: ClusterId(1),
            member: MemberKey(2),
            incarnation: 3,
            tag: None,
        };
        assert!(!verify_hello(&keys, &nonce, &h), "untagged");
        h.tag = Some(hello_tag(&keys, &nonce, h.cluster, h.member, h.incarnation));
        assert!(verify_hello(&keys, &nonce, &h));
        assert!(!verify_hello(&other, &nonce, &h), "another key");
        assert!(
            !verify_hello(&keys, &[6; NONCE_LEN], &h),
            "another connection"
        );
        let mut m = h.clone();
        m.incarnation = 4;
        assert!(!verify_hello(&keys, &nonce, &m), "another incarnation");
        let mut m = h.clone();
        m.member = MemberKey(9);
        assert!(!verify_hello(&keys, &nonce, &m), "another member");
    }
}
