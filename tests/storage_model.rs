//! The engine against a `BTreeMap` model: put, get, contains, reopen, sync and eviction, on
//! both I/O engines.

#[path = "common/storage.rs"]
mod storage_support;

use bytes::Bytes;
use kiln::storage::sys::IoBackend;
use kiln::storage::{Engine, EngineConfig, Key, Store};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use storage_support::{config, io};

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Get(u8),
    Contains(u8),
    Reopen,
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..24, 0u8..4).prop_map(|(k, s)| Op::Put(k, s)),
        4 => (0u8..28).prop_map(Op::Get),
        2 => (0u8..28).prop_map(Op::Contains),
        1 => Just(Op::Reopen),
        1 => Just(Op::Sync),
    ]
}

fn cfg(dir: &Path) -> EngineConfig {
    let mut c = config(dir, 128 << 10, 8, 8 << 10, 1024);
    c.max_blob_size = 256 << 10;
    c.probe_limit = 8;
    c
}

/// Keys 0..8 are action-cache entries (rewritten with new bytes); the rest CAS blobs whose
/// bytes depend on the key only.
fn key(k: u8) -> Key {
    let mut id = [0u8; 32];
    id[0] = k;
    id[5] = 0x5a;
    Key::new(if k < 8 { Key::SPACE_AC } else { Key::SPACE_CAS }, id)
}

fn value(k: u8, size: u8, version: u64) -> Bytes {
    let len = [0usize, 900, 20_000, 70_000][usize::from(if k < 8 { size } else { k % 4 })];
    let seed = if k < 8 {
        version * 1000 + u64::from(k)
    } else {
        u64::from(k)
    };
    (0..len)
        .map(|i| (i as u64 ^ seed).wrapping_mul(0x9e37) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn run(backend: IoBackend, ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let open = || Engine::open_with_io(cfg(dir.path()), io(backend)).unwrap();
    let mut e = open();
    let mut model: BTreeMap<Key, (Bytes, u64)> = BTreeMap::new();
    let mut evictions_before = 0u64;
    let evictions = |e: &Engine, base: u64| base + e.stats().evictions;
    for (version, op) in ops.iter().enumerate() {
        match *op {
            Op::Put(k, size) => {
                let v = value(k, size, version as u64);
                rt.block_on(e.put(key(k), v.clone())).unwrap();
                model.insert(key(k), (v, evictions(&e, evictions_before)));
            }
            Op::Get(k) | Op::Contains(k) => {
                let c = e.contains(&key(k)).unwrap();
                let got = e.get(&key(k)).unwrap().map(|b| b.to_bytes().unwrap());
                assert_eq!(c, got.is_some(), "contains and get disagree on {k}");
                match (model.get(&key(k)), got) {
                    (None, None) => {}
                    (None, Some(_)) => panic!("{backend:?}: {k} never written but served"),
                    (Some((want, _)), Some(g)) => {
                        assert_eq!(&g, want, "{backend:?}: wrong bytes for {k}");
                    }
                    (Some((_, at)), None) => {
                        assert!(
                            evictions(&e, evictions_before) > *at,
                            "{backend:?}: {k} lost without eviction"
                        );
                    }
                }
            }
            Op::Reopen => {
                evictions_before += e.stats().evictions;
                drop(e);
                e = open();
            }
            Op::Sync => rt.block_on(e.sync()).unwrap(),
        }
    }
    assert_eq!(e.verify(|_| {}, None).corrupt_records, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(IoBackend::Psync, &ops);
        run(IoBackend::IoUring, &ops);
    }
}
