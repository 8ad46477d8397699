//! The point-to-point exchanges: their paths and the bincode bodies they carry, plus the
//! payloads of sequenced messages (naming announcements and published messages).
//!
//! All of them are encoded with [`crate::codec`]; see `core/WIRE.md` for the table of paths.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Prefix of every hybridcast path.
pub const PATH_PREFIX: &str = "/hybridcast/v1/";
/// Liveness check answered with the member's identity ([`ProbeReply`]).
pub const PATH_PROBE: &str = "/hybridcast/v1/probe";
/// The member's naming state and the state-channel sequence it reflects ([`StateSnapshot`]).
pub const PATH_STATE: &str = "/hybridcast/v1/channel/state";
/// Retained log-channel messages `from..=to` ([`LogRange`]).
pub const PATH_LOG: &str = "/hybridcast/v1/channel/log";
/// Everything the member knows about the cluster, for a joining node ([`ClusterDump`]).
pub const PATH_DUMP: &str = "/hybridcast/v1/dump";
/// Request header naming the cluster id (16 hex digits); other clusters get 403.
pub const HEADER_CLUSTER: &str = "x-hybridcast-cluster";
/// Request header naming the asking member (informational).
pub const HEADER_FROM: &str = "x-hybridcast-from";
/// Content type of bincode bodies.
pub const CONTENT_TYPE: &str = "application/x-hybridcast-bincode";

/// A member's identity as exchanged point-to-point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireIdentity {
    /// Member name.
    pub name: String,
    /// Incarnation.
    pub incarnation: u64,
    /// Point-to-point address.
    pub http_addr: SocketAddr,
    /// Host id.
    pub host_id: String,
    /// Last reported load.
    pub load: u32,
}

/// Answer to a probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReply {
    /// Who answered.
    pub identity: WireIdentity,
}

/// Answer to a state-channel recovery: the whole current naming state of the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// Incarnation the state belongs to.
    pub incarnation: u64,
    /// Last state-channel sequence the offers reflect.
    pub seq: u64,
    /// The sender's offers, `(name, value)`, sorted by name.
    pub offers: Vec<(String, String)>,
}

/// Answer to a log-channel recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRange {
    /// Incarnation the log belongs to.
    pub incarnation: u64,
    /// Oldest retained sequence (anything older is gone); `last_seq + 1` if nothing is retained.
    pub first_retained: u64,
    /// Last sequence sent.
    pub last_seq: u64,
    /// Retained messages in the asked range, ascending and contiguous.
    pub messages: Vec<(u64, Bytes)>,
}

/// One member in a [`ClusterDump`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpEntry {
    /// Who.
    pub identity: WireIdentity,
    /// Its naming state as known by the dumping member, with the sequence it reflects; `None`
    /// if the dumping member is not synchronised with it.
    pub state: Option<(u64, Vec<(String, String)>)>,
    /// Last log-channel sequence the dumping member delivered from it, if synchronised.
    pub log_seq: Option<u64>,
}

/// Answer to a join's state-dump request: the responder first, then every member it tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDump {
    /// Entries, the responder's own first.
    pub members: Vec<DumpEntry>,
}

/// One change in a naming announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamingChange {
    /// The sender now offers `name` with `value`.
    Bind(String, String),
    /// The sender no longer offers `name`.
    Unbind(String),
}

/// A state-channel message: the changes of one tick, applied in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The changes.
    pub changes: Vec<NamingChange>,
}

/// A log-channel message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
}
