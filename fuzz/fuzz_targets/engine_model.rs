//! The engine against a model with injected I/O failures, full disks and power losses.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln::storage::fuzzing::engine_model(data));
