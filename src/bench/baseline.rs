//! `kiln bench baseline`: this box's own limits, measured by the same binary, so each
//! workload's figure can be given as a fraction of what the machine can do at all.
//!
//! - SHA-256 on one core (every uploaded byte is hashed once);
//! - sequential write and read of a segment-sized file in `--dir`, 1 MiB at a time, with
//!   O_DIRECT (page cache bypassed) and buffered + fdatasync. This uses plain `std::fs`:
//!   io_uring needs `unsafe`, which the crate denies outside the storage engine's `sys`
//!   module (not merged yet); the platform notes find io_uring and psync reach the same disk
//!   ceiling, so the figure is the disk's, not the API's;
//! - an empty unary call (GetCapabilities on an in-process kiln) over TCP and a Unix socket;
//! - a bare streaming transfer over loopback: a ByteStream service that sends and discards
//!   64 KiB messages without storage or hashing.

mod bare;
pub use bare::StreamFigure;
mod disk;
mod own_runtime;

use super::BenchError;
use super::args::BaselineArgs;
use super::data::Rng;
use super::stats::Latency;
use super::workloads::{Clients, OpError, Stop, Workload, drive};
use crate::config::Config;
use crate::digest::DigestFunction::{self, Blake3, Sha256};
use crate::setup::Prepared;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The box's limits.
#[derive(Debug, Serialize)]
pub struct Baseline {
    /// SHA-256 MB/s on one core (16 MiB buffers).
    pub sha256_mb_per_s: f64,
    /// BLAKE3 MB/s on one core (16 MiB buffers, SIMD, no extra threads: how kiln hashes).
    pub blake3_mb_per_s: f64,
    /// Disk figures.
    pub disk: disk::DiskFigures,
    /// Empty unary calls per second over TCP loopback (and their latency).
    pub unary_tcp: Rpc,
    /// The same over a Unix socket.
    pub unary_unix: Rpc,
    /// Bare ByteStream Read MB/s over loopback: the best of [`Baseline::streams`].
    pub stream_read_mb_per_s: f64,
    /// Bare ByteStream Write MB/s over loopback: the best of [`Baseline::streams`].
    pub stream_write_mb_per_s: f64,
    /// Every way of streaming measured (message size, connections, streams).
    pub streams: Vec<StreamFigure>,
    /// Notes on how figures were measured.
    pub notes: Vec<String>,
}

/// Unary call figures.
#[derive(Debug, Serialize)]
pub struct Rpc {
    /// Calls per second.
    pub calls_per_s: f64,
    /// Concurrent callers.
    pub concurrency: usize,
    /// Latency.
    pub latency: Latency,
    /// Failed calls.
    pub errors: u64,
}

impl Baseline {
    /// The human summary.
    pub fn text(&self) -> String {
        let d = &self.disk;
        let mut s = format!(
            "baseline\n  sha256 (1 core)            {:>9.1} MB/s\n  blake3 (1 core)            {:>9.1} MB/s\n  disk write O_DIRECT+fdatasync {:>6.1} MB/s ({} MiB in {})\n  \
             disk write buffered+fdatasync {:>6.1} MB/s\n  disk read O_DIRECT          {:>9.1} MB/s\n  \
             unary RPC TCP              {:>9.0} calls/s (c={}, p50 {:.3} ms, p99 {:.3} ms)\n  \
             unary RPC Unix socket      {:>9.0} calls/s (c={}, p50 {:.3} ms, p99 {:.3} ms)\n  \
             bare stream read (loopback, best) {:>8.1} MB/s\n  bare stream write (loopback, best) {:>7.1} MB/s",
            self.sha256_mb_per_s,
            self.blake3_mb_per_s,
            d.write_direct_mb_per_s,
            d.size >> 20,
            d.dir,
            d.write_buffered_mb_per_s,
            d.read_direct_mb_per_s,
            self.unary_tcp.calls_per_s,
            self.unary_tcp.concurrency,
            self.unary_tcp.latency.p50_ms,
            self.unary_tcp.latency.p99_ms,
            self.unary_unix.calls_per_s,
            self.unary_unix.concurrency,
            self.unary_unix.latency.p50_ms,
            self.unary_unix.latency.p99_ms,
            self.stream_read_mb_per_s,
            self.stream_write_mb_per_s,
        );
        for f in &self.streams {
            let _ = write!(
                s,
                "\n    bare {:5} {:>4} KiB messages, {} conn x {} streams {:>9.1} MB/s",
                f.direction,
                f.message_bytes >> 10,
                f.connections,
                f.streams_per_connection,
                f.mb_per_s
            );
        }
        for n in &self.notes {
            let _ = write!(s, "\n  note: {n}");
        }
        s
    }
}

