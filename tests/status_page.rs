//! The status page in a real browser: a `kiln serve` child with a worker and some traffic
//! (uploads, reads, action-cache hits and misses, a refused request, actions that run), then
//! headless Chromium takes a screenshot and dumps the DOM. Every figure on the page must equal
//! its series in `/metrics`, every plot must have points, and `kiln status` must print the
//! same figures.
//!
//! Needs Chromium at /usr/bin/chromium (Debian: `apt-get install -y chromium`; `.ci/run`
//! installs it).
#![allow(clippy::float_cmp)] // figures must equal /metrics exactly

mod exec_support;

use exec_support::*;
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use kiln::proto::reapi::{ActionResult, GetActionResultRequest, UpdateActionResultRequest};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The series of a `/metrics` exposition: `name{labels}` -> value (parsed here, independently
/// of kiln's own parser).
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let v = if v == "+Inf" {
                f64::INFINITY
            } else {
                v.parse().ok()?
            };
            Some((k.to_string(), v))
        })
        .collect()
}

/// One start tag of the DOM dump: name and attributes (entities decoded).
struct Tag {
    name: String,
    attrs: HashMap<String, String>,
}

fn decode(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Every start tag of `html`, in document order (quoted attribute values may hold `>`).
fn tags(html: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    let bytes = html.as_bytes();
    let mut pos = 0;
    while let Some(start) = html[pos..].find('<').map(|p| p + pos) {
        let mut end = start + 1;
        let mut quote = None;
        while end < bytes.len() {
            match (bytes[end], quote) {
                (b'"' | b'\'', None) => quote = Some(bytes[end]),
                (ch, Some(open)) if ch == open => quote = None,
                (b'>', None) => break,
                _ => {}
            }
            end += 1;
        }
        let inner = &html[start + 1..end.min(html.len())];
        pos = end + 1;
        if inner.starts_with('/') || inner.starts_with('!') {
            continue;
        }
        let name_end = inner
            .find(|c: char| c.is_whitespace())
            .unwrap_or(inner.len());
        let mut attrs = HashMap::new();
        let mut rest = inner[name_end..].trim_start();
        while !rest.is_empty() {
            let end = rest
                .find(|c: char| c == '=' || c.is_whitespace())
                .unwrap_or(rest.len());
            let name = rest[..end].to_string();
            rest = &rest[end..];
            if let Some(r) = rest.strip_prefix("=\"") {
                let close = r.find('"').unwrap_or(r.len());
                attrs.insert(name, decode(&r[..close]));
                rest = r.get(close + 1..).unwrap_or("");
            } else {
                attrs.insert(name, String::new());
            }
            rest = rest.trim_start_matches('/').trim_start();
        }
        out.push(Tag {
            name: inner[..name_end].to_string(),
            attrs,
        });
    }
    out
}

/// The `q` quantile of a cumulative histogram by linear interpolation inside a bucket (as
/// Prometheus' `histogram_quantile`), written here independently of kiln's.
fn expected_quantile(q: f64, metrics: &BTreeMap<String, f64>, method: &str) -> f64 {
    let mut buckets: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|(k, v)| {
            let labels = k
                .strip_prefix("kiln_grpc_request_duration_seconds_bucket{")?
                .strip_suffix('}')?;
            // Method names hold no quotes or commas.
            let mut le = None;
            let mut this = false;
            for pair in labels.split(',') {
                let (name, value) = pair.split_once('=')?;
                let value = value.trim_matches('"');
                match name {
                    "le" => le = Some(value),
                    "method" => this = value == method,
                    _ => {}
                }
            }
            let le = le.filter(|_| this)?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().expect("buckets").1;
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, cum) in buckets {
        if cum >= rank && cum > below {
            return if le.is_infinite() {
                lo
            } else {
                lo + (le - lo) * (rank - below) / (cum - below)
            };
        }
        if le.is_finite() {
            lo = le;
        }
        below = cum;
    }
    lo
}

/// Runs headless Chromium on `url`: the screenshot goes to `png`, the DOM dump is returned.
fn chromium(url: &str, png: &Path) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: install it with `apt-get install -y chromium` (Debian; .ci/run does)"
    );
    let out_path = png.with_extension("html");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2000",
            "--dump-dom",
            url,
        ])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start chromium");
    let mut status = None;
    if !wait::holds_within(Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    }) {
        let _ = child.kill();
        panic!("chromium did not finish within 30 s");
    }
    let status = status.expect("set when the wait held");
    assert!(status.success(), "chromium failed: {status}");
    std::fs::read_to_string(&out_path).unwrap()
}

