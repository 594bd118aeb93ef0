//! Fuzz helpers, compiled only with the `testing` feature (the fuzz crate enables it), so that the targets
//! in `fuzz/fuzz_targets/` stay a few lines.

use crate::storage::codec;
use crate::storage::format::{self, RecordHeader, SegmentHeader, State};
use crate::storage::sys::fault::{FaultIo, FaultState};
use crate::storage::sys::{self, IoBackend};
use crate::storage::{Engine, EngineConfig, Key, StorageError, Store};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// Decodes `data` as every on-disk header; whatever decodes must re-encode to an equal value.
pub fn decode_headers(data: &[u8]) {
    let seq = data.first().copied().map_or(0, u32::from);
    if let Ok(h) = RecordHeader::decode(data, seq) {
        assert_eq!(RecordHeader::decode(&h.encode(seq), seq), Ok(h));
    }
    if let Ok(h) = SegmentHeader::decode(data) {
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
    }
    if let Ok(s) = State::decode(data) {
        assert_eq!(State::decode(&s.encode()), Ok(s));
    }
    if let Ok((total, parts)) = format::decode_manifest(data) {
        assert_eq!(
            format::decode_manifest(&format::encode_manifest(total, &parts).0),
            Ok((total, parts))
        );
    }
    // A compressed record payload: decodes to exactly the length it declares, or not at all.
    if let Some(n) = codec::logical_len(data)
        && let Some(out) = codec::decode(data, n, 1 << 20)
    {
        assert_eq!(out.len() as u64, n);
    }
}

fn cfg(dir: &std::path::Path, compress: bool) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    if compress {
        c.compression = crate::storage::Compression::Zstd {
            level: 1,
            min_size: 64,
            max_ratio: 0.9,
        };
    }
    c.segment_size = 64 << 10;
    c.capacity_bytes = 8 * c.segment_size;
    c.max_blob_size = 96 << 10;
    c.part_size = 4 << 10;
    c.index_slots = 256;
    c.probe_limit = 8;
    c
}

/// A scratch directory removed on drop (tempfile is only a dev-dependency).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("kiln-fuzz-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("scratch dir");
        Self(p)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the ops encoded in `data` against the engine (psync under fault injection) and a
/// model. Checks: nothing served that was never written for its key; without eviction or
/// injected faults, the last acknowledged version is served.
pub fn engine_model(data: &[u8]) {
    let dir = TempDir::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let open = |st: &Arc<FaultState>| {
        let io = Box::new(FaultIo::new(
            Arc::clone(st),
            sys::build(IoBackend::Psync).expect("psync"),
        ));
        // Half the inputs run with compression at rest (records of repeated bytes compress).
        Engine::open_with_io(cfg(dir.path(), data.len().is_multiple_of(2)), io).expect("open")
    };
    let mut fault = FaultState::new();
    let mut e = open(&fault);
    let mut written: HashMap<Key, Vec<Bytes>> = HashMap::new();
    let mut acked: HashMap<Key, Bytes> = HashMap::new();
    let mut lossy = false;
    for (i, op) in data.chunks(3).enumerate() {
        let [o, a, b] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0)];
        let key = Key::new(1 + (a & 1), [a >> 1; 32]);
        match o % 8 {
            0..=2 => {
                // Up to ~28 KiB: several 4 KiB parts, below max_blob_size.
                let len = usize::from(b) * usize::from(1 + (o / 8) % 3) * 37;
                let v = Bytes::from(vec![i as u8; len]);
                written.entry(key).or_default().push(v.clone());
                match rt.block_on(e.put(key, v.clone())) {
                    Ok(()) => {
                        acked.insert(key, v);
                    }
                    Err(StorageError::Full(_) | StorageError::Poisoned(_)) => {}
                    Err(other) => panic!("unexpected {other}"),
                }
            }
            3 | 4 => {
                if let Some(g) = e.get(&key).expect("get") {
                    let g = g.to_bytes().expect("a blob the engine served decodes");
                    assert!(
                        written.get(&key).is_some_and(|vs| vs.contains(&g)),
                        "served bytes never written"
                    );
                    if !lossy && e.stats().evictions == 0 {
                        assert_eq!(acked.get(&key), Some(&g), "stale version served");
                    }
                } else if !lossy && e.stats().evictions == 0 {
                    assert!(!acked.contains_key(&key), "acknowledged blob lost");
                }
            }
            5 => {
                fault.set_full(b & 1 == 1);
                lossy = true;
            }
            6 => {
                fault.fail_after(u64::from(b % 8) + 1);
                lossy = true;
            }
            _ => {
                // Power loss (b odd) or clean restart.
                lossy |= e.stats().evictions > 0;
                if b & 1 == 1 {
                    fault.freeze();
                    drop(e);
                    fault.crash_image(u64::from(b) + 1).expect("crash image");
                    lossy = true;
                } else {
                    drop(e);
                }
                fault = FaultState::new();
                e = open(&fault);
            }
        }
    }
}
