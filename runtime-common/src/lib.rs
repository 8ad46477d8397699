//! # hybridcast-runtime
//!
//! What the hybridcast runtimes (`hybridcast-mio`, `hybridcast-smol`) share beyond the pure
//! core, kept in one place so the two cannot drift apart, and usable by anyone writing a
//! third runtime:
//!
//! - [`RuntimeConfig`]: who the member is, where it talks, the runtime's own bounds.
//! - [`prepare`]: the sockets (built with socket2, see [`socket`]) and the core node, from a
//!   config: what a runtime wraps in its own socket types and drives.
//! - [`serve`]: the served side of HTTP connections — framing requests out of the bytes read,
//!   answering them (the runtime's endpoints, else the protocol's), keep-alive — and the
//!   limits both sides of a connection use.
//! - [`SendQueue`]: group datagrams waiting for a full socket, bounded.
//! - [`endpoints`]: `/hybridcast/v1/cluster`, `/hybridcast/v1/whoami` and `/metrics`.
//! - [`sessions`]: a session resume that waits for its outcome ([`Resumed`]).
//!
//! Nothing here waits: reading and writing sockets is the runtime's business.

mod config;
pub mod endpoints;
mod group;
pub mod hub;
pub mod keys;
pub mod serve;
pub mod sessions;
pub mod socket;

pub use config::{DEFAULT_GROUP, RuntimeConfig, Transport};
pub use group::{MAX_PENDING_SENDS, SendQueue};
pub use hybridcast_core as core;
pub use sessions::{ResumeWaiters, Resumed};

use endpoints::WhoAmI;
use hybridcast_core::hub::{HubLink, LinkStats};
use hybridcast_core::ids::{Rng, stable_hash};
use hybridcast_core::{Identity, Node};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Why a runtime member could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A runtime setting is invalid.
    #[error("invalid {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The core refused its configuration or the identity.
    #[error(transparent)]
    Core(#[from] hybridcast_core::ConfigError),
    /// A socket could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] maker for `map_err`.
    pub fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}

/// Counters of a runtime itself (the core's are in [`hybridcast_core::Stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Group datagrams dropped on purpose by `receive_drop_rate`.
    pub injected_drops: u64,
    /// Group datagrams dropped because the socket stayed full.
    pub send_drops: u64,
    /// Served connections refused at `max_served_connections` with none idle to close, and
    /// requests failed at `max_outgoing_connections` with no idle pooled connection to close.
    pub connections_refused: u64,
    /// HTTP connections closed for idling, for a write that made no progress, or for a
    /// request of ours unanswered, at their deadline.
    pub connections_timed_out: u64,
    /// Served connections closed because a request did not arrive in full within
    /// `request_read_timeout` of its first byte (a slow or dripping client).
    pub slow_requests: u64,
    /// Idle served connections closed to make room for a new one at `max_served_connections`.
    pub connections_evicted: u64,
    /// Served connections open now (a gauge, at most `max_served_connections`).
    pub served_connections: u64,
    /// The most served connections ever open at once.
    pub served_connections_peak: u64,
    /// Connections of our own requests open now, pooled ones included (a gauge, at most
    /// `max_outgoing_connections`).
    pub outgoing_connections: u64,
    /// The most outgoing connections ever open at once.
    pub outgoing_connections_peak: u64,
    /// The most bytes one served connection ever held buffered (never above
    /// [`serve::buffer_limit`] of the served limits).
    pub served_buffer_peak: u64,
    /// In hub mode, the hub link's counters as of the runtime's last wake-up; `None` with
    /// multicast (or a runtime that does not report them).
    pub hub: Option<LinkStats>,
    /// In hub mode, whether the hub had accepted this member's registration at the runtime's
    /// last wake-up.
    pub hub_registered: bool,
}

impl RuntimeStats {
    /// Counts a served connection opened.
    pub fn served_opened(&mut self) {
        self.served_connections += 1;
        self.served_connections_peak = self.served_connections_peak.max(self.served_connections);
    }

    /// Counts a served connection closed.
    pub fn served_closed(&mut self) {
        self.served_connections = self.served_connections.saturating_sub(1);
    }

    /// Counts an outgoing connection opened.
    pub fn outgoing_opened(&mut self) {
        self.outgoing_connections += 1;
        self.outgoing_connections_peak = self
            .outgoing_connections_peak
            .max(self.outgoing_connections);
    }

    /// Counts an outgoing connection closed.
    pub fn outgoing_closed(&mut self) {
        self.outgoing_connections = self.outgoing_connections.saturating_sub(1);
    }

    /// Notes that a served connection holds `bytes` buffered.
    pub fn served_buffered(&mut self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.served_buffer_peak = self.served_buffer_peak.max(bytes);
    }
}

/// A member ready to be driven: its sockets (non-blocking, not yet registered with any
/// reactor) and its core node.
#[derive(Debug)]
pub struct Prepared {
    /// The core state machine.
    pub node: Node,
    /// The multicast socket, joined to the group; `None` in hub mode.
    pub udp: Option<UdpSocket>,
    /// The link to the hub in hub mode ([`Transport::Hub`]); `None` with multicast.
    pub link: Option<HubLink>,
    /// The HTTP listener.
    pub listener: TcpListener,
    /// Who the member is, for `/hybridcast/v1/whoami`.
    pub whoami: WhoAmI,
    /// The demo/test receive-side drop injection.
    pub drops: ReceiveDrops,
    /// The config it was built from (with `incarnation` and `seed` filled in).
    pub config: RuntimeConfig,
}

