//! What `/`, `/status`, `/status.json` and `kiln status` show: one [`Summary`] built from a
//! fresh [`Snapshot`] of the registry (plus the history ring for rates), rendered three ways.
//! Every figure names the `/metrics` series it comes from (`metric`), so a reader (and the
//! browser test) can check it against `/metrics`.

use super::history::History;
use super::snapshot::{Snapshot, buckets, quantile};

/// How a figure's value reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A plain number.
    Count,
    /// Bytes (shown as KiB/MiB/GiB).
    Bytes,
    /// A fraction 0..1 (shown as a percentage).
    Ratio,
    /// Seconds (shown as ms or s).
    Seconds,
    /// Per second.
    PerSecond,
    /// Bytes per second.
    BytesPerSecond,
}

/// One number on the page.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figure {
    /// The `/metrics` series it is (exactly as exposed), or "" for a derived figure.
    pub metric: String,
    /// What a person reads next to it.
    pub label: String,
    /// The value.
    pub value: f64,
    /// How to show it.
    pub unit: Unit,
}

/// One RPC method's traffic and latency.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RpcRow {
    /// `Service/Method`.
    pub method: String,
    /// Finished requests, every code.
    pub requests: f64,
    /// Of them, not OK.
    pub errors: f64,
    /// p50, p90, p99 in seconds (bucket interpolation), `None` before the first request.
    pub quantiles: [Option<f64>; 3],
}

/// A slow action the scheduler finished lately (digest as the client sent it: hostile text).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SlowAction {
    /// `hash/size` of the Action.
    pub digest: String,
    /// How long it ran, in seconds.
    pub seconds: f64,
    /// The command's exit code, `None` when it produced no result.
    pub exit_code: Option<i32>,
    /// Seconds since it finished.
    pub ago_seconds: f64,
}

/// Quantiles the latency table shows.
pub const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// Everything the status views show.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// kiln's version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Samples in the history ring.
    pub samples: usize,
    /// Capacity, use, blob count, evictions.
    pub storage: Vec<Figure>,
    /// Hits, misses, bytes.
    pub cache: Vec<Figure>,
    /// Rates between the last two samples (empty before there are two).
    pub rates: Vec<Figure>,
    /// Bots, queue, running actions.
    pub execution: Vec<Figure>,
    /// Auth warnings and refusals.
    pub auth: Vec<Figure>,
    /// Requests that did not end OK, by method and code.
    pub errors: Vec<Figure>,
    /// Per-method traffic and latency.
    pub rpcs: Vec<RpcRow>,
    /// The slowest actions finished lately.
    pub slow_actions: Vec<SlowAction>,
    /// Every other gauge (connections, uploads, index state).
    pub other: Vec<Figure>,
}

/// The figure of series `metric`, `None` when `/metrics` does not expose it (e.g. the
/// execution gauges of a cache-only server).
fn fig(snap: &Snapshot, metric: &str, label: &str, unit: Unit) -> Option<Figure> {
    Some(Figure {
        metric: metric.into(),
        label: label.into(),
        value: snap.find(metric)?,
        unit,
    })
}

fn derived(label: &str, value: f64, unit: Unit) -> Figure {
    Figure {
        metric: String::new(),
        label: label.into(),
        value,
        unit,
    }
}

/// Gauges placed in a section of their own (the rest go to `other`).
const PLACED: [&str; 17] = [
    "kiln_storage_compression_logical_bytes",
    "kiln_storage_compression_stored_bytes",
    "kiln_storage_index_slots",
    "kiln_storage_index_max_slots",
    "kiln_storage_index_load_permille",
    "kiln_storage_index_growths",
    "kiln_storage_index_displaced",
    "kiln_storage_capacity_bytes",
    "kiln_storage_bytes_used",
    "kiln_storage_blobs",
    "kiln_storage_segments",
    "kiln_storage_evictions",
    "kiln_storage_copy_forwards",
    "kiln_storage_corruptions",
    "kiln_exec_bots_connected",
    "kiln_exec_queued_actions",
    "kiln_exec_running_actions",
];

