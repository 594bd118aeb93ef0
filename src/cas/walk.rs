//! The one breadth-first walk over a Directory tree, shared by GetTree (`tree.rs`), the
//! Execute input check (`exec/prepare.rs`) and the worker's staging (`worker/cache.rs`).
//!
//! The walk owns the order and the "each distinct directory once" rule; it does no I/O. Its
//! caller takes the next digest (or a whole level, to fetch it in one batch), loads the
//! Directory however it can (the CAS, a gRPC batch, a memory cache), and hands it back with
//! [`TreeWalk::visit`], which queues the children not seen before. A directory the caller
//! cannot load is simply not visited: its subtree is left out. Being a plain value, the walk is
//! also its own resumable position (GetTree keeps one across the pages of a stream).
//!
//! Free of gRPC on purpose: the worker uses it too.

use crate::digest::{Digest, DigestError};
use crate::proto::reapi::Directory;
use std::collections::{HashSet, VecDeque};

/// A breadth-first walk from one root: pending directories with their depth (the root is
/// depth 0; a directory reached by several paths is queued once, at its shallowest depth).
#[derive(Clone, Debug)]
pub struct TreeWalk {
    root: Digest,
    queue: VecDeque<(Digest, usize)>,
    seen: HashSet<Digest>,
}

impl TreeWalk {
    /// A walk that starts at `root`.
    pub fn new(root: Digest) -> Self {
        Self {
            root,
            queue: VecDeque::from([(root, 0)]),
            seen: HashSet::from([root]),
        }
    }

    /// The root this walk started from.
    pub fn root(&self) -> &Digest {
        &self.root
    }

    /// The next directory to load, with its depth; `None` when the walk is done.
    pub fn pop(&mut self) -> Option<(Digest, usize)> {
        self.queue.pop_front()
    }

    /// Every pending directory of the shallowest pending depth, for a caller that loads a
    /// level in one batch. Empty when the walk is done.
    pub fn next_level(&mut self) -> (usize, Vec<Digest>) {
        let Some(&(_, depth)) = self.queue.front() else {
            return (0, Vec::new());
        };
        let mut level = Vec::new();
        while let Some(&(d, at)) = self.queue.front() {
            if at != depth {
                break;
            }
            level.push(d);
            self.queue.pop_front();
        }
        (depth, level)
    }

    /// Takes in a loaded directory found at `depth`: queues its subdirectories not seen
    /// before and returns all of them (repeats included), in the Directory's order. A child
    /// digest that does not parse is an error naming `DirectoryNode.digest`.
    pub fn visit(&mut self, dir: &Directory, depth: usize) -> Result<Vec<Digest>, DigestError> {
        let mut children = Vec::with_capacity(dir.directories.len());
        for node in &dir.directories {
            let c = Digest::from_field(
                self.root.function,
                node.digest.as_ref(),
                "DirectoryNode.digest",
            )?;
            if self.seen.insert(c) {
                self.queue.push_back((c, depth + 1));
            }
            children.push(c);
        }
        Ok(children)
    }

    /// Distinct directories met so far (visited, pending or left out), the root included.
    pub fn seen(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::proto::reapi::DirectoryNode;
    use prost::Message;
    use std::collections::HashMap;

    fn node(name: &str, d: &Digest) -> DirectoryNode {
        DirectoryNode {
            name: name.into(),
            digest: Some(d.to_proto()),
        }
    }

    /// A diamond: root -> a, b; a -> leaf; b -> leaf. Each directory once, levels in order.
    #[test]
    fn each_directory_once_by_level() {
        let mut dirs = HashMap::new();
        let mut put = |dir: Directory| {
            let d = DigestFunction::Sha256.digest_of(&dir.encode_to_vec());
            dirs.insert(d, dir);
            d
        };
        let leaf = put(Directory::default());
        let a = put(Directory {
            directories: vec![node("l", &leaf)],
            ..Default::default()
        });
        let b = put(Directory {
            directories: vec![node("l", &leaf), node("m", &leaf)],
            ..Default::default()
        });
        let root = put(Directory {
            directories: vec![node("a", &a), node("b", &b)],
            ..Default::default()
        });
        let mut walk = TreeWalk::new(root);
        let mut order = Vec::new();
        while let Some((d, depth)) = walk.pop() {
            order.push((d, depth));
            let children = walk.visit(&dirs[&d], depth).unwrap();
            assert_eq!(children.len(), dirs[&d].directories.len());
        }
        assert_eq!(order, vec![(root, 0), (a, 1), (b, 1), (leaf, 2)]);
        assert_eq!(walk.seen(), 4);

        let mut walk = TreeWalk::new(root);
        let mut levels = Vec::new();
        loop {
            let (depth, level) = walk.next_level();
            if level.is_empty() {
                break;
            }
            for d in &level {
                walk.visit(&dirs[d], depth).unwrap();
            }
            levels.push((depth, level));
        }
        assert_eq!(
            levels,
            vec![(0, vec![root]), (1, vec![a, b]), (2, vec![leaf])]
        );
    }
}
