//! Collects an action's outputs: files, directories (as `Tree`s) and symlinks, declared by
//! `output_paths` or the older `output_files`/`output_directories`. Nothing is followed: an
//! output whose path crosses a symlink, or a symlink whose target leaves the action directory,
//! is an error.
// The deprecated Command/ActionResult fields are what REAPI v2.0 clients (Bazel 2.x) use.
#![allow(deprecated)]

use super::client::{BATCH_BLOB_LIMIT, Source};
use super::error::{WorkerError, io};
use super::stage::MAX_INPUT_DEPTH;
use crate::digest::{Digest, DigestFunction};
use crate::paths::within_root;
use crate::proto::reapi::{
    ActionResult, Command, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, SymlinkNode, Tree,
};
use bytes::Bytes;
use prost::Message;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Outputs of one action, and the blobs to upload for them.
#[derive(Default)]
pub struct Captured {
    /// The result's output fields (exit code etc. are set by the caller).
    pub result: ActionResult,
    /// Blobs referenced by `result`.
    pub blobs: Vec<(Digest, Source)>,
}

fn escape(path: &str, reason: impl Into<String>) -> WorkerError {
    WorkerError::Escape {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Hashes a file; small ones are kept in memory for a batched upload.
/// The last component is never followed (`O_NOFOLLOW`): outputs are checked not to be
/// symlinks before, and all of the action's processes are dead by then.
pub fn hash_file(function: DigestFunction, path: &Path) -> Result<(Digest, Source), WorkerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io(format!("open {}", path.display())))?;
    let len = f
        .metadata()
        .map_err(io(format!("stat {}", path.display())))?
        .len();
    if len <= BATCH_BLOB_LIMIT {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf)
            .map_err(io(format!("read {}", path.display())))?;
        return Ok((function.digest_of(&buf), Source::Bytes(Bytes::from(buf))));
    }
    let mut hasher = function.hasher();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finish(), Source::File(path.to_path_buf())))
}

/// Checks a symlink's target stays inside the action directory; `rel` is the link's path
/// relative to the input root.
fn check_symlink(rel: &str, target: &str) -> Result<(), WorkerError> {
    let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
    if target.starts_with('/') || within_root(parent, target).is_none() {
        return Err(escape(
            rel,
            format!("symlink target {target:?} leaves the action directory"),
        ));
    }
    Ok(())
}

/// Collects the outputs `cmd` declares, relative to the input root at `root`.
pub fn capture(
    function: DigestFunction,
    cmd: &Command,
    root: &Path,
) -> Result<Captured, WorkerError> {
    let mut c = Captured::default();
    // The input root itself must still be the directory staged (an action able to write its
    // parent could have put a symlink there, to make this read the worker's files).
    match std::fs::symlink_metadata(root) {
        Ok(m) if m.file_type().is_dir() => {}
        _ => {
            return Err(WorkerError::Escape {
                path: String::new(),
                reason: "the input root is no longer a directory".into(),
            });
        }
    }
    let wd = &cmd.working_directory;
    let declared: Vec<(&String, Option<bool>)> = if cmd.output_paths.is_empty() {
        cmd.output_files
            .iter()
            .map(|p| (p, Some(false)))
            .chain(cmd.output_directories.iter().map(|p| (p, Some(true))))
            .collect()
    } else {
        cmd.output_paths.iter().map(|p| (p, None)).collect()
    };
    for (path, want_dir) in declared {
        let rel = within_root(wd, path)
            .ok_or_else(|| escape(path, "the path leaves the action directory"))?;
        // Every parent must be a real directory: following a symlink could leave the root.
        let mut cur = root.to_path_buf();
        let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        for p in parts.iter().take(parts.len().saturating_sub(1)) {
            cur.push(p);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(escape(path, format!("parent {p:?} is a symlink")));
                }
                _ => {}
            }
        }
        let full = root.join(&rel);
        let Ok(meta) = std::fs::symlink_metadata(&full) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(&full).map_err(io(format!("readlink {}", full.display())))?;
            let target = target.to_string_lossy().into_owned();
            check_symlink(&rel, &target)?;
            let link = OutputSymlink {
                path: path.clone(),
                target,
                ..Default::default()
            };
            let is_dir = std::fs::metadata(&full).is_ok_and(|m| m.is_dir());
            if want_dir.unwrap_or(is_dir) {
                c.result.output_directory_symlinks.push(link.clone());
            } else {
                c.result.output_file_symlinks.push(link.clone());
            }
            c.result.output_symlinks.push(link);
        } else if meta.is_dir() {
            if want_dir == Some(false) {
                return Err(WorkerError::Invalid {
                    what: "output file",
                    reason: format!("{path:?} is a directory"),
                });
            }
            let mut children = Vec::new();
            let root_dir = dir_tree(function, &full, &rel, &mut children, &mut c.blobs, 0)?;
            let tree = Tree {
                root: Some(root_dir),
                children,
            };
            let bytes = tree.encode_to_vec();
            let digest = function.digest_of(&bytes);
            c.blobs.push((digest, Source::Bytes(Bytes::from(bytes))));
            c.result.output_directories.push(OutputDirectory {
                path: path.clone(),
                tree_digest: Some(digest.to_proto()),
                is_topologically_sorted: false,
                ..Default::default()
            });
        } else if meta.is_file() {
            if want_dir == Some(true) {
                return Err(WorkerError::Invalid {
                    what: "output directory",
                    reason: format!("{path:?} is a file"),
                });
            }
            let (digest, src) = hash_file(function, &full)?;
            c.blobs.push((digest, src));
            c.result.output_files.push(OutputFile {
                path: path.clone(),
                digest: Some(digest.to_proto()),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                ..Default::default()
            });
        }
    }
    Ok(c)
}

