//! `cas::compression::decompress_exact` (BatchUpdateBlobs items with compressor ZSTD) with a
//! random declared size: never panics, never returns a size other than the declared one, and
//! agrees with the reference decoder on the bytes. libFuzzer's `-malloc_limit_mb` catches an
//! allocation that follows a declared size or a bomb's expansion.
#![no_main]

use kiln::cas::compression::decompress_exact;
use kiln::digest::{Digest, DigestFunction};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    // Declared sizes up to 16 MiB, or anything up to i64::MAX when the top bit is set.
    let raw = u32::from_le_bytes(data[..4].try_into().unwrap());
    let size = if raw & 0x8000_0000 != 0 {
        u64::from(raw & 0x7fff_ffff) << 32
    } else {
        u64::from(raw & 0x00ff_ffff)
    };
    let size = size & (i64::MAX as u64);
    let frame = &data[4..];
    let d = Digest {
        size,
        ..Digest::empty(DigestFunction::Sha256)
    };
    if let Ok(out) = decompress_exact(frame, &d) {
        assert_eq!(out.len() as u64, size);
        if let Ok(reference) = zstd::stream::decode_all(frame) {
            assert_eq!(&reference[..], &out[..]);
        }
    }
});
