//! The one place that turns a [`Config`] into live objects and starts them.

use crate::api::{CacheServices, Limits};
use crate::auth::{Authorizer, Rights};
use crate::cas::{ActionCache, Cas};
use crate::config::Config;
use crate::config::{CompressionName, DurabilityMode, IoBackendName};
use crate::exec::{ActionLimits, Scheduler, SchedulerConfig, Timeouts};
use crate::metrics::{MeteredStore, Metrics};
use crate::server::{self, Listeners};
use crate::storage::{
    Compression, Durability, Engine, EngineConfig, IoBackend, StorageError, Store,
};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Failures while starting a server.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A directory, socket or listener could not be set up.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The storage engine could not open.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The tokens file of `[auth]` cannot be used.
    #[error("auth.tokens_file: {0}")]
    Auth(#[from] crate::auth::AuthFileError),
    /// A file of `[tls]` cannot be used.
    #[error("tls: {0}")]
    Tls(#[from] server::tls::TlsError),
    /// `[upstream]` cannot be used (its token or TLS files, its endpoint).
    #[error("upstream: {0}")]
    Upstream(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Io { what, source }
}

/// The front-end limits a config asks for.
pub fn limits(config: &Config) -> Limits {
    Limits {
        max_batch_total_size_bytes: config.cache.max_batch_total_size_bytes,
        max_inline_bytes: config.cache.max_inline_bytes,
        max_message_bytes: config.cache.max_message_bytes as usize,
        upload_idle_timeout: Duration::from_secs(config.cache.upload_idle_timeout_secs),
        read_chunk_bytes: config.cache.read_chunk_bytes as usize,
        exec_enabled: config.execution.enabled,
        max_open_uploads: config.cache.max_open_uploads as usize,
        max_upload_buffer_bytes: config.cache.max_upload_buffer_bytes,
        upload_part_bytes: config.storage.part_size_bytes,
    }
}

/// The scheduler settings a config asks for.
pub fn scheduler_config(config: &Config) -> SchedulerConfig {
    let e = &config.execution;
    SchedulerConfig {
        timeouts: Timeouts {
            default: Duration::from_secs(e.default_timeout_secs),
            max: Duration::from_secs(e.max_timeout_secs),
        },
        action_limits: ActionLimits {
            max_action_bytes: e.max_action_bytes,
            max_command_bytes: e.max_command_bytes,
            max_directory_bytes: e.max_directory_bytes,
            max_input_depth: e.max_input_depth as usize,
            max_input_directories: e.max_input_directories as usize,
            max_input_files: e.max_input_files as usize,
        },
        bot_poll: Duration::from_millis(e.bot_poll_ms),
        bot_timeout: Duration::from_secs(e.bot_timeout_secs),
        max_requeues: e.max_requeues,
        unmatched_grace: Duration::from_secs(e.unmatched_grace_secs),
        retention: Duration::from_secs(e.operation_retention_secs),
    }
}

/// The bots socket path of a config, if execution and the socket are enabled.
pub fn bots_socket_path(config: &Config) -> Option<PathBuf> {
    let s = &config.execution.bots_socket;
    (config.execution.enabled && !s.is_empty()).then(|| config.server.data_dir.join(s))
}

/// Binds the bots listeners (Unix socket, mode 0660, and any TCP addresses), printing
/// `listening bots unix:PATH` / `listening bots grpc://ADDR` lines to stdout.
pub async fn bind_bots(
    config: &Config,
    tls: Option<&Arc<server::tls::TlsState>>,
) -> Result<Listeners, SetupError> {
    let mut listeners = Listeners {
        connections: server::ConnectionLimit::new(config.server.max_connections as usize),
        tls_state: tls.cloned(),
        ..Listeners::default()
    };
    let mut out = std::io::stdout().lock();
    for addr in &config.execution.bots_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io(format!("cannot listen on {addr}")))?;
        let local = l.local_addr().map_err(io("local_addr"))?;
        let _ = writeln!(out, "listening bots grpc://{local}");
        listeners.tcp.push(l);
    }
    if tls.is_some() {
        for addr in &config.execution.bots_tls_listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(io(format!("cannot listen on {addr}")))?;
            let local = l.local_addr().map_err(io("local_addr"))?;
            let _ = writeln!(out, "listening bots grpcs://{local}");
            listeners.tls.push(l);
        }
    }
    if let Some(path) = bots_socket_path(config) {
        listeners.unix.push(bind_unix(&path)?);
        tracing::info!(path = %path.display(), "bots listening on Unix socket");
        let _ = writeln!(out, "listening bots unix:{}", path.display());
    }
    let _ = out.flush();
    Ok(listeners)
}

fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, SetupError> {
    // A socket file left by an earlier process would make bind fail.
    if path.exists() {
        std::fs::remove_file(path)
            .map_err(io(format!("cannot remove stale socket {}", path.display())))?;
    }
    let l = tokio::net::UnixListener::bind(path)
        .map_err(io(format!("cannot bind {}", path.display())))?;
    set_socket_mode(path)?;
    Ok(l)
}

