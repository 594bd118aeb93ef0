//! Deterministic pseudo-random test data: the one generator the storage tests
//! (`common/storage.rs`) and the server tests (`common::data`) share. Included by
//! `common/mod.rs` and, by path, by `common/storage.rs`.
#![allow(dead_code)]

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
