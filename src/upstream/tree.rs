//! GetTree through the upstream: the directories under a root are made local level by level
//! (one batched fetch per level of what the local tier lacks, each verified by its digest), so
//! the local tree walk then serves every page.

use super::Upstream;
use super::error::UpstreamError;
use super::message::Kind;
use crate::cas::CasError;
use crate::digest::Digest;
use crate::proto::reapi::Directory;
use std::collections::HashSet;

/// Most directories one GetTree makes local: a bound on the memory of the walk.
pub const MAX_TREE_DIRECTORIES: usize = 1 << 20;

impl Upstream {
    /// Fetches the directories under `root` that the local tier lacks. Directories neither
    /// tier has are left out (as GetTree leaves out missing directories); a failed fetch is
    /// an error.
    pub async fn ensure_tree(&self, instance: &str, root: &Digest) -> Result<(), UpstreamError> {
        let cas = &self.inner.cas;
        let mut seen = HashSet::from([*root]);
        let mut level = vec![*root];
        while !level.is_empty() {
            let missing = cas.find_missing(&level)?;
            if !missing.is_empty() {
                for (_, r) in self.ensure(instance, &missing).await {
                    r?;
                }
            }
            let mut next = Vec::new();
            for d in &level {
                // A directory that does not decode is reported by the walk that serves it.
                let Some(Ok(dir)) = self.read_message::<Directory>(Kind::Directory, d).await?
                else {
                    continue;
                };
                for child in &dir.directories {
                    let Some(Ok(c)) = child
                        .digest
                        .as_ref()
                        .map(|c| Digest::from_proto(root.function, c))
                    else {
                        continue;
                    };
                    if seen.insert(c) {
                        next.push(c);
                    }
                }
            }
            if seen.len() > MAX_TREE_DIRECTORIES {
                return Err(CasError::InvalidArgument(format!(
                    "tree {root} has more than {MAX_TREE_DIRECTORIES} directories"
                ))
                .into());
            }
            level = next;
        }
        Ok(())
    }
}
