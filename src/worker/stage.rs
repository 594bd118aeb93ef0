//! Stages an input root into an action directory: directories are created, files hardlinked
//! from the [`FileCache`] (copied only if the filesystem refuses the link), symlinks recreated.
//!
//! Every Directory is checked before anything is made from it: names must be valid, sorted and
//! unique across its files, directories and symlinks (REAPI requires it). A name given twice
//! would otherwise meet the file staged under it first, and a copy written to that path would
//! write through the hardlink into the cached file, poisoning every later action. For the same
//! reason the copy fallback only ever creates a new file (`O_CREAT|O_EXCL`), never opens an
//! existing one for writing. The tree is walked with an explicit stack (no recursion: a deep
//! tree cannot overflow the worker's stack) and at most [`MAX_INPUT_DEPTH`] levels deep.

use super::cache::FileCache;
use super::client::Client;
use super::error::{WorkerError, io};
use crate::digest::Digest;
use crate::proto::reapi::Directory;
use rustix::fs::{AtFlags, Mode, OFlags, linkat, mkdirat, openat, symlinkat};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Deepest input tree a worker stages (the root is depth 0). Deeper trees fail with
/// INVALID_ARGUMENT before any fetch beyond this depth. Real source trees stay far below it
/// (Linux's PATH_MAX of 4096 bytes allows ~2,000 one-letter levels, no tool handles that).
pub const MAX_INPUT_DEPTH: usize = 512;

/// Owner (uid, gid) given to every directory staging creates, so an action running as that
/// user can create its outputs; files stay the worker's (read-only hardlinks of the cache).
pub type Owner = Option<(u32, u32)>;

/// Fetches what is missing and builds the tree of `root` at `dest` (which must not exist).
pub async fn stage(
    client: &Client,
    cache: &Arc<FileCache>,
    root: &Digest,
    dest: &Path,
    owner: Owner,
) -> Result<(), WorkerError> {
    let dirs = cache.tree(client, root, MAX_INPUT_DEPTH).await?;
    let mut files = HashSet::new();
    for dir in dirs.values() {
        check_directory(dir)?;
        for f in &dir.files {
            files.insert((
                Digest::from_field(root.function, f.digest.as_ref(), "FileNode.digest")?,
                f.is_executable,
            ));
        }
    }
    // Pinned until the links are made: a concurrent staging's eviction cannot remove them.
    let _pin = cache.ensure(client, &files).await?;
    let cache = cache.clone();
    let (root, dest) = (*root, dest.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let cache_dir = std::fs::File::open(cache.dir())
            .map_err(io(format!("open {}", cache.dir().display())))?;
        let (parent, name) = match (dest.parent(), dest.file_name().and_then(|n| n.to_str())) {
            (Some(p), Some(n)) => (
                std::fs::File::open(p).map_err(io(format!("open {}", p.display())))?,
                n.to_string(),
            ),
            _ => {
                return Err(WorkerError::Invalid {
                    what: "staging directory",
                    reason: dest.display().to_string(),
                });
            }
        };
        let parent: OwnedFd = parent.into();
        materialize(
            cache_dir.as_fd(),
            &cache,
            &dirs,
            root,
            Arc::new(parent),
            name,
            dest,
            owner,
        )
    })
    .await
    .map_err(|e| WorkerError::Invalid {
        what: "staging task",
        reason: e.to_string(),
    })?
}

/// Checks a Directory's entries by the REAPI rules (see [`crate::cas::directory`]).
pub fn check_directory(dir: &Directory) -> Result<(), WorkerError> {
    crate::cas::directory::check_entries(dir).map_err(|reason| WorkerError::Invalid {
        what: "Directory",
        reason,
    })
}

/// One directory still to build: its digest, where (an open parent and a name) and how deep.
struct Pending {
    digest: Digest,
    parent: Arc<OwnedFd>,
    name: String,
    path: PathBuf,
    depth: usize,
}

