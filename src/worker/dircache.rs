//! The worker's directory-level cache: whole input subtrees, already materialized (directories
//! made, files hardlinked from the [`FileCache`](super::cache::FileCache), symlinks made), kept
//! in `<work-dir>/dirs/t<N>` by Directory digest. Staging moves such a tree into an action's
//! input root with one `rename(2)` instead of a `mkdir` per directory and a `link` per file,
//! and takes it back after the action, so a repeated toolchain or source tree is linked once.
//!
//! What users can count on, and how it is kept:
//! * The input root stays writable as before: a lent tree's directories belong to the action
//!   user like freshly staged ones, so an action may create, delete or rename entries in them.
//!   The cached files are the same read-only (0444/0555) inodes of the worker as before.
//! * A tree is lent to one action at a time. Two slots wanting the same digest get two copies
//!   (the second is staged file by file and may be kept as another copy afterwards).
//! * An action cannot damage what a later action sees: a tree goes back into the cache only
//!   after the action's processes are gone and `verify.rs` has found it equal to its Directory
//!   protos (names, types, the very inodes of the cached files, symlink targets, owner, no
//!   xattrs or inode flags an action could add; directory modes are reset). Anything else
//!   and the tree is removed with the action directory.
//! * Directories on the way to the working directory or a declared output, and everything
//!   below an output directory, are always staged fresh: the worker creates outputs' parents
//!   there, and the action writes there.
//! * Admission: a directory is kept only from its second staging on (the first time may be
//!   the only one), and only with at least [`MIN_TREE_FILES`] files below it (smaller ones
//!   cost about as much to verify as to link). The outermost such directory of a path is kept
//!   whole; lent trees inside it are absorbed.
//! * Bounded: at most `max_files` hardlinks (default [`DEFAULT_MAX_FILES`]) and `max_bytes`
//!   (the file cache's bound) of file bytes in idle trees, least recently returned trees
//!   removed first; at most [`MAX_COPIES`] idle copies per digest. Trees keep their files'
//!   inodes alive after the file cache evicts them, so the disk used by both caches stays
//!   below twice `--cache-max-bytes`. Trees are not kept across restarts (`dirs/` is renamed
//!   aside at start and deleted in the background, see `dircache/old.rs`).

use super::error::{WorkerError, io};
use crate::digest::Digest;
use crate::proto::reapi::Directory;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod old;
mod plan;

/// Smallest subtree (files below it, all levels) the cache keeps.
pub const MIN_TREE_FILES: u64 = 16;
/// Default bound of hardlinks held by idle trees.
pub const DEFAULT_MAX_FILES: u64 = 1_000_000;
/// Most idle copies of one digest (more are never needed at once by a worker's slots).
pub const MAX_COPIES: usize = 32;
/// Directory digests remembered as seen once (the admission filter); cleared past this.
const MAX_SEEN: usize = 100_000;
/// Staged roots whose trees are still out; the oldest is forgotten past this (its trees are
/// then removed with its action directory, never returned unverified).
const MAX_OUTSTANDING: usize = 4096;

/// Files and bytes of a subtree (all levels, a file counted once per path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Size {
    /// Files (hardlinks) in the subtree.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One materialized tree in `dirs/`, named `t<id>`.
#[derive(Clone, Copy, Debug)]
pub struct Tree {
    id: u64,
    size: Size,
}

impl Tree {
    /// Its name inside the cache directory.
    pub fn name(&self) -> String {
        format!("t{}", self.id)
    }

    /// Files and bytes in it.
    pub fn size(&self) -> Size {
        self.size
    }
}

/// What one staging does with the directory cache.
#[derive(Default)]
pub struct Plan {
    /// Trees taken from the cache, by path relative to the input root.
    pub lent: HashMap<String, (Digest, Tree)>,
    /// Directories staged fresh that are worth keeping afterwards, by relative path.
    pub candidates: Vec<(String, Digest, Size)>,
}

/// A subtree of a staged root to offer back to the cache after the action.
#[derive(Clone, Debug)]
pub struct Offer {
    /// Path relative to the input root (`a/b`).
    pub rel: String,
    /// Its Directory digest.
    pub digest: Digest,
    /// Its size.
    pub size: Size,
}

/// The offers of one staged root and the protos to verify them against.
pub struct Outstanding {
    /// What to check in, outermost first after sorting.
    pub offers: Vec<Offer>,
    /// Every Directory of the staged tree.
    pub dirs: Arc<HashMap<Digest, Arc<Directory>>>,
    /// Owner of the staged directories (`None`: the worker's own user).
    pub owner: super::stage::Owner,
}

