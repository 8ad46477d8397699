//! The runtime's configuration: who the member is, where it talks, and the runtime's own
//! bounds, beside the core's [`Config`].

use hybridcast_core::Config;
use hybridcast_core::hub::LinkConfig;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// The default multicast group: administratively scoped (239.255.0.0/16, RFC 2365), so it
/// never leaves the site.
pub const DEFAULT_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 72, 67), 45_892);

/// How a member's group datagrams travel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Transport {
    /// UDP multicast to [`RuntimeConfig::group`] on [`RuntimeConfig::interface`] (the
    /// default).
    #[default]
    Multicast,
    /// Through a hub (`hybridcast hub`) over one TCP connection, where IP multicast is not
    /// routed (clouds, many data centres). No multicast socket is opened; `group`,
    /// `interface` and `ttl` are unused, and an HTTP address on the unspecified address is
    /// advertised with the local address of the route to the hub. Point-to-point requests
    /// still go member to member.
    Hub(LinkConfig),
}

/// Everything a runtime member needs, whichever runtime runs it.
///
/// `RuntimeConfig::new(cluster, name)` gives safe defaults: loopback interface, a scoped
/// group, TTL 1, an ephemeral HTTP port on loopback.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Cluster name (members of other clusters are ignored).
    pub cluster: String,
    /// Member name, unique in the cluster.
    pub name: String,
    /// Clone group and index when the name was derived from them (seed 002's naming; shown
    /// by `/hybridcast/v1/whoami`).
    pub clone: Option<(String, u32)>,
    /// Incarnation; `None` takes the wall clock in milliseconds at start, so a restart always
    /// gets a higher one.
    pub incarnation: Option<u64>,
    /// Host id (members on one host share it); `None` uses the `HOSTNAME` variable or the
    /// interface address.
    pub host_id: Option<String>,
    /// How group datagrams travel: multicast (default) or through a hub.
    pub transport: Transport,
    /// Multicast group and port.
    pub group: SocketAddrV4,
    /// Interface to join the group on and send from. Default loopback: a cluster across
    /// machines needs the address of the interface that reaches them.
    pub interface: Ipv4Addr,
    /// Multicast TTL (1 keeps datagrams on the local network).
    pub ttl: u32,
    /// Where the point-to-point HTTP server listens (port 0 picks one).
    pub http: SocketAddr,
    /// The protocol core's configuration.
    pub core: Config,
    /// Most connections served at once (accepted from peers). Default 256. At the limit a new
    /// connection takes the place of the served connection idle the longest (no request partly
    /// read, nothing being written), so peers holding idle connections cannot lock out the
    /// members' requests; it is refused only when every served connection is busy.
    pub max_served_connections: usize,
    /// Most connections this member opens for its own requests (recoveries, probes, the join's
    /// state dump, sessions), idle pooled ones included. Default 256. Counted apart from served
    /// connections, so whatever peers open cannot starve the member's own requests; at the
    /// limit an idle pooled connection is closed to make room, else the request fails at once.
    pub max_outgoing_connections: usize,
    /// How long an HTTP connection may wait with nothing to do: a served connection between
    /// requests, a pooled connection between our requests, and a write that makes no progress.
    /// Default 30 s (keep-alive across a few heartbeats, and a stalled reader is let go).
    pub idle_timeout: Duration,
    /// A served request must arrive completely within this time of its first byte, or the
    /// connection is closed (counted in `RuntimeStats::slow_requests`). Default 10 s: the
    /// protocol's requests are small and sent at once, so only a broken or hostile client
    /// (one dripping a byte at a time) needs longer, and it must not hold a connection.
    pub request_read_timeout: Duration,
    /// For demos and tests only: the share of received group datagrams dropped on purpose
    /// before the core sees them, to show loss and recovery on a network that loses nothing.
    pub receive_drop_rate: f64,
    /// Seed of the core's randomness and of the drop rate; `None` draws one from the
    /// operating system's random source.
    pub seed: Option<u64>,
    /// Allows running without [`Config::auth`] although traffic leaves this host (a
    /// non-loopback interface or HTTP address). Default false: such a member refuses to start
    /// without a cluster key, because anyone on the network could then join, inject offers
    /// and read or overwrite sessions. A member confined to loopback needs no key.
    pub allow_unauthenticated: bool,
}

impl RuntimeConfig {
    /// Defaults for member `name` of `cluster`.
    pub fn new(cluster: &str, name: &str) -> Self {
        RuntimeConfig {
            cluster: cluster.to_owned(),
            name: name.to_owned(),
            clone: None,
            incarnation: None,
            host_id: None,
            transport: Transport::Multicast,
            group: DEFAULT_GROUP,
            interface: Ipv4Addr::LOCALHOST,
            ttl: 1,
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            core: Config::default(),
            max_served_connections: 256,
            max_outgoing_connections: 256,
            idle_timeout: Duration::from_secs(30),
            request_read_timeout: Duration::from_secs(10),
            receive_drop_rate: 0.0,
            seed: None,
            allow_unauthenticated: false,
        }
    }

