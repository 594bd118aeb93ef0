//! The public surface stays curated (issue 14): the storage engine's insides and the
//! fault-injecting I/O engine are reachable only with the `testing` feature, which the binary
//! never enables. Checked on the sources, since every test build has the feature on (kiln's
//! dev-dependency on itself). By hand: after `cargo build --release`,
//! `nm -C target/release/deps/libkiln-*.rlib | grep -c FaultIo` is 0 (a test build's is not).

use std::path::Path;

fn source(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The line before `decl` in `text` (attributes sit there).
fn line_before<'a>(text: &'a str, decl: &str) -> &'a str {
    let lines: Vec<&str> = text.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.trim() == decl)
        .unwrap_or_else(|| panic!("{decl:?} not found"));
    lines[i - 1].trim()
}

#[test]
fn engine_insides_are_public_only_with_the_testing_feature() {
    let storage = source("src/storage/mod.rs");
    for m in ["format", "index", "sys", "fuzzing"] {
        assert_eq!(
            line_before(&storage, &format!("pub mod {m};")),
            "#[cfg(feature = \"testing\")]",
            "storage::{m} must be public only with the testing feature"
        );
    }
    let sys = source("src/storage/sys/mod.rs");
    assert_eq!(
        line_before(&sys, "pub mod fault;"),
        "#[cfg(feature = \"testing\")]",
        "the fault-injecting I/O engine must not be compiled into the binary"
    );
}

#[test]
fn the_testing_feature_is_off_by_default_and_on_for_tests() {
    let manifest: toml::Table = source("Cargo.toml").parse().unwrap();
    let features = manifest["features"].as_table().unwrap();
    assert!(features.contains_key("testing"));
    assert!(
        !features.contains_key("default"),
        "a default feature set could switch testing on for the binary"
    );
    let me = &manifest["dev-dependencies"]["kiln"];
    assert_eq!(me["path"].as_str(), Some("."));
    assert!(
        me["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str() == Some("testing"))
    );
    for section in ["dependencies", "build-dependencies"] {
        assert!(
            !manifest[section].as_table().unwrap().contains_key("kiln"),
            "kiln must not depend on itself outside dev-dependencies"
        );
    }
}

#[test]
fn server_only_modules_are_private() {
    let lib = source("src/lib.rs");
    for m in ["bots", "metrics", "server"] {
        assert!(
            lib.lines().any(|l| l == format!("mod {m};")),
            "{m} must be private"
        );
    }
}
