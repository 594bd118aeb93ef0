//! Runs one command: exactly its argv, environment and working directory, stdout/stderr to
//! files, in the action sandbox (`sandbox.rs`) and its own process group. At the timeout, on
//! cancellation and after exit the group is killed and then every other process the action
//! started, found by the reaper (`reaper.rs`), so a `setsid` or double-forked child dies with
//! it too. Resource limits are applied to the child with prlimit(2) right after spawn (std
//! offers no safe pre-exec hook; the window between spawn and prlimit is a few microseconds
//! of the child's startup, spent in the sandbox helper before it execs the command).

use super::error::{WorkerError, io};
use super::isolation::Isolation;
use super::prestart::{Prestarted, Started, spawn_helper};
use super::reaper;
use super::sandbox::{Place, Sandbox};
use super::spec::Spec;
use crate::proto::reapi::Command;
use rustix::process::{Pid, Resource, Rlimit, Signal, kill_process_group, prlimit};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Resource limits applied to every action (0 = unlimited).
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// RLIMIT_AS in bytes.
    pub memory_bytes: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_NPROC is per user, so it is not applied; RLIMIT_CORE is always 0 (no core dumps).
    pub core_dumps: bool,
    /// Namespaces for each action (see `isolation.rs`).
    pub isolation: Isolation,
    /// The sandbox every action runs in (`sandbox.rs`). `kiln worker` always sets it;
    /// `None` (the default, for workers embedded in tests) runs actions as the worker's user.
    pub sandbox: Option<Arc<Sandbox>>,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// Exit code (128 + signal for a killed process).
    pub exit_code: i32,
    /// Killed at the timeout.
    pub timed_out: bool,
    /// Killed because the lease was cancelled.
    pub cancelled: bool,
    /// When the process started and ended.
    pub started: SystemTime,
    /// When the process ended.
    pub finished: SystemTime,
}

fn program(argv0: &str, workdir: &Path) -> PathBuf {
    // A relative path with a slash is relative to the working directory; a bare name is
    // looked up in the action's PATH by the OS.
    if argv0.contains('/') && !argv0.starts_with('/') {
        workdir.join(argv0)
    } else {
        PathBuf::from(argv0)
    }
}

pub(super) fn apply_limits(pid: Pid, limits: &Limits) {
    let set = |r: Resource, v: u64| {
        if let Err(e) = prlimit(
            Some(pid),
            r,
            Rlimit {
                current: Some(v),
                maximum: Some(v),
            },
        ) {
            tracing::warn!(error = %e, ?r, "cannot apply resource limit");
        }
    };
    if limits.memory_bytes > 0 {
        set(Resource::As, limits.memory_bytes);
    }
    if limits.open_files > 0 {
        set(Resource::Nofile, limits.open_files);
    }
    if !limits.core_dumps {
        set(Resource::Core, 0);
    }
}

/// SIGKILLs a process group and every process left of the action when dropped (also when
/// the future running the action is dropped).
struct Killer {
    group: Option<Pid>,
    action: u64,
}

impl Drop for Killer {
    fn drop(&mut self) {
        if let Some(g) = self.group {
            let _ = kill_process_group(g, Signal::KILL);
        }
        reaper::global().finish(self.action);
    }
}

/// Runs `cmd` in `place`, writing stdout/stderr to the given files: through a sandbox helper
/// when `limits` have a sandbox (the one started ahead for this action directory, whose
/// stdout and stderr are those files already, or one started now), else directly.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cmd: &Command,
    place: &Place<'_>,
    stdout: &Path,
    stderr: &Path,
    timeout: Duration,
    limits: &Limits,
    prestarted: Option<Prestarted>,
    cancel: watch::Receiver<bool>,
) -> Result<RunOutcome, WorkerError> {
    let Some(sandbox) = &limits.sandbox else {
        return run_plain(cmd, place, (stdout, stderr), timeout, limits, cancel).await;
    };
    // A helper of the action's own: its working directory is the action directory (the
    // worker's), never a directory of the input tree.
    let own_helper = || async {
        let (out, err) = create_outputs(stdout, stderr)?;
        let dir = place.tmp.parent().unwrap_or(place.tmp).to_path_buf();
        spawn_helper(sandbox, limits, place, (out, err), dir, true).await
    };
    let was_prestarted = prestarted.is_some();
    let helper = match prestarted {
        Some(pre) => pre,
        None => own_helper().await?,
    };
    let spec = Spec {
        workdir: place.workdir.to_path_buf(),
        program: program(&cmd.arguments[0], place.workdir).into_os_string(),
        args: cmd.arguments[1..].iter().map(Into::into).collect(),
        env: cmd
            .environment_variables
            .iter()
            .map(|e| (e.name.clone().into(), e.value.clone().into()))
            .collect(),
    };
    let started = SystemTime::now();
    let Started { child, action } = match helper.start(&spec).await {
        Ok(s) => s,
        Err(e) if was_prestarted => {
            // Killed or stopped while it waited (actions run as the same user as idle helpers
            // and may signal them): this action starts its own.
            tracing::warn!(error = %e, "a sandbox helper started ahead did not take its command");
            own_helper().await?.start(&spec).await?
        }
        Err(e) => return Err(e),
    };
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    let killer = Killer { group: pid, action };
    wait(child, killer, pid, started, timeout, cancel).await
}

