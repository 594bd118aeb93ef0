//! Edge cases of compression at rest in the engine (issue 13 part 2, from an adversarial
//! review): part boundaries, empty and exact-size blobs, offsets at and inside stored frames,
//! uploads cut back and resumed with parts in flight, a part that fails while in flight, and
//! hostile record bytes whose checksums were rewritten so that only the compressed-payload
//! checks are left.

#[path = "common/storage.rs"]
mod storage_support;

use bytes::Bytes;
use kiln::storage::format::{RECORD_HEADER_LEN, RecordHeader, RecordKind};
use kiln::storage::{
    Blob, BlobCheck, Compression, Encoded, Engine, EngineConfig, Key, Peek, Store,
};
use std::path::Path;
use storage_support::{BACKENDS, cas_key, config, data, faulty, find_compressed, io, rt, text};

const PART: u64 = 16 << 10;

const ZSTD: Compression = Compression::Zstd {
    level: 1,
    min_size: 1024,
    max_ratio: 0.9,
};

fn cfg(dir: &Path) -> EngineConfig {
    let mut c = config(dir, 256 << 10, 8, PART, 4096);
    c.compression = ZSTD;
    c
}

/// Text and noise alternating every `PART` bytes, so parts alternate compressed and plain.
fn mixed(seed: u64, len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    let mut i = 0;
    while v.len() < len {
        let n = (PART as usize).min(len - v.len());
        if i % 2 == 0 {
            v.extend_from_slice(&text(seed + i, n));
        } else {
            v.extend_from_slice(&data(seed + i, n));
        }
        i += 1;
    }
    Bytes::from(v)
}

async fn upload(e: &Engine, k: Key, v: &Bytes, piece: usize) {
    let mut w = e.begin_write(k, v.len() as u64).await.unwrap();
    for c in v.chunks(piece) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    w.commit().await.unwrap();
}

/// The blob from `offset` on as `Blob::encoded` hands it out, turned back into bytes: every
/// `Zstd` item must be exactly one whole frame.
fn decode_encoded(b: &Blob, offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for item in b.encoded(offset) {
        match item.unwrap() {
            Encoded::Zstd(f) => {
                let n = zstd::zstd_safe::find_frame_compressed_size(&f).expect("a whole frame");
                assert_eq!(n, f.len(), "one frame per stored piece");
                out.extend_from_slice(&zstd::decode_all(&f[..]).unwrap());
            }
            Encoded::Plain(p) => out.extend_from_slice(&p),
        }
    }
    out
}

/// Every offset that matters for a blob of `n` bytes in parts of `PART`.
fn offsets(n: u64) -> Vec<u64> {
    let mut v = vec![0, 1, n.saturating_sub(1), n];
    let mut b = PART;
    while b <= n {
        v.extend([b - 1, b, b + 1]);
        b += PART;
    }
    v.retain(|&o| o <= n);
    v.sort_unstable();
    v.dedup();
    v
}

fn check_blob(b: &Blob, want: &[u8], what: &str) {
    let n = want.len() as u64;
    assert_eq!(b.len(), n, "{what}");
    assert_eq!(b.to_bytes().unwrap(), want, "{what}");
    for off in offsets(n) {
        for lim in [1, PART - 1, PART, PART + 1, u64::MAX] {
            let got: Vec<u8> = b
                .read(off, lim, 3_000)
                .flat_map(|c| c.unwrap().to_vec())
                .collect();
            let end = off.saturating_add(lim).min(n) as usize;
            assert!(got == want[off as usize..end], "{what}: read {off}+{lim}");
        }
        assert!(
            decode_encoded(b, off) == want[off as usize..],
            "{what}: encoded from {off}"
        );
    }
}

/// Sizes at and around part boundaries, each text, noise and mixed.
fn shapes() -> Vec<(Key, Bytes)> {
    let sizes = [
        0,
        1,
        1023,
        1024,
        PART - 1,
        PART,
        PART + 1,
        2 * PART - 1,
        2 * PART,
        2 * PART + 1,
        3 * PART,
        5 * PART + 9,
    ];
    let mut out = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let i = i as u64;
        out.push((cas_key(10 + i), text(i, n as usize)));
        out.push((cas_key(100 + i), data(i, n as usize)));
        out.push((cas_key(200 + i), mixed(i, n as usize)));
    }
    out
}

