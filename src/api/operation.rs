//! Renders scheduler operations as `google.longrunning.Operation`s the way REAPI clients expect:
//! metadata = Any(ExecuteOperationMetadata), response = Any(ExecuteResponse).

use super::status::exec_rpc_status;
use crate::exec::{OpHandle, OpSnapshot, Stage};
use crate::proto::google::longrunning::{Operation, operation};
use crate::proto::reapi::{ExecuteOperationMetadata, ExecuteResponse, execution_stage};
use futures::Stream;
use prost::Message;
use std::pin::Pin;
use tonic::Status;

const METADATA_URL: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata";
const RESPONSE_URL: &str = "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse";

/// A stream of operation updates.
pub(super) type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

fn stage(s: Stage) -> execution_stage::Value {
    match s {
        Stage::CacheCheck => execution_stage::Value::CacheCheck,
        Stage::Queued => execution_stage::Value::Queued,
        Stage::Executing => execution_stage::Value::Executing,
        Stage::Completed => execution_stage::Value::Completed,
    }
}

/// One snapshot of an operation as a proto.
pub(super) fn render(
    name: &str,
    handle_digest: &crate::digest::Digest,
    snap: &OpSnapshot,
) -> Operation {
    let metadata = ExecuteOperationMetadata {
        stage: stage(snap.stage) as i32,
        action_digest: Some(handle_digest.to_proto()),
        digest_function: handle_digest.function.to_proto(),
        ..Default::default()
    };
    let result = snap.outcome.as_ref().map(|o| {
        let status = o
            .error
            .as_ref()
            .map_or_else(super::status::rpc_ok, exec_rpc_status);
        let response = ExecuteResponse {
            result: o.result.clone(),
            cached_result: o.cached,
            message: if status.code == 0 {
                String::new()
            } else {
                status.message.clone()
            },
            status: Some(status),
            ..Default::default()
        };
        operation::Result::Response(prost_types::Any {
            type_url: RESPONSE_URL.into(),
            value: response.encode_to_vec(),
        })
    });
    Operation {
        name: name.to_string(),
        metadata: Some(prost_types::Any {
            type_url: METADATA_URL.into(),
            value: metadata.encode_to_vec(),
        }),
        done: snap.is_done(),
        result,
    }
}

/// The current state of an operation as a proto.
pub(super) fn render_handle(h: &OpHandle) -> Operation {
    render(&h.name, &h.action_digest, &h.snapshot())
}

/// Follows an operation until it completes: one message per observed change, the last with
/// `done` set. A deleted operation ends the stream with NOT_FOUND.
pub(super) fn follow(mut handle: OpHandle, first: Option<Operation>) -> OperationStream {
    Box::pin(async_stream::stream! {
        if let Some(op) = first {
            yield Ok(op);
        }
        loop {
            let snap = handle.rx.borrow_and_update().clone();
            yield Ok(render(&handle.name, &handle.action_digest, &snap));
            if snap.is_done() {
                break;
            }
            if handle.rx.changed().await.is_err() {
                yield Err(Status::not_found(format!("operation {} was deleted", handle.name)));
                break;
            }
        }
    })
}
