//! The trees of an earlier run of the worker: never trusted, so deleted at start. Deleting up
//! to a million hardlinks takes seconds, so the start does not wait for it: the old cache
//! directory is renamed aside with one `rename(2)` (same parent, so same file system) and a
//! background thread deletes it, together with whatever an earlier start renamed aside and
//! could not finish deleting (the worker crashed or was stopped meanwhile).
//!
//! The names set aside (`<name>.old-<pid>-<nanoseconds>-<n>`) are never the cache directory
//! itself, which is created afresh after the rename: new trees never go into a directory
//! being deleted.

use crate::worker::error::{WorkerError, io};
use std::path::{Path, PathBuf};

/// Renames `dir` aside (if it exists) and returns every set-aside directory of `dir` now in
/// its parent: this one and earlier starts' leftovers.
pub(super) fn set_aside(dir: &Path) -> Result<Vec<PathBuf>, WorkerError> {
    let invalid = || WorkerError::Invalid {
        what: "directory cache path",
        reason: dir.display().to_string(),
    };
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(invalid)?;
    let parent = dir.parent().ok_or_else(invalid)?;
    let prefix = format!("{name}.old-");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut n = 0u32;
    loop {
        let aside = parent.join(format!("{prefix}{}-{stamp}-{n}", std::process::id()));
        match std::fs::rename(dir, &aside) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            // The name is taken (a non-empty directory there): another one.
            Err(e)
                if n < 100
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::DirectoryNotEmpty
                    ) =>
            {
                n += 1;
            }
            Err(e) => return Err(io(format!("move {} aside", dir.display()))(e)),
        }
    }
    let mut doomed = Vec::new();
    let list = std::fs::read_dir(parent).map_err(io(format!("list {}", parent.display())))?;
    for e in list {
        let e = e.map_err(io(format!("list {}", parent.display())))?;
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix))
        {
            doomed.push(e.path());
        }
    }
    Ok(doomed)
}

/// Deletes `doomed` on a thread of its own, after calling `before` there. Failures are
/// logged: what is left is deleted at the next start.
pub(super) fn delete_in_background(doomed: Vec<PathBuf>, before: impl FnOnce() + Send + 'static) {
    if doomed.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("kiln-old-trees".into())
        .spawn(move || {
            before();
            for p in doomed {
                let r = match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
                    Ok(_) => std::fs::remove_file(&p),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => {
                        tracing::debug!(path = %p.display(), "old directory-cache trees deleted");
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(
                        path = %p.display(),
                        error = %e,
                        "cannot delete old directory-cache trees (retried at the next start)"
                    ),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start deleting old directory-cache trees (retried at the next start)");
    }
}
