//! `kiln worker`: a Remote Worker API bot that runs actions for a kiln server, reaching it only
//! through its bots socket (`unix:<data>/bots.sock`) or a TCP bots address.
//!
//! What is zero-copy: staging. Input files are kept in a content-addressed cache in the work
//! dir and hardlinked into each action directory, so a blob crosses the socket once per work
//! dir and repeated trees (Directory protos are cached in memory) cost no fetch at all. What is
//! not: filling that cache and uploading outputs (FindMissingBlobs, then
//! BatchUpdateBlobs/ByteStream). A worker on the server's box fills the cache from the
//! server's segment files (`cas::local`), several threads for a large batch; elsewhere over
//! BatchReadBlobs/ByteStream. Each copied byte is hashed, so `copy_file_range` would not save
//! a copy (measured 10% slower than read, hash, write on ext4 and tmpfs: tuning/RESULTS.md),
//! and record payloads are not block-aligned, so there is nothing to reflink.
//! Repeated input subtrees are not even linked file by file: the directory cache
//! (`dircache.rs`) keeps whole staged subtrees and moves them into an action with one rename,
//! taking them back after the action only if they are intact (`verify.rs`, `checkin.rs`).
//!
//! Actions are untrusted: each runs in a sandbox (`sandbox.rs`: own mount namespace where the
//! server's data dir, sockets and the work dir are hidden, read-only everywhere but its input
//! root, as `--action-user`, default `nobody`), every process it starts dies with it
//! (`reaper.rs`), its input tree is checked (sorted unique names, at most
//! [`MAX_INPUT_DEPTH`] levels) and staged without recursion or writes into cached files
//! (`stage.rs`), and output parents are created without following symlinks (`beneath.rs`).

mod action;
mod beneath;
mod build;
mod cache;
mod capture;
mod checkin;
mod client;
mod dircache;
mod error;
mod isolation;
mod prestart;
mod reaper;
mod run;
mod sandbox;
mod sandbox_helper;
mod session;
pub mod spec;
mod stage;
mod verify;

pub use client::{Client, connect, connect_tls, connect_with};
pub use error::WorkerError;
pub use isolation::Isolation;
pub use run::Limits;
pub use sandbox::{Sandbox, resolve_user};
pub use sandbox_helper::{SandboxArgs, main as sandbox_main};
pub use stage::MAX_INPUT_DEPTH;

use std::path::PathBuf;
use std::sync::Arc;

/// Settings of one worker process.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// `unix:PATH` or `grpc://HOST:PORT` of the server's bots listener.
    pub server: String,
    /// Cache and action directories live here.
    pub work_dir: PathBuf,
    /// Actions run at once (one bot session each).
    pub concurrency: usize,
    /// Extra `key=value` properties, added to OSFamily and ISA.
    pub properties: Vec<(String, String)>,
    /// Resource limits for every action.
    pub limits: Limits,
    /// Most bytes of the input file cache in `<work_dir>/cache` (0: unbounded).
    pub cache_max_bytes: u64,
    /// The server's data dir, to copy input files from its store instead of over gRPC.
    /// `None`: the directory of a `unix:` server socket, if it holds a readable store.
    pub server_data_dir: Option<PathBuf>,
}

/// The server's data dir for a config: `server_data_dir`, or else the directory of a `unix:`
/// bots socket (`kiln serve` puts `bots.sock` in its data dir).
fn server_data_dir(config: &WorkerConfig) -> Option<PathBuf> {
    config.server_data_dir.clone().or_else(|| {
        config.server.strip_prefix("unix:").and_then(|p| {
            std::path::Path::new(p)
                .parent()
                .map(std::path::Path::to_path_buf)
        })
    })
}

/// The store of the server whose data dir is `data`, read-only. `None`, logged, when it
/// cannot be read.
fn co_located_store(data: &std::path::Path) -> Option<Arc<crate::cas::local::LocalReader>> {
    match crate::cas::local::LocalReader::open(data) {
        Ok(r) => {
            tracing::info!(dir = %data.display(), "co-located: input files and directories are read from the server's store");
            Some(Arc::new(r))
        }
        Err(e) => {
            tracing::info!(dir = %data.display(), error = %e, "not reading the server's store; inputs come over gRPC");
            None
        }
    }
}

/// Default bound of the worker's input file cache: 10 GiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 10 << 30;

/// The properties every worker advertises: OSFamily (both spellings clients use) and ISA.
pub fn default_properties() -> Vec<(String, String)> {
    let isa = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        other => other,
    };
    vec![
        ("OSFamily".into(), "Linux".into()),
        ("OSFamily".into(), "linux".into()),
        ("ISA".into(), isa.into()),
    ]
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "localhost".into(), |s| s.trim().to_string())
}

/// Connects and runs `concurrency` slots until the process is stopped. Prints `worker ready`
/// to stdout once connected.
pub async fn run(config: WorkerConfig) -> Result<(), WorkerError> {
    run_with(config, crate::auth::Bearer::none()).await
}

/// [`run`], sending `bearer`'s `authorization` header on every call (`--token-file`).
pub async fn run_with(
    config: WorkerConfig,
    bearer: crate::auth::Bearer,
) -> Result<(), WorkerError> {
    run_tls(config, bearer, crate::auth::ClientTls::default()).await
}

