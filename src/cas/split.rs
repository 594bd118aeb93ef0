//! SplitBlob and SpliceBlob (REAPI v2.12): a stored blob cut into content-defined chunks that
//! are themselves CAS blobs, and a blob assembled from chunks already in the CAS.
//!
//! The chunk list of a split is kept under [`Key::SPACE_SPLIT`] (keyed like the blob), so a
//! second split of the same blob is one lookup plus a presence check of its chunks; chunks
//! evicted since are cut and stored again. A splice verifies the assembled blob's digest while
//! it streams the chunks into the store, and publishes nothing unless it matches.

use super::chunk_list::{ChunkList, Chunking};
use super::{Cas, CasError, chunking};
use crate::digest::Digest;
use crate::storage::Key;
use bytes::Bytes;

/// Chunk bytes a split hands to the store at once (bounds the memory of one split).
const STORE_BATCH_BYTES: u64 = 16 << 20;

/// The chunking this server advertises and uses.
pub const FAST_CDC: Chunking = Chunking::FastCdc2020 {
    avg: chunking::AVG_CHUNK_BYTES,
    seed: chunking::SEED,
};

impl Cas {
    /// The chunk list's key: the blob's hash with its function's tag folded in, so a SHA-256
    /// and a BLAKE3 blob never share a list even if their hashes ever matched.
    fn split_key(blob: &Digest) -> Key {
        let mut id = blob.hash;
        id[0] ^= blob.function.tag().wrapping_sub(1);
        Key::new(Key::SPACE_SPLIT, id)
    }

    /// The chunk list of a stored blob, with every chunk present in the CAS when this returns.
    /// `BlobNotFound` when the blob is not stored.
    pub async fn split(&self, blob: &Digest) -> Result<ChunkList, CasError> {
        if blob.is_empty_blob() {
            return Ok(ChunkList {
                chunking: FAST_CDC,
                chunks: Vec::new(),
            });
        }
        // Also extends the blob's life, as the spec asks of a split.
        if !self.contains(blob)? {
            return Err(CasError::BlobNotFound(*blob));
        }
        if let Some(list) = self.stored_split(blob).await?
            && self.find_missing(&list.chunks)?.is_empty()
        {
            return Ok(list);
        }
        let data = self
            .read(blob)
            .await?
            .ok_or(CasError::BlobNotFound(*blob))?;
        let cas = self.clone();
        let function = blob.function;
        let handle = tokio::runtime::Handle::current();
        // Chunking and hashing are CPU work: off the async threads, storing each batch of
        // chunks as it fills.
        let chunks = tokio::task::spawn_blocking(move || {
            let mut digests = Vec::new();
            let mut batch: Vec<(Digest, Bytes)> = Vec::new();
            let mut batch_bytes = 0u64;
            chunking::split(&data, function, |c| {
                digests.push(c.digest);
                batch_bytes += c.digest.size;
                batch.push((c.digest, c.data));
                if batch_bytes >= STORE_BATCH_BYTES {
                    handle.block_on(cas.store_missing(std::mem::take(&mut batch)))?;
                    batch_bytes = 0;
                }
                Ok::<(), CasError>(())
            })?;
            handle.block_on(cas.store_missing(batch))?;
            Ok::<_, CasError>(digests)
        })
        .await
        .map_err(|e| CasError::InvalidArgument(format!("splitting {blob} failed: {e}")))??;
        let list = ChunkList {
            chunking: FAST_CDC,
            chunks,
        };
        self.remember_split(blob, &list).await;
        Ok(list)
    }

    /// Assembles `blob` from `chunks` (all in the CAS) and stores it, verifying its digest
    /// first. Whatever chunking the client says it used, its list is not remembered as the
    /// blob's split: SplitBlob answers "FastCDC 2020 with these parameters", and only a cut
    /// this server made is known to be that (chunk sizes within FastCDC's bounds do not make
    /// a list FastCDC's).
    pub async fn splice(&self, blob: Digest, chunks: &[Digest]) -> Result<(), CasError> {
        let total = chunks
            .iter()
            .try_fold(0u64, |sum, c| sum.checked_add(c.size))
            .ok_or_else(|| CasError::InvalidArgument("chunk sizes overflow".into()))?;
        if total != blob.size {
            return Err(CasError::InvalidArgument(format!(
                "the {} chunks total {total} bytes, but blob_digest {blob} has {} bytes",
                chunks.len(),
                blob.size
            )));
        }
        let max = self.max_blob_size();
        if blob.size > max {
            return Err(CasError::InvalidArgument(format!(
                "blob {blob} is larger than the max blob size ({max} bytes)"
            )));
        }
        let missing = self.find_missing(chunks)?;
        if let Some(first) = missing.first() {
            return Err(CasError::ChunksMissing {
                blob,
                count: missing.len(),
                first: *first,
            });
        }
        // Already stored: a no-op, as the spec allows (the chunks were touched above).
        let Some(mut upload) = self.begin_upload(blob).await? else {
            return Ok(());
        };
        for c in chunks.iter().filter(|c| !c.is_empty_blob()) {
            let data = self.read(c).await?.ok_or(CasError::ChunksMissing {
                blob,
                count: 1,
                first: *c,
            })?;
            for part in data.read(0, u64::MAX, 1 << 20) {
                upload.write(part?).await?;
            }
        }
        upload.finish().await.map_err(|e| match e {
            CasError::DigestMismatch {
                actual_hash,
                actual_size,
                ..
            } => CasError::InvalidArgument(format!(
                "the chunks concatenate to {actual_hash}/{actual_size}, not blob_digest {blob}; \
                 nothing was stored"
            )),
            e => e,
        })?;
        Ok(())
    }

