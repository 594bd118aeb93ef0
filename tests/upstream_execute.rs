//! `[upstream] execute = "upstream"`: Execute sent to the local tier runs on the upstream's
//! workers (the local tier has none), its inputs pushed there first; the result comes back
//! through the relayed operation stream, is kept in the local action cache, and its outputs
//! read through; WaitExecution is relayed too.

mod exec_support;

use exec_support::{Client, EXEC_CONFIG, Server, sh};
use kiln::digest::Digest;
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use kiln::proto::reapi::{Directory, FileNode, GetActionResultRequest, WaitExecutionRequest};

/// Puts through `c` an action that upper-cases its one input file `in.txt` into `out.txt` (then
/// runs `and_then`), with its input and input root: (input, input root, action).
async fn upper_case(c: &Client, input: &[u8], and_then: &str) -> (Digest, Digest, Digest) {
    let input_digest = c.put(input).await;
    let root = Directory {
        files: vec![FileNode {
            name: "in.txt".into(),
            digest: Some(input_digest.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let root_digest = c.put_msg(&root).await;
    let mut spec = sh(&format!("tr a-z A-Z < in.txt > out.txt{and_then}"));
    spec.output_files = vec!["out.txt".into()];
    spec.input_root = Some(root_digest);
    (input_digest, root_digest, c.action(&spec).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn execute_forwarding_runs_actions_on_the_upstreams_workers() {
    let upstream = Server::start();
    let _worker = upstream.worker(1, &[]);
    let local = Server::tier_over(&upstream, "upstream");
    let c = local.client().await;
    // The input exists only on the local tier until the Execute pushes it upstream.
    let (_, _, action) = upper_case(
        &c,
        b"input only the local tier has\n",
        " && echo ran-upstream",
    )
    .await;
    let (ops, resp) = c.execute(&action).await.unwrap_or_else(|e| {
        panic!(
            "{e:?}\nlocal log:\n{}\nupstream log:\n{}",
            local.log_tail(),
            upstream.log_tail()
        )
    });
    let result = resp.result.expect("a result");
    assert_eq!(result.exit_code, 0, "{result:?}");
    let out = result.output_files[0].digest.clone().unwrap();
    assert_eq!(c.get(&out).await, b"INPUT ONLY THE LOCAL TIER HAS\n");
    let stdout = result.stdout_digest.clone().unwrap();
    assert_eq!(c.get(&stdout).await, b"ran-upstream\n");

    // The result was kept locally: a local action-cache hit now.
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", local.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let cached = ActionCacheClient::new(ch)
        .get_action_result(GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .expect("kept in the local action cache")
        .into_inner();
    assert_eq!(cached.output_files, result.output_files);

    // WaitExecution on the upstream's operation name, through the local tier.
    let name = ops[0].name.clone();
    let mut waited = c
        .exec()
        .wait_execution(WaitExecutionRequest { name })
        .await
        .expect("WaitExecution relayed")
        .into_inner();
    let mut last = None;
    while let Some(op) = waited.message().await.unwrap() {
        last = Some(op);
    }
    assert!(last.expect("an operation").done);
}

/// `execute = "local"` with inputs only the upstream has (the client was told by
/// FindMissingBlobs that they are present): the Execute fetches them before the scheduler
/// checks, and the action runs on this box's own worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_execution_fetches_inputs_only_the_upstream_has() {
    let upstream = Server::start();
    let local = Server::start_with(&format!(
        "{EXEC_CONFIG}[upstream]\nendpoint = \"grpc://{}\"\n",
        upstream.grpc
    ));
    let _worker = local.worker(1, &[]);
    let u = upstream.client().await;
    let (input_digest, root_digest, action) =
        upper_case(&u, b"input only the upstream has\n", "").await;

    let c = local.client().await;
    let missing = c
        .cas()
        .find_missing_blobs(kiln::proto::reapi::FindMissingBlobsRequest {
            blob_digests: vec![
                action.to_proto(),
                input_digest.to_proto(),
                root_digest.to_proto(),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert!(missing.is_empty(), "the upstream has them: {missing:?}");
    let (_, resp) = c
        .execute(&action)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\nlocal log:\n{}", local.log_tail()));
    let result = resp.result.expect("a result");
    assert_eq!(result.exit_code, 0, "{result:?}");
    let out = result.output_files[0].digest.clone().unwrap();
    assert_eq!(c.get(&out).await, b"INPUT ONLY THE UPSTREAM HAS\n");
}

/// The tier reads the Action and Directories of an Execute it forwards (to push the inputs
/// upstream) only within `execution.max_action_bytes` / `max_directory_bytes`, refusing
/// larger ones by their declared size before reading them (a client can store anything under
/// any digest). It used to read them whole into memory and, failing to decode them, forward
/// the Execute anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_execute_refuses_oversized_actions_and_directories_before_reading_them() {
    let upstream = Server::start();
    let local = Server::start_with(&format!(
        "{EXEC_CONFIG}max_action_bytes = 65536\nmax_directory_bytes = 65536\n\
         [upstream]\nendpoint = \"grpc://{}\"\nexecute = \"upstream\"\n",
        upstream.grpc
    ));
    let c = local.client().await;
    let noise: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big = c.put(&noise).await;
    let err = c.execute(&big).await.expect_err("an oversized Action");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("execution.max_action_bytes")
            && err.message().contains(&big.hash_hex()),
        "{err:?}\nlocal log:\n{}",
        local.log_tail()
    );
    // A real Action whose input root is the same 100 KB blob, as a Directory.
    let mut spec = sh("true");
    spec.input_root = Some(big);
    let action = c.action(&spec).await;
    let err = c
        .execute(&action)
        .await
        .expect_err("an oversized Directory");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("execution.max_directory_bytes"),
        "{err:?}\nlocal log:\n{}",
        local.log_tail()
    );
}
