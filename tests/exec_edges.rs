//! Black-box execution tests, part 2: missing inputs, merging identical actions, cancellation,
//! lost workers, escaping outputs, platform matching, and re-attaching to operations.

mod exec_support;

use exec_support::*;
use kiln::proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    WaitOperationRequest,
};
use kiln::proto::google::rpc::{PreconditionFailure, Status as RpcStatus};
use kiln::proto::reapi::execution_stage::Value as StageV;
use kiln::proto::reapi::{Directory, FileNode, WaitExecutionRequest};
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_inputs_are_failed_precondition_with_violations() {
    let server = Server::start();
    let c = server.client().await;
    let absent = sha(b"never uploaded");
    let root = Directory {
        files: vec![FileNode {
            name: "in".into(),
            digest: Some(absent.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let root = c.put_msg(&root).await;
    let mut spec = sh("cat in");
    spec.input_root = Some(root);
    let d = c.action(&spec).await;
    let err = c.execute(&d).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    let status = RpcStatus::decode(err.details()).unwrap();
    let any = &status.details[0];
    assert_eq!(
        any.type_url,
        "type.googleapis.com/google.rpc.PreconditionFailure"
    );
    let failure = PreconditionFailure::decode(any.value.as_slice()).unwrap();
    assert_eq!(failure.violations.len(), 1);
    assert_eq!(failure.violations[0].r#type, "MISSING");
    assert_eq!(
        failure.violations[0].subject,
        format!("blobs/{}/{}", absent.hash_hex(), absent.size)
    );

    // A missing Action is reported the same way.
    let ghost = sha(b"no such action");
    let err = c.execute(&ghost).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let failure = PreconditionFailure::decode(
        RpcStatus::decode(err.details()).unwrap().details[0]
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(
        failure.violations[0].subject,
        format!("blobs/{}/{}", ghost.hash_hex(), ghost.size)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_executes_run_once() {
    let server = Server::start();
    let c = server.client().await;
    let counter = server.dir.path().join("runs");
    let d = c
        .action(&sh(&format!("echo run >> {}; sleep 1", counter.display())))
        .await;
    // Both requests queue before any worker exists, so they surely overlap.
    let (c1, c2) = (c.clone(), c.clone());
    let first = tokio::spawn(async move { c1.execute(&d).await.unwrap() });
    let second = tokio::spawn(async move { c2.execute(&d).await.unwrap() });
    let list = poll("two operations listed", || {
        let c = c.clone();
        async move {
            let ops = c
                .ops()
                .list_operations(ListOperationsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .operations;
            (!ops.is_empty()).then_some(ops)
        }
    })
    .await;
    assert_eq!(
        list.len(),
        1,
        "the second Execute merged into the first operation"
    );
    let _w = server.worker(2, &[]);
    let (ops_a, ra) = first.await.unwrap();
    let (ops_b, rb) = second.await.unwrap();
    assert_eq!(ops_a.last().unwrap().name, ops_b.last().unwrap().name);
    assert_eq!(ra.result.unwrap().exit_code, 0);
    assert_eq!(rb.result.unwrap().exit_code, 0);
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        "run\n",
        "ran exactly once"
    );
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_running_process() {
    let (server, _w, c) = Server::with_one_worker().await;
    let pidfile = server.dir.path().join("pid");
    let d = c
        .action(&sh(&format!(
            "echo $$ > {}.tmp; mv {0}.tmp {0}; exec sleep 60",
            pidfile.display()
        )))
        .await;
    let mut stream = c.start_execute(&d).await;
    let name = stream.message().await.unwrap().unwrap().name;
    let pid: u32 = poll("the action to start", || {
        let p = pidfile.clone();
        async move {
            std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        }
    })
    .await;
    assert!(alive(pid));
    c.ops()
        .cancel_operation(CancelOperationRequest { name: name.clone() })
        .await
        .unwrap();
    let mut last = None;
    while let Some(op) = stream.message().await.unwrap() {
        last = Some(op);
    }
    let resp = response(&last.unwrap());
    assert_eq!(resp.status.unwrap().code, tonic::Code::Cancelled as i32);
    poll("the process to be killed", || async move {
        (!alive(pid)).then_some(())
    })
    .await;
    // The operation stays visible, done; deleting it makes it NOT_FOUND.
    let op = c
        .ops()
        .get_operation(GetOperationRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(op.done);
    c.ops()
        .delete_operation(DeleteOperationRequest { name: name.clone() })
        .await
        .unwrap();
    let err = c
        .ops()
        .get_operation(GetOperationRequest { name })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_of_a_killed_worker_completes_on_another() {
    let server = Server::start();
    let mut a = server.worker(1, &[]);
    let c = server.client().await;
    let marker = server.dir.path().join("started");
    let d = c
        .action(&sh(&format!(
            "echo x >> {}; sleep 1; echo done",
            marker.display()
        )))
        .await;
    let cc = c.clone();
    let run = tokio::spawn(async move { cc.execute(&d).await.unwrap() });
    let m = marker.clone();
    poll("the action to start on worker A", || {
        let m = m.clone();
        async move { m.exists().then_some(()) }
    })
    .await;
    a.kill();
    let _b = server.worker(1, &[]);
    let (_, resp) = run.await.unwrap();
    assert_eq!(
        resp.status.as_ref().map_or(0, |s| s.code),
        0,
        "{:?}",
        resp.status
    );
    let r = resp.result.unwrap();
    assert_eq!(r.exit_code, 0);
    assert_eq!(c.get(r.stdout_digest.as_ref().unwrap()).await, b"done\n");
    assert!(
        std::fs::read_to_string(&marker).unwrap().lines().count() >= 2,
        "ran again after the loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaping_outputs_are_rejected() {
    let (_server, _w, c) = Server::with_one_worker().await;
    let mut spec = sh("echo x > ../x");
    spec.output_paths = vec!["../x".into()];
    let err = c.execute(&c.action(&spec).await).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("../x"), "{err}");

    // A symlink output pointing out of the action directory is an error, never followed.
    let mut spec = sh("ln -s /etc/passwd out");
    spec.output_paths = vec!["out".into()];
    let (_, resp) = c.execute(&c.action(&spec).await).await.unwrap();
    let status = resp.status.unwrap();
    assert_eq!(
        status.code,
        tonic::Code::InvalidArgument as i32,
        "{status:?}"
    );
    assert!(status.message.contains("escapes"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_properties_route_and_unsatisfiable_ones_fail() {
    let server = Server::start();
    let _plain = server.worker(1, &[]);
    let c = server.client().await;
    let mut spec = sh("echo gpu");
    spec.platform = vec![("gpu".into(), "yes".into())];
    let (_, resp) = c.execute(&c.action(&spec).await).await.unwrap();
    let status = resp.status.unwrap();
    assert_eq!(
        status.code,
        tonic::Code::FailedPrecondition as i32,
        "{status:?}"
    );
    assert!(status.message.contains("gpu=yes"), "{status:?}");

    let _gpu = server.worker(1, &["gpu=yes"]);
    spec.salt = "again".into();
    spec.platform.push(("OSFamily".into(), "Linux".into()));
    let (_, resp) = c.execute(&c.action(&spec).await).await.unwrap();
    assert_eq!(resp.result.unwrap().exit_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_execution_after_a_broken_stream() {
    let server = Server::start();
    let c = server.client().await;
    let d = c.action(&sh("echo waited")).await;
    let name = {
        let mut stream = c.start_execute(&d).await;
        let op = stream.message().await.unwrap().unwrap();
        assert_eq!(stage(&op), StageV::CacheCheck as i32);
        op.name
        // The stream is dropped here, as when a client's connection breaks.
    };
    let _w = server.worker(1, &[]);
    let mut stream = c
        .exec()
        .wait_execution(WaitExecutionRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(op) = stream.message().await.unwrap() {
        last = Some(op);
    }
    let resp = response(&last.unwrap());
    assert_eq!(
        c.get(resp.result.unwrap().stdout_digest.as_ref().unwrap())
            .await,
        b"waited\n"
    );
    let op = c
        .ops()
        .wait_operation(WaitOperationRequest {
            name,
            timeout: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(op.done);
    let err = c
        .exec()
        .wait_execution(WaitExecutionRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_over_tcp_bots_listener_and_socket_mode() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start_with(&format!("{EXEC_CONFIG}bots_listen = [\"127.0.0.1:0\"]\n"));
    let sock = server.bots.strip_prefix("unix:").unwrap();
    assert_eq!(
        std::fs::metadata(sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let tcp = server.bots_tcp.clone().expect("TCP bots listener");
    let _w = server.worker_at(&tcp, 1, &[]);
    let c = server.client().await;
    let input = c.put(b"over tcp\n").await;
    let root = Directory {
        files: vec![FileNode {
            name: "in.txt".into(),
            digest: Some(input.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut spec = sh("cat in.txt");
    spec.input_root = Some(c.put_msg(&root).await);
    let (_, resp) = c.execute(&c.action(&spec).await).await.unwrap();
    let r = resp.result.unwrap();
    assert_eq!(
        c.get(r.stdout_digest.as_ref().unwrap()).await,
        b"over tcp\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_isolation_hides_network_ipc_hostname_and_processes() {
    // Two workers, told apart by a property: one isolates with namespaces, one does not (the
    // control: it shows what the checks see without isolation).
    let server = Server::start();
    let _isolated = server.worker_with(
        &server.bots,
        1,
        &["sandbox=ns"],
        &["--isolation", "namespaces"],
    );
    // The control worker shares the host's network (`--action-network host`); by default
    // actions get a network namespace of their own even without `--isolation`.
    let _plain = server.worker_with(
        &server.bots,
        1,
        &["sandbox=none"],
        &["--action-network", "host"],
    );
    let c = server.client().await;
    let script = "readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts; \
                  cat /proc/sys/kernel/hostname; \
                  tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '; echo; \
                  echo \"pid $$\"";
    let run = |sandbox: &'static str| {
        let mut spec = sh(script);
        spec.platform = vec![("sandbox".into(), sandbox.into())];
        let c = c.clone();
        async move {
            let d = c.action(&spec).await;
            let (_, resp) = c.execute(&d).await.unwrap();
            let r = resp.result.expect("result");
            let err = c.get(r.stderr_digest.as_ref().unwrap()).await;
            assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&err));
            let out = c.get(r.stdout_digest.as_ref().unwrap()).await;
            String::from_utf8(out).unwrap()
        }
    };
    let ns = |name: &str| {
        std::fs::read_link(format!("/proc/self/ns/{name}"))
            .unwrap()
            .display()
            .to_string()
    };
    let host: Vec<String> = ["net", "ipc", "uts"].iter().map(|n| ns(n)).collect();
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();

    let plain = run("none").await;
    let lines: Vec<&str> = plain.lines().collect();
    assert_eq!(lines[..3], host[..], "control run: {plain}");
    assert_eq!(lines[3], host_name.trim(), "control run: {plain}");
    assert_ne!(lines[5], "pid 1", "control run: {plain}");

    let isolated = run("ns").await;
    let lines: Vec<&str> = isolated.lines().collect();
    for (i, name) in ["net", "ipc", "uts"].iter().enumerate() {
        assert_ne!(
            lines[i], host[i],
            "{name} namespace shared with the host: {isolated}"
        );
    }
    assert_eq!(lines[3], "kiln-action", "{isolated}");
    assert_eq!(
        lines[4].trim(),
        "lo",
        "only a loopback interface: {isolated}"
    );
    assert_eq!(
        lines[5], "pid 1",
        "the action is alone in its PID namespace: {isolated}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_file_cache_stays_within_its_bound_least_recently_used_first() {
    let server = Server::start();
    let c = server.client().await;
    // Three input roots of one distinct 400 KiB file each; the cache holds 1 MiB, so two.
    let mut roots = vec![];
    let mut files = vec![];
    for i in 0..3u8 {
        let body = vec![b'a' + i; 400 << 10];
        let d = c.put(&body).await;
        let root = c
            .put_msg(&Directory {
                files: vec![FileNode {
                    name: "f".into(),
                    digest: Some(d.to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await;
        roots.push(root);
        files.push((d, body));
    }
    let work = server.dir.path().join("stage-bound");
    let bound = 1 << 20;
    let stager = kiln::worker::Stager::new(
        kiln::worker::connect(&server.bots).await.unwrap(),
        &work,
        bound,
        None,
    )
    .unwrap();
    let cached = |i: usize| {
        let d = &files[i].0;
        exists(
            &work
                .join("cache")
                .join(format!("{}-{}", d.hash_hex(), d.size)),
        )
    };
    let mut n = 0;
    let mut stage = async |i: usize| {
        n += 1;
        let dest = work.join(format!("action{n}"));
        stager.stage(&roots[i], &dest).await.unwrap();
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), files[i].1);
        assert!(
            stager.cache_bytes() <= bound,
            "{} > {bound}",
            stager.cache_bytes()
        );
    };
    stage(0).await;
    stage(1).await;
    stage(0).await; // 0 is now more recent than 1
    stage(2).await; // over the bound: 1 goes first
    assert!(cached(0) && !cached(1) && cached(2));
    stage(1).await; // fetched again; 0 is now the oldest
    assert!(!cached(0) && cached(1) && cached(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_located_staging_copies_from_the_store_not_over_grpc() {
    let server = Server::start();
    let c = server.client().await;
    // Small files, one over the batch limit (a multi-part record), one empty.
    let mut bodies: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
    bodies.push((0..(6 << 20)).map(|i: u32| (i % 251) as u8).collect());
    bodies.push(vec![]);
    let mut nodes = vec![];
    for (i, b) in bodies.iter().enumerate() {
        let d = if b.len() > 1 << 20 {
            c.put_stream(b).await
        } else {
            c.put(b).await
        };
        nodes.push(FileNode {
            name: format!("f{i:02}"),
            digest: Some(d.to_proto()),
            is_executable: i % 3 == 0,
            ..Default::default()
        });
    }
    let root = c
        .put_msg(&Directory {
            files: nodes,
            ..Default::default()
        })
        .await;
    let client = kiln::worker::connect(&server.bots).await.unwrap();
    let check = |dest: &std::path::Path| {
        for (i, b) in bodies.iter().enumerate() {
            assert_eq!(
                &std::fs::read(dest.join(format!("f{i:02}"))).unwrap(),
                b,
                "file {i}"
            );
        }
    };
    // Co-located: every file and the root Directory come from the server's store (before
    // issue #14 the Directory protos were fetched over gRPC even then: 22 instead of 23).
    let local_work = server.dir.path().join("stage-local");
    let local = kiln::worker::Stager::new(
        client.clone(),
        &local_work,
        0,
        Some(&server.dir.path().join("data")),
    )
    .unwrap();
    local.stage(&root, &local_work.join("a")).await.unwrap();
    check(&local_work.join("a"));
    assert_eq!(
        local.sources(),
        (bodies.len() as u64 + 1, 0),
        "(store, gRPC) blobs"
    );
    // Not co-located: the same tree over gRPC.
    let remote_work = server.dir.path().join("stage-remote");
    let remote = kiln::worker::Stager::new(client, &remote_work, 0, None).unwrap();
    remote.stage(&root, &remote_work.join("a")).await.unwrap();
    check(&remote_work.join("a"));
    assert_eq!(
        remote.sources(),
        (0, bodies.len() as u64),
        "(store, gRPC) blobs"
    );
}
