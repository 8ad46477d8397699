//! Node configuration and identity, validated before a node is built.
//!
//! Every limit the node enforces lives here with its default. [`Config::validate`] checks each
//! field and names the first invalid one in the error.

use crate::auth::AuthConfig;
use crate::http::HttpLimits;
use crate::wire;
use std::net::SocketAddr;
use std::time::Duration;

/// A configuration or identity field that cannot be used; nothing was built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config field `{field}`: {reason}")]
pub struct ConfigError {
    /// The offending field, as spelled in [`Config`] or [`Identity`].
    pub field: &'static str,
    /// Why it was refused.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

/// Smallest `max_datagram_size` accepted.
pub const MIN_DATAGRAM: usize = 256;

/// Room for a session request's framing beside its state (ids, versions, encoding overhead).
const SESSION_REQUEST_SLACK: usize = 64 << 10;

/// Who this member is. Sent in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Cluster name; its hash is the cluster id every datagram carries.
    pub cluster: String,
    /// Member name, unique in the cluster; by convention `<group>/<clone index>`.
    pub name: String,
    /// Fresh and larger on every start of the same member (e.g. wall-clock milliseconds).
    pub incarnation: u64,
    /// Where this member serves its point-to-point HTTP exchanges.
    pub http_addr: SocketAddr,
    /// Host (machine) id; members on one host share it.
    pub host_id: String,
}

impl Identity {
    /// An identity with `host_id` empty.
    pub fn new(
        cluster: impl Into<String>,
        name: impl Into<String>,
        incarnation: u64,
        http_addr: SocketAddr,
    ) -> Self {
        Identity {
            cluster: cluster.into(),
            name: name.into(),
            incarnation,
            http_addr,
            host_id: String::new(),
        }
    }

    /// The identity of clone `index` of server group `group`, named by the default rule
    /// `<group>/<index>` (unique across machines as long as clone indices are).
    pub fn for_clone(
        cluster: impl Into<String>,
        group: &str,
        index: u32,
        incarnation: u64,
        http_addr: SocketAddr,
    ) -> Self {
        Identity::new(
            cluster,
            Identity::clone_name(group, index),
            incarnation,
            http_addr,
        )
    }

    /// The default member name of clone `index` of server group `group`: `<group>/<index>`.
    pub fn clone_name(group: &str, index: u32) -> String {
        format!("{group}/{index}")
    }

    /// Checks the fields against the wire format's limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_wire_string("cluster", &self.cluster, false)?;
        check_wire_string("name", &self.name, false)?;
        check_wire_string("host_id", &self.host_id, true)?;
        if self.incarnation == 0 {
            return Err(invalid("incarnation", "must be greater than 0"));
        }
        Ok(())
    }
}

fn check_wire_string(field: &'static str, s: &str, may_be_empty: bool) -> Result<(), ConfigError> {
    if s.is_empty() && !may_be_empty {
        return Err(invalid(field, "must not be empty"));
    }
    if s.len() > wire::MAX_WIRE_STRING {
        return Err(invalid(
            field,
            format!(
                "{} bytes, at most {} allowed",
                s.len(),
                wire::MAX_WIRE_STRING
            ),
        ));
    }
    Ok(())
}

