//! # hybridcast-smol
//!
//! The smol/async-io runtime of hybridcast. Not written yet; this crate is a placeholder so the
//! workspace layout is in place. See the project README for what exists today.

pub use hybridcast_core as core;
