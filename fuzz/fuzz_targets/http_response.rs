//! Fuzz target `http_response`: see `hybridcast_tests::fuzz::http_response` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hybridcast_tests::fuzz::http_response(data));