/// Builds the tree with *at() calls relative to open directory handles (each link resolves
/// one name, never a symlink), from an explicit stack. A directory's handle stays open only
/// while children of it are pending, so at most one per level is open.
#[allow(clippy::too_many_arguments)]
fn materialize(
    cache_fd: std::os::fd::BorrowedFd<'_>,
    cache: &FileCache,
    dirs: &HashMap<Digest, Arc<Directory>>,
    root: Digest,
    parent: Arc<OwnedFd>,
    name: String,
    dest: PathBuf,
    owner: Owner,
) -> Result<(), WorkerError> {
    let mut stack = vec![Pending {
        digest: root,
        parent,
        name,
        path: dest,
        depth: 0,
    }];
    while let Some(p) = stack.pop() {
        if p.depth > MAX_INPUT_DEPTH {
            return Err(too_deep());
        }
        let fd = make_dir(&p, owner)?;
        // Every Directory in `dirs` was checked by `stage` before anything was made.
        let dir = dirs
            .get(&p.digest)
            .ok_or(WorkerError::MissingInput(p.digest))?;
        for f in &dir.files {
            let d = Digest::from_field(p.digest.function, f.digest.as_ref(), "FileNode.digest")?;
            let src = FileCache::file_name(&d, f.is_executable);
            if linkat(
                cache_fd,
                src.as_str(),
                &fd,
                f.name.as_str(),
                AtFlags::empty(),
            )
            .is_err()
            {
                // Too many links (EMLINK) or a cross-device work dir: fall back to a copy.
                copy_new(cache, &d, f.is_executable, &fd, &f.name, &p.path)?;
            }
        }
        for s in &dir.symlinks {
            symlinkat(s.target.as_str(), &fd, s.name.as_str()).map_err(|e| WorkerError::Io {
                what: format!("symlink in {}", p.path.display()),
                source: e.into(),
            })?;
        }
        if dir.directories.is_empty() {
            continue;
        }
        let fd = Arc::new(fd);
        for c in dir.directories.iter().rev() {
            stack.push(Pending {
                digest: Digest::from_field(
                    p.digest.function,
                    c.digest.as_ref(),
                    "DirectoryNode.digest",
                )?,
                parent: fd.clone(),
                name: c.name.clone(),
                path: p.path.join(&c.name),
                depth: p.depth + 1,
            });
        }
    }
    Ok(())
}

fn too_deep() -> WorkerError {
    WorkerError::Invalid {
        what: "input root",
        reason: format!("the tree is deeper than the limit of {MAX_INPUT_DEPTH} levels"),
    }
}

/// Creates one directory (owned by `owner` when given) and opens it without following a
/// symlink.
fn make_dir(p: &Pending, owner: Owner) -> Result<OwnedFd, WorkerError> {
    let at = |what: &str| {
        let what = format!("{what} {}", p.path.display());
        move |e: rustix::io::Errno| WorkerError::Io {
            what,
            source: e.into(),
        }
    };
    mkdirat(&*p.parent, p.name.as_str(), Mode::from_raw_mode(0o755)).map_err(at("mkdir"))?;
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let fd = openat(&*p.parent, p.name.as_str(), flags, Mode::empty()).map_err(at("open"))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&fd, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", p.path.display())))?;
    }
    Ok(fd)
}

/// Copies a cached file to a new file `name` in `dir`: created with O_EXCL (an existing name is
/// an error, never a file written through) and given the cached file's read-only mode.
fn copy_new(
    cache: &FileCache,
    d: &Digest,
    executable: bool,
    dir: &OwnedFd,
    name: &str,
    path: &Path,
) -> Result<(), WorkerError> {
    let to = path.join(name);
    let mode = if executable { 0o555 } else { 0o444 };
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let out = openat(dir, name, flags, Mode::from_raw_mode(mode)).map_err(|e| WorkerError::Io {
        what: format!("stage {}", to.display()),
        source: e.into(),
    })?;
    let mut out = std::fs::File::from(out);
    let mut src =
        std::fs::File::open(cache.path(d, executable)).map_err(io(format!("open cached {d}")))?;
    std::io::copy(&mut src, &mut out).map_err(io(format!("stage {}", to.display())))?;
    Ok(())
}
