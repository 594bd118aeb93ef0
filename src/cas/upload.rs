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
}

impl Upload {
    pub(super) fn new(digest: Digest, writer: Box<dyn BlobWriter>) -> Self {
        Self {
            digest,
            hasher: digest.function.hasher(),
            writer,
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

    /// Appends the next chunk (uncompressed). More bytes than the digest's size is an error.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), CasError> {
        if self.hasher.size() + chunk.len() as u64 > self.digest.size {
            return Err(CasError::TooMuchData {
                expected: self.digest,
            });
        }
        self.hasher.update(&chunk);
        self.writer.write(chunk).await?;
        Ok(())
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
