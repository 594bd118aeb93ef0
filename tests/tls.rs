//! `[tls]`: TLS and mutual TLS listeners of a real `kiln serve`, with throwaway certificates
//! made at run time (rcgen). Clients: tonic, Python `grpcio` (tests/python/grpc_clients.py),
//! `kiln worker` and `kiln bench`. Bazel is in tests/bazel_cache.rs.

mod exec_support;
#[path = "common/pki.rs"]
mod pki;

use exec_support::{Client, KilnServer, Server, grpcio, sh, wait};
use kiln::proto::reapi::capabilities_client::CapabilitiesClient;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    GetCapabilitiesRequest, batch_update_blobs_request,
};
use pki::Ca;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const DEADLINE: Duration = Duration::from_secs(30);

/// Files of one test: a CA, the server's certificate and key, written under `dir`.
struct Pki {
    ca: Ca,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let ca = Ca::new("kiln test CA");
        let ca_file = write(dir, "ca.pem", &ca.pem);
        let (cert, key) = ca.leaf("kiln server", &["localhost", "127.0.0.1"], true);
        Self {
            ca,
            ca_file,
            cert_file: write(dir, "server.pem", &cert),
            key_file: write(dir, "server.key", &key),
            dir: dir.to_path_buf(),
        }
    }

    /// A client certificate and key signed by this CA, as files `<name>.pem`/`<name>.key`.
    fn client(&self, name: &str, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.ca.leaf(cn, sans, false);
        (
            write(&self.dir, &format!("{name}.pem"), &cert),
            write(&self.dir, &format!("{name}.key"), &key),
        )
    }

    /// The `[tls]` section and the listeners, with `client_auth`.
    fn config(&self, client_auth: &str) -> String {
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nclient_auth = {client_auth:?}\n",
            self.cert_file.to_str().unwrap(),
            self.key_file.to_str().unwrap(),
            self.ca_file.to_str().unwrap(),
        )
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Starts `kiln serve` with `server.tls_listen` on 127.0.0.1:0, `extra` config appended
/// (the `[execution]` section of the test config comes last, so `extra` may add keys to it).
fn start(pki: &Pki, client_auth: &str, extra: &str) -> Server {
    let config = format!(
        "[server]\ntls_listen = [\"127.0.0.1:0\"]\n{}{}{extra}",
        pki.config(client_auth),
        exec_support::EXEC_CONFIG,
    );
    let server = Server::start_with(&config);
    assert!(
        server.process().tls.is_some(),
        "no `listening grpcs://` line"
    );
    server
}

fn tls_port(server: &Server) -> u16 {
    let addr = server.process().tls.clone().unwrap();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// A TLS channel to `port` on localhost trusting `ca`, with a client identity if given.
async fn tls_channel(
    port: u16,
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    match tokio::time::timeout(DEADLINE, endpoint.connect()).await {
        Ok(r) => r.map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e))),
        Err(_) => Err("connect timed out".into()),
    }
}

