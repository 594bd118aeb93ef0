//! Bad input for Execute, WaitExecution and google.longrunning.Operations. The server runs the
//! scheduler but no worker: every row must be refused before anything is queued, so an Execute
//! whose operation is queued counts as accepted (OK), which no row here expects.

// The deprecated Command fields are what REAPI v2.0 clients send; they are checked too.
#![allow(deprecated)]

use super::common::{TestServer, bytes, digest};
use super::table::{Got, H, Table, Want, bad_digests};
use super::{IA, put};
use bytes::Bytes;
use kiln::digest::Digest;
use kiln::proto::bytestream::WriteRequest;
use kiln::proto::google::longrunning::operations_client::OperationsClient;
use kiln::proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    WaitOperationRequest, operation,
};
use kiln::proto::google::rpc::{PreconditionFailure, Status as RpcStatus};
use kiln::proto::reapi::execution_client::ExecutionClient;
use kiln::proto::reapi::{
    self, Action, Command, Directory, DirectoryNode, ExecuteRequest, ExecuteResponse, FileNode,
    WaitExecutionRequest,
};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

/// The message size limit of the Execute server; Action, Command and Directory blobs bigger
/// than it must be refused before they are decoded (issue #11 item 3).
const MAX_MESSAGE: u64 = 8 << 20;
/// Size of the oversized Action/Command/Directory blobs: over the limit above, and over the
/// 30 MiB of the report.
const HUGE: usize = 40 << 20;
/// Missing inputs in the "many missing inputs" row (issue #11 item 4 failed at ~70).
const MISSING_INPUTS: usize = 500;

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.cache.max_message_bytes = MAX_MESSAGE;
    })
    .await
}

/// Uploads a blob of any size with ByteStream Write.
async fn put_big(s: &TestServer, data: &[u8]) -> Digest {
    let d = digest(data);
    let name = format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        d.hash_hex(),
        d.size
    );
    let n = data.len().div_ceil(1 << 20);
    let reqs: Vec<WriteRequest> = data
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, c)| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i << 20) as i64,
            finish_write: i + 1 == n,
            data: Bytes::copy_from_slice(c),
        })
        .collect();
    let r = s
        .bytestream()
        .await
        .write(futures::stream::iter(reqs))
        .await
        .expect("upload of a big blob")
        .into_inner();
    assert_eq!(r.committed_size, d.size as i64);
    d
}

async fn put_msg(s: &TestServer, m: &impl Message) -> Digest {
    let data = m.encode_to_vec();
    if data.len() > 1 << 20 {
        put_big(s, &data).await
    } else {
        put(s, &data).await
    }
}

/// What an Execute call answered: its own status, an error in its stream, or the status of
/// an operation that is already done. An operation still queued after the stream's first two
/// messages (CACHE_CHECK, then the state after queueing) means the request was accepted.
async fn execute(
    c: &mut ExecutionClient<Channel>,
    req: ExecuteRequest,
) -> (Got, Option<tonic::Status>) {
    let mut stream = match c.execute(req).await {
        Err(e) => return (Got::status(&e), Some(e)),
        Ok(s) => s.into_inner(),
    };
    for _ in 0..2 {
        match stream.message().await {
            Err(e) => return (Got::status(&e), Some(e)),
            Ok(None) => return (Got::call(Code::Ok, "stream ended before done"), None),
            Ok(Some(op)) if op.done => {
                let got = match op.result {
                    Some(operation::Result::Error(s)) => {
                        Got::call(Code::from_i32(s.code), s.message)
                    }
                    Some(operation::Result::Response(any)) => {
                        let r = ExecuteResponse::decode(any.value.as_slice()).unwrap_or_default();
                        let s = r.status.unwrap_or_default();
                        Got::call(Code::from_i32(s.code), s.message)
                    }
                    None => Got::call(Code::Ok, "done without a result"),
                };
                return (got, None);
            }
            Ok(Some(_)) => {}
        }
    }
    (
        Got::call(Code::Ok, "accepted: the operation was queued"),
        None,
    )
}

/// Builds an Action from a Command and an input root, uploads all three, returns its digest.
async fn action_with(
    s: &TestServer,
    cmd: &Command,
    root: &Directory,
    edit: impl FnOnce(&mut Action),
) -> Digest {
    let mut action = Action {
        command_digest: Some(put_msg(s, cmd).await.to_proto()),
        input_root_digest: Some(put_msg(s, root).await.to_proto()),
        ..Default::default()
    };
    edit(&mut action);
    put_msg(s, &action).await
}

