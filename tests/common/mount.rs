//! File systems mounted for a test: a small tmpfs, or an ext4 in a loop-mounted image. Needs
//! root (CI runs as root) and e2fsprogs; without them the tests fail loudly, never skip.

use std::path::PathBuf;
use std::process::Command;

/// Runs `cmd` (mount, mkfs, ...), failing the test with its stderr if it fails.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (these tests need root and e2fsprogs): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed (these tests need root, loop devices and e2fsprogs): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mounted file system, unmounted (and its loop device released) on drop, failed test or not.
pub struct Mount {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Mount {
    /// A tmpfs of `size` bytes.
    pub fn tmpfs(size: u64) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().unwrap(),
            ],
        );
        Self { dir, _tmp: tmp }
    }

    /// An ext4 of `size` bytes in an image file, loop-mounted (no reserved blocks).
    pub fn ext4(size: u64) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("fs.img");
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        run(
            "truncate",
            &["-s", &size.to_string(), img.to_str().unwrap()],
        );
        run("mkfs.ext4", &["-q", "-F", "-m", "0", img.to_str().unwrap()]);
        run(
            "mount",
            &["-o", "loop", img.to_str().unwrap(), dir.to_str().unwrap()],
        );
        Self { dir, _tmp: tmp }
    }

    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// Sets the readahead of the loop device under this mount (an ext4 one) to `kb`.
    pub fn set_read_ahead_kb(&self, kb: u32) {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE", self.dir.to_str().unwrap()])
            .output()
            .expect("findmnt (util-linux)");
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let name = dev
            .strip_prefix("/dev/")
            .unwrap_or_else(|| panic!("no device for the mount: {dev:?}"));
        let knob = format!("/sys/block/{name}/queue/read_ahead_kb");
        if std::fs::write(&knob, kb.to_string()).is_err() {
            // A read-only /sys (some containers): the same through the device's ioctl.
            run("blockdev", &["--setra", &(kb * 2).to_string(), &dev]);
        }
        let set = std::fs::read_to_string(&knob).unwrap_or_default();
        assert_eq!(set.trim(), kb.to_string(), "{knob}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // A loop mount made by `mount -o loop` is detached by the unmount (autoclear).
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// One test of a binary at a time, for tests that count what the whole process does: blocks
/// of a small file system (a child process another test spawns, `mount` or `mkfs`, holds a
/// copy of every open file descriptor until it execs, and a segment file unlinked in that
/// window keeps its blocks: the engine then rightly answers `Full`, but tests counting blocks
/// exactly would fail), or bytes read from disk.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