/// Validates `cfg`, opens the sockets and builds the node at `now`.
///
/// The incarnation defaults to the wall clock in milliseconds (so a restart always gets a
/// higher one), the host id to the `HOSTNAME` variable or the local address, and the seed to
/// the OS's randomness. An HTTP address on the unspecified address is advertised as the local
/// address peers can reach: the multicast interface's, or in hub mode the one this host uses
/// to reach the hub. The node is told the wall clock (for
/// authenticated requests' time stamps).
pub fn prepare(mut cfg: RuntimeConfig, now: Instant) -> Result<Prepared, Error> {
    cfg.validate()?;
    let listener = socket::listener(cfg.http).map_err(Error::io("binding the HTTP listener"))?;
    let mut http_addr = listener
        .local_addr()
        .map_err(Error::io("reading the HTTP address"))?;
    // The address peers reach this host by: the multicast interface, or in hub mode the local
    // address of the route to the hub (the hub's peers are this member's peers).
    let local_ip = match &cfg.transport {
        Transport::Multicast => IpAddr::V4(cfg.interface),
        Transport::Hub(link) => match route_source(link.hub) {
            // Only an address of the listener's family can be advertised for it.
            Some(ip) if ip.is_ipv4() == http_addr.is_ipv4() => ip,
            found => {
                if http_addr.ip().is_unspecified() {
                    tracing::warn!(
                        hub = %link.hub,
                        ?found,
                        fallback = %cfg.interface,
                        "no local address of the HTTP listener's family reaches the hub; advertising the interface address (give --http a concrete address)"
                    );
                }
                IpAddr::V4(cfg.interface)
            }
        },
    };
    if http_addr.ip().is_unspecified() {
        http_addr.set_ip(local_ip);
    }
    let udp = match cfg.transport {
        Transport::Multicast => Some(
            socket::multicast(cfg.group, cfg.interface, cfg.ttl)
                .map_err(Error::io("joining the multicast group"))?,
        ),
        Transport::Hub(_) => None,
    };
    let incarnation = *cfg.incarnation.get_or_insert_with(|| unix_millis().max(1));
    let mut identity = Identity::new(&cfg.cluster, &cfg.name, incarnation, http_addr);
    identity.host_id = cfg
        .host_id
        .clone()
        .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| local_ip.to_string()));
    let seed = *cfg.seed.get_or_insert_with(|| {
        // The OS's randomness; should it fail, a hash of name, incarnation and start time
        // still differs between members and restarts.
        getrandom::u64().unwrap_or_else(|_| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            stable_hash(&[
                cfg.name.as_bytes(),
                &incarnation.to_be_bytes(),
                &nanos.to_be_bytes(),
            ])
        })
    });
    let whoami = WhoAmI {
        cluster: cfg.cluster.clone(),
        group: cfg.clone.as_ref().map(|c| c.0.clone()),
        clone_index: cfg.clone.as_ref().map(|c| c.1),
        name: cfg.name.clone(),
        host: identity.host_id.clone(),
        incarnation,
    };
    let mut node = Node::new(cfg.core.clone(), identity, now, seed)?;
    // Authenticated requests carry wall-clock time; the node derives it from `now` from here on.
    node.set_wall_clock(now, unix_millis());
    let link = match &cfg.transport {
        Transport::Multicast => None,
        Transport::Hub(link) => Some(
            HubLink::for_node(link.clone(), &node, now, seed ^ 0x4855_4221).map_err(|e| {
                Error::Config {
                    field: "transport",
                    reason: e.to_string(),
                }
            })?,
        ),
    };
    Ok(Prepared {
        node,
        udp,
        link,
        listener,
        whoami,
        drops: ReceiveDrops::new(cfg.receive_drop_rate, seed),
        config: cfg,
    })
}

/// The local address the system would send from to reach `to` (no packet is sent: a UDP
/// socket is only connected, which picks the route).
pub fn route_source(to: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if to.is_ipv4() {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    let probe = UdpSocket::bind(any).ok()?;
    probe.connect(to).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

/// 32 bytes from the operating system's random source, `None` if it failed.
pub fn random_secret() -> Option<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).ok()?;
    Some(b)
}

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The receive-side drop injection of [`RuntimeConfig::receive_drop_rate`], for demos and
/// tests: seeded, so a run's pattern of drops depends only on the seed and the traffic.
#[derive(Debug, Clone)]
pub struct ReceiveDrops {
    rate: f64,
    rng: Rng,
}

impl ReceiveDrops {
    /// Drops a share `rate` of datagrams, drawn from a generator seeded with `seed`.
    pub fn new(rate: f64, seed: u64) -> Self {
        ReceiveDrops {
            rate,
            rng: Rng::new(seed ^ 0xd20b),
        }
    }

    /// True if the next received datagram is to be dropped (and counted in `stats`).
    pub fn drop_next(&mut self, stats: &mut RuntimeStats) -> bool {
        let drop = self.drop();
        if drop {
            stats.injected_drops += 1;
        }
        drop
    }

    /// True if the next received datagram is to be dropped (not counted).
    pub fn drop(&mut self) -> bool {
        self.rate > 0.0 && self.rng.unit() < self.rate
    }
}
