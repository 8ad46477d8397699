//! Cluster authentication: one shared secret tags every datagram and every point-to-point
//! exchange, and replayed traffic is refused.
//!
//! **Keys.** A [`Keyring`] holds one to [`MAX_KEYS`] [`ClusterKey`]s of at least
//! [`MIN_KEY_LEN`] bytes. A node tags what it sends with the *first* key and accepts a tag made
//! with *any* of them, so a key is rotated in three rolling steps: add the new key second on
//! every member, move it first on every member, remove the old one. Keys never appear in
//! `Debug` output or errors.
//!
//! **Tags.** HMAC-SHA256 truncated to [`TAG_LEN`] bytes, over a domain byte (datagram, request
//! or response, so a tag of one kind never verifies as another) and length-prefixed parts.
//! Verification compares in constant time.
//!
//! **Replay.** A datagram carries a per-incarnation counter under its tag; a receiver keeps a
//! [`ReplayWindow`] per sender and refuses a counter it saw, one older than the window, or an
//! incarnation older than the newest it authenticated. A request carries the sender's wall-clock
//! time and a random nonce under its tag; the server refuses a time outside
//! [`AuthConfig::max_clock_skew`] of its own clock and a nonce it saw within that window
//! ([`NonceCache`], bounded by [`AuthConfig::max_nonces`]). A response's tag covers the
//! request's nonce, so an answer can only be taken for the request it answers.
//!
//! The byte layouts are in `WIRE.md` §8.

use crate::exchange::{HEADER_AUTH, HEADER_CLUSTER, HEADER_FROM};
use crate::http::{Request, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// Shortest key accepted: 128 bits.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key accepted (HMAC-SHA256 hashes anything longer down to 32 bytes anyway).
pub const MAX_KEY_LEN: usize = 64;
/// Most keys one keyring holds (each one is tried on a tag that fails the first).
pub const MAX_KEYS: usize = 8;
/// Length of an authentication tag: HMAC-SHA256 truncated to 128 bits.
pub const TAG_LEN: usize = 16;
/// How many datagram counters below the highest seen a [`ReplayWindow`] still accepts once.
pub const REPLAY_WINDOW: u64 = 128;

type HmacSha256 = Hmac<Sha256>;

/// What a tag authenticates; part of the tagged bytes, so a tag never verifies as another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A group datagram.
    Datagram = 1,
    /// A point-to-point request.
    Request = 2,
    /// A point-to-point response.
    Response = 3,
    /// A session id drawn by a member (not sent as a tag: the tag *is* the id).
    SessionId = 4,
    /// A member's registration with a hub, over the hub's challenge ([`crate::hub`]).
    HubHello = 5,
}

