//! Stages an input root into an action directory: directories are created, files hardlinked
//! from the [`FileCache`] (copied only if the filesystem refuses the link), symlinks recreated,
//! and subtrees the directory cache holds (`dircache.rs`) moved in whole with one rename each.
//!
//! Every Directory is checked before anything is made from it: names must be valid, sorted and
//! unique across its files, directories and symlinks (REAPI requires it). A name given twice
//! would otherwise meet the file staged under it first, and a copy written to that path would
//! write through the hardlink into the cached file, poisoning every later action. For the same
//! reason the copy fallback only ever creates a new file (`O_CREAT|O_EXCL`), never opens an
//! existing one for writing. The tree is walked with an explicit stack (no recursion: a deep
//! tree cannot overflow the worker's stack) and at most [`MAX_INPUT_DEPTH`] levels deep.
//!
//! After the action, [`check_in`] offers lent and newly admitted subtrees back to the
//! directory cache, which keeps only those `verify.rs` finds intact.

use super::build::{Built, Pending, materialize};
use super::cache::FileCache;
use super::client::Client;
use super::dircache::{Offer, Outstanding, Plan, Tree};
use super::error::{WorkerError, io};
use crate::digest::Digest;
use crate::proto::reapi::{Command, Directory};
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

/// Deepest input tree a worker stages (the root is depth 0). Deeper trees fail with
/// INVALID_ARGUMENT before any fetch beyond this depth. Real source trees stay far below it
/// (Linux's PATH_MAX of 4096 bytes allows ~2,000 one-letter levels, no tool handles that).
pub const MAX_INPUT_DEPTH: usize = 512;

/// Owner (uid, gid) given to every directory staging creates, so an action running as that
/// user can create its outputs; files stay the worker's (read-only hardlinks of the cache).
pub type Owner = Option<(u32, u32)>;

type Dirs = Arc<HashMap<Digest, Arc<Directory>>>;

/// The paths of an input root (relative, `a/b`) that must be staged as fresh directories:
/// the working directory, every declared output and all their ancestors, and (marked `p/`)
/// the outputs that may be directories, whose whole subtree is fresh. The worker creates
/// outputs' parents there and the action writes there, so they are never lent from or kept
/// by the directory cache.
pub fn fresh_paths(cmd: &Command) -> HashSet<String> {
    let mut out = HashSet::new();
    let Some(wd) = crate::paths::within_root("", &cmd.working_directory) else {
        return out;
    };
    add(&mut out, &wd);
    #[allow(deprecated)]
    for (p, dir) in cmd
        .output_paths
        .iter()
        .map(|p| (p, true))
        .chain(cmd.output_files.iter().map(|p| (p, false)))
        .chain(cmd.output_directories.iter().map(|p| (p, true)))
    {
        if let Some(rel) = crate::paths::within_root(&wd, p) {
            add(&mut out, &rel);
            if dir {
                out.insert(format!("{rel}/"));
            }
        }
    }
    out
}

/// Adds `rel` and its ancestors.
fn add(out: &mut HashSet<String>, rel: &str) {
    let mut at = 0;
    while let Some(i) = rel[at..].find('/') {
        out.insert(rel[..at + i].to_string());
        at += i + 1;
    }
    if !rel.is_empty() {
        out.insert(rel.to_string());
    }
}

/// Fetches what is missing and builds the tree of `root` at `dest` (which must not exist).
/// Directories at the paths in `fresh` (see [`fresh_paths`]) are made, not lent.
pub async fn stage(
    client: &Client,
    cache: &Arc<FileCache>,
    root: &Digest,
    dest: &Path,
    owner: Owner,
    fresh: &HashSet<String>,
) -> Result<(), WorkerError> {
    let dirs: Dirs = Arc::new(cache.tree(client, root, MAX_INPUT_DEPTH).await?);
    // Checking and planning walk the whole tree (maybe 100,000s of entries): on a blocking
    // thread, not the async executor's.
    let (mut lent, candidates, files) = {
        let (d2, c2, root, fresh) = (dirs.clone(), cache.clone(), *root, fresh.clone());
        blocking(move || {
            for dir in d2.values() {
                check_directory(dir)?;
            }
            let (plan, files) = c2.trees().plan(&d2, root, &fresh)?;
            let Plan { lent, candidates } = plan;
            // Trees taken from the cache go back untouched if staging stops before moving
            // them (also if this staging is cancelled before this thread's result is used).
            let lent = Lent {
                cache: c2,
                trees: lent,
            };
            Ok((lent, candidates, files))
        })
        .await?
    };
    // Pinned until the links are made: a concurrent staging's eviction cannot remove them.
    let pin = cache.ensure(client, &files).await?;
    let root_job = {
        let (parent, name) = open_parent(dest)?;
        Pending {
            digest: *root,
            parent: Arc::new(parent),
            name,
            path: dest.to_path_buf(),
            rel: String::new(),
            depth: 0,
        }
    };
    let mut out = Outstanding {
        offers: Vec::new(),
        dirs: dirs.clone(),
        owner,
    };
    let (d2, c2) = (dirs.clone(), cache.clone());
    let threads = cache.build_threads(files.len(), dirs.len());
    let Built { failed, placed } =
        blocking(move || materialize(&c2, &d2, vec![root_job], &mut lent.trees, owner, threads))
            .await?;
    drop(pin);
    out.offers.extend(placed);
    if !failed.is_empty() {
        // A lent tree that could not be moved in (removed meanwhile?): staged file by file.
        let mut files = HashSet::new();
        for p in &failed {
            subtree_files(&dirs, p.digest, &mut files)?;
        }
        let _pin = cache.ensure(client, &files).await?;
        let (d2, c2) = (dirs.clone(), cache.clone());
        blocking(move || materialize(&c2, &d2, failed, &mut HashMap::new(), owner, 1)).await?;
    }
    out.offers
        .extend(
            candidates
                .into_iter()
                .map(|(rel, digest, size)| Offer { rel, digest, size }),
        );
    cache.trees().lend(dest.to_path_buf(), out);
    Ok(())
}

