//! User sessions replicated from a primary to a secondary member, rebuilt on failover from a
//! compact canonical state.
//!
//! This module holds the session's data types; the node drives them (see the session commands
//! on [`crate::Node`]: [`session_create`](crate::Node::session_create),
//! [`session_put`](crate::Node::session_put), [`session_remove`](crate::Node::session_remove),
//! [`session_commit`](crate::Node::session_commit), [`session_resume`](crate::Node::session_resume)).
//!
//! # The model
//!
//! A session lives on its **primary** (the member that serves the user) and is copied to one
//! **secondary**, chosen among the live members by rendezvous hashing on the session id,
//! preferring a member with another host id than the primary's. Its state is a set of named
//! **pools** (see [`pool`]) mapping keys to a [`Value`]: a [`LogicalRef`] (the canonical key of
//! something the application can fetch again: a database key, or a query + page size + page
//! number) where one exists, raw bytes otherwise. The application changes the state with put and
//! remove and ends each user interaction with a commit, which ships the changes since the
//! version the secondary acknowledged (or the whole state when the secondary is new or behind).
//!
//! The application keeps a [`SessionToken`] (for example in a cookie): the session id, its owner
//! epoch, its primary and its secondary. A request carrying the token may reach any member;
//! [`Node::session_resume`](crate::Node::session_resume) finds the state — here, in the local
//! replica (failover), or point-to-point from a member holding a copy — and makes this member
//! the primary. A session with no surviving copy is reported expired, never silently empty.
//!
//! # Ownership
//!
//! Each change of primary raises the session's **epoch**. A copy is identified by its
//! *generation*, `(epoch, primary)`, ordered lexicographically: a member refuses replication
//! from an older generation than the copy it holds (the sender learns it was superseded and
//! drops its copy), so a primary cut off by a partition cannot overwrite the newer state of the
//! side that took over when the partition heals.

use crate::ids::MemberKey;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Identifies a session cluster-wide: 128 bits drawn from the creating node's generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub u128);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for SessionId {
    type Err = TokenError;
    /// Exactly 32 lower- or upper-case hex digits.
    fn from_str(s: &str) -> Result<Self, TokenError> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::BadField("id"));
        }
        u128::from_str_radix(s, 16)
            .map(SessionId)
            .map_err(|_| TokenError::BadField("id"))
    }
}

/// The canonical representation of something the application can rebuild: what kind of thing
/// it is and the bytes that identify it (a database key, a query and a page position).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogicalRef {
    /// What the key refers to (`"product"`, `"page"`, ...): tells the reconstruction hook how
    /// to read `key`.
    pub kind: String,
    /// The canonical key bytes.
    pub key: Bytes,
}

impl LogicalRef {
    /// The logical reference of kind `kind` with key `key`.
    pub fn new(kind: impl Into<String>, key: impl Into<Bytes>) -> LogicalRef {
        LogicalRef {
            kind: kind.into(),
            key: key.into(),
        }
    }

    /// A page of query results, seed 003's canonical state for a paged search: the query, the
    /// page size and the page number, instead of the rows themselves. Kind [`PageRef::KIND`].
    pub fn page(query: &str, page_size: u32, page: u32) -> LogicalRef {
        let mut key = Vec::with_capacity(8 + query.len());
        key.extend_from_slice(&page_size.to_be_bytes());
        key.extend_from_slice(&page.to_be_bytes());
        key.extend_from_slice(query.as_bytes());
        LogicalRef::new(PageRef::KIND, key)
    }

    /// The page this reference names, if it is one built by [`LogicalRef::page`].
    pub fn as_page(&self) -> Option<PageRef> {
        if self.kind != PageRef::KIND || self.key.len() < 8 {
            return None;
        }
        let (sizes, query) = self.key.split_at(8);
        let page_size = u32::from_be_bytes(sizes[..4].try_into().ok()?);
        let page = u32::from_be_bytes(sizes[4..].try_into().ok()?);
        let query = std::str::from_utf8(query).ok()?.to_owned();
        Some(PageRef {
            query,
            page_size,
            page,
        })
    }
}

/// A decoded [`LogicalRef::page`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageRef {
    /// The query whose results are paged.
    pub query: String,
    /// Results per page.
    pub page_size: u32,
    /// Page number (the application chooses whether it counts from 0 or 1).
    pub page: u32,
}

