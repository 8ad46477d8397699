//! Counters a node keeps about itself. All are totals since the node was built, except the
//! member gauges, which describe the current table.

/// Datagrams dropped, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drops {
    /// Not hybridcast traffic at all (too short for a header, or wrong magic).
    pub not_hybridcast: u64,
    /// A hybridcast datagram of another protocol version, body kind or header flags.
    pub unsupported: u64,
    /// A hybridcast datagram whose body is malformed (truncated, trailing bytes, inconsistent
    /// fragment, invalid field).
    pub malformed: u64,
    /// A well-formed datagram of another cluster.
    pub wrong_cluster: u64,
    /// This node's own datagram, looped back.
    pub own: u64,
    /// From an older incarnation of a member, a member that has left, or the losing process of a
    /// name conflict.
    pub stale_incarnation: u64,
    /// Fragments or a leave of a member not known yet (before its first heartbeat).
    pub unknown_member: u64,
    /// Member table full.
    pub members_over_limit: u64,
    /// Fragment of a message above `max_message_size` or `max_fragments_per_message`.
    pub too_large: u64,
    /// Fragment that did not fit the receive cache (`max_cached_bytes_per_sender`,
    /// `max_cached_messages_per_sender` or `max_cached_bytes_total`).
    pub cache_full: u64,
    /// Fragment contradicting earlier fragments of the same message.
    pub inconsistent: u64,
    /// Fragment refused because `max_queued_events` events wait to be drained; it is
    /// recovered later like a lost one.
    pub backlogged: u64,
    /// Fragment already received or already delivered.
    pub duplicate: u64,
    /// Delivered message whose payload could not be decoded.
    pub bad_payload: u64,
    /// Remote offers ignored because the member exceeded `max_offers_per_member` or the registry
    /// held `max_offers_total`.
    pub offers_over_limit: u64,
    /// Heartbeat whose names do not hash to its header's ids.
    pub bad_identity: u64,
}

/// Traffic refused by authentication ([`crate::Config::auth`]), by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthDrops {
    /// Datagrams without an authentication tag.
    pub datagram_untagged: u64,
    /// Datagrams whose tag no key produced (forged, corrupted, or another cluster's key).
    pub datagram_bad_tag: u64,
    /// Datagrams stamped further than `max_clock_skew` from this node's clock (or received
    /// before the owner set the wall clock): replays of old traffic, or a sender whose clock
    /// is off.
    pub datagram_stale: u64,
    /// Datagrams refused as replays: a counter already accepted or older than the window, or
    /// an incarnation older than one already authenticated.
    pub datagram_replayed: u64,
    /// Requests served without credentials (401).
    pub request_untagged: u64,
    /// Requests whose tag no key produced (401).
    pub request_bad_tag: u64,
    /// Requests made out for another member (their tagged `host` is not this member's
    /// address): a request captured on its way to one member and replayed to another (401).
    pub request_misdirected: u64,
    /// Requests stamped further than `max_clock_skew` from this node's clock (401).
    pub request_stale: u64,
    /// Requests whose nonce was already used (401).
    pub request_replayed: u64,
    /// Requests refused because `max_nonces` recent nonces are held (503).
    pub request_nonces_full: u64,
    /// Requests refused because the owner never set the wall clock (503).
    pub request_no_clock: u64,
    /// Answers to this node's requests without a valid tag for that request (treated as a
    /// failed request).
    pub response_bad: u64,
}

/// A node's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handed to `handle_datagram`.
    pub datagrams_in: u64,
    /// Bytes handed to `handle_datagram`.
    pub bytes_in: u64,
    /// Group datagrams produced by `poll_transmit`.
    pub datagrams_out: u64,
    /// Bytes of group datagrams produced.
    pub bytes_out: u64,
    /// Drops by reason.
    pub drops: Drops,
    /// Authentication refusals by reason.
    pub auth: AuthDrops,
    /// Sequenced messages delivered (announcements and published messages).
    pub messages_delivered: u64,
    /// Gap events reported.
    pub gaps: u64,
    /// Messages covered by gap events.
    pub gap_messages: u64,
    /// Recovery requests sent.
    pub recoveries_requested: u64,
    /// Recovery requests this node answered.
    pub recoveries_served: u64,
    /// Recovery requests that failed or timed out.
    pub recoveries_failed: u64,
    /// Recovery answers that brought nothing new.
    pub recoveries_spurious: u64,
    /// State-dump requests sent (joins).
    pub dump_requests: u64,
    /// State-dump requests answered.
    pub dumps_served: u64,
    /// Probes sent.
    pub probes_sent: u64,
    /// Departure notices taken from a transport (hub mode) about a live member: each starts
    /// a probe at once.
    pub departure_notices: u64,
    /// Point-to-point requests answered with an error status.
    pub http_errors: u64,
    /// Responses that arrived for a request no longer waited for.
    pub stale_responses: u64,
    /// Membership events dropped because the owner let `max_queued_events` of them pile up.
    /// Deliveries are never dropped: from `max_queued_events` on, new sequenced data is refused
    /// and recovered later instead.
    pub events_dropped: u64,
    /// Members currently alive.
    pub members_alive: u64,
    /// Members currently suspect.
    pub members_suspect: u64,
    /// Departed members remembered (failed).
    pub members_failed: u64,
    /// Departed members remembered (left).
    pub members_left: u64,
    /// Events waiting for the owner (gauge).
    pub events_queued: u64,
    /// Bytes those events hold, as counted against `max_queued_event_bytes` (gauge).
    pub event_bytes_queued: u64,
    /// Bytes held by the receive caches of all senders (gauge; at most
    /// `max_cached_bytes_total`).
    pub cached_bytes: u64,
    /// Sessions this member serves as primary (gauge).
    pub sessions_primary: u64,
    /// Session replicas this member holds as secondary (gauge).
    pub sessions_replica: u64,
    /// Replication requests sent.
    pub replications_sent: u64,
    /// Bytes of replication request bodies sent.
    pub replication_bytes: u64,
    /// Replications sent as a full copy (the rest were deltas).
    pub replications_full: u64,
    /// Replication requests that failed, timed out or were refused (each is retried).
    pub replications_failed: u64,
    /// Replications this member received and applied.
    pub replications_applied: u64,
    /// Replications refused because they came from a superseded generation.
    pub replications_superseded: u64,
    /// Sessions this member took over (failovers and claims).
    pub sessions_failed_over: u64,
    /// Resumes that ended in `SessionExpired`, and sessions expired for idleness here.
    pub sessions_expired: u64,
    /// Sessions this member served that another member took over.
    pub sessions_superseded: u64,
    /// Claims this member answered.
    pub claims_served: u64,
}
