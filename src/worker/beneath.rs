//! Creates directories inside an action's input root without ever following a symlink: each
//! component is made with `mkdirat` and opened with `O_NOFOLLOW|O_DIRECTORY` relative to its
//! parent's handle. The input tree comes from the client and may hold symlinks anywhere; a
//! plain `create_dir_all("out/x")` through an input symlink `out -> /elsewhere` would create
//! directories outside the action directory (on the worker's host, as the worker's user).

use super::error::WorkerError;
use super::stage::Owner;
use rustix::fs::{Mode, OFlags, mkdirat, openat};
use rustix::io::Errno;
use std::os::fd::OwnedFd;
use std::path::Path;

/// How the worker opens a directory it walks or builds in: read-only handle, closed on exec,
/// never through a symlink (the last component is checked to be a directory, not followed).
pub const DIR: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

/// Creates `rel` (a normalised relative path, `/`-separated, no `..`) and its missing parents
/// under `root`, giving new directories to `owner`. A component that is a symlink or not a
/// directory is an [`WorkerError::Escape`] naming `declared` (the path as the client wrote it).
pub fn create_dirs(
    root: &Path,
    rel: &str,
    owner: Owner,
    declared: &str,
) -> Result<(), WorkerError> {
    let flags = DIR;
    let mut dir: OwnedFd =
        rustix::fs::open(root, flags, Mode::empty()).map_err(|e| WorkerError::Io {
            what: format!("open {}", root.display()),
            source: e.into(),
        })?;
    for part in rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(escape(declared, "`..` in a created path"));
        }
        let created = match mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => {
                return Err(WorkerError::Io {
                    what: format!("mkdir {part:?} of {declared:?}"),
                    source: e.into(),
                });
            }
        };
        let next = match openat(&dir, part, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(escape(
                    declared,
                    format!("{part:?} is a symlink or not a directory"),
                ));
            }
            Err(e) => {
                return Err(WorkerError::Io {
                    what: format!("open {part:?} of {declared:?}"),
                    source: e.into(),
                });
            }
        };
        if let (true, Some((uid, gid))) = (created, owner) {
            std::os::unix::fs::fchown(&next, Some(uid), Some(gid)).map_err(|e| {
                WorkerError::Io {
                    what: format!("chown {part:?} of {declared:?}"),
                    source: e,
                }
            })?;
        }
        dir = next;
    }
    Ok(())
}

fn escape(path: &str, reason: impl Into<String>) -> WorkerError {
    WorkerError::Escape {
        path: path.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::create_dirs;

    #[test]
    fn never_follows_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let e = create_dirs(&root, "link/made", None, "link/made/file").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(!outside.join("made").exists());
        create_dirs(&root, "a/b/c", None, "a/b/c").unwrap();
        assert!(root.join("a/b/c").is_dir());
        create_dirs(&root, "a/b", None, "a/b").unwrap();
    }
}