/// A key or key list that cannot be used. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key at all.
    #[error("no cluster key given")]
    Missing,
    /// A key shorter than [`MIN_KEY_LEN`] bytes.
    #[error("cluster key {index} has {len} bytes, at least {MIN_KEY_LEN} are required")]
    TooShort {
        /// Position of the key in the list (from 0).
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
    /// A key longer than [`MAX_KEY_LEN`] bytes.
    #[error("cluster key {index} has {len} bytes, at most {MAX_KEY_LEN} are allowed")]
    TooLong {
        /// Position of the key in the list (from 0).
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
    /// More than [`MAX_KEYS`] keys.
    #[error("{count} cluster keys given, at most {MAX_KEYS} are allowed")]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// A key in text form that is not an even number of hex digits.
    #[error("cluster key {index} is not hex (write each key as hex digits, two per byte)")]
    NotHex {
        /// Position of the key in the list (from 0).
        index: usize,
    },
}

/// One shared secret. `Debug` shows only its length.
#[derive(Clone)]
pub struct ClusterKey {
    bytes: Vec<u8>,
    /// HMAC keyed with `bytes`, cloned for each tag (saves hashing the key every time).
    keyed: HmacSha256,
}

impl PartialEq for ClusterKey {
    fn eq(&self, other: &ClusterKey) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for ClusterKey {}

impl ClusterKey {
    /// A key from raw bytes: [`MIN_KEY_LEN`]`..=`[`MAX_KEY_LEN`] of them.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<ClusterKey, KeyError> {
        ClusterKey::at(0, bytes.into())
    }

    fn at(index: usize, bytes: Vec<u8>) -> Result<ClusterKey, KeyError> {
        check_len(index, bytes.len())?;
        // HMAC accepts keys of any length, so this refusal is only a formality.
        let keyed = HmacSha256::new_from_slice(&bytes).map_err(|_| KeyError::TooLong {
            index,
            len: bytes.len(),
        })?;
        Ok(ClusterKey { bytes, keyed })
    }

    /// A key from hex text (surrounding whitespace ignored, either case).
    pub fn from_hex(text: &str) -> Result<ClusterKey, KeyError> {
        let bytes = decode_hex(text.trim()).ok_or(KeyError::NotHex { index: 0 })?;
        ClusterKey::new(bytes)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a key has at least [`MIN_KEY_LEN`] bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn mac(&self, domain: Domain, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(&[domain as u8]);
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(<{} bytes, redacted>)", self.bytes.len())
    }
}

fn check_len(index: usize, len: usize) -> Result<(), KeyError> {
    if len < MIN_KEY_LEN {
        return Err(KeyError::TooShort { index, len });
    }
    if len > MAX_KEY_LEN {
        return Err(KeyError::TooLong { index, len });
    }
    Ok(())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if digits.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    digits
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

/// The cluster's keys: tags are made with the first and accepted with any.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<ClusterKey>,
}

impl Keyring {
    /// A keyring of `keys`, the first used for sending: `1..=`[`MAX_KEYS`] of them.
    pub fn new(keys: Vec<ClusterKey>) -> Result<Keyring, KeyError> {
        match keys.len() {
            0 => Err(KeyError::Missing),
            n if n > MAX_KEYS => Err(KeyError::TooMany { count: n }),
            _ => Ok(Keyring { keys }),
        }
    }

    /// A keyring of one key.
    pub fn single(key: ClusterKey) -> Keyring {
        Keyring { keys: vec![key] }
    }

    /// Parses keys written as hex, one per line or separated by commas; blank lines and lines
    /// starting with `#` are skipped. This is the format of a key file and of the
    /// `HYBRIDCAST_CLUSTER_KEYS` variable the runtimes read.
    pub fn parse(text: &str) -> Result<Keyring, KeyError> {
        let words = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|w| !w.is_empty());
        let mut keys = Vec::new();
        for (index, word) in words.enumerate() {
            if index >= MAX_KEYS {
                return Err(KeyError::TooMany { count: index + 1 });
            }
            let bytes = decode_hex(word).ok_or(KeyError::NotHex { index })?;
            keys.push(ClusterKey::at(index, bytes)?);
        }
        Keyring::new(keys)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a keyring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The tag of `parts` in `domain`, made with the first key.
    pub fn tag(&self, domain: Domain, parts: &[&[u8]]) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        if let Some(key) = self.keys.first() {
            let full = key.mac(domain, parts).finalize().into_bytes();
            tag.copy_from_slice(&full[..TAG_LEN]);
        }
        tag
    }

    /// True if `tag` is the tag of `parts` in `domain` under any of the keys (compared in
    /// constant time).
    pub fn verify(&self, domain: Domain, parts: &[&[u8]], tag: &[u8]) -> bool {
        tag.len() == TAG_LEN
            && self
                .keys
                .iter()
                .any(|k| k.mac(domain, parts).verify_truncated_left(tag).is_ok())
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring(<{} keys, redacted>)", self.keys.len())
    }
}

/// Authentication settings: with them a node tags everything it sends and refuses everything
/// untagged, badly tagged or replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// The cluster's keys.
    pub keys: Keyring,
    /// How far a request's timestamp may be from this node's wall clock, either way. Default
    /// 30 s: members' clocks must agree this well (NTP does far better). 1 ms..=1 h.
    pub max_clock_skew: Duration,
    /// Request nonces remembered to refuse replays, each for as long as its timestamp is within
    /// the skew. When full, further requests are refused (503) until old nonces age out.
    /// Default 65 536 (about 3 MB); at least 1.
    pub max_nonces: usize,
}

impl AuthConfig {
    /// `max_clock_skew` in milliseconds, as stamps are compared.
    pub fn skew_ms(&self) -> u64 {
        u64::try_from(self.max_clock_skew.as_millis()).unwrap_or(u64::MAX)
    }

    /// Authentication with `keys` and the default window and nonce bound.
    pub fn new(keys: Keyring) -> AuthConfig {
        AuthConfig {
            keys,
            max_clock_skew: Duration::from_secs(30),
            max_nonces: 65_536,
        }
    }
}

/// Why a datagram's counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// This counter was already accepted, or it is older than the window.
    Seen,
    /// From an older incarnation than one already authenticated.
    OldIncarnation,
}

/// The datagram counters accepted from one sender: the highest counter of its newest
/// incarnation and which of the [`REPLAY_WINDOW`] counters below it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindow {
    incarnation: u64,
    highest: u64,
    /// Bit `i` set: counter `highest - i` was accepted.
    seen: u128,
}

