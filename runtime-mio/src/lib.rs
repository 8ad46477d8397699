//! # hybridcast-mio
//!
//! The mio runtime of hybridcast: real UDP multicast and TCP/HTTP sockets driving a
//! [`hybridcast_core::Node`].
//!
//! - [`Driver`] embeds a member in an event loop you own: register its sockets, hand it the
//!   mio events for its tokens, and wake it at [`Driver::poll_timeout`].
//! - [`spawn`] runs a member on a thread of its own and returns a [`NodeHandle`]: commands,
//!   a snapshot of the view, events, stats, and a graceful `shutdown`.
//! - Sockets: the multicast socket joins the group on the configured interface, shares the
//!   port with other members on the host, loops back, and sends with the configured TTL;
//!   defaults keep everything on loopback ([`DriverConfig::new`]).
//! - HTTP: a bounded, keep-alive server for the protocol's exchanges and the runtime's
//!   endpoints (`/hybridcast/v1/cluster`, `/hybridcast/v1/whoami`, `/metrics`), and a client
//!   for the requests the core asks for, with a connection pool and timeouts. Parsing and
//!   answers come from core.

mod config;
mod conn;
mod driver;
pub mod endpoints;
pub mod socket;
mod spawn;

pub use config::{DEFAULT_GROUP, DriverConfig};
pub use driver::{Driver, DriverStats, MAX_REQUEST_BODY};
pub use hybridcast_core as core;
pub use spawn::{COMMAND_QUEUE, EVENT_QUEUE, NodeHandle, Stopped, spawn};

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
        source: std::io::Error,
    },
}
