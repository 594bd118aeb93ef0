//! Latency and throughput accounting: one histogram per worker (no shared lock on the hot
//! path), merged at the end, plus shared counters the progress line reads once a second.

use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most distinct error messages kept for the report.
const MAX_ERROR_SAMPLES: usize = 5;

/// Counters shared by all workers; read by the progress line.
#[derive(Default)]
pub struct Counters {
    /// Completed operations, failed ones included.
    pub ops: AtomicU64,
    /// Payload bytes moved by successful operations.
    pub bytes: AtomicU64,
    /// Failed operations.
    pub errors: AtomicU64,
    samples: Mutex<Vec<(String, u64)>>,
}

impl Counters {
    /// Counts an error and keeps its message if it is one of the first distinct ones.
    pub fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap();
        if let Some(e) = s.iter_mut().find(|(m, _)| *m == message) {
            e.1 += 1;
        } else if s.len() < MAX_ERROR_SAMPLES {
            s.push((message, 1));
        }
    }

    /// The distinct error messages kept, with their counts.
    pub fn samples(&self) -> Vec<(String, u64)> {
        self.samples.lock().unwrap().clone()
    }
}

/// One worker's latency histogram, in microseconds.
pub struct Recorder {
    hist: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            // 1 µs to one hour at 3 significant digits.
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
        }
    }
}

impl Recorder {
    /// Records one operation's latency.
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        self.hist.saturating_record(us);
    }

    /// Adds another worker's figures.
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.hist.add(&other.hist);
    }

    /// Latency summary in milliseconds.
    pub fn latency(&self) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.hist.is_empty() {
            return Latency::default();
        }
        Latency {
            p50_ms: ms(self.hist.value_at_quantile(0.50)),
            p90_ms: ms(self.hist.value_at_quantile(0.90)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            max_ms: ms(self.hist.max()),
            mean_ms: self.hist.mean() / 1000.0,
        }
    }
}

/// Latency percentiles of successful and failed operations alike.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// Prints `[  3s] ops N (R/s) MB/s X errors E` to stderr once a second until dropped.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts the progress line for `label`.
    pub fn start(label: String, counters: Arc<Counters>) -> Self {
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let (mut last_ops, mut last_bytes) = (0u64, 0u64);
            loop {
                tick.tick().await;
                let ops = counters.ops.load(Ordering::Relaxed);
                let bytes = counters.bytes.load(Ordering::Relaxed);
                let errors = counters.errors.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>4.0}s] {label}: {ops} ops ({} ops/s, {:.1} MB/s), {errors} errors",
                    start.elapsed().as_secs_f64(),
                    ops - last_ops,
                    (bytes - last_bytes) as f64 / 1e6,
                );
                (last_ops, last_bytes) = (ops, bytes);
            }
        });
        Self { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