impl ReplayWindow {
    /// The window after accepting `counter` as the first datagram of `incarnation`.
    pub fn new(incarnation: u64, counter: u64) -> ReplayWindow {
        ReplayWindow {
            incarnation,
            highest: counter,
            seen: 1,
        }
    }

    /// The newest incarnation authenticated.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Accepts `(incarnation, counter)` once: a newer incarnation starts a new window; an older
    /// one, a counter seen, or one more than [`REPLAY_WINDOW`]` - 1` below the highest is
    /// refused and leaves the window as it was.
    pub fn accept(&mut self, incarnation: u64, counter: u64) -> Result<(), Replay> {
        if incarnation < self.incarnation {
            return Err(Replay::OldIncarnation);
        }
        if incarnation > self.incarnation {
            *self = ReplayWindow::new(incarnation, counter);
            return Ok(());
        }
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = counter;
            return Ok(());
        }
        let back = self.highest - counter;
        if back >= REPLAY_WINDOW || self.seen & (1 << back) != 0 {
            return Err(Replay::Seen);
        }
        self.seen |= 1 << back;
        Ok(())
    }
}

/// Why a request's freshness was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Its timestamp is further than the allowed skew from the local wall clock.
    OutsideWindow,
    /// Its nonce was seen within the window.
    Replayed,
    /// The cache holds `max_nonces` live nonces; the request is refused rather than forgotten.
    Full,
}

/// Nonces of the requests accepted recently, each kept while its timestamp is within the skew
/// of the wall clock (after that the timestamp alone refuses a replay). Bounded by its
/// capacity: when full it refuses rather than forgets.
#[derive(Debug, Clone, Default)]
pub struct NonceCache {
    seen: BTreeSet<(u64, u128)>,
    /// The latest wall-clock time seen: nonces are forgotten against it and stamps older than
    /// the window below it refused, so a clock set back never lets a forgotten nonce in again.
    high_water: u64,
}

impl NonceCache {
    /// Nonces held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True if no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Accepts a request stamped `stamp_ms` with `nonce` at wall-clock `wall_ms` once, if the
    /// stamp is within `skew_ms` of it, the nonce is new, and fewer than `capacity` nonces are
    /// live.
    pub fn accept(
        &mut self,
        wall_ms: u64,
        stamp_ms: u64,
        nonce: u128,
        skew_ms: u64,
        capacity: usize,
    ) -> Result<(), Freshness> {
        self.high_water = self.high_water.max(wall_ms);
        if stamp_ms.abs_diff(wall_ms) > skew_ms
            || stamp_ms.saturating_add(skew_ms) < self.high_water
        {
            return Err(Freshness::OutsideWindow);
        }
        while let Some(&(stamp, _)) = self.seen.first() {
            if stamp.saturating_add(skew_ms) >= self.high_water {
                break;
            }
            self.seen.pop_first();
        }
        if self.seen.contains(&(stamp_ms, nonce)) {
            return Err(Freshness::Replayed);
        }
        if self.seen.len() >= capacity {
            return Err(Freshness::Full);
        }
        self.seen.insert((stamp_ms, nonce));
        Ok(())
    }
}

/// Why a request's credentials were refused (before their freshness is checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestAuthError {
    /// No [`HEADER_AUTH`] header, or one that does not parse.
    Missing,
    /// A tag no key produced.
    BadTag,
}

/// Adds [`HEADER_AUTH`] to `req`, a request for the member serving at `host` (its HTTP
/// address as it advertises it, which is also what the request's `host` header carries):
/// `v1 <stamp_ms> <nonce> <tag>`, the tag made with the first key over the parts `WIRE.md` §8
/// lists. It also sets the `host` header (`Request::encode` writes the same). Set every other
/// header and the body first.
pub fn sign_request(keys: &Keyring, req: &mut Request, host: &str, stamp_ms: u64, nonce: u128) {
    req.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
    req.headers.push(("host".to_owned(), host.to_owned()));
    let tag = with_request_parts(req, stamp_ms, nonce, |parts| {
        keys.tag(Domain::Request, parts)
    });
    req.headers.push((
        HEADER_AUTH.to_owned(),
        format!("v1 {stamp_ms} {nonce:032x} {}", to_hex(&tag)),
    ));
}

