//! Smoke runs of every `kiln bench` workload and of `kiln bench baseline` against an
//! in-process server, so the tool keeps working. No figure is asserted: only that each run
//! completes without errors (or, for execute-noop against a cache-only server, that it says
//! cleanly that the target does not run actions). Also checks the sample configs in tuning/.

use kiln::bench::{BenchError, WorkloadKind, parse, run_load};
use kiln::config::Config;
use kiln::setup::Prepared;
use std::path::Path;

/// An in-process kiln on 127.0.0.1:0 with a Unix socket; stops when the sender drops.
async fn start() -> (
    String,
    String,
    tempfile::TempDir,
    tokio::sync::oneshot::Sender<()>,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.listen = vec!["127.0.0.1:0".into()];
    config.server.metrics_listen = String::new();
    // A small ring: the default (80% of free disk) costs seconds to set up per server.
    config.storage.capacity_bytes = 256 << 20;
    config.storage.segment_size_bytes = 16 << 20;
    config.storage.max_blob_size_bytes = 64 << 20;
    config.server.data_dir = dir.path().to_path_buf();
    let prepared = Prepared::new(&config).await.expect("server setup");
    let tcp = format!("grpc://{}", prepared.tcp_addrs()[0]);
    let unix = format!("unix:{}", dir.path().join("kiln.sock").display());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(prepared.run(async move {
        let _ = stopped.await;
    }));
    (tcp, unix, dir, stop)
}

async fn smoke(target: &str, extra: &[&str]) -> Result<kiln::bench::Report, BenchError> {
    let mut argv = vec!["--target", target, "--quiet", "--concurrency", "2"];
    argv.extend_from_slice(extra);
    let args = parse(argv).expect("arguments parse");
    run_load(&args.load).await
}

