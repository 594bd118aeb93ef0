//! A [`Store`] decorator that counts hits, misses, bytes and cold reads. It overrides nothing
//! else.

use super::{Metrics, OpLabels};
use crate::storage::{Blob, BlobWriter, Cached, Key, StorageError, Store};
use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;

/// Wraps a store and records every operation in [`Metrics`].
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    /// Meters `inner`. Use it once, around the store `setup` builds.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

fn space(key: &Key) -> &'static str {
    // SplitBlob chunk lists and Remote Asset records get their own labels, so their lookups
    // (a miss on every first fetch) do not blur the CAS hit ratio.
    match key.space {
        Key::SPACE_AC => "ac",
        Key::SPACE_SPLIT => "split",
        Key::SPACE_ASSET => "asset",
        _ => "cas",
    }
}

/// Counts the answers `r` to a batched lookup of `keys` in `family`: one counter update per
/// (space, result), not one per key; a failed batch once, under the first key's space.
fn count_batch<T>(
    family: &Family<OpLabels, Counter>,
    keys: &[Key],
    r: Result<Vec<T>, StorageError>,
    hit: impl Fn(&T) -> bool,
) -> Result<Vec<T>, StorageError> {
    let Ok(answers) = r else {
        if let Some(k) = keys.first() {
            let labels = OpLabels {
                space: space(k),
                result: "error",
            };
            family.get_or_create(&labels).inc();
        }
        return r;
    };
    let mut counts: std::collections::HashMap<(&'static str, &'static str), u64> =
        std::collections::HashMap::new();
    for (k, a) in keys.iter().zip(&answers) {
        *counts
            .entry((space(k), if hit(a) { "hit" } else { "miss" }))
            .or_default() += 1;
    }
    for ((space, result), n) in counts {
        family.get_or_create(&OpLabels { space, result }).inc_by(n);
    }
    Ok(answers)
}

fn outcome<T>(r: &Result<T, StorageError>, hit: impl Fn(&T) -> bool) -> &'static str {
    match r {
        Ok(v) if hit(v) => "hit",
        Ok(_) => "miss",
        Err(_) => "error",
    }
}

impl MeteredStore {
    /// Counts the answer `r` of a `get` of `key`.
    fn count_get(
        &self,
        key: &Key,
        r: Result<Option<Blob>, StorageError>,
    ) -> Result<Option<Blob>, StorageError> {
        self.metrics
            .gets
            .get_or_create(&OpLabels {
                space: space(key),
                result: outcome(&r, Option::is_some),
            })
            .inc();
        if let Ok(Some(b)) = &r {
            self.metrics.bytes_read.inc_by(b.len());
        }
        r
    }

    /// Counts a read that must not wait (`get_cached`): one that found bytes on disk as a cold
    /// read (the `get` that follows counts itself), any other answer with `count`.
    fn count_cached<T>(
        &self,
        r: Result<Cached<T>, StorageError>,
        count: impl FnOnce(Result<T, StorageError>) -> Result<T, StorageError>,
    ) -> Result<Cached<T>, StorageError> {
        match r {
            Ok(Cached::OnDisk) => {
                self.metrics.cold_reads.inc();
                Ok(Cached::OnDisk)
            }
            Ok(Cached::Read(v)) => count(Ok(v)).map(Cached::Read),
            Err(e) => count(Err(e)).map(Cached::Read),
        }
    }

    /// Counts the answers `r` of a `get_many` of `keys`.
    fn count_get_many(
        &self,
        keys: &[Key],
        r: Result<Vec<Option<Blob>>, StorageError>,
    ) -> Result<Vec<Option<Blob>>, StorageError> {
        let blobs = count_batch(&self.metrics.gets, keys, r, Option::is_some)?;
        let bytes = blobs.iter().flatten().map(Blob::len).sum();
        self.metrics.bytes_read.inc_by(bytes);
        Ok(blobs)
    }
}

#[async_trait]
impl Store for MeteredStore {
    fn get(&self, key: &Key) -> Result<Option<Blob>, StorageError> {
        self.count_get(key, self.inner.get(key))
    }

    fn contains(&self, key: &Key) -> Result<bool, StorageError> {
        let r = self.inner.contains(key);
        self.metrics
            .contains
            .get_or_create(&OpLabels {
                space: space(key),
                result: outcome(&r, |b| *b),
            })
            .inc();
        r
    }

    fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Blob>>, StorageError> {
        self.count_get_many(keys, self.inner.get_many(keys))
    }

    fn get_cached(&self, key: &Key) -> Result<Cached<Option<Blob>>, StorageError> {
        self.count_cached(self.inner.get_cached(key), |r| self.count_get(key, r))
    }

    fn get_many_cached(&self, keys: &[Key]) -> Result<Cached<Vec<Option<Blob>>>, StorageError> {
        self.count_cached(self.inner.get_many_cached(keys), |r| {
            self.count_get_many(keys, r)
        })
    }

    fn contains_many(&self, keys: &[Key]) -> Result<Vec<bool>, StorageError> {
        let r = self.inner.contains_many(keys);
        count_batch(&self.metrics.contains, keys, r, |hit| *hit)
    }

    async fn begin_write(&self, key: Key, len: u64) -> Result<Box<dyn BlobWriter>, StorageError> {
        let inner = self.inner.begin_write(key, len).await.inspect_err(|_| {
            self.metrics.write_errors.inc();
        })?;
        Ok(Box::new(MeteredWriter {
            inner,
            len,
            metrics: self.metrics.clone(),
        }))
    }

    async fn put_many(&self, items: Vec<(Key, Bytes)>) -> Result<(), StorageError> {
        let (n, bytes) = (
            items.len() as u64,
            items.iter().map(|(_, b)| b.len() as u64).sum(),
        );
        match self.inner.put_many(items).await {
            Ok(()) => {
                self.metrics.writes.inc_by(n);
                self.metrics.bytes_written.inc_by(bytes);
                Ok(())
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                Err(e)
            }
        }
    }

    fn max_blob_size(&self) -> u64 {
        self.inner.max_blob_size()
    }
}

struct MeteredWriter {
    inner: Box<dyn BlobWriter>,
    len: u64,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl BlobWriter for MeteredWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        self.inner.write(chunk).await
    }

    async fn commit(self: Box<Self>) -> Result<(), StorageError> {
        let (len, metrics) = (self.len, self.metrics.clone());
        match self.inner.commit().await {
            Ok(()) => {
                metrics.writes.inc();
                metrics.bytes_written.inc_by(len);
                Ok(())
            }
            Err(e) => {
                metrics.write_errors.inc();
                Err(e)
            }
        }
    }

    fn rewind_step(&self) -> Option<u64> {
        self.inner.rewind_step()
    }

    fn drop_buffered(&mut self) -> Option<u64> {
        self.inner.drop_buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    #[tokio::test]
    async fn counts_hits_misses_and_bytes() {
        let metrics = Metrics::new();
        let store = MeteredStore::new(Arc::new(MemoryStore::new(1 << 20)), metrics.clone());
        let k = Key::new(Key::SPACE_CAS, [1; 32]);
        assert!(store.get(&k).unwrap().is_none());
        store.put(k, Bytes::from_static(b"hello")).await.unwrap();
        assert!(store.contains(&k).unwrap());
        assert_eq!(store.get(&k).unwrap().unwrap().len(), 5);
        let text = metrics.encode();
        assert!(
            text.contains(r#"kiln_store_gets_total{space="cas",result="miss"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kiln_store_gets_total{space="cas",result="hit"} 1"#),
            "{text}"
        );
        assert!(text.contains("kiln_store_written_bytes_total 5"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert!(metrics.status().contains("written: 1 blobs, 5 bytes"));
    }

    #[tokio::test]
    async fn counts_each_key_of_a_batched_get() {
        let metrics = Metrics::new();
        let store = MeteredStore::new(Arc::new(MemoryStore::new(1 << 20)), metrics.clone());
        let k = |b| Key::new(Key::SPACE_CAS, [b; 32]);
        store.put(k(1), Bytes::from_static(b"hello")).await.unwrap();
        store.put(k(2), Bytes::from_static(b"hi")).await.unwrap();
        let got = store.get_many(&[k(1), k(3), k(2)]).unwrap();
        let lens: Vec<_> = got.iter().map(|b| b.as_ref().map(Blob::len)).collect();
        assert_eq!(lens, [Some(5), None, Some(2)]);
        let text = metrics.encode();
        for line in [
            r#"kiln_store_gets_total{space="cas",result="hit"} 2"#,
            r#"kiln_store_gets_total{space="cas",result="miss"} 1"#,
            "kiln_store_read_bytes_total 7",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