/// The storage engine's settings for a config, with the capacity resolved (see
/// [`resolve_capacity`]).
pub fn engine_config(config: &Config) -> Result<EngineConfig, SetupError> {
    let st = &config.storage;
    let mut e = EngineConfig::new(crate::cas::local::store_dir(&config.server.data_dir));
    e.capacity_bytes = resolve_capacity(config)?;
    e.segment_size = st.segment_size_bytes;
    e.max_blob_size = max_blob_size(st.max_blob_size_bytes, e.capacity_bytes);
    e.durability = match st.durability {
        DurabilityMode::Fdatasync => Durability::Fdatasync,
        DurabilityMode::Periodic => Durability::Periodic {
            interval: Duration::from_millis(st.sync_interval_ms.max(1)),
        },
    };
    e.io = match st.io_backend {
        IoBackendName::Auto => IoBackend::Auto,
        IoBackendName::IoUring => IoBackend::IoUring,
        IoBackendName::Psync => IoBackend::Psync,
    };
    e.index_slots = st.index_slots;
    e.index_max_slots = st.index_max_slots;
    e.index_grow_load = st.index_grow_load;
    e.probe_limit = st.probe_limit;
    e.part_size = st.part_size_bytes;
    if st.copy_forward_segments != 0 {
        tracing::warn!(
            "storage.copy_forward_segments is ignored since copy-forward moved to eviction; see storage.copy_forward_horizon"
        );
    }
    e.copy_forward = st.copy_forward;
    e.copy_forward_horizon = st.copy_forward_horizon;
    e.copy_forward_budget = st.copy_forward_budget_bytes;
    e.max_batch_bytes = st.max_batch_bytes;
    e.checkpoint_bytes = st.checkpoint_bytes;
    e.checkpoint_interval = Duration::from_millis(st.checkpoint_interval_ms.max(1));
    e.compression = match st.compression {
        CompressionName::None => Compression::None,
        CompressionName::Zstd => Compression::Zstd {
            level: st.compression_level,
            min_size: st.compression_min_size_bytes,
            max_ratio: st.compression_max_ratio,
        },
    };
    e.validate()?;
    Ok(e)
}

/// The largest blob: as configured, except that the default (4 GiB) shrinks to a quarter of a
/// smaller capacity (a disk with less than ~21 GB free) instead of refusing to start. A value
/// set explicitly is kept, and checked by the engine.
fn max_blob_size(configured: u64, capacity: u64) -> u64 {
    if configured == crate::config::DEFAULT_MAX_BLOB_SIZE_BYTES && configured > capacity / 4 {
        let lowered = capacity / 4 / (1 << 20) * (1 << 20);
        tracing::warn!(
            max_blob_size_bytes = lowered,
            capacity_bytes = capacity,
            "storage: the default max_blob_size_bytes (4 GiB) exceeds a quarter of the capacity; \
             lowered (set storage.capacity_bytes or storage.max_blob_size_bytes to choose)"
        );
        lowered
    } else {
        configured
    }
}

/// The ring's byte capacity: the configured value, or (when 0) the value derived at first
/// start from free disk space (80%, whole segments) and remembered in `<data_dir>/capacity`,
/// so the ring keeps its size across restarts.
pub fn resolve_capacity(config: &Config) -> Result<u64, SetupError> {
    let st = &config.storage;
    if st.capacity_bytes != 0 {
        return Ok(st.capacity_bytes);
    }
    let dir = &config.server.data_dir;
    let file = dir.join("capacity");
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(v) = text.trim().parse::<u64>()
    {
        return Ok(v);
    }
    let vfs = nix::sys::statvfs::statvfs(dir.as_path()).map_err(|e| SetupError::Io {
        what: format!("cannot measure free space of {}", dir.display()),
        source: e.into(),
    })?;
    let free = vfs.blocks_available() as u64 * vfs.fragment_size() as u64;
    let seg = st.segment_size_bytes.max(1);
    let capacity = (free / 10 * 8) / seg * seg;
    tracing::info!(
        capacity_bytes = capacity,
        free_bytes = free,
        "storage capacity derived from free disk space (80%); set storage.capacity_bytes to choose"
    );
    std::fs::write(&file, format!("{capacity}\n"))
        .map_err(io(format!("cannot write {}", file.display())))?;
    Ok(capacity)
}