fn assert_clean(r: &kiln::bench::Report) {
    assert!(r.ops > 0, "{} ran no operation", r.workload);
    assert_eq!(r.errors, 0, "{}: {:?}", r.workload, r.error_samples);
    // The bench's own CPU time is measured (it verifies every byte, so it is never zero).
    assert!(
        r.client_cpu_s > 0.0 && r.client_cores > 0.0,
        "{}: client CPU {} s",
        r.workload,
        r.client_cpu_s
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_cleanly() {
    let (tcp, unix, _dir, _stop) = start().await;
    let runs: &[&[&str]] = &[
        &[
            "--workload",
            "find-missing",
            "--ops",
            "4",
            "--batch",
            "100",
            "--blobs",
            "100",
        ],
        &["--workload", "upload-small", "--ops", "4", "--batch", "10"],
        &[
            "--workload",
            "upload-small",
            "--ops",
            "8",
            "--small-api",
            "bytestream",
        ],
        &[
            "--workload",
            "read-small",
            "--ops",
            "4",
            "--batch",
            "10",
            "--blobs",
            "40",
        ],
        &[
            "--workload",
            "read-small",
            "--ops",
            "8",
            "--small-api",
            "bytestream",
            "--blobs",
            "8",
        ],
        &["--workload", "upload-large", "--ops", "2", "--size", "1MiB"],
        &["--workload", "read-large", "--ops", "2", "--size", "1MiB"],
        &["--workload", "ac-get", "--ops", "20", "--blobs", "10"],
        &["--workload", "ac-update", "--ops", "10"],
        &[
            "--workload",
            "bazel-like",
            "--ops",
            "20",
            "--blobs",
            "10",
            "--hit-ratio",
            "0.5",
        ],
        &[
            "--workload",
            "ac-get",
            "--duration",
            "300ms",
            "--blobs",
            "5",
        ],
    ];
    for extra in runs {
        let r = smoke(&tcp, extra)
            .await
            .unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert_clean(&r);
        // The JSON form scripts read carries the figures.
        let json = serde_json::to_value(&r).unwrap();
        for key in ["ops_per_s", "mb_per_s", "latency", "errors"] {
            assert!(json.get(key).is_some(), "JSON lacks {key}");
        }
    }
    let r = smoke(
        &unix,
        &["--workload", "read-small", "--ops", "4", "--blobs", "8"],
    )
    .await
    .expect("unix socket target");
    assert_clean(&r);
}

/// `--seeded` reads what an earlier run with the same seed stored, and writes nothing: on a
/// server that holds the seed every read is right, on a fresh one every read is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_runs_read_an_earlier_seed_and_write_nothing() {
    let (seeded, _, _dir, _stop) = start().await;
    let (fresh, _, _dir2, _stop2) = start().await;
    let runs: &[&[&str]] = &[
        &["--workload", "read-small", "--blobs", "20", "--batch", "4"],
        &["--workload", "read-large", "--blobs", "2", "--size", "1MiB"],
        &["--workload", "ac-get", "--blobs", "20", "--hit-ratio", "1"],
    ];
    for extra in runs {
        let mut args = extra.to_vec();
        args.extend(["--seed", "77", "--ops", "10"]);
        let r = smoke(&seeded, &args).await.unwrap();
        assert_clean(&r);
        args.push("--seeded");
        let r = smoke(&seeded, &args)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_clean(&r);
        let r = smoke(&fresh, &args).await.unwrap();
        assert_eq!(r.errors, r.ops, "{args:?} on a server never seeded: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_noop_reports_unsupported_or_succeeds() {
    use kiln::proto::reapi::GetCapabilitiesRequest;
    use kiln::proto::reapi::capabilities_client::CapabilitiesClient;
    let (tcp, _unix, dir, _stop) = start().await;
    // A server that runs actions needs a bot: run `kiln worker` in-process on its bots socket.
    tokio::spawn(kiln::worker::run(kiln::worker::WorkerConfig {
        server: format!("unix:{}", dir.path().join("bots.sock").display()),
        work_dir: dir.path().join("worker"),
        concurrency: 1,
        properties: vec![],
        limits: kiln::worker::Limits::default(),
        cache_max_bytes: kiln::worker::DEFAULT_CACHE_MAX_BYTES,
        server_data_dir: None,
    }));
    let mut caps = CapabilitiesClient::connect(tcp.replace("grpc://", "http://"))
        .await
        .unwrap();
    let exec_enabled = caps
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .execution_capabilities
        .is_some_and(|e| e.exec_enabled);
    let r = smoke(&tcp, &["--workload", "execute-noop", "--ops", "3"]).await;
    if exec_enabled {
        let r = r.expect("execute-noop against a server that runs actions");
        assert_clean(&r);
        // Each round trip is broken into phases from the results' metadata.
        let phases = &r.extra.as_ref().expect("execute-noop extra")["phases"];
        for phase in [
            "queued",
            "input_fetch",
            "execution",
            "output_upload",
            "outside_worker",
        ] {
            let p50 = phases[phase]["p50_ms"].as_f64().unwrap_or(0.0);
            assert!(p50 > 0.0, "phase {phase} not measured: {phases}");
        }
    } else {
        match r {
            Err(BenchError::Unsupported(msg)) => {
                assert!(msg.contains("does not run actions"), "{msg}");
            }
            other => panic!("expected a clean 'unsupported', got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let args = parse([
        "baseline",
        "--dir",
        &d,
        "--size",
        "2MiB",
        "--duration",
        "200ms",
        "--concurrency",
        "4",
    ])
    .unwrap();
    let Some(kiln::bench::BenchCommand::Baseline(b)) = args.command else {
        panic!("baseline subcommand");
    };
    let r = kiln::bench::baseline::run(&b).await.expect("baseline");
    assert!(r.sha256_mb_per_s > 0.0 && r.blake3_mb_per_s > 0.0 && r.stream_read_mb_per_s > 0.0);
    // Streaming is measured several ways (message sizes, connections) in both directions,
    // and the limit is the best of them.
    assert_eq!(r.streams.len(), 6, "{:?}", r.streams);
    assert!(
        r.streams.iter().all(|f| f.mb_per_s > 0.0),
        "{:?}",
        r.streams
    );
    let best_write = r
        .streams
        .iter()
        .filter(|f| f.direction == "write")
        .map(|f| f.mb_per_s)
        .fold(0.0, f64::max);
    assert!((r.stream_write_mb_per_s - best_write).abs() < 1e-9);
    assert!(r.unary_tcp.calls_per_s > 0.0 && r.unary_unix.calls_per_s > 0.0);
    assert_eq!(r.unary_tcp.errors + r.unary_unix.errors, 0);
    assert!(r.text().contains("sha256"));
}

#[test]
fn bad_arguments_are_refused() {
    assert!(parse(["--workload", "nonsense"]).is_err());
    assert!(parse(["--size", "12 parsecs"]).is_err());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let no_target = parse(["--workload", "ac-get"]).unwrap();
    assert!(matches!(
        rt.block_on(run_load(&no_target.load)),
        Err(BenchError::Usage(_))
    ));
    let bad = parse(["--target", "ftp://x:1", "--workload", "ac-get"]).unwrap();
    assert!(rt.block_on(run_load(&bad.load)).is_err());
    assert_eq!(WorkloadKind::BazelLike.name(), "bazel-like");
}

#[test]
fn sample_configs_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
    for name in ["laptop.toml", "buildbox.toml", "kiln.toml"] {
        Config::load(&root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
