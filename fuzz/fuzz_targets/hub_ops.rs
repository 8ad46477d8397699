//! Fuzz target `hub_ops`: see `hybridcast_tests::fuzz::hub_ops` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hybridcast_tests::fuzz::hub_ops(data));
