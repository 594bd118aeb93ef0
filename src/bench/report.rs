//! What a load run prints: a human summary or one JSON object.

use super::stats::Latency;
use super::workloads::Measured;
use serde::Serialize;
use std::fmt::Write as _;

/// The figures of one load run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Workload name.
    pub workload: &'static str,
    /// Target as given.
    pub target: String,
    /// Instance name.
    pub instance: String,
    /// Workers.
    pub concurrency: usize,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Seed of contents and choices.
    pub seed: u64,
    /// Workload parameters.
    pub params: serde_json::Value,
    /// Timed wall-clock seconds.
    pub wall_s: f64,
    /// Operations, failed ones included.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Items (blobs, digests) per second, for workloads that batch several per op.
    pub items_per_s: f64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Payload MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Latency of one operation.
    pub latency: Latency,
    /// CPU seconds the bench process used in the timed run (user + system), and that as
    /// cores busy on average: on a box shared with the server, the client's part of the load.
    pub client_cpu_s: f64,
    /// `client_cpu_s / wall_s`.
    pub client_cores: f64,
    /// Distinct error messages and counts.
    pub error_samples: Vec<(String, u64)>,
    /// Workload-specific figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

impl Report {
    /// Builds a report from the driver's figures.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        workload: &'static str,
        args: &super::args::LoadArgs,
        seed: u64,
        params: serde_json::Value,
        items_per_op: u64,
        m: &Measured,
        extra: Option<serde_json::Value>,
    ) -> Self {
        let secs = m.wall.as_secs_f64().max(1e-9);
        Self {
            workload,
            target: args.target.clone().unwrap_or_default(),
            instance: args.instance.clone(),
            concurrency: args.concurrency,
            connections: args.connections,
            seed,
            params,
            wall_s: secs,
            ops: m.ops,
            errors: m.errors,
            ops_per_s: m.ops as f64 / secs,
            items_per_s: (m.ops * items_per_op) as f64 / secs,
            bytes: m.bytes,
            mb_per_s: m.bytes as f64 / 1e6 / secs,
            latency: m.latency.latency(),
            client_cpu_s: m.client_cpu.as_secs_f64(),
            client_cores: m.client_cpu.as_secs_f64() / secs,
            error_samples: m.error_samples.clone(),
            extra,
        }
    }

    /// The human summary.
    pub fn text(&self) -> String {
        let l = &self.latency;
        let mut s = format!(
            "workload {} against {} (concurrency {}, {} connections, seed {})\n  params  {}\n  \
             ops     {} in {:.2}s = {:.1} ops/s",
            self.workload,
            self.target,
            self.concurrency,
            self.connections,
            self.seed,
            self.params,
            self.ops,
            self.wall_s,
            self.ops_per_s
        );
        if (self.items_per_s - self.ops_per_s).abs() > 1e-9 {
            let _ = write!(s, " ({:.1} items/s)", self.items_per_s);
        }
        let _ = write!(
            s,
            "\n  data    {:.1} MB/s ({} bytes)\n  latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, \
             max {:.3} ms\n  client  {:.2} CPU s = {:.2} cores busy (the bench itself)\n  errors  {}",
            self.mb_per_s,
            self.bytes,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            self.client_cpu_s,
            self.client_cores,
            self.errors
        );
        for (msg, n) in &self.error_samples {
            let _ = write!(s, "\n    {n} x {msg}");
        }
        if let Some(e) = &self.extra {
            let _ = write!(s, "\n  extra   {e}");
        }
        s
    }
}
