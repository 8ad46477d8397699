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
//!   defaults keep everything on loopback ([`RuntimeConfig::new`]).
//! - Configuration, socket setup, the endpoints and the served side of HTTP are shared with
//!   the smol runtime through `hybridcast-runtime`, re-exported here.
//! - HTTP: a bounded, keep-alive server for the protocol's exchanges and the runtime's
//!   endpoints (`/hybridcast/v1/cluster`, `/hybridcast/v1/whoami`, `/metrics`), and a client
//!   for the requests the core asks for, with a connection pool and timeouts. Parsing and
//!   answers come from core.

mod conn;
mod driver;
pub mod hub;
mod spawn;

pub use driver::Driver;
pub use hub::{HubHandle, HubServer, HubServerConfig, spawn_hub};
pub use hybridcast_core as core;
pub use hybridcast_runtime::{
    DEFAULT_GROUP, Error, Resumed, RuntimeConfig, RuntimeStats, Transport, endpoints, keys,
    serve::MAX_REQUEST_BODY, socket, unix_millis,
};
pub use spawn::{COMMAND_QUEUE, EVENT_QUEUE, NodeHandle, Stopped, spawn};
