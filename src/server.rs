//! Serving a route table on already-bound listeners until a shutdown future resolves.
//!
//! Taking bound listeners (mini-redis style) lets tests bind port 0 and talk to the real thing.

use std::future::Future;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::Routes;
use tonic::transport::Server;

/// The sockets one server answers on.
#[derive(Default)]
pub struct Listeners {
    /// TCP listeners (gRPC over HTTP/2 cleartext).
    pub tcp: Vec<TcpListener>,
    /// Unix-socket listeners (co-located clients and workers).
    pub unix: Vec<UnixListener>,
}

fn builder() -> Server {
    Server::builder()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// Serves `routes` on every listener until `shutdown` resolves, then stops accepting and lets
/// in-flight calls finish.
pub async fn run(
    routes: Routes,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    for l in listeners.tcp {
        let incoming = TcpListenerStream::new(l).map(|s| {
            s.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        });
        let router = builder().add_routes(routes.clone());
        tasks.spawn(router.serve_with_incoming_shutdown(incoming, stopped()));
    }
    for l in listeners.unix {
        let router = builder().add_routes(routes.clone());
        tasks.spawn(router.serve_with_incoming_shutdown(UnixListenerStream::new(l), stopped()));
    }
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    while let Some(done) = tasks.join_next().await {
        done.expect("server task panicked")?;
    }
    Ok(())
}
