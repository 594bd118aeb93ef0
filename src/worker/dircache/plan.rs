//! [`DirCache::plan`]: which subtrees of an input root a staging takes from the directory
//! cache, which it builds fresh, and which of those to offer back after the action.

use super::{DirCache, MAX_SEEN, MIN_TREE_FILES, Plan, Size, Tree, take};
use crate::digest::Digest;
use crate::proto::reapi::Directory;
use crate::worker::error::WorkerError;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

impl DirCache {
    /// Decides, for the tree `root` (every Directory in `dirs`, already checked), which
    /// subtrees come from the cache (taken out of it now) and which fresh ones to offer back
    /// later. Paths in `fresh` (relative: the working directory, outputs and their ancestors;
    /// `p/` for an output directory `p`, whose whole subtree is fresh, `/` for the root) are
    /// never lent nor kept. Also returns the files the rest of the tree links.
    ///
    /// The walk over the tree (which may have 100,000s of entries) does not hold the cache's
    /// lock: it is taken once per Directory, only to look its children up, so the other
    /// slots' stagings and check-ins go on meanwhile. Each lookup takes what it finds at once,
    /// so nothing found can change before it is used. Call it on a blocking thread.
    pub fn plan(
        &self,
        dirs: &HashMap<Digest, Arc<Directory>>,
        root: Digest,
        fresh: &HashSet<String>,
    ) -> Result<(Plan, HashSet<(Digest, bool)>), WorkerError> {
        self.plan_observed(dirs, root, fresh, &mut || {})
    }

    /// [`DirCache::plan`], calling `on_dir` for each Directory the walk visits (a test hook).
    fn plan_observed(
        &self,
        dirs: &HashMap<Digest, Arc<Directory>>,
        root: Digest,
        fresh: &HashSet<String>,
        on_dir: &mut dyn FnMut(),
    ) -> Result<(Plan, HashSet<(Digest, bool)>), WorkerError> {
        let mut plan = Plan::default();
        let mut files = HashSet::new();
        let r = self.walk(dirs, root, fresh, &mut plan, &mut files, on_dir);
        if let Err(e) = r {
            // Nothing was moved yet: what was taken goes back.
            let mut state = self.lock();
            for (_, (d, t)) in plan.lent.drain() {
                super::restore(&mut state, d, t);
            }
            return Err(e);
        }
        Ok((plan, files))
    }