/// Compares every figure of a DOM dump with `/metrics`; returns the mismatches. Series of the
/// Bots methods are skipped: the worker's long polls finish every half second and change them
/// between the two reads.
fn mismatches(dom: &[Tag], metrics: &BTreeMap<String, f64>) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut bad = Vec::new();
    let mut method = String::new();
    for t in dom {
        if t.name == "tr"
            && let Some(m) = t.attrs.get("data-method")
        {
            method.clone_from(m);
        }
        let (Some(metric), Some(value)) = (t.attrs.get("data-metric"), t.attrs.get("data-value"))
        else {
            continue;
        };
        let shown: f64 = value.parse().expect("data-value is a number");
        let (key, want) = if let Some(q) = t.attrs.get("data-quantile") {
            let q: f64 = q.parse().unwrap();
            let key = format!("{metric} {method} q{q}");
            let want = expected_quantile(q, metrics, &method);
            (key, want)
        } else if let Some(v) = metrics.get(metric) {
            (metric.clone(), *v)
        } else {
            bad.push(format!("{metric}: on the page, not in /metrics"));
            continue;
        };
        if key.contains("method=\"Bots/") || key.contains(" Bots/") {
            continue;
        }
        checked += 1;
        if (shown - want).abs() > 1e-9 * want.abs().max(1.0) {
            bad.push(format!("{key}: page {shown}, /metrics {want}"));
        }
    }
    (checked, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_a_browser_matches_metrics() {
    let auth_dir = tempfile::tempdir().unwrap();
    let tokens = auth_dir.path().join("tokens.toml");
    // Anonymous requests may read, upload and execute but not write the action cache; the
    // worker (this uid on the bots socket) may be a bot.
    std::fs::write(
        &tokens,
        format!(
            "[[unix_peer]]\nuid = {}\nrights = [\"bot\"]\n",
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
        ),
    )
    .unwrap();
    let config = format!(
        "{EXEC_CONFIG}[server]\nstatus_sample_interval_ms = 200\n[auth]\ntokens_file = {:?}\nanonymous = [\"read\", \"write\", \"execute\"]\n",
        tokens.display()
    );
    let server = Server::start_with(&config);
    let _worker = server.worker(1, &[]);
    let addr = server.metrics_addr();
    let get = |path: &'static str| {
        let addr = addr.clone();
        async move { kiln::admin::http_get(&addr, path).await.unwrap() }
    };
    // The page is served as HTML (an empty ring is covered by the unit tests).
    let early = get("/").await;
    assert!(early.contains("<!DOCTYPE html>"), "{early}");

    // Traffic: batch and streamed uploads, reads, action-cache misses and hits, a refused
    // action-cache write, a command that succeeds (cached) and one that exits 3.
    let c = server.client().await;
    for i in 0..20u32 {
        c.put(format!("blob {i}").as_bytes()).await;
    }
    let big = c.put_stream(&vec![7u8; 3 << 20]).await;
    assert_eq!(c.get(&big.to_proto()).await.len(), 3 << 20);
    let mut ac = ActionCacheClient::new(c.ch.clone());
    let ok = c.action(&sh("echo fine")).await;
    let miss = ac
        .get_action_result(GetActionResultRequest {
            action_digest: Some(ok.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(miss.code(), tonic::Code::NotFound);
    let (_, resp) = c.execute(&ok).await.unwrap();
    assert_eq!(resp.result.unwrap().exit_code, 0);
    for _ in 0..3 {
        ac.get_action_result(GetActionResultRequest {
            action_digest: Some(ok.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let failing = c.action(&sh("sleep 0.3; exit 3")).await;
    let (_, resp) = c.execute(&failing).await.unwrap();
    assert_eq!(resp.result.unwrap().exit_code, 3);
    let denied = ac
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(failing.to_proto()),
            action_result: Some(ActionResult::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated, "{denied:?}");

    // kiln_storage_blobs is recounted from the index at most every 10 s: wait for the count
    // that includes the uploads.
    wait::poll_until(
        "kiln_storage_blobs reaches 20",
        Duration::from_secs(30),
        || async {
            (parse_metrics(&get("/metrics").await)["kiln_storage_blobs"] >= 20.0).then_some(())
        },
    )
    .await;
    // Wait for several samples after the traffic, so every plot has points from it.
    let samples = |json: &str| -> usize {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["samples"].as_u64().unwrap() as usize
    };
    let after_traffic = samples(&get("/status.json").await);
    server
        .process()
        .poll_until("the ring grew", Duration::from_secs(20), || async {
            samples(&get("/status.json").await) >= after_traffic + 5
        })
        .await;

    // The browser's view against /metrics. kiln_storage_blobs is recounted at most every 10 s,
    // so the two reads are repeated (with a deadline) until they agree.
    let png = auth_dir.path().join("status.png");
    let url = format!("http://{addr}/");
    let (dom, metrics) = wait::poll_until_ok(Duration::from_secs(30), || async {
        let (url2, png2) = (url.clone(), png.clone());
        let dom = tokio::task::spawn_blocking(move || chromium(&url2, &png2))
            .await
            .unwrap();
        let metrics = parse_metrics(&get("/metrics").await);
        let parsed = tags(&dom);
        let (checked, bad) = mismatches(&parsed, &metrics);
        if bad.is_empty() {
            assert!(checked >= 40, "only {checked} figures carry a metric hook");
            Ok((parsed, metrics))
        } else {
            Err(format!("page figures differ from /metrics: {bad:#?}"))
        }
    })
    .await;
    let hooks: Vec<&str> = dom
        .iter()
        .filter_map(|t| t.attrs.get("data-metric").map(String::as_str))
        .collect();
    for must in [
        "kiln_storage_capacity_bytes",
        "kiln_storage_bytes_used",
        "kiln_storage_blobs",
        "kiln_storage_evictions",
        "kiln_storage_copy_forwards",
        "kiln_store_gets_total{space=\"ac\",result=\"hit\"}",
        "kiln_store_gets_total{space=\"ac\",result=\"miss\"}",
        "kiln_exec_bots_connected",
        "kiln_exec_queued_actions",
        "kiln_exec_running_actions",
        "kiln_grpc_requests_total{method=\"ActionCache/GetActionResult\",code=\"NOT_FOUND\"}",
        "kiln_grpc_requests_total{method=\"ActionCache/UpdateActionResult\",code=\"UNAUTHENTICATED\"}",
        "kiln_auth_denied_total{principal=\"anonymous\"}",
        "kiln_grpc_request_duration_seconds",
    ] {
        assert!(hooks.contains(&must), "no figure for {must}: {hooks:#?}");
    }
    assert_eq!(metrics["kiln_exec_bots_connected"], 1.0);
    assert_eq!(
        metrics["kiln_store_gets_total{space=\"ac\",result=\"hit\"}"],
        3.0
    );
    assert!(metrics["kiln_storage_blobs"] >= 20.0);
    // Every plotted line has points from the ring.
    let lines: Vec<&Tag> = dom.iter().filter(|t| t.name == "polyline").collect();
    assert_eq!(
        lines.len(),
        8,
        "capacity, used, blobs, 2 hit ratios, requests, read, written"
    );
    for l in &lines {
        let n: usize = l.attrs["data-points"].parse().unwrap();
        assert!(n >= 3, "{:?} has {n} points", l.attrs.get("data-series"));
        assert_eq!(l.attrs["points"].split_whitespace().count(), n);
    }
    // The slowest actions name the failing one with its exit code.
    let slow: Vec<&Tag> = dom
        .iter()
        .filter(|t| t.attrs.contains_key("data-action"))
        .collect();
    assert!(
        slow.iter()
            .any(|t| t.attrs["data-action"] == failing.to_string()),
        "slow actions: {:?}",
        slow.iter().map(|t| &t.attrs).collect::<Vec<_>>()
    );

    // KILN_STATUS_SCREENSHOT=path keeps the screenshot, to look at it.
    if let Some(keep) = std::env::var_os("KILN_STATUS_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
    // The screenshot: a real picture, not a blank page.
    let file = std::fs::File::open(&png).expect("chromium wrote no screenshot");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; decoder.output_buffer_size().unwrap()];
    let info = decoder.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 2000));
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    assert!(
        colours.len() > 50,
        "screenshot has {} colours",
        colours.len()
    );

    // `kiln status` prints the same figures.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["status", "--metrics", &addr])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        format!("blobs: {}", metrics["kiln_storage_blobs"]),
        "action cache hits: 3".to_string(),
        format!(
            "action cache misses: {}",
            metrics["kiln_store_gets_total{space=\"ac\",result=\"miss\"}"]
        ),
        "bots connected: 1".to_string(),
        "denied requests of anonymous: 1".to_string(),
        "ActionCache/UpdateActionResult UNAUTHENTICATED: 1".to_string(),
        format!("{failing}: "),
        "(exit 3,".to_string(),
        "ActionCache/GetActionResult: 4 requests, 1 errors, p50 ".to_string(),
    ] {
        assert!(
            text.contains(&line),
            "`kiln status` lacks {line:?}:\n{text}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["status", "--json", "--metrics", &addr])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let capacity = json["storage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["metric"] == "kiln_storage_capacity_bytes")
        .unwrap()["value"]
        .as_f64()
        .unwrap();
    assert_eq!(capacity, metrics["kiln_storage_capacity_bytes"]);
}
