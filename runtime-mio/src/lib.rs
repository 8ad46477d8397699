//! # hybridcast-mio
//!
//! The mio runtime of hybridcast: real UDP multicast and TCP/HTTP sockets driving a
//! [`hybridcast_core::Node`]. Not written yet; this crate is a placeholder so the workspace
//! layout is in place. See the project README for what exists today.

pub use hybridcast_core as core;
