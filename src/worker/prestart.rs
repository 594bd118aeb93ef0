//! Sandbox helpers started ahead of their actions.
//!
//! Starting an action's sandbox is most of a short action's time: the helper's exec (kiln is a
//! large binary to load and relocate), the namespaces, and a remount of every mount read-only
//! (3.6 ms of a 6 ms no-op round trip, measured in tuning/RESULTS.md). None of it depends on
//! the action but its directory, so the worker starts one helper per slot ahead, for an action
//! directory it creates then: the helper sets everything up, binds the directory that will
//! hold the input root (`box/`, empty yet; staging builds `box/root` in it later, which the
//! bind shows), drops privileges and reports. When an action arrives its slot takes a ready
//! helper, stages the inputs into that directory, and sends the helper only what is left: the
//! working directory, the command and the environment (`spec.rs`). The helper then changes
//! directory and execs. A new helper is started as each one is taken.
//!
//! What the action sees is what a helper started for it would show: the same mounts, the same
//! user, and only its own directories writable (`box/` is the worker's and read-only to the
//! action user; `box/root` and `tmp/` are the action's). Its stdout and stderr are the files
//! `stdout` and `stderr` of the directory, given to the helper when it starts.
//!
//! Used with the sandbox and without `--isolation namespaces` (there each action starts its
//! own helper, in the namespaces made for it: `isolation.rs`). An action waits for a helper
//! still setting up (it started earlier than a new one would); one that failed is logged and
//! the action starts its own (`spawn_helper`, also what every helper is started with).

use super::error::{WorkerError, io};
use super::isolation::{self, Isolation};
use super::reaper;
use super::run::{Limits, apply_limits, create_outputs};
use super::sandbox::{Place, Sandbox, parse_report};
use super::spec::Spec;
use super::stage::Owner;
use rustix::process::Pid;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a starting helper may take to report before it is given up (an action never
/// waits this long: it waits at most for a helper already started).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a helper started ahead may wait for its action. Its mounts and hidden directories
/// are those of its start (a directory to hide made later, or a mount removed meanwhile, is
/// not seen): an older one is dropped and the action starts its own.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// How long a helper has to take its command before the action gives up on it (it reads it
/// at once; one that does not was stopped or is gone) and starts a helper of its own.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory under an action directory in which the input root (`box/root`) is staged,
/// and which a helper started ahead binds.
pub const BOX: &str = "box";

/// A helper set up for an action directory, waiting for its command.
pub struct Prestarted {
    dir: PathBuf,
    child: Option<tokio::process::Child>,
    sock: Option<UnixStream>,
    id: u64,
    /// The directory belongs to an action now (it removes it after checking its input trees
    /// back in), not to this helper.
    adopted: bool,
    /// When it was started: an idle helper's view of the mounts ages (see [`MAX_IDLE`]).
    born: Instant,
}

/// A pre-started helper that was handed its command.
pub struct Started {
    /// The helper, now the command.
    pub child: tokio::process::Child,
    /// Its reaper id.
    pub action: u64,
}

impl Prestarted {
    /// The action directory: `box/` (where the input root goes), `tmp/`, `stdout`, `stderr`.
    /// The action that takes the helper owns it from then on (it removes it).
    pub fn adopt_dir(&mut self) -> PathBuf {
        self.adopted = true;
        self.dir.clone()
    }

    /// The helper's pid (its process group too).
    pub fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .and_then(|p| Pid::from_raw(p as i32))
    }

    /// Hands the helper its command and waits until it is about to exec it (its end of the
    /// socket closes) or says why it cannot.
    pub async fn start(mut self, spec: &Spec) -> Result<Started, WorkerError> {
        let bytes = spec.encode().map_err(|e| WorkerError::Invalid {
            what: "Command",
            reason: e.to_string(),
        })?;
        let mut sock = self.sock.take().expect("a helper is started once");
        let answer = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            sock.set_write_timeout(Some(HAND_OVER_TIMEOUT))?;
            sock.set_read_timeout(Some(HAND_OVER_TIMEOUT))?;
            sock.write_all(&bytes)?;
            sock.shutdown(std::net::Shutdown::Write)?;
            let mut answer = String::new();
            (&mut sock).take(4096).read_to_string(&mut answer)?;
            Ok(answer)
        })
        .await
        .map_err(|e| WorkerError::Sandbox(format!("helper hand-over: {e}")))?
        .map_err(|e| WorkerError::Sandbox(format!("hand the command to the helper: {e}")))?;
        let answer = answer.trim();
        if !answer.is_empty() {
            let reason = answer.strip_prefix("error: ").unwrap_or(answer);
            return Err(WorkerError::Sandbox(reason.to_string()));
        }
        let child = self.child.take().expect("a helper is started once");
        Ok(Started {
            child,
            action: self.id,
        })
    }
}

impl Drop for Prestarted {
    fn drop(&mut self) {
        // Never handed a command (the worker stops, the action failed before running, or the
        // helper is too old): the helper goes, and the directory made for it. The sweep and
        // the removal block: on a blocking thread when there is a runtime.
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let (id, dir, adopted) = (self.id, self.dir.clone(), self.adopted);
            let clean = move || {
                reaper::global().finish(id);
                drop(child);
                if !adopted {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(clean)),
                Err(_) => clean(),
            }
        }
    }
}