impl Summary {
    /// Builds the summary from a fresh snapshot, the history ring and the slow-action list.
    pub fn build(snap: &Snapshot, history: &History, slow_actions: Vec<SlowAction>) -> Self {
        use Unit::{Bytes, BytesPerSecond, Count, PerSecond, Ratio, Seconds};
        let mut storage: Vec<Figure> = [
            fig(snap, "kiln_storage_capacity_bytes", "capacity", Bytes),
            fig(snap, "kiln_storage_bytes_used", "used", Bytes),
            fig(snap, "kiln_storage_blobs", "blobs", Count),
            fig(snap, "kiln_storage_segments", "segments", Count),
            fig(
                snap,
                "kiln_storage_evictions",
                "evictions (segments)",
                Count,
            ),
            fig(snap, "kiln_storage_copy_forwards", "copy-forwards", Count),
            fig(snap, "kiln_storage_corruptions", "corruptions", Count),
            fig(snap, "kiln_storage_index_slots", "index slots", Count),
            fig(
                snap,
                "kiln_storage_index_max_slots",
                "index slots at most",
                Count,
            ),
            fig(
                snap,
                "kiln_storage_index_load_permille",
                "index load (per mille, sampled)",
                Count,
            ),
            fig(snap, "kiln_storage_index_growths", "index growths", Count),
            fig(
                snap,
                "kiln_storage_index_displaced",
                "index entries pushed out (lost)",
                Count,
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        // Compression at rest: shown once something went through it.
        let logical = snap.get("kiln_storage_compression_logical_bytes");
        if logical > 0.0 {
            let stored = snap.get("kiln_storage_compression_stored_bytes");
            storage.extend([
                derived("uploaded (logical, compression on)", logical, Bytes),
                derived("stored for them on disk", stored, Bytes),
                derived("stored / logical", stored / logical, Ratio),
            ]);
        }
        let ac = |r| format!("kiln_store_gets_total{{space=\"ac\",result=\"{r}\"}}");
        let cas = |r| format!("kiln_store_gets_total{{space=\"cas\",result=\"{r}\"}}");
        let exists = |r| format!("kiln_store_contains_total{{space=\"cas\",result=\"{r}\"}}");
        let (ac_hits, ac_misses) = (snap.get(&ac("hit")), snap.get(&ac("miss")));
        let mut cache: Vec<Figure> = [
            fig(snap, &ac("hit"), "action cache hits", Count),
            fig(snap, &ac("miss"), "action cache misses", Count),
        ]
        .into_iter()
        .flatten()
        .collect();
        if ac_hits + ac_misses > 0.0 {
            cache.push(derived(
                "action cache hit ratio",
                ac_hits / (ac_hits + ac_misses),
                Ratio,
            ));
        }
        cache.extend(
            [
                fig(snap, &cas("hit"), "CAS reads that hit", Count),
                fig(snap, &cas("miss"), "CAS reads that missed", Count),
                fig(snap, &exists("hit"), "CAS existence checks found", Count),
                fig(snap, &exists("miss"), "CAS existence checks missing", Count),
                fig(snap, "kiln_store_writes_total", "blobs written", Count),
                fig(
                    snap,
                    "kiln_store_written_bytes_total",
                    "bytes written",
                    Bytes,
                ),
                fig(snap, "kiln_store_read_bytes_total", "bytes read", Bytes),
                fig(snap, "kiln_store_write_errors_total", "write errors", Count),
            ]
            .into_iter()
            .flatten(),
        );
        // The upstream tier's figures, present only when `[upstream]` is configured.
        let up = |kind: &str, r: &str| {
            format!("kiln_upstream_reads_total{{kind=\"{kind}\",result=\"{r}\"}}")
        };
        cache.extend(
            [
                fig(snap, &up("cas", "hit"), "upstream: blobs fetched", Count),
                fig(
                    snap,
                    &up("cas", "miss"),
                    "upstream: blobs it lacked too",
                    Count,
                ),
                fig(
                    snap,
                    &up("cas", "error"),
                    "upstream: blob fetches failed",
                    Count,
                ),
                fig(
                    snap,
                    &up("ac", "hit"),
                    "upstream: action results fetched",
                    Count,
                ),
                fig(
                    snap,
                    "kiln_upstream_fetched_bytes_total",
                    "upstream: bytes fetched",
                    Bytes,
                ),
                fig(
                    snap,
                    "kiln_upstream_forwarded_bytes_total",
                    "upstream: bytes forwarded",
                    Bytes,
                ),
                fig(
                    snap,
                    "kiln_upstream_queue_entries",
                    "upstream: writes queued",
                    Count,
                ),
                fig(
                    snap,
                    "kiln_upstream_queue_oldest_age_seconds",
                    "upstream: oldest queued write",
                    Seconds,
                ),
                fig(
                    snap,
                    "kiln_upstream_breaker_state",
                    "upstream: breaker (0 closed, 1 open, 2 probing)",
                    Count,
                ),
                fig(
                    snap,
                    "kiln_upstream_executions_total{ran=\"local\"}",
                    "upstream: local-first Executes run here",
                    Count,
                ),
                fig(
                    snap,
                    "kiln_upstream_executions_total{ran=\"upstream\"}",
                    "upstream: local-first Executes forwarded",
                    Count,
                ),
            ]
            .into_iter()
            .flatten(),
        );
        // The HTTP cache API's figures, present only when `[http_cache]` listens (the request
        // series once such a request was answered).
        let http = |m: &str, k: &str, st: u16| {
            format!("kiln_http_cache_requests_total{{method=\"{m}\",kind=\"{k}\",status=\"{st}\"}}")
        };
        cache.extend(
            [
                fig(
                    snap,
                    &http("GET", "ac", 200),
                    "HTTP cache: /ac/ hits",
                    Count,
                ),
                fig(
                    snap,
                    &http("GET", "ac", 404),
                    "HTTP cache: /ac/ misses",
                    Count,
                ),
                fig(
                    snap,
                    &http("PUT", "cas", 200),
                    "HTTP cache: blobs uploaded",
                    Count,
                ),
                fig(
                    snap,
                    "kiln_http_cache_bytes_received_total",
                    "HTTP cache: bytes received",
                    Bytes,
                ),
                fig(
                    snap,
                    "kiln_http_cache_bytes_sent_total",
                    "HTTP cache: bytes sent",
                    Bytes,
                ),
            ]
            .into_iter()
            .flatten(),
        );
        let rates = [
            (
                "requests/s",
                PerSecond,
                history.current_rate(|s| s.requests),
            ),
            (
                "read bytes/s",
                BytesPerSecond,
                history.current_rate(|s| s.bytes_read),
            ),
            (
                "written bytes/s",
                BytesPerSecond,
                history.current_rate(|s| s.bytes_written),
            ),
        ]
        .into_iter()
        .filter_map(|(label, unit, v)| v.map(|v| derived(label, v, unit)))
        .collect();
        let execution = [
            fig(snap, "kiln_exec_bots_connected", "bots connected", Count),
            fig(snap, "kiln_exec_queued_actions", "queued actions", Count),
            fig(snap, "kiln_exec_running_actions", "running actions", Count),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut auth = Vec::new();
        if let Some(v) = snap.find("kiln_auth_open_network_listeners") {
            // The exact name, so scripts grepping `/status` for it keep working.
            let label = "auth_open_network_listeners";
            auth.push(Figure {
                metric: "kiln_auth_open_network_listeners".into(),
                label: label.into(),
                value: v,
                unit: Count,
            });
        }
        for s in snap.family("kiln_auth_denied_total") {
            auth.push(Figure {
                metric: s.key.into(),
                label: format!("denied requests of {}", s.label("principal")),
                value: s.value,
                unit: Count,
            });
        }
        let mut errors = Vec::new();
        let mut rpcs: Vec<RpcRow> = Vec::new();
        for s in snap.family("kiln_grpc_requests_total") {
            let method = s.label("method").to_string();
            let failed = s.label("code") != "OK";
            if failed {
                errors.push(Figure {
                    metric: s.key.into(),
                    label: format!("{method} {}", s.label("code")),
                    value: s.value,
                    unit: Count,
                });
            }
            if !rpcs.iter().any(|r| r.method == method) {
                rpcs.push(RpcRow {
                    method: method.clone(),
                    requests: 0.0,
                    errors: 0.0,
                    quantiles: [None; 3],
                });
            }
            let row = rpcs
                .iter_mut()
                .find(|r| r.method == method)
                .expect("pushed above");
            row.requests += s.value;
            if failed {
                row.errors += s.value;
            }
        }
        for row in &mut rpcs {
            let b = buckets(snap, "kiln_grpc_request_duration_seconds", |s| {
                s.label("method") == row.method
            });
            row.quantiles = QUANTILES.map(|q| quantile(q, &b));
        }
        let other = snap
            .unlabelled()
            .filter(|(key, _)| {
                !key.ends_with("_total")
                    && !PLACED.contains(key)
                    && *key != "kiln_auth_open_network_listeners"
                    && *key != "kiln_uptime_seconds"
            })
            .map(|(key, value)| Figure {
                metric: key.into(),
                label: key.trim_start_matches("kiln_").into(),
                value,
                unit: if key.ends_with("_bytes") {
                    Bytes
                } else {
                    Count
                },
            })
            .collect();
        Self {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: snap.get("kiln_uptime_seconds"),
            samples: history.len(),
            storage,
            cache,
            rates,
            execution,
            auth,
            errors,
            rpcs,
            slow_actions,
            other,
        }
    }
}
