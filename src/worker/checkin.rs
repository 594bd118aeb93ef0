//! Returns an action's lent and newly admitted subtrees to the directory cache
//! (`dircache.rs`) after the action, keeping only those `verify.rs` finds intact. Runs on a
//! blocking thread before the action directory is removed; what is not kept is removed with
//! it. Outer subtrees go first: one kept whole absorbs the offers below it.

use super::cache::FileCache;
use super::dircache::is_within;
use super::verify::{Expect, verify};
use rustix::fs::{Mode, openat, renameat};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::beneath::DIR;

/// See the module doc; `root` is the input root given to `stage`.
pub fn check_in(cache: &FileCache, root: &Path) {
    let trees = cache.trees();
    let Some(mut out) = trees.take_outstanding(root) else {
        return;
    };
    let open = |p: &Path| rustix::fs::open(p, DIR, Mode::empty());
    let (Ok(root_fd), Ok(trees_fd), Ok(cache_fd)) =
        (open(root), open(trees.dir()), open(cache.dir()))
    else {
        return;
    };
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let uid = out.owner.map_or(me.0, |o| o.0);
    // Idle trees belong to the worker when actions run as another user.
    let keep_as = out.owner.filter(|o| o.0 != me.0).map(|_| me);
    out.offers.sort_by(|a, b| a.rel.cmp(&b.rel));
    let _one_at_a_time = trees.check_in_lock();
    let mut inodes = HashMap::new();
    let mut kept: Vec<String> = Vec::new();
    let (mut offered, mut refused) = (0usize, 0usize);
    for o in &out.offers {
        if kept.iter().any(|k| is_within(&o.rel, k)) || !trees.wants(&o.digest, o.size) {
            continue;
        }
        offered += 1;
        let Some((parent, name)) = open_parent(&root_fd, &o.rel) else {
            refused += 1;
            continue;
        };
        let Ok(top) = openat(&parent, name, DIR, Mode::empty()) else {
            refused += 1;
            continue;
        };
        let mut expect = Expect {
            cache_dir: cache_fd.as_fd(),
            uid,
            keep_as,
            inodes: &mut inodes,
        };
        if let Err(reason) = verify(top, o.digest, &out.dirs, &mut expect) {
            tracing::debug!(
                path = o.rel,
                reason,
                "input subtree not kept by the directory cache"
            );
            refused += 1;
            continue;
        }
        if !trees.make_room(o.size) {
            // Trees taken by stagings in progress fill the bound.
            refused += 1;
            continue;
        }
        let tree = trees.new_tree(o.size);
        match renameat(&parent, name, &trees_fd, tree.name().as_str()) {
            Ok(()) => {
                trees.keep(o.digest, tree);
                kept.push(o.rel.clone());
            }
            Err(e) => {
                tracing::warn!(error = %e, path = o.rel, "cannot move a tree into the directory cache");
                refused += 1;
            }
        }
    }
    // Files of kept trees stay recently used in the file cache, so their names (the check of
    // the next check-in) outlive colder files.
    cache.touch(inodes.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k));
    tracing::debug!(
        offered,
        refused,
        kept = kept.len(),
        "input subtrees checked in"
    );
}

/// The directory holding `rel` (opened component by component without following symlinks)
/// and `rel`'s last name.
fn open_parent<'r>(root: &OwnedFd, rel: &'r str) -> Option<(OwnedFd, &'r str)> {
    let (dirs, name) = match rel.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, rel),
    };
    let mut fd = rustix::io::dup(root).ok()?;
    for part in dirs.into_iter().flat_map(|d| d.split('/')) {
        fd = openat(&fd, part, DIR, Mode::empty()).ok()?;
    }
    Some((fd, name))
}