impl PageRef {
    /// The kind of a page reference.
    pub const KIND: &'static str = "page";
}

/// One value in a session pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// A canonical reference, rebuilt by the application on failover.
    Ref(LogicalRef),
    /// Data with no key to fetch it by (a quantity the user typed, a form draft).
    Raw(Bytes),
}

impl Value {
    /// A raw value.
    pub fn raw(bytes: impl Into<Bytes>) -> Value {
        Value::Raw(bytes.into())
    }

    /// The value's share of [`SessionState::bytes`].
    fn cost(&self) -> usize {
        match self {
            Value::Ref(r) => r.kind.len() + r.key.len() + 8,
            Value::Raw(b) => b.len() + 4,
        }
    }
}

/// Conventional pool names, after seed 003's pool hierarchy. Any non-empty name is a pool.
pub mod pool {
    /// The session-wide pool.
    pub const GLOBAL: &str = "global";

    /// The pool of composite step `step` (e.g. a search's page iterator).
    pub fn composite(step: &str) -> String {
        format!("composite/{step}")
    }

    /// The pool of interactive step `step`.
    pub fn interactive(step: &str) -> String {
        format!("interactive/{step}")
    }

    /// The pool of application `app` (e.g. a shopping cart).
    pub fn application(app: &str) -> String {
        format!("application/{app}")
    }
}

/// Bytes a (pool, key, value) entry counts for besides its names and value: its map slot (key
/// and value handles, a share of a B-tree node) and the allocations of its key and value.
pub const ENTRY_OVERHEAD: usize = 128;

/// Bytes a pool counts for besides its entries: its slot in the map of pools and its own map,
/// whose first B-tree node is allocated whole (eleven entry slots) even for one entry.
pub const POOL_OVERHEAD: usize = 1024;

/// A session's state: pools of key → [`Value`].
///
/// [`SessionState::bytes`] is the size the session is bounded by (`Config::max_session_bytes`):
/// every pool name, key and value, plus [`ENTRY_OVERHEAD`] per entry and [`POOL_OVERHEAD`] per
/// pool, so that it bounds the memory the state takes, within a small factor. It is never less
/// than the state's encoded size. A state is never decoded with an empty pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    #[serde(deserialize_with = "pools_without_empty")]
    pools: BTreeMap<String, BTreeMap<String, Value>>,
}

/// The pools of a state from the wire, refused if one is empty: [`SessionState::apply`] never
/// leaves an empty pool behind, and [`SessionState::bytes`] counts entries, so a peer's state
/// made of empty pools would hold memory that `max_session_bytes` does not see.
fn pools_without_empty<'de, D>(d: D) -> Result<BTreeMap<String, BTreeMap<String, Value>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let pools = BTreeMap::<String, BTreeMap<String, Value>>::deserialize(d)?;
    if pools.values().any(BTreeMap::is_empty) {
        return Err(serde::de::Error::custom("empty session pool"));
    }
    Ok(pools)
}

impl SessionState {
    /// The value under `key` in `pool`.
    pub fn get(&self, pool: &str, key: &str) -> Option<&Value> {
        self.pools.get(pool)?.get(key)
    }