/// Creates (or empties) the files the command's stdout and stderr go to.
pub(super) fn create_outputs(
    stdout: &Path,
    stderr: &Path,
) -> Result<(std::fs::File, std::fs::File), WorkerError> {
    let out = std::fs::File::create(stdout).map_err(io(format!("create {}", stdout.display())))?;
    let err = std::fs::File::create(stderr).map_err(io(format!("create {}", stderr.display())))?;
    Ok((out, err))
}

/// Runs the command as the worker's user, without a sandbox (workers embedded in tests).
async fn run_plain(
    cmd: &Command,
    place: &Place<'_>,
    (stdout, stderr): (&Path, &Path),
    timeout: Duration,
    limits: &Limits,
    cancel: watch::Receiver<bool>,
) -> Result<RunOutcome, WorkerError> {
    let (out, err) = create_outputs(stdout, stderr)?;
    let mut command = std::process::Command::new(program(&cmd.arguments[0], place.workdir));
    command
        .args(&cmd.arguments[1..])
        .stdin(Stdio::null())
        .env_clear()
        .envs(
            cmd.environment_variables
                .iter()
                .map(|e| (&e.name, &e.value)),
        )
        .current_dir(place.workdir)
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let started = SystemTime::now();
    let spawned = reaper::global().spawn(command);
    let (child, action) = match spawned {
        Ok(c) => c,
        Err(e) => {
            // Like a shell: a command that cannot start exits 127 with the reason on stderr.
            let _ = std::fs::write(
                stderr,
                format!("kiln worker: cannot run {:?}: {e}\n", cmd.arguments[0]),
            );
            return Ok(RunOutcome {
                exit_code: 127,
                timed_out: false,
                cancelled: false,
                started,
                finished: SystemTime::now(),
            });
        }
    };
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    // Kills the group and the rest however this function ends, also when its future is
    // dropped (the worker lost its session): on timeout/cancel, and after a normal exit.
    let killer = Killer { group: pid, action };
    if let Some(pid) = pid {
        apply_limits(pid, limits);
    }
    wait(child, killer, pid, started, timeout, cancel).await
}

/// Waits for the action's first process (at most `timeout`, or until cancelled), then kills
/// its group and every process left of it (`killer`).
async fn wait(
    mut child: tokio::process::Child,
    killer: Killer,
    pid: Option<Pid>,
    started: SystemTime,
    timeout: Duration,
    mut cancel: watch::Receiver<bool>,
) -> Result<RunOutcome, WorkerError> {
    let (mut timed_out, mut cancelled) = (false, false);
    let status = tokio::select! {
        s = child.wait() => Some(s),
        () = tokio::time::sleep(timeout) => { timed_out = true; None }
        _ = cancel.wait_for(|c| *c) => { cancelled = true; None }
    };
    if let Some(pid) = pid {
        let _ = kill_process_group(pid, Signal::KILL);
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().await,
    }
    .map_err(io("wait for action"));
    // Every process left (a setsid'd child, a daemon, ...) dies before outputs are read.
    let _ = tokio::task::spawn_blocking(move || drop(killer)).await;
    let status = status?;
    let exit_code = status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    });
    Ok(RunOutcome {
        exit_code,
        timed_out,
        cancelled,
        started,
        finished: SystemTime::now(),
    })
}
