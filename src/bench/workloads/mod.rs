//! The workloads and the loop that drives them.
//!
//! A [`Workload`] seeds what it needs (untimed), then its `op` runs from `concurrency` workers
//! until the duration or op count is reached. Each op verifies what it got: a wrong byte or an
//! unexpected answer is an error, never a fast result.

mod ac;
mod bazel_like;
mod execute;
mod find_missing;
mod large;
mod rpc;
mod small;

pub use rpc::{Clients, OpError};

use super::BenchError;
use super::args::{LoadArgs, WorkloadKind};
use super::data::Rng;
use super::stats::{Counters, Progress, Recorder};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How read workloads choose among their seeded items.
pub enum Pick {
    /// Uniformly at random (the default: a warm working set).
    Random,
    /// In seeding order, wrapping, shared by all workers (`--seed-target`: every item is read
    /// once before any is read again, so each first read is a miss of the target).
    InOrder(std::sync::atomic::AtomicUsize),
}

impl Pick {
    /// The choice `args` ask for.
    pub fn from_args(args: &LoadArgs) -> Self {
        if args.seed_target.is_some() {
            Self::InOrder(std::sync::atomic::AtomicUsize::new(0))
        } else {
            Self::Random
        }
    }

    /// The index of the next item among `n` (n > 0).
    pub fn next(&self, n: usize, rng: &mut Rng) -> usize {
        match self {
            Self::Random => rng.below(n),
            Self::InOrder(at) => at.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// `"random"` or `"in-order"`, for the report.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::InOrder(_) => "in-order",
        }
    }
}

/// One kind of load.
#[async_trait::async_trait]
pub trait Workload: Send + Sync {
    /// Uploads whatever the timed run reads; not timed. `Unsupported` if the target cannot
    /// serve this workload at all.
    async fn seed(&mut self, clients: &Clients) -> Result<(), BenchError>;

    /// One operation; returns the payload bytes it moved.
    async fn op(&self, clients: &Clients, worker: usize, rng: &mut Rng) -> Result<u64, OpError>;

    /// The parameters that shape this workload, for the report.
    fn params(&self) -> serde_json::Value;

    /// Items (blobs, digests) per operation, when an op carries several.
    fn items_per_op(&self) -> u64 {
        1
    }

    /// Extra figures gathered during the run (e.g. RPC counts), for the report.
    fn extra(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Builds the workload the arguments name.
pub fn build(kind: WorkloadKind, args: &LoadArgs, seed: u64) -> Box<dyn Workload> {
    match kind {
        WorkloadKind::FindMissing => Box::new(find_missing::FindMissing::new(args, seed)),
        WorkloadKind::UploadSmall => Box::new(small::SmallUpload::new(args, seed)),
        WorkloadKind::ReadSmall => Box::new(small::SmallRead::new(args, seed)),
        WorkloadKind::UploadLarge => Box::new(large::LargeUpload::new(args, seed)),
        WorkloadKind::ReadLarge => Box::new(large::LargeRead::new(args, seed)),
        WorkloadKind::AcGet => Box::new(ac::AcGet::new(args, seed)),
        WorkloadKind::AcUpdate => Box::new(ac::AcUpdate::new(args, seed)),
        WorkloadKind::BazelLike => Box::new(bazel_like::BazelLike::new(args, seed)),
        WorkloadKind::ExecuteNoop => Box::new(execute::ExecuteNoop::new(args, seed)),
    }
}

/// When a run stops.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this long.
    After(Duration),
    /// After this many operations.
    Ops(u64),
}

/// What the driver measured.
pub struct Measured {
    /// Wall time of the timed run.
    pub wall: Duration,
    /// Operations completed, failed ones included.
    pub ops: u64,
    /// Payload bytes moved by successful operations.
    pub bytes: u64,
    /// Failed operations.
    pub errors: u64,
    /// Distinct error messages with counts.
    pub error_samples: Vec<(String, u64)>,
    /// Latency of every operation.
    pub latency: Recorder,
    /// CPU seconds (user + system) the bench process itself spent during the timed run; with
    /// a server on the same box, what the client took from it.
    pub client_cpu: Duration,
}

/// CPU time (user + system) this process has used so far; zero if the kernel will not say.
fn process_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) * 1000) as u32)
        };
        tv(u.user_time()) + tv(u.system_time())
    })
}

/// Runs `workload` from `concurrency` workers until `stop`.
pub async fn drive(
    workload: Arc<dyn Workload>,
    clients: Arc<Clients>,
    concurrency: usize,
    stop: Stop,
    seed: u64,
    progress_label: Option<String>,
) -> Measured {
    let counters = Arc::new(Counters::default());
    let _progress = progress_label.map(|l| Progress::start(l, counters.clone()));
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu();
    let start = Instant::now();
    let deadline = match stop {
        Stop::After(d) => Some(start + d),
        Stop::Ops(_) => None,
    };
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency.max(1) {
        let (workload, clients, counters, next) = (
            workload.clone(),
            clients.clone(),
            counters.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            let mut rng = Rng::new(seed ^ (worker as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
            loop {
                match (stop, deadline) {
                    (Stop::Ops(n), _) if next.fetch_add(1, Ordering::Relaxed) >= n => break,
                    (_, Some(d)) if Instant::now() >= d => break,
                    _ => {}
                }
                let t = Instant::now();
                let result = workload.op(&clients, worker, &mut rng).await;
                rec.record(t.elapsed());
                counters.ops.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(bytes) => {
                        counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                    }
                    Err(e) => counters.error(e.to_string()),
                }
            }
            rec
        }));
    }
    let mut latency = Recorder::default();
    for t in tasks {
        if let Ok(rec) = t.await {
            latency.merge(&rec);
        }
    }
    let wall = start.elapsed();
    let client_cpu = process_cpu().saturating_sub(cpu_before);
    Measured {
        wall,
        client_cpu,
        ops: counters.ops.load(Ordering::Relaxed),
        bytes: counters.bytes.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        error_samples: counters.samples(),
        latency,
    }
}
