//! `execute-noop`: Execute of a trivial action (`/bin/true`, empty input root), uncached, so
//! every operation runs it. Uses only the standard Execution API; a target that does not run
//! actions is reported as unsupported, not as a run full of errors.
//!
//! The report's `extra` breaks each round trip into phases from the result's
//! `ExecutedActionMetadata` (queued, input fetch, execution, output upload, the rest of the
//! worker's time) and what is left of the client's round trip (scheduler, lease delivery,
//! result storage, the Execute stream and the network), each as p50/p99 in ms.

use super::{Clients, OpError, Workload};
use crate::bench::BenchError;
use crate::bench::args::LoadArgs;
use crate::bench::data::Rng;
use crate::bench::stats::Recorder;
use crate::digest::{Digest, DigestFunction};
use crate::proto::google::longrunning::operation;
use crate::proto::reapi::{
    Action, Command, ExecuteRequest, ExecuteResponse, ExecutedActionMetadata, command,
};
use futures::StreamExt;
use prost::Message;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Executes one no-op action per op.
pub struct ExecuteNoop {
    action: Option<Digest>,
    exec_enabled: Option<bool>,
    phases: Mutex<Phases>,
}

impl ExecuteNoop {
    /// No parameters.
    pub fn new(_args: &LoadArgs, _seed: u64) -> Self {
        Self {
            action: None,
            exec_enabled: None,
            phases: Mutex::new(Phases::default()),
        }
    }
}

/// Where the time of the round trips went (histograms, so memory is fixed).
#[derive(Default)]
struct Phases {
    queued: Recorder,
    input_fetch: Recorder,
    execution: Recorder,
    output_upload: Recorder,
    worker_other: Recorder,
    outside_worker: Recorder,
}

/// `b - a` of two metadata timestamps; `None` when one is missing or they run backwards.
fn between(
    a: Option<&prost_types::Timestamp>,
    b: Option<&prost_types::Timestamp>,
) -> Option<Duration> {
    let nanos =
        |t: &prost_types::Timestamp| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    let d = nanos(b?) - nanos(a?);
    u64::try_from(d).ok().map(Duration::from_nanos)
}

impl Phases {
    /// Records one round trip of `round_trip` whose result carried `m`.
    fn record(&mut self, m: &ExecutedActionMetadata, round_trip: Duration) {
        let phase = |r: &mut Recorder, d: Option<Duration>| {
            if let Some(d) = d {
                r.record(d);
            }
        };
        let queued = between(
            m.queued_timestamp.as_ref(),
            m.worker_start_timestamp.as_ref(),
        );
        let fetch = between(
            m.input_fetch_start_timestamp.as_ref(),
            m.input_fetch_completed_timestamp.as_ref(),
        );
        let exec = between(
            m.execution_start_timestamp.as_ref(),
            m.execution_completed_timestamp.as_ref(),
        );
        let upload = between(
            m.output_upload_start_timestamp.as_ref(),
            m.output_upload_completed_timestamp.as_ref(),
        );
        let worker = between(
            m.worker_start_timestamp.as_ref(),
            m.worker_completed_timestamp.as_ref(),
        );
        phase(&mut self.queued, queued);
        phase(&mut self.input_fetch, fetch);
        phase(&mut self.execution, exec);
        phase(&mut self.output_upload, upload);
        if let (Some(w), Some(f), Some(e), Some(u)) = (worker, fetch, exec, upload) {
            phase(&mut self.worker_other, w.checked_sub(f + e + u));
        }
        if let (Some(q), Some(w)) = (queued, worker) {
            phase(&mut self.outside_worker, round_trip.checked_sub(q + w));
        }
    }

    fn json(&self) -> serde_json::Value {
        let p = |r: &Recorder| {
            let l = r.latency();
            serde_json::json!({ "p50_ms": l.p50_ms, "p99_ms": l.p99_ms })
        };
        serde_json::json!({ "phases": {
            "queued": p(&self.queued),
            "input_fetch": p(&self.input_fetch),
            "execution": p(&self.execution),
            "output_upload": p(&self.output_upload),
            "worker_other": p(&self.worker_other),
            "outside_worker": p(&self.outside_worker),
        }})
    }
}

fn encode(m: &impl Message) -> (Digest, bytes::Bytes) {
    let bytes = bytes::Bytes::from(m.encode_to_vec());
    (DigestFunction::Sha256.digest_of(&bytes), bytes)
}

/// Runs one Execute to completion and checks the action succeeded; returns the result's
/// execution metadata.
async fn execute(
    clients: &Clients,
    worker: usize,
    action: &Digest,
) -> Result<Option<ExecutedActionMetadata>, OpError> {
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
                    Some(res) if res.exit_code == 0 => Ok(res.execution_metadata),
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
            Ok(_) => {}
        }
        self.action = Some(action_digest);
        Ok(())
    }

    async fn op(&self, clients: &Clients, worker: usize, _rng: &mut Rng) -> Result<u64, OpError> {
        let start = Instant::now();
        let meta = execute(clients, worker, self.action.as_ref().expect("seeded")).await?;
        if let Some(m) = meta {
            let round_trip = start.elapsed();
            self.phases
                .lock()
                .expect("phases lock")
                .record(&m, round_trip);
        }
        Ok(0)
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "command": "/bin/true", "exec_enabled": self.exec_enabled })
    }

    fn extra(&self) -> Option<serde_json::Value> {
        Some(self.phases.lock().expect("phases lock").json())
    }
}