/// [`run_with`], connecting over TLS with `tls` to a `grpcs://` server.
pub async fn run_tls(
    mut config: WorkerConfig,
    bearer: crate::auth::Bearer,
    tls: crate::auth::ClientTls,
) -> Result<(), WorkerError> {
    if config.limits.isolation == Isolation::Namespaces {
        isolation::probe().map_err(error::io(
            "--isolation namespaces: cannot create network/IPC/UTS/PID namespaces (needs CAP_SYS_ADMIN)",
        ))?;
    }
    reaper::enable().map_err(error::io("PR_SET_CHILD_SUBREAPER"))?;
    let data_dir = server_data_dir(&config);
    let client = connect_tls(&config.server, bearer, &tls).await?;
    let cache = Arc::new(cache::FileCache::open(
        config.work_dir.join("cache"),
        config.cache_max_bytes,
        server_data_dir(&config).and_then(|d| co_located_store(&d)),
    )?);
    let actions_dir = config.work_dir.join("actions");
    if actions_dir.exists() {
        let _ = std::fs::remove_dir_all(&actions_dir);
    }
    std::fs::create_dir_all(&actions_dir)
        .map_err(error::io(format!("mkdir {}", actions_dir.display())))?;
    // The sandbox binds action directories at their paths: no relative or symlinked ones.
    let actions_dir = std::fs::canonicalize(&actions_dir)
        .map_err(error::io(format!("resolve {}", actions_dir.display())))?;
    if let Some(sandbox) = config.limits.sandbox.as_mut() {
        // What actions must never see: the server's data dir (store and sockets) and this
        // worker's own directories (cache, other actions).
        let s = Arc::make_mut(sandbox);
        s.hide.extend(data_dir.iter().cloned());
        s.hide.push(
            std::fs::canonicalize(&config.work_dir)
                .map_err(error::io(format!("resolve {}", config.work_dir.display())))?,
        );
        s.hide = s
            .hide
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        s.hide.sort();
        s.hide.dedup();
        if let Some(p) = s.hide.iter().find(|p| p.parent().is_none()) {
            return Err(WorkerError::Invalid {
                what: "hidden directory",
                reason: format!(
                    "{} would hide the whole file system from actions (server socket or \
                     --action-hide at the root?)",
                    p.display()
                ),
            });
        }
        s.writable = s
            .writable
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        s.probe(&actions_dir).await?;
    }
    // Helpers started ahead, two per slot: not with a PID namespace per action (made around
    // each helper's start), nor when actions run as the worker's own user (they could change
    // the directory their input root is staged in).
    let prestarts = match &config.limits.sandbox {
        Some(s) if config.limits.isolation == Isolation::None && s.owner().is_some() => {
            Some(prestart::Prestarts::new(
                Arc::clone(s),
                config.limits.clone(),
                actions_dir.clone(),
                2 * config.concurrency.max(1),
            ))
        }
        _ => None,
    };
    let ctx = Arc::new(action::Context {
        client,
        cache,
        actions_dir,
        limits: config.limits,
        prestarts,
    });
    let mut properties = default_properties();
    properties.extend(config.properties.iter().cloned());
    let host = hostname();
    let pid = std::process::id();
    let mut slots = tokio::task::JoinSet::new();
    // Orphans of running actions that exit are reaped as they go, not only at the action's end.
    slots.spawn(async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            every.tick().await;
            let _ = tokio::task::spawn_blocking(|| reaper::global().reap_zombies()).await;
        }
    });
    for slot in 0..config.concurrency.max(1) {
        slots.spawn(session::run_slot(
            ctx.clone(),
            format!("{host}-{pid}-{slot}"),
            properties.clone(),
        ));
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "worker ready");
        let _ = out.flush();
    }
    while slots.join_next().await.is_some() {}
    Ok(())
}

/// Input staging on its own, as a worker does it (used by benchmarks and tools): a file
/// cache in `work_dir` plus the in-memory Directory cache, kept across calls.
pub struct Stager {
    client: Client,
    cache: Arc<cache::FileCache>,
}

impl Stager {
    /// A stager whose cache lives in `work_dir/cache`, bounded to `cache_max_bytes` (0: none),
    /// copying input files from the store of the server whose data dir is `server_data_dir`
    /// when given and readable.
    pub fn new(
        client: Client,
        work_dir: &std::path::Path,
        cache_max_bytes: u64,
        server_data_dir: Option<&std::path::Path>,
    ) -> Result<Self, WorkerError> {
        let store = server_data_dir.and_then(co_located_store);
        Ok(Self {
            client,
            cache: Arc::new(cache::FileCache::open(
                work_dir.join("cache"),
                cache_max_bytes,
                store,
            )?),
        })
    }

    /// Input blobs copied from the co-located store and fetched over gRPC so far.
    pub fn sources(&self) -> (u64, u64) {
        self.cache.sources()
    }

    /// Bytes in the file cache now.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// Stages the tree `root` at `dest` (which must not exist).
    pub async fn stage(
        &self,
        root: &crate::digest::Digest,
        dest: &std::path::Path,
    ) -> Result<(), WorkerError> {
        let fresh = std::collections::HashSet::new();
        stage::stage(&self.client, &self.cache, root, dest, None, &fresh).await
    }

    /// Hands the subtrees staged at `dest` back to the directory cache (which keeps those
    /// still intact), as a worker does after each action; `dest` may be removed afterwards.
    pub async fn release(&self, dest: &std::path::Path) {
        let (cache, dest) = (self.cache.clone(), dest.to_path_buf());
        let _ = tokio::task::spawn_blocking(move || stage::check_in(&cache, &dest)).await;
    }

    /// Fixes the threads that build one staged tree (0, the default: one for small trees,
    /// up to 4 for large ones); for measurements.
    pub fn set_build_threads(&self, n: usize) {
        self.cache.set_build_threads(n);
    }

    /// Trees in the directory cache and their hardlinks now.
    pub fn dir_cache(&self) -> (usize, u64) {
        let (n, size) = self.cache.trees().idle();
        (n, size.files)
    }
}