/// How stale `kiln_storage_blobs` may be: counting scans the whole index.
const BLOB_COUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the storage engine the config describes, and exports its statistics as metrics.
pub fn open_store(config: &Config, metrics: &Metrics) -> Result<Arc<dyn Store>, SetupError> {
    let engine = Arc::new(Engine::open(engine_config(config)?)?);
    let st = engine.stats();
    tracing::info!(
        io = st.io_engine,
        segments = st.segments,
        bytes_used = st.bytes_used,
        "storage engine open"
    );
    let e = engine.clone();
    let capacity = engine.config().capacity_bytes;
    // Counting live entries scans the whole index, so it runs at most every BLOB_COUNT_EVERY.
    let blobs = std::sync::Mutex::new(None::<(std::time::Instant, u64)>);
    metrics.add_gauge_source(Box::new(move || {
        let s = e.stats();
        let blob_count = {
            let mut cached = blobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match *cached {
                Some((at, n)) if at.elapsed() < BLOB_COUNT_EVERY => n,
                _ => {
                    let n = e.count_entries();
                    *cached = Some((std::time::Instant::now(), n));
                    n
                }
            }
        };
        vec![
            (
                "storage_capacity_bytes",
                "Bytes of segment files the ring may use (storage.capacity_bytes)",
                capacity as i64,
            ),
            (
                "storage_blobs",
                "Live index entries (CAS blobs and action results), recounted at most every 10 s",
                blob_count as i64,
            ),
            (
                "storage_bytes_used",
                "Bytes of live segment files",
                s.bytes_used as i64,
            ),
            (
                "storage_segments",
                "Live segments in the ring",
                s.segments as i64,
            ),
            (
                "storage_corruptions",
                "Records that failed checks on read (served as misses)",
                s.corruptions as i64,
            ),
            (
                "storage_evictions",
                "Segments dropped from the ring",
                s.evictions as i64,
            ),
            (
                "storage_copy_forwards",
                "Blobs copied forward at eviction because touched within the horizon",
                s.copy_forwards as i64,
            ),
            (
                "storage_copy_forward_bytes",
                "Record bytes written by copy-forward (write amplification of the eviction policy)",
                s.copy_forward_bytes as i64,
            ),
            (
                "storage_copy_forward_budget_cuts",
                "Touched blobs evicted anyway because the per-eviction copy budget was spent",
                s.copy_forward_budget_cuts as i64,
            ),
            (
                "storage_copy_forward_touch_age_segments",
                "Segments of writes since the touch of the least recently touched blob the last eviction kept",
                s.copy_forward_touch_age as i64,
            ),
            (
                "storage_index_displaced",
                "Index entries displaced by a full probe window",
                s.index_displaced as i64,
            ),
            (
                "storage_index_displaced_bytes",
                "Bytes of the blobs pushed out of a full index: still in the ring, unreachable, reclaimed by eviction",
                s.index_displaced_bytes as i64,
            ),
            (
                "storage_full_errors",
                "Writes refused because the store was full",
                s.full_errors as i64,
            ),
            (
                "storage_syncs",
                "Durable sync rounds completed",
                s.syncs as i64,
            ),
            (
                "storage_index_checkpoints",
                "Sync rounds that also wrote back the index file",
                s.checkpoints as i64,
            ),
            (
                "storage_replayed_records",
                "Records replayed into the index at open after an unclean stop",
                s.replayed as i64,
            ),
            (
                "storage_dropped_entries",
                "Index entries dropped because their record failed its checks (the blob reads as missing until re-uploaded)",
                s.dropped_entries as i64,
            ),
            (
                "storage_enospc_evictions",
                "Segments evicted early because the file system was full",
                s.enospc_evictions as i64,
            ),
            (
                "storage_index_rebuilds",
                "Index rebuilds from the segment records at open",
                s.index_rebuilds as i64,
            ),
            (
                "storage_index_slots",
                "Slots of the index in force (64 bytes each)",
                s.index_slots as i64,
            ),
            (
                "storage_index_max_slots",
                "Most slots the index may grow to (storage.index_max_slots)",
                s.index_max_slots as i64,
            ),
            (
                "storage_index_load_permille",
                "Share of index slots holding a live entry at the last check, in thousandths (sampled)",
                s.index_load_permille as i64,
            ),
            (
                "storage_index_growths",
                "Times the index was doubled online because its load passed storage.index_grow_load",
                s.index_growths as i64,
            ),
            (
                "storage_index_grow_failures",
                "Index growths that could not be done (no disk space for the larger file, ...)",
                s.index_grow_failures as i64,
            ),
            (
                "storage_compression_logical_bytes",
                "With storage.compression on: bytes of blobs uploaded since start",
                s.compression_logical_bytes as i64,
            ),
            (
                "storage_compression_stored_bytes",
                "The payload bytes those uploads take on disk (stored over logical is the ratio at rest)",
                s.compression_stored_bytes as i64,
            ),
            (
                "storage_compressed_records",
                "Records written compressed",
                s.compressed_records as i64,
            ),
            (
                "storage_compression_skipped",
                "Records long enough to compress that were stored as they are (did not shrink to compression_max_ratio)",
                s.compression_skipped as i64,
            ),
        ]
    }));
    Ok(engine)
}

/// Takes an exclusive lock on the data directory (`<data_dir>/lock`), so two processes never
/// write one store. Hold the returned guard for as long as the store is open.
pub fn lock_data_dir(config: &Config) -> Result<nix::fcntl::Flock<std::fs::File>, SetupError> {
    let dir = &config.server.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(io(format!("cannot create data dir {}", dir.display())))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("cannot open {}", path.display())))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        SetupError::Io {
            what: format!(
                "data dir {} is in use by another kiln process",
                dir.display()
            ),
            source: e.into(),
        }
    })
}

