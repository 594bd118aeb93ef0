//! Bit flips in every kind of on-disk structure (a segment record, an index slot, the index
//! header, a state slot) and torn unacknowledged tails: each is found, never served, repaired
//! or reported, and a blob that was lost to damage reads as missing (so `contains`, which
//! FindMissingBlobs uses, says so) and is served again after a re-upload. Each test runs on
//! both I/O engines.

#[path = "common/storage.rs"]
mod storage_support;

use bytes::Bytes;
use kiln::storage::format::{RecordHeader, RecordKind, SegmentHeader, record_span};
use kiln::storage::sys::IoBackend;
use kiln::storage::{Durability, Engine, EngineConfig, Key, Store};
use std::path::{Path, PathBuf};
use storage_support::{BACKENDS, cas_key, config, data, faulty, io, key, rt};

fn cfg(dir: &Path) -> EngineConfig {
    config(dir, 256 << 10, 8, 16 << 10, 4096)
}

const SMALL: u64 = 40;
const BIG: u64 = 1000;
const BIG_LEN: usize = 100 << 10;

/// 40 small blobs, one multi-part blob, and an AC entry written twice; then a clean stop.
fn populate(dir: &Path, b: IoBackend) {
    let rt = rt();
    let e = Engine::open_with_io(cfg(dir), io(b)).unwrap();
    rt.block_on(async {
        for n in 0..SMALL {
            e.put(cas_key(n), data(n, 3000 + n as usize)).await.unwrap();
        }
        let big = data(BIG, BIG_LEN);
        let mut w = e.begin_write(cas_key(BIG), big.len() as u64).await.unwrap();
        for c in big.chunks(7000) {
            w.write(Bytes::copy_from_slice(c)).await.unwrap();
        }
        w.commit().await.unwrap();
        e.put(key(Key::SPACE_AC, 1), data(501, 200)).await.unwrap();
        e.put(key(Key::SPACE_AC, 1), data(502, 300)).await.unwrap();
    });
}

/// What `populate` wrote: (key, bytes), the AC entry at its newest value.
fn populated() -> Vec<(Key, Bytes)> {
    let mut v: Vec<(Key, Bytes)> = (0..SMALL)
        .map(|n| (cas_key(n), data(n, 3000 + n as usize)))
        .collect();
    v.push((cas_key(BIG), data(BIG, BIG_LEN)));
    v.push((key(Key::SPACE_AC, 1), data(502, 300)));
    v
}

/// Every blob `populate` wrote reads back right (the AC entry at its newest value). Reports
/// lengths, never the bytes.
fn assert_all_served(e: &Engine, what: &str) {
    for (k, want) in populated() {
        let got = e.get(&k).unwrap().map(|b| b.to_bytes().unwrap());
        assert!(
            got.as_ref() == Some(&want),
            "{what}: {k:?}: got {:?} bytes, want {}",
            got.map(|g| g.len()),
            want.len()
        );
    }
}

/// Uploads again whatever `populate` wrote that now reads as missing, as a client would after
/// FindMissingBlobs.
fn reupload_missing(rt: &tokio::runtime::Runtime, e: &Engine) {
    for (k, v) in populated() {
        if !e.contains(&k).unwrap() {
            rt.block_on(e.put(k, v)).unwrap();
        }
    }
}

/// A record found by walking the segment files: file, offset, header.
struct Found {
    path: PathBuf,
    seq: u32,
    off: usize,
    header: RecordHeader,
}

fn segment_files(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    for f in std::fs::read_dir(dir.join("segments")).unwrap() {
        let path = f.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Ok(h) = SegmentHeader::decode(&bytes) {
            out.push((path, h.seq as u32, bytes));
        }
    }
    out.sort_by_key(|(_, seq, _)| *seq);
    out
}

