//! The inside of the action sandbox: `kiln action-sandbox`, which the worker runs as each
//! action's first process (see `sandbox.rs` for what it provides and why it is a re-executed
//! helper). It runs single-threaded, before any runtime starts, does all its setup with safe
//! nix/rustix calls, talks to the worker over its stdin (a Unix socket) and execs the command.
//!
//! Steps: (1) unshare a mount namespace (plus a user namespace mapping only the worker's own
//! ids when the worker is not root); (2) make every mount private and read-only; (3) bind the
//! action's `tmp` directory over `/tmp`, `/var/tmp` and `/dev/shm`; (4) bind extra writable
//! directories; (5) cover each hidden path (server data dir, sockets, the worker's work dir)
//! with an empty read-only tmpfs; (6) bind the directory given as `--root` back at its own
//! path, writable (the input root, or the directory it will be staged in when the helper is
//! started ahead of its action); (7) mount a fresh `/proc` when in a new PID namespace; (8)
//! chdir, drop to the action user (setgroups, setgid, setuid) with no_new_privs; (9) report
//! `ok <mount ns inode>`; (10) read the command, its environment and working directory
//! (`spec.rs`) to the end of stdin, chdir there and exec. A failure before the exec is
//! reported as `error: ...` and the helper exits 125.
//!
//! The helper itself runs with the worker's environment for it (empty but for one allocator
//! setting, `Sandbox::command`) and in a directory of the worker's: the
//! action's environment is applied only to the command's exec, after step 8 (an action's
//! `LD_PRELOAD=./x.so` once reached the dynamic loader of the helper while it was still root).

use super::spec::{MAX_SPEC_BYTES, Spec};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{Gid, Uid};
use rustix::fs::{Mode, OFlags};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `kiln action-sandbox` (built by the worker, not meant for people).
// Command-line switches: each is one flag of the command line, not a state machine.
#[allow(clippy::struct_excessive_bools)]
#[derive(clap::Args, Debug, Clone)]
pub struct SandboxArgs {
    /// uid the command runs as.
    #[arg(long)]
    pub uid: u32,
    /// gid the command runs as.
    #[arg(long)]
    pub gid: u32,
    /// The action's input root: the only writable directory, kept at its path.
    #[arg(long)]
    pub root: PathBuf,
    /// The action's private directory bound over /tmp, /var/tmp and /dev/shm.
    #[arg(long)]
    pub tmp: PathBuf,
    /// Working directory of the command (inside `root`).
    #[arg(long)]
    pub workdir: PathBuf,
    /// A directory to cover with an empty read-only tmpfs; repeat.
    #[arg(long)]
    pub hide: Vec<PathBuf>,
    /// An extra directory to keep writable; repeat.
    #[arg(long)]
    pub writable: Vec<PathBuf>,
    /// Mount a fresh /proc (the helper is the init of a new PID namespace).
    #[arg(long)]
    pub new_proc: bool,
    /// Unshare a network namespace too: the command sees only its own loopback interface.
    #[arg(long)]
    pub private_network: bool,
    /// Set everything up, check the result, report, and exit 0 instead of running a command.
    #[arg(long)]
    pub probe: bool,
}

/// Exit status of a helper whose setup failed (the reason went to the worker's socket).
pub const SETUP_FAILED: u8 = 125;

/// Runs the helper: never returns on success (the process becomes the command).
pub fn main(args: &SandboxArgs) -> ExitCode {
    let stdin = std::io::stdin();
    let report = |msg: &str| {
        let _ = rustix::io::write(stdin.as_fd(), msg.as_bytes());
    };
    let ns = match setup(args) {
        Ok(ns) => ns,
        Err(e) => {
            report(&format!("error: {e}\n"));
            return ExitCode::from(SETUP_FAILED);
        }
    };
    if args.probe {
        return match probe_checks(args) {
            Ok(()) => {
                report(&format!("ok {ns}\n"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                report(&format!("error: {e}\n"));
                ExitCode::from(SETUP_FAILED)
            }
        };
    }
    let null = match std::fs::File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => {
            report(&format!("error: open /dev/null: {e}\n"));
            return ExitCode::from(SETUP_FAILED);
        }
    };
    report(&format!("ok {ns}\n"));
    // The command comes only now, after the privileges are gone: nothing of the action (its
    // environment above all: LD_PRELOAD, LD_LIBRARY_PATH) reaches this process while it
    // still holds them.
    let spec = match read_spec(&stdin) {
        Ok(spec) => spec,
        Err(e) => {
            report(&format!("error: {e}\n"));
            return ExitCode::from(SETUP_FAILED);
        }
    };
    if let Err(e) = nix::unistd::chdir(&spec.workdir) {
        report(&format!("error: chdir {}: {e}\n", spec.workdir.display()));
        return ExitCode::from(SETUP_FAILED);
    }
    let mut command = std::process::Command::new(&spec.program);
    command.args(&spec.args).env_clear().envs(spec.env);
    // The socket's end closes here: the worker reads what follows the report to its end.
    if let Err(e) = nix::unistd::dup2_stdin(&null) {
        eprintln!("kiln worker: cannot set up stdin: {e}");
        return ExitCode::from(127);
    }
    drop(null);
    let e = command.exec();
    // Like a shell: a command that cannot start exits 127 with the reason on stderr.
    eprintln!(
        "kiln worker: cannot run \"{}\": {e}",
        spec.program.to_string_lossy()
    );
    ExitCode::from(127)
}

/// Reads the action's command from stdin to its end (the worker shuts its side for writing
/// after sending it): at most [`MAX_SPEC_BYTES`] and one more byte, which `Spec::decode`
/// refuses as too large.
fn read_spec(stdin: &std::io::Stdin) -> Result<Spec, String> {
    use std::io::Read;
    let mut buf = Vec::new();
    stdin
        .lock()
        .take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("read the action's command: {e}"))?;
    Spec::decode(&buf).map_err(|e| e.to_string())
}

