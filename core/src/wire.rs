//! The datagram codec: the one place that knows the byte layout of multicast traffic.
//!
//! Every datagram is a fixed 32-byte [`Header`] followed by one body ([`Body`]). The exact
//! layout, byte by byte, is in `core/WIRE.md`. Decoding is bounded by the datagram itself (its
//! allocations are a small constant multiple of the datagram's length), validates every field,
//! and rejects
//! trailing bytes; fragment payloads are zero-copy slices of the received datagram.

use crate::auth::{self, Domain, Keyring};
use crate::ids::{Channel, ClusterId, MemberKey};
use bytes::{BufMut, Bytes};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The four bytes every hybridcast datagram starts with.
pub const MAGIC: [u8; 4] = *b"HYBC";
/// The protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Length of the record count that starts a fragments body.
pub const FRAGMENTS_PREFIX_LEN: usize = 2;
/// Bytes one fragment record adds besides its data.
pub const FRAGMENT_OVERHEAD: usize = 23;
/// Largest UDP payload over IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Longest string (cluster name, member name, host id) a heartbeat carries.
pub const MAX_WIRE_STRING: usize = 255;
/// Largest sequence number accepted anywhere (2^62): far beyond any real sender, and it keeps
/// every `seq + 1` in the receivers free of overflow.
pub const MAX_SEQ: u64 = 1 << 62;
/// Most per-channel sequence entries one heartbeat may carry.
pub const MAX_HEARTBEAT_CHANNELS: usize = 16;
/// Bytes an authenticated datagram carries after its body: the sender's datagram counter
/// (u64), its wall-clock stamp (u64, Unix ms) and the tag ([`auth::TAG_LEN`]).
pub const AUTH_TRAILER_LEN: usize = 16 + auth::TAG_LEN;

/// What a datagram carries, from its header's kind byte (see `WIRE.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Fragment records (kind byte 1).
    Fragments,
    /// A heartbeat (kind byte 2).
    Heartbeat,
    /// A leave notice (kind byte 3).
    Leave,
}

impl Kind {
    /// The kind byte on the wire.
    pub const fn byte(self) -> u8 {
        match self {
            Kind::Fragments => KIND_FRAGMENTS,
            Kind::Heartbeat => KIND_HEARTBEAT,
            Kind::Leave => KIND_LEAVE,
        }
    }
}

const KIND_FRAGMENTS: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;
const KIND_LEAVE: u8 = 3;
/// Header flag: a counter and an authentication tag trail the body ([`seal`], [`open`]).
const FLAG_AUTH_TAG: u8 = 0x01;
const HEARTBEAT_FLAG_JOINING: u8 = 0x01;

/// Why a datagram was refused. Each reason is counted separately in [`crate::Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the fixed header.
    #[error("shorter than the header")]
    TooShort,
    /// Does not start with the hybridcast magic.
    #[error("bad magic")]
    BadMagic,
    /// A protocol version this node does not speak.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// Unknown body kind.
    #[error("unknown kind {0}")]
    UnknownKind(u8),
    /// Header flags this node does not understand, or an authentication tag a node without
    /// keys cannot check.
    #[error("unsupported flags {0:#04x}")]
    UnsupportedFlags(u8),
    /// No authentication tag, and this node requires one.
    #[error("no authentication tag")]
    Unauthenticated,
    /// An authentication tag that no key of this node's keyring produced.
    #[error("bad authentication tag")]
    BadTag,
    /// The body ended before a field did.
    #[error("truncated body")]
    Truncated,
    /// Bytes left after the body.
    #[error("trailing bytes after the body")]
    TrailingBytes,
    /// A fragment whose numbers are inconsistent (index, count, length, geometry).
    #[error("inconsistent fragment")]
    BadFragment,
    /// A field with a value outside its range (string not UTF-8, address family, channel count).
    #[error("invalid field")]
    BadField,
}

/// The fixed part of every datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Cluster the sender belongs to.
    pub cluster: ClusterId,
    /// Sender's member key.
    pub sender: MemberKey,
    /// Sender's incarnation.
    pub incarnation: u64,
}

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The fixed header.
    pub header: Header,
    /// What it carries.
    pub body: Body,
}

