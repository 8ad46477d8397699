//! Fuzz target `datagram_decode`: see `hybridcast_tests::fuzz::datagram_decode` for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hybridcast_tests::fuzz::datagram_decode(data));
