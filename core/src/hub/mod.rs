//! Hub mode (seed 004): a message server relays cluster traffic where IP multicast is not
//! available.
//!
//! Every member holds one stream (TCP) connection to the hub. A member's group datagrams go
//! to the hub, which relays each to every other registered member, acknowledges it to the
//! sender, routes direct datagrams to one member, and announces registrations and departures
//! to all. Nothing else in the protocol changes: members exchange exactly the datagrams they
//! would multicast, point-to-point requests still go member to member, and sequences,
//! heartbeats and recovery repair whatever a lost hub connection missed. A departure the hub
//! announces makes the members probe the departed member at once
//! ([`crate::Node::handle_departure_notice`]), so a killed member is detected in about one
//! round trip rather than after the suspicion timeout.
//!
//! Both sides are pure state machines over bytes:
//! - [`Hub`], the message server, over many connections (`hybridcast hub` runs it);
//! - [`HubLink`], one member's connection to it, kept up with backoff.
//!
//! The frame layout is in [`frame`] and `WIRE.md` §9.

pub mod frame;
mod link;
mod outbox;
mod server;

pub use frame::{CloseReason, Frame, FrameDecoder, FrameError};
pub use link::{HubLink, LinkAction, LinkConfig, LinkEvent, LinkLoss, LinkStats};
pub use server::{ConnId, Hub, HubAction, HubConfig, HubConfigError, HubEvent, HubStats};
