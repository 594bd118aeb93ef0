//! Record, segment, state and manifest decoding: never panics, decoded values round-trip.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln::storage::fuzzing::decode_headers(data));
