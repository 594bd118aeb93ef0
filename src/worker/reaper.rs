//! Makes every process an action starts die with it, also one that left the action's process
//! group and session (`setsid`) or was double-forked away from its parent.
//!
//! Which mechanism, and why:
//! - With `--isolation namespaces` each action has its own PID namespace whose init is the
//!   action's first process: when it dies the kernel kills everything else in the namespace.
//! - Always (the fallback that needs no namespace and no cgroup): the worker is a child
//!   subreaper (`PR_SET_CHILD_SUBREAPER`), so an action's orphaned descendants are re-parented
//!   to the worker instead of to init and stay findable under it in `/proc`. Each orphan is
//!   attributed to its action by its mount namespace (every action runs in a mount namespace
//!   of its own, see `sandbox.rs`, whose inode the sandbox reports before it execs). At the
//!   end of an action, and at its timeout or cancellation, [`Reaper::finish`] SIGKILLs, round
//!   after round until none is left, the action's process tree and every orphan under the
//!   worker that belongs to no action still running (its own, and any a process moved to a
//!   namespace of its own), and reaps them.
//!
//! cgroup v2 (`cgroup.kill`) would be simpler but is not usable everywhere the worker runs: in
//! containers `/sys/fs/cgroup` is often read-only or still cgroup v1, and it needs a delegated
//! subtree. The `/proc` walk works wherever `/proc` is mounted.
//!
//! Concurrency contract: spawning an action and registering it happen under one lock, and a
//! sweep holds that lock while it classifies and kills, so a sweep never mistakes a just
//! started action (a direct child of the worker) for an orphan.

use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One running action: its first process and, once the sandbox reported it, its mount
/// namespace.
#[derive(Clone, Copy, Debug)]
struct Running {
    pid: i32,
    mount_ns: Option<u64>,
}

/// The actions running in this worker process.
#[derive(Default)]
pub struct Reaper {
    running: Mutex<HashMap<u64, Running>>,
    next: AtomicU64,
}

/// The reaper of this process (subreaping is a per-process setting).
pub fn global() -> &'static Reaper {
    static REAPER: std::sync::OnceLock<Reaper> = std::sync::OnceLock::new();
    REAPER.get_or_init(Reaper::default)
}

/// Makes the worker the subreaper of its descendants. Call once at start.
pub fn enable() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(Into::into)
}

/// How long a sweep keeps killing before it gives up (with a warning).
const SWEEP_DEADLINE: Duration = Duration::from_secs(10);

/// One process as `/proc/PID/stat` shows it.
struct Proc {
    pid: i32,
    ppid: i32,
    zombie: bool,
}

fn read_proc(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut it = rest.split_ascii_whitespace();
    let state = it.next()?;
    let ppid = it.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        zombie: state == "Z" || state == "X",
    })
}

fn all_procs() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_proc)
        .collect()
}

/// The children of every thread of `pid`, from the `children` files of `/proc` (each read
/// with one read() into `buf`): none when `pid` is gone; `None` (cannot tell) where the
/// kernel has no such files (built without `CONFIG_PROC_CHILDREN`) or a list fills `buf`.
fn children_of(pid: i32, buf: &mut [u8]) -> Option<Vec<i32>> {
    use std::io::Read;
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Some(out);
    };
    // One read of the whole list: the kernel restarts each read() at a list position, so a
    // child that exits between two reads would make it skip one still there.
    for task in tasks.flatten() {
        let mut path = task.path();
        path.push("children");
        match std::fs::File::open(&path).and_then(|mut f| f.read(buf)) {
            // Possibly cut short: the caller reads every process instead.
            Ok(n) if n == buf.len() => return None,
            Ok(n) => out.extend(
                String::from_utf8_lossy(&buf[..n])
                    .split_ascii_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            ),
            // No such file in a task that is still there: a kernel without them.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.parent()?.exists() => {
                return None;
            }
            // A thread that ended meanwhile.
            Err(_) => {}
        }
    }
    Some(out)
}

/// The processes under `me` (its children, theirs, and so on): all a sweep looks at, read
/// without visiting every process of the box (`/proc/*/stat` of each costs about 0.4 ms per
/// sweep on a quiet box, more on a busy one). `None` when it cannot tell (see
/// [`children_of`]): the caller reads every process instead.
///
/// Like the full scan, this sees a snapshot: a process forked while it is read may be missed,
/// which is why a sweep repeats until a round finds nothing.
fn procs_under(me: i32) -> Option<Vec<Proc>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut stack = children_of(me, &mut buf)?;
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if let Some(p) = read_proc(pid) {
            out.push(p);
            stack.extend(children_of(pid, &mut buf)?);
        }
    }
    Some(out)
}

/// The processes a sweep by the worker `me` considers: those under it.
fn procs_for(me: i32) -> Vec<Proc> {
    procs_under(me).unwrap_or_else(all_procs)
}

