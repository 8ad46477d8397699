//! Fuzz target `http_request`: see `hybridcast_tests::fuzz::http_request` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hybridcast_tests::fuzz::http_request(data));