#[derive(Default)]
struct State {
    idle: HashMap<Digest, Vec<Tree>>,
    /// Idle trees by when they were returned (unique ticks): the first is evicted first.
    lru: BTreeMap<u64, (Digest, u64)>,
    /// When each idle tree (by id) was returned, to find it in `lru`.
    returned: HashMap<u64, u64>,
    size: Size,
    tick: u64,
    next_id: u64,
    seen: HashSet<Digest>,
    out: HashMap<PathBuf, Outstanding>,
    out_order: VecDeque<PathBuf>,
}

/// The directory cache of one worker process (see the module doc).
pub struct DirCache {
    dir: PathBuf,
    max_files: u64,
    max_bytes: u64,
    state: Mutex<State>,
    adding: Mutex<()>,
}

impl DirCache {
    /// Opens an empty cache in `dir` (whatever is there is removed: trees are not trusted
    /// across restarts), bounded to `max_files` links (0: the cache is off) and `max_bytes`
    /// of file bytes (0: no byte bound).
    ///
    /// Removing up to a million hardlinks takes seconds, so the start does not wait for it:
    /// the old `dir` is renamed aside (`<dir>.old-<unique>`, same file system, one rename) and
    /// a background thread deletes it, with any such directory an earlier start left behind
    /// (a crash before its deletion finished). New trees only ever go into the fresh `dir`.
    pub fn open(dir: PathBuf, max_files: u64, max_bytes: u64) -> Result<Self, WorkerError> {
        Self::open_inner(dir, max_files, max_bytes, || {})
    }

