//! `[upstream] write = "sync"` and local execution: the outputs and result of an action run on
//! this box's worker while the upstream is down are stored locally, the action succeeds, and
//! both are queued in the durable forwarding queue and arrive once the upstream is back (a
//! client's own sync write still fails with UNAVAILABLE then: see upstream_writes.rs).

#![allow(clippy::float_cmp)]

mod exec_support;

use exec_support::{EXEC_CONFIG, KilnServer, Server, poll, sh};
use kiln::proto::reapi::GetActionResultRequest;
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use std::path::Path;

const PLAIN: &str = "[storage]\ncapacity_bytes = 268435456\nsegment_size_bytes = 16777216\n\
                     max_blob_size_bytes = 33554432\n[execution]\nenabled = false\n";

fn start_upstream(dir: &Path) -> KilnServer {
    let cfg = dir.join("upstream.toml");
    std::fs::write(&cfg, PLAIN).unwrap();
    KilnServer::start_with(
        &dir.join("upstream-data"),
        &dir.join("upstream.log"),
        &["--config", cfg.to_str().unwrap()],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_mode_queues_results_of_local_execution_while_the_upstream_is_down() {
    let dir = tempfile::tempdir().unwrap();
    // The upstream's socket path is known before it runs, so it can come back at the same one.
    let sock = dir.path().join("upstream-data").join("kiln.sock");
    let mut up = start_upstream(dir.path());
    let local = Server::start_with(&format!(
        "{EXEC_CONFIG}[upstream]\nendpoint = \"unix:{}\"\nwrite = \"sync\"\ntimeout_ms = 2000\n\
         breaker_reset_ms = 200\n",
        sock.display()
    ));
    let _worker = local.worker(1, &[]);
    let c = local.client().await;
    // Uploaded while the upstream is up (a sync client write fails while it is down).
    let mut spec = sh("echo output of a local run > out.txt");
    spec.output_files = vec!["out.txt".into()];
    let action = c.action(&spec).await;
    up.kill();

    let (_, resp) = c.execute(&action).await.unwrap_or_else(|e| {
        panic!("{e:?}\nlocal log:\n{}", local.log_tail());
    });
    assert_eq!(
        resp.status.as_ref().map_or(0, |s| s.code),
        0,
        "{:?}\nlocal log:\n{}",
        resp.status,
        local.log_tail()
    );
    let result = resp.result.expect("a result");
    assert_eq!(result.exit_code, 0, "{result:?}");
    let out = result.output_files[0].digest.clone().unwrap();
    assert_eq!(c.get(&out).await, b"output of a local run\n");
    assert!(
        local.metric("kiln_upstream_queue_entries").await >= 2.0,
        "the output and the result are queued"
    );

    let up = start_upstream(dir.path());
    let ch = tonic::transport::Channel::from_shared(up.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = GetActionResultRequest {
        action_digest: Some(action.to_proto()),
        ..Default::default()
    };
    // The upstream's action cache answers only when the outputs are there too.
    let arrived = poll("the result and its outputs to reach the upstream", || {
        let (ch, request) = (ch.clone(), request.clone());
        async move {
            ActionCacheClient::new(ch)
                .get_action_result(request)
                .await
                .ok()
                .map(tonic::Response::into_inner)
        }
    })
    .await;
    assert_eq!(arrived.output_files, result.output_files);
    poll("the queue to empty", || async {
        (local.metric("kiln_upstream_queue_entries").await == 0.0).then_some(())
    })
    .await;
}