    /// The entries of `pool`, sorted by key.
    pub fn pool(&self, pool: &str) -> impl Iterator<Item = (&str, &Value)> {
        self.pools
            .get(pool)
            .into_iter()
            .flat_map(|p| p.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Every `(pool, key, value)`, sorted by pool then key.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, &Value)> {
        self.pools.iter().flat_map(|(pool, entries)| {
            entries
                .iter()
                .map(move |(k, v)| (pool.as_str(), k.as_str(), v))
        })
    }

    /// Names of the non-empty pools.
    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// Number of entries in all pools.
    pub fn len(&self) -> usize {
        self.pools.values().map(BTreeMap::len).sum()
    }

    /// True if no pool holds anything.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// The bounded size of the state (see the type's documentation).
    pub fn bytes(&self) -> usize {
        self.pools.len() * POOL_OVERHEAD
            + self
                .entries()
                .map(|(p, k, v)| entry_cost(p, k, v))
                .sum::<usize>()
    }

    /// The size the state would have after `change`, given its size now.
    pub(crate) fn bytes_after(&self, bytes: usize, change: &Change) -> usize {
        let (pool, key) = change.target();
        let entries = self.pools.get(pool);
        let old = entries
            .and_then(|e| e.get(key))
            .map_or(0, |v| entry_cost(pool, key, v));
        match change {
            Change::Put { value, .. } => {
                let opened = if entries.is_none() { POOL_OVERHEAD } else { 0 };
                bytes - old + entry_cost(pool, key, value) + opened
            }
            Change::Remove { .. } => {
                // Removing a pool's last entry removes the pool.
                let closed = if old > 0 && entries.is_some_and(|e| e.len() == 1) {
                    POOL_OVERHEAD
                } else {
                    0
                };
                bytes - old - closed
            }
        }
    }

    /// True if a state taken from a peer is one this node could have built itself: every pool
    /// name non-empty and every pool name and key at most `max_name_len` bytes. (A state with
    /// an empty pool never decodes.)
    pub(crate) fn is_valid(&self, max_name_len: usize) -> bool {
        self.pools.iter().all(|(pool, entries)| {
            names_valid(pool, "", max_name_len)
                && entries.keys().all(|key| key.len() <= max_name_len)
        })
    }

    /// Applies `change`; returns the value it replaced or removed. (A plain value operation:
    /// the node checks `max_session_bytes` before it applies a change to a session.)
    pub fn apply(&mut self, change: Change) -> Option<Value> {
        match change {
            Change::Put { pool, key, value } => {
                self.pools.entry(pool).or_default().insert(key, value)
            }
            Change::Remove { pool, key } => {
                let entries = self.pools.get_mut(&pool)?;
                let old = entries.remove(&key);
                if entries.is_empty() {
                    self.pools.remove(&pool);
                }
                old
            }
        }
    }

    /// Rebuilds the application's objects from the state, entry by entry: references through
    /// [`Reconstructor::rebuild_reference`], raw values through [`Reconstructor::rebuild_raw`].
    /// Stops at the first entry the hook cannot rebuild.
    pub fn reconstruct<R: Reconstructor>(
        &self,
        hook: &mut R,
    ) -> Result<Vec<Restored<R::Object>>, ReconstructError<R::Error>> {
        let mut out = Vec::with_capacity(self.len());
        for (pool, key, value) in self.entries() {
            let object = match value {
                Value::Ref(r) => hook.rebuild_reference(pool, key, r),
                Value::Raw(b) => hook.rebuild_raw(pool, key, b),
            }
            .map_err(|error| ReconstructError {
                pool: pool.to_owned(),
                key: key.to_owned(),
                error,
            })?;
            out.push(Restored {
                pool: pool.to_owned(),
                key: key.to_owned(),
                object,
            });
        }
        Ok(out)
    }
}

/// The rule the local API applies to names: a pool name is non-empty, and pool names and keys
/// are at most `max_name_len` bytes.
fn names_valid(pool: &str, key: &str, max_name_len: usize) -> bool {
    !pool.is_empty() && pool.len() <= max_name_len && key.len() <= max_name_len
}

fn entry_cost(pool: &str, key: &str, value: &Value) -> usize {
    pool.len() + key.len() + value.cost() + ENTRY_OVERHEAD
}

/// One change to a session's state, as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// `pool[key] = value`.
    Put {
        /// Pool name.
        pool: String,
        /// Key in the pool.
        key: String,
        /// New value.
        value: Value,
    },
    /// `pool[key]` removed.
    Remove {
        /// Pool name.
        pool: String,
        /// Key in the pool.
        key: String,
    },
}

impl Change {
    /// The (pool, key) the change is about.
    pub fn target(&self) -> (&str, &str) {
        match self {
            Change::Put { pool, key, .. } | Change::Remove { pool, key } => (pool, key),
        }
    }

    /// True if a change taken from a peer names its pool and key as the local API requires.
    pub(crate) fn is_valid(&self, max_name_len: usize) -> bool {
        let (pool, key) = self.target();
        names_valid(pool, key, max_name_len)
    }

    /// Bytes the change counts for in a replication delta.
    pub(crate) fn cost(&self) -> usize {
        let (pool, key) = self.target();
        let value = match self {
            Change::Put { value, .. } => value.cost(),
            Change::Remove { .. } => 0,
        };
        pool.len() + key.len() + value + ENTRY_OVERHEAD
    }
}

