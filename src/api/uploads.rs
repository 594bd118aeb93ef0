//! Resumable ByteStream uploads: state kept per upload resource name, so a client whose stream
//! broke can ask QueryWriteStatus and continue from `committed_size`.
//!
//! Concurrency: the registry map is locked only to find or insert an entry; each upload has its
//! own async mutex, held while one stream feeds it. Many clients uploading the same blob under
//! different upload ids each write their own copy; the first to finish publishes it and the
//! others stop early once they see it present.

use crate::cas::Upload;
use crate::cas::compression::StreamDecoder;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An upload in progress.
pub(super) struct UploadState {
    /// The verified write into the CAS; `None` once finished.
    pub upload: Option<Upload>,
    /// Decoder for `compressed-blobs` uploads.
    pub decoder: Option<StreamDecoder>,
    /// Bytes of the request stream accepted so far (compressed bytes for compressed uploads).
    pub committed: i64,
    last_used: Instant,
}

impl UploadState {
    pub(super) fn new(upload: Upload, decoder: Option<StreamDecoder>) -> Self {
        Self {
            upload: Some(upload),
            decoder,
            committed: 0,
            last_used: Instant::now(),
        }
    }
}

/// Uploads by resource name.
pub(super) struct UploadRegistry {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<UploadState>>>>,
    idle_timeout: Duration,
}

impl UploadRegistry {
    pub(super) fn new(idle_timeout: Duration) -> Self {
        Self {
            map: Mutex::default(),
            idle_timeout,
        }
    }

    /// The upload under `name`, if one is in progress.
    pub(super) fn get(&self, name: &str) -> Option<Arc<tokio::sync::Mutex<UploadState>>> {
        self.map
            .lock()
            .expect("upload registry lock")
            .get(name)
            .cloned()
    }

    /// Registers a new upload (replacing any older one under the same name), dropping uploads
    /// idle for longer than the timeout.
    pub(super) fn insert(
        &self,
        name: &str,
        state: UploadState,
    ) -> Arc<tokio::sync::Mutex<UploadState>> {
        let entry = Arc::new(tokio::sync::Mutex::new(state));
        let mut map = self.map.lock().expect("upload registry lock");
        let timeout = self.idle_timeout;
        map.retain(|_, s| {
            s.try_lock()
                .map_or(true, |s| s.last_used.elapsed() < timeout)
        });
        map.insert(name.to_string(), entry.clone());
        entry
    }

    /// Forgets an upload (finished or failed).
    pub(super) fn remove(&self, name: &str) {
        self.map.lock().expect("upload registry lock").remove(name);
    }

    /// Marks an upload as used now.
    pub(super) fn touch(state: &mut UploadState) {
        state.last_used = Instant::now();
    }
}
