//! Format compatibility: small stores written by format versions 1.4 and 1.5 (the latter with
//! compression at rest, so it holds compressed records and a manifest with logical part
//! lengths) are checked in under `tests/fixtures/store-X.Y/` and must keep opening and serving
//! their blobs, byte for byte, without a rebuild (FORMAT.md's version log says so). Stores
//! written by today's code, with and without compression, must pass the same checks.
//!
//! To write a fixture (only with a new format version, in a new directory, keeping the old
//! ones): `KILN_WRITE_FORMAT_FIXTURE=tests/fixtures/store-X.Y cargo test --test format_compat`
//! (add `KILN_WRITE_FORMAT_COMPRESSED=1` for compressed records; the 1.5 fixture was written
//! so).

#[path = "common/storage.rs"]
mod storage_support;

use bytes::Bytes;
use kiln::cas::{ActionCache, Cas, InlineRequest};
use kiln::digest::{Digest, DigestFunction};
use kiln::proto::reapi::{ActionResult, OutputFile};
use kiln::storage::{Compression, Engine, EngineConfig, Store};
use std::path::Path;
use std::sync::Arc;
use storage_support::{config, data, rt};

/// The checked-in stores, and whether each was written with compression at rest.
const FIXTURES: [(&str, bool); 2] = [
    ("tests/fixtures/store-1.4", false),
    ("tests/fixtures/store-1.5", true),
];

/// Tiny segments keep the fixture small: 4 x 64 KiB, 4 KiB parts, 64 index slots.
fn cfg(dir: &Path, compress: bool) -> EngineConfig {
    let mut c = config(dir, 64 << 10, 4, 4 << 10, 64);
    c.max_blob_size = 32 << 10;
    if compress {
        c.compression = Compression::Zstd {
            level: 3,
            min_size: 256,
            max_ratio: 0.9,
        };
    }
    c
}

/// The CAS blobs: small ones (one record each) and one of 10 000 bytes, three 4 KiB parts
/// and a manifest. With `compress`, the second and the large one are text (they compress;
/// the large one's last part, 1 808 bytes of text, too) and the others noise (stored as they
/// are), so the store holds both kinds of records.
fn blobs(compress: bool) -> Vec<(Digest, Bytes)> {
    [(1, 100), (2, 1000), (3, 4096), (4, 10_000)]
        .into_iter()
        .map(|(seed, len)| {
            let b = if compress && seed % 2 == 0 {
                let line = format!("{seed}: cc -c -O2 -Wall src/module_{seed}.c\n");
                Bytes::from(line.repeat(len / line.len() + 1)[..len].to_string())
            } else {
                data(seed, len)
            };
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

fn write_store(dir: &Path, compress: bool) {
    let engine: Arc<dyn Store> = Arc::new(Engine::open(cfg(dir, compress)).unwrap());
    let cas = Cas::new(Arc::clone(&engine));
    let ac = ActionCache::new(cas.clone(), engine);
    let blobs = blobs(compress);
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
fn check_store(dir: &Path, what: &str, compress: bool) {
    // Opened without compression: records written compressed read the same either way.
    let engine = Arc::new(Engine::open(cfg(dir, false)).unwrap());
    assert_eq!(engine.stats().index_rebuilds, 0, "{what}: index rebuilt");
    let store: Arc<dyn Store> = engine.clone();
    let cas = Cas::new(Arc::clone(&store));
    let ac = ActionCache::new(cas.clone(), store);
    let blobs = blobs(compress);
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
        let got = rt().block_on(ac.get(instance, &action, &inline)).unwrap();
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
    // Compressed records hold more blob content than they take.
    assert_eq!(
        report.logical_bytes > report.bytes,
        compress,
        "{what}: {report:?}"
    );
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
fn checked_in_stores_open_and_serve_their_blobs() {
    for (name, compress) in FIXTURES {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        assert!(
            fixture.join("state").is_file(),
            "{} is missing: the compatibility fixture must be checked in",
            fixture.display()
        );
        // Opening writes (state, touch file), so work on a copy.
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture, dir.path());
        check_store(dir.path(), name, compress);
        // And once more after this binary wrote its own state on top.
        check_store(dir.path(), "the fixture reopened", compress);
    }
}

#[test]
fn stores_written_today_pass_the_same_checks() {
    for compress in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_store(dir.path(), compress);
        check_store(dir.path(), "a fresh store", compress);
    }
    // KILN_WRITE_FORMAT_COMPRESSED=1 writes the fixture with compression at rest.
    if let Some(out) = std::env::var_os("KILN_WRITE_FORMAT_FIXTURE") {
        let fresh = tempfile::tempdir().unwrap();
        write_store(
            fresh.path(),
            std::env::var_os("KILN_WRITE_FORMAT_COMPRESSED").is_some(),
        );
        copy_dir(fresh.path(), Path::new(&out));
    }
}