    fn walk(
        &self,
        dirs: &HashMap<Digest, Arc<Directory>>,
        root: Digest,
        fresh: &HashSet<String>,
        plan: &mut Plan,
        files: &mut HashSet<(Digest, bool)>,
        on_dir: &mut dyn FnMut(),
    ) -> Result<(), WorkerError> {
        let mut sizes: HashMap<Digest, Size> = HashMap::new();
        // (digest, relative path, inside a candidate, inside an output directory)
        // `/`: the input root itself is an output directory.
        let mut stack = vec![(root, String::new(), false, fresh.contains("/"))];
        while let Some((digest, rel, inside, output)) = stack.pop() {
            on_dir();
            let dir = dirs.get(&digest).ok_or(WorkerError::MissingInput(digest))?;
            for f in &dir.files {
                files.insert((
                    Digest::from_field(digest.function, f.digest.as_ref(), "FileNode.digest")?,
                    f.is_executable,
                ));
            }
            let mut kids = Vec::with_capacity(dir.directories.len());
            for c in &dir.directories {
                let d =
                    Digest::from_field(digest.function, c.digest.as_ref(), "DirectoryNode.digest")?;
                let child = if rel.is_empty() {
                    c.name.clone()
                } else {
                    format!("{rel}/{}", c.name)
                };
                let kind = if !self.enabled() || output || fresh.contains(&child) {
                    Kid::Fresh(output || fresh.contains(&format!("{child}/")))
                } else {
                    Kid::Lookup
                };
                kids.push((d, child, kind));
            }
            if kids.iter().any(|k| matches!(k.2, Kid::Lookup)) {
                self.look_up(&mut kids, inside);
            }
            // Lent trees go into the plan first: an error below must find every tree taken,
            // to put it back.
            kids.retain_mut(|(d, child, kind)| {
                if let Kid::Lent(tree) = *kind {
                    plan.lent.insert(std::mem::take(child), (*d, tree));
                    return false;
                }
                true
            });
            for (d, child, kind) in kids {
                match kind {
                    Kid::Fresh(output) => stack.push((d, child, inside, output)),
                    Kid::Seen(seen) => {
                        let mut candidate = false;
                        if seen {
                            let size = subtree_size(dirs, d, &mut sizes)?;
                            if size.files >= MIN_TREE_FILES {
                                plan.candidates.push((child.clone(), d, size));
                                candidate = true;
                            }
                        }
                        stack.push((d, child, inside || candidate, false));
                    }
                    Kid::Lookup | Kid::Lent(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Looks the children marked [`Kid::Lookup`] up under the lock, in order: an idle tree
    /// of the digest is taken ([`Kid::Lent`]); otherwise the digest is marked seen, and
    /// whether it had been seen before (outside a candidate only) is noted ([`Kid::Seen`]).
    fn look_up(&self, kids: &mut [(Digest, String, Kid)], inside: bool) {
        let mut state = self.lock();
        for (d, _, kind) in kids.iter_mut().filter(|k| matches!(k.2, Kid::Lookup)) {
            if let Some(tree) = take(&mut state, d) {
                *kind = Kid::Lent(tree);
                continue;
            }
            let seen = !inside && state.seen.contains(d);
            if state.seen.len() >= MAX_SEEN {
                state.seen.clear();
            }
            state.seen.insert(*d);
            *kind = Kid::Seen(seen);
        }
    }
}

/// What [`DirCache::plan`] does with a child directory.
enum Kid {
    /// Staged fresh (on the way to the working directory or an output, or the cache is off);
    /// whether it is inside an output directory.
    Fresh(bool),
    /// To be looked up in the cache.
    Lookup,
    /// Taken from the cache.
    Lent(Tree),
    /// Staged fresh, a possible candidate: whether it was seen before.
    Seen(bool),
}

/// Files and bytes below `root` (memoized in `memo`), without recursion.
fn subtree_size(
    dirs: &HashMap<Digest, Arc<Directory>>,
    root: Digest,
    memo: &mut HashMap<Digest, Size>,
) -> Result<Size, WorkerError> {
    // (digest, children pushed already)
    let mut stack = vec![(root, false)];
    while let Some((d, expanded)) = stack.pop() {
        if memo.contains_key(&d) {
            continue;
        }
        let dir = dirs.get(&d).ok_or(WorkerError::MissingInput(d))?;
        let children = dir
            .directories
            .iter()
            .map(|c| Digest::from_field(d.function, c.digest.as_ref(), "DirectoryNode.digest"))
            .collect::<Result<Vec<_>, _>>()?;
        if !expanded {
            stack.push((d, true));
            stack.extend(
                children
                    .iter()
                    .filter(|c| !memo.contains_key(c))
                    .map(|c| (*c, false)),
            );
            continue;
        }
        let mut size = Size::default();
        for f in &dir.files {
            size.files += 1;
            size.bytes = size
                .bytes
                .saturating_add(f.digest.as_ref().map_or(0, |x| x.size_bytes.max(0) as u64));
        }
        for c in &children {
            let s = memo.get(c).copied().unwrap_or_default();
            size.files = size.files.saturating_add(s.files);
            size.bytes = size.bytes.saturating_add(s.bytes);
        }
        memo.insert(d, size);
    }
    Ok(memo.get(&root).copied().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use crate::digest::DigestFunction;
    use crate::proto::reapi::{DirectoryNode, FileNode};
    use crate::worker::dircache::*;
    use prost::Message;

    fn tree_of(n: usize, salt: &str) -> (Digest, Directory) {
        let files = (0..n)
            .map(|i| FileNode {
                name: format!("f{i:03}"),
                digest: Some(
                    DigestFunction::Sha256
                        .digest_of(format!("{salt}{i}").as_bytes())
                        .to_proto(),
                ),
                ..Default::default()
            })
            .collect();
        let dir = Directory {
            files,
            ..Default::default()
        };
        (DigestFunction::Sha256.digest_of(&dir.encode_to_vec()), dir)
    }

    fn root_over(children: &[(&str, Digest)]) -> (Digest, Directory) {
        let dir = Directory {
            directories: children
                .iter()
                .map(|(n, d)| DirectoryNode {
                    name: (*n).into(),
                    digest: Some(d.to_proto()),
                })
                .collect(),
            ..Default::default()
        };
        (DigestFunction::Sha256.digest_of(&dir.encode_to_vec()), dir)
    }

    #[test]
    fn admits_on_the_second_staging_lends_once_and_evicts_past_the_bound() {
        let tmp = tempfile::tempdir().unwrap();
        // Room for two trees of 20 files.
        let cache = DirCache::open(tmp.path().join("dirs"), 40, 0).unwrap();
        let (a, da) = tree_of(20, "a");
        let (small, ds) = tree_of(3, "s");
        let (root, dr) = root_over(&[("a", a), ("out", a), ("s", small)]);
        let dirs: HashMap<_, _> = [(a, da), (small, ds), (root, dr)]
            .into_iter()
            .map(|(d, x)| (d, Arc::new(x)))
            .collect();
        let fresh: HashSet<String> = ["out".to_string()].into();
        let (p1, files) = cache.plan(&dirs, root, &fresh).unwrap();
        assert!(p1.lent.is_empty());
        assert!(p1.candidates.is_empty(), "first sight is not admitted");
        assert_eq!(files.len(), 23);
        let (p2, _) = cache.plan(&dirs, root, &fresh).unwrap();
        let names: Vec<_> = p2.candidates.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["a"], "repeat admitted; small and fresh ones not");
        let size = p2.candidates[0].2;
        assert_eq!(size.files, 20);
        for _ in 0..3 {
            let t = cache.new_tree(size);
            assert!(cache.wants(&a, size));
            assert!(cache.make_room(size));
            std::fs::create_dir(cache.dir().join(t.name())).unwrap();
            cache.keep(a, t);
        }
        assert_eq!(cache.idle().0, 2, "bounded to 40 files");
        assert_eq!(cache.idle().1.files, 40);
        assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 2);
        let (p3, files) = cache.plan(&dirs, root, &fresh).unwrap();
        assert_eq!(p3.lent.len(), 1);
        assert!(p3.lent.contains_key("a"));
        assert_eq!(files.len(), 23, "`out` is staged fresh, `s` too");
        assert_eq!(cache.idle().0, 1);
        // Taken but not moved out yet, it is on disk: it still counts.
        assert_eq!(cache.idle().1.files, 40);
        let bigger = Size {
            files: 21,
            bytes: 0,
        };
        assert!(
            !cache.make_room(bigger),
            "the idle tree goes, the taken one stays: 20 + 21 files do not fit in 40"
        );
        assert_eq!(cache.idle().1.files, 20);
        cache.moved_out(&p3.lent["a"].1);
        assert_eq!(cache.idle().1.files, 0);
        assert!(cache.make_room(size));
    }

    #[test]
    fn nothing_below_an_output_directory_is_lent() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DirCache::open(tmp.path().join("dirs"), 1000, 0).unwrap();
        let (a, da) = tree_of(20, "a");
        let (x, dx) = root_over(&[("sub", a)]);
        let (r1, d1) = root_over(&[("a", a)]);
        let (r2, d2) = root_over(&[("o", x)]);
        let dirs: HashMap<_, _> = [(a, da), (x, dx), (r1, d1), (r2, d2)]
            .into_iter()
            .map(|(d, x)| (d, Arc::new(x)))
            .collect();
        let none = HashSet::new();
        let (_, _) = cache.plan(&dirs, r1, &none).unwrap();
        let (p, _) = cache.plan(&dirs, r1, &none).unwrap();
        let size = p.candidates[0].2;
        let t = cache.new_tree(size);
        std::fs::create_dir(cache.dir().join(t.name())).unwrap();
        cache.keep(a, t);
        // `o` is an output directory: its input subtree `o/sub` is staged fresh.
        let out: HashSet<String> = ["o".to_string(), "o/".to_string()].into();
        let (p, files) = cache.plan(&dirs, r2, &out).unwrap();
        assert!(p.lent.is_empty() && p.candidates.is_empty());
        assert_eq!(files.len(), 20);
        // `o` only on the way to an output: `o/sub` may be lent.
        let parent: HashSet<String> = ["o".to_string()].into();
        let (p, files) = cache.plan(&dirs, r2, &parent).unwrap();
        assert!(p.lent.contains_key("o/sub"));
        assert!(files.is_empty());
    }

    /// The walk over the whole input tree (the long part of a staging's plan) runs without
    /// the cache's lock: another slot's cache operations are never held up behind it.
    #[test]
    fn the_walk_does_not_hold_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = DirCache::open(tmp.path().join("dirs"), 1000, 0).unwrap();
        let (a, da) = tree_of(20, "a");
        let (b, db) = tree_of(20, "b");
        let (x, dx) = root_over(&[("a", a), ("b", b)]);
        let (root, dr) = root_over(&[("x", x), ("a", a), ("b2", b)]);
        let dirs: HashMap<_, _> = [(a, da), (b, db), (x, dx), (root, dr)]
            .into_iter()
            .map(|(d, x)| (d, Arc::new(x)))
            .collect();
        let none = HashSet::new();
        // Twice: the second staging also sizes the repeated trees (admission).
        for round in 0..2 {
            let mut visits = 0;
            let mut held = 0;
            let (p, _) = cache
                .plan_observed(&dirs, root, &none, &mut || {
                    visits += 1;
                    if cache.state.try_lock().is_err() {
                        held += 1;
                    } else {
                        // Another slot's operation goes through meanwhile.
                        let _ = cache.idle();
                    }
                })
                .unwrap();
            assert!(visits >= 4, "round {round}: {visits} directories visited");
            assert_eq!(
                held, 0,
                "round {round}: the lock was held at {held} of {visits} directories"
            );
            if round == 1 {
                let mut names: Vec<_> = p.candidates.iter().map(|c| c.0.as_str()).collect();
                names.sort_unstable();
                assert_eq!(names, ["a", "b2", "x"]);
            }
        }
    }
}
