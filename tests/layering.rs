//! Keeps the layers honest: the storage engine imports nothing from the layers above it, and
//! `unsafe` appears only in `src/storage/sys/`.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn storage_imports_no_upper_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/storage");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for banned in [
            "crate::api",
            "crate::cas",
            "crate::proto",
            "crate::exec",
            "crate::bots",
            "crate::upstream",
            "tonic",
            "prost",
        ] {
            assert!(!text.contains(banned), "{} mentions {banned}", f.display());
        }
    }
}

/// The upstream tier sits between `cas` and `api`: it may use `cas`, digests, protos and the
/// auth client helpers, never the layers above it or the engine's internals; and `cas` below
/// it never reaches up to it.
#[test]
fn upstream_sits_between_cas_and_api() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("upstream"), &mut files);
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for banned in [
            "crate::api",
            "crate::exec",
            "crate::bots",
            "crate::worker",
            "crate::setup",
            "crate::server",
            "crate::metrics",
            "crate::storage",
        ] {
            // Unit tests build a CAS over the in-memory store.
            if banned == "crate::storage" && f.ends_with("tests.rs") {
                continue;
            }
            assert!(!text.contains(banned), "{} mentions {banned}", f.display());
        }
    }
    let mut below = Vec::new();
    rust_files(&src.join("cas"), &mut below);
    rust_files(&src.join("storage"), &mut below);
    for f in below {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("crate::upstream"),
            "{} reaches up to the upstream tier",
            f.display()
        );
    }
}

#[test]
fn unsafe_only_in_storage_sys() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for f in files {
        if f.components().any(|c| c.as_os_str() == "sys") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("unsafe {") && !text.contains("unsafe fn"),
            "{} uses unsafe",
            f.display()
        );
    }
}

#[test]
fn every_unsafe_block_has_a_safety_comment() {
    let sys = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/storage/sys");
    let mut files = Vec::new();
    rust_files(&sys, &mut files);
    let mut blocks = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.contains("unsafe {") {
                blocks += 1;
                let before = &lines[i.saturating_sub(8)..i];
                assert!(
                    before.iter().any(|b| b.contains("SAFETY:")),
                    "{}:{} unsafe without SAFETY",
                    f.display(),
                    i + 1
                );
            }
        }
    }
    assert!(
        blocks > 0,
        "expected the storage sys module to hold the engine's unsafe code"
    );
}

/// The worker reaches the server through its socket (protos, client auth) and, co-located,
/// through the cas-level local reader; it shares the digest and path vocabulary and the
/// Directory rules and walk, and imports nothing else of the server (no storage internals,
/// no scheduler, no setup, no Bots service).
#[test]
fn worker_imports_only_its_seam() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/worker");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(!files.is_empty());
    let allowed = [
        "crate::worker",
        "crate::proto",
        "crate::digest",
        "crate::paths",
        "crate::auth",
        "crate::cas::local",
        "crate::cas::directory",
        "crate::cas::walk",
    ];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            assert!(
                allowed.iter().any(|a| path.starts_with(a)),
                "{} reaches past the worker's seam: {path}",
                f.display()
            );
        }
        for banned in ["super::super::", "kiln::"] {
            assert!(!text.contains(banned), "{} mentions {banned}", f.display());
        }
    }
}

/// The HTTP cache API sits beside the gRPC services, over the `cas` layer: it uses the CAS and
/// action cache, auth, metrics, digests and protos, the shared accept loop, and from `api` only
/// the resource-name vocabulary (the reserved instance segments). Nothing below it, nor the
/// gRPC services, reaches up to it.
#[test]
fn http_cache_sits_beside_api_over_cas() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("http_cache"), &mut files);
    assert!(!files.is_empty());
    let allowed = [
        "crate::http_cache",
        "crate::cas",
        "crate::auth",
        "crate::metrics::HttpCacheMetrics",
        "crate::digest",
        "crate::proto",
        "crate::server::ConnectionLimit",
        "crate::server::incoming",
        "crate::api::resource_name::RESERVED",
        "crate::storage::StorageError",
    ];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let path: String = text[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            assert!(
                allowed.iter().any(|a| path.starts_with(a)),
                "{} reaches past the HTTP cache API's seam: {path}",
                f.display()
            );
        }
        for banned in ["tonic", "kiln::", "super::super::"] {
            assert!(!text.contains(banned), "{} mentions {banned}", f.display());
        }
    }
    let mut others = Vec::new();
    for dir in [
        "cas", "storage", "api", "upstream", "exec", "worker", "auth",
    ] {
        rust_files(&src.join(dir), &mut others);
    }
    for f in others {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("http_cache"),
            "{} reaches the HTTP cache API",
            f.display()
        );
    }
}

/// The Remote Asset layer sits on `cas` like the upstream tier: it may use `cas`, digests and
/// its own modules, never the engine (its records go through `cas`), the protos (api/asset.rs
/// converts) or the layers above; and nothing below it reaches up to it.
#[test]
fn asset_sits_between_cas_and_api() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("asset"), &mut files);
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for banned in [
            "crate::api",
            "crate::exec",
            "crate::bots",
            "crate::worker",
            "crate::setup",
            "crate::server",
            "crate::metrics",
            "crate::storage",
            "crate::proto",
            "crate::upstream",
            "tonic",
        ] {
            assert!(!text.contains(banned), "{} mentions {banned}", f.display());
        }
    }
    let mut below = Vec::new();
    rust_files(&src.join("cas"), &mut below);
    rust_files(&src.join("storage"), &mut below);
    rust_files(&src.join("upstream"), &mut below);
    for f in below {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("crate::asset"),
            "{} reaches up to the asset layer",
            f.display()
        );
    }
}
