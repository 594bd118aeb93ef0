//! Action-cache semantics: per-instance entries, validation on update, and a completeness check
//! on read so a client is never handed a result whose outputs are gone.

use super::{Cas, CasError};
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi::{ActionResult, Tree};
use crate::storage::{Key, Store};
use bytes::Bytes;
use prost::Message;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;

/// Which outputs a `GetActionResult` caller wants inlined, and the byte budget for them.
#[derive(Clone, Debug, Default)]
pub struct InlineRequest {
    /// Fill `stdout_raw`.
    pub stdout: bool,
    /// Fill `stderr_raw`.
    pub stderr: bool,
    /// Paths of output files whose `contents` to fill.
    pub files: Vec<String>,
    /// Total inlined bytes allowed; blobs that do not fit stay referenced by digest only.
    pub max_bytes: u64,
}

/// Told of every action result stored through an [`ActionCache`] that has it (the upstream
/// tier forwards them, whether a client or the scheduler wrote them). Runs after the entry is
/// stored locally; an error fails the update with [`CasError::Forward`] (the local entry stays).
#[async_trait::async_trait]
pub trait UpdateHook: Send + Sync {
    /// `action`'s result was stored under `instance`.
    async fn updated(&self, instance: &str, action: &Digest) -> Result<(), String>;
}

/// The action cache: `ActionResult`s keyed by instance name and action digest.
#[derive(Clone)]
pub struct ActionCache {
    cas: Cas,
    store: Arc<dyn Store>,
    hook: Option<Arc<dyn UpdateHook>>,
}

impl ActionCache {
    /// An action cache over `store`, checking completeness against `cas`.
    pub fn new(cas: Cas, store: Arc<dyn Store>) -> Self {
        Self {
            cas,
            store,
            hook: None,
        }
    }

