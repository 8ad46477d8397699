//! Fuzz target `state_dump_decode`: see `hybridcast_tests::fuzz::state_dump_decode` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hybridcast_tests::fuzz::state_dump_decode(data));
