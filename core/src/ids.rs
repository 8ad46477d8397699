//! Small identifiers shared by every module, and the stable hash that derives them.
//!
//! Keys are derived with 64-bit FNV-1a followed by a SplitMix64 finaliser, so the same name gives
//! the same key on every platform and in every release of the v1 protocol.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable 64-bit hash used for cluster ids, member keys and rendezvous hashing.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// SplitMix64 finaliser: spreads the bits of `x` over the whole word.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Identifies a cluster on the wire: the stable hash of the cluster name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// The id of the cluster called `name`.
    pub fn of(name: &str) -> Self {
        ClusterId(stable_hash(&[b"cluster", name.as_bytes()]))
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Identifies a member across restarts: the stable hash of its member name.
///
/// Every incarnation of a member has the same key; the incarnation tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberKey(pub u64);

impl MemberKey {
    /// The key of the member called `name`.
    pub fn of(name: &str) -> Self {
        MemberKey(stable_hash(&[b"member", name.as_bytes()]))
    }
}

impl fmt::Display for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One of a member's independent sequenced channels (the patent's `senderNum`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Channel {
    /// Naming announcements; recovered by a snapshot of the sender's current offers.
    State,
    /// Pub/sub messages; recovered from the sender's bounded retention buffer.
    Log,
}

impl Channel {
    /// Both channels, in wire-id order.
    pub const ALL: [Channel; 2] = [Channel::State, Channel::Log];

    /// The channel's id on the wire.
    pub fn wire_id(self) -> u8 {
        match self {
            Channel::State => 0,
            Channel::Log => 1,
        }
    }

    /// The channel with wire id `id`, if v1 knows it.
    pub fn from_wire_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Channel::State),
            1 => Some(Channel::Log),
            _ => None,
        }
    }

    /// Index of the channel in per-channel arrays.
    pub(crate) fn index(self) -> usize {
        usize::from(self.wire_id())
    }

    /// The channel's name as used in paths and logs.
    pub fn name(self) -> &'static str {
        match self {
            Channel::State => "state",
            Channel::Log => "log",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Names one point-to-point request the node asked its runtime to perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req#{}", self.0)
    }
}

/// A deterministic pseudo-random generator (xoshiro256**) seeded by the node's owner.
///
/// The core has no other source of randomness: the same seed and the same inputs give the same
/// outputs.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix64(x)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform value in `0..n` (`n` must be non-zero; 0 gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift reduction: bias is below 2^-64 * n, irrelevant here.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(MemberKey::of("web/1"), MemberKey::of("web/1"));
        assert_ne!(MemberKey::of("web/1"), MemberKey::of("web/2"));
        assert_ne!(ClusterId::of("a").0, MemberKey::of("a").0);
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