/// Offers the subtrees lent or admitted for the input root `root` back to the directory
/// cache once the action is over (its processes gone, outputs captured); called before the
/// action directory is removed. Only trees that pass `verify.rs` are kept.
pub fn check_in(cache: &FileCache, root: &Path) {
    super::checkin::check_in(cache, root);
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WorkerError> + Send + 'static,
) -> Result<T, WorkerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WorkerError::Invalid {
            what: "staging task",
            reason: e.to_string(),
        })?
}

/// The parent of `dest`, opened, and the name `dest` has in it.
fn open_parent(dest: &Path) -> Result<(OwnedFd, String), WorkerError> {
    match (dest.parent(), dest.file_name().and_then(|n| n.to_str())) {
        (Some(p), Some(n)) => Ok((
            std::fs::File::open(p)
                .map_err(io(format!("open {}", p.display())))?
                .into(),
            n.to_string(),
        )),
        _ => Err(WorkerError::Invalid {
            what: "staging directory",
            reason: dest.display().to_string(),
        }),
    }
}

/// Checks a Directory's entries by the REAPI rules (see [`crate::cas::directory`]).
pub fn check_directory(dir: &Directory) -> Result<(), WorkerError> {
    crate::cas::directory::check_entries(dir).map_err(|reason| WorkerError::Invalid {
        what: "Directory",
        reason,
    })
}

/// Trees taken from the directory cache for one staging, by relative path; whatever is still
/// here when dropped was never moved and goes back to the cache as it was.
struct Lent {
    cache: Arc<FileCache>,
    trees: HashMap<String, (Digest, Tree)>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        for (_, (d, t)) in self.trees.drain() {
            self.cache.trees().untouched(d, t);
        }
    }
}

/// Every (digest, executable) file below `root`.
fn subtree_files(
    dirs: &HashMap<Digest, Arc<Directory>>,
    root: Digest,
    out: &mut HashSet<(Digest, bool)>,
) -> Result<(), WorkerError> {
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        let dir = dirs.get(&d).ok_or(WorkerError::MissingInput(d))?;
        for f in &dir.files {
            out.insert((
                Digest::from_field(d.function, f.digest.as_ref(), "FileNode.digest")?,
                f.is_executable,
            ));
        }
        for c in &dir.directories {
            stack.push(Digest::from_field(
                d.function,
                c.digest.as_ref(),
                "DirectoryNode.digest",
            )?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn fresh_paths_are_the_working_directory_outputs_and_their_ancestors() {
        let cmd = Command {
            working_directory: "w/x".into(),
            output_paths: vec!["out/a.o".into()],
            output_files: vec!["../y/f".into()],
            output_directories: vec!["/abs".into(), "../../../up".into()],
            ..Default::default()
        };
        let mut got: Vec<String> = fresh_paths(&cmd).into_iter().collect();
        got.sort();
        assert_eq!(
            got,
            [
                "w",
                "w/x",
                "w/x/out",
                "w/x/out/a.o",
                "w/x/out/a.o/",
                "w/y",
                "w/y/f"
            ],
            "paths that leave the root are ignored (prepare rejects them)"
        );
        assert!(fresh_paths(&Command::default()).is_empty());
        let whole = Command {
            output_directories: vec![".".into()],
            ..Default::default()
        };
        let want: HashSet<String> = ["/".to_string()].into();
        assert_eq!(
            fresh_paths(&whole),
            want,
            "the root itself is an output directory"
        );
    }
}