/// The Unix socket path of a config, if enabled.
pub fn unix_socket_path(config: &Config) -> Option<PathBuf> {
    let s = &config.server.unix_socket;
    (!s.is_empty()).then(|| config.server.data_dir.join(s))
}

/// Gauges of the connection caps: open connections, the cap, and accepts that hit the fd limit.
fn connection_gauges(
    limits: &[(&'static str, server::ConnectionLimit)],
) -> Vec<(&'static str, &'static str, i64)> {
    let mut out = Vec::new();
    for (name, l) in limits {
        let (open, max, fd): (&'static str, &'static str, &'static str) = if *name == "bots" {
            (
                "bots_connections_open",
                "bots_connections_limit",
                "bots_accept_fd_exhausted",
            )
        } else {
            (
                "connections_open",
                "connections_limit",
                "accept_fd_exhausted",
            )
        };
        out.push((open, "Connections open now", l.open() as i64));
        out.push((max, "server.max_connections", l.max() as i64));
        out.push((
            fd,
            "Accepts that failed for lack of file descriptors (backed off)",
            l.fd_exhausted() as i64,
        ));
    }
    out
}

/// Binds every listener of the config.
pub async fn bind(
    config: &Config,
    tls: Option<&Arc<server::tls::TlsState>>,
) -> Result<Listeners, SetupError> {
    let mut listeners = Listeners {
        connections: server::ConnectionLimit::new(config.server.max_connections as usize),
        tls_state: tls.cloned(),
        ..Listeners::default()
    };
    if tls.is_some() {
        for addr in &config.server.tls_listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(io(format!("cannot listen on {addr}")))?;
            let local = l.local_addr().map_err(io("local_addr"))?;
            tracing::info!(%local, "listening on TCP with TLS");
            listeners.tls.push(l);
        }
    }
    for addr in &config.server.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io(format!("cannot listen on {addr}")))?;
        let local = l.local_addr().map_err(io("local_addr"))?;
        tracing::info!(%local, "listening on TCP");
        listeners.tcp.push(l);
    }
    if let Some(path) = unix_socket_path(config) {
        // A socket file left by an earlier process would make bind fail.
        if path.exists() {
            std::fs::remove_file(&path)
                .map_err(io(format!("cannot remove stale socket {}", path.display())))?;
        }
        let l = tokio::net::UnixListener::bind(&path)
            .map_err(io(format!("cannot bind {}", path.display())))?;
        set_socket_mode(&path)?;
        tracing::info!(path = %path.display(), "listening on Unix socket");
        listeners.unix.push(l);
    }
    Ok(listeners)
}

fn set_socket_mode(path: &std::path::Path) -> Result<(), SetupError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io(format!("cannot chmod {}", path.display())))
}

/// The rights table a config asks for: everything allowed without `auth.tokens_file`.
pub fn authorizer(config: &Config) -> Result<Arc<Authorizer>, SetupError> {
    let a = &config.auth;
    if a.tokens_file.is_empty() {
        return Ok(Authorizer::open());
    }
    let anonymous = match &a.anonymous {
        None => Rights::NONE,
        Some(names) => Rights::parse(names)?,
    };
    let auth = Authorizer::load(std::path::Path::new(&a.tokens_file), anonymous)?;
    tracing::info!(tokens_file = %a.tokens_file, anonymous = ?anonymous.names(), "auth on");
    Ok(auth)
}

/// The TLS settings a config asks for: `None` when no TLS listener is configured.
pub fn tls_state(config: &Config) -> Result<Option<Arc<server::tls::TlsState>>, SetupError> {
    let bots = config.execution.enabled && !config.execution.bots_tls_listen.is_empty();
    if config.server.tls_listen.is_empty() && !bots {
        return Ok(None);
    }
    let state = server::tls::TlsState::load(&config.tls)?;
    tracing::info!(cert_file = %config.tls.cert_file, client_auth = ?config.tls.client_auth, "TLS on");
    Ok(Some(state))
}

/// Re-reads the tokens file and the TLS certificates (if any) on every SIGHUP; a bad file
/// keeps the old one in force and logs why.
pub fn reload_on_sighup(
    auth: Arc<Authorizer>,
    tls: Option<Arc<server::tls::TlsState>>,
) -> Result<(), SetupError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).map_err(io("cannot watch SIGHUP"))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match auth.reload() {
                Ok(()) => tracing::info!("SIGHUP: tokens file reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: tokens file not reloaded; the old one stays in force");
                }
            }
            match tls.as_ref().map(|t| t.reload()) {
                None => {}
                Some(Ok(())) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificates not reloaded; the old ones stay in force");
                }
            }
        }
    });
    Ok(())
}

/// How often the tokens file's modification time and size are checked.
pub const TOKENS_FILE_POLL: Duration = Duration::from_secs(2);