/// The application's hook turning a session's canonical state back into objects on failover:
/// logical references are fetched again (from a database, by re-running a query), raw values
/// decoded.
pub trait Reconstructor {
    /// What an entry becomes.
    type Object;
    /// Why an entry could not be rebuilt.
    type Error;

    /// Rebuilds the object `reference` names (found under `key` in `pool`).
    fn rebuild_reference(
        &mut self,
        pool: &str,
        key: &str,
        reference: &LogicalRef,
    ) -> Result<Self::Object, Self::Error>;

    /// Rebuilds the object stored raw under `key` in `pool`.
    fn rebuild_raw(
        &mut self,
        pool: &str,
        key: &str,
        bytes: &[u8],
    ) -> Result<Self::Object, Self::Error>;
}

/// One rebuilt entry from [`SessionState::reconstruct`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored<T> {
    /// Pool the entry came from.
    pub pool: String,
    /// Its key.
    pub key: String,
    /// The rebuilt object.
    pub object: T,
}

/// An entry the reconstruction hook refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot rebuild {pool}/{key}")]
pub struct ReconstructError<E> {
    /// Pool of the entry.
    pub pool: String,
    /// Its key.
    pub key: String,
    /// The hook's error.
    pub error: E,
}

/// What the application keeps (in a cookie, a URL) to find its session again: the session id,
/// the owner epoch, the primary and the secondary. [`fmt::Display`] gives a URL-safe string
/// (`[0-9a-f.-]`, at most 90 characters), [`FromStr`] reads it back.
///
/// The token changes whenever the owners change; the node returns the current one from every
/// commit and resume, and the application should store it each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionToken {
    /// The session.
    pub id: SessionId,
    /// Owner epoch: raised at every change of primary.
    pub epoch: u64,
    /// The member serving the session.
    pub primary: MemberKey,
    /// The member holding its copy, if the primary has found one.
    pub secondary: Option<MemberKey>,
}

/// Largest epoch (and version) a member accepts from a peer or a token: 2^62, far beyond any
/// real count and far enough below `u64::MAX` that raising one never overflows.
pub const MAX_EPOCH: u64 = 1 << 62;

/// Version prefix of the token format.
const TOKEN_PREFIX: &str = "s1";
/// Longest token text accepted by [`SessionToken::from_str`].
pub const MAX_TOKEN_LEN: usize = 96;

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{:016x}.",
            self.id, self.epoch, self.primary.0
        )?;
        match self.secondary {
            Some(s) => write!(f, "{:016x}", s.0),
            None => f.write_str("-"),
        }
    }
}

/// Why a token could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("session token longer than {MAX_TOKEN_LEN} characters")]
    TooLong,
    /// Not `s1.<id>.<epoch>.<primary>.<secondary>`.
    #[error("not a session token")]
    BadFormat,
    /// A field does not parse.
    #[error("bad {0} in session token")]
    BadField(&'static str),
}

impl FromStr for SessionToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, TokenError> {
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut parts = s.split('.');
        let (Some(TOKEN_PREFIX), Some(id), Some(epoch), Some(primary), Some(secondary), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::BadFormat);
        };
        let key = |field: &'static str, text: &str| {
            if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(TokenError::BadField(field));
            }
            u64::from_str_radix(text, 16)
                .map(MemberKey)
                .map_err(|_| TokenError::BadField(field))
        };
        if epoch.is_empty() || epoch.len() > 20 || !epoch.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::BadField("epoch"));
        }
        let epoch: u64 = epoch.parse().map_err(|_| TokenError::BadField("epoch"))?;
        if epoch > MAX_EPOCH {
            return Err(TokenError::BadField("epoch"));
        }
        Ok(SessionToken {
            id: id.parse()?,
            epoch,
            primary: key("primary", primary)?,
            secondary: match secondary {
                "-" => None,
                s => Some(key("secondary", s)?),
            },
        })
    }
}

/// Why a session could not be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpiredReason {
    /// A member that held it expired it after `session_idle_timeout` without use (seed 003's
    /// "timed out" session, as opposed to a failed-over one).
    TimedOut,
    /// Every copy is gone: its primary and its secondary failed, left or restarted.
    Lost,
}

