//! The one wrapper around bincode (pinned at 2.0.1): every serde body in hybridcast is encoded
//! and decoded here, always with a byte limit.
//!
//! bincode is unmaintained (RUSTSEC-2025-0141), so nothing else in the crate names it. Decoding
//! refuses input longer than the caller's bound, sets bincode's allocation limit from a tier
//! just above the input's length (so a short input cannot claim a large allocation), and
//! rejects trailing bytes.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a body could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input is longer than the bound the caller allows.
    #[error("body of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Input length.
        len: usize,
        /// Allowed length.
        limit: usize,
    },
    /// Bytes left after the value.
    #[error("{0} trailing bytes after the body")]
    Trailing(usize),
    /// bincode refused the input (or, when encoding, the value).
    #[error("malformed body: {0}")]
    Malformed(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` (our own types always encode).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Malformed(e.to_string()))
}

macro_rules! decode_tiers {
    ($bytes:expr, $( $tier:literal ),+) => {{
        let bytes: &[u8] = $bytes;
        let len = bytes.len();
        $(
            if len <= $tier {
                let cfg = config().with_limit::<{ CLAIM_FACTOR * $tier }>();
                return finish(bincode::serde::decode_from_slice(bytes, cfg), len);
            }
        )+
        Err(CodecError::TooLarge { len, limit: MAX_BODY })
    }};
}

/// How many times its tier's size an input may claim in bincode's allocation accounting.
///
/// bincode counts a sequence's elements at their in-memory size, which can be far above their
/// encoded size: a `(String, String)` of two empty strings is 48 bytes in memory and 2 encoded,
/// a naming change 48 and 3, a logged message 40 and 2. The factor must exceed the largest such
/// ratio among the types the protocol sends (24), or a body one member encodes would be refused
/// by its peers as over the limit. It does not raise what decoding really allocates: sequences
/// grow only as their elements are read, so that stays a multiple (at most that ratio) of the
/// input's length.
pub const CLAIM_FACTOR: usize = 32;

/// Longest body the codec decodes (256 MiB).
pub const MAX_BODY: usize = 268_435_456;

/// Decodes a `T` from all of `bytes`, refusing inputs longer than `max_len` (and than
/// [`MAX_BODY`]).
///
/// bincode's allocation limit — which covers strings, byte buffers and sequences — is
/// [`CLAIM_FACTOR`] times the smallest power-of-four tier (1 KiB to 256 MiB) that holds the
/// input. Sequences decoded through
/// serde pre-allocate at most 1 MiB and then grow only as elements are actually read, so every
/// allocation is bounded by a small multiple of the input's length (each element's in-memory size
/// over its smallest encoding).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, CodecError> {
    if bytes.len() > max_len {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit: max_len,
        });
    }
    decode_tiers!(
        bytes, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864, 268435456
    )
}

fn finish<T>(
    r: Result<(T, usize), bincode::error::DecodeError>,
    len: usize,
) -> Result<T, CodecError> {
    match r {
        Ok((v, used)) if used == len => Ok(v),
        Ok((_, used)) => Err(CodecError::Trailing(len - used)),
        Err(e) => Err(CodecError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing() {
        let v: (String, Vec<u8>) = ("a".into(), vec![1, 2, 3]);
        let mut b = encode(&v).expect("encode");
        assert_eq!(decode::<(String, Vec<u8>)>(&b, 100), Ok(v));
        b.push(0);
        assert_eq!(
            decode::<(String, Vec<u8>)>(&b, 100),
            Err(CodecError::Trailing(1))
        );
        assert!(matches!(
            decode::<(String, Vec<u8>)>(&b, 2),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn short_input_cannot_claim_a_huge_allocation() {
        // A varint length prefix claiming ~2^60 bytes, in 9 bytes of input.
        let evil = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(matches!(
            decode::<Vec<u8>>(&evil, 1 << 20),
            Err(CodecError::Malformed(_))
        ));
        let evil = [0xfc, 0, 0, 0, 0x40]; // 1 GiB string
        assert!(matches!(
            decode::<String>(&evil, 1 << 20),
            Err(CodecError::Malformed(_))
        ));
    }

    /// Found by the `state_dump_decode` fuzz target: an announcement of empty-string binds
    /// encoded to 1023 bytes, and its in-memory size (48 bytes per 3-byte change) exceeded the
    /// allocation limit of its tier, so a body a member encodes was refused by its peers.
    #[test]
    fn whatever_is_encoded_decodes_within_its_own_length() {
        use crate::exchange::{Announcement, NamingChange};
        for n in [1usize, 100, 341, 1365, 5461, 21_845] {
            // Pairs of empty strings: 2 bytes encoded, 48 in memory, the largest ratio the
            // protocol's bodies have.
            let pairs: Vec<(String, String)> = vec![(String::new(), String::new()); n];
            let bytes = encode(&pairs).expect("encodes");
            assert_eq!(
                decode::<Vec<(String, String)>>(&bytes, bytes.len()).as_ref(),
                Ok(&pairs),
                "{n} pairs in {} bytes",
                bytes.len()
            );
            let a = Announcement {
                changes: vec![NamingChange::Bind(String::new(), String::new()); n],
            };
            let bytes = encode(&a).expect("encodes");
            assert_eq!(decode::<Announcement>(&bytes, bytes.len()), Ok(a));
        }
    }
}