/// Every record of every segment, in log order (walking headers from 4096).
fn records(dir: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    for (path, seq, bytes) in segment_files(dir) {
        let mut off = 4096usize;
        while off + 64 <= bytes.len() {
            let Ok(h) = RecordHeader::decode(&bytes[off..], seq) else {
                break;
            };
            out.push(Found {
                path: path.clone(),
                seq,
                off,
                header: h,
            });
            off += record_span(h.len) as usize;
        }
    }
    out
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

/// Flips a payload byte of blob 7 and of one part of the multi-part blob.
fn flip_blob_7_and_a_part_of_big(dir: &Path) {
    let recs = records(dir);
    let small = recs.iter().find(|r| r.header.key == cas_key(7)).unwrap();
    flip(&small.path, small.off + 64 + 100);
    let part = recs
        .iter()
        .find(|r| r.header.key == cas_key(BIG) && r.header.kind == RecordKind::Part)
        .unwrap();
    flip(&part.path, part.off + 64 + 5);
}

/// A flipped payload byte in a small blob and in one part of a multi-part blob: the reads are
/// misses, the entries are dropped at once (so `contains`/`contains_many` say missing without
/// waiting for anything else), a re-upload is served, and it survives a restart.
#[test]
fn flipped_record_byte_reads_missing_and_reupload_is_served() {
    let rt = rt();
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), b);
        flip_blob_7_and_a_part_of_big(dir.path());
        {
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            for k in [cas_key(7), cas_key(BIG)] {
                assert!(e.get(&k).unwrap().is_none(), "{b:?}: damaged {k:?} served");
                assert!(
                    !e.contains(&k).unwrap(),
                    "{b:?}: {k:?} still reported present"
                );
            }
            assert_eq!(
                e.contains_many(&[cas_key(6), cas_key(7), cas_key(BIG), cas_key(8)])
                    .unwrap(),
                vec![true, false, false, true]
            );
            let st = e.stats();
            assert_eq!(
                (st.corruptions, st.dropped_entries),
                (2, 2),
                "{b:?}: {st:?}"
            );
            rt.block_on(e.put(cas_key(7), data(7, 3007))).unwrap();
            rt.block_on(e.put(cas_key(BIG), data(BIG, BIG_LEN)))
                .unwrap();
            assert_all_served(&e, &format!("{b:?} after re-upload"));
        }
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        assert_all_served(&e, &format!("{b:?} after restart"));
    }
}

/// A batched read (`get_many`, what BatchReadBlobs uses) answers like `get` key by key: a
/// damaged record and a damaged part are misses, counted and dropped at once, while the
/// neighbours in the batch, a repeated key, an absent key and an AC entry are answered right.
#[test]
fn damaged_records_in_a_batched_read_are_misses_and_the_rest_is_served() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), b);
        flip_blob_7_and_a_part_of_big(dir.path());
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        let ac = key(Key::SPACE_AC, 1);
        let asked = [
            cas_key(6),
            cas_key(7),
            cas_key(BIG),
            cas_key(8),
            cas_key(999),
            cas_key(6),
            ac,
        ];
        let got: Vec<Option<Bytes>> = e
            .get_many(&asked)
            .unwrap()
            .into_iter()
            .map(|b| b.map(|b| b.to_bytes().unwrap()))
            .collect();
        let want = [
            Some(data(6, 3006)),
            None,
            None,
            Some(data(8, 3008)),
            None,
            Some(data(6, 3006)),
            Some(data(502, 300)),
        ];
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g == w,
                "{b:?}: answer {i} for {:?}: got {:?} bytes, want {:?}",
                asked[i],
                g.as_ref().map(Bytes::len),
                w.as_ref().map(Bytes::len)
            );
        }
        let st = e.stats();
        assert_eq!(
            (st.corruptions, st.dropped_entries),
            (2, 2),
            "{b:?}: {st:?}"
        );
        assert_eq!(
            e.contains_many(&[cas_key(7), cas_key(BIG), cas_key(6)])
                .unwrap(),
            vec![false, false, true],
            "{b:?}: the damaged blobs are reported missing at once"
        );
    }
}

