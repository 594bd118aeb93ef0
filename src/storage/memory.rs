//! An in-memory store: for unit tests and as the model the engine is checked against.

use super::{Blob, BlobWriter, Key, StorageError, Store};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A `Store` in a hash map. Use it in tests; it never evicts.
#[derive(Clone, Default)]
pub struct MemoryStore {
    map: Arc<RwLock<HashMap<Key, Bytes>>>,
    max_blob_size: u64,
}

impl MemoryStore {
    /// An empty store accepting blobs up to `max_blob_size` bytes.
    pub fn new(max_blob_size: u64) -> Self {
        Self {
            map: Arc::default(),
            max_blob_size,
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn get(&self, key: &Key) -> Result<Option<Blob>, StorageError> {
        Ok(self
            .map
            .read()
            .expect("lock")
            .get(key)
            .cloned()
            .map(Blob::from_bytes))
    }

    fn contains(&self, key: &Key) -> Result<bool, StorageError> {
        Ok(self.map.read().expect("lock").contains_key(key))
    }

    async fn begin_write(&self, key: Key, len: u64) -> Result<Box<dyn BlobWriter>, StorageError> {
        if len > self.max_blob_size {
            return Err(StorageError::TooLarge {
                len,
                max: self.max_blob_size,
            });
        }
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            key,
            len,
            buf: BytesMut::new(),
        }))
    }

    fn max_blob_size(&self) -> u64 {
        self.max_blob_size
    }
}

struct MemoryWriter {
    store: MemoryStore,
    key: Key,
    len: u64,
    buf: BytesMut,
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let got = self.buf.len() as u64 + chunk.len() as u64;
        if got > self.len {
            return Err(StorageError::LengthMismatch {
                announced: self.len,
                got,
            });
        }
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StorageError> {
        if self.buf.len() as u64 != self.len {
            return Err(StorageError::LengthMismatch {
                announced: self.len,
                got: self.buf.len() as u64,
            });
        }
        self.store
            .map
            .write()
            .expect("lock")
            .insert(self.key, self.buf.freeze());
        Ok(())
    }
}