impl fmt::Display for ExpiredReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExpiredReason::TimedOut => "timed out",
            ExpiredReason::Lost => "lost",
        })
    }
}

/// What [`Node::session_resume`](crate::Node::session_resume) found at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// This member is the session's primary: go on with the state it holds.
    Ready(SessionToken),
    /// This member held the replica and is now the primary. The state is in the
    /// [`Event::SessionFailover`](crate::Event::SessionFailover) queued with it.
    FailedOver(SessionToken),
    /// A copy is being fetched point-to-point; the outcome comes as
    /// [`Event::SessionFailover`](crate::Event::SessionFailover) or
    /// [`Event::SessionExpired`](crate::Event::SessionExpired) for this id.
    Pending,
    /// No copy survives. An [`Event::SessionExpired`](crate::Event::SessionExpired) is queued
    /// too.
    Expired(ExpiredReason),
}

/// Misuse of the session API. A refused command leaves the node unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The node has left the cluster.
    #[error("the node has left the cluster")]
    Left,
    /// This member is not the primary of that session (resume it first).
    #[error("session {0} is not served by this member")]
    NotHere(SessionId),
    /// The node already holds `max_sessions` sessions (primaries and replicas).
    #[error("already holding the maximum of {max} sessions")]
    TooManySessions {
        /// `max_sessions`.
        max: usize,
    },
    /// The change would make the session larger than `max_session_bytes`.
    #[error("session would grow to {bytes} bytes, over max_session_bytes {max}")]
    TooLarge {
        /// Its size after the change.
        bytes: usize,
        /// `max_session_bytes`.
        max: usize,
    },
    /// A pool name must not be empty.
    #[error("empty pool name")]
    EmptyPool,
    /// A pool name or key is longer than `max_name_len`.
    #[error("{what} of {len} bytes exceeds max_name_len {max}")]
    TooLong {
        /// `"pool"` or `"key"`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// `max_name_len`.
        max: usize,
    },
    /// A resume is already fetching this session.
    #[error("session {0} is already being resumed")]
    Resuming(SessionId),
}

