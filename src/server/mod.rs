//! Serving a route table on already-bound listeners until a shutdown future resolves.
//!
//! Taking bound listeners (mini-redis style) lets tests bind port 0 and talk to the real thing.

/// Implements `AsyncWrite` (and with `read`, `AsyncRead`) for a connection wrapper by handing
/// every call to its `io` field: the accept loop's permit holder, the Unix-socket authority
/// adapter (which reads on its own) and the TLS connection are each a stream plus bookkeeping.
macro_rules! forward_io {
    (write $name:ident $(<$t:ident>)?) => {
        impl$(<$t: tokio::io::AsyncWrite + Unpin>)? tokio::io::AsyncWrite for $name$(<$t>)? {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
            }
        }
    };
    (read $name:ident $(<$t:ident>)?) => {
        impl$(<$t: tokio::io::AsyncRead + Unpin>)? tokio::io::AsyncRead for $name$(<$t>)? {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
            }
        }
    };
}

mod accept;
pub mod authority;
pub mod tls;

pub use accept::{ConnectionLimit, incoming, raise_fd_limit};

use std::future::Future;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tonic::service::Routes;
use tonic::transport::Server;

/// The sockets one server answers on.
#[derive(Default)]
pub struct Listeners {
    /// TCP listeners (gRPC over HTTP/2 cleartext).
    pub tcp: Vec<TcpListener>,
    /// Unix-socket listeners (co-located clients and workers).
    pub unix: Vec<UnixListener>,
    /// TCP listeners serving gRPC over TLS with [`Listeners::tls_state`].
    pub tls: Vec<TcpListener>,
    /// The TLS settings of the `tls` listeners (required when there are any).
    pub tls_state: Option<std::sync::Arc<tls::TlsState>>,
    /// The cap on connections open at once across these listeners.
    pub connections: ConnectionLimit,
}

/// Most concurrent calls on one HTTP/2 connection: each may make tonic buffer a message of up
/// to the message limit before any handler sees it, so this (with `server.max_connections`)
/// bounds that memory. Clients open more connections when they need more (Bazel does).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// HTTP/2 flow-control window of each stream: how much a sender may have in flight on one
/// call before the receiver acknowledges. The h2 default (64 KiB) caps one stream at one
/// window per round trip, far below loopback or LAN speeds.
pub const STREAM_WINDOW_BYTES: u32 = 4 << 20;
/// HTTP/2 flow-control window of a whole connection (several streams' windows).
pub const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

fn builder() -> Server {
    Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// One shutdown future shared by several servers: every [`Shutdown::signal`] resolves when the
/// future given to [`Shutdown::new`] does.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Watches `shutdown` on a task of its own.
    pub fn new(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// A future that resolves once shutdown was asked for.
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// Serves `routes` on every listener until `shutdown` resolves, then stops accepting and lets
/// in-flight calls finish.
pub async fn run(
    routes: Routes,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let stop = Shutdown::new(shutdown);
    let mut tasks = tokio::task::JoinSet::new();
    let limit = listeners.connections;
    for l in listeners.tcp {
        let router = builder().add_routes(routes.clone());
        let incoming = accept::incoming(l, limit.clone());
        tasks.spawn(router.serve_with_incoming_shutdown(incoming, stop.signal()));
    }
    for l in listeners.unix {
        let router = builder().add_routes(routes.clone());
        let incoming = accept::incoming(l, limit.clone());
        tasks.spawn(router.serve_with_incoming_shutdown(incoming, stop.signal()));
    }
    for l in listeners.tls {
        let state = listeners
            .tls_state
            .clone()
            .expect("TLS listeners come with their TLS settings");
        let router = builder().add_routes(routes.clone());
        let incoming = tls::incoming(accept::incoming(l, limit.clone()), state);
        tasks.spawn(router.serve_with_incoming_shutdown(incoming, stop.signal()));
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("server task panicked")?;
    }
    Ok(())
}