/// The inode of a process's mount namespace (`None` when it has exited).
pub fn mount_ns(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `command` as an action's first process (killed when its handle is dropped) and
    /// registers it under the returned id, atomically with respect to sweeps. Call within a
    /// tokio runtime.
    pub fn spawn(
        &self,
        command: std::process::Command,
    ) -> std::io::Result<(tokio::process::Child, u64)> {
        let mut running = self.lock();
        let child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            running.insert(
                id,
                Running {
                    pid,
                    mount_ns: None,
                },
            );
        }
        Ok((child, id))
    }

    /// Records the mount namespace the sandbox of action `id` reported.
    pub fn set_mount_ns(&self, id: u64, ns: u64) {
        if let Some(r) = self.lock().get_mut(&id) {
            r.mount_ns = Some(ns);
        }
    }

    /// Kills what is left of action `id` (its first process included, if alive), forgets it,
    /// and reaps orphans. Returns how many processes were killed.
    pub fn finish(&self, id: u64) -> usize {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let start = Instant::now();
        let mut killed = 0;
        let action = self.lock().remove(&id).map(|r| r.pid);
        loop {
            let running = self.lock();
            let (n, busy) = sweep_once(me, action, &running);
            drop(running);
            killed += n;
            if !busy {
                return killed;
            }
            if start.elapsed() > SWEEP_DEADLINE {
                tracing::warn!(killed, "processes of an action survive SIGKILL; giving up");
                return killed;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Reaper {
    /// Reaps orphans of running actions that have exited (zombies re-parented to the worker),
    /// so an action that keeps leaving short-lived orphans does not fill the process table
    /// before it ends. Kills nothing.
    pub fn reap_zombies(&self) {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let running = self.lock();
        let firsts: HashSet<i32> = running.values().map(|r| r.pid).collect();
        for p in procs_for(me) {
            if p.zombie
                && p.ppid == me
                && !firsts.contains(&p.pid)
                && let Some(pid) = Pid::from_raw(p.pid)
            {
                let _ = waitpid(Some(pid), WaitOptions::NOHANG);
            }
        }
    }
}

/// One round: kills the action's tree (from its first process `action`, while that is still
/// an unreaped child) and every unattributed orphan under `me` with their descendants, reaps
/// dead orphans (never `action`: tokio waits for it). Returns (killed, whether anything was
/// found).
fn sweep_once(me: i32, action: Option<i32>, running: &HashMap<u64, Running>) -> (usize, bool) {
    let procs = procs_for(me);
    let firsts: HashSet<i32> = running.values().map(|r| r.pid).collect();
    let live_ns: HashSet<u64> = running.values().filter_map(|r| r.mount_ns).collect();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let zombies: HashSet<i32> = procs.iter().filter(|p| p.zombie).map(|p| p.pid).collect();
    let mut roots: Vec<i32> = procs
        .iter()
        .filter(|p| p.ppid == me && !firsts.contains(&p.pid))
        .filter(|p| {
            Some(p.pid) == action
                || p.zombie
                || mount_ns(p.pid).is_none_or(|ns| !live_ns.contains(&ns))
        })
        .map(|p| p.pid)
        .collect();
    let mut targets = HashSet::new();
    while let Some(p) = roots.pop() {
        if targets.insert(p) {
            roots.extend(children.get(&p).into_iter().flatten().copied());
        }
    }
    let mut found = false;
    let mut killed = 0;
    for &pid in &targets {
        let Some(p) = Pid::from_raw(pid) else {
            continue;
        };
        let orphan = procs.iter().any(|x| x.pid == pid && x.ppid == me);
        if zombies.contains(&pid) {
            // A process whose main thread exited shows as a zombie while its other threads
            // run on: it is killed too (a real zombie ignores the signal).
            let _ = kill_process(p, Signal::KILL);
            if orphan && Some(pid) != action {
                // Ours to reap (tokio only waits for the first processes it spawned).
                let _ = waitpid(Some(p), WaitOptions::NOHANG);
                found = true;
            }
            continue;
        }
        if kill_process(p, Signal::KILL).is_ok() {
            killed += 1;
            found = true;
        }
    }
    (killed, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processes_under_a_process_are_its_children_and_theirs() {
        // sh (a child of this test) starts a sleep (a grandchild) and waits.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.as_mut().expect("stdout")),
            &mut line,
        )
        .expect("read the grandchild's pid");
        let grandchild: i32 = line.trim().parse().expect("a pid");
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let under = procs_under(me).expect("this kernel has /proc/PID/task/TID/children");
        let pids: HashSet<i32> = under.iter().map(|p| p.pid).collect();
        let child = sh.id() as i32;
        let _ = kill_process(Pid::from_raw(grandchild).expect("pid"), Signal::KILL);
        let _ = sh.kill();
        let _ = sh.wait();
        assert!(
            pids.contains(&child),
            "the child {child} is found: {pids:?}"
        );
        assert!(
            pids.contains(&grandchild),
            "the grandchild {grandchild} is found: {pids:?}"
        );
        assert!(
            under.iter().any(|p| p.pid == grandchild && p.ppid == child),
            "with its parent"
        );
    }
}