    /// The remembered chunk list of `blob`, if one was cut with the current parameters. A
    /// damaged record is logged and ignored (the blob is split again).
    async fn stored_split(&self, blob: &Digest) -> Result<Option<ChunkList>, CasError> {
        let Some(record) = self.read_key(&self.store, Self::split_key(blob)).await? else {
            return Ok(None);
        };
        match ChunkList::decode(&record.to_bytes()?, blob) {
            Ok(list) if list.chunking == FAST_CDC => Ok(Some(list)),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(%blob, error = %e, "ignoring a stored chunk list");
                Ok(None)
            }
        }
    }

    /// Keeps `list` as `blob`'s split. Failing to is not the client's problem: the next split
    /// cuts the blob again.
    async fn remember_split(&self, blob: &Digest, list: &ChunkList) {
        let record = Bytes::from(list.encode());
        if let Err(e) = self.store.put(Self::split_key(blob), record).await {
            tracing::warn!(%blob, error = %e, "could not keep a chunk list");
        }
    }

    /// Stores the chunks of `batch` not already present (their digests were computed from
    /// their bytes as they were cut; the presence check touches the ones already stored).
    async fn store_missing(&self, batch: Vec<(Digest, Bytes)>) -> Result<(), CasError> {
        for r in self.put_many_hashed(batch).await {
            r?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::storage::{MemoryStore, Store};
    use std::sync::Arc;

    fn sha(data: &[u8]) -> Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    #[tokio::test]
    async fn a_split_is_remembered_and_its_record_reused() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 30));
        let cas = Cas::new(store.clone());
        let blob = sha(b"hello world");
        cas.put(&blob, Bytes::from_static(b"hello world"))
            .await
            .unwrap();
        // Small blob: FastCDC cuts it as one chunk, and the list is kept.
        let first = cas.split(&blob).await.unwrap();
        assert_eq!(first.chunks, vec![blob]);
        assert!(store.contains(&Cas::split_key(&blob)).unwrap());

        // A stored list whose chunks are present is answered as it is.
        let (a, b) = (sha(b"hello "), sha(b"world"));
        cas.put(&a, Bytes::from_static(b"hello ")).await.unwrap();
        cas.put(&b, Bytes::from_static(b"world")).await.unwrap();
        let kept = ChunkList {
            chunking: FAST_CDC,
            chunks: vec![a, b],
        };
        cas.remember_split(&blob, &kept).await;
        assert_eq!(cas.split(&blob).await.unwrap(), kept);

        // One naming a chunk no longer stored is cut again; so is a damaged record.
        let gone = ChunkList {
            chunking: FAST_CDC,
            chunks: vec![a, sha(b"wOrld")],
        };
        cas.remember_split(&blob, &gone).await;
        assert_eq!(cas.split(&blob).await.unwrap(), first);
        store
            .put(Cas::split_key(&blob), Bytes::from_static(b"KSPL junk"))
            .await
            .unwrap();
        assert_eq!(cas.split(&blob).await.unwrap(), first);
    }

    #[tokio::test]
    async fn a_spliced_list_is_never_kept_as_the_split() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 30)));
        let (a, b) = (sha(b"hello "), sha(b"world"));
        cas.put(&a, Bytes::from_static(b"hello ")).await.unwrap();
        cas.put(&b, Bytes::from_static(b"world")).await.unwrap();
        let blob = sha(b"hello world");
        // Chunks far below the minimum FastCDC size: stored, but not kept as the split.
        cas.splice(blob, &[a, b]).await.unwrap();
        assert!(cas.stored_split(&blob).await.unwrap().is_none());

        let big = vec![7u8; chunking::MIN_CHUNK_BYTES as usize];
        let c = sha(&big);
        cas.put(&c, Bytes::from(big.clone())).await.unwrap();
        let joined = sha(&[&big[..], b"world"].concat());
        // Sizes within FastCDC's bounds, said to be FastCDC: still the client's word only.
        cas.splice(joined, &[c, b]).await.unwrap();
        assert!(cas.stored_split(&joined).await.unwrap().is_none());
        assert!(cas.contains(&joined).unwrap());
        // Nor when the client says it used another chunking.
        let other = sha(&[&big[..], b"hello "].concat());
        cas.splice(other, &[c, a]).await.unwrap();
        assert!(cas.stored_split(&other).await.unwrap().is_none());
        assert!(cas.contains(&other).unwrap());
    }
}