/// Re-reads the tokens file when its modification time or size changes (checked every
/// [`TOKENS_FILE_POLL`]), until `stop`; a bad file keeps the old table and logs why.
async fn reload_on_change(auth: Arc<Authorizer>, stop: impl Future<Output = ()>) {
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(auth.path());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(TOKENS_FILE_POLL) => {}
        }
        let now = stamp(auth.path());
        if now == last {
            continue;
        }
        last = now;
        match auth.reload() {
            Ok(()) => tracing::info!("tokens file changed: reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "tokens file changed but not reloaded; the old one stays in force");
            }
        }
    }
}

/// Warns loudly (at start, and as `auth_open_network_listeners` in `/metrics` and `/status`)
/// when a TCP listener is reachable from other machines while every request may do everything.
fn warn_if_open(auth: &Authorizer, grpc: &Listeners, bots: Option<&Listeners>, metrics: &Metrics) {
    if auth.enabled() {
        return;
    }
    let open: Vec<std::net::SocketAddr> = grpc
        .tcp
        .iter()
        .chain(grpc.tls.iter())
        .chain(
            bots.into_iter()
                .flat_map(|b| b.tcp.iter().chain(b.tls.iter())),
        )
        .filter_map(|l| l.local_addr().ok())
        .filter(|a| !a.ip().is_loopback())
        .collect();
    if open.is_empty() {
        return;
    }
    let text = open
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    tracing::warn!(
        listeners = %text,
        "!!! NO AUTH: kiln listens on {text} (not loopback) and every client that reaches it \
         may read, write the cache and run actions. Set [auth] tokens_file (kiln token add) or \
         firewall these ports. !!!"
    );
    let n = open.len() as i64;
    metrics.add_gauge_source(Box::new(move || {
        vec![(
            "auth_open_network_listeners",
            "WARNING when > 0: listeners on non-loopback addresses with no [auth] configured",
            n,
        )]
    }));
}

/// The scheduler's figures for `/metrics` and the status page.
fn export_exec_stats(scheduler: &Scheduler, metrics: &Metrics) {
    // Weak handles: the scheduler reaches the metrics (through the metered store), so strong
    // ones here would make a cycle that keeps the store open after the server stops (no clean
    // stop recorded, its files held).
    let s = scheduler.downgrade();
    metrics.add_gauge_source(Box::new(move || {
        let Some(st) = s.upgrade().map(|s| s.stats()) else {
            return Vec::new();
        };
        vec![
            ("exec_bots_connected", "Bot sessions open", st.bots as i64),
            (
                "exec_queued_actions",
                "Actions waiting for a bot",
                st.queued as i64,
            ),
            (
                "exec_running_actions",
                "Actions leased to a bot",
                st.running as i64,
            ),
            (
                "exec_actions_finished",
                "Actions bots finished since start (with a result or an error)",
                i64::try_from(st.finished).unwrap_or(i64::MAX),
            ),
        ]
    }));
    let s = scheduler.downgrade();
    metrics.set_slow_actions(Box::new(move || {
        s.upgrade()
            .map(|s| s.slowest_recent(10))
            .unwrap_or_default()
            .into_iter()
            .map(|a| crate::metrics::SlowAction {
                digest: a.digest.to_string(),
                seconds: a.ran.as_secs_f64(),
                exit_code: a.exit_code,
                ago_seconds: a.at.elapsed().as_secs_f64(),
            })
            .collect()
    }));
}

/// The upstream tier `[upstream]` describes (none without the section), its metrics
/// registered in `metrics`.
pub fn upstream(
    config: &Config,
    cas: &Cas,
    ac: &ActionCache,
    metrics: &Metrics,
) -> Result<Option<crate::upstream::Upstream>, SetupError> {
    use crate::upstream::{Upstream, UpstreamSettings};
    let Some(u) = &config.upstream else {
        return Ok(None);
    };
    let file = |f: &str| (!f.is_empty()).then(|| PathBuf::from(f));
    let bearer = match file(&u.token_file) {
        Some(path) => crate::auth::Bearer::from_file(&path)
            .map_err(|e| SetupError::Upstream(format!("token_file: {e}")))?,
        None => crate::auth::Bearer::none(),
    };
    let settings = UpstreamSettings {
        endpoint: u.endpoint.clone(),
        instance_name: u.instance_name.clone(),
        instance_names: u.instance_names.clone(),
        tls: crate::auth::ClientTls {
            ca: file(&u.tls_ca_file),
            cert: file(&u.tls_cert_file),
            key: file(&u.tls_key_file),
        },
        connect_timeout: Duration::from_millis(u.connect_timeout_ms),
        timeout: Duration::from_millis(u.timeout_ms),
        breaker_failures: u.breaker_failures,
        breaker_reset: Duration::from_millis(u.breaker_reset_ms),
        max_fetches: u.max_fetches as usize,
        batch_bytes: u.batch_bytes,
        write: u.write,
        execute: u.execute,
        max_action_bytes: config.execution.max_action_bytes,
        max_directory_bytes: config.execution.max_directory_bytes,
        queue_dir: Some(config.server.data_dir.join("upstream-queue")),
        queue_max_bytes: u.queue_max_bytes,
    };
    let up = Upstream::new(settings, bearer, cas.clone(), ac.clone())
        .map_err(|e| SetupError::Upstream(e.to_string()))?;
    let s = up.stats();
    metrics.register(
        "upstream_reads",
        "Local misses asked upstream, by kind (cas, ac) and result (hit, miss, error)",
        s.reads.clone(),
    );
    metrics.register(
        "upstream_fetched_bytes",
        "Verified blob bytes fetched from the upstream",
        s.fetched_bytes.clone(),
    );
    metrics.register(
        "upstream_forwards",
        "Writes forwarded to the upstream, by kind and result (sent, skipped, gone, error)",
        s.forwards.clone(),
    );
    metrics.register(
        "upstream_forwarded_bytes",
        "Blob bytes forwarded to the upstream",
        s.forwarded_bytes.clone(),
    );
    metrics.register(
        "upstream_queue_dropped",
        "Writes not queued for the upstream because the queue was full",
        s.queue_dropped.clone(),
    );
    metrics.register(
        "upstream_executions",
        "Executes with execute = \"local-first\", by where they ran (local, upstream)",
        s.executions.clone(),
    );
    metrics.register(
        "upstream_request_duration_seconds",
        "Latency of upstream calls",
        s.latency.clone(),
    );
    metrics.add_gauge_source(Box::new(up.gauges()));
    up.start_forwarding();
    tracing::info!(endpoint = %u.endpoint, write = ?u.write, execute = ?u.execute, "upstream tier");
    Ok(Some(up))
}

