//! What a node tells its owner, drained with [`crate::Node::poll_event`].

use crate::ids::{Channel, MemberKey};
use crate::session::{ExpiredReason, SessionId, SessionState, SessionToken};
use bytes::Bytes;
use std::net::SocketAddr;
use std::ops::RangeInclusive;

/// A remote member as events name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Stable key (hash of the name).
    pub key: MemberKey,
    /// Member name.
    pub name: String,
    /// Incarnation the event is about.
    pub incarnation: u64,
}

/// Something that happened in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This node finished joining: in sync with every member in the dump it fetched
    /// (`via`), or alone / falling back to per-member recovery (`via: None`).
    Joined {
        /// Member whose state dump was applied.
        via: Option<Peer>,
        /// Remote members known right after joining.
        members: usize,
    },
    /// A member was seen for the first time (or came back after being declared failed).
    MemberJoined {
        /// Who.
        peer: Peer,
        /// Its point-to-point address.
        http_addr: SocketAddr,
    },
    /// A member restarted: the new incarnation replaced the old one and its offers.
    MemberRestarted {
        /// The new incarnation.
        peer: Peer,
        /// The incarnation it replaced.
        old_incarnation: u64,
    },
    /// Heartbeats stopped; a probe is on its way.
    MemberSuspect {
        /// Who.
        peer: Peer,
    },
    /// A suspect member answered its probe or was heard again.
    MemberAlive {
        /// Who.
        peer: Peer,
    },
    /// A member is declared failed (its probe failed); its offers left the view.
    MemberFailed {
        /// Who.
        peer: Peer,
    },
    /// A member announced that it leaves; its offers left the view.
    MemberLeft {
        /// Who.
        peer: Peer,
    },
    /// Two live members claim one name. The higher incarnation wins (on a tie, the lower HTTP
    /// address); the loser's traffic is ignored by everyone.
    NameConflict {
        /// The contested name.
        name: String,
        /// Incarnation that keeps the name.
        winner_incarnation: u64,
        /// Incarnation whose traffic is ignored.
        loser_incarnation: u64,
        /// True if the loser is this node: its owner should stop it or rename it.
        this_node_lost: bool,
    },
    /// `member` now offers `name` with `value` (a changed value is reported as a new `Bound`).
    Bound {
        /// Service name.
        name: String,
        /// Provider.
        member: MemberKey,
        /// Offered value.
        value: String,
    },
    /// `member` no longer offers `name`.
    Unbound {
        /// Service name.
        name: String,
        /// Former provider.
        member: MemberKey,
    },
    /// A published message, in per-sender order, exactly once.
    Message {
        /// Sender.
        member: MemberKey,
        /// The sender's incarnation: sequences start again at 1 with each incarnation, so a
        /// delivery is identified by `(member, incarnation, seq)` even if the owner missed the
        /// `MemberRestarted` event.
        incarnation: u64,
        /// Its sequence on the sender's log channel.
        seq: u64,
        /// Topic.
        topic: String,
        /// Payload.
        payload: Bytes,
    },
    /// Messages `range` from `member` on `channel` are lost for good (they left the sender's
    /// retention before they could be recovered): clear whatever they would have updated.
    Gap {
        /// Sender.
        member: MemberKey,
        /// The sender's incarnation the sequences belong to.
        incarnation: u64,
        /// Channel.
        channel: Channel,
        /// Lost sequence numbers.
        range: RangeInclusive<u64>,
    },
    /// This member took a session over and is now its primary: from its local replica (the
    /// primary failed), or from a copy fetched point-to-point. Rebuild the application's objects
    /// from `state` (see [`SessionState::reconstruct`]) and give the user `token`.
    SessionFailover {
        /// The session.
        id: SessionId,
        /// Its former primary.
        from: MemberKey,
        /// The new token (this member primary, a new secondary).
        token: SessionToken,
        /// The state as of the last version the copy held.
        state: SessionState,
    },
    /// A session asked for with [`crate::Node::session_resume`] cannot be resumed, or one this
    /// member served was expired for idleness.
    SessionExpired {
        /// The session.
        id: SessionId,
        /// Timed out, or every copy lost.
        reason: ExpiredReason,
    },
    /// Another member took over a session this member served: the local copy is gone (or kept
    /// only as that member's replica) and commands on it now fail with `NotHere`.
    SessionSuperseded {
        /// The session.
        id: SessionId,
        /// Its new primary.
        by: MemberKey,
    },
    /// The secondary acknowledged `version` of a session this member serves: commits up to it
    /// survive the loss of this member.
    SessionReplicated {
        /// The session.
        id: SessionId,
        /// Version held by the secondary.
        version: u64,
    },
}
