//! The upstream tier's relayed Execution and Operations services and `local-first`, called by
//! a client on another gRPC stack: Python `grpcio` (gRPC's C core, like BuildGrid's tools and
//! the C++ bots) runs tests/python/grpc_clients.py's `execute` scenario against the local tier.
//! Where an action ran is read from the local tier's counters and the upstream's own.

#![allow(clippy::float_cmp)]

mod exec_support;

use exec_support::{RAN_LOCAL, RAN_UPSTREAM, Server, grpcio, local_first_pair};
use std::path::Path;

/// Actions the upstream's scheduler completed.
const UPSTREAM_RAN: &str = "kiln_exec_actions_finished";

fn execute(local: &Server, upstream: &Server, stubs: &Path, platform: &[&str]) -> String {
    let mut args = vec!["--client", local.grpc.as_str()];
    for p in platform {
        args.extend(["--platform", p]);
    }
    args.push("execute");
    match grpcio::run(stubs, &args) {
        Some((true, out)) if out.contains("execute ok:") => out,
        other => panic!(
            "grpc_clients.py {args:?}: {other:?}\nlocal log:\n{}\nupstream log:\n{}",
            local.log_tail(),
            upstream.log_tail()
        ),
    }
}

/// `execute = "upstream"`: grpcio's Execute, WaitExecution and GetOperation go to the
/// upstream, whose worker runs the action; the result is then a local action-cache hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpcio_executes_through_the_relay() {
    let upstream = Server::start();
    let _worker = upstream.worker(1, &[]);
    let local = Server::tier_over(&upstream, "upstream");
    upstream.wait_metric("kiln_exec_bots_connected", 1.0).await;
    let stubs = local.dir.path().join("stubs");
    let before = upstream.metric(UPSTREAM_RAN).await;
    execute(&local, &upstream, &stubs, &[]);
    assert_eq!(upstream.metric(UPSTREAM_RAN).await, before + 1.0);
    assert_eq!(
        local.metric(UPSTREAM_RAN).await,
        0.0,
        "ran on the local tier"
    );
}

/// `execute = "local-first"`: an action the idle local bot matches runs here; one only the
/// upstream's bot offers (`pool=upstream-only`) is forwarded. Both answer grpcio's
/// WaitExecution and GetOperation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpcio_local_first_runs_here_or_forwards() {
    let (upstream, local, _workers) = local_first_pair().await;
    let stubs = local.dir.path().join("stubs");

    execute(&local, &upstream, &stubs, &[]);
    assert_eq!(local.metric(RAN_LOCAL).await, 1.0);
    assert_eq!(local.metric(RAN_UPSTREAM).await, 0.0);

    execute(&local, &upstream, &stubs, &["pool=upstream-only"]);
    assert_eq!(local.metric(RAN_LOCAL).await, 1.0);
    assert_eq!(local.metric(RAN_UPSTREAM).await, 1.0);
    assert_eq!(upstream.metric(UPSTREAM_RAN).await, 1.0);
}