/// The bodies v1 knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// One or more fragment records (bundled small messages, or pieces of a large one).
    Fragments(Vec<Fragment>),
    /// Liveness, identity and last sequence per channel.
    Heartbeat(Heartbeat),
    /// The sender is leaving the cluster deliberately.
    Leave,
}

/// One piece of one sequenced message.
///
/// A message of `total_len` bytes in `count` fragments is split evenly: every fragment but the
/// last carries `ceil(total_len / count)` bytes ([`fragment_span`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Channel the message belongs to.
    pub channel: Channel,
    /// Message sequence number (from 1 per channel and incarnation).
    pub seq: u64,
    /// Index of this fragment, `0..count`.
    pub index: u32,
    /// Number of fragments of the message.
    pub count: u32,
    /// Length of the whole message.
    pub total_len: u32,
    /// This fragment's bytes.
    pub data: Bytes,
}

/// A heartbeat's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Cluster name (must hash to the header's cluster id).
    pub cluster_name: String,
    /// Member name (must hash to the header's sender key).
    pub name: String,
    /// Where the sender serves point-to-point requests.
    pub http_addr: SocketAddr,
    /// Sender's host id.
    pub host_id: String,
    /// Sender's load, as its owner reports it (higher is busier).
    pub load: u32,
    /// Sender's heartbeat interval in milliseconds.
    pub interval_ms: u32,
    /// True while the sender is still joining (not yet a good source for state dumps).
    pub joining: bool,
    /// Last sequence number sent on each channel (0 = nothing sent yet).
    pub last_seq: Vec<(Channel, u64)>,
}

impl Heartbeat {
    /// The last sequence reported for `channel`, if any.
    pub fn last_seq_of(&self, channel: Channel) -> Option<u64> {
        self.last_seq
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, s)| *s)
    }
}

/// Offset and length of fragment `index` of a message of `total_len` bytes in `count` pieces,
/// or `None` if that combination is impossible.
pub fn fragment_span(total_len: u32, count: u32, index: u32) -> Option<(usize, usize)> {
    if count == 0 || index >= count {
        return None;
    }
    let (total, count64, index) = (u64::from(total_len), u64::from(count), u64::from(index));
    if total == 0 {
        return (count == 1).then_some((0, 0));
    }
    let chunk = total.div_ceil(count64);
    // Every fragment must carry at least one byte.
    if (count64 - 1) * chunk >= total {
        return None;
    }
    let offset = index * chunk;
    let len = chunk.min(total - offset);
    Some((offset as usize, len as usize))
}

/// Number of fragments a message of `total_len` bytes needs when one carries `max_payload`.
pub fn fragment_count(total_len: usize, max_payload: usize) -> usize {
    total_len.div_ceil(max_payload.max(1)).max(1)
}

fn put_header(out: &mut Vec<u8>, kind: u8, h: &Header) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.push(0); // flags
    out.push(0); // reserved
    out.put_u64(h.cluster.0);
    out.put_u64(h.sender.0);
    out.put_u64(h.incarnation);
}

/// Encodes a heartbeat datagram.
pub fn encode_heartbeat(h: &Header, hb: &Heartbeat) -> Bytes {
    let mut out = Vec::with_capacity(HEADER_LEN + 64 + hb.name.len() + hb.cluster_name.len());
    put_header(&mut out, KIND_HEARTBEAT, h);
    out.push(if hb.joining {
        HEARTBEAT_FLAG_JOINING
    } else {
        0
    });
    out.put_u32(hb.load);
    out.put_u32(hb.interval_ms);
    match hb.http_addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.put_u16(hb.http_addr.port());
    for s in [&hb.cluster_name, &hb.name, &hb.host_id] {
        // Identity::validate keeps these within MAX_WIRE_STRING; truncation is a last resort.
        let b = &s.as_bytes()[..s.len().min(MAX_WIRE_STRING)];
        out.push(b.len() as u8);
        out.extend_from_slice(b);
    }
    let n = hb.last_seq.len().min(MAX_HEARTBEAT_CHANNELS);
    out.push(n as u8);
    for (c, s) in &hb.last_seq[..n] {
        out.push(c.wire_id());
        out.put_u64(*s);
    }
    Bytes::from(out)
}

/// Encodes a leave datagram.
pub fn encode_leave(h: &Header) -> Bytes {
    let mut out = Vec::with_capacity(HEADER_LEN);
    put_header(&mut out, KIND_LEAVE, h);
    Bytes::from(out)
}

