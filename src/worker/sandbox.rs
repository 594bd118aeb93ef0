//! The action sandbox, worker side: every action runs as an unprivileged user in a mount
//! namespace of its own where the server's data dir and sockets (and the worker's work dir)
//! are covered by empty tmpfs mounts, every mount is read-only, and only the action's input
//! root (plus a private `/tmp`) is writable. So an action cannot open `bots.sock` or
//! `kiln.sock` (it cannot even see them), register as a bot, forge results, read the store or
//! the worker's cache, or change a cached input file (they are the worker's, mode 0444).
//!
//! How: the worker re-executes itself as a helper, `kiln action-sandbox ... -- ARGV` (hidden
//! subcommand, `sandbox_helper.rs`), which unshares the mount namespace (and a user namespace
//! when the worker is not root), sets up the mounts, drops privileges and execs the command.
//! Why a re-executed helper and not bubblewrap or a `pre_exec` hook: `pre_exec` is `unsafe`
//! (only `src/storage/sys` may use it) and runs in a forked child of a multi-threaded
//! process; a user namespace needs a single-threaded caller; the helper is a fresh
//! single-threaded process that does everything with safe nix/rustix calls. bubblewrap would
//! add a runtime dependency every host must install, for the same few mount calls. The helper
//! tells the worker over its stdin, a Unix socket, once it is set up (`ok <mount namespace
//! inode>` or `error: ...`), so a setup failure is an INTERNAL error of the lease, never an
//! exit code of the action, and the reaper (`reaper.rs`) learns the namespace that marks the
//! action's processes. Only then does the worker send the command, its environment and its
//! working directory (`spec.rs`): the helper runs with an environment of the worker's making
//! (empty but for one allocator setting) in a directory of the worker's, so nothing of the
//! action reaches it while it is privileged.
//!
//! The worker starts these helpers ahead of their actions, two per slot, each for an action
//! directory made then (`prestart.rs`): all of the above happens before the action arrives,
//! and the helper is sent only the command, environment and working directory. With
//! `--isolation namespaces`, or when a helper started ahead failed, an action starts its own.
//!
//! User: `--action-user` (a name or `uid[:gid]`), default `nobody` when the worker is root.
//! Running actions as root needs `--allow-root-actions` (a root action could undo the mounts
//! and reach the sockets). A worker that is not root cannot switch users: its actions run as
//! its own user inside a user namespace (unprivileged user namespaces must be allowed), and
//! `--action-user` must then name that user. Staged directories are chowned to the action
//! user so it can create outputs; staged files stay the worker's read-only hardlinks.
//!
//! Network: by default (`--action-network none`) the helper also unshares a network namespace
//! and brings its loopback up, so an action reaches neither the server's TCP ports (where,
//! without auth, it could write the action cache) nor the network; `--action-network host`
//! shares the worker's network. `--isolation namespaces` adds PID, IPC and UTS namespaces.
//!
//! Limits: concurrent actions share the action user, so without a PID
//! namespace they can see (and signal) each other's processes. A socket outside the data dir
//! (an absolute `server.unix_socket`) must be hidden with `--action-hide`.

use super::error::{WorkerError, io};
use super::sandbox_helper::SETUP_FAILED;
use super::stage::Owner;
use std::io::Read;
use std::path::{Path, PathBuf};

/// How actions are confined; see the module doc.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// The `kiln` executable that runs `kiln action-sandbox` (normally the worker's own).
    pub helper: PathBuf,
    /// uid actions run as.
    pub uid: u32,
    /// gid actions run as.
    pub gid: u32,
    /// Directories covered by an empty tmpfs: data dir, socket dirs, the work dir, extras.
    pub hide: Vec<PathBuf>,
    /// Extra directories actions may write (`--action-writable`), e.g. a shared scratch dir.
    pub writable: Vec<PathBuf>,
    /// Give each action a network namespace of its own (only a loopback interface), so it
    /// cannot reach the server's TCP port or anything else on the network
    /// (`--action-network none`, the default).
    pub private_network: bool,
}

/// The directories of one action the sandbox needs.
pub struct Place<'a> {
    /// The input root: the only writable directory of the action's own.
    pub root: &'a Path,
    /// The private directory bound over /tmp.
    pub tmp: &'a Path,
    /// The command's working directory.
    pub workdir: &'a Path,
}

/// Resolves `--action-user` (`None`: `nobody` for a root worker, the worker's own user
/// otherwise) to (uid, gid), refusing root unless `allow_root`.
pub fn resolve_user(spec: Option<&str>, allow_root: bool) -> Result<(u32, u32), WorkerError> {
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let bad = |reason: String| WorkerError::Invalid {
        what: "--action-user",
        reason,
    };
    let wanted = match spec {
        None if me.0 != 0 => me,
        None => lookup("nobody")?,
        Some(s) => match s.split_once(':') {
            Some((u, g)) => match (u.parse(), g.parse()) {
                (Ok(u), Ok(g)) => (u, g),
                _ => return Err(bad(format!("{s:?} is not uid:gid"))),
            },
            None => match s.parse::<u32>() {
                Ok(u) => (u, u),
                Err(_) => lookup(s)?,
            },
        },
    };
    if me.0 != 0 && wanted != me {
        return Err(bad(format!(
            "a worker running as uid {} cannot run actions as {}:{} (needs root)",
            me.0, wanted.0, wanted.1
        )));
    }
    if me.0 == 0 && wanted.0 == 0 && !allow_root {
        return Err(bad(
            "actions would run as root, which can undo the sandbox and reach the server's \
             sockets; pass --allow-root-actions to accept that"
                .into(),
        ));
    }
    Ok(wanted)
}

