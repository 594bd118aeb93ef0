//! Isolation of actions from the host with Linux namespaces (`--isolation namespaces`).
//!
//! Each action is started from a fresh OS thread that first moves itself into new network,
//! IPC, UTS and PID namespaces; the child inherits them. So an action has no network (no
//! interface but a loopback that is down), no SysV IPC objects of the host, the hostname
//! `kiln-action`, and cannot signal processes outside its PID namespace; when its first
//! process exits, every process left in that namespace is killed. The thread then ends, so
//! no thread of the worker stays in those namespaces.
//!
//! The mount namespace, the action user and a fresh `/proc` for the new PID namespace come
//! from the sandbox helper (`sandbox.rs`), which is the process started here: a mount or user
//! namespace needs a single-threaded caller, which this thread is not. The first process is
//! PID 1 of its namespace:
//! signals it has no handler for (`kill -TERM $$`) are ignored, as for any init.
//! Needs CAP_SYS_ADMIN (the worker running as root, or a systemd unit granting it).

use nix::sched::{CloneFlags, unshare};
use std::io;

/// How actions are isolated from the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// Plain child processes (process group, resource limits, own directory).
    #[default]
    None,
    /// New network, IPC, UTS and PID namespaces per action.
    Namespaces,
}

/// Hostname inside isolated actions.
pub const ACTION_HOSTNAME: &str = "kiln-action";

fn flags() -> CloneFlags {
    CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWPID
}

/// Moves the calling thread into new namespaces (its later children are created in them).
/// A worker that is not root gets CAP_SYS_ADMIN as an ambient capability (systemd
/// `AmbientCapabilities=`); this thread lowers it again, so actions started from it do not
/// inherit it.
fn enter() -> io::Result<()> {
    unshare(flags()).map_err(io::Error::from)?;
    nix::unistd::sethostname(ACTION_HOSTNAME).map_err(io::Error::from)?;
    rustix::thread::configure_capability_in_ambient_set(
        rustix::thread::CapabilitySet::SYS_ADMIN,
        false,
    )
    .map_err(io::Error::from)
}

/// Checks once, at worker start, that namespaces can be created here.
pub fn probe() -> io::Result<()> {
    std::thread::spawn(enter)
        .join()
        .map_err(|_| io::Error::other("namespace probe thread panicked"))?
}

/// Spawns `command` inside new namespaces, from a thread that exists only for this, and
/// registers it with the reaper (returning its id there).
pub async fn spawn(command: std::process::Command) -> io::Result<(tokio::process::Child, u64)> {
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kiln-action-spawn".into())
        .spawn(move || {
            let r = enter().and_then(|()| {
                // The child's reaper belongs to the worker's runtime.
                let _rt = handle.enter();
                super::reaper::global().spawn(command)
            });
            let _ = tx.send(r);
        })?;
    rx.await
        .map_err(|_| io::Error::other("action spawn thread ended without an answer"))?
}
