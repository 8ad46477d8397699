//! # hybridcast-tests
//!
//! The deterministic cluster simulator and cross-runtime tests of hybridcast. Not written yet;
//! core's own multi-node harness lives in `core/tests/harness`.

pub use hybridcast_core as core;
