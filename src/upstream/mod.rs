//! The upstream tier: a team's distributed REAPI service behind this box.
//!
//! kiln stays the fast box next to the developers and CI runners: what it holds is served as
//! without an upstream (a local hit never waits on it). What it lacks is read through: fetched
//! from the upstream, verified against its digest before anything is stored or served as
//! complete, stored locally, then served. Concurrent misses of one blob make one fetch
//! ([`flight`]); a [`breaker`] stops hammering a dead upstream; every upstream failure is an
//! [`UpstreamError`] that names it (UNAVAILABLE to clients).
//!
//! Layering: this sits between `cas` and `api`. The api services and the worker's staging
//! path (which reads through those services on the bots socket) call it; it calls `cas` and the
//! upstream's gRPC API; the storage engine never reaches it (tests/layering.rs).

mod action_results;
pub mod breaker;
mod client;
mod error;
mod execute;
mod fetch;
pub mod flight;
mod forward;
mod inputs;
pub mod journal;
mod message;
mod operations;
mod passthrough;
mod queue;
mod stats;
mod stream;
mod tree;
mod writes;

pub use breaker::BreakerState;
pub use error::UpstreamError;
pub use execute::OperationStream;
pub use stats::{UpstreamLabels, UpstreamStats};
pub use stream::{ReadThrough, UpstreamRead};
pub use writes::ForwardHook;

use crate::auth::{Bearer, ClientTls};
use crate::cas::{ActionCache, Cas};
use crate::config::{UpstreamExecute, UpstreamWrite};
use crate::digest::Digest;
use crate::proto::reapi::FindMissingBlobsRequest;
use client::Client;
use flight::Flights;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Digests per upstream FindMissingBlobs call (about 80 bytes each: well under 4 MiB).
const FIND_MISSING_BATCH: usize = 10_000;

/// Everything the upstream tier needs, as plain values (setup builds it from `[upstream]`;
/// tests build it directly).
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// `grpc://HOST:PORT`, `grpcs://HOST:PORT` or `unix:PATH`.
    pub endpoint: String,
    /// Upstream instance name for local names not in `instance_names`.
    pub instance_name: String,
    /// Local instance name to upstream instance name.
    pub instance_names: BTreeMap<String, String>,
    /// TLS files for a `grpcs://` endpoint.
    pub tls: ClientTls,
    /// Longest wait to connect.
    pub connect_timeout: Duration,
    /// Longest wait for one call or one streamed message.
    pub timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe.
    pub breaker_reset: Duration,
    /// Most fetches in progress.
    pub max_fetches: usize,
    /// Largest payload of one upstream batch call.
    pub batch_bytes: u64,
    /// When writes are forwarded.
    pub write: UpstreamWrite,
    /// Where Execute runs.
    pub execute: UpstreamExecute,
    /// Largest Action the tier reads to walk an action's inputs (`execution.max_action_bytes`).
    pub max_action_bytes: u64,
    /// Largest Directory the tier reads to walk an input tree
    /// (`execution.max_directory_bytes`).
    pub max_directory_bytes: u64,
    /// Directory of the durable forwarding queue (`<data_dir>/upstream-queue`); `None`: no
    /// queue (writes are then forwarded only in `sync` mode, and not retried).
    pub queue_dir: Option<std::path::PathBuf>,
    /// Blob bytes the queue may hold.
    pub queue_max_bytes: u64,
}

impl UpstreamSettings {
    /// Settings for `endpoint` with the documented defaults of `[upstream]`.
    pub fn new(endpoint: &str) -> Self {
        let c = crate::config::UpstreamConfig::default();
        Self {
            endpoint: endpoint.to_string(),
            instance_name: c.instance_name,
            instance_names: c.instance_names,
            tls: ClientTls::default(),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            timeout: Duration::from_millis(c.timeout_ms),
            breaker_failures: c.breaker_failures,
            breaker_reset: Duration::from_millis(c.breaker_reset_ms),
            max_fetches: c.max_fetches as usize,
            batch_bytes: c.batch_bytes,
            write: c.write,
            execute: c.execute,
            max_action_bytes: crate::config::ExecutionConfig::default().max_action_bytes,
            max_directory_bytes: crate::config::ExecutionConfig::default().max_directory_bytes,
            queue_dir: None,
            queue_max_bytes: c.queue_max_bytes,
        }
    }
}

struct Inner {
    settings: UpstreamSettings,
    client: Client,
    cas: Cas,
    ac: ActionCache,
    flights: Arc<Flights>,
    queue: Option<Arc<queue::Queue>>,
}

/// The upstream tier. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
    /// Writes of local execution (the worker's outputs, the scheduler's results): in `sync`
    /// mode one the upstream does not take is queued and the write succeeds, so an upstream
    /// outage never fails an action that ran here (see [`Upstream::for_local_execution`]).
    local_execution: bool,
}

