//! The reliability suite's CI entry points that drive scripts: a one-minute soak
//! (`tests/reliability/soak.sh`, 10 minutes by default when run by hand). The kill -9 cycles
//! are the `kill9_cycles` test of `tests/crash_kill.rs`; `tests/reliability/kill9_cycles.sh`
//! runs it with 100 cycles. See RELIABILITY.md.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// Runs the soak for one minute against this build's `kiln` with 256 clients and asserts what
/// the script measured: operations done, no errors, server memory levelling off.
#[test]
fn soak_one_minute() {
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reliability/soak.sh");
    let status = Command::new("bash")
        .arg(&script)
        .env("KILN_BIN", env!("CARGO_BIN_EXE_kiln"))
        .env(
            "SOAK_SECS",
            std::env::var("SOAK_SECS").unwrap_or_else(|_| "60".into()),
        )
        .env("SOAK_SAMPLE_SECS", "2")
        .env("SOAK_OUT", out.path())
        .status()
        .expect("run tests/reliability/soak.sh");
    let summary = std::fs::read_to_string(out.path().join("summary.env")).unwrap_or_default();
    let values: HashMap<&str, u64> = summary
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| Some((k, v.trim().parse().ok()?)))
        .collect();
    let get = |k: &str| {
        *values
            .get(k)
            .unwrap_or_else(|| panic!("soak.sh wrote no {k} (exit {status}); summary: {summary:?}"))
    };
    assert!(get("ops") > 0, "the soak ran no operation: {summary}");
    assert_eq!(get("errors"), 0, "client errors during the soak: {summary}");
    assert_eq!(get("server_panics"), 0, "the server panicked: {summary}");
    assert_eq!(
        get("rss_ok"),
        1,
        "server memory did not level off: {summary}"
    );
    assert!(status.success(), "soak.sh failed ({status}): {summary}");
}
