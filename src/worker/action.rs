//! Runs one leased action end to end: fetch the Command, stage inputs, run, capture and upload
//! outputs, and describe the outcome as the lease's result and status.
// output_files/output_directories are what REAPI v2.0 clients (Bazel 2.x) declare.
#![allow(deprecated)]

use super::cache::FileCache;
use super::capture::{capture, hash_file};
use super::client::Client;
use super::error::{WorkerError, io};
use super::run::{Limits, run};
use super::stage::stage;
use crate::digest::Digest;
use crate::exec::within_root;
use crate::proto::google::rpc;
use crate::proto::reapi::{Action, ActionResult, Command, ExecutedActionMetadata};
use prost::Message;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// What every action of one worker process shares.
pub struct Context {
    /// The server connection.
    pub client: Client,
    /// The file cache for staging.
    pub cache: Arc<FileCache>,
    /// Action directories are created under here.
    pub actions_dir: PathBuf,
    /// Limits for every action.
    pub limits: Limits,
}

/// The lease's result and status.
pub struct LeaseOutcome {
    /// The action's result, when it ran.
    pub result: Option<ActionResult>,
    /// OK, DEADLINE_EXCEEDED (timeout), CANCELLED, FAILED_PRECONDITION (missing input), ...
    pub status: rpc::Status,
}

fn status(code: tonic::Code, message: impl Into<String>) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.into(),
        details: vec![],
    }
}

fn error_status(e: &WorkerError) -> rpc::Status {
    match e {
        WorkerError::MissingInput(d) => {
            let failure = rpc::PreconditionFailure {
                violations: vec![rpc::precondition_failure::Violation {
                    r#type: "MISSING".into(),
                    subject: format!("blobs/{}/{}", d.hash_hex(), d.size),
                    description: String::new(),
                }],
            };
            let any = prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.PreconditionFailure".into(),
                value: failure.encode_to_vec(),
            };
            rpc::Status {
                code: tonic::Code::FailedPrecondition as i32,
                message: e.to_string(),
                details: vec![any],
            }
        }
        WorkerError::Escape { .. } | WorkerError::Invalid { .. } => {
            status(tonic::Code::InvalidArgument, e.to_string())
        }
        _ => status(tonic::Code::Internal, e.to_string()),
    }
}

/// Runs `action`; never fails, the failure is in the outcome's status.
pub async fn execute(ctx: &Context, action: Action, cancel: watch::Receiver<bool>) -> LeaseOutcome {
    let dir = ctx.actions_dir.join(uuid::Uuid::new_v4().to_string());
    let outcome = match execute_in(ctx, &action, &dir, cancel).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "action failed");
            LeaseOutcome {
                result: None,
                status: error_status(&e),
            }
        }
    };
    tokio::task::spawn_blocking(move || remove_tree(&dir));
    outcome
}

