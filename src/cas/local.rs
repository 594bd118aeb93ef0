//! The co-located read path: a process on the same box as `kiln serve` (a `kiln worker`)
//! reading blobs straight from the server's store, by digest, with every byte verified.
//!
//! This is the one place where a digest becomes a read of another process's store: the data
//! directory layout ([`store_dir`]), the digest-to-key rule ([`super::Cas::key`]), the record
//! checks (in [`crate::storage::Peek`], the same ones the engine's own read path applies) and
//! the digest check of what was read. A miss, a record that fails its checks, a blob evicted or
//! rewritten mid-read and a hash mismatch all read as "not here": the caller fetches over gRPC
//! instead, so nothing unverified is ever used.

use super::Cas;
use crate::digest::Digest;
use crate::storage::Peek;
use bytes::Bytes;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the storage engine lives inside a server's data dir.
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

/// Read-only, verified access to the store of the server whose data dir this is.
pub struct LocalReader {
    peek: Peek,
}

impl LocalReader {
    /// Opens the store in the server data dir `data_dir` read-only.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            peek: Peek::open(&store_dir(data_dir))?,
        })
    }

    /// Copies the blob `d` into a new file at `path`, checking its digest as it goes. False
    /// (and no file left at `path`) on a miss, a damaged or changed record, a digest mismatch
    /// or a failed write.
    pub fn copy_to_file(&self, d: &Digest, path: &Path) -> bool {
        let copy = || -> std::io::Result<bool> {
            let file = std::fs::File::create(path)?;
            if d.is_empty_blob() {
                return Ok(true);
            }
            // Unbuffered: the store hands over a small record whole and a large one in 1 MiB
            // pieces.
            let mut w = Hashing {
                inner: file,
                hasher: d.function.hasher(),
                left: d.size,
            };
            if !self.peek.copy_to(&Cas::key(d), &mut w)? {
                return Ok(false);
            }
            w.flush()?;
            Ok(w.hasher.finish() == *d)
        };
        let ok = copy().unwrap_or_else(|e| {
            tracing::debug!(error = %e, digest = %d, "copy from the co-located store failed");
            false
        });
        if !ok {
            let _ = std::fs::remove_file(path);
        }
        ok
    }

    /// The verified bytes of blob `d` (at most `max` bytes: a larger digest is not read).
    /// `None` on a miss, a damaged or changed record or a digest mismatch.
    pub fn read(&self, d: &Digest, max: u64) -> Option<Bytes> {
        if d.is_empty_blob() {
            return Some(Bytes::new());
        }
        if d.size > max {
            return None;
        }
        let mut w = Hashing {
            inner: Vec::with_capacity(usize::try_from(d.size).ok()?),
            hasher: d.function.hasher(),
            left: d.size,
        };
        match self.peek.copy_to(&Cas::key(d), &mut w) {
            Ok(true) if w.hasher.finish() == *d => Some(Bytes::from(w.inner)),
            _ => None,
        }
    }
}

/// A writer that hashes what passes through and refuses more than the digest's size (a record
/// longer than its digest says is not copied whole before the mismatch is noticed).
struct Hashing<W> {
    inner: W,
    hasher: crate::digest::Hasher,
    left: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() as u64 > self.left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stored blob is longer than its digest says",
            ));
        }
        let n = self.inner.write(b)?;
        self.left -= n as u64;
        self.hasher.update(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A CAS over a fresh 16 MiB engine (4 MiB segments, 64 KiB parts) in server data dir
/// `data`, for tests of readers of that dir.
#[cfg(test)]
pub(crate) fn small_store(data: &Path) -> Cas {
    use crate::storage::{Engine, EngineConfig};
    let mut c = EngineConfig::new(store_dir(data));
    c.segment_size = 4 << 20;
    c.capacity_bytes = 16 << 20;
    c.max_blob_size = 4 << 20;
    c.part_size = 64 << 10;
    Cas::new(std::sync::Arc::new(Engine::open(c).expect("engine")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A store written by an engine, read by a second process's reader: right bytes, misses
    /// for absent or wrongly sized digests, the bound respected, nothing left behind.
    #[test]
    fn reads_and_copies_verified_blobs() {
        let data = tempfile::tempdir().unwrap();
        let cas = small_store(data.path());
        let rt = runtime();
        let small = Bytes::from_static(b"a directory, say");
        let large = Bytes::from(vec![7u8; 300 << 10]); // several parts
        let (ds, dl) = (
            DigestFunction::Sha256.digest_of(&small),
            DigestFunction::Sha256.digest_of(&large),
        );
        rt.block_on(cas.put(&ds, small.clone())).unwrap();
        rt.block_on(cas.put(&dl, large.clone())).unwrap();
        let r = LocalReader::open(data.path()).unwrap();
        assert_eq!(r.read(&ds, 1 << 20), Some(small.clone()));
        assert_eq!(r.read(&dl, 1 << 20), Some(large.clone()));
        assert_eq!(r.read(&dl, 1000), None, "over the bound: not read");
        let absent = DigestFunction::Sha256.digest_of(b"absent");
        assert_eq!(r.read(&absent, 1 << 20), None);
        // The right hash with a wrong size: the stored record is longer than the digest says.
        let short = Digest { size: 4, ..ds };
        assert_eq!(r.read(&short, 1 << 20), None);
        let out = data.path().join("copy");
        assert!(r.copy_to_file(&dl, &out));
        assert_eq!(std::fs::read(&out).unwrap(), large);
        let bad = data.path().join("bad");
        assert!(!r.copy_to_file(&short, &bad));
        assert!(!bad.exists(), "a failed copy leaves no file");
    }

    /// The ring wrapped twice under a reader: what the index still names reads back exact,
    /// what was evicted is a miss.
    #[test]
    fn a_reader_survives_the_ring_wrapping() {
        let data = tempfile::tempdir().unwrap();
        let cas = small_store(data.path());
        let rt = runtime();
        let put = |data: Vec<u8>| {
            let d = DigestFunction::Sha256.digest_of(&data);
            rt.block_on(cas.put(&d, Bytes::from(data.clone()))).unwrap();
            (d, data)
        };
        let r = LocalReader::open(data.path()).unwrap();
        let mut all = vec![];
        for round in 0..40u32 {
            all.push(put((0..900u32 << 10)
                .map(|i| (i.wrapping_mul(31) ^ round) as u8)
                .collect()));
            let (d, data) = &all[all.len() - 1];
            assert_eq!(r.read(d, 1 << 20).as_deref(), Some(&data[..]));
        }
        let (mut hits, mut misses) = (0, 0);
        for (d, data) in &all {
            match r.read(d, 1 << 20) {
                Some(got) => {
                    assert_eq!(&got[..], &data[..], "{d}");
                    hits += 1;
                }
                None => misses += 1,
            }
        }
        assert!(
            hits > 5 && misses > 5,
            "the ring wrapped: {hits} hits, {misses} misses"
        );
    }
}
