//! The upstream tier's read path against a real second `kiln serve` as the upstream: a cold
//! local tier reads everything through (FindMissingBlobs, BatchReadBlobs, ByteStream ranges,
//! GetTree, GetActionResult with inlining), concurrent misses of one blob make one upstream
//! fetch, and with the upstream killed the local tier still serves what it holds while misses
//! fail with UNAVAILABLE naming the upstream, the breaker opens, and closes again once the
//! upstream is back.

#![allow(clippy::float_cmp, clippy::cast_lossless)]

mod common;
mod upstream_support;

use kiln::proto::reapi::{
    ActionResult, Directory, DirectoryNode, FileNode, GetTreeRequest, OutputDirectory, OutputFile,
    Tree,
};
use prost::Message;
use std::time::{Duration, Instant};
use tonic::Code;
use upstream_support::*;

const UPSTREAM_HIT: &str = "kiln_upstream_reads_total{kind=\"cas\",result=\"hit\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_local_tier_reads_through_and_survives_the_upstream_dying() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = start_plain(dir.path(), "upstream");
    let sock = up.unix_socket.clone().expect("upstream unix socket");
    let local = start_local(
        dir.path(),
        "local",
        &format!(
            "endpoint = \"unix:{}\"\ntimeout_ms = 3000\nconnect_timeout_ms = 1000\n\
             breaker_failures = 3\nbreaker_reset_ms = 500",
            sock.display()
        ),
    );

    // Everything below exists only upstream.
    let a = b"file a".to_vec();
    let b = b"stdout of the action".to_vec();
    let large = bytes(1, 5 << 20);
    let child = Directory {
        files: vec![FileNode {
            name: "a".into(),
            digest: Some(digest(&a).to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let child_bytes = child.encode_to_vec();
    let root = Directory {
        directories: vec![DirectoryNode {
            name: "sub".into(),
            digest: Some(digest(&child_bytes).to_proto()),
        }],
        ..Default::default()
    };
    let root_bytes = root.encode_to_vec();
    let tree_bytes = Tree {
        root: Some(root.clone()),
        children: vec![child.clone()],
    }
    .encode_to_vec();
    put_batch(&up, &[&a, &b, &child_bytes, &root_bytes, &tree_bytes]).await;
    put_stream(&up, &large).await;
    let action = digest(b"an action");
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "out/a".into(),
            digest: Some(digest(&a).to_proto()),
            ..Default::default()
        }],
        output_directories: vec![OutputDirectory {
            path: "out/d".into(),
            tree_digest: Some(digest(&tree_bytes).to_proto()),
            ..Default::default()
        }],
        stdout_digest: Some(digest(&b).to_proto()),
        ..Default::default()
    };
    update_result(&up, &action, &result).await.unwrap();

    // FindMissingBlobs: only what neither tier has.
    let absent = digest(b"nowhere");
    assert_eq!(
        find_missing(&local, &[digest(&a), digest(&large), absent]).await,
        vec![absent]
    );

    // BatchReadBlobs: fetched, verified, served; a blob neither has is NOT_FOUND.
    let got = batch_read(&local, &[digest(&a), digest(&b), absent]).await;
    assert_eq!(got[0].data.as_ref(), &a[..]);
    assert_eq!(got[1].data.as_ref(), &b[..]);
    assert_eq!(got[2].status.as_ref().unwrap().code, Code::NotFound as i32);

    // ByteStream: a range of a large blob, streamed through.
    let got = read(&local, &digest(&large), 1000, 3 << 20).await.unwrap();
    assert_eq!(got, &large[1000..1000 + (3 << 20)]);

    // GetTree: both directories, the child fetched from the upstream.
    let mut tree = cas(&local)
        .await
        .get_tree(GetTreeRequest {
            root_digest: Some(digest(&root_bytes).to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut dirs = Vec::new();
    while let Some(page) = tree.message().await.unwrap() {
        dirs.extend(page.directories);
    }
    assert_eq!(dirs, vec![root.clone(), child.clone()]);

    // GetActionResult: a hit kept locally, stdout inlined.
    let got = get_result(&local, &action, true).await.unwrap();
    assert_eq!(got.stdout_raw.as_ref(), &b[..]);
    assert_eq!(got.output_files[0].digest, Some(digest(&a).to_proto()));

    // Single flight: eight concurrent reads of one upstream-only blob, one upstream fetch.
    let big2 = bytes(2, 6 << 20);
    put_stream(&up, &big2).await;
    let before = metric(&local, UPSTREAM_HIT).await;
    let d2 = digest(&big2);
    // Eight connections, then eight reads at once.
    let mut readers = Vec::new();
    for _ in 0..8 {
        let ch = channel(&local).await;
        readers.push(tokio::spawn(async move { read(&ch, &d2, 0, 0).await }));
    }
    for r in readers {
        assert!(
            r.await.unwrap().unwrap() == big2,
            "a concurrent read got other bytes"
        );
    }
    assert_eq!(metric(&local, UPSTREAM_HIT).await - before, 1.0);
    assert!(metric(&local, "kiln_upstream_fetched_bytes_total").await >= (11 << 20) as f64);

    // The upstream dies: local hits are served at once, misses fail with UNAVAILABLE naming
    // it, and the breaker opens.
    up.kill();
    let start = Instant::now();
    assert_eq!(read(&local, &digest(&large), 0, 0).await.unwrap(), large);
    let got = get_result(&local, &action, false)
        .await
        .expect("a complete local hit needs no upstream");
    assert_eq!(got.exit_code, 0);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "local hits waited on the upstream"
    );
    let gone = digest(b"only a miss");
    let err = read(&local, &gone, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(&sock.display().to_string()),
        "{err:?}"
    );
    // FindMissingBlobs never fails for the upstream's sake: it answers from the local tier.
    assert_eq!(find_missing(&local, &[digest(&a), gone]).await, vec![gone]);
    for _ in 0..3 {
        let _ = read(&local, &gone, 0, 0).await;
    }
    let err = read(&local, &gone, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("circuit breaker"), "{err:?}");
    assert_eq!(metric(&local, "kiln_upstream_breaker_state").await, 1.0);

    // The upstream comes back (same socket): a probe closes the breaker and misses read
    // through again.
    let up = start_plain(dir.path(), "upstream");
    put_batch(&up, &[b"only a miss"]).await;
    local
        .poll_until("the breaker to close", Duration::from_secs(30), || async {
            read(&local, &gone, 0, 0).await.is_ok()
        })
        .await;
    assert_eq!(metric(&local, "kiln_upstream_breaker_state").await, 0.0);
    drop(up);
}

/// An upstream that accepts connections and never answers: misses fail with UNAVAILABLE
/// naming it after the configured timeout, hits are served as if it were not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_times_out_and_hits_do_not_wait() {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hole.local_addr().unwrap();
    // Accepts and keeps every connection open without a byte in reply.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hole.incoming() {
            held.push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let local = start_local(
        dir.path(),
        "local",
        &format!("endpoint = \"grpc://{addr}\"\ntimeout_ms = 500\nconnect_timeout_ms = 500"),
    );
    let here = b"stored locally".to_vec();
    put_batch(&local, &[&here]).await;
    assert_eq!(read(&local, &digest(&here), 0, 0).await.unwrap(), here);
    let start = Instant::now();
    let err = read(&local, &digest(b"a miss"), 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&addr.to_string()), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "a miss waited {:?} on a silent upstream with timeout_ms = 500",
        start.elapsed()
    );
    let got = batch_read(&local, &[digest(&here), digest(b"a miss")]).await;
    assert_eq!(got[0].data.as_ref(), &here[..]);
    assert_eq!(
        got[1].status.as_ref().unwrap().code,
        Code::Unavailable as i32
    );
}

