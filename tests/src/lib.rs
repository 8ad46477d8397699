//! # hybridcast-tests
//!
//! The deterministic cluster simulator of hybridcast ([`sim`]) and, later, its cross-runtime
//! tests.
//!
//! The simulator runs many `hybridcast-core` nodes on one virtual clock with a seeded network
//! model, applies scheduled operations and faults, and checks the protocol's invariants as it
//! goes. Scenario tests live in `tests/tests/`, quickcheck-generated fault schedules in
//! `tests/tests/schedules.rs`, and large runs behind the `sim` binary:
//!
//! ```text
//! cargo run -p hybridcast-tests --release --bin sim -- --nodes 32 --offers 1000 --loss 0.2 --seed 7
//! ```

pub mod fuzz;
pub mod sim;

pub use hybridcast_core as core;
