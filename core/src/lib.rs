//! # hybridcast-core
//!
//! The sans-IO protocol core of hybridcast: cluster members multicast sequence-numbered,
//! fragmented announcements of the services they offer and the messages they publish; a member
//! that finds itself out of sync with a sender makes ONE point-to-point HTTP request to that
//! sender instead of multicasting NAKs; a joining member listens for a few heartbeats and then
//! fetches the whole cluster's state from ONE member.
//!
//! This crate is only the state machine. It never touches a socket, a thread, a clock or a
//! global random generator: time enters as `now` arguments, randomness from a seed, datagrams and
//! HTTP exchanges as bytes. Runtimes (`hybridcast-mio`, `hybridcast-smol`) move the bytes.
//!
//! Start with [`Node`]: its documentation states the call order. The wire format is described in
//! `WIRE.md` and the invariants in `ALGORITHM.md`, both beside this crate's `Cargo.toml`.
//!
//! ## Modules
//! - [`auth`]: cluster keys, tags and replay windows (authenticated traffic).
//! - [`wire`]: the datagram codec (the only code that knows the datagram layout).
//! - [`http`]: HTTP/1.1 framing for point-to-point exchanges, pure over bytes.
//! - [`hub`]: hub mode, the message server and a member's link to it, where multicast is not
//!   available.
//! - [`exchange`]: the paths and bincode bodies of those exchanges and of sequenced messages.
//! - [`codec`]: the bounded bincode wrapper.
//! - [`naming`]: the replicated registry of offers and smart-stub selection.
//! - [`session`]: user sessions replicated to a secondary and rebuilt on failover.
//! - [`membership`], [`event`], [`stats`], [`config`], [`ids`]: the rest of the public surface.

pub mod auth;
pub mod channel;
pub mod codec;
pub mod config;
pub mod event;
pub mod exchange;
pub mod http;
pub mod hub;
pub mod ids;
pub mod membership;
pub mod naming;
mod node;
pub mod session;
pub mod stats;
pub mod wire;

pub use auth::{AuthConfig, ClusterKey, KeyError, Keyring};
pub use config::{Config, ConfigError, Identity};
pub use event::{Event, Peer};
pub use ids::{Channel, ClusterId, MemberKey, RequestId};
pub use membership::{MemberInfo, MemberState};
pub use naming::{Provider, Registry, Strategy};
pub use node::{CommandError, Node, RequestFailure, Transmit};
pub use session::{
    ExpiredReason, LogicalRef, Resume, SessionError, SessionId, SessionInfo, SessionState,
    SessionToken, Value,
};
pub use stats::{AuthDrops, Drops, Stats};
