//! Builds staged trees on disk (for `stage.rs`): each directory is made with `mkdirat` and
//! opened with `O_NOFOLLOW` relative to its parent's handle, each file hardlinked from the
//! [`FileCache`] by name (copied into a new `O_EXCL` file only if the link is refused), each
//! symlink made, and each subtree the directory cache lent moved in with one `renameat`. No
//! recursion: an explicit stack of pending directories, shared by [`threads`] threads for
//! large trees (links into different directories proceed in parallel on the file systems a
//! worker uses: each takes only its own directory's lock).

use super::cache::FileCache;
use super::dircache::{Offer, Tree};
use super::error::{WorkerError, io};
use super::stage::{MAX_INPUT_DEPTH, Owner};
use crate::digest::Digest;
use crate::proto::reapi::Directory;
use rustix::fs::{AtFlags, Mode, OFlags, linkat, mkdirat, openat, renameat, symlinkat};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// Trees with fewer files to link than this are built by one thread (no thread start-up on
/// small or empty input roots).
pub const PARALLEL_MIN_FILES: usize = 2_000;
/// Most threads building one tree.
const MAX_THREADS: usize = 4;

/// Threads to build a tree of `files` links in `dirs` directories with.
pub fn threads(files: usize, dirs: usize) -> usize {
    if files < PARALLEL_MIN_FILES || dirs < 4 {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
}

/// One directory still to build: its digest, where (an open parent and a name, the path
/// relative to the input root) and how deep.
pub struct Pending {
    /// Its Directory digest.
    pub digest: Digest,
    /// Its parent, open.
    pub parent: Arc<OwnedFd>,
    /// Its name in the parent.
    pub name: String,
    /// Its full path (for messages).
    pub path: PathBuf,
    /// Its path relative to the input root (`a/b`; empty for the root).
    pub rel: String,
    /// Levels below the root.
    pub depth: usize,
}

/// What building a tree did with lent subtrees.
#[derive(Default)]
pub struct Built {
    /// Lent subtrees that could not be moved in: still to build.
    pub failed: Vec<Pending>,
    /// Lent subtrees moved in, to offer back after the action.
    pub placed: Vec<Offer>,
}

/// Everything one build shares between its threads.
struct Ctx<'a> {
    cache: &'a FileCache,
    cache_fd: BorrowedFd<'a>,
    trees_fd: Option<BorrowedFd<'a>>,
    dirs: &'a HashMap<Digest, Arc<Directory>>,
    lent: Mutex<&'a mut HashMap<String, (Digest, Tree)>>,
    owner: Owner,
}

enum Step {
    Built,
    Placed(Offer),
    Failed(Pending),
}

/// Builds the trees of `start` (see the module doc) with `threads` threads; lent subtrees
/// (by relative path) are taken out of `lent` as they are moved in.
pub fn materialize(
    cache: &FileCache,
    dirs: &HashMap<Digest, Arc<Directory>>,
    start: Vec<Pending>,
    lent: &mut HashMap<String, (Digest, Tree)>,
    owner: Owner,
    threads: usize,
) -> Result<Built, WorkerError> {
    let cache_dir =
        std::fs::File::open(cache.dir()).map_err(io(format!("open {}", cache.dir().display())))?;
    let trees_dir = if lent.is_empty() {
        None
    } else {
        let d = cache.trees().dir();
        Some(std::fs::File::open(d).map_err(io(format!("open {}", d.display())))?)
    };
    let ctx = Ctx {
        cache,
        cache_fd: cache_dir.as_fd(),
        trees_fd: trees_dir.as_ref().map(AsFd::as_fd),
        dirs,
        lent: Mutex::new(lent),
        owner,
    };
    if threads <= 1 {
        let mut built = Built::default();
        let mut stack = start;
        while let Some(p) = stack.pop() {
            record(&mut built, one(&ctx, p, &mut stack)?);
        }
        return Ok(built);
    }
    let work = Mutex::new(Work {
        stack: start,
        busy: 0,
        err: None,
        built: Built::default(),
    });
    let wake = Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| run(&ctx, &work, &wake));
        }
    });
    let w = work
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match w.err {
        Some(e) => Err(e),
        None => Ok(w.built),
    }
}

