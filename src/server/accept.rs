//! The accept loop: bounded connections, and no busy loop when the process runs out of file
//! descriptors.
//!
//! tonic's own listener streams retry a failed `accept` at once, so at the fd limit a flood of
//! connections spins the loop at full CPU while no new client gets in. Here:
//! - a connection is accepted only with a permit of [`ConnectionLimit`]; at the limit the loop
//!   waits for one to close and new clients queue in the kernel's backlog;
//! - EMFILE/ENFILE/ENOBUFS/ENOMEM back off (5 ms doubling to 1 s) and are logged once per
//!   episode, not per attempt;
//! - errors that concern one connection only (ECONNABORTED and the like) are skipped.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// Default cap on open connections per server (client listeners, or bots listeners).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// A cap on the connections one server holds open, shared by its listeners.
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    refused_fd: Arc<AtomicU64>,
}

impl ConnectionLimit {
    /// At most `max` connections open at once.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            refused_fd: Arc::default(),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Accepts that failed for lack of file descriptors or memory (each backed off).
    pub fn fd_exhausted(&self) -> u64 {
        self.refused_fd.load(Ordering::Relaxed)
    }
}

impl Default for ConnectionLimit {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONNECTIONS)
    }
}

/// Something `accept` can be called on.
pub trait Accept: Send + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;
    /// Accepts one connection.
    fn accept(&self) -> impl std::future::Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        let (s, _) = TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// Unix connections accept any `:authority` (see [`super::authority`]); TCP ones keep h2's rule.
impl Accept for UnixListener {
    type Io = super::authority::AnyAuthority<tokio::net::UnixStream>;
    async fn accept(&self) -> io::Result<Self::Io> {
        Ok(super::authority::AnyAuthority::new(
            UnixListener::accept(self).await?.0,
        ))
    }
}

/// Whether an accept error means the process is out of descriptors or memory (back off)
/// rather than one connection failing (skip it).
fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The connections of `listener`, each holding a permit of `limit`. Never yields an error.
pub fn incoming<L: Accept>(
    listener: L,
    limit: ConnectionLimit,
) -> impl futures::Stream<Item = io::Result<Limited<L::Io>>> + Send + 'static {
    async_stream::stream! {
        let mut backoff = Duration::ZERO;
        loop {
            match listener.accept().await {
                Ok(io) => {
                    if !backoff.is_zero() {
                        tracing::info!("accepting connections again");
                        backoff = Duration::ZERO;
                    }
                    // At the cap this waits, holding the one new socket, until a connection
                    // closes; the listeners sharing the cap then take turns fairly.
                    let Ok(permit) = limit.permits.clone().acquire_owned().await else {
                        break;
                    };
                    yield Ok(Limited { io, _permit: permit });
                }
                Err(e) if is_exhaustion(&e) => {
                    limit.refused_fd.fetch_add(1, Ordering::Relaxed);
                    if backoff.is_zero() {
                        tracing::warn!(
                            error = %e,
                            open = limit.open(),
                            "cannot accept connections: out of file descriptors or memory; \
                             backing off (raise `ulimit -n` or lower server.max_connections)"
                        );
                        backoff = Duration::from_millis(5);
                    } else {
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed for one connection");
                }
            }
        }
    }
}

/// A connection holding its place under the [`ConnectionLimit`] until it is dropped.
pub struct Limited<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
}

impl<T: Connected> Connected for Limited<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

forward_io!(read Limited<T>);

forward_io!(write Limited<T>);

/// Raises the soft open-files limit to the hard limit, so the fd limit is what the operator
/// set rather than a shell default of 1024. Returns the limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    // An unlimited hard limit cannot be the soft one: Linux caps it at fs.nr_open.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = hard.min(nr_open);
    if soft < target {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(io::Error::from)?;
        return Ok(target);
    }
    Ok(soft)
}