/// Tunables and limits of one node. Build with `Config::default()` and change fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Largest datagram the node sends, header included. Default 1400; 256..=65507.
    pub max_datagram_size: usize,
    /// Largest message (announcement or published payload) accepted or sent. Default 16 MiB.
    pub max_message_size: usize,
    /// Most fragments one message may have. Default 65 536.
    pub max_fragments_per_message: u32,
    /// Bytes of not-yet-delivered messages held per remote member (current + later). Default 32 MiB.
    pub max_cached_bytes_per_sender: usize,
    /// Bytes of not-yet-delivered messages held for all remote members together. Default 256 MiB.
    pub max_cached_bytes_total: usize,
    /// Not-yet-delivered messages held per remote member. Default 1024.
    pub max_cached_messages_per_sender: usize,
    /// Published messages retained for point-to-point recovery. Default 1024.
    pub log_retention_messages: usize,
    /// Bytes of published messages retained for recovery. Default 8 MiB.
    pub log_retention_bytes: usize,
    /// Remote members tracked (live plus recently departed). Default 1024.
    pub max_members: usize,
    /// Offers one member may hold (local binds and each remote member's). Default 10 000.
    pub max_offers_per_member: usize,
    /// Offers of all members held together; a remote offer beyond it is ignored and counted in
    /// [`crate::Drops::offers_over_limit`]. This node's own binds are bounded by
    /// `max_offers_per_member` only, so the registry holds at most this plus that. Default
    /// 1 000 000: about a thousand offers for each of `max_members` (1024) members, or the full
    /// 10 000 for a hundred, while a thousand forged members can no longer hold 10 000 each.
    pub max_offers_total: usize,
    /// Longest service name in bytes. Default 256.
    pub max_name_len: usize,
    /// Longest offer value in bytes. Default 4096.
    pub max_value_len: usize,
    /// Longest pub/sub topic in bytes. Default 256.
    pub max_topic_len: usize,
    /// Events queued for the owner before new sequenced data is refused (to be recovered once
    /// the owner drains them); deliveries are never dropped. Membership events have a quota of
    /// their own, also this many: beyond it they are dropped and counted.
    /// Default 65 536.
    pub max_queued_events: usize,
    /// Bytes the queued events may hold (their strings, payloads and session states, plus a
    /// fixed cost each) before the node stops taking in sequenced data, as with
    /// `max_queued_events`: a slow owner then delays deliveries but loses none. One input can
    /// overshoot it by at most one message's events. Default 256 MiB.
    pub max_queued_event_bytes: usize,
    /// Limits on point-to-point HTTP requests and responses.
    pub http: HttpLimits,
    /// Interval between heartbeats. Default 1 s.
    pub heartbeat_interval: Duration,
    /// Heartbeat intervals without any datagram from a member before it is suspect (plus half an
    /// interval of slack for delivery jitter). Default 3.
    pub suspect_after_intervals: u32,
    /// Time a probe (and any other request) may take before it counts as failed. Default 2 s.
    pub request_timeout: Duration,
    /// Listening period before the join's state-dump request; `None` (the default) means three
    /// heartbeat intervals, whatever `heartbeat_interval` is set to.
    pub discovery_period: Option<Duration>,
    /// How long a gap may stay open before it counts as loss (reordering is not loss). Default 50 ms.
    pub reorder_grace: Duration,
    /// First retry delay after a failed recovery request. Default 250 ms.
    pub recovery_backoff_initial: Duration,
    /// Largest retry delay. Default 8 s.
    pub recovery_backoff_max: Duration,
    /// How long a provider reported failed is skipped by selection. Default 5 s.
    pub provider_quarantine: Duration,
    /// How long a departed member is remembered so its late packets are ignored. Default 60 s.
    pub tombstone_ttl: Duration,
    /// Sessions one member holds, as primary and as secondary together. Default 10 000.
    pub max_sessions: usize,
    /// Largest session state ([`crate::session::SessionState::bytes`]). Default 64 KiB; at most
    /// `http.max_body_bytes - 64 KiB`, so a full copy always fits one request.
    pub max_session_bytes: usize,
    /// A session unused this long is expired, on its primary and its secondary. Default 30 min.
    pub session_idle_timeout: Duration,
    /// Replication requests in flight at once (the rest wait their turn). Default 64.
    pub max_replications_in_flight: usize,
    /// Cluster authentication. `Some`: every datagram and point-to-point exchange this node
    /// sends is tagged with the first key, and everything it receives must carry a valid tag
    /// under one of the keys and must not be a replay (see [`crate::auth`]). `None` (the
    /// default): nothing is tagged and tagged traffic is dropped as `unsupported`; use it only
    /// where the network itself is trusted (loopback, tests).
    pub auth: Option<AuthConfig>,
}

impl Default for Config {
    fn default() -> Self {
        let heartbeat_interval = Duration::from_secs(1);
        Config {
            max_datagram_size: 1400,
            max_message_size: 16 << 20,
            max_fragments_per_message: 65_536,
            max_cached_bytes_per_sender: 32 << 20,
            max_cached_bytes_total: 256 << 20,
            max_cached_messages_per_sender: 1024,
            log_retention_messages: 1024,
            log_retention_bytes: 8 << 20,
            max_members: 1024,
            max_offers_per_member: 10_000,
            max_offers_total: 1_000_000,
            max_name_len: 256,
            max_value_len: 4096,
            max_topic_len: 256,
            max_queued_events: 65_536,
            max_queued_event_bytes: 256 << 20,
            http: HttpLimits::default(),
            heartbeat_interval,
            suspect_after_intervals: 3,
            request_timeout: Duration::from_secs(2),
            discovery_period: None,
            reorder_grace: Duration::from_millis(50),
            recovery_backoff_initial: Duration::from_millis(250),
            recovery_backoff_max: Duration::from_secs(8),
            provider_quarantine: Duration::from_secs(5),
            tombstone_ttl: Duration::from_secs(60),
            max_sessions: 10_000,
            max_session_bytes: 64 << 10,
            session_idle_timeout: Duration::from_secs(30 * 60),
            max_replications_in_flight: 64,
            auth: None,
        }
    }
}

