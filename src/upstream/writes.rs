//! Writes and the upstream: `async` queues them durably and one task forwards them in
//! batches; `sync` forwards before the client's acknowledgement (and queues what failed, so it
//! still arrives once the upstream is back; the writes of local execution then succeed, see
//! [`Upstream::for_local_execution`]); `none` keeps them local.

use super::Upstream;
use super::error::UpstreamError;
use super::forward::retry_delay;
use super::journal::{Entry, Kind};
use super::queue::{Queue, now_ms};
use crate::cas::UpdateHook;
use crate::config::UpstreamWrite;
use crate::digest::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Entries forwarded per round of the queue's task.
const ROUND: usize = 1000;

impl Upstream {
    /// Starts the task that drains the forwarding queue (call once, inside the runtime).
    pub fn start_forwarding(&self) {
        if let Some(q) = self.inner.queue.clone() {
            let this = self.clone();
            tokio::spawn(async move { this.drain(q).await });
        }
    }

    /// Blobs just stored locally under `instance`: queued (`async`), forwarded (`sync`: an
    /// error means the upstream does not have them yet), or nothing (`none`).
    pub async fn wrote_blobs(
        &self,
        instance: &str,
        digests: &[Digest],
    ) -> Result<(), UpstreamError> {
        let digests: Vec<Digest> = digests
            .iter()
            .filter(|d| !d.is_empty_blob())
            .copied()
            .collect();
        if digests.is_empty() {
            return Ok(());
        }
        match self.inner.settings.write {
            UpstreamWrite::None => Ok(()),
            UpstreamWrite::Async => {
                self.enqueue(Kind::Blob, instance, &digests).await;
                Ok(())
            }
            UpstreamWrite::Sync => match self.push_blobs(instance, &digests).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    self.enqueue(Kind::Blob, instance, &digests).await;
                    self.sync_failed(e)
                }
            },
        }
    }

    /// An action result just stored locally (by a client or by local execution).
    pub async fn wrote_action_result(
        &self,
        instance: &str,
        action: &Digest,
    ) -> Result<(), UpstreamError> {
        match self.inner.settings.write {
            UpstreamWrite::None => Ok(()),
            UpstreamWrite::Async => {
                self.enqueue(Kind::Action, instance, &[*action]).await;
                Ok(())
            }
            UpstreamWrite::Sync => match self.push_action(instance, action).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    self.enqueue(Kind::Action, instance, &[*action]).await;
                    self.sync_failed(e)
                }
            },
        }
    }

    /// A `sync` forward failed and the write is queued: the client's error, except for the
    /// writes of local execution, which succeed (the queue delivers them later).
    fn sync_failed(&self, e: UpstreamError) -> Result<(), UpstreamError> {
        if self.local_execution {
            tracing::warn!(error = %e, "sync forward of a local execution's write failed; queued");
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Queues writes; a queue that cannot take them is logged, never the client's failure
    /// (the write is durable locally).
    async fn enqueue(&self, kind: Kind, instance: &str, digests: &[Digest]) {
        let Some(q) = &self.inner.queue else { return };
        let at = now_ms();
        let entries = digests
            .iter()
            .map(|d| Entry {
                kind,
                digest: *d,
                instance: instance.to_string(),
                queued_ms: at,
            })
            .collect();
        if let Err(e) = q
            .push(entries, &self.inner.client.stats.queue_dropped)
            .await
        {
            tracing::error!(error = %e, "cannot queue writes for the upstream: they stay local");
            self.inner.client.stats.queue_dropped.inc();
        }
    }

    /// Forwards the queue's entries in order, for ever; a failed round is retried after a
    /// delay (the breaker keeps it from hammering a dead upstream).
    async fn drain(self, q: Arc<Queue>) {
        loop {
            let round = q.front(ROUND);
            let Some((end, _)) = round.last() else {
                q.notify.notified().await;
                continue;
            };
            let end = *end;
            match self.forward_round(&round).await {
                Ok(()) => {
                    if let Err(e) = q.done(round.len(), end).await {
                        tracing::error!(error = %e, "upstream queue: cannot record progress");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, waiting = q.len(), "upstream queue: forward failed, will retry");
                    tokio::time::sleep(retry_delay(self.inner.settings.breaker_reset)).await;
                }
            }
        }
    }

    /// Blobs first (one FindMissingBlobs per instance and batch), then action results, whose
    /// outputs are then upstream before the result is.
    async fn forward_round(&self, round: &[(u64, Entry)]) -> Result<(), UpstreamError> {
        let mut blobs: BTreeMap<&str, Vec<Digest>> = BTreeMap::new();
        for (_, e) in round.iter().filter(|(_, e)| e.kind == Kind::Blob) {
            blobs.entry(e.instance.as_str()).or_default().push(e.digest);
        }
        for (instance, digests) in blobs {
            self.push_blobs(instance, &digests).await?;
        }
        for (_, e) in round.iter().filter(|(_, e)| e.kind == Kind::Action) {
            match self.push_action(&e.instance, &e.digest).await {
                Ok(_) => {}
                // Refused for good (an invalid result): dropped, or it would block the queue.
                Err(UpstreamError::Refused { message, .. }) => {
                    tracing::warn!(action = %e.digest, %message, "upstream refused a forwarded action result");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

/// Tells the upstream tier of every action result stored locally (installed on the action
/// cache the api and the scheduler use, so results of local execution are forwarded too).
pub struct ForwardHook(pub Upstream);

#[async_trait::async_trait]
impl UpdateHook for ForwardHook {
    async fn updated(&self, instance: &str, action: &Digest) -> Result<(), String> {
        self.0
            .wrote_action_result(instance, action)
            .await
            .map_err(|e| e.to_string())
    }
}
