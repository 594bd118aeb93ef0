//! The upstream tier's write path against a real second `kiln serve`: `async` writes are
//! acknowledged while the upstream is down, survive kill -9 of the local tier in its durable
//! queue, and arrive once both are back; `sync` writes are upstream when acknowledged (what
//! the upstream has is skipped), and fail with UNAVAILABLE while it is down.

#![allow(clippy::float_cmp, clippy::cast_lossless)]

mod common;
mod upstream_support;

use kiln::digest::Digest;
use kiln::proto::reapi::{
    ActionResult, BatchUpdateBlobsRequest, OutputFile, batch_update_blobs_request,
};
use std::time::Duration;
use tonic::Code;
use upstream_support::*;

fn result_for(outputs: &[&[u8]]) -> ActionResult {
    ActionResult {
        output_files: outputs
            .iter()
            .enumerate()
            .map(|(i, o)| OutputFile {
                path: format!("out/{i}"),
                digest: Some(digest(o).to_proto()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

async fn has_result(s: &impl Remote, action: &Digest) -> bool {
    get_result(s, action, false).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_writes_survive_kill_9_and_arrive_when_the_upstream_is_back() {
    let dir = tempfile::tempdir().unwrap();
    // The upstream's socket path is known before it ever runs.
    let sock = dir.path().join("upstream-data").join("kiln.sock");
    let cfg = format!(
        "endpoint = \"unix:{}\"\nwrite = \"async\"\ntimeout_ms = 2000\nbreaker_reset_ms = 200",
        sock.display()
    );
    let mut local = start_local(dir.path(), "local", &cfg);
    let small1 = b"first output".to_vec();
    let small2 = b"second output".to_vec();
    let large = bytes(7, 5 << 20);
    put_batch(&local, &[&small1, &small2]).await;
    put_stream(&local, &large).await;
    let action = digest(b"the action");
    let result = result_for(&[&small1, &small2, &large]);
    update_result(&local, &action, &result).await.unwrap();
    // All four writes were acknowledged with the upstream down, and are queued on disk.
    assert_eq!(metric(&local, "kiln_upstream_queue_entries").await, 4.0);
    assert!(metric(&local, "kiln_upstream_queue_bytes").await >= (5 << 20) as f64);

    local.kill();
    let local = start_local(dir.path(), "local", &cfg);
    assert_eq!(
        metric(&local, "kiln_upstream_queue_entries").await,
        4.0,
        "the queue came back from disk"
    );
    let up = start_plain(dir.path(), "upstream");
    let all = [digest(&small1), digest(&small2), digest(&large)];
    local
        .poll_until(
            "queued writes to reach the upstream",
            Duration::from_mins(1),
            || async { find_missing(&up, &all).await.is_empty() && has_result(&up, &action).await },
        )
        .await;
    assert_eq!(read(&up, &digest(&large), 0, 0).await.unwrap(), large);
    local
        .poll_until("the queue to empty", Duration::from_secs(30), || async {
            metric(&local, "kiln_upstream_queue_entries").await == 0.0
        })
        .await;
    assert!(metric(&local, "kiln_upstream_forwarded_bytes_total").await >= (5 << 20) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_writes_are_upstream_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = start_plain(dir.path(), "upstream");
    let local = start_local(
        dir.path(),
        "local",
        &format!(
            "endpoint = \"{}\"\nwrite = \"sync\"\ntimeout_ms = 2000\nbreaker_failures = 100",
            up.url()
        ),
    );
    let known = b"the upstream has this one".to_vec();
    put_batch(&up, &[&known]).await;
    let fresh = b"new here".to_vec();
    let large = bytes(8, 5 << 20);
    put_batch(&local, &[&known, &fresh]).await;
    put_stream(&local, &large).await;
    // No waiting: acknowledged means the upstream has it.
    assert!(
        find_missing(&up, &[digest(&fresh), digest(&large)])
            .await
            .is_empty()
    );
    assert_eq!(
        metric(
            &local,
            "kiln_upstream_forwards_total{kind=\"cas\",result=\"skipped\"}"
        )
        .await,
        1.0,
        "the blob the upstream had was not sent again"
    );
    let action = digest(b"sync action");
    update_result(&local, &action, &result_for(&[&fresh]))
        .await
        .unwrap();
    assert!(has_result(&up, &action).await);

    // The upstream down: a sync write is stored locally but fails with UNAVAILABLE.
    up.kill();
    let late = b"written while the upstream is down".to_vec();
    let resp = cas(&local)
        .await
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(digest(&late).to_proto()),
                data: late.clone().into(),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = resp.responses[0].status.as_ref().unwrap();
    assert_eq!(status.code, Code::Unavailable as i32, "{status:?}");
    assert!(
        find_missing(&local, &[digest(&late)]).await.is_empty(),
        "kept locally"
    );
    let err = update_result(&local, &digest(b"late action"), &result_for(&[&late]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}
