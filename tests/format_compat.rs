//! Format compatibility: a small store written by format version 1.4 is checked in under
//! `tests/fixtures/store-1.4/` and must keep opening and serving its blobs, byte for byte,
//! without a rebuild (FORMAT.md's version log says so). A store written by today's code must
//! pass the same checks.
//!
//! To write the fixture again (only with a new format version, in a new directory, keeping the
//! old one): `KILN_WRITE_FORMAT_FIXTURE=tests/fixtures/store-X.Y cargo test --test
//! format_compat`.

#[path = "common/storage.rs"]
mod storage_support;

use bytes::Bytes;
use kiln::cas::{ActionCache, Cas, InlineRequest};
use kiln::digest::{Digest, DigestFunction};
use kiln::proto::reapi::{ActionResult, OutputFile};
use kiln::storage::{Engine, EngineConfig, Store};
use std::path::Path;
use std::sync::Arc;
use storage_support::{config, data, rt};

const FIXTURE: &str = "tests/fixtures/store-1.4";

/// Tiny segments keep the fixture small: 4 x 64 KiB, 4 KiB parts, 64 index slots.
fn cfg(dir: &Path) -> EngineConfig {
    let mut c = config(dir, 64 << 10, 4, 4 << 10, 64);
    c.max_blob_size = 32 << 10;
    c
}

/// The CAS blobs: small ones (one record each) and one of 10 000 bytes, three 4 KiB parts
/// and a manifest.
fn blobs() -> Vec<(Digest, Bytes)> {
    [(1, 100), (2, 1000), (3, 4096), (4, 10_000)]
        .into_iter()
        .map(|(seed, len)| {
            let b = data(seed, len);
            (DigestFunction::Sha256.digest_of(&b), b)
        })
        .collect()
}

/// The action-cache entries: (instance, action digest, result referencing the blobs).
fn actions(blobs: &[(Digest, Bytes)]) -> Vec<(&'static str, Digest, ActionResult)> {
    let result = |out: &[usize], code: i32| ActionResult {
        output_files: out
            .iter()
            .map(|&i| OutputFile {
                path: format!("out/{i}"),
                digest: Some(blobs[i].0.to_proto()),
                ..Default::default()
            })
            .collect(),
        exit_code: code,
        stdout_digest: Some(blobs[0].0.to_proto()),
        ..Default::default()
    };
    vec![
        (
            "",
            DigestFunction::Sha256.digest_of(b"action one"),
            result(&[1, 3], 0),
        ),
        (
            "other",
            DigestFunction::Sha256.digest_of(b"action two"),
            result(&[2], 7),
        ),
    ]
}

fn write_store(dir: &Path) {
    let engine: Arc<dyn Store> = Arc::new(Engine::open(cfg(dir)).unwrap());
    let cas = Cas::new(Arc::clone(&engine));
    let ac = ActionCache::new(cas.clone(), engine);
    let blobs = blobs();
    rt().block_on(async {
        for (d, b) in &blobs {
            cas.put(d, b.clone()).await.unwrap();
        }
        for (instance, action, result) in actions(&blobs) {
            ac.update(instance, &action, &result).await.unwrap();
        }
    });
}

/// Opens the store in `dir` and checks that it serves every blob and entry, byte for byte,
/// without rebuilding its index, and that the scrub finds nothing wrong.
fn check_store(dir: &Path, what: &str) {
    let engine = Arc::new(Engine::open(cfg(dir)).unwrap());
    assert_eq!(engine.stats().index_rebuilds, 0, "{what}: index rebuilt");
    let store: Arc<dyn Store> = engine.clone();
    let cas = Cas::new(Arc::clone(&store));
    let ac = ActionCache::new(cas.clone(), store);
    let blobs = blobs();
    for (d, want) in &blobs {
        assert_eq!(cas.get_bytes(d).unwrap(), want, "{what}: blob {d}");
    }
    let inline = InlineRequest {
        stdout: true,
        stderr: false,
        files: vec!["out/1".into()],
        max_bytes: 1 << 20,
    };
    for (instance, action, want) in actions(&blobs) {
        let got = ac.get(instance, &action, &inline).unwrap();
        assert_eq!(got.exit_code, want.exit_code, "{what}: {instance}/{action}");
        assert_eq!(got.output_files.len(), want.output_files.len());
        for (g, w) in got.output_files.iter().zip(&want.output_files) {
            assert_eq!((&g.path, &g.digest), (&w.path, &w.digest), "{what}");
        }
        assert_eq!(
            got.stdout_raw, blobs[0].1,
            "{what}: stdout inlined from the CAS"
        );
    }
    let report = engine.verify(|_| {}, Some(kiln::cas::scrub::SCRUB));
    assert!(!report.damaged(), "{what}: {report:?}");
    // 3 single-record blobs, the big one's 3 parts and manifest, 2 entries.
    assert_eq!(report.records, 3 + 4 + 2, "{what}: {report:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn checked_in_store_opens_and_serves_its_blobs() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    assert!(
        fixture.join("state").is_file(),
        "{} is missing: the compatibility fixture must be checked in",
        fixture.display()
    );
    // Opening writes (state, touch file), so work on a copy.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture, dir.path());
    check_store(dir.path(), FIXTURE);
    // And once more after this binary wrote its own state on top.
    check_store(dir.path(), "the fixture reopened");
}

#[test]
fn a_store_written_today_passes_the_same_checks() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path());
    check_store(dir.path(), "a fresh store");
    if let Some(out) = std::env::var_os("KILN_WRITE_FORMAT_FIXTURE") {
        let fresh = tempfile::tempdir().unwrap();
        write_store(fresh.path());
        copy_dir(fresh.path(), Path::new(&out));
    }
}
