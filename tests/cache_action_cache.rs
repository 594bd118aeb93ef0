//! Black-box tests of the ActionCache service.

mod common;

use common::{TestServer, digest};
use kiln::proto::reapi::{
    ActionResult, Digest as PDigest, GetActionResultRequest, OutputFile, UpdateActionResultRequest,
};
use tonic::Code;

fn get(instance: &str, action: &PDigest) -> GetActionResultRequest {
    GetActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(action.clone()),
        ..Default::default()
    }
}

#[tokio::test]
async fn update_get_instances_inline_and_completeness() {
    let s = TestServer::start().await;
    let mut ac = s.ac().await;
    let action = digest(b"action").to_proto();
    let out = b"output bytes";
    let stdout = b"hello from stdout";
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "out/file".into(),
            digest: Some(digest(out).to_proto()),
            is_executable: true,
            ..Default::default()
        }],
        stdout_digest: Some(digest(stdout).to_proto()),
        exit_code: 0,
        ..Default::default()
    };
    let err = ac
        .get_action_result(get("team", &action))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    ac.update_action_result(UpdateActionResultRequest {
        instance_name: "team".into(),
        action_digest: Some(action.clone()),
        action_result: Some(result.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    // Outputs not uploaded yet: the entry is incomplete, so it is a miss.
    let err = ac
        .get_action_result(get("team", &action))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    s.upload(&[out, stdout]).await;
    let got = ac
        .get_action_result(get("team", &action))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.output_files[0].path, "out/file");
    assert!(got.output_files[0].is_executable);
    assert!(got.stdout_raw.is_empty(), "nothing inlined unless asked");
    // Another instance name is another namespace.
    assert_eq!(
        ac.get_action_result(get("other", &action))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        ac.get_action_result(get("", &action))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let inlined = ac
        .get_action_result(GetActionResultRequest {
            inline_stdout: true,
            inline_output_files: vec!["out/file".into()],
            ..get("team", &action)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inlined.stdout_raw.as_ref(), stdout);
    assert_eq!(inlined.output_files[0].contents.as_ref(), out);
}

#[tokio::test]
async fn bad_action_cache_requests() {
    let s = TestServer::start().await;
    let mut ac = s.ac().await;
    let err = ac
        .get_action_result(GetActionResultRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("action_digest"), "{}", err.message());
    let bad = PDigest {
        hash: "xyz".into(),
        size_bytes: 3,
    };
    assert_eq!(
        ac.get_action_result(get("", &bad))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let action = digest(b"a").to_proto();
    let err = ac
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(action.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = ac
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(action),
            action_result: Some(ActionResult {
                stderr_digest: Some(bad),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = ac
        .get_action_result(get("operations", &digest(b"a").to_proto()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
