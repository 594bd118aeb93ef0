//! A ByteStream read miss of a blob larger than the local store's `max_blob_size_bytes`: the
//! local tier cannot keep it, so it streams it from the upstream without storing it (whole and
//! in ranges, plain and `compressed-blobs/zstd`) instead of failing with the local store's
//! INVALID_ARGUMENT.

#![allow(clippy::float_cmp, clippy::cast_possible_wrap)]

mod common;
mod upstream_support;

use common::process::KilnServer;
use std::path::Path;
use tonic::Code;
use upstream_support::*;

/// A local tier whose store keeps blobs of at most 4 MiB, in front of `upstream`.
fn start_small_local(dir: &Path, upstream: &str) -> KilnServer {
    let config = dir.join("small-local.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ncapacity_bytes = 268435456\nsegment_size_bytes = 16777216\n\
             max_blob_size_bytes = 4194304\n[execution]\nenabled = false\n\
             [upstream]\nendpoint = \"{upstream}\"\ntimeout_ms = 2000\n"
        ),
    )
    .unwrap();
    KilnServer::start_with(
        &dir.join("small-local-data"),
        &dir.join("small-local.log"),
        &["--config", config.to_str().unwrap()],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_over_the_local_max_blob_size_streams_through_unstored() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = start_plain(dir.path(), "upstream");
    let big = bytes(12, (6 << 20) + 12_345);
    let d = digest(&big);
    put_stream(&up, &big).await;
    let local = start_small_local(dir.path(), &up.url());

    let whole = read(&local, &d, 0, 0)
        .await
        .unwrap_or_else(|e| local.fail(&format!("read through: {e:?}")));
    assert!(whole == big, "the whole blob, as the upstream has it");
    let part = read(&local, &d, 5 << 20, 100_000).await.unwrap();
    assert!(part == big[5 << 20..(5 << 20) + 100_000], "a range of it");
    let tail = read(&local, &d, big.len() as i64 - 10, 0).await.unwrap();
    assert_eq!(tail, big[big.len() - 10..]);
    // Compressed reads compress the stream on its way through.
    let zstd_whole = read_zstd(&local, &d, 0)
        .await
        .unwrap_or_else(|e| local.fail(&format!("compressed read through: {e:?}")));
    assert!(zstd_whole == big, "the whole blob, compressed on the way");
    let zstd_tail = read_zstd(&local, &d, 6 << 20).await.unwrap();
    assert!(
        zstd_tail == big[6 << 20..],
        "from an uncompressed offset on"
    );
    assert!(
        metric(&local, "kiln_upstream_fetched_bytes_total").await >= (5 * big.len()) as f64,
        "read from the upstream each time (nothing kept)"
    );

    // Not stored: with the upstream gone the read fails UNAVAILABLE, naming it.
    up.kill();
    let err = read(&local, &d, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("upstream"), "{err:?}");
}

/// A compressed read miss of a blob the local tier can keep: compressed as it streams from
/// the upstream, and stored, so a later read needs no upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compressed_read_miss_streams_and_fills_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = start_plain(dir.path(), "upstream");
    let blob = bytes(13, (3 << 20) + 777);
    let d = digest(&blob);
    put_stream(&up, &blob).await;
    let local = start_small_local(dir.path(), &up.url());

    let got = read_zstd(&local, &d, 1000)
        .await
        .unwrap_or_else(|e| local.fail(&format!("compressed read through: {e:?}")));
    assert!(
        got == blob[1000..],
        "the blob from offset 1000, compressed on the way"
    );
    up.kill();
    let again = read_zstd(&local, &d, 0)
        .await
        .unwrap_or_else(|e| local.fail(&format!("compressed read, stored: {e:?}")));
    assert!(again == blob, "served from the local store");
}