/// Builds one fragments datagram within a byte budget.
#[derive(Debug)]
pub struct FragmentPacker {
    buf: Vec<u8>,
    records: u16,
    budget: usize,
}

impl FragmentPacker {
    /// Starts a datagram of at most `budget` bytes (clamped to [`MAX_UDP_PAYLOAD`]).
    pub fn new(h: &Header, budget: usize) -> Self {
        let budget = budget.min(MAX_UDP_PAYLOAD);
        let mut buf = Vec::with_capacity(budget);
        put_header(&mut buf, KIND_FRAGMENTS, h);
        buf.put_u16(0);
        FragmentPacker {
            buf,
            records: 0,
            budget,
        }
    }

    /// Data bytes a further record could still carry.
    pub fn room(&self) -> usize {
        if self.records == u16::MAX {
            return 0;
        }
        self.budget
            .saturating_sub(self.buf.len() + FRAGMENT_OVERHEAD)
    }

    /// True if no record was added yet.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Adds a record; returns false (and adds nothing) if it does not fit.
    pub fn push(
        &mut self,
        channel: Channel,
        seq: u64,
        index: u32,
        count: u32,
        total_len: u32,
        data: &[u8],
    ) -> bool {
        if data.len() > self.room() || data.len() > usize::from(u16::MAX) {
            return false;
        }
        self.buf.push(channel.wire_id());
        self.buf.put_u64(seq);
        self.buf.put_u32(index);
        self.buf.put_u32(count);
        self.buf.put_u32(total_len);
        self.buf.put_u16(data.len() as u16);
        self.buf.extend_from_slice(data);
        self.records += 1;
        true
    }

    /// The finished datagram.
    pub fn finish(mut self) -> Bytes {
        self.buf[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&self.records.to_be_bytes());
        Bytes::from(self.buf)
    }
}

/// A bounds-checked reader over a datagram.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn slice(&mut self, n: usize) -> Result<Bytes, WireError> {
        let start = self.pos;
        self.take(n)?;
        Ok(self.buf.slice(start..start + n))
    }
    fn string(&mut self) -> Result<String, WireError> {
        let n = usize::from(self.u8()?);
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| WireError::BadField)
    }
    fn done(&self) -> Result<(), WireError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }
}

/// Decodes the fixed header only (cheap filter before the body), with the kind of body that
/// follows. A header announcing an authentication trailer is accepted here; [`decode`] and
/// [`open`] decide what to do with it.
pub fn decode_header(buf: &[u8]) -> Result<(Header, Kind), WireError> {
    decode_header_flags(buf).map(|(h, k, _)| (h, k))
}

fn decode_header_flags(buf: &[u8]) -> Result<(Header, Kind, u8), WireError> {
    if buf.len() < HEADER_LEN {
        return Err(WireError::TooShort);
    }
    if buf[0..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if buf[4] != VERSION {
        return Err(WireError::UnsupportedVersion(buf[4]));
    }
    let kind = match buf[5] {
        KIND_FRAGMENTS => Kind::Fragments,
        KIND_HEARTBEAT => Kind::Heartbeat,
        KIND_LEAVE => Kind::Leave,
        other => return Err(WireError::UnknownKind(other)),
    };
    let flags = buf[6];
    if flags & !FLAG_AUTH_TAG != 0 || buf[7] != 0 {
        return Err(WireError::UnsupportedFlags(flags | buf[7]));
    }
    let word = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&buf[i..i + 8]);
        u64::from_be_bytes(a)
    };
    let header = Header {
        cluster: ClusterId(word(8)),
        sender: MemberKey(word(16)),
        incarnation: word(24),
    };
    Ok((header, kind, flags))
}

/// Decodes a whole unauthenticated datagram. Never panics; allocation is bounded by the
/// datagram's length. An authenticated datagram is refused (`UnsupportedFlags`): only
/// [`open`], with a key, can read it.
pub fn decode(buf: &Bytes) -> Result<Datagram, WireError> {
    let (header, kind, flags) = decode_header_flags(buf)?;
    if flags != 0 {
        return Err(WireError::UnsupportedFlags(flags));
    }
    decode_body(buf, header, kind)
}

