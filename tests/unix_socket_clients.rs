//! Real gRPC C-core clients on kiln's Unix sockets: Python `grpcio` (PyPI, pinned in
//! tests/python/install-grpcio.sh) runs tests/python/grpc_clients.py against `kiln serve`.
//!
//! grpcio sends the socket path (percent-encoded) as `:authority`, which h2 refuses; kiln's
//! Unix listeners must serve it anyway (src/server/authority.rs) while TCP keeps h2's rule.
//! grpcio is installed by the test itself (once, into target/python-grpcio); the test never
//! skips: if Python or pip is missing it fails and says so.

mod common;

use common::process::KilnServer;
use std::path::Path;

/// Runs the script with `args`; returns (success, stdout + stderr).
fn run_script(server: &KilnServer, stubs: &Path, args: &[&str]) -> (bool, String) {
    common::grpcio::run(stubs, args).unwrap_or_else(|| {
        server.fail(&format!(
            "grpc_clients.py {args:?} did not finish in {:?}",
            common::grpcio::SCRIPT_TIMEOUT
        ))
    })
}

fn must_pass(server: &KilnServer, stubs: &Path, args: &[&str]) -> String {
    let (ok, text) = run_script(server, stubs, args);
    if !ok {
        server.fail(&format!("grpc_clients.py {args:?} failed:\n{text}"));
    }
    text
}

fn start(tmp: &Path) -> (KilnServer, String, String) {
    let server = KilnServer::start(&tmp.join("data"), &tmp.join("kiln.log"));
    let client = server
        .unix_socket
        .clone()
        .unwrap_or_else(|| server.fail("no `listening unix:` line"));
    let bots = server
        .bots_socket
        .clone()
        .unwrap_or_else(|| server.fail("no `listening bots unix:` line"));
    let (c, b) = (
        format!("unix:{}", client.display()),
        format!("unix:{}", bots.display()),
    );
    (server, c, b)
}

/// grpcio's own `:authority` (the percent-encoded path) on both sockets: Capabilities, a
/// BatchUpdate/BatchRead round trip, ByteStream Write/Read, and a bot session on bots.sock
/// taking the lease of an Execute sent on kiln.sock and completing it.
#[test]
fn grpcio_default_authority_on_unix_sockets() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, client, bots) = start(tmp.path());
    let stubs = tmp.path().join("stubs");
    let out = must_pass(
        &server,
        &stubs,
        &[
            "--client",
            &client,
            "--bots",
            &bots,
            "capabilities",
            "cas",
            "bytestream",
            "bots",
        ],
    );
    assert!(
        out.contains("bots ok:") && out.contains("all scenarios passed"),
        "{out}"
    );
    // The server counted the rewrites it made.
    let metrics = server.metrics.clone().expect("metrics address");
    let text = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(kiln::admin::http_get(&metrics, "/metrics"))
        .unwrap();
    let value = |name: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    assert!(
        value("kiln_unix_authority_rewriting_connections") >= 2,
        "{text}"
    );
    assert!(
        value("kiln_unix_authority_rewritten_requests") >= 4,
        "{text}"
    );
}

/// Other `:authority` values clients send on Unix sockets: the raw path, `localhost`, a
/// host:port, and bytes no URI allows (set with grpcio's `grpc.default_authority`).
#[test]
fn other_authorities_on_unix_sockets() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, client, bots) = start(tmp.path());
    let stubs = tmp.path().join("stubs");
    let raw = client.trim_start_matches("unix:").to_string();
    for authority in [raw.as_str(), "localhost", "kiln.example:8980", "a b%zz/\\"] {
        must_pass(
            &server,
            &stubs,
            &[
                "--client",
                &client,
                "--authority",
                authority,
                "capabilities",
                "cas",
            ],
        );
        must_pass(
            &server,
            &stubs,
            &["--client", &bots, "--authority", authority, "capabilities"],
        );
    }
}

/// Over TCP the same calls work, and h2's rule is unchanged: a malformed `:authority` is
/// refused with RST_STREAM(PROTOCOL_ERROR).
#[test]
fn tcp_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, client, _) = start(tmp.path());
    let stubs = tmp.path().join("stubs");
    let tcp = format!("127.0.0.1:{}", server.port);
    must_pass(
        &server,
        &stubs,
        &[
            "--client",
            &tcp,
            "capabilities",
            "cas",
            "bytestream",
            "blake3",
        ],
    );
    let raw = client.trim_start_matches("unix:").to_string();
    for bad in [raw.as_str(), "tmp%2Fkiln.sock"] {
        let out = must_pass(
            &server,
            &stubs,
            &["--client", &tcp, "--authority", bad, "rejected"],
        );
        assert!(out.contains("rejected ok:"), "{out}");
    }
}
