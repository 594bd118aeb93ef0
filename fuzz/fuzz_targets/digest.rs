//! Digest validation (`digest::Digest::parse`, `parse_str`, `from_proto`, and
//! `DigestFunction::from_proto`): arbitrary function values, sizes and hash text. Never panics;
//! what is accepted is exactly 64 lower-case hex digits and a non-negative size, and survives
//! the round trips through text and proto unchanged.
#![no_main]

use kiln::digest::{Digest, DigestFunction};
use kiln::proto::reapi;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let function = i32::from_le_bytes(data[..4].try_into().unwrap());
    let size = i64::from_le_bytes(data[4..12].try_into().unwrap());
    let text = String::from_utf8_lossy(&data[12..]);
    let f = match DigestFunction::from_proto(function) {
        Ok(f) => {
            assert!(function == 0 || function == DigestFunction::Sha256.to_proto());
            f
        }
        Err(_) => DigestFunction::Sha256,
    };
    // The whole text as a hash, with the binary size.
    let proto = reapi::Digest {
        hash: text.to_string(),
        size_bytes: size,
    };
    match Digest::from_proto(f, &proto) {
        Ok(d) => {
            assert!(size >= 0);
            assert_eq!(d.hash_hex(), proto.hash);
            assert_eq!(d.to_proto(), proto);
            assert_eq!(Digest::parse_str(f, &proto.hash, &size.to_string()), Ok(d));
            let shown = d.to_string();
            let (h, s) = shown.split_once('/').expect("Display is hash/size");
            assert_eq!(Digest::parse_str(f, h, s), Ok(d));
        }
        Err(_) => {
            let hex = proto.hash.len() == 64
                && proto.hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            assert!(size < 0 || !hex, "rejected a valid digest {proto:?}");
        }
    }
    // The text as `hash/size`, as in resource names.
    if let Some((h, s)) = text.split_once('/') {
        if let Ok(d) = Digest::parse_str(f, h, s) {
            assert_eq!(d.hash_hex(), h);
            assert_eq!(s.parse::<i64>().ok(), Some(d.size as i64));
        }
    }
});