fn true_cmd() -> Command {
    Command {
        arguments: vec!["/bin/true".into()],
        ..Default::default()
    }
}

fn req(d: Option<reapi::Digest>) -> ExecuteRequest {
    ExecuteRequest {
        action_digest: d,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_rejects_bad_input() {
    let s = server().await;
    let mut exec = ExecutionClient::new(s.channel().await);
    let mut t = Table::new("Execute");
    let root = Directory::default();
    let valid = action_with(&s, &true_cmd(), &root, |_| {}).await;
    let mut rows: Vec<(String, ExecuteRequest, Code)> = envelope_rows!(req(Some(valid.to_proto())))
        .into_iter()
        .map(|(n, r)| (n, r, IA))
        .collect();
    // Control: the valid action itself is accepted and queued (OK), so the rows below are
    // refused for their defect and not for something the harness does.
    rows.push((
        "control: the valid action is queued".into(),
        req(Some(valid.to_proto())),
        Code::Ok,
    ));
    rows.push(("action_digest missing".into(), req(None), IA));
    for (name, bad) in bad_digests() {
        rows.push((format!("action_digest: {name}"), req(Some(bad)), IA));
    }
    let unknown = reapi::Digest {
        hash: H.into(),
        size_bytes: 5,
    };
    rows.push((
        "Action never stored".into(),
        req(Some(unknown.clone())),
        Code::FailedPrecondition,
    ));
    let garbage = put(&s, &[0xff; 12]).await;
    rows.push((
        "Action blob is not an Action".into(),
        req(Some(garbage.to_proto())),
        IA,
    ));

    // Broken Actions, Commands and input trees: each row one defect.
    let bad_digest = reapi::Digest {
        hash: "xyz".into(),
        size_bytes: 1,
    };
    let negative = reapi::Digest {
        hash: H.into(),
        size_bytes: -1,
    };
    let mut actions: Vec<(&str, Digest, Code)> = Vec::new();
    let cmd = true_cmd();
    for (name, edit, code) in [
        (
            "Action.command_digest missing",
            Box::new(|a: &mut Action| a.command_digest = None) as Box<dyn FnOnce(&mut Action)>,
            IA,
        ),
        (
            "Action.command_digest non-hex",
            Box::new({
                let b = bad_digest.clone();
                move |a: &mut Action| a.command_digest = Some(b)
            }),
            IA,
        ),
        (
            "Action.command_digest negative size",
            Box::new({
                let b = negative.clone();
                move |a: &mut Action| a.command_digest = Some(b)
            }),
            IA,
        ),
        (
            "Action.input_root_digest missing",
            Box::new(|a: &mut Action| a.input_root_digest = None),
            IA,
        ),
        (
            "Action.input_root_digest non-hex",
            Box::new({
                let b = bad_digest.clone();
                move |a: &mut Action| a.input_root_digest = Some(b)
            }),
            IA,
        ),
        (
            "Command never stored",
            Box::new({
                let u = unknown.clone();
                move |a: &mut Action| a.command_digest = Some(u)
            }),
            Code::FailedPrecondition,
        ),
        (
            "input root never stored",
            Box::new({
                let u = unknown.clone();
                move |a: &mut Action| a.input_root_digest = Some(u)
            }),
            Code::FailedPrecondition,
        ),
        (
            "input root is not a Directory",
            Box::new({
                let g = garbage.to_proto();
                move |a: &mut Action| a.input_root_digest = Some(g)
            }),
            IA,
        ),
        (
            "Action.timeout negative",
            Box::new(|a: &mut Action| {
                a.timeout = Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                });
            }),
            IA,
        ),
        (
            "Action.timeout nanos negative",
            Box::new(|a: &mut Action| {
                a.timeout = Some(prost_types::Duration {
                    seconds: 1,
                    nanos: -1,
                });
            }),
            IA,
        ),
        (
            "Action.timeout over the server's maximum",
            Box::new(|a: &mut Action| {
                a.timeout = Some(prost_types::Duration {
                    seconds: 1 << 40,
                    nanos: 0,
                });
            }),
            IA,
        ),
    ] {
        actions.push((name, action_with(&s, &cmd, &root, edit).await, code));
    }
    let cmd_rows: Vec<(&str, Command)> = vec![
        ("Command.arguments empty", Command::default()),
        (
            "Command.arguments[0] empty",
            Command {
                arguments: vec![String::new(), "x".into()],
                ..Default::default()
            },
        ),
        (
            "Command.working_directory climbs out",
            Command {
                working_directory: "../x".into(),
                ..true_cmd()
            },
        ),
        (
            "Command.working_directory absolute",
            Command {
                working_directory: "/tmp".into(),
                ..true_cmd()
            },
        ),
        (
            "Command.output_paths climbs out",
            Command {
                output_paths: vec!["a/../../x".into()],
                ..true_cmd()
            },
        ),
        (
            "Command.output_paths absolute",
            Command {
                output_paths: vec!["/etc/passwd".into()],
                ..true_cmd()
            },
        ),
        (
            "Command.output_files empty path",
            Command {
                output_files: vec![String::new()],
                ..true_cmd()
            },
        ),
        (
            "Command.output_directories climbs out",
            Command {
                output_directories: vec!["..".into()],
                ..true_cmd()
            },
        ),
    ];
    for (name, cmd) in cmd_rows {
        actions.push((name, action_with(&s, &cmd, &root, |_| {}).await, IA));
    }
    let file = |d: reapi::Digest| FileNode {
        name: "f".into(),
        digest: Some(d),
        ..Default::default()
    };
    let dir_rows: Vec<(&str, Directory, Code)> = vec![
        (
            "FileNode.digest non-hex",
            Directory {
                files: vec![file(bad_digest.clone())],
                ..Default::default()
            },
            IA,
        ),
        (
            "FileNode.digest negative size",
            Directory {
                files: vec![file(negative.clone())],
                ..Default::default()
            },
            IA,
        ),
        (
            "FileNode.digest missing",
            Directory {
                files: vec![FileNode {
                    name: "f".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            IA,
        ),
        (
            "DirectoryNode.digest non-hex",
            Directory {
                directories: vec![DirectoryNode {
                    name: "d".into(),
                    digest: Some(bad_digest.clone()),
                }],
                ..Default::default()
            },
            IA,
        ),
        (
            "DirectoryNode.digest missing",
            Directory {
                directories: vec![DirectoryNode {
                    name: "d".into(),
                    digest: None,
                }],
                ..Default::default()
            },
            IA,
        ),
    ];
    for (name, dir, code) in dir_rows {
        actions.push((name, action_with(&s, &true_cmd(), &dir, |_| {}).await, code));
    }
    for (name, d, code) in actions {
        rows.push((name.into(), req(Some(d.to_proto())), code));
    }
    for (row, r, code) in rows {
        let (got, _) = execute(&mut exec, r).await;
        t.check(&row, Want::Call(code), &got);
    }

    // Many missing inputs: FAILED_PRECONDITION with a PreconditionFailure, never
    // RESOURCE_EXHAUSTED from overflowing trailers (issue #11 item 4).
    let row = format!("{MISSING_INPUTS} missing inputs");
    let files = (0..MISSING_INPUTS)
        .map(|i| FileNode {
            name: format!("f{i:04}"),
            digest: Some(digest(&bytes(16, 90_000 + i as u64)).to_proto()),
            ..Default::default()
        })
        .collect();
    let d = action_with(
        &s,
        &true_cmd(),
        &Directory {
            files,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let (got, status) = execute(&mut exec, req(Some(d.to_proto()))).await;
    t.check(&row, Want::Call(Code::FailedPrecondition), &got);
    if let Some(st) = status.filter(|s| s.code() == Code::FailedPrecondition) {
        let failure = RpcStatus::decode(st.details())
            .ok()
            .and_then(|s| {
                s.details
                    .into_iter()
                    .find(|a| a.type_url.ends_with("google.rpc.PreconditionFailure"))
            })
            .and_then(|a| PreconditionFailure::decode(a.value.as_slice()).ok());
        t.expect(
            &row,
            failure.as_ref().is_some_and(|f| {
                !f.violations.is_empty() && f.violations.iter().all(|v| v.r#type == "MISSING")
            }),
            || {
                format!(
                    "no PreconditionFailure with MISSING violations in the details: {failure:?}"
                )
            },
        );
    }

    // Oversized Action, Command and Directory: refused, naming the limit (issue #11 item 3).
    let payload = "x".repeat(HUGE);
    let huge_cmd = Command {
        arguments: vec!["/bin/true".into(), payload.clone()],
        ..Default::default()
    };
    let present = put(&s, b"present").await;
    let huge_dir = Directory {
        files: vec![FileNode {
            name: payload.clone(),
            digest: Some(present.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let huge = [
        ("Command", action_with(&s, &huge_cmd, &root, |_| {}).await),
        (
            "Directory",
            action_with(&s, &true_cmd(), &huge_dir, |_| {}).await,
        ),
        (
            "Action",
            action_with(&s, &true_cmd(), &root, |a| {
                a.salt = Bytes::from(payload.clone());
            })
            .await,
        ),
    ];
    drop(payload);
    for (what, d) in huge {
        let row = format!(
            "{what} of {} MiB, over the {} MiB message limit",
            HUGE >> 20,
            MAX_MESSAGE >> 20
        );
        let (got, _) = execute(&mut exec, req(Some(d.to_proto()))).await;
        t.check(&row, Want::Call(IA), &got);
        let m = got.message.to_lowercase();
        t.expect(
            &row,
            got.code != IA
                || (m.contains(&what.to_lowercase()) && (m.contains("limit") || m.contains("max"))),
            || {
                format!(
                    "the message does not name the {what} and the limit: {:?}",
                    got.message
                )
            },
        );
    }
    t.finish();
}

/// Operation names no operation has: all NOT_FOUND (names are opaque to clients).
fn unknown_names() -> Vec<String> {
    vec![
        String::new(),
        "nope".into(),
        "4d3c2b1a-0000-4000-8000-000000000000".into(),
        "operations/4d3c2b1a-0000-4000-8000-000000000000".into(),
        "../../etc/passwd".into(),
        "\0".into(),
        "é".into(),
        "x".repeat(10_000),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_execution_and_operations_reject_bad_names() {
    let s = server().await;
    let ch = s.channel().await;
    let mut exec = ExecutionClient::new(ch.clone());
    let mut ops = OperationsClient::new(ch);
    let mut t = Table::new("WaitExecution and Operations");
    for name in unknown_names() {
        let got = match exec
            .wait_execution(WaitExecutionRequest { name: name.clone() })
            .await
        {
            Err(e) => Got::status(&e),
            Ok(s) => match s.into_inner().message().await {
                Err(e) => Got::status(&e),
                Ok(_) => Got::ok(),
            },
        };
        t.check(
            &format!("WaitExecution {name:.40?}"),
            Want::Call(Code::NotFound),
            &got,
        );
        let r = ops
            .get_operation(GetOperationRequest { name: name.clone() })
            .await;
        t.check(
            &format!("GetOperation {name:.40?}"),
            Want::Call(Code::NotFound),
            &Got::of(&r),
        );
        let r = ops
            .cancel_operation(CancelOperationRequest { name: name.clone() })
            .await;
        t.check(
            &format!("CancelOperation {name:.40?}"),
            Want::Call(Code::NotFound),
            &Got::of(&r),
        );
        let r = ops
            .delete_operation(DeleteOperationRequest { name: name.clone() })
            .await;
        t.check(
            &format!("DeleteOperation {name:.40?}"),
            Want::Call(Code::NotFound),
            &Got::of(&r),
        );
        for (what, seconds) in [
            ("no timeout", None),
            ("timeout -5 s", Some(-5)),
            ("timeout i64::MAX s", Some(i64::MAX)),
        ] {
            let r = ops
                .wait_operation(WaitOperationRequest {
                    name: name.clone(),
                    timeout: seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
                })
                .await;
            t.check(
                &format!("WaitOperation {name:.40?}, {what}"),
                Want::Call(Code::NotFound),
                &Got::of(&r),
            );
        }
    }
    for (what, page_size, page_token) in [
        ("page_token not a token", 0, "abc"),
        ("page_token -1", 0, "-1"),
        ("page_token 1.5", 0, "1.5"),
        ("page_token overflowing", 0, "99999999999999999999999999"),
        ("page_size -1", -1, ""),
    ] {
        let r = ops
            .list_operations(ListOperationsRequest {
                page_size,
                page_token: page_token.into(),
                ..Default::default()
            })
            .await;
        t.check(
            &format!("ListOperations {what}"),
            Want::Call(IA),
            &Got::of(&r),
        );
    }
    t.finish();
}