fn lookup(name: &str) -> Result<(u32, u32), WorkerError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        Ok(None) => Err(WorkerError::Invalid {
            what: "--action-user",
            reason: format!("no user {name:?} (give uid:gid instead)"),
        }),
        Err(e) => Err(WorkerError::Invalid {
            what: "--action-user",
            reason: format!("cannot look up {name:?}: {e}"),
        }),
    }
}

impl Sandbox {
    /// Owner to give the directories staged for an action (`None`: the worker's own user).
    pub fn owner(&self) -> Owner {
        (self.uid != rustix::process::geteuid().as_raw()).then_some((self.uid, self.gid))
    }

    /// The helper command that sets up the sandbox for `place` (a new `/proc` when
    /// `new_proc`), reports, and then reads the command on its stdin (`spec.rs`). The
    /// caller gives it a socket as stdin, stdout/stderr and a working directory of the
    /// worker's.
    ///
    /// Its environment is empty but for one allocator setting: mimalloc commits its first
    /// arena eagerly and asks for transparent huge pages for it, so in a process that lives a
    /// few milliseconds the first allocation zeroes a whole 2 MiB page (`perf` put 8% of a
    /// no-op action load's CPU in that zeroing). Committing on demand asks for no huge page
    /// (with THP `madvise`, the common setting, it gets none) and,
    /// unlike `MIMALLOC_ALLOW_THP=0` (a `prctl` that the exec'd command would inherit), leaves
    /// the action the host's THP setting. The command's environment is the action's alone
    /// (`sandbox_helper.rs`).
    pub fn command(&self, place: &Place<'_>, new_proc: bool) -> std::process::Command {
        let mut c = std::process::Command::new(&self.helper);
        c.env_clear().env("MIMALLOC_ARENA_EAGER_COMMIT", "0");
        c.arg("action-sandbox")
            .arg("--uid")
            .arg(self.uid.to_string())
            .arg("--gid")
            .arg(self.gid.to_string())
            .arg("--root")
            .arg(place.root)
            .arg("--tmp")
            .arg(place.tmp)
            .arg("--workdir")
            .arg(place.workdir);
        for h in &self.hide {
            c.arg("--hide").arg(h);
        }
        for w in &self.writable {
            c.arg("--writable").arg(w);
        }
        if new_proc {
            c.arg("--new-proc");
        }
        if self.private_network {
            c.arg("--private-network");
        }
        c
    }

    /// Sets up a sandbox once at worker start and checks it (user, writable root, hidden
    /// directories), so a host that cannot run it fails at start with the reason.
    pub async fn probe(&self, actions_dir: &Path) -> Result<(), WorkerError> {
        let dir = actions_dir.join(format!("probe-{}", uuid::Uuid::new_v4()));
        let (root, tmp) = (dir.join("root"), dir.join("tmp"));
        for d in [&root, &tmp] {
            std::fs::create_dir_all(d).map_err(io(format!("mkdir {}", d.display())))?;
            if let Some((uid, gid)) = self.owner() {
                std::os::unix::fs::chown(d, Some(uid), Some(gid))
                    .map_err(io(format!("chown {}", d.display())))?;
            }
        }
        let place = Place {
            root: &root,
            tmp: &tmp,
            workdir: &root,
        };
        let (reader, writer) = std::io::pipe().map_err(io("pipe"))?;
        let mut c = self.command(&place, false);
        c.arg("--probe");
        c.stdin(writer).stdout(std::process::Stdio::null());
        let mut child = tokio::process::Command::from(c)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("run {}", self.helper.display())))?;
        let report = read_report(reader).await;
        let status = child.wait().await.map_err(io("wait for the sandbox probe"));
        let _ = std::fs::remove_dir_all(&dir);
        let ns = report.map_err(|e| WorkerError::Sandbox(format!("probe: {e}")))?;
        if !status?.success() {
            return Err(WorkerError::Sandbox("probe exited with a failure".into()));
        }
        tracing::info!(
            uid = self.uid,
            gid = self.gid,
            hidden = ?self.hide,
            mount_ns = ns,
            "actions run sandboxed"
        );
        Ok(())
    }
}

/// Reads the helper's report to its end: `Ok(mount namespace inode)` or the reason it
/// failed.
pub async fn read_report(mut reader: std::io::PipeReader) -> Result<u64, String> {
    let text = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        (&mut reader).take(4096).read_to_end(&mut buf).map(|_| buf)
    })
    .await
    .map_err(|e| format!("report reader: {e}"))?
    .map_err(|e| format!("read report: {e}"))?;
    parse_report(&String::from_utf8_lossy(&text))
}

/// A helper's report: `Ok(mount namespace inode)` from `ok <inode>`, or the reason it failed.
pub fn parse_report(text: &str) -> Result<u64, String> {
    let line = text.trim();
    if let Some(ns) = line.strip_prefix("ok ") {
        return ns
            .parse()
            .map_err(|_| format!("bad report {line:?} from the sandbox helper"));
    }
    Err(match line.strip_prefix("error: ") {
        Some(reason) => reason.to_string(),
        None if line.is_empty() => format!(
            "the sandbox helper ended without a report (exit {SETUP_FAILED} means setup failed)"
        ),
        None => format!("bad report {line:?} from the sandbox helper"),
    })
}
