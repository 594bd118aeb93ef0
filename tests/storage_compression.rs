//! Compression at rest in the segment engine (`EngineConfig::compression`, FORMAT.md
//! "Compressed records"): what is stored compressed reads back exactly, whole and at any
//! offset, after a restart, after an index rebuild from the records, after copy-forward, and
//! through a co-located reader (`Peek`); damage inside a frame is a miss or an error, never
//! bytes; `verify` sees the logical content.

#[path = "common/storage.rs"]
mod storage_support;

use bytes::Bytes;
use kiln::storage::format::{ALIGN, RECORD_HEADER_LEN, RecordHeader, RecordKind};
use kiln::storage::{BlobCheck, Compression, Engine, EngineConfig, Key, Peek, Store};
use std::collections::HashMap;
use std::path::Path;
use storage_support::{BACKENDS, cas_key, config, data, find_compressed, io, rt, text};

const ZSTD: Compression = Compression::Zstd {
    level: 1,
    min_size: 1024,
    max_ratio: 0.9,
};

fn cfg(dir: &Path) -> EngineConfig {
    let mut c = config(dir, 256 << 10, 8, 16 << 10, 4096);
    c.compression = ZSTD;
    c
}

/// Blobs of every shape: keys 1.. with their bytes and whether some of it must be stored
/// compressed.
fn blobs() -> Vec<(Key, Bytes, bool)> {
    let mixed: Vec<u8> = (0..8)
        .flat_map(|i| {
            if i % 2 == 0 {
                text(i, 16 << 10).to_vec()
            } else {
                data(i, 16 << 10).to_vec()
            }
        })
        .collect();
    vec![
        (cas_key(1), text(1, 5000), true),
        (cas_key(2), data(2, 5000), false), // noise: tried, stored as it is
        (cas_key(3), text(3, 500), false),  // under min_size
        (cas_key(4), text(4, 200 << 10), true), // 13 parts, all compressed
        (cas_key(5), Bytes::from(mixed), true), // parts alternate
        (cas_key(6), text(6, (16 << 10) * 3 + 7), true), // a short last part
    ]
}

fn put_all(e: &Engine, blobs: &[(Key, Bytes, bool)]) {
    rt().block_on(async {
        for (k, v, _) in blobs {
            // Streamed in odd-sized pieces, as an upload arrives.
            let mut w = e.begin_write(*k, v.len() as u64).await.unwrap();
            for c in v.chunks(7_001) {
                w.write(Bytes::copy_from_slice(c)).await.unwrap();
            }
            w.commit().await.unwrap();
        }
    });
}

fn check_all(e: &Engine, blobs: &[(Key, Bytes, bool)], when: &str) {
    for (k, want, compressed) in blobs {
        let b = e
            .get(k)
            .unwrap()
            .unwrap_or_else(|| panic!("{when}: {k:?} missing"));
        assert_eq!(b.len(), want.len() as u64, "{when}");
        assert_eq!(b.is_compressed(), *compressed, "{when}: {k:?}");
        assert_eq!(b.to_bytes().unwrap(), want, "{when}: {k:?}");
        let n = want.len() as u64;
        for (off, lim) in [
            (0, 10),
            (n / 3, 20_000),
            (n - 1, 5),
            (n / 2, u64::MAX),
            (n, 1),
        ] {
            let got: Vec<u8> = b
                .read(off, lim, 4_000)
                .flat_map(|c| c.unwrap().to_vec())
                .collect();
            let end = off.saturating_add(lim).min(n) as usize;
            assert_eq!(got, want[off as usize..end], "{when}: {k:?} at {off}+{lim}");
        }
    }
}

#[test]
fn compressed_records_read_back_after_restart_rebuild_and_through_peek() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let blobs = blobs();
        {
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            put_all(&e, &blobs);
            check_all(&e, &blobs, "fresh");
            let s = e.stats();
            let logical: u64 = blobs.iter().map(|(_, v, _)| v.len() as u64).sum();
            assert_eq!(s.compression_logical_bytes, logical);
            assert!(
                s.compression_stored_bytes < logical / 2,
                "{} of {logical}",
                s.compression_stored_bytes
            );
            assert!(s.compressed_records >= 20, "{s:?}");
            assert_eq!(s.compression_skipped, 5, "the noise blob and 4 noise parts");
        }
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        check_all(&e, &blobs, "reopened");
        // The co-located reader decompresses too.
        let peek = Peek::open(dir.path()).unwrap();
        for (k, want, _) in &blobs {
            let mut out = Vec::new();
            assert!(peek.copy_to(k, &mut out).unwrap(), "{k:?}");
            assert_eq!(out, want.to_vec(), "peek {k:?}");
        }
        // verify hashes the logical content and counts it.
        let wanted: HashMap<Key, Bytes> = blobs.iter().map(|(k, v, _)| (*k, v.clone())).collect();
        let check =
            |k: &Key, blob: &kiln::storage::Blob| blob.to_bytes().ok().as_ref() == wanted.get(k);
        let rep = e.verify(
            |_| {},
            Some(BlobCheck {
                wants: &|_| true,
                check: &check,
            }),
        );
        assert_eq!((rep.corrupt_records, rep.check_failures), (0, 0), "{rep:?}");
        assert!(rep.logical_bytes > 2 * rep.bytes, "{rep:?}");
        drop(e);
        // The index rebuilt from the records names the blobs' lengths, not the frames'.
        std::fs::remove_file(dir.path().join("index")).unwrap();
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        assert_eq!(e.stats().index_rebuilds, 1);
        check_all(&e, &blobs, "rebuilt");
        // With compression off, the compressed records still read (a store holds both).
        drop(e);
        let mut plain = cfg(dir.path());
        plain.compression = Compression::None;
        let e = Engine::open_with_io(plain, io(b)).unwrap();
        check_all(&e, &blobs, "compression off");
    }
}

