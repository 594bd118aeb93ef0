//! `[upstream] execute = "local-first"`, with a real local worker and a real upstream kiln
//! with its own worker. Where an action ran is proved by what it could do: each worker may
//! write only into its own server's temp dir, so `touch <dir>/marker` succeeds only on the
//! worker of that server (and the action fails anywhere else).

#![allow(clippy::float_cmp)]

mod exec_support;

use exec_support::{
    DEADLINE, EXEC_CONFIG, RAN_LOCAL, RAN_UPSTREAM, Server, local_first_pair, poll, sh,
};
use kiln::proto::reapi::WaitExecutionRequest;
use std::path::Path;

fn touch(dir: &Path, name: &str) -> String {
    format!("touch {}", dir.join(name).display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_first_runs_on_an_idle_local_bot_and_forwards_otherwise() {
    let (upstream, local, _workers) = local_first_pair().await;
    let (ldir, udir) = (local.dir.path(), upstream.dir.path());
    let c = local.client().await;
    let fail = |e: tonic::Status| -> ! {
        panic!(
            "{e:?}\nlocal log:\n{}\nupstream log:\n{}",
            local.log_tail(),
            upstream.log_tail()
        )
    };

    // The local bot is idle and matches (no requirement): the action runs here.
    let a = c.action(&sh(&touch(ldir, "ran-a"))).await;
    let (_, resp) = c.execute(&a).await.unwrap_or_else(|e| fail(e));
    assert_eq!(resp.result.expect("a result").exit_code, 0, "ran upstream?");
    assert!(ldir.join("ran-a").exists());
    assert_eq!(local.metric(RAN_LOCAL).await, 1.0);
    assert_eq!(local.metric(RAN_UPSTREAM).await, 0.0);

    // Only the upstream's worker offers `pool=upstream-only`: forwarded, and it runs there
    // (queued locally it would fail once `unmatched_grace` passed).
    let mut spec = sh(&touch(udir, "ran-b"));
    spec.platform = vec![("pool".into(), "upstream-only".into())];
    let b = c.action(&spec).await;
    let (ops, resp) = c.execute(&b).await.unwrap_or_else(|e| fail(e));
    assert_eq!(resp.result.expect("a result").exit_code, 0, "ran locally?");
    assert!(udir.join("ran-b").exists());
    assert_eq!(local.metric(RAN_UPSTREAM).await, 1.0);
    // WaitExecution of the forwarded operation, through the local tier.
    let mut waited = c
        .exec()
        .wait_execution(WaitExecutionRequest {
            name: ops[0].name.clone(),
        })
        .await
        .unwrap_or_else(|e| fail(e))
        .into_inner();
    let mut last = None;
    while let Some(op) = tokio::time::timeout(DEADLINE, waited.message())
        .await
        .expect("WaitExecution stalled")
        .unwrap()
    {
        last = Some(op);
    }
    assert!(last.expect("an operation").done);

    // The local bot busy: an action it could run goes upstream instead of waiting.
    let started = ldir.join("c-started");
    let release = ldir.join("c-release");
    let c_spec = sh(&format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
        started.display(),
        release.display()
    ));
    let c_action = c.action(&c_spec).await;
    let cc = c.clone();
    let busy = tokio::spawn(async move { cc.execute(&c_action).await });
    poll("the long action to start on the local bot", || {
        let started = started.clone();
        async move { started.exists().then_some(()) }
    })
    .await;
    let d = c.action(&sh(&touch(udir, "ran-d"))).await;
    let (_, resp) = c.execute(&d).await.unwrap_or_else(|e| fail(e));
    assert_eq!(resp.result.expect("a result").exit_code, 0, "ran locally?");
    assert!(udir.join("ran-d").exists());
    assert_eq!(local.metric(RAN_UPSTREAM).await, 2.0);
    std::fs::write(&release, b"").unwrap();
    let (_, resp) = busy.await.unwrap().unwrap_or_else(|e| fail(e));
    assert_eq!(resp.result.expect("a result").exit_code, 0);
    assert_eq!(local.metric(RAN_LOCAL).await, 2.0);
}

/// `local-first` with the upstream unreachable: an action no idle local bot can start now waits
/// in the local queue (and runs here once the bot is free) instead of failing UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_first_queues_locally_when_the_upstream_is_down() {
    let gone = tempfile::tempdir().unwrap();
    let local = Server::start_with(&format!(
        "{EXEC_CONFIG}[upstream]\nendpoint = \"unix:{}\"\nexecute = \"local-first\"\n\
         timeout_ms = 2000\n",
        gone.path().join("no-upstream.sock").display()
    ));
    let _worker = local.worker(1, &[]);
    local.wait_metric("kiln_exec_bots_connected", 1.0).await;
    let ldir = local.dir.path();
    let c = local.client().await;
    let started = ldir.join("busy-started");
    let release = ldir.join("busy-release");
    let busy = c
        .action(&sh(&format!(
            "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
            started.display(),
            release.display()
        )))
        .await;
    let cc = c.clone();
    let busy = tokio::spawn(async move { cc.execute(&busy).await });
    poll("the long action to start on the local bot", || {
        let started = started.clone();
        async move { started.exists().then_some(()) }
    })
    .await;
    let waiting = c.action(&sh(&touch(ldir, "ran-here"))).await;
    let cc = c.clone();
    let waiting = tokio::spawn(async move { cc.execute(&waiting).await });
    local.wait_metric("kiln_exec_queued_actions", 1.0).await;
    std::fs::write(&release, b"").unwrap();
    for run in [busy, waiting] {
        let (_, resp) = run
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e:?}\nlocal log:\n{}", local.log_tail()));
        assert_eq!(resp.result.expect("a result").exit_code, 0);
    }
    assert!(ldir.join("ran-here").exists());
    assert_eq!(local.metric(RAN_LOCAL).await, 2.0);
    assert_eq!(local.metric(RAN_UPSTREAM).await, 0.0);
}
