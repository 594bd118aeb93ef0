//! Per-RPC request counts, gRPC status codes and latencies: one tower layer in front of a gRPC
//! route table (outside the auth layer, so refused requests are counted with their code).
//!
//! The method label comes from a fixed list: the path is client input, and a label per path
//! would let a client grow the registry without bound. Unknown paths count as `other`.
//! The code is read from the response headers (a trailers-only answer, e.g. an auth refusal)
//! or from the trailers; a response body dropped before its trailers counts as `CANCELLED`.
//! Latency runs from the call to the end of the response (for streaming RPCs: the stream).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// Histogram buckets of RPC latency, in seconds: 100 µs .. 60 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    15.0, 60.0,
];

/// Every method kiln serves, as `Service/Method` (the label value).
const METHODS: [&str; 21] = [
    "Capabilities/GetCapabilities",
    "ContentAddressableStorage/FindMissingBlobs",
    "ContentAddressableStorage/BatchUpdateBlobs",
    "ContentAddressableStorage/BatchReadBlobs",
    "ContentAddressableStorage/GetTree",
    "ActionCache/GetActionResult",
    "ActionCache/UpdateActionResult",
    "Execution/Execute",
    "Execution/WaitExecution",
    "ByteStream/Read",
    "ByteStream/Write",
    "ByteStream/QueryWriteStatus",
    "Operations/GetOperation",
    "Operations/ListOperations",
    "Operations/WaitOperation",
    "Operations/CancelOperation",
    "Operations/DeleteOperation",
    "Bots/CreateBotSession",
    "Bots/UpdateBotSession",
    "Bots/PostBotEventTemp",
    "other",
];

/// gRPC status code names, by number.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The label of a request path: `Service/Method` of a known method, else `other`.
pub fn method_label(path: &str) -> &'static str {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.rsplit_once('/')) else {
        return "other";
    };
    let short = service.rsplit('.').next().unwrap_or(service);
    METHODS
        .iter()
        .find(|m| m.split_once('/') == Some((short, method)))
        .copied()
        .unwrap_or("other")
}

/// The name of a `grpc-status` header value (`UNKNOWN` for anything not a known code).
fn code_name(value: &[u8]) -> &'static str {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .and_then(|n| CODES.get(n).copied())
        .unwrap_or("UNKNOWN")
}

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `Service/Method`.
    pub method: &'static str,
    /// gRPC status code name.
    pub code: &'static str,
}

/// Label of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// `Service/Method`.
    pub method: &'static str,
}

/// Constructor of latency histograms (a plain `fn` so the family type can be named).
pub type HistogramCtor = fn() -> Histogram;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The RPC metrics; cheap to clone (shared atomics).
#[derive(Clone)]
pub struct GrpcMetrics {
    /// Finished requests by method and code (`kiln_grpc_requests_total`).
    pub requests: Family<RpcLabels, Counter>,
    /// Request latency by method (`kiln_grpc_request_duration_seconds`).
    pub latency: Family<MethodLabel, Histogram, HistogramCtor>,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl GrpcMetrics {
    fn record(&self, method: &'static str, code: &'static str, started: Instant) {
        self.requests
            .get_or_create(&RpcLabels { method, code })
            .inc();
        self.latency
            .get_or_create(&MethodLabel { method })
            .observe(started.elapsed().as_secs_f64());
    }
}

impl<S> tower::Layer<S> for GrpcMetrics {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.clone(),
        }
    }
}

/// Times and counts every request passed to the inner service.
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let mut pending = Some(Pending {
                metrics,
                method,
                started,
            });
            // A trailers-only answer carries its status in the headers.
            if let Some(code) = resp.headers().get("grpc-status") {
                let code = code_name(code.as_bytes());
                if let Some(p) = pending.take() {
                    p.metrics.record(p.method, code, p.started);
                }
            }
            Ok(resp.map(|inner| MeteredBody { inner, pending }))
        })
    }
}

/// What is still to be recorded when the response ends.
struct Pending {
    metrics: GrpcMetrics,
    method: &'static str,
    started: Instant,
}

/// A response body that records its request when the trailers pass (or it is dropped).
pub struct MeteredBody<B> {
    inner: B,
    pending: Option<Pending>,
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.metrics.record(p.method, "CANCELLED", p.started);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(p) = this.pending.take()
                {
                    let code = trailers
                        .get("grpc-status")
                        .map_or("UNKNOWN", |c| code_name(c.as_bytes()));
                    p.metrics.record(p.method, code, p.started);
                }
            }
            Poll::Ready(None) => {
                if let Some(p) = this.pending.take() {
                    p.metrics.record(p.method, "UNKNOWN", p.started);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_named() {
        assert_eq!(
            method_label("/build.bazel.remote.execution.v2.ActionCache/GetActionResult"),
            "ActionCache/GetActionResult"
        );
        assert_eq!(
            method_label("/google.bytestream.ByteStream/Write"),
            "ByteStream/Write"
        );
        assert_eq!(method_label("/x.Y/Evil<script>"), "other");
        assert_eq!(method_label("nonsense"), "other");
        assert_eq!(code_name(b"7"), "PERMISSION_DENIED");
        assert_eq!(code_name(b"99"), "UNKNOWN");
        assert_eq!(code_name(b"x"), "UNKNOWN");
    }
}
