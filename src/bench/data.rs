//! Deterministic test data: a fast PRNG and blobs that are cheap to make unique.
//!
//! A [`BlobMaker`] fills one shared prefix once and hashes it once; each blob is that prefix
//! plus a 16-byte tail `(seed, n)`. Its digest costs one clone of the prefix's hash state and 16
//! bytes of hashing, so a 256 MiB upload needs no 256 MiB of fresh data or hashing per
//! operation, and a read is verified byte for byte against prefix and tail (memcmp, which is
//! faster than hashing and catches the same wrong bytes).

use crate::digest::{Digest, DigestFunction, Hasher};
use bytes::Bytes;

/// Bytes of each blob that make it unique.
pub const TAIL: usize = 16;

/// splitmix64: small, fast, good enough for choosing keys and filling buffers.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// A random digest of a blob nobody uploaded (random hash, plausible size).
    pub fn absent_digest(&mut self) -> Digest {
        let mut hash = [0u8; 32];
        for c in hash.chunks_exact_mut(8) {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        Digest {
            function: DigestFunction::Sha256,
            hash,
            size: 1 + self.next_u64() % (1 << 20),
        }
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = vec![0u8; len];
    let mut chunks = out.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let last = rng.next_u64().to_le_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
    out
}

/// Makes distinct blobs of one size: a shared prefix plus a unique tail.
#[derive(Clone)]
pub struct BlobMaker {
    seed: u64,
    size: usize,
    prefix: Bytes,
    prefix_hash: Hasher,
}

/// One blob: `prefix ++ tail`.
#[derive(Clone)]
pub struct Blob {
    /// Its digest.
    pub digest: Digest,
    prefix: Bytes,
    tail: Bytes,
}

impl BlobMaker {
    /// Blobs of `size` bytes; `seed` keeps runs apart.
    pub fn new(seed: u64, size: u64) -> Self {
        let size = size as usize;
        let prefix = Bytes::from(fill(seed, size.saturating_sub(TAIL)));
        let mut prefix_hash = DigestFunction::Sha256.hasher();
        prefix_hash.update(&prefix);
        Self {
            seed,
            size,
            prefix,
            prefix_hash,
        }
    }

    /// The `n`th blob.
    pub fn blob(&self, n: u64) -> Blob {
        let mut tail = [0u8; TAIL];
        tail[..8].copy_from_slice(&self.seed.to_le_bytes());
        tail[8..].copy_from_slice(&n.to_le_bytes());
        let tail = Bytes::copy_from_slice(&tail[..self.size.min(TAIL)]);
        let mut h = self.prefix_hash.clone();
        h.update(&tail);
        Blob {
            digest: h.finish(),
            prefix: self.prefix.clone(),
            tail,
        }
    }
}

impl Blob {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        (self.prefix.len() + self.tail.len()) as u64
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole blob in one buffer (copies; for small blobs).
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::with_capacity(self.len() as usize);
        v.extend_from_slice(&self.prefix);
        v.extend_from_slice(&self.tail);
        v.into()
    }

    /// The blob as pieces of at most `chunk` bytes, sharing the prefix (no copy).
    pub fn chunks(&self, chunk: usize) -> Vec<Bytes> {
        let mut out: Vec<Bytes> = (0..self.prefix.len())
            .step_by(chunk)
            .map(|at| self.prefix.slice(at..(at + chunk).min(self.prefix.len())))
            .collect();
        out.push(self.tail.clone());
        out
    }

    /// Whether `data` equals the blob's bytes at `offset`.
    pub fn matches_at(&self, offset: u64, data: &[u8]) -> bool {
        let offset = offset as usize;
        let p = self.prefix.len();
        if offset + data.len() > p + self.tail.len() {
            return false;
        }
        let in_prefix = p.saturating_sub(offset).min(data.len());
        let (a, b) = data.split_at(in_prefix);
        let t = (offset + in_prefix).saturating_sub(p);
        a == &self.prefix[offset.min(p)..offset.min(p) + in_prefix]
            && (b.is_empty() || b == &self.tail[t..t + b.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_distinct_and_digests_are_right() {
        for size in [0u64, 5, 16, 17, 100_000] {
            let m = BlobMaker::new(7, size);
            let (a, b) = (m.blob(1), m.blob(2));
            let bytes = a.to_bytes();
            assert_eq!(bytes.len() as u64, size);
            assert_eq!(a.digest, DigestFunction::Sha256.digest_of(&bytes));
            if size >= 16 {
                assert_ne!(a.digest, b.digest);
            }
            let joined: Vec<u8> = a.chunks(4096).concat();
            assert_eq!(joined, bytes);
            assert!(a.matches_at(0, &bytes));
            if size > 20 {
                let mid = size as usize - 20;
                assert!(a.matches_at(mid as u64, &bytes[mid..]));
                let mut bad = bytes[mid..].to_vec();
                bad[19] ^= 1;
                assert!(!a.matches_at(mid as u64, &bad));
            }
        }
    }
}
