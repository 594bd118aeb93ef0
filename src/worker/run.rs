//! Runs one command: exactly its argv, environment and working directory, stdout/stderr to
//! files, in its own process group that is killed at the timeout, on cancellation, and after
//! exit (so stray background processes die with the action). Resource limits are applied to
//! the child with prlimit(2) right after spawn (std offers no safe pre-exec hook; the window
//! between spawn and prlimit is a few microseconds of the child's startup).

use super::error::{WorkerError, io};
use super::isolation::{self, Isolation};
use crate::proto::reapi::Command;
use rustix::process::{Pid, Resource, Rlimit, Signal, kill_process_group, prlimit};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Resource limits applied to every action (0 = unlimited).
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// RLIMIT_AS in bytes.
    pub memory_bytes: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_NPROC is per user, so it is not applied; RLIMIT_CORE is always 0 (no core dumps).
    pub core_dumps: bool,
    /// Namespaces for each action (see `isolation.rs`).
    pub isolation: Isolation,
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

fn apply_limits(pid: Pid, limits: Limits) {
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

/// SIGKILLs a process group when dropped.
struct GroupKiller(Pid);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        let _ = kill_process_group(self.0, Signal::KILL);
    }
}

/// Runs `cmd` in `workdir`, writing stdout/stderr to the given files.
pub async fn run(
    cmd: &Command,
    workdir: &Path,
    stdout: &Path,
    stderr: &Path,
    timeout: Duration,
    limits: Limits,
    mut cancel: watch::Receiver<bool>,
) -> Result<RunOutcome, WorkerError> {
    let out = std::fs::File::create(stdout).map_err(io(format!("create {}", stdout.display())))?;
    let err = std::fs::File::create(stderr).map_err(io(format!("create {}", stderr.display())))?;
    let mut command = std::process::Command::new(program(&cmd.arguments[0], workdir));
    command
        .args(&cmd.arguments[1..])
        .env_clear()
        .envs(
            cmd.environment_variables
                .iter()
                .map(|e| (&e.name, &e.value)),
        )
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let started = SystemTime::now();
    let spawned = match limits.isolation {
        Isolation::None => tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn(),
        Isolation::Namespaces => isolation::spawn(command).await,
    };
    let mut child = match spawned {
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
    // Kills the group however this function ends, also when its future is dropped (the worker
    // lost its session): on timeout/cancel, and after a normal exit to reap stragglers.
    let _group = pid.map(GroupKiller);
    if let Some(pid) = pid {
        apply_limits(pid, limits);
    }
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
    .map_err(io("wait for action"))?;
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
