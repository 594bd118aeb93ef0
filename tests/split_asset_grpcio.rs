//! SplitBlob/SpliceBlob and the Remote Asset API through a real non-Rust client: Python
//! `grpcio` (PyPI, pinned in tests/python/install-grpcio.sh) runs
//! tests/python/split_asset_clients.py against `kiln serve` over TCP. grpcio is installed by
//! the test itself (once, into target/python-grpcio); the test never skips: without Python or
//! pip it fails and says so.

mod common;

use common::grpcio;
use common::process::KilnServer;

#[test]
fn grpcio_splits_splices_fetches_and_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    // A small store (as TestServer's): not sized from the free space of a shared disk.
    let config = tmp.path().join("kiln.toml");
    std::fs::write(
        &config,
        "[storage]\ncapacity_bytes = 268435456\nsegment_size_bytes = 16777216\n\
         max_blob_size_bytes = 67108864\n[remote_asset]\nallow_private_addresses = true\n",
    )
    .unwrap();
    let server = KilnServer::start_with(
        &tmp.path().join("data"),
        &tmp.path().join("kiln.log"),
        &["--config", config.to_str().unwrap()],
    );
    let client = format!("127.0.0.1:{}", server.port);
    let args = ["--client", client.as_str(), "split-splice", "asset"];
    let text = match grpcio::run_script("split_asset_clients.py", &tmp.path().join("stubs"), &args)
    {
        None => server.fail(&format!(
            "split_asset_clients.py did not finish in {:?}",
            grpcio::SCRIPT_TIMEOUT
        )),
        Some((false, text)) => server.fail(&format!("split_asset_clients.py failed:\n{text}")),
        Some((true, text)) => text,
    };
    assert!(
        text.contains("split-splice: ok") && text.contains("asset: ok"),
        "{text}"
    );
}