/// Checks `req`'s credentials against `keys`: its stamp (Unix ms) and nonce if its tag is
/// valid. Freshness (the stamp's window, the nonce's first use) is the caller's to check, with
/// a [`NonceCache`].
pub fn verify_request(keys: &Keyring, req: &Request) -> Result<(u64, u128), RequestAuthError> {
    let (stamp_ms, nonce, tag) = req
        .header(HEADER_AUTH)
        .and_then(parse_credentials)
        .ok_or(RequestAuthError::Missing)?;
    let valid = with_request_parts(req, stamp_ms, nonce, |parts| {
        keys.verify(Domain::Request, parts, &tag)
    });
    if valid {
        Ok((stamp_ms, nonce))
    } else {
        Err(RequestAuthError::BadTag)
    }
}

/// Adds [`HEADER_AUTH`] to the answer to a request that carried `nonce`: `v1 <tag>` over the
/// nonce, the status and the body.
pub fn sign_response(keys: &Keyring, nonce: u128, resp: &mut Response) {
    let tag = with_response_parts(nonce, resp, |parts| keys.tag(Domain::Response, parts));
    resp.headers
        .push((HEADER_AUTH.to_owned(), format!("v1 {}", to_hex(&tag))));
}

/// True if `resp` carries a valid tag for the request sent with `nonce`.
pub fn verify_response(keys: &Keyring, nonce: u128, resp: &Response) -> bool {
    resp.header(HEADER_AUTH)
        .and_then(|v| v.strip_prefix("v1 "))
        .and_then(parse_tag)
        .is_some_and(|tag| {
            with_response_parts(nonce, resp, |parts| {
                keys.verify(Domain::Response, parts, &tag)
            })
        })
}

/// Calls `f` with the parts a request's tag covers: method, path, query pairs, the host (the
/// member it is for), the cluster and sender headers, stamp, nonce and body. The body and
/// headers are borrowed, not copied.
fn with_request_parts<R>(
    req: &Request,
    stamp_ms: u64,
    nonce: u128,
    f: impl FnOnce(&[&[u8]]) -> R,
) -> R {
    let mut query = Vec::new();
    for (k, v) in &req.query {
        for s in [k, v] {
            query.extend_from_slice(&(s.len() as u64).to_be_bytes());
            query.extend_from_slice(s.as_bytes());
        }
    }
    let header = |name| req.header(name).unwrap_or("").as_bytes();
    f(&[
        req.method.as_str().as_bytes(),
        req.path.as_bytes(),
        &query,
        header("host"),
        header(HEADER_CLUSTER),
        header(HEADER_FROM),
        &stamp_ms.to_be_bytes(),
        &nonce.to_be_bytes(),
        &req.body,
    ])
}

/// Calls `f` with the parts a response's tag covers: the request's nonce, the status and the
/// body (borrowed).
fn with_response_parts<R>(nonce: u128, resp: &Response, f: impl FnOnce(&[&[u8]]) -> R) -> R {
    f(&[&nonce.to_be_bytes(), &resp.status.to_be_bytes(), &resp.body])
}

/// Reads `v1 <stamp ms> <nonce: 32 hex> <tag: 32 hex>`.
fn parse_credentials(value: &str) -> Option<(u64, u128, [u8; TAG_LEN])> {
    let mut words = value.split(' ');
    if words.next()? != "v1" {
        return None;
    }
    let stamp = words.next()?;
    let nonce = words.next()?;
    let tag = parse_tag(words.next()?)?;
    let digits = |s: &str, hex: bool| {
        s.bytes().all(|b| {
            if hex {
                b.is_ascii_hexdigit()
            } else {
                b.is_ascii_digit()
            }
        })
    };
    if words.next().is_some()
        || nonce.len() != 32
        || !digits(nonce, true)
        || stamp.is_empty()
        || stamp.len() > 20
        || !digits(stamp, false)
    {
        return None;
    }
    Some((
        stamp.parse().ok()?,
        u128::from_str_radix(nonce, 16).ok()?,
        tag,
    ))
}