/// A flipped byte in a segment header: `open` cannot map that segment, so its blobs can never
/// be served; the first read drops them (before, `contains` said present forever), `verify`
/// drops every one of them, and re-uploads are served.
#[test]
fn damaged_segment_header_drops_its_blobs() {
    let rt = rt();
    for b in BACKENDS {
        for by_verify in [false, true] {
            let what = format!("{b:?} verify={by_verify}");
            let dir = tempfile::tempdir().unwrap();
            populate(dir.path(), b);
            let recs = records(dir.path());
            let first = &recs[0];
            assert_eq!(first.header.key, cas_key(0));
            // Keys with a record in that segment (a multi-part blob's parts included).
            let in_first: std::collections::HashSet<Key> = recs
                .iter()
                .filter(|r| r.seq == first.seq)
                .map(|r| r.header.key)
                .collect();
            flip(&first.path, 20);
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            if by_verify {
                let rep = e.verify(|_| {}, None);
                assert_eq!(
                    rep.dropped_entries,
                    in_first.len() as u64,
                    "{what}: {rep:?}"
                );
                assert!(kiln::admin::outcome(&rep).is_err(), "{what}");
            } else {
                assert!(e.get(&cas_key(0)).unwrap().is_none(), "{what}");
            }
            assert!(!e.contains(&cas_key(0)).unwrap(), "{what}");
            // Reads find the rest of that segment's blobs gone and drop them too.
            for (k, _) in populated() {
                let _ = e.get(&k).unwrap();
            }
            reupload_missing(&rt, &e);
            assert_all_served(&e, &what);
        }
    }
}

/// The index slot holding `key`: byte offset in the index file (slots of 64 bytes after a
/// 4 KiB header; word 1 holds the first 8 key bytes, native-endian).
fn slot_of(dir: &Path, key: &Key) -> usize {
    let ix = std::fs::read(dir.join("index")).unwrap();
    let first = &key.id[..8];
    (4096..ix.len())
        .step_by(64)
        .find(|&s| &ix[s + 8..s + 16] == first && ix[s + 40 + 7] == key.space)
        .expect("key's slot in the index")
}

/// A flipped byte in an index slot (the record offset): the entry points at the wrong bytes.
/// A read finds that and drops it; `verify` finds it without any read and drops it too. Either
/// way the blob then reads as missing and a re-upload is served.
#[test]
fn flipped_index_slot_is_found_dropped_and_repaired_by_reupload() {
    let rt = rt();
    for b in BACKENDS {
        for by_verify in [false, true] {
            let what = format!("{b:?} verify={by_verify}");
            let dir = tempfile::tempdir().unwrap();
            populate(dir.path(), b);
            // Word 6 = seq << 32 | offset/64; byte 48 is the offset's low byte.
            flip(
                &dir.path().join("index"),
                slot_of(dir.path(), &cas_key(5)) + 48,
            );
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            if by_verify {
                let rep = e.verify(|_| {}, None);
                assert_eq!(rep.dropped_entries, 1, "{what}: {rep:?}");
                assert!(rep.damaged(), "{what}");
                assert!(kiln::admin::outcome(&rep).is_err(), "{what}");
                assert!(!e.contains(&cas_key(5)).unwrap(), "{what}");
            } else {
                assert!(e.get(&cas_key(5)).unwrap().is_none(), "{what}");
                assert!(!e.contains(&cas_key(5)).unwrap(), "{what}");
            }
            rt.block_on(e.put(cas_key(5), data(5, 3005))).unwrap();
            assert_all_served(&e, &what);
            let rep = e.verify(|_| {}, None);
            assert!(!rep.damaged(), "{what}: {rep:?}");
        }
    }
}

