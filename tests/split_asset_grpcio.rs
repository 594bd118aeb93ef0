//! SplitBlob/SpliceBlob and the Remote Asset API through a real non-Rust client: Python
//! `grpcio` (PyPI, pinned in tests/python/install-grpcio.sh) runs
//! tests/python/split_asset_clients.py against `kiln serve` over TCP. grpcio is installed by
//! the test itself (once, into target/python-grpcio); the test never skips: without Python or
//! pip it fails and says so.

mod common;

use common::process::KilnServer;
use common::wait::holds_within;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn grpcio_splits_splices_fetches_and_pushes() {
    let out = Command::new("bash")
        .arg(repo().join("tests/python/install-grpcio.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/python/install-grpcio.sh (needs bash)");
    let grpcio = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !grpcio.is_empty(),
        "installing grpcio failed ({}); this test needs python3 with pip and PyPI access and \
         is never skipped: run `bash tests/python/install-grpcio.sh`",
        out.status
    );
    let tmp = tempfile::tempdir().unwrap();
    // A small store (as TestServer's): not sized from the free space of a shared disk.
    let config = tmp.path().join("kiln.toml");
    std::fs::write(
        &config,
        "[storage]\ncapacity_bytes = 268435456\nsegment_size_bytes = 16777216\n\
         max_blob_size_bytes = 67108864\n",
    )
    .unwrap();
    let server = KilnServer::start_with(
        &tmp.path().join("data"),
        &tmp.path().join("kiln.log"),
        &["--config", config.to_str().unwrap()],
    );
    let mut child = Command::new("python3")
        .arg(repo().join("tests/python/split_asset_clients.py"))
        .arg("--proto")
        .arg(repo().join("proto"))
        .arg("--out")
        .arg(tmp.path().join("stubs"))
        .arg("--client")
        .arg(format!("127.0.0.1:{}", server.port))
        .args(["split-splice", "asset"])
        .env("PYTHONPATH", &grpcio)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let limit = Duration::from_mins(4);
    if !holds_within(limit, || {
        child.try_wait().expect("wait for python3").is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
        server.fail(&format!(
            "split_asset_clients.py did not finish in {limit:?}"
        ));
    }
    let out = child.wait_with_output().expect("python3 output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("split_asset_clients.py:\n{text}");
    if !out.status.success() {
        server.fail(&format!("split_asset_clients.py failed:\n{text}"));
    }
    assert!(
        text.contains("split-splice: ok") && text.contains("asset: ok"),
        "{text}"
    );
}