fn parse_tag(hex: &str) -> Option<[u8; TAG_LEN]> {
    if hex.len() != TAG_LEN * 2 {
        return None;
    }
    decode_hex(hex)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::new(vec![b; 32]).expect("valid key")
    }

    #[test]
    fn keys_are_bounded_and_never_shown() {
        assert_eq!(
            ClusterKey::new(vec![1; 15]),
            Err(KeyError::TooShort { index: 0, len: 15 })
        );
        assert!(ClusterKey::new(vec![1; 65]).is_err());
        assert_eq!(Keyring::new(vec![]), Err(KeyError::Missing));
        assert!(Keyring::new(vec![key(1); 9]).is_err());
        let ring =
            Keyring::single(ClusterKey::new(b"super secret key material".to_vec()).expect("ok"));
        let shown = format!("{ring:?} {:?}", key(7));
        assert!(
            !shown.contains("super") && !shown.contains("0707"),
            "{shown}"
        );
    }

    #[test]
    fn parses_hex_lists_with_comments_and_refuses_bad_text() {
        let text = "# cluster keys\n00112233445566778899aabbccddeeff\n\n  FFEEDDCCBBAA99887766554433221100 , 0123456789abcdef0123456789abcdef\n";
        let ring = Keyring::parse(text).expect("parses");
        assert_eq!(ring.len(), 3);
        assert_eq!(Keyring::parse("# nothing\n"), Err(KeyError::Missing));
        assert_eq!(
            Keyring::parse("00112233445566778899aabbccddeeff,xyz"),
            Err(KeyError::NotHex { index: 1 })
        );
        assert_eq!(
            Keyring::parse("0011"),
            Err(KeyError::TooShort { index: 0, len: 2 })
        );
        let nine = ["00112233445566778899aabbccddeeff"; 9].join("\n");
        assert_eq!(Keyring::parse(&nine), Err(KeyError::TooMany { count: 9 }));
    }

    #[test]
    fn tags_verify_under_any_key_of_the_ring_and_only_in_their_domain() {
        let old = Keyring::single(key(1));
        let rotating = Keyring::new(vec![key(2), key(1)]).expect("ok");
        let new = Keyring::single(key(2));
        let parts: [&[u8]; 2] = [b"abc", b"def"];
        let t_old = old.tag(Domain::Datagram, &parts);
        assert!(rotating.verify(Domain::Datagram, &parts, &t_old));
        assert!(!new.verify(Domain::Datagram, &parts, &t_old));
        let t_rot = rotating.tag(Domain::Datagram, &parts);
        assert!(new.verify(Domain::Datagram, &parts, &t_rot));
        assert!(!old.verify(Domain::Datagram, &parts, &t_rot));
        assert!(!old.verify(Domain::Request, &parts, &t_old));
        // Parts are length-prefixed: moving a byte between them changes the tag.
        assert!(!old.verify(Domain::Datagram, &[b"abcd", b"ef"], &t_old));
        assert!(!old.verify(Domain::Datagram, &parts, &t_old[..8]));
    }

    #[test]
    fn replay_window_accepts_each_counter_once_and_reordering_within_the_window() {
        let mut w = ReplayWindow::new(5, 10);
        assert_eq!(w.accept(5, 10), Err(Replay::Seen));
        assert_eq!(w.accept(5, 12), Ok(()));
        assert_eq!(w.accept(5, 11), Ok(()));
        assert_eq!(w.accept(5, 11), Err(Replay::Seen));
        assert_eq!(w.accept(5, 12 + REPLAY_WINDOW), Ok(()));
        assert_eq!(w.accept(5, 12), Err(Replay::Seen), "fell out of the window");
        assert_eq!(
            w.accept(5, 13),
            Ok(()),
            "the oldest counter still in the window"
        );
        assert_eq!(w.accept(4, 1_000), Err(Replay::OldIncarnation));
        assert_eq!(w.accept(6, 1), Ok(()));
        assert_eq!(w.incarnation(), 6);
        assert_eq!(w.accept(6, 1), Err(Replay::Seen));
    }

    #[test]
    fn nonce_cache_refuses_replays_stale_stamps_and_overflow() {
        let mut c = NonceCache::default();
        let skew = 1_000;
        assert_eq!(c.accept(10_000, 9_500, 1, skew, 2), Ok(()));
        assert_eq!(
            c.accept(10_000, 9_500, 1, skew, 2),
            Err(Freshness::Replayed)
        );
        assert_eq!(
            c.accept(10_000, 8_999, 2, skew, 2),
            Err(Freshness::OutsideWindow)
        );
        assert_eq!(
            c.accept(10_000, 11_001, 2, skew, 2),
            Err(Freshness::OutsideWindow)
        );
        assert_eq!(c.accept(10_000, 10_900, 2, skew, 2), Ok(()));
        assert_eq!(c.accept(10_000, 10_000, 3, skew, 2), Err(Freshness::Full));
        // Once the first stamp left the window its nonce is forgotten and room is made.
        assert_eq!(c.accept(10_600, 10_500, 3, skew, 2), Ok(()));
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.accept(10_600, 9_500, 1, skew, 2),
            Err(Freshness::OutsideWindow),
            "the forgotten nonce is refused by its stamp"
        );
        // The clock is set back by 800 ms: the stamp of the forgotten nonce is within the
        // skew of the new time, but below the window of the newest time seen.
        assert_eq!(
            c.accept(9_800, 9_500, 1, skew, 2),
            Err(Freshness::OutsideWindow),
            "a clock set back does not let a forgotten nonce in"
        );
    }
}