    /// The same cache telling `hook` of every update made through it (clones made before
    /// this call do not).
    #[must_use]
    pub fn with_update_hook(mut self, hook: Arc<dyn UpdateHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The storage key of an entry: a hash of instance name, digest function and action digest,
    /// so instance names are separate namespaces.
    pub fn key(instance: &str, action: &Digest) -> Key {
        let mut h = Sha256::new();
        h.update(b"kiln-ac\0");
        h.update((instance.len() as u64).to_le_bytes());
        h.update(instance.as_bytes());
        h.update([action.function.tag()]);
        h.update(action.hash);
        h.update(action.size.to_le_bytes());
        Key::new(Key::SPACE_AC, h.finalize().into())
    }

    /// The storage key of an entry by the action's hash alone: what entries are stored
    /// under, so that a client naming the action without its size (the HTTP cache API's
    /// `/ac/<hash>`) finds the same entry as gRPC. The hash determines the size; entries
    /// stored under [`ActionCache::key`] by older versions are still read.
    pub fn hash_key(instance: &str, action: &Digest) -> Key {
        let mut h = Sha256::new();
        h.update(b"kiln-ac-hash\0");
        h.update((instance.len() as u64).to_le_bytes());
        h.update(instance.as_bytes());
        h.update([action.function.tag()]);
        h.update(action.hash);
        Key::new(Key::SPACE_AC, h.finalize().into())
    }

    /// Looks an action up. Fails with `ActionNotFound` on a miss and when any referenced blob
    /// is missing; every referenced blob's life is extended on a hit. Every read (the entry,
    /// its trees, the inlined outputs) goes through `cas/read.rs`: what is on disk is read on
    /// a blocking thread, not on the caller's runtime thread.
    pub async fn get(
        &self,
        instance: &str,
        action: &Digest,
        inline: &InlineRequest,
    ) -> Result<ActionResult, CasError> {
        let Some(mut result) = self.lookup(instance, action).await? else {
            return Err(CasError::ActionNotFound(*action));
        };
        if self.missing_blobs(&result, action.function).await? != Some(vec![]) {
            return Err(CasError::ActionNotFound(*action));
        }
        self.inline_outputs(&mut result, action.function, inline)
            .await?;
        Ok(result)
    }

    /// The stored entry for an action, without the completeness check: for a caller that
    /// judges completeness itself (the upstream tier counts blobs the upstream has as
    /// present). `None` on a miss and for an undecodable entry.
    pub async fn lookup(
        &self,
        instance: &str,
        action: &Digest,
    ) -> Result<Option<ActionResult>, CasError> {
        let store = &self.store;
        let mut found = self
            .cas
            .read_key(store, Self::hash_key(instance, action))
            .await?;
        if found.is_none() {
            // An entry stored before entries were keyed by hash alone. Probed with `contains`
            // first so a miss counts once in `kiln_store_gets_total{space="ac"}`.
            let legacy = Self::key(instance, action);
            if store.contains(&legacy)? {
                found = self.cas.read_key(store, legacy).await?;
            }
        }
        let Some(blob) = found else {
            return Ok(None);
        };
        let Ok(result) = ActionResult::decode(blob.to_bytes()?) else {
            tracing::warn!(%action, instance, "undecodable action-cache entry treated as a miss");
            return Ok(None);
        };
        Ok(Some(result))
    }

    /// Stores a result after validating every digest in it.
    pub async fn update(
        &self,
        instance: &str,
        action: &Digest,
        result: &ActionResult,
    ) -> Result<(), CasError> {
        check_outputs(result)?;
        let referenced = referenced_digests(result)
            .map(|d| Digest::from_proto(action.function, d))
            .collect::<Result<Vec<_>, _>>()?;
        // Storing a result is a use of the blobs it names: the lookup records a touch, so
        // the outputs age with the entry that needs them (FORMAT.md "Eviction and
        // copy-forward"). A result written long after its outputs were uploaded (or a
        // client that uploads once and stores many results) keeps them alive. Missing ones
        // are not an error here; a lookup of the result reports it incomplete.
        self.cas.find_missing(&referenced)?;
        let mut stored = result.clone();
        // Inline bytes are served from the CAS on demand; keep entries small.
        stored.stdout_raw = Bytes::new();
        stored.stderr_raw = Bytes::new();
        for f in &mut stored.output_files {
            f.contents = Bytes::new();
        }
        self.store
            .put(
                Self::hash_key(instance, action),
                Bytes::from(stored.encode_to_vec()),
            )
            .await?;
        if let Some(hook) = &self.hook {
            hook.updated(instance, action)
                .await
                .map_err(CasError::Forward)?;
        }
        Ok(())
    }

    /// The blobs `result` needs that the local CAS lacks (each present one's life is
    /// extended): outputs, stdout/stderr, tree blobs, and the files of the trees stored here
    /// (a missing tree's files are not known until it is fetched). `None` when the result can
    /// never be complete (a digest that does not parse, a tree that does not decode).
    pub async fn missing_blobs(
        &self,
        result: &ActionResult,
        function: DigestFunction,
    ) -> Result<Option<Vec<Digest>>, CasError> {
        let mut missing = Vec::new();
        for d in referenced_digests(result) {
            let Ok(d) = Digest::from_proto(function, d) else {
                return Ok(None);
            };
            if !self.cas.contains(&d)? {
                missing.push(d);
            }
        }
        for dir in &result.output_directories {
            let Some(tree_digest) = dir.tree_digest.as_ref() else {
                continue;
            };
            let Ok(tree_digest) = Digest::from_proto(function, tree_digest) else {
                return Ok(None);
            };
            let Some(tree) = self.cas.read(&tree_digest).await? else {
                continue;
            };
            let Ok(tree) = Tree::decode(tree.to_bytes()?) else {
                return Ok(None);
            };
            let files = tree
                .root
                .iter()
                .chain(tree.children.iter())
                .flat_map(|d| d.files.iter());
            for f in files {
                let Some(Ok(d)) = f.digest.as_ref().map(|d| Digest::from_proto(function, d)) else {
                    return Ok(None);
                };
                if !self.cas.contains(&d)? {
                    missing.push(d);
                }
            }
        }
        Ok(Some(missing))
    }

    /// Fills the inline fields `inline` asks for from the local CAS, within its byte budget;
    /// a blob not stored here stays referenced by digest only.
    pub async fn inline_outputs(
        &self,
        result: &mut ActionResult,
        function: DigestFunction,
        inline: &InlineRequest,
    ) -> Result<(), CasError> {
        let mut budget = inline.max_bytes;
        let mut take =
            async |d: Option<&crate::proto::reapi::Digest>| -> Result<Option<Bytes>, CasError> {
                let Some(d) = d else { return Ok(None) };
                let d = Digest::from_proto(function, d)?;
                if d.size > budget {
                    return Ok(None);
                }
                budget -= d.size;
                Ok(self.cas.read(&d).await?.map(|b| b.to_bytes()).transpose()?)
            };
        if inline.stdout
            && let Some(b) = take(result.stdout_digest.as_ref()).await?
        {
            result.stdout_raw = b;
        }
        if inline.stderr
            && let Some(b) = take(result.stderr_digest.as_ref()).await?
        {
            result.stderr_raw = b;
        }
        for f in &mut result.output_files {
            if inline.files.contains(&f.path)
                && let Some(b) = take(f.digest.as_ref()).await?
            {
                f.contents = b;
            }
        }
        Ok(())
    }
}

/// Every output must name its content and a relative path inside the action's directory: an
/// entry without a digest, or with a path like `/etc/x` or `../x`, is refused rather than stored
/// for every later build to take.
#[allow(deprecated)] // Bazel 2.x and other v2.0 clients still fill the older symlink lists.
fn check_outputs(result: &ActionResult) -> Result<(), CasError> {
    let bad = |what: &str, path: &str, why: &str| {
        Err(CasError::InvalidArgument(format!(
            "ActionResult.{what} {path:?}: {why}"
        )))
    };
    let paths = result
        .output_files
        .iter()
        .map(|f| ("output_files", f.path.as_str(), f.digest.is_none()))
        .chain(result.output_directories.iter().map(|d| {
            (
                "output_directories",
                d.path.as_str(),
                d.tree_digest.is_none(),
            )
        }))
        .chain(
            result
                .output_symlinks
                .iter()
                .chain(&result.output_file_symlinks)
                .chain(&result.output_directory_symlinks)
                .map(|l| ("output_symlinks", l.path.as_str(), false)),
        );
    for (what, path, no_digest) in paths {
        if no_digest {
            return bad(what, path, "has no digest");
        }
        if path.is_empty() && what != "output_directories" {
            return bad(what, path, "empty path");
        }
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return bad(
                what,
                path,
                "must be relative and stay inside the action directory",
            );
        }
    }
    Ok(())
}