fn blob_request(data: &[u8]) -> BatchUpdateBlobsRequest {
    BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(exec_support::sha(data).to_proto()),
            data: data.to_vec().into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Capabilities, then a BatchUpdate/BatchRead round trip of `data`.
async fn round_trip(ch: Channel, data: &[u8]) -> Result<(), tonic::Status> {
    let caps = CapabilitiesClient::new(ch.clone())
        .get_capabilities(GetCapabilitiesRequest::default())
        .await?
        .into_inner();
    assert!(caps.cache_capabilities.is_some(), "{caps:?}");
    let mut cas = ContentAddressableStorageClient::new(ch);
    let up = cas
        .batch_update_blobs(blob_request(data))
        .await?
        .into_inner();
    assert_eq!(up.responses[0].status.as_ref().map_or(0, |s| s.code), 0);
    let got = cas
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![exec_support::sha(data).to_proto()],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(&got.responses[0].data[..], data, "bytes read back differ");
    Ok(())
}

async fn metrics(server: &Server) -> String {
    let addr = server.process().metrics.clone().unwrap();
    kiln::admin::http_get(&addr, "/metrics").await.unwrap()
}

/// The metrics text once `name` has counted to `at_least` (failing after [`DEADLINE`] with
/// the last text seen).
async fn counted(server: &Server, name: &str, at_least: u64) -> String {
    wait::poll_until_ok(DEADLINE, || async {
        let m = metrics(server).await;
        if metric(&m, name) >= at_least {
            Ok(m)
        } else {
            Err(format!("{name} >= {at_least}:\n{m}"))
        }
    })
    .await
}

/// The value of a metric line `name value` (0 when absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// tonic over TLS: Capabilities and a CAS round trip. A plain HTTP/2 client, a client of
/// another CA and raw garbage on the TLS port fail cleanly, are counted, and the server keeps
/// serving TLS and its plain loopback listener.
#[tokio::test]
async fn tonic_round_trip_over_tls_and_plain_clients_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let server = start(&pki, "none", "");
    let port = tls_port(&server);
    let ch = tls_channel(port, &pki.ca_file, None).await.unwrap();
    round_trip(ch.clone(), b"over tls").await.unwrap();

    // Plain HTTP/2 (h2c) on the TLS port: a clean failure, never a hang.
    let plain = tokio::time::timeout(DEADLINE, async {
        let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        CapabilitiesClient::new(ch)
            .get_capabilities(GetCapabilitiesRequest::default())
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .expect("a plain client on the TLS port hung");
    assert!(plain.is_err(), "plain HTTP/2 was served on the TLS port");

    // A client that trusts another CA refuses the server's certificate.
    let other = Ca::new("other CA");
    let other_ca = write(tmp.path(), "other-ca.pem", &other.pem);
    let wrong = match tls_channel(port, &other_ca, None).await {
        Ok(ch) => round_trip(ch, b"x").await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    assert!(wrong.is_err(), "a client of another CA was served");

    // Raw bytes that are not TLS, then a close.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let _ = s.shutdown().await;
    }

    // Still serving: the old TLS connection, a new one, and the plain loopback listener.
    round_trip(ch.clone(), b"still there").await.unwrap();
    let fresh = tls_channel(port, &pki.ca_file, None).await.unwrap();
    round_trip(fresh, b"fresh connection").await.unwrap();
    round_trip(server.client().await.ch, b"plain loopback")
        .await
        .unwrap();

    let m = counted(&server, "kiln_tls_handshake_failures_protocol", 2).await;
    assert!(metric(&m, "kiln_tls_handshakes") >= 2, "{m}");
    assert!(metric(&m, "kiln_tls_connections_open") >= 1, "{m}");
    drop(ch);
}

/// The tokens file of the mTLS tests: `ci.example` may write, `laptop.example` only read.
fn tls_tokens(dir: &Path) -> PathBuf {
    write(
        dir,
        "tokens.toml",
        "[[tls_client]]\nsubject = \"ci.example\"\nrights = [\"read\", \"write\", \"cache-write\"]\n\n\
         [[tls_client]]\nsubject = \"laptop.example\"\nrights = [\"read\"]\n",
    )
}

/// Mutual TLS, required: the client certificate names the principal (CN for CI, a DNS SAN for
/// the laptop); the read-only one is refused every write with PERMISSION_DENIED and nothing
/// is stored; a client without a certificate, or with one of another CA, is refused.
#[tokio::test]
async fn mtls_certificate_names_the_principal() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let tokens = tls_tokens(tmp.path());
    let ci = pki.client("ci", "ci.example", &[]);
    let laptop = pki.client("laptop", "Laptop 7", &["laptop.example"]);
    let auth = format!("[auth]\ntokens_file = {:?}\n", tokens.to_str().unwrap());
    let server = start(&pki, "required", &auth);
    let port = tls_port(&server);

    let ci_ch = tls_channel(port, &pki.ca_file, Some(&ci)).await.unwrap();
    round_trip(ci_ch.clone(), b"written by ci").await.unwrap();

    let laptop_ch = tls_channel(port, &pki.ca_file, Some(&laptop))
        .await
        .unwrap();
    CapabilitiesClient::new(laptop_ch.clone())
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .expect("the laptop may read");
    let data = b"the laptop may not write this";
    let denied = ContentAddressableStorageClient::new(laptop_ch)
        .batch_update_blobs(blob_request(data))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("tls:laptop.example") && denied.message().contains("`write`"),
        "{denied:?}"
    );
    let missing = ContentAddressableStorageClient::new(ci_ch)
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![exec_support::sha(data).to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        missing.missing_blob_digests.len(),
        1,
        "a denied write stored the blob"
    );

    // No certificate: the handshake is refused (TLS 1.3 reports it on first use).
    let none = match tls_channel(port, &pki.ca_file, None).await {
        Ok(ch) => round_trip(ch, b"x").await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    assert!(none.is_err(), "a client without a certificate was served");
    // A certificate of another CA, even naming ci.example: refused.
    let rogue_ca = Ca::new("rogue CA");
    let (cert, key) = rogue_ca.leaf("ci.example", &[], false);
    let rogue = (
        write(tmp.path(), "rogue.pem", &cert),
        write(tmp.path(), "rogue.key", &key),
    );
    let rogue = match tls_channel(port, &pki.ca_file, Some(&rogue)).await {
        Ok(ch) => round_trip(ch, b"x").await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    assert!(rogue.is_err(), "a certificate of another CA was served");

    let m = counted(&server, "kiln_tls_handshake_failures_client_cert", 2).await;
    assert!(
        m.contains("kiln_auth_requests_total{principal=\"tls:ci.example\"}"),
        "{m}"
    );
    assert!(
        m.contains("kiln_auth_denied_total{principal=\"tls:laptop.example\"} 1"),
        "{m}"
    );
}

/// Runs tests/python/grpc_clients.py with `args` (every scenario asserts what the server
/// answered); fails the test unless the script succeeds. Returns its output.
fn python(server: &KilnServer, stubs: &Path, args: &[&str]) -> String {
    match grpcio::run(stubs, args) {
        None => server.fail(&format!("grpc_clients.py {args:?} did not finish")),
        Some((false, text)) => server.fail(&format!("grpc_clients.py {args:?} failed:\n{text}")),
        Some((true, text)) => text,
    }
}

/// Python grpcio (gRPC C-core) with `grpc.ssl_channel_credentials`: a TLS round trip; then
/// with mutual TLS required, a client certificate accepted (and a read-only one denied a
/// write) and a client without one refused.
#[test]
fn grpcio_over_tls_and_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let stubs = tmp.path().join("stubs");
    let pki = Pki::new(tmp.path());
    let ca = pki.ca_file.to_str().unwrap().to_string();
    {
        let server = start(&pki, "none", "");
        let target = format!("localhost:{}", tls_port(&server));
        let out = python(
            server.process(),
            &stubs,
            &[
                "--client",
                &target,
                "--tls-ca",
                &ca,
                "capabilities",
                "cas",
                "bytestream",
            ],
        );
        assert!(out.contains("all scenarios passed"), "{out}");
    }
    let tokens = tls_tokens(tmp.path());
    let (ci_cert, ci_key) = pki.client("ci", "ci.example", &[]);
    let (lap_cert, lap_key) = pki.client("laptop", "Laptop 7", &["laptop.example"]);
    let auth = format!("[auth]\ntokens_file = {:?}\n", tokens.to_str().unwrap());
    let server = start(&pki, "required", &auth);
    let target = format!("localhost:{}", tls_port(&server));
    let p = |s: &PathBuf| s.to_str().unwrap().to_string();
    let with_cert = |cert: &PathBuf, key: &PathBuf, scenarios: &[&str]| {
        let (cert, key) = (p(cert), p(key));
        let mut args = vec!["--client", &target, "--tls-ca", &ca, "--tls-cert", &cert];
        args.extend(["--tls-key", &key]);
        args.extend(scenarios);
        python(server.process(), &stubs, &args)
    };
    with_cert(&ci_cert, &ci_key, &["capabilities", "cas"]);
    with_cert(&lap_cert, &lap_key, &["capabilities", "denied-write"]);
    let out = python(
        server.process(),
        &stubs,
        &["--client", &target, "--tls-ca", &ca, "refused"],
    );
    assert!(out.contains("refused ok"), "{out}");
}

fn hup(server: &KilnServer) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

/// SIGHUP re-reads the certificate: a file that does not load keeps the old one (logged and
/// counted); a certificate of a new CA is served to new connections while an open connection
/// keeps working, and a client trusting only the old CA no longer connects.
#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let server = start(&pki, "none", "");
    let port = tls_port(&server);
    let old = tls_channel(port, &pki.ca_file, None).await.unwrap();
    round_trip(old.clone(), b"before reload").await.unwrap();

    // A broken certificate file: kept, logged, counted.
    std::fs::write(&pki.cert_file, "not a certificate").unwrap();
    hup(server.process());
    let process = server.process();
    process.wait_until("bad certificate logged", DEADLINE, || {
        process.logged("TLS certificates not reloaded")
    });
    assert_eq!(
        metric(&metrics(&server).await, "kiln_tls_reload_failures"),
        1
    );
    let again = tls_channel(port, &pki.ca_file, None).await.unwrap();
    round_trip(again, b"old certificate kept").await.unwrap();

    // A certificate of a new CA.
    let new_ca = Ca::new("new CA");
    let new_ca_file = write(tmp.path(), "new-ca.pem", &new_ca.pem);
    let (cert, key) = new_ca.leaf("kiln server", &["localhost"], true);
    std::fs::write(&pki.key_file, key).unwrap();
    std::fs::write(&pki.cert_file, cert).unwrap();
    hup(server.process());
    process
        .poll_until("new certificate served", DEADLINE, || async {
            match tls_channel(port, &new_ca_file, None).await {
                Ok(ch) => round_trip(ch, b"new certificate").await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
    let stale = match tls_channel(port, &pki.ca_file, None).await {
        Ok(ch) => round_trip(ch, b"x").await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    assert!(stale.is_err(), "a client of the old CA still connects");
    round_trip(old, b"the open connection survives")
        .await
        .unwrap();
}

/// `kiln worker` over TLS (with a client certificate: mutual TLS required) on a TCP bots
/// listener runs an action; `kiln bench` over TLS runs a short workload.
#[tokio::test]
async fn worker_and_bench_over_mutual_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (cert, key) = pki.client("worker", "worker.example", &[]);
    let server = start(&pki, "required", "bots_tls_listen = [\"127.0.0.1:0\"]\n");
    let bots = server
        .process()
        .bots_tls
        .clone()
        .unwrap_or_else(|| server.process().fail("no `listening bots grpcs://` line"));
    let bots_port = bots.rsplit(':').next().unwrap();
    let (ca, cert, key) = (
        pki.ca_file.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let _worker = server.worker_with(
        &format!("grpcs://localhost:{bots_port}"),
        1,
        &[],
        &["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key],
    );
    let client: Client = server.client().await;
    let action = client.action(&sh("echo over-tls")).await;
    let (_, resp) = client.execute(&action).await.unwrap();
    let r = resp.result.expect("an ActionResult");
    assert_eq!(r.exit_code, 0, "{r:?}");
    let out = match r.stdout_digest {
        Some(d) => client.get(&d).await,
        None => r.stdout_raw.to_vec(),
    };
    assert_eq!(out, b"over-tls\n");

    let target = format!("grpcs://localhost:{}", tls_port(&server));
    let args = [
        "--target",
        &target,
        "--quiet",
        "--workload",
        "ac-update",
        "--ops",
        "5",
        "--tls-ca",
        ca,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    let r = kiln::bench::run_load(&kiln::bench::parse(args).unwrap().load)
        .await
        .expect("bench over TLS");
    assert!(r.ops > 0 && r.errors == 0, "{:?}", r.error_samples);
    // Without the client certificate the same bench cannot connect.
    let without = kiln::bench::run_load(&kiln::bench::parse(&args[..9]).unwrap().load).await;
    match without {
        Err(e) => eprintln!("bench without a client certificate: {e}"),
        Ok(r) => assert!(
            r.errors > 0,
            "bench without a client certificate was served: {} ops",
            r.ops
        ),
    }
}

/// A client that opens a connection and never finishes its handshake does not hold up
/// others: handshakes run on their own tasks (here with a 60 s handshake timeout, twice the
/// connect deadline of the good client); with a short timeout the stalled connection is
/// dropped and counted.
#[tokio::test]
async fn a_stalled_handshake_does_not_block_other_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    for (timeout_ms, check_timeout) in [(60_000, false), (300, true)] {
        let server = Server::start_with(&format!(
            "[server]\ntls_listen = [\"127.0.0.1:0\"]\n{}handshake_timeout_ms = {timeout_ms}\n{}",
            pki.config("none"),
            exec_support::EXEC_CONFIG
        ));
        let port = tls_port(&server);
        // Three connections that send half a ClientHello record header and stall.
        let mut stalled = Vec::new();
        for _ in 0..3 {
            use tokio::io::AsyncWriteExt;
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
            stalled.push(s);
        }
        let ch = tls_channel(port, &pki.ca_file, None)
            .await
            .expect("a good client is served while others stall");
        round_trip(ch, b"not blocked").await.unwrap();
        if check_timeout {
            counted(&server, "kiln_tls_handshake_failures_timeout", 3).await;
        }
        drop(stalled);
    }
}
