//! `[upstream] execute = "upstream"`: google.longrunning.Operations is relayed to the upstream
//! too, so a client can GetOperation / WaitOperation / ListOperations the operations its
//! relayed Executes started there (they are not this box's).

mod exec_support;

use exec_support::{DEADLINE, Server, poll, sh};
use kiln::proto::google::longrunning::{
    GetOperationRequest, ListOperationsRequest, WaitOperationRequest,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_calls_are_relayed_to_the_upstream() {
    let upstream = Server::start();
    let _worker = upstream.worker(1, &[]);
    let local = Server::tier_over(&upstream, "upstream");
    let c = local.client().await;
    let started = upstream.dir.path().join("started");
    let release = upstream.dir.path().join("release");
    let action = c
        .action(&sh(&format!(
            "touch {}; while [ ! -e {} ]; do sleep 0.05; done; echo released",
            started.display(),
            release.display()
        )))
        .await;
    let mut stream = c.start_execute(&action).await;
    let first = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("Execute stalled")
        .unwrap()
        .expect("a first operation");
    let name = first.name.clone();
    poll("the action to start upstream", || {
        let started = started.clone();
        async move { started.exists().then_some(()) }
    })
    .await;

    let running = c
        .ops()
        .get_operation(GetOperationRequest { name: name.clone() })
        .await
        .unwrap_or_else(|e| panic!("{e:?}\nlocal log:\n{}", local.log_tail()))
        .into_inner();
    assert_eq!(running.name, name);
    assert!(!running.done, "still running upstream");
    let listed = c
        .ops()
        .list_operations(ListOperationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.operations.iter().any(|o| o.name == name),
        "the upstream's list has it: {listed:?}"
    );

    std::fs::write(&release, b"").unwrap();
    let done = poll("WaitOperation to report it done", || {
        let (ops, name) = (c.ops(), name.clone());
        async move {
            let mut ops = ops;
            let op = ops
                .wait_operation(WaitOperationRequest {
                    name,
                    timeout: Some(prost_types::Duration {
                        seconds: 5,
                        nanos: 0,
                    }),
                })
                .await
                .unwrap()
                .into_inner();
            op.done.then_some(op)
        }
    })
    .await;
    let resp = exec_support::response(&done);
    assert_eq!(resp.result.expect("a result").exit_code, 0);

    let err = c
        .ops()
        .get_operation(GetOperationRequest {
            name: "no-such-operation".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}