/// The HTTP cache API of `[http_cache]`, bound, when its `listen` is set.
async fn http_cache(
    config: &Config,
    cas: &Cas,
    ac: ActionCache,
    auth: &Arc<Authorizer>,
    metrics: &Metrics,
) -> Result<Option<(crate::http_cache::HttpCache, tokio::net::TcpListener)>, SetupError> {
    let h = &config.http_cache;
    if h.listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&h.listen)
        .await
        .map_err(io(format!(
            "cannot listen on {} for the HTTP cache API",
            h.listen
        )))?;
    let settings = crate::http_cache::Settings {
        idle: Duration::from_secs(h.body_idle_timeout_secs),
        max_buffered: h.max_buffered_body_bytes,
        max_ac_bytes: config.cache.max_message_bytes,
        max_buffer_bytes: h.max_buffer_bytes,
        opaque_ac: h.opaque_ac,
        part_bytes: config.storage.part_size_bytes,
        read_chunk: config.cache.read_chunk_bytes as usize,
        max_connections: h.max_connections as usize,
    };
    let api = crate::http_cache::HttpCache::new(
        cas.clone(),
        ac,
        auth.clone(),
        crate::metrics::HttpCacheMetrics::register(metrics),
        settings,
    );
    tracing::info!(listen = %h.listen, "HTTP cache API");
    Ok(Some((api, listener)))
}

/// The Remote Asset API's state: downloads allowed when `[remote_asset]` names a scheme.
fn remote_assets(config: &Config, cas: &Cas) -> Result<crate::asset::Assets, SetupError> {
    let ra = &config.remote_asset;
    let fetcher = if ra.allowed_schemes.is_empty() {
        None
    } else {
        let limits = crate::asset::FetchLimits {
            schemes: ra.allowed_schemes.clone(),
            hosts: ra.allowed_hosts.clone(),
            timeout: Duration::from_secs(ra.download_timeout_secs),
            max_bytes: ra.max_download_bytes,
            concurrency: ra.max_concurrent_downloads as usize,
            max_redirects: ra.max_redirects as usize,
            private_addresses: ra.allow_private_addresses,
        };
        Some(crate::asset::Fetcher::new(limits).map_err(|reason| {
            crate::config::ConfigError::Invalid {
                field: "remote_asset",
                reason,
            }
        })?)
    };
    Ok(crate::asset::Assets::new(cas.clone(), fetcher))
}

/// Registers the Remote Asset counters in `/metrics`.
fn export_asset_metrics(assets: &crate::asset::Assets, metrics: &Metrics) {
    let m = assets.metrics();
    metrics.register(
        "remote_asset_fetch_hits",
        "Remote Asset fetches answered without a download (pushed, remembered, or in the CAS)",
        m.hits.clone(),
    );
    metrics.register(
        "remote_asset_downloads",
        "Remote Asset fetches answered by a download from origin",
        m.downloads.clone(),
    );
    metrics.register(
        "remote_asset_fetch_failures",
        "Remote Asset downloads that failed (origin error, timeout, size, checksum, refused)",
        m.failures.clone(),
    );
    metrics.register(
        "remote_asset_downloaded_bytes",
        "Bytes downloaded from origin by the Remote Asset Fetch service and stored",
        m.downloaded_bytes.clone(),
    );
    metrics.register(
        "remote_asset_pushes",
        "URIs remembered by Remote Asset PushBlob and PushDirectory",
        m.pushes.clone(),
    );
}

/// Puts the RPC metrics layer (counts, codes, latency) in front of every route of `routes`.
fn instrument(routes: tonic::service::Routes, metrics: &Metrics) -> tonic::service::Routes {
    tonic::service::Routes::from(routes.into_axum_router().layer(metrics.grpc.clone()))
}

