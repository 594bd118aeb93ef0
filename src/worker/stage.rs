//! Stages an input root into an action directory: directories are created, files hardlinked
//! from the [`FileCache`] (copied only if the filesystem refuses the link), symlinks recreated.

use super::cache::FileCache;
use super::client::Client;
use super::error::{WorkerError, io};
use crate::digest::Digest;
use crate::proto::reapi::Directory;
use rustix::fs::{AtFlags, Mode, OFlags, linkat, mkdirat, openat, symlinkat};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;

/// Fetches what is missing and builds the tree of `root` at `dest` (which must not exist).
pub async fn stage(
    client: &Client,
    cache: &Arc<FileCache>,
    root: &Digest,
    dest: &Path,
) -> Result<(), WorkerError> {
    let dirs = cache.tree(client, root).await?;
    let mut files = HashSet::new();
    for dir in dirs.values() {
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
        materialize(
            cache_dir.as_fd(),
            &cache,
            &dirs,
            &root,
            parent.as_fd(),
            &name,
            &dest,
        )
    })
    .await
    .map_err(|e| WorkerError::Invalid {
        what: "staging task",
        reason: e.to_string(),
    })?
}

fn check_name(name: &str) -> Result<&str, WorkerError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(WorkerError::Invalid {
            what: "input name",
            reason: format!("{name:?}"),
        });
    }
    Ok(name)
}

/// Builds one directory with *at() calls relative to open directory handles, so each link
/// resolves one name instead of two full paths. `dest` is only for messages and the copy
/// fallback.
fn materialize(
    cache_fd: BorrowedFd<'_>,
    cache: &FileCache,
    dirs: &HashMap<Digest, Arc<Directory>>,
    digest: &Digest,
    parent: BorrowedFd<'_>,
    name: &str,
    dest: &Path,
) -> Result<(), WorkerError> {
    let at = |what: &str| {
        let what = format!("{what} {}", dest.display());
        move |e: rustix::io::Errno| WorkerError::Io {
            what,
            source: e.into(),
        }
    };
    mkdirat(parent, name, Mode::from_raw_mode(0o755)).map_err(at("mkdir"))?;
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let fd = openat(parent, name, flags, Mode::empty()).map_err(at("open"))?;
    let dir = dirs.get(digest).ok_or(WorkerError::MissingInput(*digest))?;
    for f in &dir.files {
        let d = Digest::from_field(digest.function, f.digest.as_ref(), "FileNode.digest")?;
        let name = check_name(&f.name)?;
        let src = FileCache::file_name(&d, f.is_executable);
        if linkat(cache_fd, src.as_str(), &fd, name, AtFlags::empty()).is_err() {
            // Too many links (EMLINK) or a cross-device work dir: fall back to a copy.
            let to = dest.join(name);
            std::fs::copy(cache.path(&d, f.is_executable), &to)
                .map_err(io(format!("stage {}", to.display())))?;
        }
    }
    for s in &dir.symlinks {
        symlinkat(s.target.as_str(), &fd, check_name(&s.name)?).map_err(at("symlink in"))?;
    }
    for c in &dir.directories {
        let d = Digest::from_field(digest.function, c.digest.as_ref(), "DirectoryNode.digest")?;
        let name = check_name(&c.name)?;
        materialize(
            cache_fd,
            cache,
            dirs,
            &d,
            fd.as_fd(),
            name,
            &dest.join(name),
        )?;
    }
    Ok(())
}
