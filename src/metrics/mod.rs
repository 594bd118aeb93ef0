//! Prometheus metrics: one registry, counters fed by decorators (see [`MeteredStore`]) and a
//! plain HTTP endpoint serving `/metrics` (Prometheus text format) and `/status`.

mod http;
mod store;

pub use http::serve_http;
pub use store::MeteredStore;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// Every metric kiln exports. Cheap to clone handles; counters are atomics.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// `get` calls by keyspace and outcome.
    pub gets: Family<OpLabels, Counter>,
    /// `contains` calls (FindMissingBlobs, completeness checks) by keyspace and outcome.
    pub contains: Family<OpLabels, Counter>,
    /// Bytes handed out by `get` hits.
    pub bytes_read: Counter,
    /// Bytes committed by writes.
    pub bytes_written: Counter,
    /// Writes committed.
    pub writes: Counter,
    /// Writes that failed (storage errors, not verification).
    pub write_errors: Counter,
    started: Instant,
    uptime: Gauge,
    extra: Mutex<Vec<GaugeSource>>,
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
            bytes_written: Counter::default(),
            writes: Counter::default(),
            write_errors: Counter::default(),
            started: Instant::now(),
            uptime: Gauge::default(),
            extra: Mutex::default(),
        };
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
                out.push_str(&format!(
                    "# HELP kiln_{name} {help}\n# TYPE kiln_{name} gauge\nkiln_{name} {value}\n"
                ));
            }
        }
        prometheus_client::encoding::text::encode_eof(&mut out).expect("writing to a String");
        out
    }

    /// A short human-readable summary for `/status` and `kiln status`.
    pub fn status(&self) -> String {
        let count = |f: &Family<OpLabels, Counter>, space, result| {
            f.get_or_create(&OpLabels { space, result }).get()
        };
        let cas_hits = count(&self.gets, "cas", "hit") + count(&self.contains, "cas", "hit");
        let cas_misses = count(&self.gets, "cas", "miss") + count(&self.contains, "cas", "miss");
        let ac_hits = count(&self.gets, "ac", "hit");
        let ac_misses = count(&self.gets, "ac", "miss");
        let mut s = format!(
            "kiln {}\nuptime: {}s\ncas: {cas_hits} hits, {cas_misses} misses\naction cache: {ac_hits} hits, {ac_misses} misses\n\
             written: {} blobs, {} bytes ({} errors)\nread: {} bytes\n",
            env!("CARGO_PKG_VERSION"),
            self.started.elapsed().as_secs(),
            self.writes.get(),
            self.bytes_written.get(),
            self.write_errors.get(),
            self.bytes_read.get(),
        );
        for source in self.extra.lock().expect("metrics lock").iter() {
            for (name, _, value) in source() {
                s.push_str(&format!("{name}: {value}\n"));
            }
        }
        s
    }
}