/// A server whose listeners are bound and whose objects are built, not yet serving.
pub struct Prepared {
    _lock: nix::fcntl::Flock<std::fs::File>,
    routes: tonic::service::Routes,
    listeners: Listeners,
    /// The bots server (Bots + CAS + ByteStream), when execution is enabled.
    bots: Option<(tonic::service::Routes, Listeners)>,
    metrics: Arc<Metrics>,
    metrics_listener: Option<tokio::net::TcpListener>,
    /// The HTTP cache API and its listener, when `[http_cache] listen` is set.
    http_cache: Option<(crate::http_cache::HttpCache, tokio::net::TcpListener)>,
    auth: Arc<Authorizer>,
    sample_interval: std::time::Duration,
    tls: Option<Arc<server::tls::TlsState>>,
}

impl Prepared {
    /// Builds everything a config describes and binds its listeners.
    pub async fn new(config: &Config) -> Result<Self, SetupError> {
        config.validate()?;
        let lock = lock_data_dir(config)?;
        let auth = authorizer(config)?;
        let tls = tls_state(config)?;
        let metrics = Metrics::new();
        metrics.register(
            "auth_requests",
            "Requests per principal (with auth on)",
            auth.requests.clone(),
        );
        metrics.register(
            "auth_denied",
            "Requests refused per principal (with auth on)",
            auth.denied.clone(),
        );
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(
            open_store(config, &metrics)?,
            metrics.clone(),
        ));
        let cas = Cas::new(store.clone()).with_walk_limits(
            usize::try_from(config.cache.max_tree_directories).unwrap_or(usize::MAX),
            usize::try_from(config.cache.max_walked_directories).unwrap_or(usize::MAX),
            config.execution.max_directory_bytes,
        );
        let mut ac = ActionCache::new(cas.clone(), store);
        // The HTTP cache API's action cache: the same entries, without the upstream hook.
        let (http_cas, http_ac) = (cas.clone(), ac.clone());
        let mut limits = limits(config);
        let max_message = limits.max_message_bytes;
        // With an upstream, every action result stored through the api or the scheduler is
        // passed on (the tier itself stores what it fetches through the plain `ac`).
        let up = upstream(config, &cas, &ac, &metrics)?;
        // The scheduler's results are forwarded by a hook that never fails them for the
        // upstream's sake (`sync`: queued instead); see `Upstream::for_local_execution`.
        let mut exec_ac = ac.clone();
        if let Some(up) = &up {
            ac = ac.with_update_hook(Arc::new(crate::upstream::ForwardHook(up.clone())));
            exec_ac = exec_ac.with_update_hook(Arc::new(crate::upstream::ForwardHook(
                up.for_local_execution(),
            )));
        }
        // `local-first` with no local execution has no local bot to prefer: all forwarded.
        let forward_exec = up.clone().filter(|u| {
            u.executes_upstream() || (u.executes_local_first() && !config.execution.enabled)
        });
        limits.exec_enabled |= forward_exec.is_some();
        let mut services = CacheServices::new(cas.clone(), ac.clone(), limits);
        if let Some(up) = up {
            services = services.with_upstream(up);
        }
        metrics.add_gauge_source(Box::new(services.upload_gauges()));
        metrics.add_gauge_source(Box::new(services.tree_gauges()));
        let mut routes = tonic::service::RoutesBuilder::default();
        services.add_to(&mut routes);
        if config.remote_asset.enabled {
            let assets = remote_assets(config, &cas)?;
            export_asset_metrics(&assets, &metrics);
            crate::api::add_asset_services(&assets, max_message, &mut routes);
        }
        let mut bots = None;
        if config.execution.enabled {
            let scheduler = Scheduler::new(cas, exec_ac, scheduler_config(config));
            scheduler.spawn_reaper();
            export_exec_stats(&scheduler, &metrics);
            if forward_exec.is_none() {
                crate::api::add_exec_services_with(
                    &scheduler,
                    services.upstream(),
                    max_message,
                    &mut routes,
                );
            }
            let mut bot_routes = tonic::service::RoutesBuilder::default();
            // The worker's uploads are writes of local execution too.
            match services
                .upstream()
                .map(crate::upstream::Upstream::for_local_execution)
            {
                Some(up) => services.clone().with_upstream(up).add_to(&mut bot_routes),
                None => services.add_to(&mut bot_routes),
            }
            crate::bots::add_to(&scheduler, &mut bot_routes);
            let bot_routes = crate::api::auth::protect(bot_routes.routes(), &auth, true);
            let bot_routes = instrument(bot_routes, &metrics);
            bots = Some((bot_routes, bind_bots(config, tls.as_ref()).await?));
        }
        if let Some(up) = &forward_exec {
            crate::api::add_forwarding_execution(up, max_message, &mut routes);
        }
        let listeners = bind(config, tls.as_ref()).await?;
        let mut limits = vec![("grpc", listeners.connections.clone())];
        if let Some((_, l)) = &bots {
            limits.push(("bots", l.connections.clone()));
        }
        metrics.add_gauge_source(Box::new(move || connection_gauges(&limits)));
        metrics.add_gauge_source(Box::new(server::authority::gauges));
        if tls.is_some() {
            metrics.add_gauge_source(Box::new(server::tls::gauges));
        }
        warn_if_open(&auth, &listeners, bots.as_ref().map(|(_, l)| l), &metrics);
        let metrics_listener = match config.server.metrics_listen.as_str() {
            "" => None,
            addr => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(io(format!("cannot listen on {addr} for metrics")))?,
            ),
        };
        let http_cache = http_cache(config, &http_cas, http_ac, &auth, &metrics).await?;
        Ok(Self {
            _lock: lock,
            http_cache,
            routes: instrument(
                crate::api::auth::protect(routes.routes(), &auth, false),
                &metrics,
            ),
            listeners,
            metrics,
            metrics_listener,
            bots,
            auth,
            sample_interval: std::time::Duration::from_millis(
                config.server.status_sample_interval_ms,
            ),
            tls,
        })
    }

    /// The TLS settings of this server, if it has TLS listeners (reloaded on SIGHUP).
    pub fn tls(&self) -> Option<Arc<server::tls::TlsState>> {
        self.tls.clone()
    }

    /// The bound TLS addresses (useful with port 0).
    pub fn tls_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listeners
            .tls
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The address of the metrics endpoint, if enabled.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The address of the HTTP cache API, if enabled.
    pub fn http_cache_addr(&self) -> Option<std::net::SocketAddr> {
        self.http_cache
            .as_ref()
            .and_then(|(_, l)| l.local_addr().ok())
    }

    /// The rights table of this server (reloaded on SIGHUP by `kiln serve`).
    pub fn auth(&self) -> Arc<Authorizer> {
        self.auth.clone()
    }

    /// The metrics registry of this server.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The bound TCP addresses (useful with port 0).
    pub fn tcp_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listeners
            .tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SetupError> {
        let stop = server::Shutdown::new(shutdown);
        if self.auth.enabled() {
            tokio::spawn(reload_on_change(self.auth.clone(), stop.signal()));
        }
        tokio::spawn(
            self.metrics
                .clone()
                .run_sampler(self.sample_interval, stop.signal()),
        );
        if let Some(l) = self.metrics_listener {
            tokio::spawn(crate::metrics::serve_http(
                l,
                self.metrics.clone(),
                stop.signal(),
            ));
        }
        if let Some((api, l)) = self.http_cache {
            tokio::spawn(api.serve(l, stop.signal()));
        }
        let grpc = server::run(self.routes, self.listeners, stop.signal());
        match self.bots {
            None => grpc.await?,
            Some((routes, listeners)) => {
                let (a, b) = tokio::join!(grpc, server::run(routes, listeners, stop.signal()));
                a?;
                b?;
            }
        }
        Ok(())
    }
}

