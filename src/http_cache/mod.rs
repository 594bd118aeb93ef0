//! The HTTP/1.1 cache API in bazel-remote's layout, for clients that speak HTTP rather than
//! gRPC: Bazel's `--remote_cache=http://...` and ccache's `remote_storage = http://...|
//! layout=bazel`. `GET`/`HEAD`/`PUT` of `[/<instance>]/ac/<sha256>` and `/cas/<sha256>`.
//!
//! It sits beside `api` (the gRPC services) over the same `cas` layer: the same CAS, the same
//! action cache, the same limits and the same auth rights, so a blob or result stored over one
//! protocol is served over the other. Every request is decided (path, method, rights) before
//! its body is read, so a refused upload costs no bytes; statuses are chosen in [`status`]
//! only. The server is hyper's HTTP/1.1 connection over kiln's bounded accept loop, as for
//! `/metrics`.

mod ac;
mod auth;
mod body;
mod cas;
mod encoding;
mod error;
pub mod path;
mod response;
mod status;

pub use error::HttpCacheError;

use crate::auth::Authorizer;
use crate::cas::{ActionCache, Cas};
use crate::metrics::HttpCacheMetrics;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use response::Body;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The limits and switches of the API (from `[http_cache]`, `[cache]` and `[storage]`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Longest wait for a client's headers or the next piece of its body.
    pub idle: Duration,
    /// Largest body held in memory when its size is not known ahead.
    pub max_buffered: u64,
    /// Largest `/ac/` body (`cache.max_message_bytes`, as for UpdateActionResult).
    pub max_ac_bytes: u64,
    /// Memory budget of all bodies in progress.
    pub max_buffer_bytes: u64,
    /// Whether `/ac/` keeps values that are not ActionResults.
    pub opaque_ac: bool,
    /// What one streamed upload may buffer (the store's part size).
    pub part_bytes: u64,
    /// Bytes per response body frame.
    pub read_chunk: usize,
    /// Most connections at once.
    pub max_connections: usize,
}

pub(crate) struct Inner {
    cas: Cas,
    ac: ActionCache,
    auth: Arc<Authorizer>,
    metrics: HttpCacheMetrics,
    settings: Settings,
    budget: body::Budget,
}

/// The HTTP cache service (cheap to clone).
#[derive(Clone)]
pub struct HttpCache {
    inner: Arc<Inner>,
}

impl HttpCache {
    /// The API over `cas` and `ac`, deciding rights with `auth`. `ac` should be one without
    /// an upstream hook: HTTP names actions without their size, and the HTTP API serves the
    /// local tier only.
    pub fn new(
        cas: Cas,
        ac: ActionCache,
        auth: Arc<Authorizer>,
        metrics: HttpCacheMetrics,
        settings: Settings,
    ) -> Self {
        let budget = body::Budget::new(settings.max_buffer_bytes);
        Self {
            inner: Arc::new(Inner {
                cas,
                ac,
                auth,
                metrics,
                settings,
                budget,
            }),
        }
    }

    /// Answers one request; never fails (errors become responses).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let method = match parts.method {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::PUT => "PUT",
            _ => "other",
        };
        let head = parts.method == Method::HEAD;
        let route = path::parse(parts.uri.path());
        let kind = route.as_ref().map_or("other", |r| r.kind.name());
        let result = match route {
            Err(e) => Err(e.into()),
            Ok(route) => {
                self.dispatch(&parts.method, &parts.headers, body, route)
                    .await
            }
        };
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                if status::is_server_error(&e) {
                    tracing::warn!(method, kind, error = %e, "HTTP cache request failed");
                } else {
                    tracing::debug!(method, kind, error = %e, "HTTP cache request refused");
                }
                response::error(&e, head)
            }
        };
        self.inner
            .metrics
            .request(method, kind, resp.status().as_u16());
        resp
    }

    async fn dispatch(
        &self,
        method: &Method,
        headers: &hyper::HeaderMap,
        body: Incoming,
        route: path::Route,
    ) -> Result<Response<Body>, HttpCacheError> {
        let write = match *method {
            Method::GET | Method::HEAD => false,
            Method::PUT => true,
            ref other => {
                return Err(HttpCacheError::Method(
                    other.as_str().chars().take(32).collect(),
                ));
            }
        };
        let no_blob_write = auth::check(&self.inner.auth, headers, write, route.kind)?;
        let head = *method == Method::HEAD;
        match (write, route.kind) {
            (false, path::Kind::Cas) => self.get_cas(headers, route.hash, head).await,
            (false, path::Kind::Ac) => self.get_ac(&route.instance, route.hash, head).await,
            (true, path::Kind::Cas) => self.put_cas(headers, body, route.hash).await,
            (true, path::Kind::Ac) => {
                self.put_ac(headers, body, &route.instance, route.hash, no_blob_write)
                    .await
            }
        }
    }

    /// Serves the API on `listener` until `shutdown` resolves; then stops accepting, and
    /// open connections finish the request in progress and close.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let limit = crate::server::ConnectionLimit::new(self.inner.settings.max_connections);
        let conns = crate::server::incoming(listener, limit);
        tokio::pin!(conns);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        loop {
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = conns.next() => match accepted {
                    Some(Ok(s)) => s,
                    _ => break,
                },
            };
            let this = self.clone();
            let mut stop = stop_rx.clone();
            let idle = self.inner.settings.idle;
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, std::convert::Infallible>(this.handle(req).await) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(idle);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "HTTP cache connection ended with an error");
                        }
                    }
                    () = async { drop(stop.wait_for(|s| *s).await) } => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        let _ = stop_tx.send(true);
    }
}