    /// [`DirCache::open`]; the deleting thread calls `before_delete` first (a test hook).
    fn open_inner(
        dir: PathBuf,
        max_files: u64,
        max_bytes: u64,
        before_delete: impl FnOnce() + Send + 'static,
    ) -> Result<Self, WorkerError> {
        let doomed = old::set_aside(&dir)?;
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        old::delete_in_background(doomed, before_delete);
        Ok(Self {
            dir,
            max_files,
            max_bytes,
            state: Mutex::default(),
            adding: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the trees live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the cache keeps anything at all.
    pub fn enabled(&self) -> bool {
        self.max_files > 0
    }

    /// Idle trees, and the size of those plus the trees taken but not yet moved out.
    pub fn idle(&self) -> (usize, Size) {
        let s = self.lock();
        (s.lru.len(), s.size)
    }

    /// Puts back a tree taken by [`DirCache::plan`] that never left the cache directory.
    pub fn untouched(&self, digest: Digest, tree: Tree) {
        restore(&mut self.lock(), digest, tree);
    }

    /// A tree taken by [`DirCache::plan`] was moved into an input root: it no longer counts.
    pub fn moved_out(&self, tree: &Tree) {
        let mut s = self.lock();
        s.size.files = s.size.files.saturating_sub(tree.size.files);
        s.size.bytes = s.size.bytes.saturating_sub(tree.size.bytes);
    }

    /// Forgets a tree taken by [`DirCache::plan`] that could not be moved (and removes it).
    pub fn lost(&self, tree: Tree) {
        self.moved_out(&tree);
        self.remove(&tree);
    }

    fn remove(&self, tree: &Tree) {
        let path = self.dir.join(tree.name());
        let _ = std::fs::remove_dir_all(&path);
    }

    /// Remembers what to check in for the input root `root` (called once per staging).
    pub fn lend(&self, root: PathBuf, out: Outstanding) {
        if out.offers.is_empty() {
            return;
        }
        let mut s = self.lock();
        if s.out.len() >= MAX_OUTSTANDING
            && let Some(old) = s.out_order.pop_front()
        {
            s.out.remove(&old);
        }
        s.out_order.push_back(root.clone());
        s.out.insert(root, out);
    }

    /// What was lent for `root`, taken out (nothing twice).
    pub fn take_outstanding(&self, root: &Path) -> Option<Outstanding> {
        let mut s = self.lock();
        let out = s.out.remove(root)?;
        s.out_order.retain(|p| p != root);
        Some(out)
    }

    /// A fresh name for a tree about to be moved into the cache directory.
    pub fn new_tree(&self, size: Size) -> Tree {
        let mut s = self.lock();
        s.next_id += 1;
        Tree {
            id: s.next_id,
            size,
        }
    }

    /// Whether another idle copy of `digest` of `size` may be kept at all.
    pub fn wants(&self, digest: &Digest, size: Size) -> bool {
        let s = self.lock();
        self.enabled()
            && s.idle.get(digest).map_or(0, Vec::len) < MAX_COPIES
            && self.fits(Size::default(), size)
    }

    /// Whether `more` on top of `held` stays within the bounds.
    fn fits(&self, held: Size, more: Size) -> bool {
        held.files.saturating_add(more.files) <= self.max_files
            && (self.max_bytes == 0 || held.bytes.saturating_add(more.bytes) <= self.max_bytes)
    }

    /// Serializes check-ins, so trees are only ever added after room was made for them and
    /// the cache directory never holds more than the bounds.
    pub fn check_in_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.adding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes least recently returned idle trees until one of `size` more fits the bounds;
    /// whether it fits (trees taken by stagings in progress still count until moved out).
    pub fn make_room(&self, size: Size) -> bool {
        let victims = {
            let mut s = self.lock();
            let mut victims = Vec::new();
            while !self.fits(s.size, size) {
                let Some((_, (d, id))) = s.lru.pop_first() else {
                    break;
                };
                s.returned.remove(&id);
                if let Some(v) = s.idle.get_mut(&d)
                    && let Some(i) = v.iter().position(|t| t.id == id)
                {
                    let t = v.swap_remove(i);
                    if v.is_empty() {
                        s.idle.remove(&d);
                    }
                    s.size.files = s.size.files.saturating_sub(t.size.files);
                    s.size.bytes = s.size.bytes.saturating_sub(t.size.bytes);
                    victims.push(t);
                }
            }
            let fits = self.fits(s.size, size);
            (victims, fits)
        };
        let (victims, fits) = victims;
        for t in victims {
            tracing::debug!(tree = t.id, files = t.size.files, "directory cache evicted");
            self.remove(&t);
        }
        fits
    }

    /// Adds a verified tree, moved into the cache directory after [`DirCache::make_room`].
    pub fn keep(&self, digest: Digest, tree: Tree) {
        insert(&mut self.lock(), digest, tree);
    }
}

/// Takes an idle tree of `d` out of the cache (the most recently returned copy). It still
/// counts in the size until [`DirCache::moved_out`] or [`DirCache::lost`]: it is still on disk.
fn take(s: &mut State, d: &Digest) -> Option<Tree> {
    let v = s.idle.get_mut(d)?;
    let t = v.pop()?;
    if v.is_empty() {
        s.idle.remove(d);
    }
    if let Some(tick) = s.returned.remove(&t.id) {
        s.lru.remove(&tick);
    }
    Some(t)
}

/// Adds a new idle tree.
fn insert(s: &mut State, d: Digest, t: Tree) {
    s.size.files += t.size.files;
    s.size.bytes += t.size.bytes;
    restore(s, d, t);
}

/// Makes a tree (counted already) idle again, as the most recently returned.
fn restore(s: &mut State, d: Digest, t: Tree) {
    s.tick += 1;
    let tick = s.tick;
    s.lru.insert(tick, (d, t.id));
    s.returned.insert(t.id, tick);
    s.idle.entry(d).or_default().push(t);
}

/// Whether `rel` is `base` or below it (`a/b` is below `a`, `ab` is not).
pub fn is_within(rel: &str, base: &str) -> bool {
    rel == base
        || (rel.len() > base.len() && rel.starts_with(base) && rel.as_bytes()[base.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within() {
        assert!(is_within("a/b", "a"));
        assert!(is_within("a", "a"));
        assert!(!is_within("ab", "a"));
        assert!(!is_within("a", "a/b"));
    }

    /// Entries of `dir` named `dirs.old-*`.
    fn aside(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("dirs.old-"))
            .map(|e| e.path())
            .collect()
    }

    #[test]
    fn old_trees_are_set_aside_at_open_and_deleted_in_the_background() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dirs");
        std::fs::create_dir_all(dir.join("t1/a")).unwrap();
        std::fs::write(dir.join("t1/a/f"), b"old").unwrap();
        // Set aside by an earlier start that crashed before deleting it.
        std::fs::create_dir_all(tmp.path().join("dirs.old-9-9-0/t2")).unwrap();
        std::fs::create_dir(tmp.path().join("dirsx")).unwrap();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let cache = DirCache::open_inner(dir.clone(), 100, 0, move || {
            let _ = wait.recv();
        })
        .unwrap();
        // Open returned before anything was deleted: the old trees wait aside, the cache
        // directory is a new, empty one.
        assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 0);
        let set = aside(tmp.path());
        assert_eq!(set.len(), 2, "{set:?}");
        assert!(set.iter().any(|p| p.join("t1/a/f").exists()), "{set:?}");
        // A new tree goes into the new directory, which the deletion leaves alone.
        let t = cache.new_tree(Size::default());
        std::fs::create_dir(cache.dir().join(t.name())).unwrap();
        let d = crate::digest::DigestFunction::Sha256.digest_of(b"tree");
        cache.keep(d, t);
        go.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !aside(tmp.path()).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "never deleted: {:?}",
                aside(tmp.path())
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(cache.dir().join(t.name()).is_dir());
        assert!(
            tmp.path().join("dirsx").is_dir(),
            "another name was deleted"
        );
        assert_eq!(cache.idle().0, 1);
    }
}