#[test]
fn part_boundaries_read_and_encode_exactly_everywhere() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let blobs = shapes();
        {
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            rt().block_on(async {
                for (i, (k, v)) in blobs.iter().enumerate() {
                    // Pieces that straddle part boundaries in different ways.
                    let piece = [1_000, PART as usize, 3 * PART as usize + 5][i % 3];
                    upload(&e, *k, v, piece).await;
                }
            });
            for (k, v) in &blobs {
                let b = e.get(k).unwrap().expect("present");
                check_blob(&b, v, &format!("fresh {k:?} ({} bytes)", v.len()));
            }
        }
        // After a restart, through the co-located reader and after an index rebuild.
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        let peek = Peek::open(dir.path()).unwrap();
        for (k, v) in &blobs {
            let b = e.get(k).unwrap().expect("present after restart");
            check_blob(&b, v, &format!("reopened {k:?}"));
            let mut out = Vec::new();
            assert!(peek.copy_to(k, &mut out).unwrap(), "peek {k:?}");
            assert!(out == v[..], "peek {k:?}");
        }
        drop(e);
        std::fs::remove_file(dir.path().join("index")).unwrap();
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        for (k, v) in &blobs {
            if v.is_empty() {
                continue; // the CAS layer answers the empty blob itself
            }
            let b = e.get(k).unwrap().expect("present after rebuild");
            assert_eq!(b.to_bytes().unwrap(), v, "rebuilt {k:?}");
        }
    }
}

#[test]
fn a_cut_back_upload_with_parts_in_flight_resumes_to_the_right_bytes() {
    for compression in [ZSTD, Compression::None] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.compression = compression;
        let e = Engine::open_with_io(c, io(BACKENDS[0])).unwrap();
        let r = storage_support::rt_threads(2);
        for (n, v) in [
            (1u64, mixed(1, (7 * PART + 123) as usize)),
            (2, text(2, (6 * PART) as usize)),
            (3, mixed(3, (4 * PART) as usize)),
        ] {
            let k = cas_key(n);
            r.block_on(async {
                let mut w = e.begin_write(k, v.len() as u64).await.unwrap();
                // Several parts and a half, in odd pieces, then the client goes away.
                let cut = (3 * PART + PART / 2) as usize;
                for c in v[..cut].chunks(5_003) {
                    w.write(Bytes::copy_from_slice(c)).await.unwrap();
                }
                let kept = w.drop_buffered().expect("a streamed write can be cut back");
                // Three whole parts were handed on (one written, two possibly still in
                // flight): all three are kept, the half part is dropped.
                assert_eq!(kept, 3 * PART);
                // Cut back again with nothing new (a second park) keeps the same.
                assert_eq!(w.drop_buffered(), Some(kept));
                // The client resumes from what the writer kept.
                for c in v[kept as usize..].chunks(7_777) {
                    w.write(Bytes::copy_from_slice(c)).await.unwrap();
                }
                w.commit().await.unwrap();
            });
            let b = e.get(&k).unwrap().unwrap();
            assert!(
                b.to_bytes().unwrap() == v,
                "resumed blob {n} with {compression:?}"
            );
        }
    }
}