/// Flips one bit inside the zstd frame of the record at `off` and rewrites both checksums, so
/// the damage passes every check of the record format: only the frame's own checks are left.
fn damage_frame(file: &Path, off: u64, seq: u32) {
    let mut bytes = std::fs::read(file).unwrap();
    let o = off as usize;
    let mut h = RecordHeader::decode(&bytes[o..], seq).unwrap();
    let p = o + RECORD_HEADER_LEN;
    let len = h.len as usize;
    bytes[p + len / 2] ^= 0x10;
    h.checksum = xxhash_rust::xxh3::xxh3_64(&bytes[p..p + len]);
    bytes[o..p].copy_from_slice(&h.encode(seq));
    std::fs::write(file, &bytes).unwrap();
    assert_eq!(off % ALIGN, 0);
}

#[test]
fn a_damaged_frame_is_a_miss_or_an_error_never_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = blobs();
    {
        let e = Engine::open_with_io(cfg(dir.path()), io(BACKENDS[0])).unwrap();
        put_all(&e, &blobs);
    }
    // A whole blob in one record (key 1) and the third part of a large one (key 4).
    let (f, off, seq) = find_compressed(dir.path(), &cas_key(1), RecordKind::Blob, 0);
    damage_frame(&f, off, seq);
    let (f, off, seq) = find_compressed(dir.path(), &cas_key(4), RecordKind::Part, 2);
    damage_frame(&f, off, seq);
    let e = Engine::open_with_io(cfg(dir.path()), io(BACKENDS[0])).unwrap();
    // The small blob: dropped at the first read, like a record that fails its checksum.
    assert!(e.get(&cas_key(1)).unwrap().is_none());
    assert_eq!(e.stats().corruptions, 1);
    assert!(!e.contains(&cas_key(1)).unwrap(), "dropped from the index");
    // The large one: the damaged part is an error when reached, the parts before it are
    // served, nothing after it is. (Parts are written as they are compressed, so the third
    // record on disk is not always the blob's third part.)
    let b = e.get(&cas_key(4)).unwrap().unwrap();
    assert!(b.to_bytes().is_err());
    let pieces: Vec<_> = b.read(0, u64::MAX, 16 << 10).collect();
    let ok = pieces.iter().take_while(|p| p.is_ok()).count();
    assert!(ok < 13, "one of the 13 parts fails");
    assert!(pieces[ok].is_err());
    assert_eq!(pieces.len(), ok + 1, "nothing after the error");
    let want = &blobs[3].1;
    for (i, p) in pieces.iter().take(ok).enumerate() {
        assert_eq!(
            p.as_ref().unwrap(),
            &want[i * (16 << 10)..(i + 1) * (16 << 10)]
        );
    }
    // Found damaged while read: counted once and unpublished, as a bad checksum at `get` is.
    assert_eq!(e.stats().corruptions, 2);
    assert!(!e.contains(&cas_key(4)).unwrap(), "dropped from the index");
    // The co-located reader refuses both.
    let peek = Peek::open(dir.path()).unwrap();
    assert!(!peek.copy_to(&cas_key(4), &mut Vec::new()).unwrap());
    // verify finds the large one (its content does not decode) and drops it.
    let check = |_: &Key, blob: &kiln::storage::Blob| blob.to_bytes().is_ok();
    let rep = e.verify(
        |_| {},
        Some(BlobCheck {
            wants: &|_| true,
            check: &check,
        }),
    );
    assert!(rep.check_failures >= 1, "{rep:?}");
    assert!(e.get(&cas_key(4)).unwrap().is_none());
    // The others are untouched.
    check_all(&e, &blobs[1..3], "after damage");
}

#[test]
fn copy_forward_keeps_compressed_records_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open_with_io(cfg(dir.path()), io(BACKENDS[0])).unwrap();
    let hot = vec![
        (cas_key(100), text(100, 6000), true),
        (cas_key(101), text(101, 40 << 10), true),
    ];
    put_all(&e, &hot);
    let rt = rt();
    // Noise (stored as it is) through the ring several times; the hot blobs read meanwhile.
    for n in 0..320u64 {
        rt.block_on(e.put(cas_key(1000 + n), data(n, 20 << 10)))
            .unwrap();
        if n % 8 == 0 {
            check_all(&e, &hot, &format!("after {n} blobs"));
        }
    }
    let s = e.stats();
    assert!(s.evictions >= 16, "the ring wrapped twice: {s:?}");
    assert!(s.copy_forwards >= 4, "{s:?}");
    check_all(&e, &hot, "after the ring wrapped");
}