impl Upstream {
    /// The tier in front of `settings.endpoint`, storing what it fetches in `cas`/`ac`. Does
    /// not connect yet: the first miss does, so the box starts while the upstream is down.
    pub fn new(
        settings: UpstreamSettings,
        bearer: Bearer,
        cas: Cas,
        ac: ActionCache,
    ) -> Result<Self, UpstreamError> {
        let stats = UpstreamStats::default();
        let client =
            Client::new(&settings, bearer, stats).map_err(|reason| UpstreamError::Unavailable {
                endpoint: settings.endpoint.clone(),
                reason,
            })?;
        let queue = match (&settings.queue_dir, settings.write) {
            (Some(dir), UpstreamWrite::Async | UpstreamWrite::Sync) => Some(
                queue::Queue::open(dir, settings.queue_max_bytes).map_err(|e| {
                    UpstreamError::Local(crate::cas::CasError::InvalidArgument(format!(
                        "cannot open the upstream queue in {}: {e}",
                        dir.display()
                    )))
                })?,
            ),
            _ => None,
        };
        Ok(Self {
            local_execution: false,
            inner: Arc::new(Inner {
                queue,
                flights: Flights::new(settings.max_fetches),
                settings,
                client,
                cas,
                ac,
            }),
        })
    }

    /// The same tier for the writes of local execution (the bots socket's services, the
    /// scheduler's action cache): in `sync` mode a write the upstream does not take now is
    /// queued durably and still succeeds, instead of failing the action that produced it.
    #[must_use]
    pub fn for_local_execution(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            local_execution: true,
        }
    }

    /// The endpoint, as configured.
    pub fn endpoint(&self) -> &str {
        &self.inner.settings.endpoint
    }

    /// The settings this tier was built with.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.inner.settings
    }

    /// The tier's metrics (registered by setup).
    pub fn stats(&self) -> &UpstreamStats {
        &self.inner.client.stats
    }

    /// Gauges read at scrape time: breaker state and fetches in progress.
    pub fn gauges(&self) -> impl Fn() -> Vec<(&'static str, &'static str, i64)> + use<> {
        let inner = self.inner.clone();
        move || {
            vec![
                (
                    "upstream_breaker_state",
                    "Upstream circuit breaker: 0 closed, 1 open, 2 probing",
                    inner.client.breaker.state() as i64,
                ),
                (
                    "upstream_fetches_in_progress",
                    "Blobs being fetched from the upstream now (single-flight table)",
                    inner.flights.len() as i64,
                ),
                (
                    "upstream_queue_entries",
                    "Writes waiting to be forwarded to the upstream",
                    inner.queue.as_ref().map_or(0, |q| q.len() as i64),
                ),
                (
                    "upstream_queue_bytes",
                    "Blob bytes waiting to be forwarded to the upstream",
                    inner.queue.as_ref().map_or(0, |q| q.bytes() as i64),
                ),
                (
                    "upstream_queue_oldest_age_seconds",
                    "Seconds the oldest write waiting for the upstream has waited",
                    inner
                        .queue
                        .as_ref()
                        .map_or(0, |q| q.oldest_age_secs() as i64),
                ),
            ]
        }
    }

    /// The upstream instance name for a request's local instance name.
    pub fn instance<'a>(&'a self, local: &'a str) -> &'a str {
        let s = &self.inner.settings;
        s.instance_names
            .get(local)
            .map_or(s.instance_name.as_str(), String::as_str)
    }

    /// Of `missing` (digests the local tier lacks), those the upstream lacks too, asked in
    /// batches. When the upstream cannot answer, all of `missing` (the safe answer: the
    /// client uploads them again), so FindMissingBlobs never fails for the upstream's sake.
    pub async fn find_missing(&self, instance: &str, missing: Vec<Digest>) -> Vec<Digest> {
        match self.upstream_missing(instance, &missing).await {
            Ok(absent) => missing.into_iter().filter(|d| absent.contains(d)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "FindMissingBlobs answered from the local tier only");
                missing
            }
        }
    }

    /// The digests among `digests` the upstream does not have.
    async fn upstream_missing(
        &self,
        instance: &str,
        digests: &[Digest],
    ) -> Result<HashSet<Digest>, UpstreamError> {
        let c = &self.inner.client;
        let mut absent = HashSet::new();
        for chunk in digests.chunks(FIND_MISSING_BATCH) {
            let function = chunk[0].function;
            let req = FindMissingBlobsRequest {
                instance_name: self.instance(instance).to_string(),
                blob_digests: chunk.iter().map(Digest::to_proto).collect(),
                digest_function: function.to_proto(),
            };
            let answer = c
                .call("FindMissingBlobs", c.cas.clone().find_missing_blobs(req))
                .await?
                .map_err(|s| c.unavailable(format!("FindMissingBlobs: {}", s.message())))?;
            let asked: HashSet<&Digest> = chunk.iter().collect();
            for d in &answer.missing_blob_digests {
                // A digest we did not ask about, or one that does not parse, changes nothing:
                // only an asked digest can be marked missing.
                if let Ok(d) = Digest::from_proto(function, d)
                    && asked.contains(&d)
                {
                    absent.insert(d);
                }
            }
        }
        Ok(absent)
    }
}

#[cfg(test)]
mod tests;
