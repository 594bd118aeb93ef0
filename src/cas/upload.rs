//! A streamed, verified upload: bytes are hashed as they pass to the store, and the blob is
//! published only if the digest checks out.

use super::CasError;
use crate::digest::{Digest, Hasher};
use crate::storage::BlobWriter;
use bytes::Bytes;

/// One blob upload in progress. Dropping it abandons the write.
pub struct Upload {
    digest: Digest,
    hasher: Hasher,
    writer: Box<dyn BlobWriter>,
    /// The writer's rewind step, when the blob spans more than one (a smaller blob stays in
    /// memory until commit and can only be cut back to nothing).
    step: Option<u64>,
    /// The hash state at the last multiple of `step`, so that [`Upload::park`] can cut the
    /// upload back to what is on disk.
    mark: Option<Hasher>,
}

impl Upload {
    pub(super) fn new(digest: Digest, writer: Box<dyn BlobWriter>) -> Self {
        let step = writer.rewind_step().filter(|s| *s > 0 && digest.size > *s);
        Self {
            digest,
            hasher: digest.function.hasher(),
            writer,
            step,
            mark: None,
        }
    }

    /// The digest this upload must match.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Uncompressed bytes received so far.
    pub fn received(&self) -> u64 {
        self.hasher.size()
    }

    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.digest.size - self.hasher.size()
    }

    /// Appends the next chunk (uncompressed). More bytes than the digest's size is an error.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), CasError> {
        if self.hasher.size() + chunk.len() as u64 > self.digest.size {
            return Err(CasError::TooMuchData {
                expected: self.digest,
            });
        }
        match self.step {
            None => self.hasher.update(&chunk),
            Some(step) => {
                // Hash up to each step boundary separately and remember the state there.
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    let to_boundary = step - self.hasher.size() % step;
                    let (now, later) = rest.split_at(to_boundary.min(rest.len() as u64) as usize);
                    self.hasher.update(now);
                    if self.hasher.size().is_multiple_of(step) {
                        self.mark = Some(self.hasher.clone());
                    }
                    rest = later;
                }
            }
        }
        self.writer.write(chunk).await?;
        Ok(())
    }

    /// The bytes a [`Upload::park`] now would keep: the whole steps already handed to the
    /// disk, or 0 when the writer cannot be cut back.
    pub fn resumable_from(&self) -> u64 {
        self.mark.as_ref().map_or(0, Hasher::size)
    }

    /// Frees the bytes this upload buffers in memory while it waits to be resumed, cutting it
    /// back to the part already on disk. Returns the bytes it still holds, or `None` when it
    /// cannot be cut back (the caller then drops it and the client starts again).
    pub fn park(&mut self) -> Option<u64> {
        let kept = self.writer.drop_buffered()?;
        if kept == 0 {
            self.hasher = self.digest.function.hasher();
            return Some(0);
        }
        let mark = self.mark.as_ref().filter(|m| m.size() == kept)?;
        self.hasher = mark.clone();
        Some(kept)
    }

    /// Checks the digest and publishes the blob.
    pub async fn finish(self) -> Result<(), CasError> {
        let actual = self.hasher.finish();
        if actual != self.digest {
            return Err(CasError::DigestMismatch {
                expected: self.digest,
                actual_hash: actual.hash_hex(),
                actual_size: actual.size,
            });
        }
        self.writer.commit().await?;
        Ok(())
    }
}