struct Work {
    stack: Vec<Pending>,
    /// Directories being built now (their children not yet pushed).
    busy: usize,
    err: Option<WorkerError>,
    built: Built,
}

fn record(built: &mut Built, step: Step) {
    match step {
        Step::Built => {}
        Step::Placed(o) => built.placed.push(o),
        Step::Failed(p) => built.failed.push(p),
    }
}

/// One building thread: takes pending directories until none is left and none is being
/// built (which could add more), or another thread failed.
fn run(ctx: &Ctx<'_>, work: &Mutex<Work>, wake: &Condvar) {
    let lock = || {
        work.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    loop {
        let p = {
            let mut w = lock();
            loop {
                if w.err.is_some() {
                    return;
                }
                if let Some(p) = w.stack.pop() {
                    w.busy += 1;
                    break p;
                }
                if w.busy == 0 {
                    return;
                }
                w = wake
                    .wait(w)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        let mut children = Vec::new();
        let r = one(ctx, p, &mut children);
        let mut w = lock();
        w.busy -= 1;
        match r {
            Ok(step) => {
                record(&mut w.built, step);
                w.stack.append(&mut children);
            }
            Err(e) => {
                w.err.get_or_insert(e);
            }
        }
        drop(w);
        wake.notify_all();
    }
}

/// Builds one directory (or moves a lent one in), pushing its subdirectories onto `stack`.
fn one(ctx: &Ctx<'_>, p: Pending, stack: &mut Vec<Pending>) -> Result<Step, WorkerError> {
    if p.depth > MAX_INPUT_DEPTH {
        return Err(too_deep());
    }
    if let Some(trees_fd) = ctx.trees_fd {
        let taken = ctx
            .lent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&p.rel);
        if let Some((d, tree)) = taken {
            let name = tree.name();
            if let Err(e) = renameat(trees_fd, name.as_str(), &*p.parent, p.name.as_str()) {
                tracing::warn!(error = %e, tree = name, "cannot move a cached tree in; staging it file by file");
                ctx.cache.trees().lost(tree);
                return Ok(Step::Failed(p));
            }
            ctx.cache.trees().moved_out(&tree);
            // Idle trees are the worker's: the action user gets its directories back.
            if let Some(owner) = ctx.owner
                && owner.0 != rustix::process::geteuid().as_raw()
            {
                super::verify::lend_to(&p.parent, &p.name, d, ctx.dirs, owner).map_err(|e| {
                    WorkerError::Io {
                        what: format!("chown lent tree {}: {e}", p.path.display()),
                        source: std::io::Error::other(e),
                    }
                })?;
            }
            return Ok(Step::Placed(Offer {
                rel: p.rel,
                digest: d,
                size: tree.size(),
            }));
        }
    }
    let fd = make_dir(&p, ctx.owner)?;
    // Every Directory in `dirs` was checked by `stage` before anything was made.
    let dir = ctx
        .dirs
        .get(&p.digest)
        .ok_or(WorkerError::MissingInput(p.digest))?;
    for f in &dir.files {
        let d = Digest::from_field(p.digest.function, f.digest.as_ref(), "FileNode.digest")?;
        let src = FileCache::file_name(&d, f.is_executable);
        if linkat(
            ctx.cache_fd,
            src.as_str(),
            &fd,
            f.name.as_str(),
            AtFlags::empty(),
        )
        .is_err()
        {
            // Too many links (EMLINK) or a cross-device work dir: fall back to a copy.
            copy_new(ctx.cache, &d, f.is_executable, &fd, &f.name, &p.path)?;
        }
    }
    for s in &dir.symlinks {
        symlinkat(s.target.as_str(), &fd, s.name.as_str()).map_err(|e| WorkerError::Io {
            what: format!("symlink in {}", p.path.display()),
            source: e.into(),
        })?;
    }
    if dir.directories.is_empty() {
        return Ok(Step::Built);
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
            rel: if p.rel.is_empty() {
                c.name.clone()
            } else {
                format!("{}/{}", p.rel, c.name)
            },
            depth: p.depth + 1,
        });
    }
    Ok(Step::Built)
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
    let flags = super::beneath::DIR;
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
