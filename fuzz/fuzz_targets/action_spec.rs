//! The command a pre-started sandbox helper decodes (`worker/spec.rs`): any bytes either
//! decode to a spec that encodes and decodes back to itself, or are refused; never a panic.
#![no_main]

use kiln::worker::spec::Spec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = Spec::decode(data) {
        let again = spec.encode().expect("a decoded spec encodes");
        assert_eq!(Spec::decode(&again).expect("re-decodes"), spec);
    }
});
