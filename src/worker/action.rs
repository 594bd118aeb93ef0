//! Runs one leased action end to end: fetch the Command, stage inputs, run, capture and upload
//! outputs, and describe the outcome as the lease's result and status.
// output_files/output_directories are what REAPI v2.0 clients (Bazel 2.x) declare.
#![allow(deprecated)]

use super::beneath::create_dirs;
use super::cache::FileCache;
use super::capture::{Captured, capture, hash_file};
use super::client::Client;
use super::error::WorkerError;
use super::prestart::{BOX, Prestarted, Prestarts, make_dir};
use super::run::{Limits, run};
use super::sandbox::Place;
use super::stage::stage;
use crate::digest::{Digest, DigestFunction};
use crate::paths::within_root;
use crate::proto::google::rpc;
use crate::proto::reapi::{Action, ActionResult, Command, ExecutedActionMetadata};
use prost::Message;
use std::path::{Path, PathBuf};
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
    /// Sandbox helpers started ahead of their actions (`prestart.rs`), when used.
    pub prestarts: Option<Arc<Prestarts>>,
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
                    subject: format!("blobs/{}", d.resource_path()),
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
pub async fn execute(
    ctx: &Context,
    action: Action,
    function: DigestFunction,
    cancel: watch::Receiver<bool>,
) -> LeaseOutcome {
    // Taking a helper started ahead may wait for it: worker time, in the result's metadata.
    let worker_start = SystemTime::now();
    let mut prestarted = match &ctx.prestarts {
        Some(p) => p.take().await,
        None => None,
    };
    let dir = match &mut prestarted {
        Some(p) => p.adopt_dir(),
        None => ctx.actions_dir.join(uuid::Uuid::new_v4().to_string()),
    };
    let root = dir.join(BOX).join("root");
    let started = (worker_start, prestarted);
    let outcome = match execute_in(ctx, &action, function, &dir, &root, started, cancel).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "action failed");
            LeaseOutcome {
                result: None,
                status: error_status(&e),
            }
        }
    };
    let cache = ctx.cache.clone();
    tokio::task::spawn_blocking(move || {
        super::stage::check_in(&cache, &root);
        remove_tree(&dir);
    });
    outcome
}

fn invalid(what: &'static str, reason: impl std::fmt::Display) -> WorkerError {
    WorkerError::Invalid {
        what,
        reason: reason.to_string(),
    }
}

/// Fetches the Command, stages the input root under `dir/root`, and creates the working
/// directory and the parents of declared outputs. Returns the command, root and working dir.
async fn prepare(
    ctx: &Context,
    action: &Action,
    function: DigestFunction,
    dir: &Path,
    root: &Path,
    prestarted: bool,
) -> Result<(Command, PathBuf, PathBuf), WorkerError> {
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
    let mut blobs = ctx.cache.messages(&ctx.client, &[command_digest]).await?;
    let bytes = blobs
        .remove(&command_digest)
        .ok_or(WorkerError::MissingInput(command_digest))?;
    let cmd = Command::decode(bytes).map_err(|e| invalid("Command", e))?;
    if cmd.arguments.is_empty() {
        return Err(invalid("Command", "no arguments"));
    }
    let owner = ctx.limits.sandbox.as_ref().and_then(|s| s.owner());
    if !prestarted {
        make_dir(dir, owner)?;
    }
    let root = root.to_path_buf();
    let fresh = super::stage::fresh_paths(&cmd);
    stage(&ctx.client, &ctx.cache, &input_root, &root, owner, &fresh).await?;
    let escape = |path: &str, reason: &str| WorkerError::Escape {
        path: path.to_string(),
        reason: reason.into(),
    };
    let wd_rel = within_root("", &cmd.working_directory).ok_or_else(|| {
        escape(
            &cmd.working_directory,
            "working directory leaves the input root",
        )
    })?;
    // Created without following symlinks: the input tree may hold any symlink.
    create_dirs(&root, &wd_rel, owner, &cmd.working_directory)?;
    let workdir = root.join(&wd_rel);
    for p in cmd
        .output_paths
        .iter()
        .chain(&cmd.output_files)
        .chain(&cmd.output_directories)
    {
        let rel =
            within_root(&wd_rel, p).ok_or_else(|| escape(p, "leaves the action directory"))?;
        if let Some((parent, _)) = rel.rsplit_once('/') {
            create_dirs(&root, parent, owner, p)?;
        }
    }
    Ok((cmd, root, workdir))
}

/// Captures outputs (none for a timed-out run) plus stdout/stderr.
async fn collect(
    function: DigestFunction,
    cmd: Command,
    root: PathBuf,
    dir: &Path,
    timed_out: bool,
) -> Result<Captured, WorkerError> {
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    tokio::task::spawn_blocking(move || -> Result<_, WorkerError> {
        // Timed-out actions still return whatever stdout/stderr they wrote, but no outputs.
        let mut c = if timed_out {
            Captured::default()
        } else {
            capture(function, &cmd, &root)?
        };
        let (out_d, out_src) = hash_file(function, &stdout)?;
        let (err_d, err_src) = hash_file(function, &stderr)?;
        c.result.stdout_digest = Some(out_d.to_proto());
        c.result.stderr_digest = Some(err_d.to_proto());
        c.blobs.push((out_d, out_src));
        c.blobs.push((err_d, err_src));
        Ok(c)
    })
    .await
    .map_err(|e| invalid("capture task", e))?
}

async fn execute_in(
    ctx: &Context,
    action: &Action,
    function: DigestFunction,
    dir: &Path,
    root: &Path,
    (worker_start, prestarted): (SystemTime, Option<Prestarted>),
    cancel: watch::Receiver<bool>,
) -> Result<LeaseOutcome, WorkerError> {
    let now = || Some(SystemTime::now().into());
    let mut meta = ExecutedActionMetadata {
        worker_start_timestamp: Some(worker_start.into()),
        input_fetch_start_timestamp: now(),
        ..Default::default()
    };
    let (cmd, root, workdir) =
        prepare(ctx, action, function, dir, root, prestarted.is_some()).await?;
    meta.input_fetch_completed_timestamp = now();
    let timeout = action
        .timeout
        .as_ref()
        .map_or(Duration::from_mins(10), |t| {
            Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
        });
    let tmp = dir.join("tmp");
    let place = Place {
        root: &root,
        tmp: &tmp,
        workdir: &workdir,
    };
    let ran = run(
        &cmd,
        &place,
        &dir.join("stdout"),
        &dir.join("stderr"),
        timeout,
        &ctx.limits,
        prestarted,
        cancel,
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
    meta.output_upload_start_timestamp = now();
    let captured = collect(function, cmd, root, dir, ran.timed_out).await?;
    ctx.client.upload(captured.blobs).await?;
    let mut result = captured.result;
    result.exit_code = ran.exit_code;
    meta.output_upload_completed_timestamp = now();
    meta.worker_completed_timestamp = now();
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
    if std::fs::remove_dir_all(dir).is_ok() || std::fs::symlink_metadata(dir).is_err() {
        return;
    }
    chmod_dirs(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot remove action directory");
    }
}

/// Makes every directory under `p` writable (actions may leave read-only ones behind).
/// Iterative: an action can leave a tree deeper than the worker's stack would allow.
fn chmod_dirs(p: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![p.to_path_buf()];
    while let Some(p) = stack.pop() {
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
            stack.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
}