/// Every blob digest an action result points at directly (trees' contents aside).
fn referenced_digests(result: &ActionResult) -> impl Iterator<Item = &crate::proto::reapi::Digest> {
    result
        .output_files
        .iter()
        .filter_map(|f| f.digest.as_ref())
        .chain(
            result
                .output_directories
                .iter()
                .filter_map(|d| d.tree_digest.as_ref()),
        )
        .chain(result.stdout_digest.as_ref())
        .chain(result.stderr_digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reapi::{Directory, FileNode, OutputDirectory, OutputFile};
    use crate::storage::MemoryStore;

    fn setup() -> (Cas, ActionCache) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 30));
        let cas = Cas::new(store.clone());
        (cas.clone(), ActionCache::new(cas, store))
    }

    async fn put(cas: &Cas, data: &[u8]) -> Digest {
        let d = DigestFunction::Sha256.digest_of(data);
        cas.put(&d, Bytes::copy_from_slice(data)).await.unwrap();
        d
    }

    #[tokio::test]
    async fn miss_hit_and_instance_separation() {
        let (cas, ac) = setup();
        let action = put(&cas, b"action").await;
        let out = put(&cas, b"output").await;
        let result = ActionResult {
            output_files: vec![OutputFile {
                path: "o".into(),
                digest: Some(out.to_proto()),
                ..Default::default()
            }],
            exit_code: 0,
            ..Default::default()
        };
        let none = InlineRequest::default();
        assert!(matches!(
            ac.get("a", &action, &none).await,
            Err(CasError::ActionNotFound(_))
        ));
        ac.update("a", &action, &result).await.unwrap();
        assert_eq!(
            ac.get("a", &action, &none)
                .await
                .unwrap()
                .output_files
                .len(),
            1
        );
        assert!(matches!(
            ac.get("b", &action, &none).await,
            Err(CasError::ActionNotFound(_))
        ));
        let inline = InlineRequest {
            files: vec!["o".into()],
            max_bytes: 100,
            ..Default::default()
        };
        assert_eq!(
            ac.get("a", &action, &inline).await.unwrap().output_files[0]
                .contents
                .as_ref(),
            b"output"
        );
    }

    #[tokio::test]
    async fn incomplete_results_are_misses() {
        let (cas, ac) = setup();
        let action = put(&cas, b"action2").await;
        let absent = DigestFunction::Sha256.digest_of(b"never uploaded");
        let with_missing_stdout = ActionResult {
            stdout_digest: Some(absent.to_proto()),
            ..Default::default()
        };
        ac.update("", &action, &with_missing_stdout).await.unwrap();
        assert!(matches!(
            ac.get("", &action, &InlineRequest::default()).await,
            Err(CasError::ActionNotFound(_))
        ));

        // A tree whose file is missing also makes the result incomplete.
        let tree = Tree {
            root: Some(Directory {
                files: vec![FileNode {
                    name: "f".into(),
                    digest: Some(absent.to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            children: vec![],
        };
        let tree_digest = put(&cas, &tree.encode_to_vec()).await;
        let with_tree = ActionResult {
            output_directories: vec![OutputDirectory {
                path: "d".into(),
                tree_digest: Some(tree_digest.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        ac.update("", &action, &with_tree).await.unwrap();
        assert!(
            ac.get("", &action, &InlineRequest::default())
                .await
                .is_err()
        );
        put(&cas, b"never uploaded").await;
        assert!(ac.get("", &action, &InlineRequest::default()).await.is_ok());
    }

    #[tokio::test]
    async fn update_rejects_bad_digests() {
        let (_cas, ac) = setup();
        let action = DigestFunction::Sha256.digest_of(b"x");
        let bad = ActionResult {
            stdout_digest: Some(crate::proto::reapi::Digest {
                hash: "zz".into(),
                size_bytes: 1,
            }),
            ..Default::default()
        };
        assert!(matches!(
            ac.update("", &action, &bad).await,
            Err(CasError::Digest(_))
        ));
    }
}
