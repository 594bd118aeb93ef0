//! The Remote Asset layer's decoders on arbitrary bytes: `asset::memory::Record::decode` (the
//! remembered URI-to-digest record read back from the engine) and `asset::Qualifiers::parse`
//! (request qualifiers, `checksum.sri` base64 and `http_header:` names included). Never panics;
//! a decoded record re-encodes to exactly its bytes; parsed qualifiers are sorted with unique
//! names, and every checksum has its algorithm's length.
#![no_main]

use kiln::asset::Qualifiers;
use kiln::asset::memory::{RECORD_BYTES, Record};
use kiln::digest::DigestFunction;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(r) = Record::decode(data, DigestFunction::Sha256) {
        assert_eq!(data.len(), RECORD_BYTES);
        assert_eq!(&r.encode()[..], data);
    }
    // Qualifiers: the text split into name=value pairs, one per line.
    let text = String::from_utf8_lossy(data);
    let pairs: Vec<(String, String)> = text
        .lines()
        .map(|l| match l.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect();
    if let Ok(q) = Qualifiers::parse(pairs) {
        assert!(q.all.windows(2).all(|w| w[0].0 < w[1].0));
        for c in &q.checksums {
            assert!(matches!(c.hash.len(), 32 | 48 | 64));
        }
        let _ = q.verify(data);
    }
});