    /// Checks the runtime's own fields (the core checks its part when the node is built).
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |field: &'static str, reason: String| Err(crate::Error::Config { field, reason });
        if !self.group.ip().is_multicast() {
            return bad(
                "group",
                format!("{} is not a multicast address", self.group.ip()),
            );
        }
        if self.group.port() == 0 {
            return bad("group", "the group port must not be 0".into());
        }
        if self.ttl == 0 || self.ttl > 255 {
            return bad("ttl", format!("{} is not within 1..=255", self.ttl));
        }
        if self.max_served_connections == 0 {
            return bad("max_served_connections", "must be at least 1".into());
        }
        if self.max_outgoing_connections == 0 {
            return bad("max_outgoing_connections", "must be at least 1".into());
        }
        if self.idle_timeout.is_zero() {
            return bad("idle_timeout", "must be positive".into());
        }
        if self.request_read_timeout.is_zero() {
            return bad("request_read_timeout", "must be positive".into());
        }
        let (group_path, group_local) = match &self.transport {
            Transport::Multicast => (
                format!("interface {}", self.interface),
                self.interface.is_loopback(),
            ),
            Transport::Hub(link) => {
                link.validate().map_err(|e| crate::Error::Config {
                    field: "transport",
                    reason: e.to_string(),
                })?;
                (format!("hub {}", link.hub), link.hub.ip().is_loopback())
            }
        };
        let leaves_host = !group_local || !self.http.ip().is_loopback();
        if leaves_host && self.core.auth.is_none() && !self.allow_unauthenticated {
            return bad(
                "core.auth",
                format!(
                    "no cluster key, and traffic leaves this host ({group_path}, HTTP {}): give a key (a key file, or the {} variable) or allow unauthenticated traffic explicitly",
                    self.http.ip(),
                    crate::keys::KEYS_ENV
                ),
            );
        }
        if !(0.0..1.0).contains(&self.receive_drop_rate) {
            return bad(
                "receive_drop_rate",
                format!("{} is not within [0, 1)", self.receive_drop_rate),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hybridcast_core::{AuthConfig, ClusterKey, Keyring};

    #[test]
    fn traffic_leaving_the_host_needs_a_key_unless_explicitly_allowed() {
        let local = RuntimeConfig::new("c", "m");
        assert!(local.validate().is_ok(), "loopback needs no key");
        let mut lan = RuntimeConfig::new("c", "m");
        lan.interface = Ipv4Addr::new(10, 0, 0, 5);
        let e = lan.validate().expect_err("a LAN member without a key");
        assert!(e.to_string().contains("no cluster key"), "{e}");
        let mut open_http = RuntimeConfig::new("c", "m");
        open_http.http = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        assert!(open_http.validate().is_err(), "HTTP on every interface");
        lan.allow_unauthenticated = true;
        assert!(lan.validate().is_ok());
        lan.allow_unauthenticated = false;
        let key = ClusterKey::new(vec![1; 16]).expect("key");
        lan.core.auth = Some(AuthConfig::new(Keyring::single(key)));
        assert!(lan.validate().is_ok());
    }

    #[test]
    fn a_hub_off_this_host_needs_a_key_and_bad_link_settings_are_named() {
        let mut c = RuntimeConfig::new("c", "m");
        c.transport = Transport::Hub(LinkConfig::new("127.0.0.1:7000".parse().expect("addr")));
        assert!(c.validate().is_ok(), "a hub on loopback needs no key");
        c.transport = Transport::Hub(LinkConfig::new("10.1.2.3:7000".parse().expect("addr")));
        let e = c.validate().expect_err("a remote hub without a key");
        assert!(e.to_string().contains("hub 10.1.2.3:7000"), "{e}");
        let mut link = LinkConfig::new("127.0.0.1:7000".parse().expect("addr"));
        link.backoff_min = Duration::ZERO;
        c.transport = Transport::Hub(link);
        let e = c.validate().expect_err("bad backoff");
        assert!(e.to_string().contains("backoff_min"), "{e}");
    }

    #[test]
    fn connection_limits_and_timeouts_must_be_positive() {
        assert!(RuntimeConfig::new("c", "n").validate().is_ok());
        let refused = |f: fn(&mut RuntimeConfig), field: &str| {
            let mut c = RuntimeConfig::new("c", "n");
            f(&mut c);
            let e = c.validate().expect_err("refused");
            assert!(e.to_string().contains(field), "{e}");
        };
        refused(|c| c.max_served_connections = 0, "max_served_connections");
        refused(
            |c| c.max_outgoing_connections = 0,
            "max_outgoing_connections",
        );
        refused(|c| c.idle_timeout = Duration::ZERO, "idle_timeout");
        refused(
            |c| c.request_read_timeout = Duration::ZERO,
            "request_read_timeout",
        );
    }
}
