//! Stages an input root into an action directory: directories are created, files hardlinked
//! from the [`FileCache`] (copied only if the filesystem refuses the link), symlinks recreated.

use super::cache::FileCache;
use super::client::Client;
use super::error::{WorkerError, io};
use crate::digest::Digest;
use crate::proto::reapi::Directory;
use std::collections::{HashMap, HashSet};
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
    cache.ensure(client, &files).await?;
    let cache = cache.clone();
    let (root, dest) = (*root, dest.to_path_buf());
    tokio::task::spawn_blocking(move || materialize(&cache, &dirs, &root, &dest))
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

fn materialize(
    cache: &FileCache,
    dirs: &HashMap<Digest, Arc<Directory>>,
    digest: &Digest,
    dest: &Path,
) -> Result<(), WorkerError> {
    std::fs::create_dir(dest).map_err(io(format!("mkdir {}", dest.display())))?;
    let dir = dirs.get(digest).ok_or(WorkerError::MissingInput(*digest))?;
    for f in &dir.files {
        let d = Digest::from_field(digest.function, f.digest.as_ref(), "FileNode.digest")?;
        let src = cache.path(&d, f.is_executable);
        let to = dest.join(check_name(&f.name)?);
        if std::fs::hard_link(&src, &to).is_err() {
            // Too many links (EMLINK) or a cross-device work dir: fall back to a copy.
            std::fs::copy(&src, &to).map_err(io(format!("stage {}", to.display())))?;
        }
    }
    for s in &dir.symlinks {
        let to = dest.join(check_name(&s.name)?);
        std::os::unix::fs::symlink(&s.target, &to)
            .map_err(io(format!("symlink {}", to.display())))?;
    }
    for c in &dir.directories {
        let d = Digest::from_field(digest.function, c.digest.as_ref(), "DirectoryNode.digest")?;
        materialize(cache, dirs, &d, &dest.join(check_name(&c.name)?))?;
    }
    Ok(())
}
