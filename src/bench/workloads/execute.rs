//! `execute-noop`: Execute of a trivial action (`/bin/true`, empty input root), uncached, so
//! every operation runs it. Uses only the standard Execution API; a target that does not run
//! actions is reported as unsupported, not as a run full of errors.

use super::{Clients, OpError, Workload};
use crate::bench::BenchError;
use crate::bench::args::LoadArgs;
use crate::bench::data::Rng;
use crate::digest::{Digest, DigestFunction};
use crate::proto::google::longrunning::operation;
use crate::proto::reapi::{Action, Command, ExecuteRequest, ExecuteResponse, command};
use futures::StreamExt;
use prost::Message;

/// Executes one no-op action per op.
pub struct ExecuteNoop {
    action: Option<Digest>,
    exec_enabled: Option<bool>,
}

impl ExecuteNoop {
    /// No parameters.
    pub fn new(_args: &LoadArgs, _seed: u64) -> Self {
        Self {
            action: None,
            exec_enabled: None,
        }
    }
}

fn encode(m: &impl Message) -> (Digest, bytes::Bytes) {
    let bytes = bytes::Bytes::from(m.encode_to_vec());
    (DigestFunction::Sha256.digest_of(&bytes), bytes)
}

/// Runs one Execute to completion and checks the action succeeded.
async fn execute(clients: &Clients, worker: usize, action: &Digest) -> Result<(), OpError> {
    let mut stream = clients
        .execution(worker)
        .execute(ExecuteRequest {
            instance_name: clients.instance.clone(),
            skip_cache_lookup: true,
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await?
        .into_inner();
    // Read the stream to its end (the server closes it after the done message): dropping it
    // earlier resets the HTTP/2 stream, and thousands of resets make the h2 client refuse the
    // connection ("locally-reset streams reached limit").
    let mut done = None;
    while let Some(op) = stream.next().await {
        let op = op?;
        if op.done {
            done = Some(op);
        }
    }
    if let Some(op) = done {
        return match op.result {
            Some(operation::Result::Error(s)) => Err(OpError::Rpc(tonic::Status::new(
                tonic::Code::from(s.code),
                s.message,
            ))),
            Some(operation::Result::Response(any)) => {
                let r = ExecuteResponse::decode(any.value.as_slice()).map_err(|e| {
                    OpError::Verify(format!(
                        "undecodable ExecuteResponse ({}): {e}",
                        any.type_url
                    ))
                })?;
                if let Some(s) = r.status.filter(|s| s.code != 0) {
                    return Err(OpError::Rpc(tonic::Status::new(
                        tonic::Code::from(s.code),
                        s.message,
                    )));
                }
                match r.result {
                    Some(res) if res.exit_code == 0 => Ok(()),
                    Some(res) => Err(OpError::Verify(format!(
                        "no-op action exited {}",
                        res.exit_code
                    ))),
                    None => Err(OpError::Verify("ExecuteResponse without a result".into())),
                }
            }
            None => Err(OpError::Verify("done operation without a result".into())),
        };
    }
    Err(OpError::Verify(
        "Execute stream ended before the operation was done".into(),
    ))
}

#[async_trait::async_trait]
impl Workload for ExecuteNoop {
    async fn seed(&mut self, clients: &Clients) -> Result<(), BenchError> {
        self.exec_enabled = clients
            .capabilities_on(0)
            .await
            .ok()
            .and_then(|c| c.execution_capabilities)
            .map(|e| e.exec_enabled);
        let cmd = Command {
            arguments: vec!["/bin/true".into()],
            environment_variables: vec![command::EnvironmentVariable {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            ..Default::default()
        };
        let (cmd_digest, cmd_bytes) = encode(&cmd);
        // The empty Directory encodes to zero bytes: the empty blob, which every CAS holds.
        let root = DigestFunction::Sha256.digest_of(&[]);
        let action = Action {
            command_digest: Some(cmd_digest.to_proto()),
            input_root_digest: Some(root.to_proto()),
            do_not_cache: true,
            ..Default::default()
        };
        let (action_digest, action_bytes) = encode(&action);
        clients
            .batch_upload(0, [(cmd_digest, cmd_bytes), (action_digest, action_bytes)])
            .await
            .map_err(super::rpc::seed_error("uploading the no-op action"))?;
        // One untimed probe: it tells "does not run actions" from "fails while running them".
        match execute(clients, 0, &action_digest).await {
            Err(OpError::Rpc(s)) if s.code() == tonic::Code::Unimplemented => {
                return Err(BenchError::Unsupported(format!(
                    "the target does not run actions: Execute answered UNIMPLEMENTED ({}); \
                     Capabilities exec_enabled = {}",
                    s.message(),
                    self.exec_enabled
                        .map_or_else(|| "unknown".to_string(), |e| e.to_string())
                )));
            }
            Err(e) if self.exec_enabled == Some(false) => {
                return Err(BenchError::Unsupported(format!(
                    "the target does not run actions (Capabilities exec_enabled = false); \
                     Execute failed: {e}"
                )));
            }
            Err(e) => return Err(BenchError::Seed(format!("probe Execute failed: {e}"))),
            Ok(()) => {}
        }
        self.action = Some(action_digest);
        Ok(())
    }

    async fn op(&self, clients: &Clients, worker: usize, _rng: &mut Rng) -> Result<u64, OpError> {
        execute(clients, worker, self.action.as_ref().expect("seeded")).await?;
        Ok(0)
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "command": "/bin/true", "exec_enabled": self.exec_enabled })
    }
}
