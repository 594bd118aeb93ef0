//! Prometheus metrics: one registry, counters fed by decorators (see [`MeteredStore`],
//! [`GrpcMetrics`]) and a plain HTTP endpoint serving `/metrics` (Prometheus text format), the
//! status page `/` and `/status`. The status views read the registry's own exposition
//! ([`Snapshot`]), sampled into a bounded ring ([`History`]) for the page's plots.

mod grpc;
mod history;
mod http;
mod http_cache;
mod snapshot;
mod status_page;
mod status_text;
mod store;
mod summary;

pub use grpc::GrpcMetrics;
pub use history::{History, Sample};
pub use http::serve_http;
pub use http_cache::HttpCacheMetrics;
pub use snapshot::Snapshot;
pub use store::MeteredStore;
pub use summary::{SlowAction, Summary};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Label of store operations: which keyspace and which outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `cas` or `ac`.
    pub space: &'static str,
    /// `hit`, `miss` or `error`.
    pub result: &'static str,
}

/// A source of extra gauges read at scrape time (the storage engine's own statistics).
pub type GaugeSource = Box<dyn Fn() -> Vec<(&'static str, &'static str, i64)> + Send + Sync>;

/// The slowest actions finished lately (read from the scheduler when a status view renders).
pub type SlowActionSource = Box<dyn Fn() -> Vec<SlowAction> + Send + Sync>;

/// Every metric kiln exports. Cheap to clone handles; counters are atomics.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// `get` calls by keyspace and outcome.
    pub gets: Family<OpLabels, Counter>,
    /// `contains` calls (FindMissingBlobs, completeness checks) by keyspace and outcome.
    pub contains: Family<OpLabels, Counter>,
    /// Bytes handed out by `get` hits.
    pub bytes_read: Counter,
    /// Reads that found bytes on disk (`get_cached` said `OnDisk`) and so ran on a blocking
    /// thread: one per read call, however many keys it has.
    pub cold_reads: Counter,
    /// Bytes committed by writes.
    pub bytes_written: Counter,
    /// Writes committed.
    pub writes: Counter,
    /// Writes that failed (storage errors, not verification).
    pub write_errors: Counter,
    /// Requests, codes and latency per RPC method.
    pub grpc: GrpcMetrics,
    started: Instant,
    uptime: Gauge,
    extra: Mutex<Vec<GaugeSource>>,
    history: Mutex<History>,
    slow_actions: Mutex<Option<SlowActionSource>>,
}

impl Metrics {
    /// A fresh registry with every kiln metric registered.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("kiln");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            gets: Family::default(),
            contains: Family::default(),
            bytes_read: Counter::default(),
            cold_reads: Counter::default(),
            bytes_written: Counter::default(),
            writes: Counter::default(),
            write_errors: Counter::default(),
            grpc: GrpcMetrics::default(),
            started: Instant::now(),
            uptime: Gauge::default(),
            extra: Mutex::default(),
            history: Mutex::default(),
            slow_actions: Mutex::default(),
        };
        registry.register(
            "grpc_requests",
            "Finished gRPC requests by method and status code",
            m.grpc.requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC request latency by method, from the call to the end of the response",
            m.grpc.latency.clone(),
        );
        registry.register(
            "store_gets",
            "Store lookups by keyspace and result",
            m.gets.clone(),
        );
        registry.register(
            "store_contains",
            "Store existence checks by keyspace and result",
            m.contains.clone(),
        );
        registry.register(
            "store_read_bytes",
            "Bytes returned by store lookups",
            m.bytes_read.clone(),
        );
        registry.register(
            "store_cold_reads",
            "Store reads whose bytes were not all in memory (run on a blocking thread, off the \
             async runtime): one per read call",
            m.cold_reads.clone(),
        );
        registry.register(
            "store_written_bytes",
            "Bytes committed to the store",
            m.bytes_written.clone(),
        );
        registry.register(
            "store_writes",
            "Blobs committed to the store",
            m.writes.clone(),
        );
        registry.register(
            "store_write_errors",
            "Store writes that failed",
            m.write_errors.clone(),
        );
        registry.register(
            "uptime_seconds",
            "Seconds since the server started",
            m.uptime.clone(),
        );
        // Every keyspace/outcome series exists from the start (a scraper and the status page
        // see 0, not a missing series).
        for space in ["cas", "ac"] {
            for result in ["hit", "miss", "error"] {
                drop(m.gets.get_or_create(&OpLabels { space, result }));
                drop(m.contains.get_or_create(&OpLabels { space, result }));
            }
        }
        *m.registry.lock().expect("metrics lock") = registry;
        Arc::new(m)
    }

    /// Registers a metric owned by another layer (the per-principal auth counters).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .expect("metrics lock")
            .register(name, help, metric);
    }

    /// Adds gauges read at every scrape, e.g. the storage engine's statistics.
    pub fn add_gauge_source(&self, source: GaugeSource) {
        self.extra.lock().expect("metrics lock").push(source);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(
            &mut out,
            &self.registry.lock().expect("metrics lock"),
        )
        .expect("writing to a String");
        for source in self.extra.lock().expect("metrics lock").iter() {
            for (name, help, value) in source() {
                writeln!(
                    out,
                    "# HELP kiln_{name} {help}\n# TYPE kiln_{name} gauge\nkiln_{name} {value}"
                )
                .expect("writing to a String");
            }
        }
        prometheus_client::encoding::text::encode_eof(&mut out).expect("writing to a String");
        out
    }

    /// Sets where the status views read the slowest recent actions from (the scheduler).
    pub fn set_slow_actions(&self, source: SlowActionSource) {
        *self.slow_actions.lock().expect("metrics lock") = Some(source);
    }

    /// Every metric as exposed right now, parsed.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::parse(&self.encode())
    }

    /// Takes one sample into the history ring.
    pub fn sample(&self) {
        let s = Sample::of(&self.snapshot(), self.started.elapsed().as_secs_f64());
        self.history.lock().expect("metrics lock").push(s);
    }

    /// Samples every `interval` until `shutdown` resolves (started by the server).
    pub async fn run_sampler(
        self: Arc<Self>,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => self.sample(),
            }
        }
    }

    /// What the status views show, from a fresh snapshot and the ring.
    pub fn summary(&self) -> Summary {
        let snap = self.snapshot();
        let slow = self
            .slow_actions
            .lock()
            .expect("metrics lock")
            .as_ref()
            .map(|f| f())
            .unwrap_or_default();
        Summary::build(&snap, &self.history.lock().expect("metrics lock"), slow)
    }

    /// The status page (`GET /`): the summary and the ring's plots, as HTML.
    pub fn status_page(&self) -> String {
        let summary = self.summary();
        status_page::render(&summary, &self.history.lock().expect("metrics lock"))
    }

    /// A human-readable summary for `/status` and `kiln status`: the page's figures as text.
    pub fn status(&self) -> String {
        self.summary().text()
    }
}