/// An authenticated datagram, opened by [`open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// What it carries.
    pub datagram: Datagram,
    /// The sender's datagram counter (from 1 per incarnation), for replay checks.
    pub counter: u64,
    /// The sender's wall clock when it sent it (Unix ms), for replay checks.
    pub stamp_ms: u64,
}

/// Adds the authentication trailer to an encoded datagram: sets the header's auth flag, then
/// appends `counter`, `stamp_ms` and the tag of everything before the tag under the keyring's
/// first key. The result is [`AUTH_TRAILER_LEN`] bytes longer than `datagram`.
pub fn seal(datagram: &[u8], counter: u64, stamp_ms: u64, keys: &Keyring) -> Bytes {
    let mut out = Vec::with_capacity(datagram.len() + AUTH_TRAILER_LEN);
    out.extend_from_slice(datagram);
    if let Some(flags) = out.get_mut(6) {
        *flags |= FLAG_AUTH_TAG;
    }
    out.put_u64(counter);
    out.put_u64(stamp_ms);
    let tag = keys.tag(Domain::Datagram, &[&out]);
    out.extend_from_slice(&tag);
    Bytes::from(out)
}

/// Checks and decodes an authenticated datagram: the header must announce the trailer
/// (`Unauthenticated` otherwise), the tag must verify under one of `keys` (`BadTag`), and
/// only then is the body decoded, as [`decode`] would. Never panics.
pub fn open(buf: &Bytes, keys: &Keyring) -> Result<Opened, WireError> {
    let (header, kind, flags) = decode_header_flags(buf)?;
    if flags & FLAG_AUTH_TAG == 0 {
        return Err(WireError::Unauthenticated);
    }
    let Some(tag_at) = buf.len().checked_sub(auth::TAG_LEN) else {
        return Err(WireError::Truncated);
    };
    let Some(body_end) = tag_at.checked_sub(16).filter(|&e| e >= HEADER_LEN) else {
        return Err(WireError::Truncated);
    };
    if !keys.verify(Domain::Datagram, &[&buf[..tag_at]], &buf[tag_at..]) {
        return Err(WireError::BadTag);
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&buf[at..at + 8]);
        u64::from_be_bytes(w)
    };
    let datagram = decode_body(&buf.slice(..body_end), header, kind)?;
    Ok(Opened {
        datagram,
        counter: word(body_end),
        stamp_ms: word(body_end + 8),
    })
}

fn decode_body(buf: &Bytes, header: Header, kind: Kind) -> Result<Datagram, WireError> {
    let mut r = Reader {
        buf,
        pos: HEADER_LEN,
    };
    let body = match kind {
        Kind::Fragments => Body::Fragments(decode_fragments(&mut r)?),
        Kind::Heartbeat => Body::Heartbeat(decode_heartbeat(&mut r)?),
        Kind::Leave => Body::Leave,
    };
    r.done()?;
    Ok(Datagram { header, body })
}

fn decode_fragments(r: &mut Reader<'_>) -> Result<Vec<Fragment>, WireError> {
    let n = usize::from(r.u16()?);
    if n == 0 {
        return Err(WireError::BadFragment);
    }
    // Each record takes at least FRAGMENT_OVERHEAD bytes, so this bounds the allocation.
    let remaining = r.buf.len() - r.pos;
    if n > remaining / FRAGMENT_OVERHEAD {
        return Err(WireError::Truncated);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = Channel::from_wire_id(r.u8()?).ok_or(WireError::BadField)?;
        let seq = r.u64()?;
        let index = r.u32()?;
        let count = r.u32()?;
        let total_len = r.u32()?;
        let len = usize::from(r.u16()?);
        let data = r.slice(len)?;
        if seq == 0 || seq > MAX_SEQ {
            return Err(WireError::BadFragment);
        }
        match fragment_span(total_len, count, index) {
            Some((_, expect)) if expect == len => {}
            _ => return Err(WireError::BadFragment),
        }
        out.push(Fragment {
            channel,
            seq,
            index,
            count,
            total_len,
            data,
        });
    }
    Ok(out)
}