/// Runs `kiln serve` until `shutdown` resolves, printing `ready` to stdout once it accepts calls.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SetupError> {
    match server::raise_fd_limit() {
        Ok(n) => tracing::info!(open_files = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let prepared = Prepared::new(&config).await?;
    reload_on_sighup(prepared.auth(), prepared.tls())?;
    tracing::info!(data_dir = %config.server.data_dir.display(), "kiln ready");
    {
        // One line per listener, then `ready`: scripts and tests read these to learn the ports.
        let mut out = std::io::stdout().lock();
        for addr in prepared.tcp_addrs() {
            let _ = writeln!(out, "listening grpc://{addr}");
        }
        for addr in prepared.tls_addrs() {
            let _ = writeln!(out, "listening grpcs://{addr}");
        }
        if let Some(path) = unix_socket_path(&config) {
            let _ = writeln!(out, "listening unix:{}", path.display());
        }
        if let Some(addr) = prepared.metrics_addr() {
            let _ = writeln!(out, "listening http://{addr}/metrics");
        }
        if let Some(addr) = prepared.http_cache_addr() {
            let _ = writeln!(out, "listening http-cache http://{addr}");
        }
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    prepared.run(shutdown).await?;
    tracing::info!("kiln stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_max_blob_size_fits_a_small_derived_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        // A capacity remembered from a first start on a disk with ~10 GB free.
        std::fs::write(dir.path().join("capacity"), "8589934592\n").unwrap();
        let e = engine_config(&config).expect("starts with a lowered max blob size");
        assert_eq!(e.capacity_bytes, 8 << 30);
        assert_eq!(e.max_blob_size, 2 << 30);
        // An explicit value is the operator's choice: refused, not silently changed.
        config.storage.max_blob_size_bytes = 3 << 30;
        assert!(engine_config(&config).is_err());
        // A large enough capacity keeps the default.
        config.storage.max_blob_size_bytes = 4 << 30;
        config.storage.capacity_bytes = 64 << 30;
        assert_eq!(engine_config(&config).unwrap().max_blob_size, 4 << 30);
    }
}