/// What `--probe` checks once set up: the user is the one asked for, the input root is
/// writable, and every hidden directory is empty (but for the way to the input root).
fn probe_checks(args: &SandboxArgs) -> Result<(), String> {
    if nix::unistd::geteuid().as_raw() != args.uid {
        return Err(format!(
            "runs as uid {} instead of {}",
            nix::unistd::geteuid(),
            args.uid
        ));
    }
    let f = args.workdir.join(".kiln-probe");
    std::fs::write(&f, b"probe").map_err(|e| format!("cannot write {}: {e}", f.display()))?;
    for h in &args.hide {
        let towards_root = args
            .root
            .strip_prefix(h)
            .ok()
            .and_then(|r| r.components().next())
            .map(|c| c.as_os_str().to_os_string());
        let Ok(entries) = std::fs::read_dir(h) else {
            continue;
        };
        for e in entries.flatten() {
            if Some(e.file_name()) != towards_root {
                return Err(format!(
                    "{} is still visible in {}",
                    e.file_name().to_string_lossy(),
                    h.display()
                ));
            }
        }
    }
    Ok(())
}

type Step<T = ()> = Result<T, String>;

/// Brings the new network namespace's loopback up, so actions that talk to themselves over
/// 127.0.0.1 keep working: one `RTM_NEWLINK` request (set `IFF_UP` on interface 1, which is
/// always the loopback of a new namespace) on a route netlink socket, and its acknowledgement
/// read back. Plain bytes over a socket: no ioctl, no `unsafe`, and no child process (running
/// iproute2's `ip` for it cost 1.3 ms of every action's start).
fn loopback_up() -> Step {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
    const RTM_NEWLINK: u16 = 16;
    const NLMSG_ERROR: u16 = 2;
    const NLM_F_REQUEST_ACK: u16 = 0x1 | 0x4;
    const LOOPBACK_IFINDEX: i32 = 1;
    const IFF_UP: u32 = 1;
    let sock = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(ctx("route netlink socket"))?;
    // nlmsghdr (len, type, flags, seq, port) then ifinfomsg (family, pad, type, index, flags,
    // change), native-endian as netlink is.
    let mut req = Vec::with_capacity(32);
    req.extend_from_slice(&32u32.to_ne_bytes());
    req.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST_ACK.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0, 0, 0, 0]);
    req.extend_from_slice(&LOOPBACK_IFINDEX.to_ne_bytes());
    req.extend_from_slice(&IFF_UP.to_ne_bytes());
    req.extend_from_slice(&IFF_UP.to_ne_bytes());
    rustix::net::send(&sock, &req, SendFlags::empty()).map_err(ctx("loopback up: send"))?;
    let mut ack = [0u8; 256];
    let (n, _) = rustix::net::recv(&sock, &mut ack[..], RecvFlags::empty())
        .map_err(ctx("loopback up: receive"))?;
    // The answer: nlmsghdr of type NLMSG_ERROR, then the error code (0: done).
    let field = |at: usize| ack.get(at..at + 4).and_then(|b| b.try_into().ok());
    let kind = ack.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    match (n >= 20, kind, field(16).map(i32::from_ne_bytes)) {
        (true, Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (true, Some(NLMSG_ERROR), Some(e)) => Err(format!(
            "loopback up: {}",
            rustix::io::Errno::from_raw_os_error(-e)
        )),
        _ => Err(format!("loopback up: unexpected answer of {n} bytes")),
    }
}

fn ctx<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