/// Measures everything.
pub async fn run(args: &BaselineArgs) -> Result<Baseline, BenchError> {
    let secs = args.duration;
    let sha256_mb_per_s = tokio::task::spawn_blocking(move || hashing(Sha256, secs))
        .await
        .map_err(|e| BenchError::Local(e.to_string()))?;
    let blake3_mb_per_s = tokio::task::spawn_blocking(move || hashing(Blake3, secs))
        .await
        .map_err(|e| BenchError::Local(e.to_string()))?;
    let (dir, size) = (args.dir.clone(), args.size);
    let disk = tokio::task::spawn_blocking(move || disk::measure(&dir, size))
        .await
        .map_err(|e| BenchError::Local(e.to_string()))??;
    let (unary_tcp, unary_unix) = unary(args.concurrency, secs).await?;
    let streams = bare::measure(secs).await?;
    let best = |direction: &str| {
        streams
            .iter()
            .filter(|f| f.direction == direction)
            .map(|f| f.mb_per_s)
            .fold(0.0, f64::max)
    };
    let (stream_read_mb_per_s, stream_write_mb_per_s) = (best("read"), best("write"));
    let mut notes = vec![
        "disk figures use std::fs (pwrite/pread), not io_uring: the crate denies unsafe code \
         outside the storage engine; io_uring and psync reach the same disk ceiling here"
            .to_string(),
        "RPC figures: the server runs on its own 2-thread runtime, the client on the bench's; \
         both share this box's cores"
            .to_string(),
    ];
    notes.extend(disk.note.clone());
    Ok(Baseline {
        sha256_mb_per_s,
        blake3_mb_per_s,
        disk,
        unary_tcp,
        unary_unix,
        stream_read_mb_per_s,
        stream_write_mb_per_s,
        streams,
        notes,
    })
}

/// MB/s of `function` over a 16 MiB buffer on the calling thread.
fn hashing(function: DigestFunction, duration: Duration) -> f64 {
    let buf = super::data::fill(1, 16 << 20);
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < duration || bytes == 0 {
        std::hint::black_box(function.digest_of(&buf));
        bytes += buf.len() as u64;
    }
    bytes as f64 / 1e6 / start.elapsed().as_secs_f64()
}

/// GetCapabilities, the emptiest unary call kiln has.
struct Capabilities;

#[async_trait::async_trait]
impl Workload for Capabilities {
    async fn seed(&mut self, _clients: &Clients) -> Result<(), BenchError> {
        Ok(())
    }
    async fn op(&self, clients: &Clients, worker: usize, _rng: &mut Rng) -> Result<u64, OpError> {
        clients.capabilities_on(worker).await?;
        Ok(0)
    }
    fn params(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

async fn unary(concurrency: usize, secs: Duration) -> Result<(Rpc, Rpc), BenchError> {
    let dir = std::env::temp_dir().join(format!("kiln-baseline-{}", std::process::id()));
    let mut config = Config::default();
    config.server.listen = vec!["127.0.0.1:0".into()];
    config.server.metrics_listen = String::new();
    // Only empty calls reach this server: a small ring keeps its setup cheap.
    config.storage.capacity_bytes = 64 << 20;
    config.storage.segment_size_bytes = 16 << 20;
    config.storage.max_blob_size_bytes = 16 << 20;
    config.server.data_dir = dir.clone();
    // No bots socket either: it would print its `listening bots` line into `--json` output.
    config.execution.enabled = false;
    let (addr, server) = own_runtime::start(move |stopped, ready| async move {
        match Prepared::new(&config).await {
            Ok(p) => {
                let _ = ready.send(Ok(p.tcp_addrs()[0]));
                let _ = p
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await;
            }
            Err(e) => {
                let _ = ready.send(Err(format!("in-process server: {e}")));
            }
        }
    })
    .await?;
    let mut out = Vec::new();
    for t in [
        format!("grpc://{addr}"),
        format!("unix:{}", dir.join("kiln.sock").display()),
    ] {
        let target = super::target::Target::parse(&t)?;
        let channels = vec![target.connect().await?, target.connect().await?];
        let clients = Arc::new(Clients::new(channels, String::new()));
        let m = drive(
            Arc::new(Capabilities),
            clients,
            concurrency,
            Stop::After(secs),
            1,
            None,
        )
        .await;
        out.push(Rpc {
            calls_per_s: m.ops as f64 / m.wall.as_secs_f64(),
            concurrency,
            latency: m.latency.latency(),
            errors: m.errors,
        });
    }
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let unix = out.pop().expect("two runs");
    Ok((out.pop().expect("two runs"), unix))
}