async fn execute_in(
    ctx: &Context,
    action: &Action,
    dir: &std::path::Path,
    cancel: watch::Receiver<bool>,
) -> Result<LeaseOutcome, WorkerError> {
    let mut meta = ExecutedActionMetadata {
        worker_start_timestamp: Some(SystemTime::now().into()),
        ..Default::default()
    };
    let function = crate::digest::DigestFunction::Sha256;
    let command_digest = Digest::from_field(
        function,
        action.command_digest.as_ref(),
        "Action.command_digest",
    )?;
    let input_root = Digest::from_field(
        function,
        action.input_root_digest.as_ref(),
        "Action.input_root_digest",
    )?;
    meta.input_fetch_start_timestamp = Some(SystemTime::now().into());
    let command_bytes = ctx
        .client
        .batch_read(&[command_digest])
        .await?
        .remove(&command_digest)
        .ok_or(WorkerError::MissingInput(command_digest))?;
    let cmd = Command::decode(command_bytes).map_err(|e| WorkerError::Invalid {
        what: "Command",
        reason: e.to_string(),
    })?;
    if cmd.arguments.is_empty() {
        return Err(WorkerError::Invalid {
            what: "Command",
            reason: "no arguments".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(io(format!("mkdir {}", dir.display())))?;
    let root = dir.join("root");
    stage(&ctx.client, &ctx.cache, &input_root, &root).await?;
    let wd_rel = within_root("", &cmd.working_directory).ok_or_else(|| WorkerError::Escape {
        path: cmd.working_directory.clone(),
        reason: "working directory leaves the input root".into(),
    })?;
    let workdir = root.join(&wd_rel);
    std::fs::create_dir_all(&workdir).map_err(io(format!("mkdir {}", workdir.display())))?;
    for p in cmd
        .output_paths
        .iter()
        .chain(&cmd.output_files)
        .chain(&cmd.output_directories)
    {
        let rel = within_root(&wd_rel, p).ok_or_else(|| WorkerError::Escape {
            path: p.clone(),
            reason: "leaves the action directory".into(),
        })?;
        if let Some((parent, _)) = rel.rsplit_once('/') {
            std::fs::create_dir_all(root.join(parent))
                .map_err(io(format!("mkdir parent of {p}")))?;
        }
    }
    meta.input_fetch_completed_timestamp = Some(SystemTime::now().into());
    let timeout = action
        .timeout
        .as_ref()
        .map_or(Duration::from_secs(600), |t| {
            Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
        });
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let ran = run(
        &cmd, &workdir, &stdout, &stderr, timeout, ctx.limits, cancel,
    )
    .await?;
    meta.execution_start_timestamp = Some(ran.started.into());
    meta.execution_completed_timestamp = Some(ran.finished.into());
    meta.virtual_execution_duration = ran
        .finished
        .duration_since(ran.started)
        .ok()
        .and_then(|d| prost_types::Duration::try_from(d).ok());
    if ran.cancelled {
        return Ok(LeaseOutcome {
            result: None,
            status: status(tonic::Code::Cancelled, "cancelled"),
        });
    }
    meta.output_upload_start_timestamp = Some(SystemTime::now().into());
    let (cmd2, root2, so, se) = (cmd.clone(), root.clone(), stdout.clone(), stderr.clone());
    let captured = tokio::task::spawn_blocking(move || -> Result<_, WorkerError> {
        // Timed-out actions still return whatever stdout/stderr they wrote, but no outputs.
        let mut c = if ran.timed_out {
            Default::default()
        } else {
            capture(function, &cmd2, &root2)?
        };
        let (out_d, out_src) = hash_file(function, &so)?;
        let (err_d, err_src) = hash_file(function, &se)?;
        c.result.stdout_digest = Some(out_d.to_proto());
        c.result.stderr_digest = Some(err_d.to_proto());
        c.blobs.push((out_d, out_src));
        c.blobs.push((err_d, err_src));
        Ok(c)
    })
    .await
    .map_err(|e| WorkerError::Invalid {
        what: "capture task",
        reason: e.to_string(),
    })??;
    let mut result = captured.result;
    ctx.client.upload(captured.blobs).await?;
    result.exit_code = ran.exit_code;
    meta.output_upload_completed_timestamp = Some(SystemTime::now().into());
    meta.worker_completed_timestamp = Some(SystemTime::now().into());
    result.execution_metadata = Some(meta);
    let status = if ran.timed_out {
        status(
            tonic::Code::DeadlineExceeded,
            format!("action timed out after {}s", timeout.as_secs_f64()),
        )
    } else {
        status(tonic::Code::Ok, "")
    };
    Ok(LeaseOutcome {
        result: Some(result),
        status,
    })
}

/// Removes an action directory, making read-only directories writable if the first try fails.
fn remove_tree(dir: &std::path::Path) {
    if std::fs::remove_dir_all(dir).is_ok() {
        return;
    }
    fn chmod_dirs(p: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::symlink_metadata(p) {
            if m.is_dir() {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
                for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                    chmod_dirs(&e.path());
                }
            }
        }
    }
    chmod_dirs(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot remove action directory");
    }
}
