//! Metrics of the HTTP cache API: requests by method, kind and status, bytes in and out, and
//! uploads refused for want of buffer memory. The labels come from fixed sets (the method is
//! `GET`/`HEAD`/`PUT`/`other`, the kind `ac`/`cas`/`other`, the status a number kiln chose),
//! never from client text, so a client cannot grow the registry.

use super::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Labels of one HTTP cache request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpCacheLabels {
    /// `GET`, `HEAD`, `PUT` or `other`.
    pub method: &'static str,
    /// `ac`, `cas` or `other` (a path that names neither).
    pub kind: &'static str,
    /// The HTTP status code sent.
    pub status: u16,
}

/// The HTTP cache API's counters (cheap clones of shared atomics).
#[derive(Clone, Default)]
pub struct HttpCacheMetrics {
    /// Requests by method, kind and status.
    pub requests: Family<HttpCacheLabels, Counter>,
    /// Body bytes received (as sent: compressed bodies count compressed).
    pub bytes_received: Counter,
    /// Body bytes sent.
    pub bytes_sent: Counter,
    /// Uploads refused with 503 because `http_cache.max_buffer_bytes` was spent.
    pub refused_busy: Counter,
}

impl HttpCacheMetrics {
    /// Fresh counters, registered in `metrics` under `kiln_http_cache_*`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(
            "http_cache_requests",
            "HTTP cache API requests by method, kind (ac/cas) and status",
            m.requests.clone(),
        );
        metrics.register(
            "http_cache_bytes_received",
            "Request body bytes received by the HTTP cache API",
            m.bytes_received.clone(),
        );
        metrics.register(
            "http_cache_bytes_sent",
            "Response body bytes sent by the HTTP cache API",
            m.bytes_sent.clone(),
        );
        metrics.register(
            "http_cache_refused_busy",
            "HTTP cache uploads refused because http_cache.max_buffer_bytes was spent",
            m.refused_busy.clone(),
        );
        m
    }

    /// Counts one finished request.
    pub fn request(&self, method: &'static str, kind: &'static str, status: u16) {
        self.requests
            .get_or_create(&HttpCacheLabels {
                method,
                kind,
                status,
            })
            .inc();
    }
}