/// The status page of a local tier shows the upstream's figures (and a box without
/// `[upstream]` does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let up = start_plain(dir.path(), "upstream");
    let local = start_local(dir.path(), "local", &format!("endpoint = \"{}\"", up.url()));
    let blob = b"fetched once".to_vec();
    put_batch(&up, &[&blob]).await;
    assert_eq!(read(&local, &digest(&blob), 0, 0).await.unwrap(), blob);
    let status = kiln::admin::http_get(local.metrics.as_ref().unwrap(), "/status")
        .await
        .unwrap();
    assert!(status.contains("upstream: blobs fetched"), "{status}");
    assert!(status.contains("upstream_breaker_state"), "{status}");
    // The queue and the breaker too (the issue asks for them on the page).
    for line in ["upstream: writes queued", "upstream: breaker (0 closed"] {
        assert!(status.contains(line), "{line} missing: {status}");
    }
    let plain = kiln::admin::http_get(up.metrics.as_ref().unwrap(), "/status")
        .await
        .unwrap();
    assert!(!plain.contains("upstream"), "{plain}");
}

/// `kiln bench --seed-target`: the blobs are seeded into the upstream only, and read in order
/// through the local tier, so each read is a miss the tier serves from the upstream (the
/// bench's miss-path figure in tuning/RESULTS.md). With 4 clients reading 10 misses each at
/// once and room for only 16 fetches, the misses past the bound wait for room instead of
/// failing UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_seeding_the_upstream_reads_every_blob_through() {
    let dir = tempfile::tempdir().unwrap();
    let up = start_plain(dir.path(), "upstream");
    let local = start_local(
        dir.path(),
        "local",
        &format!("endpoint = \"{}\"\nmax_fetches = 16", up.url()),
    );
    for (workload, extra) in [
        ("read-small", &["--batch", "10"][..]),
        ("read-large", &["--size", "1MiB"][..]),
    ] {
        let before = metric(&local, UPSTREAM_HIT).await;
        let mut argv = vec![
            "--target".to_string(),
            format!("grpc://127.0.0.1:{}", local.port),
            "--seed-target".into(),
            up.url(),
            "--workload".into(),
            workload.into(),
            "--blobs".into(),
            "40".into(),
            "--concurrency".into(),
            "4".into(),
            "--quiet".into(),
        ];
        argv.extend(extra.iter().map(ToString::to_string));
        // Each of the 40 blobs read once: 4 batches of 10, or 40 single reads.
        let ops = if workload == "read-small" { 4 } else { 40 };
        argv.extend(["--ops".into(), ops.to_string()]);
        let args = kiln::bench::parse(argv).unwrap();
        let report = kiln::bench::run_load(&args.load)
            .await
            .unwrap_or_else(|e| local.fail(&format!("{workload}: {e}")));
        assert_eq!(report.errors, 0, "{workload}: {}", report.text());
        // A fetch is counted once its blob is stored, which may trail the last byte the
        // client received.
        let served = common::wait::poll_until_ok(Duration::from_secs(10), || async {
            let n = metric(&local, UPSTREAM_HIT).await - before;
            if n < 40.0 {
                Err(format!("{n} fetches counted"))
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(
            served, 40.0,
            "{workload}: every blob read was a miss served by the upstream"
        );
    }
}