/// The helpers started ahead for one worker: two per slot, so that one is ready when the
/// next action comes however quickly (a helper takes a few milliseconds of CPU to set up, on
/// the cores the running actions use).
pub struct Prestarts {
    sandbox: Arc<Sandbox>,
    limits: Limits,
    actions_dir: PathBuf,
    size: usize,
    queue: Mutex<VecDeque<tokio::task::JoinHandle<Result<Prestarted, WorkerError>>>>,
}

impl Prestarts {
    /// Starts `size` helpers for actions under `actions_dir`, each under `limits`.
    pub fn new(
        sandbox: Arc<Sandbox>,
        limits: Limits,
        actions_dir: PathBuf,
        size: usize,
    ) -> Arc<Self> {
        let me = Arc::new(Self {
            sandbox,
            limits,
            actions_dir,
            size: size.max(1),
            queue: Mutex::default(),
        });
        me.refill();
        me
    }

    fn refill(&self) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        while q.len() < self.size {
            let (sandbox, limits, dir) = (
                Arc::clone(&self.sandbox),
                self.limits.clone(),
                self.actions_dir.join(uuid::Uuid::new_v4().to_string()),
            );
            q.push_back(tokio::spawn(start_one(sandbox, limits, dir)));
        }
    }

    /// The oldest helper started (waiting for it to be ready), and another started in its
    /// place. `None` if it failed (logged), has exited, or waited longer than [`MAX_IDLE`]:
    /// the action starts a helper of its own.
    pub async fn take(&self) -> Option<Prestarted> {
        let next = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        self.refill();
        let mut p = match next?.await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "a sandbox helper started ahead failed");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "starting a sandbox helper ahead");
                return None;
            }
        };
        let alive = p
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        (alive && p.born.elapsed() < MAX_IDLE).then_some(p)
    }
}

/// Makes the action directory `dir` and starts a helper for it; returns once it is set up.
async fn start_one(
    sandbox: Arc<Sandbox>,
    limits: Limits,
    dir: PathBuf,
) -> Result<Prestarted, WorkerError> {
    let (boxed, tmp) = (dir.join(BOX), dir.join("tmp"));
    let place = Place {
        root: &boxed,
        tmp: &tmp,
        workdir: &boxed,
    };
    let started = async {
        make_dir(&dir, sandbox.owner())?;
        let outputs = create_outputs(&dir.join("stdout"), &dir.join("stderr"))?;
        spawn_helper(&sandbox, &limits, &place, outputs, dir.clone(), false).await
    }
    .await;
    if started.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    started
}

/// Makes the action directory `dir`: `box/` (the worker's, mode 0755 whatever the umask: the
/// action user must not be able to replace the input root staged in it, `box/root`) and
/// `tmp/` (the action's private /tmp, given to `owner`). Every action directory has this
/// layout, whether its helper was started ahead or not.
pub fn make_dir(dir: &std::path::Path, owner: Owner) -> Result<(), WorkerError> {
    use std::os::unix::fs::PermissionsExt;
    let (boxed, tmp) = (dir.join(BOX), dir.join("tmp"));
    std::fs::create_dir_all(&boxed).map_err(io(format!("mkdir {}", boxed.display())))?;
    for d in [dir, boxed.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("chmod {}", d.display())))?;
    }
    std::fs::create_dir(&tmp).map_err(io(format!("mkdir {}", tmp.display())))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", tmp.display())))?;
    }
    Ok(())
}

/// Starts a sandbox helper for `place` in the action directory `dir` (its working directory
/// until it has its command; `owned` when the directory belongs to an action already), with
/// `out` and `err` as the command's stdout and stderr; returns once it has set up and dropped
/// its privileges. The helper runs with an environment of the worker's (`Sandbox::command`):
/// the action's goes only to the command (see `sandbox_helper.rs`).
pub async fn spawn_helper(
    sandbox: &Sandbox,
    limits: &Limits,
    place: &Place<'_>,
    (out, err): (std::fs::File, std::fs::File),
    dir: PathBuf,
    owned: bool,
) -> Result<Prestarted, WorkerError> {
    let (mine, theirs) = UnixStream::pair().map_err(io("helper socket"))?;
    let namespaces = limits.isolation == Isolation::Namespaces;
    let mut c = sandbox.command(place, namespaces);
    c.stdin(std::os::fd::OwnedFd::from(theirs))
        .stdout(out)
        .stderr(err)
        .current_dir(&dir)
        .process_group(0);
    let spawned = if namespaces {
        isolation::spawn(c).await
    } else {
        reaper::global().spawn(c)
    };
    let (child, id) =
        spawned.map_err(|e| WorkerError::Sandbox(format!("cannot start the helper: {e}")))?;
    let mut me = Prestarted {
        dir,
        child: Some(child),
        sock: None,
        id,
        adopted: owned,
        born: Instant::now(),
    };
    // Right after the spawn: the helper is still loading (it drops privileges milliseconds
    // later, after which it could refuse them).
    if let Some(pid) = me.pid() {
        apply_limits(pid, limits);
    }
    let (line, sock) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        mine.set_read_timeout(Some(START_TIMEOUT))?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 4096 && (&mine).read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        Ok((String::from_utf8_lossy(&line).into_owned(), mine))
    })
    .await
    .map_err(|e| WorkerError::Sandbox(format!("helper report: {e}")))?
    .map_err(|e| WorkerError::Sandbox(format!("read the helper's report: {e}")))?;
    let ns = parse_report(&line).map_err(WorkerError::Sandbox)?;
    reaper::global().set_mount_ns(id, ns);
    me.sock = Some(sock);
    Ok(me)
}
