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
/// Header carrying a request's or response's authentication (`WIRE.md` §8) when the cluster
/// is authenticated.
pub const HEADER_AUTH: &str = "x-hybridcast-auth";
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

/// Prefix of the session exchanges, the only ones sent with `POST`.
pub const PATH_SESSION_PREFIX: &str = "/hybridcast/v1/session/";
/// A primary ships a session to its secondary (`POST`, [`SessionReplicate`] →
/// [`ReplicateReply`]).
pub const PATH_SESSION_REPLICATE: &str = "/hybridcast/v1/session/replicate";
/// A member takes a session over from a member holding a copy (`POST`, [`SessionClaim`] →
/// [`ClaimReply`]).
pub const PATH_SESSION_CLAIM: &str = "/hybridcast/v1/session/claim";
/// A new primary tells a former holder to drop its older copy (`POST`, [`SessionRelease`] →
/// empty 200).
pub const PATH_SESSION_RELEASE: &str = "/hybridcast/v1/session/release";

/// What a replication carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaPayload {
    /// The whole state.
    Full(crate::session::SessionState),
    /// The changes of versions `base + 1 ..= version`, in order; valid only on a copy of the
    /// same generation at version `base`. An empty delta with `base == version` refreshes the
    /// copy's idle clock.
    Delta {
        /// Version the changes apply to.
        base: u64,
        /// The changes.
        changes: Vec<crate::session::Change>,
    },
}

/// Body of a replication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReplicate {
    /// The session.
    pub id: crate::session::SessionId,
    /// Owner epoch.
    pub epoch: u64,
    /// The primary (with `epoch`, the copy's generation).
    pub primary: crate::ids::MemberKey,
    /// Which of the primary's choices of secondary in this generation the copy belongs to
    /// (it rises each time the primary picks one): a late message sent to an earlier choice
    /// never overwrites a later copy, and a release to a former secondary never drops one.
    pub assignment: u64,
    /// Where the primary serves its HTTP exchanges: a secondary that has not heard of it as
    /// a member yet (it joined since, or heartbeats were lost) can still ask it before taking
    /// the session over.
    pub primary_addr: std::net::SocketAddr,
    /// Version after the payload is applied.
    pub version: u64,
    /// The payload.
    pub payload: ReplicaPayload,
}

/// The secondary's answer to a replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicateReply {
    /// The copy is at `version`.
    Ack {
        /// Version held.
        version: u64,
    },
    /// The delta does not apply to the copy held (or there is none): send the whole state.
    NeedFull,
    /// A newer generation owns the session: the sender must drop its copy.
    Superseded {
        /// Epoch of the newer generation.
        epoch: u64,
        /// Its primary.
        primary: crate::ids::MemberKey,
    },
    /// The copy does not fit (`max_sessions` or `max_session_bytes`); retried later.
    Refused,
}

/// Body of a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaim {
    /// The session.
    pub id: crate::session::SessionId,
    /// The member taking it over.
    pub claimant: crate::ids::MemberKey,
    /// The newest epoch the claimant knows of (its token's, or one it heard of since): the
    /// claimant will serve the session at a higher one.
    pub epoch: u64,
    /// Members the claimant could not reach while looking for the session: a holder does not
    /// send it back to one of them with `Moved`.
    pub unreachable: Vec<crate::ids::MemberKey>,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimReply {
    /// The holder's copy, handed over: the claimant serves it from now on as generation
    /// `(serve_epoch, claimant)`. The holder keeps the copy (in case this answer is lost) but
    /// answers any other claimant with `Moved` to this one, unless that claimant could not
    /// reach it or the holder knows it departed.
    Copy {
        /// The epoch the claimant serves the session at: above the claim's `epoch` and above
        /// every generation the holder knows of.
        serve_epoch: u64,
        /// The primary the copy came from.
        primary: crate::ids::MemberKey,
        /// Its version (committed changes only).
        version: u64,
        /// The state.
        state: crate::session::SessionState,
    },
    /// Another member owns the session now, as far as this holder knows: ask it.
    Moved {
        /// Epoch of that member's generation.
        epoch: u64,
        /// The owner.
        primary: crate::ids::MemberKey,
        /// The holder keeps a copy: if the owner cannot be reached, a claim naming it among
        /// the unreachable members gets the copy here.
        copy: bool,
    },
    /// The holder expired it for idleness.
    TimedOut,
    /// The holder has no copy and no memory of one.
    Unknown,
    /// The holder is itself taking the session over (a resume of its own is under way): ask
    /// again shortly.
    Busy,
}

/// Body of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRelease {
    /// The session.
    pub id: crate::session::SessionId,
    /// With `primary` and `assignment`: the receiver drops every copy ranked below
    /// `(epoch, primary, assignment)` (generation first, then assignment), and stops serving
    /// the session if its own generation is older than `(epoch, primary)`.
    ///
    /// A member taking a session over sends its new generation with assignment 0 (its own
    /// secondary's copy, assignment 1 or more, stays); a primary leaving a secondary behind
    /// sends its generation with the new assignment.
    pub epoch: u64,
    /// Primary of that generation.
    pub primary: crate::ids::MemberKey,
    /// The assignment below which copies of that generation go.
    pub assignment: u64,
}