/// A primary session as [`Node::session`](crate::Node::session) shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// The current token.
    pub token: SessionToken,
    /// Commits so far (in this and earlier epochs).
    pub version: u64,
    /// The version the secondary acknowledged in this epoch, if any: commits up to it survive
    /// the loss of this member.
    pub replicated: Option<u64>,
    /// True if puts or removes were made since the last commit.
    pub uncommitted: bool,
    /// [`SessionState::bytes`].
    pub bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `session_decode` fuzz target: a state of empty pools decoded with
    /// `bytes() == 0` whatever its size.
    #[test]
    fn a_state_with_an_empty_pool_does_not_decode() {
        let mut raw: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        raw.insert("p".repeat(200), BTreeMap::new());
        let bytes = crate::codec::encode(&raw).expect("encodes");
        assert!(crate::codec::decode::<SessionState>(&bytes, 1 << 20).is_err());
        let mut ok = SessionState::default();
        ok.apply(Change::Put {
            pool: "p".into(),
            key: "k".into(),
            value: Value::raw(&b"v"[..]),
        });
        let bytes = crate::codec::encode(&ok).expect("encodes");
        assert_eq!(
            crate::codec::decode::<SessionState>(&bytes, 1 << 20),
            Ok(ok)
        );
    }

    #[test]
    fn tokens_round_trip_and_are_url_safe() {
        let t = SessionToken {
            id: SessionId(u128::MAX - 5),
            epoch: MAX_EPOCH,
            primary: MemberKey(1),
            secondary: Some(MemberKey(u64::MAX)),
        };
        let s = t.to_string();
        assert!(s.len() <= MAX_TOKEN_LEN);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        );
        assert_eq!(s.parse::<SessionToken>(), Ok(t));
        let alone = SessionToken {
            secondary: None,
            ..t
        };
        assert_eq!(alone.to_string().parse::<SessionToken>(), Ok(alone));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let good = "s1.0000000000000000000000000000002a.3.0000000000000001.-";
        assert!(good.parse::<SessionToken>().is_ok());
        for bad in [
            "",
            "s2.0000000000000000000000000000002a.3.0000000000000001.-",
            "s1.2a.3.0000000000000001.-",
            "s1.0000000000000000000000000000002a.-3.0000000000000001.-",
            "s1.0000000000000000000000000000002a.3.000000000000001.-",
            "s1.0000000000000000000000000000002a.3.0000000000000001.-.x",
            "s1.0000000000000000000000000000002a.99999999999999999999.0000000000000001.-",
            "s1.+000000000000000000000000000002a.3.0000000000000001.-",
        ] {
            assert!(bad.parse::<SessionToken>().is_err(), "{bad}");
        }
        assert_eq!(
            "x".repeat(200).parse::<SessionToken>(),
            Err(TokenError::TooLong)
        );
    }

    #[test]
    fn page_references_round_trip() {
        let r = LogicalRef::page("router", 10, 2);
        assert_eq!(
            r.as_page(),
            Some(PageRef {
                query: "router".into(),
                page_size: 10,
                page: 2
            })
        );
        assert_eq!(LogicalRef::new("product", "p-1").as_page(), None);
        assert_eq!(LogicalRef::new(PageRef::KIND, "short").as_page(), None);
    }

    #[test]
    fn state_size_follows_changes() {
        let mut s = SessionState::default();
        let mut bytes = 0;
        let changes = [
            Change::Put {
                pool: pool::GLOBAL.into(),
                key: "user".into(),
                value: Value::raw("alice"),
            },
            Change::Put {
                pool: pool::application("cart"),
                key: "p-1".into(),
                value: Value::Ref(LogicalRef::new("product", "p-1")),
            },
            Change::Put {
                pool: pool::GLOBAL.into(),
                key: "user".into(),
                value: Value::raw("bob"),
            },
            Change::Put {
                pool: pool::application("cart"),
                key: "p-2".into(),
                value: Value::raw("2"),
            },
            Change::Remove {
                pool: pool::application("cart"),
                key: "p-1".into(),
            },
            Change::Remove {
                pool: pool::application("cart"),
                key: "missing".into(),
            },
            Change::Remove {
                pool: pool::application("cart"),
                key: "p-2".into(),
            },
            Change::Remove {
                pool: "none".into(),
                key: "x".into(),
            },
        ];
        for c in changes {
            bytes = s.bytes_after(bytes, &c);
            s.apply(c);
            assert_eq!(bytes, s.bytes());
        }
        assert_eq!(s.len(), 1);
        assert_eq!(s.pool_names().collect::<Vec<_>>(), vec!["global"]);
        let encoded = crate::codec::encode(&s).unwrap_or_default();
        assert!(encoded.len() <= s.bytes() + 8);
    }

    struct Hook;
    impl Reconstructor for Hook {
        type Object = String;
        type Error = String;
        fn rebuild_reference(
            &mut self,
            _: &str,
            _: &str,
            r: &LogicalRef,
        ) -> Result<String, String> {
            match r.as_page() {
                Some(p) => Ok(format!("{} page {}", p.query, p.page)),
                None => Err(format!("unknown kind {}", r.kind)),
            }
        }
        fn rebuild_raw(&mut self, _: &str, _: &str, b: &[u8]) -> Result<String, String> {
            Ok(String::from_utf8_lossy(b).into_owned())
        }
    }

    #[test]
    fn reconstruction_goes_through_the_hook() {
        let mut s = SessionState::default();
        s.apply(Change::Put {
            pool: pool::composite("search"),
            key: "iterator".into(),
            value: Value::Ref(LogicalRef::page("router", 10, 2)),
        });
        s.apply(Change::Put {
            pool: pool::GLOBAL.into(),
            key: "user".into(),
            value: Value::raw("alice"),
        });
        let rebuilt = s.reconstruct(&mut Hook).unwrap_or_default();
        let objects: Vec<&str> = rebuilt.iter().map(|r| r.object.as_str()).collect();
        assert_eq!(objects, vec!["router page 2", "alice"]);
        s.apply(Change::Put {
            pool: pool::GLOBAL.into(),
            key: "z".into(),
            value: Value::Ref(LogicalRef::new("order", "7")),
        });
        let err = s.reconstruct(&mut Hook).err();
        assert_eq!(err.map(|e| e.key), Some("z".to_owned()));
    }
}