/// A damaged index header or a missing index file no longer empties the cache: the index is
/// rebuilt from the segment records (newest AC value wins, multi-part blobs included).
#[test]
fn damaged_or_missing_index_is_rebuilt_from_the_segments() {
    for b in BACKENDS {
        for damage in ["magic", "slot count word", "hash seed", "missing file"] {
            let what = format!("{b:?} {damage}");
            let dir = tempfile::tempdir().unwrap();
            populate(dir.path(), b);
            let ix = dir.path().join("index");
            match damage {
                "magic" => flip(&ix, 3),
                "slot count word" => flip(&ix, 16),
                "hash seed" => flip(&ix, 33),
                _ => std::fs::remove_file(&ix).unwrap(),
            }
            {
                let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
                assert_eq!(e.stats().index_rebuilds, 1, "{what}");
                assert_all_served(&e, &what);
                assert!(!e.verify(|_| {}, None).damaged(), "{what}");
            }
            // The rebuilt index was checkpointed: a second open needs no rebuild.
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            assert_eq!(e.stats().index_rebuilds, 0, "{what}");
            assert_all_served(&e, &what);
            // A co-located worker reads the rebuilt index (header checksum included).
            let peek = kiln::storage::Peek::open(dir.path()).unwrap();
            let mut out = Vec::new();
            assert!(peek.copy_to(&cas_key(BIG), &mut out).unwrap(), "{what}");
            assert_eq!(out, data(BIG, BIG_LEN), "{what}");
        }
    }
}

/// A rebuild after the ring wrapped: evicted blobs stay misses, live ones are served, nothing
/// is served with wrong bytes.
#[test]
fn rebuild_after_the_ring_wrapped_serves_live_blobs_only() {
    let rt = rt();
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let total = 600u64;
        {
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            for n in 0..total {
                rt.block_on(e.put(cas_key(n), data(n, 5000))).unwrap();
            }
            assert!(e.stats().evictions > 0);
        }
        flip(&dir.path().join("index"), 0);
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        assert_eq!(e.stats().index_rebuilds, 1);
        for n in 0..total {
            if let Some(got) = e.get(&cas_key(n)).unwrap() {
                assert_eq!(got.to_bytes().unwrap(), data(n, 5000), "{b:?}: blob {n}");
            }
        }
        assert!(
            !e.contains(&cas_key(0)).unwrap(),
            "{b:?}: evicted blob came back"
        );
        for n in total - 100..total {
            assert!(
                e.contains(&cas_key(n)).unwrap(),
                "{b:?}: live blob {n} lost"
            );
        }
    }
}

/// A flipped byte in either state slot: the other slot is used and nothing is lost. Both
/// slots damaged: the ring is found from the segment headers and the index rebuilt.
#[test]
fn flipped_state_slots_lose_nothing() {
    for b in BACKENDS {
        for slots in [&[0usize][..], &[1], &[0, 1]] {
            let what = format!("{b:?} slots {slots:?}");
            let dir = tempfile::tempdir().unwrap();
            populate(dir.path(), b);
            for &s in slots {
                flip(&dir.path().join("state"), s * 4096 + 20);
            }
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            assert_all_served(&e, &what);
            assert_eq!(
                e.stats().index_rebuilds,
                u64::from(slots.len() == 2),
                "{what}"
            );
            rt().block_on(e.put(cas_key(9999), data(9999, 10))).unwrap();
            assert!(!e.verify(|_| {}, None).damaged(), "{what}");
        }
    }
}

