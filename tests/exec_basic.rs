//! Black-box execution tests, part 1: a real `kiln serve` and `kiln worker` run simple
//! commands, non-zero exits, timeouts, large outputs, output directories with symlinks.

mod exec_support;

use exec_support::*;
use kiln::proto::reapi::execution_stage::Value as StageV;
use kiln::proto::reapi::{
    ActionResult, GetActionResultRequest, Tree, action_cache_client::ActionCacheClient,
};
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_command_runs_and_is_cached() {
    let (_server, _w, c) = Server::with_one_worker().await;
    let mut spec =
        sh("echo hello; echo oops >&2; mkdir -p out; printf data > out/f; chmod +x out/f");
    spec.output_files = vec!["out/f".into()];
    let d = c.action(&spec).await;
    let (ops, resp) = c.execute(&d).await.unwrap();
    assert_eq!(stage(&ops[0]), StageV::CacheCheck as i32);
    assert_eq!(stage(ops.last().unwrap()), StageV::Completed as i32);
    assert_eq!(
        resp.status.as_ref().map_or(0, |s| s.code),
        0,
        "{:?}",
        resp.status
    );
    assert!(!resp.cached_result);
    let r = resp.result.unwrap();
    assert_eq!(r.exit_code, 0);
    assert_eq!(c.get(r.stdout_digest.as_ref().unwrap()).await, b"hello\n");
    assert_eq!(c.get(r.stderr_digest.as_ref().unwrap()).await, b"oops\n");
    assert_eq!(r.output_files.len(), 1);
    assert_eq!(r.output_files[0].path, "out/f");
    assert!(r.output_files[0].is_executable);
    assert_eq!(
        c.get(r.output_files[0].digest.as_ref().unwrap()).await,
        b"data"
    );
    let m = r.execution_metadata.unwrap();
    for t in [
        &m.queued_timestamp,
        &m.worker_start_timestamp,
        &m.execution_start_timestamp,
        &m.execution_completed_timestamp,
        &m.worker_completed_timestamp,
    ] {
        assert!(t.is_some(), "{m:?}");
    }
    assert!(!m.worker.is_empty());

    // The result is in the action cache and a second Execute is a cache hit.
    let ac = ActionCacheClient::new(c.ch.clone())
        .get_action_result(GetActionResultRequest {
            action_digest: Some(d.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ac.exit_code, 0);
    let (ops, resp) = c.execute(&d).await.unwrap();
    assert!(resp.cached_result);
    assert_eq!(ops.len(), 2, "CACHE_CHECK then COMPLETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonzero_exit_is_reported_and_not_cached() {
    let (_server, _w, c) = Server::with_one_worker().await;
    let d = c.action(&sh("echo failing; exit 3")).await;
    let (_, resp) = c.execute(&d).await.unwrap();
    let r = resp.result.unwrap();
    assert_eq!(r.exit_code, 3);
    assert_eq!(c.get(r.stdout_digest.as_ref().unwrap()).await, b"failing\n");
    let (_, again) = c.execute(&d).await.unwrap();
    assert!(!again.cached_result, "failed results are not cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_returns_deadline_exceeded_with_output() {
    let (_server, _w, c) = Server::with_one_worker().await;
    let mut spec = sh("echo before; echo err-before >&2; exec sleep 30");
    spec.timeout_secs = 1;
    let d = c.action(&spec).await;
    let started = std::time::Instant::now();
    let (_, resp) = c.execute(&d).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(
        resp.status.as_ref().unwrap().code,
        tonic::Code::DeadlineExceeded as i32
    );
    let r = resp.result.unwrap();
    assert_eq!(c.get(r.stdout_digest.as_ref().unwrap()).await, b"before\n");
    assert_eq!(
        c.get(r.stderr_digest.as_ref().unwrap()).await,
        b"err-before\n"
    );

    // More than the configured maximum (100 s) is rejected up front.
    let mut spec = sh("true");
    spec.timeout_secs = 101;
    let d = c.action(&spec).await;
    let err = c.execute(&d).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_file() {
    let (_server, _w, c) = Server::with_one_worker().await;
    let mut spec = sh("head -c 12000000 /dev/urandom > big; sha256sum big | cut -d' ' -f1");
    spec.output_paths = vec!["big".into()];
    let d = c.action(&spec).await;
    let (_, resp) = c.execute(&d).await.unwrap();
    let r = resp.result.unwrap();
    assert_eq!(r.exit_code, 0);
    let f = &r.output_files[0];
    let digest = f.digest.as_ref().unwrap();
    assert_eq!(digest.size_bytes, 12_000_000);
    let printed = String::from_utf8(c.get(r.stdout_digest.as_ref().unwrap()).await).unwrap();
    assert_eq!(printed.trim(), digest.hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_directory_with_nested_files_and_symlink() {
    let (_server, _w, c) = Server::with_one_worker().await;
    let mut spec = sh(
        "mkdir -p d/sub/deeper; printf a > d/a; printf b > d/sub/b; printf c > d/sub/deeper/c; ln -s a d/link; ln -s d/a top-link",
    );
    spec.output_paths = vec!["d".into(), "top-link".into()];
    let d = c.action(&spec).await;
    let (_, resp) = c.execute(&d).await.unwrap();
    let r: ActionResult = resp.result.unwrap();
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.output_directories.len(), 1);
    let tree = Tree::decode(
        c.get(r.output_directories[0].tree_digest.as_ref().unwrap())
            .await
            .as_slice(),
    )
    .unwrap();
    let root = tree.root.unwrap();
    assert_eq!(
        root.files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(root.symlinks.len(), 1);
    assert_eq!(
        (
            root.symlinks[0].name.as_str(),
            root.symlinks[0].target.as_str()
        ),
        ("link", "a")
    );
    assert_eq!(root.directories.len(), 1);
    assert_eq!(tree.children.len(), 2, "sub and sub/deeper");
    let all: Vec<&str> = tree
        .children
        .iter()
        .flat_map(|d| d.files.iter().map(|f| f.name.as_str()))
        .collect();
    assert!(all.contains(&"b") && all.contains(&"c"), "{all:?}");
    assert_eq!(r.output_symlinks.len(), 1);
    assert_eq!(
        (
            r.output_symlinks[0].path.as_str(),
            r.output_symlinks[0].target.as_str()
        ),
        ("top-link", "d/a")
    );
}
