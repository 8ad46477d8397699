//! Fuzz target `hub_frames`: see `hybridcast_tests::fuzz::hub_frames` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hybridcast_tests::fuzz::hub_frames(data));
