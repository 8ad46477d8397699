//! The fuzz targets as plain functions, so the corpus also runs as ordinary tests on stable.
//!
//! `fuzz/fuzz_targets/<name>.rs` calls the function of the same name here; the `fuzz_corpus`
//! test runs every file of `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/` through it. A
//! panic is a finding: each function asserts the properties its module documents, and none
//! returns an error. Internals are checked through `#[cfg(fuzzing)]` hooks of the core, which
//! only cargo-fuzz builds turn on.

mod codecs;
mod http;
pub mod hub;
pub mod input;
mod node;
mod receiver;
pub mod seeds;

pub use codecs::{datagram_decode, session_decode, state_dump_decode};
pub use http::{http_request, http_response};
pub use hub::{hub_frames, hub_ops};
pub use node::{Tally, config as node_config, drive as drive_node, node_auth_ops, node_ops};
pub use receiver::receiver_ops;

/// A target's function: a panic is a finding.
pub type Target = fn(&[u8]);

/// Every target by name, in the order of `fuzz/Cargo.toml`.
pub const TARGETS: [(&str, Target); 10] = [
    ("datagram_decode", datagram_decode),
    ("receiver_ops", receiver_ops),
    ("node_ops", node_ops),
    ("node_auth_ops", node_auth_ops),
    ("http_request", http_request),
    ("http_response", http_response),
    ("state_dump_decode", state_dump_decode),
    ("session_decode", session_decode),
    ("hub_frames", hub_frames),
    ("hub_ops", hub_ops),
];