fn decode_heartbeat(r: &mut Reader<'_>) -> Result<Heartbeat, WireError> {
    let flags = r.u8()?;
    if flags & !HEARTBEAT_FLAG_JOINING != 0 {
        return Err(WireError::BadField);
    }
    let load = r.u32()?;
    let interval_ms = r.u32()?;
    let ip = match r.u8()? {
        4 => {
            let mut a = [0u8; 4];
            a.copy_from_slice(r.take(4)?);
            IpAddr::V4(Ipv4Addr::from(a))
        }
        6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(r.take(16)?);
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return Err(WireError::BadField),
    };
    let port = r.u16()?;
    let cluster_name = r.string()?;
    let name = r.string()?;
    let host_id = r.string()?;
    let n = usize::from(r.u8()?);
    if n > MAX_HEARTBEAT_CHANNELS {
        return Err(WireError::BadField);
    }
    let mut last_seq = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.u8()?;
        let seq = r.u64()?;
        if seq > MAX_SEQ {
            return Err(WireError::BadField);
        }
        // Channels a later version adds are skipped, not refused.
        if let Some(c) = Channel::from_wire_id(id) {
            if last_seq.iter().any(|(have, _)| *have == c) {
                return Err(WireError::BadField);
            }
            last_seq.push((c, seq));
        }
    }
    Ok(Heartbeat {
        cluster_name,
        name,
        http_addr: SocketAddr::new(ip, port),
        host_id,
        load,
        interval_ms,
        joining: flags & HEARTBEAT_FLAG_JOINING != 0,
        last_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    fn header() -> Header {
        Header {
            cluster: ClusterId::of("c"),
            sender: MemberKey::of("m"),
            incarnation: 9,
        }
    }

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            cluster_name: "c".into(),
            name: "m".into(),
            http_addr: "[::1]:8080".parse().expect("addr"),
            host_id: "h".into(),
            load: 3,
            interval_ms: 1000,
            joining: true,
            last_seq: vec![(Channel::State, 5), (Channel::Log, 0)],
        }
    }

    #[test]
    fn heartbeat_round_trip() {
        let hb = heartbeat();
        let bytes = encode_heartbeat(&header(), &hb);
        let d = decode(&bytes).expect("decode");
        assert_eq!(d.header, header());
        assert_eq!(d.body, Body::Heartbeat(hb));
    }

    #[test]
    fn leave_round_trip_and_header_checks() {
        let bytes = encode_leave(&header());
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(decode(&bytes).expect("leave").body, Body::Leave);
        let mut v = bytes.to_vec();
        v.push(0);
        assert_eq!(decode(&Bytes::from(v)), Err(WireError::TrailingBytes));
        let mut v = bytes.to_vec();
        v[0] = b'X';
        assert_eq!(decode(&Bytes::from(v)), Err(WireError::BadMagic));
        let mut v = bytes.to_vec();
        v[4] = 2;
        assert_eq!(
            decode(&Bytes::from(v)),
            Err(WireError::UnsupportedVersion(2))
        );
        let mut v = bytes.to_vec();
        v[5] = 9;
        assert_eq!(decode(&Bytes::from(v)), Err(WireError::UnknownKind(9)));
        let mut v = bytes.to_vec();
        v[6] = FLAG_AUTH_TAG;
        assert_eq!(decode(&Bytes::from(v)), Err(WireError::UnsupportedFlags(1)));
        assert_eq!(decode(&bytes.slice(..10)), Err(WireError::TooShort));
    }

    #[test]
    fn fragments_round_trip_and_budget() {
        let mut p = FragmentPacker::new(&header(), 200);
        assert!(p.push(Channel::Log, 1, 0, 1, 3, b"abc"));
        assert!(p.push(Channel::State, 7, 1, 2, 10, b"fghij"));
        assert!(!p.push(Channel::Log, 2, 0, 1, 500, &[0; 500]));
        let bytes = p.finish();
        assert!(bytes.len() <= 200);
        let Body::Fragments(f) = decode(&bytes).expect("decode").body else {
            panic!("not fragments")
        };
        assert_eq!(f.len(), 2);
        assert_eq!(&f[0].data[..], b"abc");
        assert_eq!((f[1].channel, f[1].seq, f[1].index), (Channel::State, 7, 1));
    }

    #[test]
    fn inconsistent_fragments_are_refused() {
        for (idx, count, total, data) in [
            (0u32, 1u32, 4u32, &b"abc"[..]), // wrong length
            (1, 1, 3, b"abc"),               // index out of range
            (0, 0, 3, b"abc"),               // no fragments
            (0, 5, 3, b"a"),                 // more fragments than bytes
        ] {
            let mut p = FragmentPacker::new(&header(), 1400);
            assert!(p.push(Channel::Log, 1, idx, count, total, data));
            assert_eq!(decode(&p.finish()), Err(WireError::BadFragment));
        }
    }

    #[test]
    fn fragment_geometry_covers_the_message_exactly() {
        fn prop(total: u32, payload: u16) -> TestResult {
            let total = total % 200_000;
            let payload = usize::from(payload % 2000) + 1;
            let count = fragment_count(total as usize, payload) as u32;
            let mut next = 0usize;
            for i in 0..count {
                let Some((off, len)) = fragment_span(total, count, i) else {
                    return TestResult::failed();
                };
                if off != next || len > payload || (total > 0 && len == 0) {
                    return TestResult::failed();
                }
                next += len;
            }
            TestResult::from_bool(next == total as usize)
        }
        QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(u32, u16) -> TestResult);
    }

    #[test]
    fn decode_never_panics_and_stays_in_bounds() {
        fn prop(prefix: bool, kind: u8, body: Vec<u8>) -> bool {
            let mut v = Vec::new();
            if prefix {
                put_header(&mut v, kind % 4, &header());
            }
            v.extend_from_slice(&body);
            let bytes = Bytes::from(v);
            match decode(&bytes) {
                Ok(Datagram {
                    body: Body::Fragments(f),
                    ..
                }) => f.iter().map(|f| f.data.len()).sum::<usize>() <= bytes.len(),
                _ => true,
            }
        }
        QuickCheck::new()
            .tests(5000)
            .quickcheck(prop as fn(bool, u8, Vec<u8>) -> bool);
    }

    fn keys(b: u8) -> Keyring {
        Keyring::single(crate::auth::ClusterKey::new(vec![b; 32]).expect("key"))
    }

    #[test]
    fn sealed_datagrams_open_with_the_key_and_nothing_else() {
        let plain = encode_heartbeat(&header(), &heartbeat());
        let sealed = seal(&plain, 77, 1_234, &keys(1));
        assert_eq!(sealed.len(), plain.len() + AUTH_TRAILER_LEN);
        let opened = open(&sealed, &keys(1)).expect("opens");
        assert_eq!((opened.counter, opened.stamp_ms), (77, 1_234));
        assert_eq!(opened.datagram, decode(&plain).expect("plain"));
        assert_eq!(open(&sealed, &keys(2)), Err(WireError::BadTag));
        assert_eq!(open(&plain, &keys(1)), Err(WireError::Unauthenticated));
        assert_eq!(
            decode(&sealed),
            Err(WireError::UnsupportedFlags(FLAG_AUTH_TAG))
        );
        // Too short to carry a counter and a tag.
        let stub = seal(&encode_leave(&header()), 1, 1, &keys(1));
        assert_eq!(
            open(&stub.slice(..HEADER_LEN + 28), &keys(1)),
            Err(WireError::Truncated)
        );
        let rotated = Keyring::new(vec![
            crate::auth::ClusterKey::new(vec![2; 32]).expect("key"),
            crate::auth::ClusterKey::new(vec![1; 32]).expect("key"),
        ])
        .expect("ring");
        assert!(open(&sealed, &rotated).is_ok(), "any key of the ring opens");
    }

    #[test]
    fn any_changed_bit_of_a_sealed_datagram_is_refused() {
        let mut p = FragmentPacker::new(&header(), 1400);
        assert!(p.push(Channel::Log, 3, 0, 1, 5, b"hello"));
        let sealed = seal(&p.finish(), 9, 5, &keys(3));
        fn prop(sealed: Bytes, at: usize, bit: u8) -> bool {
            let mut v = sealed.to_vec();
            let at = at % v.len();
            v[at] ^= 1 << (bit % 8);
            open(&Bytes::from(v), &keys(3)).is_err()
        }
        let check = move |at: usize, bit: u8| prop(sealed.clone(), at, bit);
        for at in 0..200 {
            for bit in 0..8 {
                assert!(check(at, bit), "byte {at} bit {bit}");
            }
        }
    }
}
