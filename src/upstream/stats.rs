//! The upstream tier's figures: counters and a latency histogram registered in the server's
//! registry by `setup`, and gauges (breaker state, fetches and queue) read at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Label of upstream reads and forwards: what was asked and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// `cas` (blobs) or `ac` (action results).
    pub kind: &'static str,
    /// Reads: `hit`, `miss` or `error`. Forwards: `sent`, `skipped` (the upstream had it),
    /// `gone` (evicted locally before it could be sent) or `error`.
    pub result: &'static str,
}

/// Label of `execute = "local-first"` decisions: where an Execute went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecutedLabels {
    /// `local` (an idle local bot matched, or a local cache hit) or `upstream` (forwarded).
    pub ran: &'static str,
}

/// Every upstream metric. Cheap to clone handles.
#[derive(Clone)]
pub struct UpstreamStats {
    /// Local misses asked upstream, by kind and outcome (`kiln_upstream_reads`).
    pub reads: Family<UpstreamLabels, Counter>,
    /// Verified blob bytes fetched from the upstream (`kiln_upstream_fetched_bytes`).
    pub fetched_bytes: Counter,
    /// Writes forwarded, by kind and outcome (`kiln_upstream_forwards`).
    pub forwards: Family<UpstreamLabels, Counter>,
    /// Blob bytes forwarded to the upstream (`kiln_upstream_forwarded_bytes`).
    pub forwarded_bytes: Counter,
    /// Writes not queued because the queue was full (`kiln_upstream_queue_dropped`).
    pub queue_dropped: Counter,
    /// Latency of each upstream call (`kiln_upstream_request_duration_seconds`).
    pub latency: Histogram,
    /// `local-first` Executes by where they went (`kiln_upstream_executions`).
    pub executions: Family<ExecutedLabels, Counter>,
}

impl Default for UpstreamStats {
    fn default() -> Self {
        let s = Self {
            reads: Family::default(),
            fetched_bytes: Counter::default(),
            forwards: Family::default(),
            forwarded_bytes: Counter::default(),
            queue_dropped: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            executions: Family::default(),
        };
        for ran in ["local", "upstream"] {
            drop(s.executions.get_or_create(&ExecutedLabels { ran }));
        }
        // Every series exists from the start: a scraper sees 0, not a missing series.
        for kind in ["cas", "ac"] {
            for result in ["hit", "miss", "error"] {
                drop(s.reads.get_or_create(&UpstreamLabels { kind, result }));
            }
            for result in ["sent", "skipped", "gone", "error"] {
                drop(s.forwards.get_or_create(&UpstreamLabels { kind, result }));
            }
        }
        s
    }
}

impl UpstreamStats {
    /// Counts one read outcome.
    pub fn read(&self, kind: &'static str, result: &'static str) {
        self.reads
            .get_or_create(&UpstreamLabels { kind, result })
            .inc();
    }

    /// Counts one `local-first` decision.
    pub fn executed(&self, ran: &'static str) {
        self.executions.get_or_create(&ExecutedLabels { ran }).inc();
    }

    /// Counts `n` forward outcomes.
    pub fn forward(&self, kind: &'static str, result: &'static str, n: u64) {
        self.forwards
            .get_or_create(&UpstreamLabels { kind, result })
            .inc_by(n);
    }
}
