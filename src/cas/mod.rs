//! Content-addressable storage and action-cache semantics over a [`Store`].
//!
//! This layer turns digests into storage keys, verifies every uploaded byte against its digest
//! (hashing once, as the bytes stream in), treats the empty blob as always present, and checks
//! action results for completeness. It knows protobuf messages but not gRPC.
//!
//! It owns the digest-to-key rule ([`Cas::key`]) and everything derived from it: the scrub's
//! SHA-256 check (`scrub.rs`, for `kiln verify`) and the one Directory walk (`walk.rs`, used by
//! GetTree in `tree.rs`, by the Execute input check and by the worker).

mod action_cache;
pub mod chunk_list;
pub mod chunking;
pub mod compression;
pub mod directory;
mod error;
pub mod local;
mod read;
mod records;
pub mod scrub;
mod split;
mod tree;
mod tree_pagers;
mod tree_stream;
mod upload;
pub mod walk;

/// A blob as the CAS serves it (a view of stored bytes, possibly in several parts).
pub use crate::storage::{Blob, Encoded};
pub use action_cache::{ActionCache, InlineRequest, UpdateHook};
pub use error::CasError;
pub use read::{COLD_READS, TREE_WALKS};
pub use records::MAX_ASSET_RECORD_BYTES;
pub use split::FAST_CDC;
use tree::WalkBudget;
pub use tree::{
    MAX_DIRECTORY_BYTES, MAX_PAGE_BYTES, MAX_TREE_DIRECTORIES, MAX_WALKED_DIRECTORIES, TreePage,
    TreePager, get_tree_page,
};
pub use tree_pagers::PausedTrees;
pub use tree_stream::{STALLED_WALK, StreamedWalk};
pub use upload::Upload;

use crate::digest::{Digest, DigestFunction};
use crate::storage::{Key, Store};
use bytes::Bytes;
use std::sync::Arc;

/// The content-addressable store: shared by every instance name.
#[derive(Clone)]
pub struct Cas {
    store: Arc<dyn Store>,
    /// Slots for reads that wait on the disk (`read.rs`).
    cold: Arc<tokio::sync::Semaphore>,
    /// Slots for GetTree pages (`read.rs`).
    walks: Arc<tokio::sync::Semaphore>,
    /// The directories GetTree walks may hold (`tree.rs`).
    walked: Arc<WalkBudget>,
}