/// Builds the Directory of `dir`, pushing every descendant Directory into `children`. An
/// output tree deeper than [`MAX_INPUT_DEPTH`] is an error (the recursion stays bounded).
fn dir_tree(
    function: DigestFunction,
    dir: &Path,
    rel: &str,
    children: &mut Vec<Directory>,
    blobs: &mut Vec<(Digest, Source)>,
    depth: usize,
) -> Result<Directory, WorkerError> {
    if depth > MAX_INPUT_DEPTH {
        return Err(WorkerError::Invalid {
            what: "output directory",
            reason: format!("{rel:?} is deeper than the limit of {MAX_INPUT_DEPTH} levels"),
        });
    }
    let mut out = Directory::default();
    let entries = std::fs::read_dir(dir).map_err(io(format!("list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("list {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let child_rel = format!("{rel}/{name}");
        let ft = entry
            .file_type()
            .map_err(io(format!("stat {}", path.display())))?;
        if ft.is_symlink() {
            let target =
                std::fs::read_link(&path).map_err(io(format!("readlink {}", path.display())))?;
            let target = target.to_string_lossy().into_owned();
            check_symlink(&child_rel, &target)?;
            out.symlinks.push(SymlinkNode {
                name,
                target,
                ..Default::default()
            });
        } else if ft.is_dir() {
            let sub = dir_tree(function, &path, &child_rel, children, blobs, depth + 1)?;
            let digest = function.digest_of(&sub.encode_to_vec());
            children.push(sub);
            out.directories.push(DirectoryNode {
                name,
                digest: Some(digest.to_proto()),
            });
        } else if ft.is_file() {
            let mode = entry
                .metadata()
                .map_err(io(format!("stat {}", path.display())))?
                .permissions()
                .mode();
            let (digest, src) = hash_file(function, &path)?;
            blobs.push((digest, src));
            out.files.push(FileNode {
                name,
                digest: Some(digest.to_proto()),
                is_executable: mode & 0o111 != 0,
                ..Default::default()
            });
        }
    }
    out.files.sort_by(|a, b| a.name.cmp(&b.name));
    out.directories.sort_by(|a, b| a.name.cmp(&b.name));
    out.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{capture, check_symlink};
    use crate::digest::DigestFunction;
    use crate::proto::reapi::Command;

    /// An input root replaced by a symlink (to files of the worker's) is refused, not read.
    #[test]
    fn an_input_root_that_is_a_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("worker-files");
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("out"), b"the worker's").unwrap();
        let root = t.path().join("root");
        std::os::unix::fs::symlink(&secret, &root).unwrap();
        let cmd = Command {
            output_paths: vec!["out".into()],
            ..Default::default()
        };
        let e = capture(DigestFunction::Sha256, &cmd, &root)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("input root"), "{e}");
        // The same tree as a real directory is read.
        std::fs::remove_file(&root).unwrap();
        std::fs::rename(&secret, &root).unwrap();
        let c = capture(DigestFunction::Sha256, &cmd, &root).expect("captured");
        assert_eq!(c.result.output_files.len(), 1);
    }

    #[test]
    fn symlinks_must_stay_inside() {
        assert!(check_symlink("out/link", "file").is_ok());
        assert!(check_symlink("out/link", "../other").is_ok());
        assert!(check_symlink("out/link", "../../etc").is_err());
        assert!(check_symlink("out/link", "/etc/passwd").is_err());
        assert!(check_symlink("link", "..").is_err());
    }
}
