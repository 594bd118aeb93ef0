//! Small records other layers keep in the engine next to the CAS, and lookups by hash alone.
//!
//! The Remote Asset API remembers which digest a URI and its qualifiers resolved to; it chooses
//! the 32-byte id and the bytes, this file only keeps them under [`Key::SPACE_ASSET`] so the
//! layers above never touch the engine. A SHA-256 `checksum.sri` names content by hash without
//! its size, so [`Cas::find_by_hash`] returns the stored blob's digest, size included.

use super::{Cas, CasError};
use crate::digest::{Digest, DigestFunction};
use crate::storage::Key;
use bytes::Bytes;

/// Largest asset record kept (they are fixed-size and far smaller).
pub const MAX_ASSET_RECORD_BYTES: usize = 256;

impl Cas {
    /// The stored blob with this hash, if any, as a full digest.
    pub async fn find_by_hash(
        &self,
        function: DigestFunction,
        hash: [u8; 32],
    ) -> Result<Option<Digest>, CasError> {
        let mut digest = Digest {
            function,
            hash,
            size: 0,
        };
        if digest.is_empty_blob() {
            return Ok(Some(digest));
        }
        let found = self.read_key(&self.store, Self::key(&digest)).await?;
        Ok(found.map(|blob| {
            digest.size = blob.len();
            digest
        }))
    }

    /// The asset record under `id`, if kept (and not larger than any record written).
    pub async fn asset_record(&self, id: [u8; 32]) -> Result<Option<Bytes>, CasError> {
        Ok(self
            .read_key(&self.store, Key::new(Key::SPACE_ASSET, id))
            .await?
            .filter(|b| b.len() <= MAX_ASSET_RECORD_BYTES as u64)
            .map(|b| b.to_bytes())
            .transpose()?)
    }

    /// Keeps (or replaces) the asset record under `id`.
    pub async fn put_asset_record(&self, id: [u8; 32], record: Bytes) -> Result<(), CasError> {
        if record.len() > MAX_ASSET_RECORD_BYTES {
            return Err(CasError::InvalidArgument(format!(
                "asset record of {} bytes, over {MAX_ASSET_RECORD_BYTES}",
                record.len()
            )));
        }
        self.store
            .put(Key::new(Key::SPACE_ASSET, id), record)
            .await?;
        Ok(())
    }
}
