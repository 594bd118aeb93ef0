//! The upstream forwarding queue's journal records (`upstream/journal.rs`): parsing never
//! panics, parsed records re-encode to their bytes, a log written from them parses back.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln::upstream::journal::fuzz_parse(data));
