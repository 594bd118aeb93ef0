//! `kiln bench`: a load generator for any REAPI endpoint, and `kiln bench baseline` for this
//! box's own limits (see issue 5 and tuning/RESULTS.md).
//!
//! It speaks only standard REAPI RPCs, so the same command measures kiln or any other server.
//! Every workload seeds what it reads before the clock starts and verifies what it gets back.

pub mod args;
pub mod baseline;
pub mod data;
pub mod report;
pub mod stats;
pub mod target;
pub mod workloads;

pub use args::{BenchArgs, BenchCommand, LoadArgs, WorkloadKind, parse};
pub use report::Report;

use std::sync::Arc;
use workloads::{Clients, Stop};

/// Why a bench run could not produce figures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad or missing arguments.
    #[error("{0}")]
    Usage(String),
    /// The target could not be reached.
    #[error("cannot connect to {0}")]
    Connect(String),
    /// Seeding (the untimed preparation) failed.
    #[error("seeding failed: {0}")]
    Seed(String),
    /// The target does not offer what the workload needs (e.g. Execute).
    #[error("unsupported by the target: {0}")]
    Unsupported(String),
    /// A local I/O or setup failure (baseline).
    #[error("{0}")]
    Local(String),
}

/// `connections` connections to `target` with the TLS files and token `args` name.
async fn connect(target: &str, connections: usize, args: &LoadArgs) -> Result<Clients, BenchError> {
    let target = target::Target::parse(target)?;
    let tls = crate::auth::ClientTls {
        ca: args.tls_ca.clone(),
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
    };
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(target.connect_tls(&tls).await?);
    }
    let bearer = match &args.token_file {
        Some(p) => {
            crate::auth::Bearer::from_file(p).map_err(|e| BenchError::Usage(e.to_string()))?
        }
        None => crate::auth::Bearer::none(),
    };
    Ok(Clients::new(channels, args.instance.clone()).with_bearer(bearer))
}

/// Runs a load run and returns its report (the library entry point; tests use it).
pub async fn run_load(args: &LoadArgs) -> Result<Report, BenchError> {
    let target = args
        .target
        .as_deref()
        .ok_or_else(|| BenchError::Usage("--target is required".into()))?;
    let kind = args
        .workload
        .ok_or_else(|| BenchError::Usage("--workload is required".into()))?;
    let clients = Arc::new(connect(target, args.connections, args).await?);
    let seed_clients = match (&args.seed_target, args.seeded) {
        (None, false) => clients.clone(),
        (t, seeded) => {
            let c = connect(t.as_deref().unwrap_or(target), 1, args).await?;
            Arc::new(if seeded { c.without_seed_writes() } else { c })
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut workload = workloads::build(kind, args, seed);
    workload.seed(&seed_clients).await?;
    let workload: Arc<dyn workloads::Workload> = Arc::from(workload);
    let stop = args.ops.map_or(Stop::After(args.duration), Stop::Ops);
    let measured = workloads::drive(
        workload.clone(),
        clients,
        args.concurrency.max(1),
        stop,
        seed,
        (!args.quiet).then(|| kind.name().to_string()),
    )
    .await;
    let mut params = workload.params();
    if !matches!(args.content, data::Content::Random)
        && let Some(p) = params.as_object_mut()
    {
        p.insert("content".into(), args.content.name().into());
    }
    Ok(Report::new(
        kind.name(),
        args,
        seed,
        params,
        workload.items_per_op(),
        &measured,
        workload.extra(),
    ))
}

/// `kiln bench`: prints the report; fails when the run could not be made or had errors.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    if let Some(BenchCommand::Baseline(b)) = args.command {
        let r = baseline::run(&b).await.map_err(|e| e.to_string())?;
        if b.json {
            println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
        } else {
            println!("{}", r.text());
        }
        return Ok(());
    }
    let load = args.load;
    match run_load(&load).await {
        Ok(report) => {
            if load.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(|e| e.to_string())?
                );
            } else {
                println!("{}", report.text());
            }
            if report.errors > 0 {
                return Err(format!(
                    "{} of {} operations failed",
                    report.errors, report.ops
                ));
            }
            Ok(())
        }
        Err(e) => {
            if load.json {
                let kind = load.workload.map_or("", WorkloadKind::name);
                let key = if matches!(e, BenchError::Unsupported(_)) {
                    "unsupported"
                } else {
                    "error"
                };
                println!(
                    "{}",
                    serde_json::json!({ "workload": kind, key: e.to_string() })
                );
            }
            Err(e.to_string())
        }
    }
}
