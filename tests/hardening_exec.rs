//! Issue #11 items 3 and 4: Execute with oversized messages, with many missing inputs, and
//! with input trees that break the REAPI rules.

mod exec_support;

use exec_support::{Client, Server, Spec, sh};
use kiln::proto::google::rpc;
use kiln::proto::reapi::{self, Directory, DirectoryNode, FileNode};
use prost::Message;
use tonic::Code;

fn precondition(status: &tonic::Status) -> rpc::PreconditionFailure {
    let st = rpc::Status::decode(status.details()).expect("grpc-status-details-bin");
    let any = st.details.first().expect("a detail");
    assert_eq!(
        any.type_url,
        "type.googleapis.com/google.rpc.PreconditionFailure"
    );
    rpc::PreconditionFailure::decode(any.value.as_slice()).unwrap()
}

async fn execute_err(client: &Client, spec: &Spec) -> tonic::Status {
    let action = client.action(spec).await;
    match client.execute(&action).await {
        Err(e) => e,
        Ok((_, resp)) => {
            let st = resp.status.unwrap_or_default();
            tonic::Status::with_details(
                Code::from_i32(st.code),
                st.message.clone(),
                st.encode_to_vec().into(),
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_command_is_refused_naming_the_limit() {
    let server = Server::start();
    let client = server.client().await;
    // 5 MiB of short arguments: over the default 4 MiB execution.max_command_bytes.
    let mut args = vec!["true".to_string()];
    args.extend((0..1_600_000).map(|i| format!("{}", i % 10)));
    let command = reapi::Command {
        arguments: args,
        ..Default::default()
    };
    let command = client.put_stream(&command.encode_to_vec()).await;
    assert!(command.size > 4 << 20);
    let root = client.put_msg(&Directory::default()).await;
    let action = client
        .put_msg(&reapi::Action {
            command_digest: Some(command.to_proto()),
            input_root_digest: Some(root.to_proto()),
            ..Default::default()
        })
        .await;
    let err = client
        .execute(&action)
        .await
        .expect_err("oversized Command");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("max_command_bytes"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_missing_inputs_are_failed_precondition_with_a_bounded_list() {
    let server = Server::start();
    let client = server.client().await;
    let files: Vec<FileNode> = (0..500u32)
        .map(|i| FileNode {
            name: format!("f{i:04}"),
            digest: Some(exec_support::sha(format!("absent {i}").as_bytes()).to_proto()),
            is_executable: false,
            ..Default::default()
        })
        .collect();
    let root = client
        .put_msg(&Directory {
            files,
            ..Default::default()
        })
        .await;
    let mut spec = sh("true");
    spec.input_root = Some(root);
    let err = execute_err(&client, &spec).await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let failure = precondition(&err);
    assert!(!failure.violations.is_empty() && failure.violations.len() < 500);
    for v in &failure.violations {
        assert_eq!(v.r#type, "MISSING");
        assert!(v.subject.starts_with("blobs/"), "{v:?}");
    }
    assert!(err.message().contains("500 blob(s) missing"), "{err:?}");
    assert!(err.message().contains("more not listed"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_trees_breaking_the_rules_are_invalid_argument() {
    let server = Server::start();
    let client = server.client().await;
    let a = client.put(b"a").await;
    let b = client.put(b"b").await;
    let file = |name: &str, d: &kiln::digest::Digest| FileNode {
        name: name.into(),
        digest: Some(d.to_proto()),
        ..Default::default()
    };
    let empty = client.put_msg(&Directory::default()).await;
    let dir = |name: &str| DirectoryNode {
        name: name.into(),
        digest: Some(empty.to_proto()),
    };
    let cases = [
        (
            "duplicate file name",
            Directory {
                files: vec![file("x", &a), file("x", &b)],
                ..Default::default()
            },
        ),
        (
            "unsorted",
            Directory {
                files: vec![file("y", &a), file("x", &b)],
                ..Default::default()
            },
        ),
        (
            "file and directory share a name",
            Directory {
                files: vec![file("x", &a)],
                directories: vec![dir("x")],
                ..Default::default()
            },
        ),
        (
            "a path, not a name",
            Directory {
                files: vec![file("../x", &a)],
                ..Default::default()
            },
        ),
    ];
    for (what, d) in cases {
        let mut spec = sh("true");
        spec.input_root = Some(client.put_msg(&d).await);
        let err = execute_err(&client, &spec).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    // 3,000 levels deep: refused with the limit named, no stack overflow anywhere.
    let mut child = empty;
    let mut batch = Vec::new();
    for _ in 0..3000 {
        let bytes = Directory {
            directories: vec![reapi::DirectoryNode {
                name: "d".into(),
                digest: Some(child.to_proto()),
            }],
            ..Default::default()
        }
        .encode_to_vec();
        child = exec_support::sha(&bytes);
        batch.push(reapi::batch_update_blobs_request::Request {
            digest: Some(child.to_proto()),
            data: bytes.into(),
            ..Default::default()
        });
    }
    for chunk in batch.chunks(1000) {
        let resp = client
            .cas()
            .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
                requests: chunk.to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            resp.responses
                .iter()
                .all(|r| r.status.as_ref().unwrap().code == 0)
        );
    }
    let mut spec = sh("true");
    spec.input_root = Some(child);
    let err = execute_err(&client, &spec).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("max_input_depth"), "{err:?}");
}