fn setup(args: &SandboxArgs) -> Step<u64> {
    let uid = nix::unistd::geteuid();
    let net = if args.private_network {
        CloneFlags::CLONE_NEWNET
    } else {
        CloneFlags::empty()
    };
    if uid.is_root() {
        unshare(CloneFlags::CLONE_NEWNS | net).map_err(ctx("unshare mount namespace"))?;
    } else {
        let gid = nix::unistd::getegid();
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS | net)
            .map_err(ctx("unshare user and mount namespaces"))?;
        std::fs::write("/proc/self/setgroups", "deny").map_err(ctx("setgroups deny"))?;
        std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1")).map_err(ctx("uid_map"))?;
        std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1")).map_err(ctx("gid_map"))?;
    }
    if args.private_network {
        loopback_up()?;
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(ctx("make mounts private"))?;
    let root = open_path(&args.root)?;
    let tmp = open_path(&args.tmp)?;
    let writable = args
        .writable
        .iter()
        .map(|w| open_path(w))
        .collect::<Step<Vec<_>>>()?;
    read_only_everywhere()?;
    for t in ["/tmp", "/var/tmp", "/dev/shm"] {
        if std::fs::symlink_metadata(t).is_ok_and(|m| m.is_dir()) {
            bind_writable(&tmp, Path::new(t))?;
        }
    }
    for (fd, path) in writable.iter().zip(&args.writable) {
        create_dir_all(path)?;
        bind_writable(fd, path)?;
    }
    let mut hidden = Vec::new();
    let mut hide: Vec<&PathBuf> = args.hide.iter().collect();
    hide.sort_by_key(|p| p.components().count());
    for h in hide {
        if std::fs::symlink_metadata(h).is_ok_and(|m| m.is_dir()) {
            mount(
                Some("tmpfs"),
                h,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=64k,mode=0755"),
            )
            .map_err(ctx(format!("hide {}", h.display())))?;
            hidden.push(h);
        }
    }
    create_dir_all(&args.root)?;
    bind_writable(&root, &args.root)?;
    for h in hidden {
        remount(h, true)?;
    }
    if args.new_proc {
        let r = mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        );
        // A worker that is not root made the PID namespace with CAP_SYS_ADMIN of the host's
        // user namespace, which this helper's own user namespace does not own: /proc stays
        // the host's (read-only), as documented for that setup.
        if uid.is_root() {
            r.map_err(ctx("mount /proc"))?;
        }
    }
    let ns = std::fs::metadata("/proc/self/ns/mnt")
        .map_err(ctx("stat /proc/self/ns/mnt"))?
        .ino();
    nix::unistd::chdir(&args.workdir).map_err(ctx(format!("chdir {}", args.workdir.display())))?;
    drop_privileges(args.uid, args.gid)?;
    // No capability reaches the command, not even an ambient one the worker was given
    // (systemd `AmbientCapabilities=`); no setuid binary gives one back.
    match rustix::thread::clear_ambient_capability_set() {
        Ok(()) | Err(rustix::io::Errno::INVAL) => {}
        Err(e) => return Err(format!("clear ambient capabilities: {e}")),
    }
    rustix::thread::set_no_new_privs(true).map_err(ctx("no_new_privs"))?;
    Ok(ns)
}

fn open_path(p: &Path) -> Step<OwnedFd> {
    rustix::fs::open(
        p,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(ctx(format!("open {}", p.display())))
}

/// `mkdir -p` as the helper sees the file system now (inside a covering mount).
fn create_dir_all(p: &Path) -> Step {
    std::fs::create_dir_all(p).map_err(ctx(format!("mkdir {}", p.display())))
}

/// Binds the directory `fd` refers to onto `target` and makes that mount writable.
fn bind_writable(fd: &OwnedFd, target: &Path) -> Step {
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(ctx(format!("bind onto {}", target.display())))?;
    remount(target, false)
}

/// Remounts the mount at `target` read-only or writable, keeping its other flags (a user
/// namespace may not clear nosuid/nodev/noexec/atime flags it inherited).
fn remount(target: &Path, read_only: bool) -> Step {
    let have = statvfs(target)
        .map_err(ctx(format!("statvfs {}", target.display())))?
        .flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for (st, ms) in [
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(st) {
            flags |= ms;
        }
    }
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(ctx(format!("remount {}", target.display())))
}

/// Remounts every mount read-only (`/` must succeed; a mount that cannot be reached or
/// changed, e.g. one shadowed by another, is left as it is).
fn read_only_everywhere() -> Step {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(ctx("read /proc/self/mountinfo"))?;
    let points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect();
    for p in &points {
        let r = remount_read_only(p);
        if p == Path::new("/") {
            r?;
        }
    }
    Ok(())
}

fn remount_read_only(target: &Path) -> Step {
    let have = statvfs(target)
        .map_err(ctx(format!("statvfs {}", target.display())))?
        .flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    for (st, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(st) {
            flags |= ms;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(ctx(format!("remount {} read-only", target.display())))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Drops to the action user: no supplementary groups, then gid, then uid. As root this is
/// final (the saved ids change too and no capability is kept); in a user namespace the ids are
/// the worker's own and already in place.
fn drop_privileges(uid: u32, gid: u32) -> Step {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setgroups(&[]).map_err(ctx("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(ctx("setgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(ctx("setuid"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes() {
        assert_eq!(super::unescape(r"/a\040b"), "/a b");
        assert_eq!(super::unescape("/plain"), "/plain");
        assert_eq!(super::unescape(r"/x\\"), r"/x\\");
    }
}