#[test]
fn a_part_that_fails_in_flight_never_publishes_the_blob() {
    // Whatever operation fails: an acknowledged upload reads back, and nothing reads wrong.
    for fail_at in 1..12u64 {
        let dir = tempfile::tempdir().unwrap();
        let (st, io) = faulty(BACKENDS[0]);
        let e = Engine::open_with_io(cfg(dir.path()), io).unwrap();
        let v = mixed(fail_at, (6 * PART + 77) as usize);
        let k = cas_key(1);
        let r = storage_support::rt_threads(2);
        st.fail_after(fail_at);
        let res: Result<(), String> = r.block_on(async {
            let mut w = e
                .begin_write(k, v.len() as u64)
                .await
                .map_err(|e| e.to_string())?;
            for c in v.chunks(4_096) {
                w.write(Bytes::copy_from_slice(c))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            w.commit().await.map_err(|e| e.to_string())
        });
        // A commit whose sync round fails may leave the blob readable (entries are published
        // before the round; the engine is poisoned): not an acknowledged write, but it must
        // still be the right bytes.
        match e.get(&k) {
            Ok(Some(b)) => {
                assert!(
                    b.to_bytes().unwrap() == v,
                    "fail_at {fail_at}: wrong bytes ({res:?})"
                );
            }
            _ => assert!(res.is_err(), "fail_at {fail_at}: acknowledged but missing"),
        }
    }
}

/// Rewrites the logical-length prefix of the compressed record at `off` to `declared` and
/// recomputes both checksums: hostile bytes that pass every record-format check.
fn forge_prefix(file: &Path, off: u64, seq: u32, declared: u64) {
    let mut bytes = std::fs::read(file).unwrap();
    let o = off as usize;
    let mut h = RecordHeader::decode(&bytes[o..], seq).unwrap();
    let p = o + RECORD_HEADER_LEN;
    bytes[p..p + 8].copy_from_slice(&declared.to_le_bytes());
    h.checksum = xxhash_rust::xxh3::xxh3_64(&bytes[p..p + h.len as usize]);
    bytes[o..p].copy_from_slice(&h.encode(seq));
    std::fs::write(file, &bytes).unwrap();
}

#[test]
fn verify_survives_compressed_records_declaring_absurd_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let (small, big) = (text(1, 8_000), text(2, (3 * PART) as usize));
    {
        let e = Engine::open_with_io(cfg(dir.path()), io(BACKENDS[0])).unwrap();
        rt().block_on(async {
            upload(&e, cas_key(1), &text(9, 5_000), 999).await; // counted first
            upload(&e, cas_key(2), &small, 999).await;
            upload(&e, cas_key(3), &big, 999).await;
        });
    }
    let (f, off, seq) = find_compressed(dir.path(), &cas_key(2), RecordKind::Blob, 0);
    forge_prefix(&f, off, seq, u64::MAX - 1);
    let (f, off, seq) = find_compressed(dir.path(), &cas_key(3), RecordKind::Part, 1);
    forge_prefix(&f, off, seq, u64::MAX / 2);
    let e = Engine::open_with_io(cfg(dir.path()), io(BACKENDS[0])).unwrap();
    let check = |_: &Key, b: &Blob| b.to_bytes().is_ok();
    let rep = e.verify(
        |_| {},
        Some(BlobCheck {
            wants: &|_| true,
            check: &check,
        }),
    );
    assert!(rep.dropped_entries >= 2, "{rep:?}");
    assert!(
        rep.logical_bytes < 1 << 40,
        "logical bytes counted a forged length: {rep:?}"
    );
    assert!(e.get(&cas_key(2)).unwrap().is_none());
    assert!(e.get(&cas_key(3)).unwrap().is_none());
    assert_eq!(
        e.get(&cas_key(1)).unwrap().unwrap().to_bytes().unwrap(),
        text(9, 5_000)
    );
}

#[test]
fn a_rebuilt_index_does_not_publish_a_forged_length() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open_with_io(cfg(dir.path()), io(BACKENDS[0])).unwrap();
        rt().block_on(upload(&e, cas_key(2), &text(2, 8_000), 999));
    }
    let (f, off, seq) = find_compressed(dir.path(), &cas_key(2), RecordKind::Blob, 0);
    forge_prefix(&f, off, seq, u64::MAX - 1);
    std::fs::remove_file(dir.path().join("index")).unwrap();
    let e = Engine::open_with_io(cfg(dir.path()), io(BACKENDS[0])).unwrap();
    // Reported present would be a lie the first read takes back; a miss either way.
    assert!(e.get(&cas_key(2)).unwrap().is_none());
    let peek = Peek::open(dir.path()).unwrap();
    assert!(!peek.copy_to(&cas_key(2), &mut Vec::new()).unwrap());
}

#[test]
fn a_compressed_stream_of_nothing_is_still_a_zstd_frame() {
    // The empty blob (always present in the CAS) and a read at offset == len of a blob
    // stored compressed: the reply must be a valid zstd stream, as it was before compression
    // at rest (one empty frame), not zero bytes.
    let z = kiln::cas::compression::compress_blob(&Blob::from_bytes(Bytes::new())).unwrap();
    assert!(
        zstd::zstd_safe::find_frame_compressed_size(&z).is_ok(),
        "compress_blob of the empty blob gave {} bytes, not a frame",
        z.len()
    );
    assert_eq!(zstd::decode_all(&z[..]).unwrap(), b"");
}