impl Cas {
    /// A CAS over `store`. The store may be shared with an [`ActionCache`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cold: Arc::new(tokio::sync::Semaphore::new(COLD_READS)),
            walks: Arc::new(tokio::sync::Semaphore::new(TREE_WALKS)),
            walked: Arc::new(WalkBudget::new(
                MAX_TREE_DIRECTORIES,
                MAX_WALKED_DIRECTORIES,
                MAX_DIRECTORY_BYTES,
            )),
        }
    }

    /// This CAS with other bounds on GetTree walks: the distinct directories one walk may
    /// hold (`per_walk`) and every walk at once, parked ones included (`all_walks`), and the
    /// largest Directory a walk reads (`directory_bytes`).
    #[must_use]
    pub fn with_walk_limits(
        mut self,
        per_walk: usize,
        all_walks: usize,
        directory_bytes: u64,
    ) -> Self {
        self.walked = Arc::new(WalkBudget::new(per_walk, all_walks, directory_bytes));
        self
    }

    /// The distinct directories the GetTree walks under way (and parked) hold, read when
    /// called. It holds the count alone, not the store: a metrics source must not keep the
    /// storage engine alive past the server.
    pub fn walked_directories(&self) -> impl Fn() -> usize + Send + Sync + 'static + use<> {
        let walked = self.walked.clone();
        move || walked.held()
    }

    /// The storage key of a blob: its hash, in the key space of its digest function (the
    /// same bytes stored under SHA-256 and BLAKE3 are two entries, each verifiable alone).
    pub fn key(digest: &Digest) -> Key {
        Key::new(Self::space(digest.function), digest.hash)
    }

    /// The key space of blobs named by `function`.
    pub fn space(function: DigestFunction) -> u8 {
        match function {
            DigestFunction::Sha256 => Key::SPACE_CAS,
            DigestFunction::Blake3 => Key::SPACE_CAS_BLAKE3,
        }
    }

    /// The digest function whose blobs live in key space `space`, if any.
    pub fn function_of_space(space: u8) -> Option<DigestFunction> {
        DigestFunction::ALL
            .into_iter()
            .find(|f| Self::space(*f) == space)
    }

    /// The largest blob the store accepts.
    pub fn max_blob_size(&self) -> u64 {
        self.store.max_blob_size()
    }

    /// Whether a blob is present. A hit extends the blob's life.
    pub fn contains(&self, digest: &Digest) -> Result<bool, CasError> {
        if digest.is_empty_blob() {
            return Ok(true);
        }
        Ok(self.store.contains(&Self::key(digest))?)
    }

    /// The digests among `digests` that are not present, in request order.
    pub fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        let asked: Vec<&Digest> = digests.iter().filter(|d| !d.is_empty_blob()).collect();
        let keys: Vec<Key> = asked.iter().map(|d| Self::key(d)).collect();
        let present = self.store.contains_many(&keys)?;
        debug_assert_eq!(present.len(), keys.len(), "one answer per key");
        Ok(asked
            .into_iter()
            .zip(present)
            .filter(|(_, p)| !p)
            .map(|(d, _)| *d)
            .collect())
    }

    /// `get` for many digests, answers in order: the store reads the blobs from disk
    /// together rather than one after another (BatchReadBlobs).
    pub fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<Blob>>, CasError> {
        let found = self.store.get_many(&Self::stored_keys(digests))?;
        Ok(Self::answers(digests, found))
    }

    /// Reads a blob. A stored record whose length differs from the digest's size is a miss.
    pub fn get(&self, digest: &Digest) -> Result<Option<Blob>, CasError> {
        Ok(Self::sized(digest, self.get_by_hash(digest)?))
    }

    /// The keys of `digests` that a read asks the store for: all but the empty blob's.
    fn stored_keys(digests: &[Digest]) -> Vec<Key> {
        digests
            .iter()
            .filter(|d| !d.is_empty_blob())
            .map(Self::key)
            .collect()
    }

    /// The answers to a read of `digests`, from what the store `found` for their
    /// `stored_keys`, in order.
    fn answers(digests: &[Digest], found: Vec<Option<Blob>>) -> Vec<Option<Blob>> {
        let mut found = found.into_iter();
        digests
            .iter()
            .map(|d| {
                if d.is_empty_blob() {
                    return Some(Blob::default());
                }
                Self::sized(d, found.next().flatten())
            })
            .collect()
    }

    /// A stored blob as `digest` names it: one whose length differs is a miss.
    fn sized(digest: &Digest, found: Option<Blob>) -> Option<Blob> {
        found.filter(|b| b.len() == digest.size)
    }

    /// Reads a blob named by its hash alone (the HTTP cache API's `/cas/<hash>` has no size):
    /// the stored record's length is the size. `digest.size` is ignored.
    pub fn get_by_hash(&self, digest: &Digest) -> Result<Option<Blob>, CasError> {
        if Self::is_empty_hash(digest) {
            return Ok(Some(Blob::default()));
        }
        Ok(self.store.get(&Self::key(digest))?)
    }

    /// Whether `digest`'s hash is the empty blob's (its size aside).
    fn is_empty_hash(digest: &Digest) -> bool {
        digest.hash == Digest::empty(digest.function).hash
    }

    /// Reads a blob into one buffer, or fails with `BlobNotFound`.
    pub fn get_bytes(&self, digest: &Digest) -> Result<Bytes, CasError> {
        Self::found_bytes(digest, self.get(digest)?)
    }

    /// The bytes of what a read of `digest` `found`, in one buffer, or `BlobNotFound`.
    fn found_bytes(digest: &Digest, found: Option<Blob>) -> Result<Bytes, CasError> {
        found
            .ok_or(CasError::BlobNotFound(*digest))?
            .to_bytes()
            .map_err(CasError::from)
    }

    /// Stores a blob held in memory after checking it matches `digest`.
    pub async fn put(&self, digest: &Digest, data: Bytes) -> Result<(), CasError> {
        let mut results = self.put_many(vec![(*digest, data)]).await;
        results.pop().expect("one result per item")
    }

    /// Stores several in-memory blobs after checking each against its digest, committing the
    /// new ones together. Returns one result per item, in order.
    pub async fn put_many(&self, items: Vec<(Digest, Bytes)>) -> Vec<Result<(), CasError>> {
        self.put_each(items, true).await
    }

    /// [`Cas::put`] of a blob whose digest the caller computed from these very bytes (a
    /// download it verified, an HTTP body it hashed): not hashed again.
    pub async fn put_hashed(&self, digest: &Digest, data: Bytes) -> Result<(), CasError> {
        let mut results = self.put_each(vec![(*digest, data)], false).await;
        results.pop().expect("one result per item")
    }

    /// [`Cas::put_many`] of blobs hashed by the caller, as [`Cas::put_hashed`].
    pub(crate) async fn put_many_hashed(
        &self,
        items: Vec<(Digest, Bytes)>,
    ) -> Vec<Result<(), CasError>> {
        self.put_each(items, false).await
    }

    async fn put_each(
        &self,
        items: Vec<(Digest, Bytes)>,
        check: bool,
    ) -> Vec<Result<(), CasError>> {
        let mut results: Vec<Result<(), CasError>> = Vec::with_capacity(items.len());
        let mut to_store = Vec::new();
        let mut stored_at = Vec::new();
        for (digest, data) in items {
            let checked = if check {
                verify(&digest, &data)
            } else {
                Ok(())
            }
            .and_then(|()| self.contains(&digest));
            match checked {
                Ok(true) => results.push(Ok(())),
                Ok(false) => {
                    stored_at.push(results.len());
                    to_store.push((Self::key(&digest), data));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if to_store.is_empty() {
            return results;
        }
        if let Err(e) = self.store.put_many(to_store).await {
            for i in stored_at {
                results[i] = Err(CasError::Storage(e.duplicate()));
            }
        }
        results
    }

    /// Starts a streamed, verified upload. `None` when the blob is already present (or
    /// empty), so the caller can answer at once.
    pub async fn begin_upload(&self, digest: Digest) -> Result<Option<Upload>, CasError> {
        if self.contains(&digest)? {
            return Ok(None);
        }
        let writer = self
            .store
            .begin_write(Self::key(&digest), digest.size)
            .await?;
        Ok(Some(Upload::new(digest, writer)))
    }
}

/// Checks a whole buffer against its digest.
pub fn verify(digest: &Digest, data: &[u8]) -> Result<(), CasError> {
    let actual = digest.function.digest_of(data);
    if actual != *digest {
        return Err(CasError::DigestMismatch {
            expected: *digest,
            actual_hash: actual.hash_hex(),
            actual_size: actual.size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::storage::MemoryStore;

    fn cas() -> Cas {
        Cas::new(Arc::new(MemoryStore::new(1 << 30)))
    }

    #[tokio::test]
    async fn put_verifies_and_get_returns_bytes() {
        let cas = cas();
        let d = DigestFunction::Sha256.digest_of(b"hello");
        assert!(!cas.contains(&d).unwrap());
        cas.put(&d, Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(cas.get_bytes(&d).unwrap(), Bytes::from_static(b"hello"));
        let wrong = DigestFunction::Sha256.digest_of(b"other");
        let err = cas
            .put(&wrong, Bytes::from_static(b"hello"))
            .await
            .unwrap_err();
        assert!(matches!(err, CasError::DigestMismatch { .. }), "{err}");
        assert!(!cas.contains(&wrong).unwrap());
    }

    #[tokio::test]
    async fn get_many_answers_in_order_like_get() {
        let cas = cas();
        let f = DigestFunction::Sha256;
        let a = f.digest_of(b"a");
        cas.put(&a, Bytes::from_static(b"a")).await.unwrap();
        let absent = f.digest_of(b"absent");
        let empty = f.digest_of(b"");
        // The stored blob under a digest that claims another size: a miss, as for `get`.
        let mut wrong_size = a;
        wrong_size.size = 2;
        let asked = [absent, a, empty, wrong_size, a];
        let got = cas.get_many(&asked).unwrap();
        let lens: Vec<_> = got.iter().map(|b| b.as_ref().map(Blob::len)).collect();
        assert_eq!(lens, [None, Some(1), Some(0), None, Some(1)]);
        for (d, b) in asked.iter().zip(&got) {
            assert_eq!(
                cas.get(d).unwrap().map(|b| b.len()),
                b.as_ref().map(Blob::len)
            );
        }
    }

    #[tokio::test]
    async fn put_many_reports_each_item() {
        let cas = cas();
        let a = DigestFunction::Sha256.digest_of(b"a");
        let b = DigestFunction::Sha256.digest_of(b"b");
        cas.put(&a, Bytes::from_static(b"a")).await.unwrap();
        let wrong = DigestFunction::Sha256.digest_of(b"not c");
        let results = cas
            .put_many(vec![
                (a, Bytes::from_static(b"a")),
                (wrong, Bytes::from_static(b"c")),
                (b, Bytes::from_static(b"b")),
            ])
            .await;
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(CasError::DigestMismatch { .. })));
        assert!(results[2].is_ok());
        assert!(cas.contains(&b).unwrap());
        assert!(!cas.contains(&wrong).unwrap());
    }

    #[tokio::test]
    async fn empty_blob_always_present() {
        let cas = cas();
        let e = Digest::empty(DigestFunction::Sha256);
        assert!(cas.contains(&e).unwrap());
        assert_eq!(cas.get(&e).unwrap().unwrap().len(), 0);
        assert!(cas.find_missing(&[e]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn size_mismatch_is_a_miss() {
        let cas = cas();
        let d = DigestFunction::Sha256.digest_of(b"hello");
        cas.put(&d, Bytes::from_static(b"hello")).await.unwrap();
        let other_size = Digest { size: 6, ..d };
        assert!(cas.get(&other_size).unwrap().is_none());
    }
}
