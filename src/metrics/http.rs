//! The metrics endpoint: `GET /metrics` (Prometheus text), `GET /` (the status page, HTML),
//! `GET /status` (the same figures as plain text) and `GET /status.json`, over HTTP/1.1 with
//! hyper. Separate from the gRPC port so scrapers need no gRPC. Nothing is cached by browsers
//! or proxies (`cache-control: no-store`): every answer is the state now.

use super::Metrics;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (&hyper::Method::GET, "/") => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            metrics.status_page(),
        ),
        (&hyper::Method::GET, "/status") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            metrics.status(),
        ),
        (&hyper::Method::GET, "/status.json") => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&metrics.summary()).expect("a summary serializes") + "\n",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /, /metrics, /status or /status.json\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Serves the endpoint on `listener` until `shutdown` resolves.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // The same accept loop as gRPC's: bounded, and backing off at the fd limit.
    let conns = crate::server::incoming(listener, crate::server::ConnectionLimit::new(256));
    tokio::pin!(conns);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = conns.next() => match accepted {
                Some(Ok(s)) => s,
                _ => return,
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = respond(&metrics, &req);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}