#[test]
fn copy_forward_of_mixed_parts_survives_peek_verify_and_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let hot = vec![
        (cas_key(100), mixed(100, (2 * PART + 5) as usize)),
        (cas_key(101), text(101, PART as usize)),
        (cas_key(102), mixed(102, (PART + 3) as usize)),
    ];
    {
        let e = Engine::open_with_io(cfg(dir.path()), io(BACKENDS[0])).unwrap();
        let r = rt();
        r.block_on(async {
            for (k, v) in &hot {
                upload(&e, *k, v, 6_000).await;
            }
        });
        for n in 0..300u64 {
            r.block_on(e.put(cas_key(1000 + n), data(n, 20 << 10)))
                .unwrap();
            if n % 8 == 0 {
                for (k, v) in &hot {
                    let b = e
                        .get(k)
                        .unwrap()
                        .unwrap_or_else(|| panic!("after {n}: hot {k:?} evicted: {:?}", e.stats()));
                    assert!(b.to_bytes().unwrap() == v[..], "after {n}: {k:?}");
                }
            }
        }
        let s = e.stats();
        assert!(s.evictions >= 16 && s.copy_forwards >= 6, "{s:?}");
        for (k, v) in &hot {
            check_blob(&e.get(k).unwrap().unwrap(), v, &format!("copied {k:?}"));
        }
        let wanted: std::collections::HashMap<Key, Bytes> = hot.iter().cloned().collect();
        let check = |k: &Key, b: &Blob| {
            wanted
                .get(k)
                .is_none_or(|w| b.to_bytes().ok().as_ref() == Some(w))
        };
        let rep = e.verify(
            |_| {},
            Some(BlobCheck {
                wants: &|_| true,
                check: &check,
            }),
        );
        assert_eq!(
            (rep.corrupt_records, rep.check_failures, rep.dropped_entries),
            (0, 0, 0),
            "{rep:?}"
        );
    }
    let peek = Peek::open(dir.path()).unwrap();
    for (k, v) in &hot {
        let mut out = Vec::new();
        assert!(peek.copy_to(k, &mut out).unwrap(), "peek {k:?}");
        assert!(out == v[..], "peek {k:?}");
    }
    std::fs::remove_file(dir.path().join("index")).unwrap();
    let e = Engine::open_with_io(cfg(dir.path()), io(BACKENDS[0])).unwrap();
    for (k, v) in &hot {
        let b = e.get(k).unwrap().expect("present after rebuild");
        assert!(b.to_bytes().unwrap() == v[..], "rebuilt {k:?}");
    }
}

#[test]
fn copy_forward_budget_counts_the_bytes_a_compressed_blob_takes_on_disk() {
    // The budget is "bytes copied forward per evicted segment (record headers included)":
    // a hot text blob of 5 parts takes a few KiB compressed, far under the budget (a quarter
    // of a 256 KiB segment), though its logical length (80 KiB) is over it.
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open_with_io(cfg(dir.path()), io(BACKENDS[0])).unwrap();
    let k = cas_key(300);
    let v = text(300, (5 * PART) as usize);
    let r = rt();
    r.block_on(upload(&e, k, &v, 6_000));
    for n in 0..200u64 {
        r.block_on(e.put(cas_key(1000 + n), data(n, 20 << 10)))
            .unwrap();
        if n % 4 == 0 {
            let b = e.get(&k).unwrap().unwrap_or_else(|| {
                panic!(
                    "after {n} blobs: the hot compressed blob was evicted: {:?}",
                    e.stats()
                )
            });
            assert!(b.to_bytes().unwrap() == v);
        }
    }
    assert!(e.stats().evictions >= 8);
}

#[test]
fn copy_forward_budget_counts_single_record_blobs_as_stored() {
    // Eight hot text blobs of one record each (a part's worth, 128 KiB logical in all, over
    // the 64 KiB budget) take a few KiB each compressed: every one is copied forward at each
    // eviction. Costed by their logical lengths, half of them were cut at the first one.
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open_with_io(cfg(dir.path()), io(BACKENDS[0])).unwrap();
    let hot: Vec<(Key, Bytes)> = (0..8u64)
        .map(|n| (cas_key(400 + n), text(400 + n, PART as usize)))
        .collect();
    let r = rt();
    for (k, v) in &hot {
        r.block_on(e.put(*k, v.clone())).unwrap();
    }
    for n in 0..200u64 {
        r.block_on(e.put(cas_key(2000 + n), data(n, 20 << 10)))
            .unwrap();
        if n % 4 == 0 {
            for (k, v) in &hot {
                let b = e.get(k).unwrap().unwrap_or_else(|| {
                    panic!(
                        "after {n} blobs: a hot one-record blob was evicted: {:?}",
                        e.stats()
                    )
                });
                assert!(b.to_bytes().unwrap() == *v);
            }
        }
    }
    assert!(e.stats().evictions >= 8);
    assert_eq!(e.stats().copy_forward_budget_cuts, 0, "{:?}", e.stats());
}
