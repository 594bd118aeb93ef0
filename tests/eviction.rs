//! Eviction keeps what builds use (issue #17), on the engine directly: a blob touched within
//! the horizon survives its segment's eviction whenever the touch came; untouched blobs go and
//! the store stays within its capacity.

use bytes::Bytes;
use kiln::storage::{Engine, EngineConfig, Key, Store};
use std::path::Path;

const MIB: u64 = 1 << 20;
const HOT: u64 = 2000;
const HOT_LEN: usize = 16 << 10;

fn cfg(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.segment_size = 128 * MIB;
    c.capacity_bytes = 8 * c.segment_size;
    c.max_blob_size = c.capacity_bytes / 4;
    c
}

/// Storage keys need not be SHA-256 digests: the storage layer does not hash.
fn key(space: u8, n: u64) -> Key {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id[31] = space;
    Key::new(Key::SPACE_CAS, id)
}

fn hot_key(n: u64) -> Key {
    key(1, n)
}

fn other_key(n: u64) -> Key {
    key(2, n)
}

/// Distinct bytes per hot blob (cheap: one u64 pattern repeated).
fn hot_data(n: u64) -> Bytes {
    let word = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1).to_le_bytes();
    word.iter()
        .copied()
        .cycle()
        .take(HOT_LEN)
        .collect::<Vec<u8>>()
        .into()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn segment_bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum()
}

/// The scenario: 1 GiB store of 8 x 128 MiB segments, 2,000 hot blobs of 16 KiB asked
/// for with FindMissingBlobs (`contains`) after every 256 MiB of other uploads, 3 GiB of other
/// uploads in all. Before issue #17 every hot blob was lost at the first eviction of its
/// segment (2,000 of 2,000 missing).
#[test]
fn hot_set_survives_three_capacities_of_other_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let (cap, seg) = (c.capacity_bytes, c.segment_size);
    let e = Engine::open(c).unwrap();
    let rt = rt();
    rt.block_on(async {
        let items: Vec<_> = (0..HOT).map(|n| (hot_key(n), hot_data(n))).collect();
        for chunk in items.chunks(200) {
            e.put_many(chunk.to_vec()).await.unwrap();
        }
    });
    // Other uploads: 1 MiB blobs sharing one buffer (the engine checksums, never compares).
    let other = Bytes::from(vec![0x5au8; MIB as usize]);
    let per_round = 256 * MIB / MIB;
    let rounds = 3 * 1024 / 256;
    let mut next = 0u64;
    for round in 0..rounds {
        let present = e
            .contains_many(&(0..HOT).map(hot_key).collect::<Vec<_>>())
            .unwrap();
        let missing = present.iter().filter(|p| !**p).count();
        assert_eq!(
            missing,
            0,
            "{missing} of {HOT} hot blobs missing before round {round}: {:?}",
            e.stats()
        );
        rt.block_on(async {
            for _ in 0..per_round / 16 {
                let batch = (next..next + 16)
                    .map(|n| (other_key(n), other.clone()))
                    .collect();
                next += 16;
                e.put_many(batch).await.unwrap();
            }
        });
    }
    let s = e.stats();
    for n in 0..HOT {
        assert_eq!(
            e.get(&hot_key(n)).unwrap().map(|b| b.to_bytes()),
            Some(hot_data(n)),
            "hot blob {n} after 3 GiB of other uploads: {s:?}"
        );
    }
    assert!(s.copy_forwards >= HOT, "{s:?}");
    assert_eq!(s.copy_forward_budget_cuts, 0, "{s:?}");
    // Untouched blobs go: the first uploads are evicted, and what is left fits the capacity.
    assert!(!e.contains(&other_key(0)).unwrap(), "{s:?}");
    let live_other = (0..next)
        .filter(|&n| e.contains(&other_key(n)).unwrap())
        .count() as u64;
    assert!(
        live_other * MIB <= cap,
        "{live_other} MiB of other blobs live: {s:?}"
    );
    assert!(s.bytes_used <= cap, "{s:?}");
    let on_disk = segment_bytes_on_disk(dir.path());
    assert!(on_disk <= cap + seg, "{on_disk} bytes of segments");
    // Write amplification of the copies: the hot set once per evicted segment that held it.
    assert!(s.copy_forward_bytes < s.bytes_written / 4, "{s:?}");
}

/// Copy-forward off: the same ring is plain FIFO (the comparison `kiln bench` replays), and a
/// touch older than the horizon does not keep a blob.
#[test]
fn untouched_or_stale_blobs_are_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = EngineConfig::new(dir.path());
    c.segment_size = 256 << 10;
    c.capacity_bytes = 8 * c.segment_size;
    c.max_blob_size = c.capacity_bytes / 4;
    c.part_size = 16 << 10;
    c.index_slots = 1 << 14;
    let e = Engine::open(c.clone()).unwrap();
    let rt = rt();
    let blob = Bytes::from(vec![7u8; 4000]);
    rt.block_on(async {
        e.put(hot_key(0), hot_data(0)).await.unwrap();
        e.put(hot_key(1), hot_data(1)).await.unwrap();
    });
    // Blob 0 touched once at once, then never: the touch is older than the horizon (4
    // segments) when its segment goes. Blob 1 is touched every segment of writes.
    assert!(e.contains(&hot_key(0)).unwrap());
    let per_seg = c.segment_size / 4096;
    for n in 0..3 * c.capacity_bytes / 4096 {
        rt.block_on(e.put(other_key(n), blob.clone())).unwrap();
        if n % per_seg == 0 {
            assert!(e.contains(&hot_key(1)).unwrap(), "{n}: {:?}", e.stats());
        }
    }
    assert!(!e.contains(&hot_key(0)).unwrap(), "{:?}", e.stats());
    assert_eq!(
        e.get(&hot_key(1)).unwrap().map(|b| b.to_bytes()),
        Some(hot_data(1))
    );
}
