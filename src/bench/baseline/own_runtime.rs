//! Runs a baseline server on its own tokio runtime in its own thread, as a separate server
//! process would be: sharing the client's runtime would give client and server together
//! only that runtime's threads, and understate the limit next to two-process workload runs.

use crate::bench::BenchError;
use std::future::Future;
use std::net::SocketAddr;
use tokio::sync::oneshot;

/// A server running on its own runtime; stops (and joins its thread) on [`ServerThread::stop`].
pub struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts `serve` on a fresh 2-thread runtime. `serve` binds its listeners (on that runtime),
/// reports the address through `ready`, then serves until `stopped` resolves.
pub async fn start<S, F>(serve: S) -> Result<(SocketAddr, ServerThread), BenchError>
where
    S: FnOnce(oneshot::Receiver<()>, std::sync::mpsc::Sender<Result<SocketAddr, String>>) -> F
        + Send
        + 'static,
    F: Future<Output = ()>,
{
    let (ready, addr) = std::sync::mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("baseline-server".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(serve(stopped, ready)),
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                }
            }
        })
        .map_err(|e| BenchError::Local(format!("cannot start server thread: {e}")))?;
    let addr = tokio::task::spawn_blocking(move || addr.recv())
        .await
        .map_err(|e| BenchError::Local(e.to_string()))?
        .map_err(|_| BenchError::Local("server thread ended before it was ready".into()))?
        .map_err(BenchError::Local)?;
    Ok((
        addr,
        ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        },
    ))
}

impl ServerThread {
    /// Stops the server and waits for its thread.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
