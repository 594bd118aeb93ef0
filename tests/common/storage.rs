//! Scaffolding shared by the storage engine's tests, its bench and its fuzz helper: I/O
//! engines, small configs, keys and deterministic data, runtimes. Included by path
//! (`#[path = "common/storage.rs"] mod storage_support;`) so a storage test does not compile
//! the server harness in `common/mod.rs`.
#![allow(dead_code)]

use bytes::Bytes;
use kiln::storage::sys::fault::{FaultIo, FaultState};
use kiln::storage::sys::{self, IoBackend, IoEngine};
use kiln::storage::{EngineConfig, Key};
use std::path::Path;
use std::sync::Arc;

// A test that also has `mod common` loads the file twice; it is only a function.
#[allow(clippy::duplicate_mod)]
#[path = "data.rs"]
mod gen_data;

/// Both write engines; every engine test runs on each.
pub const BACKENDS: [IoBackend; 2] = [IoBackend::Psync, IoBackend::IoUring];

/// A real I/O engine. io_uring must work where kiln is built and tested: no silent fallback.
pub fn io(b: IoBackend) -> Box<dyn IoEngine> {
    sys::build(b).expect("io_uring must be available on kiln's build machines")
}

/// An I/O engine that fails, tears or drops writes when its [`FaultState`] says so.
pub fn faulty(b: IoBackend) -> (Arc<FaultState>, Box<dyn IoEngine>) {
    let st = FaultState::new();
    (Arc::clone(&st), Box::new(FaultIo::new(st, io(b))))
}

/// A small engine in `dir`: `segments` segments of `segment_size` bytes, blobs streamed in
/// parts of `part_size`, `index_slots` initial slots, blobs up to a quarter of the capacity.
pub fn config(
    dir: &Path,
    segment_size: u64,
    segments: u64,
    part_size: u64,
    index_slots: u64,
) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.segment_size = segment_size;
    c.capacity_bytes = segments * segment_size;
    c.max_blob_size = c.capacity_bytes / 4;
    c.part_size = part_size;
    c.index_slots = index_slots;
    c
}

/// Key number `n` in `space`, with `tag` in the last byte (a test keeping two families of
/// keys apart in one space). Bytes 0..8 hold `n` (tests that find a key's index slot read
/// them); bytes 8..16 spread consecutive numbers over the index.
pub fn key_in(space: u8, n: u64, tag: u8) -> Key {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id[8..16].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    id[31] = tag;
    Key::new(space, id)
}

/// Key number `n` in `space`.
pub fn key(space: u8, n: u64) -> Key {
    key_in(space, n, 0)
}

/// Key number `n` among the CAS blobs.
pub fn cas_key(n: u64) -> Key {
    key(Key::SPACE_CAS, n)
}

/// `len` bytes of compressible text for `seed` (`common/data.rs`).
pub fn text(seed: u64, len: usize) -> Bytes {
    gen_data::text(seed, len).into()
}

/// `len` deterministic bytes for `seed` (`common/data.rs`).
pub fn data(seed: u64, len: usize) -> Bytes {
    gen_data::pseudo_random(seed, len).into()
}

/// A one-thread runtime for driving the async `Store` calls from a plain test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A runtime with `threads` workers, for tests whose tasks must run while another blocks.
pub fn rt_threads(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

/// The `nth` compressed record of `key` and `kind` in log order across the segment files of
/// the store in `dir`: (file, record offset, segment seq). For tests that damage one on disk.
pub fn find_compressed(
    dir: &Path,
    key: &Key,
    kind: kiln::storage::format::RecordKind,
    nth: usize,
) -> (std::path::PathBuf, u64, u32) {
    use kiln::storage::format::{
        FLAG_ZSTD, RecordHeader, SEGMENT_HEADER_LEN, SegmentHeader, record_span,
    };
    let mut found = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let seq = SegmentHeader::decode(&bytes).unwrap().seq as u32;
        let mut off = SEGMENT_HEADER_LEN;
        while let Ok(h) = RecordHeader::decode(&bytes[off as usize..], seq) {
            if h.key == *key && h.kind == kind && h.flags & FLAG_ZSTD != 0 {
                found.push((f.clone(), off, seq));
            }
            off += record_span(h.len);
        }
    }
    found
        .into_iter()
        .nth(nth)
        .expect("compressed record of the key")
}