impl Config {
    /// Checks every field; the error names the first one that cannot be used.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let min_dgram = MIN_DATAGRAM;
        if self.max_datagram_size < min_dgram || self.max_datagram_size > wire::MAX_UDP_PAYLOAD {
            return Err(invalid(
                "max_datagram_size",
                format!(
                    "{} is outside {min_dgram}..={}",
                    self.max_datagram_size,
                    wire::MAX_UDP_PAYLOAD
                ),
            ));
        }
        if self.max_message_size == 0 || self.max_message_size > u32::MAX as usize {
            return Err(invalid("max_message_size", "must be in 1..=4294967295"));
        }
        if self.max_fragments_per_message == 0 {
            return Err(invalid("max_fragments_per_message", "must be at least 1"));
        }
        let needed = self.max_message_size.div_ceil(self.fragment_payload());
        if needed > self.max_fragments_per_message as usize {
            return Err(invalid(
                "max_fragments_per_message",
                format!(
                    "{} is fewer than the {needed} fragments a max_message_size message needs",
                    self.max_fragments_per_message
                ),
            ));
        }
        if self.max_cached_bytes_per_sender < self.max_datagram_size {
            return Err(invalid(
                "max_cached_bytes_per_sender",
                "must hold at least one datagram",
            ));
        }
        if self.max_cached_bytes_total < self.max_datagram_size {
            return Err(invalid(
                "max_cached_bytes_total",
                "must hold at least one datagram",
            ));
        }
        let nonzero: [(&'static str, usize); 15] = [
            ("max_sessions", self.max_sessions),
            ("max_session_bytes", self.max_session_bytes),
            (
                "max_replications_in_flight",
                self.max_replications_in_flight,
            ),
            (
                "max_cached_messages_per_sender",
                self.max_cached_messages_per_sender,
            ),
            ("log_retention_messages", self.log_retention_messages),
            ("log_retention_bytes", self.log_retention_bytes),
            ("max_members", self.max_members),
            ("max_offers_per_member", self.max_offers_per_member),
            ("max_offers_total", self.max_offers_total),
            ("max_name_len", self.max_name_len),
            ("max_value_len", self.max_value_len),
            ("max_topic_len", self.max_topic_len),
            ("max_queued_events", self.max_queued_events),
            ("max_queued_event_bytes", self.max_queued_event_bytes),
            ("http.max_body_bytes", self.http.max_body_bytes),
        ];
        for (field, v) in nonzero {
            if v == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if self.max_offers_total < self.max_offers_per_member {
            return Err(invalid(
                "max_offers_total",
                "must be at least max_offers_per_member, so one member's offers always fit",
            ));
        }
        if self.http.max_body_bytes > crate::codec::MAX_BODY {
            return Err(invalid(
                "http.max_body_bytes",
                format!(
                    "must be at most {} (the codec's limit)",
                    crate::codec::MAX_BODY
                ),
            ));
        }
        if self.max_message_size.saturating_mul(2).saturating_add(8192) > self.http.max_body_bytes {
            return Err(invalid(
                "max_message_size",
                "must be at most (http.max_body_bytes - 8192) / 2, so a recovery answer can carry it",
            ));
        }
        if self
            .max_name_len
            .saturating_add(self.max_value_len)
            .saturating_add(64)
            > self.max_message_size
        {
            return Err(invalid(
                "max_message_size",
                "must hold one announcement of max_name_len + max_value_len",
            ));
        }
        let snapshot = self
            .max_offers_per_member
            .saturating_mul(
                self.max_name_len
                    .saturating_add(self.max_value_len)
                    .saturating_add(20),
            )
            .saturating_add(64);
        if snapshot > self.http.max_body_bytes {
            return Err(invalid(
                "max_offers_per_member",
                format!(
                    "a full snapshot (max_offers_per_member x (max_name_len + max_value_len + 20) = {snapshot} bytes) must fit http.max_body_bytes"
                ),
            ));
        }
        if self.http.max_header_bytes < 512 {
            return Err(invalid("http.max_header_bytes", "must be at least 512"));
        }
        if self.http.max_headers < 4 || self.http.max_headers > crate::http::MAX_HEADERS {
            return Err(invalid(
                "http.max_headers",
                format!("must be in 4..={}", crate::http::MAX_HEADERS),
            ));
        }
        if self.max_session_bytes.saturating_add(SESSION_REQUEST_SLACK) > self.http.max_body_bytes {
            return Err(invalid(
                "max_session_bytes",
                "must be at most http.max_body_bytes - 65536, so a full copy fits one request",
            ));
        }
        let durations: [(&'static str, Duration); 9] = [
            ("session_idle_timeout", self.session_idle_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("request_timeout", self.request_timeout),
            ("recovery_backoff_initial", self.recovery_backoff_initial),
            ("recovery_backoff_max", self.recovery_backoff_max),
            ("provider_quarantine", self.provider_quarantine),
            ("tombstone_ttl", self.tombstone_ttl),
            ("reorder_grace", self.reorder_grace),
            ("discovery_period", self.discovery()),
        ];
        for (field, d) in durations {
            if d > Duration::from_secs(24 * 3600) {
                return Err(invalid(field, "must be at most one day"));
            }
        }
        for (field, d) in &durations[..5] {
            if d.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        if self.recovery_backoff_max < self.recovery_backoff_initial {
            return Err(invalid(
                "recovery_backoff_max",
                "must be at least recovery_backoff_initial",
            ));
        }
        if self.suspect_after_intervals == 0 || self.suspect_after_intervals > 1000 {
            return Err(invalid("suspect_after_intervals", "must be in 1..=1000"));
        }
        if let Some(auth) = &self.auth {
            let skew = auth.max_clock_skew;
            if skew < Duration::from_millis(1) || skew > Duration::from_secs(3600) {
                return Err(invalid("auth.max_clock_skew", "must be in 1 ms..=1 h"));
            }
            if auth.max_nonces == 0 {
                return Err(invalid("auth.max_nonces", "must be at least 1"));
            }
        }
        Ok(())
    }

    /// Largest request body a member must accept from its peers: a session replication or
    /// claim carrying a full `max_session_bytes` state. Every other exchange is a GET without
    /// a body. Runtimes cap served bodies at this.
    pub fn max_request_body(&self) -> usize {
        self.max_session_bytes + SESSION_REQUEST_SLACK
    }

    /// The discovery period in force (see [`Config::discovery_period`]).
    pub fn discovery(&self) -> Duration {
        self.discovery_period.unwrap_or(self.heartbeat_interval * 3)
    }

    /// Bytes of a datagram before any authentication trailer: `max_datagram_size`, less
    /// [`wire::AUTH_TRAILER_LEN`] when [`Config::auth`] is on.
    pub fn datagram_budget(&self) -> usize {
        let trailer = if self.auth.is_some() {
            wire::AUTH_TRAILER_LEN
        } else {
            0
        };
        self.max_datagram_size.saturating_sub(trailer)
    }

    /// Payload bytes one fragment carries at this datagram budget.
    pub fn fragment_payload(&self) -> usize {
        self.datagram_budget()
            .saturating_sub(wire::HEADER_LEN + wire::FRAGMENTS_PREFIX_LEN + wire::FRAGMENT_OVERHEAD)
            .max(1)
    }

    /// Time without hearing from a member (at this node's interval) before it becomes suspect.
    pub fn suspect_timeout(&self) -> Duration {
        self.heartbeat_interval * self.suspect_after_intervals + self.heartbeat_interval / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "max_datagram_size",
                Box::new(|c| c.max_datagram_size = 65_508),
            ),
            ("max_datagram_size", Box::new(|c| c.max_datagram_size = 10)),
            ("max_message_size", Box::new(|c| c.max_message_size = 0)),
            (
                "max_fragments_per_message",
                Box::new(|c| c.max_fragments_per_message = 3),
            ),
            ("max_members", Box::new(|c| c.max_members = 0)),
            ("max_offers_total", Box::new(|c| c.max_offers_total = 0)),
            ("max_offers_total", Box::new(|c| c.max_offers_total = 9_999)),
            (
                "heartbeat_interval",
                Box::new(|c| c.heartbeat_interval = Duration::ZERO),
            ),
            (
                "recovery_backoff_max",
                Box::new(|c| c.recovery_backoff_max = Duration::from_millis(1)),
            ),
            (
                "suspect_after_intervals",
                Box::new(|c| c.suspect_after_intervals = 0),
            ),
            ("http.max_headers", Box::new(|c| c.http.max_headers = 1000)),
        ];
        for (field, mutate) in cases {
            let mut c = Config::default();
            mutate(&mut c);
            let err = c.validate().expect_err(field);
            assert_eq!(err.field, field);
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn max_datagram_bounds_are_accepted() {
        let c = Config {
            max_datagram_size: 65_507,
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn identity_checks() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let ok = Identity::for_clone("c", "web", 1, 1, addr);
        assert_eq!(ok.name, "web/1");
        assert_eq!(ok.validate(), Ok(()));
        let mut bad = ok.clone();
        bad.incarnation = 0;
        assert_eq!(bad.validate().map_err(|e| e.field), Err("incarnation"));
        let mut bad = ok.clone();
        bad.name = "x".repeat(300);
        assert_eq!(bad.validate().map_err(|e| e.field), Err("name"));
        let mut bad = ok;
        bad.cluster.clear();
        assert_eq!(bad.validate().map_err(|e| e.field), Err("cluster"));
    }
}
