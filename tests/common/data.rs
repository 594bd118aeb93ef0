//! Deterministic pseudo-random test data: the one generator the storage tests
//! (`common/storage.rs`) and the server tests (`common::data`) share. Included by
//! `common/mod.rs` and, by path, by `common/storage.rs`.
#![allow(dead_code)]

/// `len` bytes of compiler-log text for `seed` (compresses about 5x with zstd; lines
/// differ per seed), for the compression tests.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut s = String::new();
    let mut i = 0u64;
    while s.len() < len {
        let _ = writeln!(
            s,
            "{seed}:{i} cc1plus: warning: unused variable `v{}` in expansion of `M{}`",
            i % 17,
            i % 13
        );
        i += 1;
    }
    s.truncate(len);
    s.into_bytes()
}

/// `len` deterministic bytes for `seed` (xorshift: incompressible enough for the tests, and
/// no two seeds share a prefix).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