/// The torn end of a write that was never acknowledged (a header whose payload did not fully
/// reach the disk, then a whole record written out of order after it): `verify` reports it as
/// an unacknowledged torn tail, not corruption, and `kiln verify` exits 0. Real damage before
/// it still counts.
#[test]
fn torn_unacknowledged_tail_is_not_corruption() {
    for b in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), b);
        let last = records(dir.path()).pop().unwrap();
        let mut file = std::fs::read(&last.path).unwrap();
        let mut at = last.off + record_span(last.header.len) as usize;
        // Torn record: full header, a third of the payload.
        let payload = data(4242, 5000);
        let h = RecordHeader::for_payload(RecordKind::Blob, cas_key(4242), &payload);
        file[at..at + 64].copy_from_slice(&h.encode(last.seq));
        file[at + 64..at + 64 + 1700].copy_from_slice(&payload[..1700]);
        at += record_span(h.len) as usize;
        // A whole record after it (pages written back out of order).
        let whole = data(4243, 900);
        let h2 = RecordHeader::for_payload(RecordKind::Blob, cas_key(4243), &whole);
        file[at..at + 64].copy_from_slice(&h2.encode(last.seq));
        file[at + 64..at + 64 + 900].copy_from_slice(&whole);
        std::fs::write(&last.path, &file).unwrap();

        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        let rep = e.verify(|_| {}, None);
        assert_eq!(
            (rep.corrupt_records, rep.dropped_entries),
            (0, 0),
            "{b:?}: {}",
            kiln::admin::describe(&rep)
        );
        assert!(rep.torn_tail_bytes > 0, "{b:?}: {rep:?}");
        assert!(
            kiln::admin::describe(&rep).contains("unacknowledged torn tail"),
            "{}",
            kiln::admin::describe(&rep)
        );
        assert!(kiln::admin::outcome(&rep).is_ok(), "{b:?}");
        assert!(e.get(&cas_key(4242)).unwrap().is_none());
        assert_all_served(&e, &format!("{b:?}"));
        drop(e);

        // Real damage before the last referenced record: exit 1, entry dropped.
        let victim = records(dir.path())
            .into_iter()
            .find(|r| r.header.key == cas_key(3))
            .unwrap();
        flip(&victim.path, victim.off + 64 + 1);
        let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
        let rep = e.verify(|_| {}, None);
        assert_eq!(
            (rep.corrupt_records, rep.dropped_entries),
            (1, 1),
            "{b:?}: {rep:?}"
        );
        assert!(kiln::admin::outcome(&rep).is_err());
        assert!(!e.contains(&cas_key(3)).unwrap(), "{b:?}");
    }
}

/// Power losses while unsynced uploads sit in the page cache: whatever the crash tore lies
/// after the last durable record, so `verify` never calls it corruption.
#[test]
fn crash_images_verify_without_corruption() {
    let rt = rt();
    let mut torn = 0;
    for b in BACKENDS {
        for seed in 1..=6u64 {
            let dir = tempfile::tempdir().unwrap();
            let (st, fio) = faulty(b);
            // Periodic mode with a long interval: the second half is in the page cache only
            // when the power goes off, so the crash image keeps, drops or tears its pages.
            let mut c = cfg(dir.path());
            c.durability = Durability::Periodic {
                interval: std::time::Duration::from_hours(1),
            };
            {
                let e = Engine::open_with_io(c, fio).unwrap();
                for n in 0..30 {
                    rt.block_on(e.put(cas_key(n), data(n, 9000))).unwrap();
                }
                rt.block_on(e.sync()).unwrap();
                for n in 30..60 {
                    rt.block_on(e.put(cas_key(n), data(n, 9000))).unwrap();
                }
                st.freeze();
            }
            st.crash_image(seed).unwrap();
            let e = Engine::open_with_io(cfg(dir.path()), io(b)).unwrap();
            let rep = e.verify(|_| {}, None);
            assert!(
                !rep.damaged(),
                "{b:?} seed {seed}: {}",
                kiln::admin::describe(&rep)
            );
            torn += rep.torn_tail_regions;
            for n in 0..30 {
                assert_eq!(
                    e.get(&cas_key(n)).unwrap().map(|b| b.to_bytes().unwrap()),
                    Some(data(n, 9000)),
                    "{b:?} seed {seed}: acknowledged blob {n}"
                );
            }
        }
    }
    assert!(
        torn > 0,
        "no crash image had a torn tail: the test proves nothing"
    );
}
