//! The durable forwarding queue of `write = "async"`: writes acknowledged once durable locally
//! wait here (in memory and in the [`Journal`]) until one task forwards them, in order, in
//! batches. Bounded in bytes (blob sizes) and entries; when full, further writes stay local
//! only (warning, `kiln_upstream_queue_dropped`).
//!
//! Concurrency: the journal and the in-memory list sit behind their own locks, taken together
//! (journal first) only to append, so their order is the same; the journal is only touched on
//! blocking threads.

use super::journal::{Entry, Journal, Kind};
use prometheus_client::metrics::counter::Counter;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Most entries held at once (an action result or an empty blob weighs nothing in bytes).
pub const MAX_ENTRIES: usize = 1 << 20;

/// The queue.
pub struct Queue {
    journal: Mutex<Journal>,
    pending: Mutex<VecDeque<(u64, Entry)>>,
    bytes: AtomicU64,
    max_bytes: u64,
    /// Wakes the forwarding task.
    pub notify: Notify,
    full_warned: AtomicBool,
}

fn cost(e: &Entry) -> u64 {
    match e.kind {
        Kind::Blob => e.digest.size,
        Kind::Action => 0,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Queue {
    /// Opens the queue in `dir`, with what a previous run left unforwarded.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Arc<Self>> {
        let (journal, old) = Journal::open(dir)?;
        if !old.is_empty() {
            tracing::info!(
                entries = old.len(),
                "upstream queue: writes left from the last run"
            );
        }
        let bytes = old.iter().map(|(_, e)| cost(e)).sum();
        Ok(Arc::new(Self {
            journal: Mutex::new(journal),
            pending: Mutex::new(old.into()),
            bytes: AtomicU64::new(bytes),
            max_bytes,
            notify: Notify::new(),
            full_warned: AtomicBool::new(false),
        }))
    }

    /// Queues `entries` durably (synced before this returns). Entries past the bound are not
    /// queued: counted in `dropped` and warned about once per full spell.
    pub async fn push(
        self: &Arc<Self>,
        entries: Vec<Entry>,
        dropped: &Counter,
    ) -> std::io::Result<()> {
        let mut admitted = Vec::with_capacity(entries.len());
        let held = self.len();
        for e in entries {
            let c = cost(&e);
            let before = self.bytes.fetch_add(c, Ordering::Relaxed);
            if before + c > self.max_bytes || held + admitted.len() >= MAX_ENTRIES {
                self.bytes.fetch_sub(c, Ordering::Relaxed);
                dropped.inc();
                if !self.full_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        max_bytes = self.max_bytes,
                        "upstream queue full: new writes stay local and are not forwarded \
                         (raise upstream.queue_max_bytes or check the upstream)"
                    );
                }
                continue;
            }
            admitted.push(e);
        }
        if admitted.is_empty() {
            return Ok(());
        }
        let this = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut j = this.journal.lock().expect("queue journal lock");
            match j.append(&admitted) {
                Ok(ends) => {
                    let mut p = this.pending.lock().expect("queue lock");
                    p.extend(ends.into_iter().zip(admitted));
                    Ok(())
                }
                Err(e) => {
                    let c: u64 = admitted.iter().map(cost).sum();
                    this.bytes.fetch_sub(c, Ordering::Relaxed);
                    Err(e)
                }
            }
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.notify.notify_one();
        r
    }

    /// Up to `max` entries from the front, left in place until [`Queue::done`].
    pub fn front(&self, max: usize) -> Vec<(u64, Entry)> {
        let p = self.pending.lock().expect("queue lock");
        p.iter().take(max).cloned().collect()
    }

    /// Drops the first `n` entries (forwarded), the last ending at journal offset `end`.
    pub async fn done(self: &Arc<Self>, n: usize, end: u64) -> std::io::Result<()> {
        {
            let mut p = self.pending.lock().expect("queue lock");
            for _ in 0..n {
                if let Some((_, e)) = p.pop_front() {
                    self.bytes.fetch_sub(cost(&e), Ordering::Relaxed);
                }
            }
            if p.is_empty() {
                self.full_warned.store(false, Ordering::Relaxed);
            }
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.journal
                .lock()
                .expect("queue journal lock")
                .advance(end)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Entries waiting.
    #[allow(clippy::len_without_is_empty)] // Only the count is ever asked for.
    pub fn len(&self) -> usize {
        self.pending.lock().expect("queue lock").len()
    }

    /// Blob bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Seconds the oldest waiting entry has waited.
    pub fn oldest_age_secs(&self) -> u64 {
        let p = self.pending.lock().expect("queue lock");
        p.front()
            .map_or(0, |(_, e)| now_ms().saturating_sub(e.queued_ms) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    fn blob(data: &[u8]) -> Entry {
        Entry {
            kind: Kind::Blob,
            digest: DigestFunction::Sha256.digest_of(data),
            instance: String::new(),
            queued_ms: now_ms(),
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_takes_again_once_drained() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), 10).unwrap();
        let dropped = Counter::default();
        q.push(vec![blob(b"eight by"), blob(b"3by")], &dropped)
            .await
            .unwrap();
        assert_eq!((q.len(), q.bytes(), dropped.get()), (1, 8, 1));
        let front = q.front(10);
        q.done(front.len(), front[0].0).await.unwrap();
        assert_eq!((q.len(), q.bytes()), (0, 0));
        q.push(vec![blob(b"3by")], &dropped).await.unwrap();
        assert_eq!((q.len(), dropped.get()), (1, 1));
        drop(q);
        // What is queued survives a reopen; what was forwarded does not come back.
        let q = Queue::open(dir.path(), 10).unwrap();
        assert_eq!((q.len(), q.bytes()), (1, 3));
    }
}
