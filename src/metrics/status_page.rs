//! The status page (`GET /` on the metrics port): one self-contained HTML document, no scripts,
//! no external assets; plots are inline SVG drawn from the history ring, and the page reloads
//! itself with `<meta http-equiv=refresh>`.
//!
//! Hooks for machines: every figure carries `data-metric` (the `/metrics` series it shows, or
//! `data-derived` when computed) and `data-value` (the raw number); every plotted line is a
//! `<polyline data-points=N>`. Everything from clients or config (principals, digests, method
//! names) is HTML-escaped.

use super::history::{History, Sample};
use super::status_text::human;
use super::summary::{Figure, QUANTILES, Summary, Unit};
use std::fmt::Write as _;

/// Seconds between the page's reloads.
pub const REFRESH_SECONDS: u64 = 10;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The page's style sheet, inlined into every page.
const STYLE: &str = include_str!("status_page.css");

/// The whole page.
pub fn render(summary: &Summary, history: &History) -> String {
    let mut h = String::with_capacity(32 << 10);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>\
         <meta http-equiv=refresh content={REFRESH_SECONDS}><title>kiln status</title>\
         <style>{STYLE}</style></head><body><header><h1>kiln {}</h1><p>up {} · {} samples in \
         the plots' ring · this page reloads every {REFRESH_SECONDS} s · raw figures at \
         <a style=color:#9cf href=/metrics>/metrics</a></p></header>",
        esc(summary.version),
        human_duration(summary.uptime_seconds),
        history.len(),
    );
    if summary
        .auth
        .iter()
        .any(|f| f.metric == "kiln_auth_open_network_listeners" && f.value > 0.0)
    {
        h.push_str(
            "<div class=warn>NO AUTH: kiln listens on a non-loopback address and every client \
             that reaches it may read, write the cache and run actions. Configure [auth] \
             tokens_file (kiln token add) or firewall the port.</div>",
        );
    }
    h.push_str("<main>");
    section(&mut h, "Storage", &summary.storage);
    plots(&mut h, history);
    section(
        &mut h,
        "Now (rates over the last sample interval)",
        &summary.rates,
    );
    section(&mut h, "Cache", &summary.cache);
    section(&mut h, "Execution", &summary.execution);
    if summary.execution.is_empty() {
        h.push_str("<p class=note>Execution is disabled ([execution] enabled = false).</p>");
    }
    slow_actions(&mut h, summary);
    latency(&mut h, summary);
    section(&mut h, "Errors by method and gRPC code", &summary.errors);
    if summary.errors.is_empty() {
        h.push_str("<p class=note>No failed requests since start.</p>");
    }
    section(&mut h, "Auth", &summary.auth);
    if summary.auth.is_empty() {
        h.push_str("<p class=note>No auth warnings and no refused requests.</p>");
    }
    section(&mut h, "Other gauges", &summary.other);
    h.push_str("</main></body></html>\n");
    h
}

fn human_duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn figure(h: &mut String, f: &Figure) {
    let hook = if f.metric.is_empty() {
        "data-derived".to_string()
    } else {
        format!("data-metric=\"{}\"", esc(&f.metric))
    };
    let bad = f.value > 0.0
        && (f.label.contains("corruption")
            || f.label.contains("denied")
            || f.label.contains("errors")
            || (f.metric.contains("code=") && !f.metric.contains("code=\"OK\""))
            || f.metric == "kiln_auth_open_network_listeners");
    let _ = write!(
        h,
        "<div class=\"fig{}\" {hook} data-value=\"{}\"><span class=v>{}</span><span class=l>{}</span></div>",
        if bad { " bad" } else { "" },
        f.value,
        esc(&human(f.value, f.unit)),
        esc(&f.label),
    );
}

fn section(h: &mut String, title: &str, figures: &[Figure]) {
    let _ = write!(h, "<h2>{}</h2>", esc(title));
    if figures.is_empty() {
        return;
    }
    h.push_str("<div class=figs>");
    for f in figures {
        figure(h, f);
    }
    h.push_str("</div>");
}

/// One line of a plot: name, colour, points (seconds since start, value).
type Line = (&'static str, &'static str, Vec<(f64, f64)>);

fn plots(h: &mut String, history: &History) {
    let pts = |f: fn(&Sample) -> f64| history.samples().map(|s| (s.at, f(s))).collect::<Vec<_>>();
    let ratio = |hit: fn(&Sample) -> f64, miss: fn(&Sample) -> f64| {
        history
            .samples()
            .filter(|s| hit(s) + miss(s) > 0.0)
            .map(|s| (s.at, hit(s) / (hit(s) + miss(s))))
            .collect::<Vec<_>>()
    };
    let span = (
        history.samples().next().map_or(0.0, |s| s.at),
        history.samples().last().map_or(0.0, |s| s.at),
    );
    h.push_str("<h2>History (the last 720 samples: one hour at the default interval)</h2><div class=plots>");
    plot(
        h,
        "Disk: capacity and use",
        Unit::Bytes,
        span,
        &[
            ("capacity", "#9aa5b8", pts(|s| s.capacity)),
            ("used", "#2f6fde", pts(|s| s.used)),
        ],
    );
    plot(
        h,
        "Blobs stored",
        Unit::Count,
        span,
        &[("blobs", "#2f6fde", pts(|s| s.blobs))],
    );
    plot(
        h,
        "Hit ratio since start",
        Unit::Ratio,
        span,
        &[
            (
                "action cache",
                "#1f9d55",
                ratio(|s| s.ac_hits, |s| s.ac_misses),
            ),
            ("CAS", "#9c5fd6", ratio(|s| s.cas_hits, |s| s.cas_misses)),
        ],
    );
    plot(
        h,
        "Requests per second",
        Unit::PerSecond,
        span,
        &[("requests/s", "#e07b00", history.rates(|s| s.requests))],
    );
    plot(
        h,
        "Bytes per second",
        Unit::BytesPerSecond,
        span,
        &[
            ("read", "#2f6fde", history.rates(|s| s.bytes_read)),
            ("written", "#d6336c", history.rates(|s| s.bytes_written)),
        ],
    );
    h.push_str("</div>");
}

/// The smallest "round" number (1, 2, 2.5 or 5 times a power of ten; for bytes, of the KiB/MiB/..
/// unit it is shown in) at or above `v`, so axis labels read well. At least 1.
fn nice_ceiling(v: f64, unit: Unit) -> f64 {
    if v.is_nan() || v <= 1.0 {
        return 1.0;
    }
    let mut scale = 1.0;
    if matches!(unit, Unit::Bytes | Unit::BytesPerSecond) {
        while v / scale >= 1024.0 {
            scale *= 1024.0;
        }
    }
    let x = v / scale;
    let pow = 10f64.powf(x.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|m| m * pow >= x)
        .unwrap_or(10.0);
    step * pow * scale
}

/// One SVG line chart over the ring's time span `(t0, t1)`; y starts at 0.
fn plot(h: &mut String, title: &str, unit: Unit, (t0, t1): (f64, f64), lines: &[Line]) {
    const W: f64 = 540.0;
    const H: f64 = 150.0;
    const LEFT: f64 = 78.0;
    const BOTTOM: f64 = 20.0;
    let ymax = lines
        .iter()
        .flat_map(|l| l.2.iter())
        .fold(0.0_f64, |m, &(_, v)| m.max(v));
    let ymax = match unit {
        Unit::Ratio => 1.0,
        _ => nice_ceiling(ymax, unit),
    };
    let _ = write!(h, "<div class=plot><h3>{}</h3><div class=key>", esc(title));
    for (name, colour, points) in lines {
        let _ = write!(
            h,
            "<span><i style=background:{colour}></i>{} ({} points)</span>",
            esc(name),
            points.len()
        );
    }
    let _ = write!(
        h,
        "</div><svg width={W} height={H} viewBox=\"0 0 {W} {H}\" role=img aria-label=\"{}\">",
        esc(title)
    );
    let plot_h = H - BOTTOM - 6.0;
    for i in 0..=2 {
        let y = 6.0 + plot_h * f64::from(i) / 2.0;
        let v = ymax * f64::from(2 - i) / 2.0;
        let _ = write!(
            h,
            "<line x1={LEFT} x2={W} y1={y:.1} y2={y:.1} stroke=#e6e8ee />\
             <text x={:.1} y={:.1} font-size=11 text-anchor=end fill=#5b6578>{}</text>",
            LEFT - 6.0,
            y + 4.0,
            esc(&human(v, unit))
        );
    }
    let have = lines.iter().map(|l| l.2.len()).max().unwrap_or(0);
    if have < 2 {
        let _ = write!(
            h,
            "<text x={:.1} y={:.1} font-size=14 text-anchor=middle fill=#5b6578>collecting…</text>",
            LEFT + (W - LEFT) / 2.0,
            H / 2.0
        );
    } else {
        let span = (t1 - t0).max(1e-9);
        let _ = write!(
            h,
            "<text x={LEFT} y={:.1} font-size=11 fill=#5b6578>{} ago</text>\
             <text x={W} y={:.1} font-size=11 text-anchor=end fill=#5b6578>now</text>",
            H - 4.0,
            human_duration(span),
            H - 4.0
        );
        for (name, colour, points) in lines {
            let coords: Vec<String> = points
                .iter()
                .map(|&(t, v)| {
                    let x = LEFT + (W - LEFT) * (t - t0) / span;
                    let y = 6.0 + plot_h * (1.0 - (v / ymax).clamp(0.0, 1.0));
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let _ = write!(
                h,
                "<polyline data-series=\"{}\" data-points={} points=\"{}\" fill=none stroke={colour} stroke-width=2 />",
                esc(name),
                points.len(),
                coords.join(" ")
            );
        }
    }
    h.push_str("</svg></div>");
}

fn latency(h: &mut String, summary: &Summary) {
    h.push_str(
        "<h2>Latency per RPC since start</h2><p class=note>p50/p90/p99 are interpolated \
         linearly inside the buckets of <code>kiln_grpc_request_duration_seconds</code> (as \
         Prometheus' histogram_quantile), so they are as precise as the bucket bounds; a \
         percentile past the last finite bucket shows that bound.</p>",
    );
    if summary.rpcs.is_empty() {
        h.push_str("<p class=note>No requests yet.</p>");
        return;
    }
    h.push_str("<table><tr><th>method</th><th>requests</th><th>errors</th><th>p50</th><th>p90</th><th>p99</th></tr>");
    for r in &summary.rpcs {
        let method = esc(&r.method);
        let _ = write!(
            h,
            "<tr data-method=\"{method}\"><td>{method}</td><td data-derived data-value=\"{}\">{}</td>\
             <td data-derived data-value=\"{}\">{}</td>",
            r.requests, r.requests, r.errors, r.errors
        );
        for (q, v) in QUANTILES.iter().zip(r.quantiles) {
            match v {
                Some(v) => {
                    let _ = write!(
                        h,
                        "<td data-metric=kiln_grpc_request_duration_seconds data-quantile={q} data-value=\"{v}\">{}</td>",
                        esc(&human(v, Unit::Seconds))
                    );
                }
                None => h.push_str("<td>-</td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

fn slow_actions(h: &mut String, summary: &Summary) {
    h.push_str("<h2>Slowest recent actions</h2>");
    if summary.slow_actions.is_empty() {
        h.push_str("<p class=note>No action has run in the last hour.</p>");
        return;
    }
    h.push_str("<table><tr><th>action digest</th><th>duration</th><th>exit code</th><th>finished</th></tr>");
    for a in &summary.slow_actions {
        let exit = a.exit_code.map_or("none".into(), |c| c.to_string());
        let _ = write!(
            h,
            "<tr data-action=\"{}\" data-value=\"{}\"><td><code>{}</code></td><td>{}</td><td>{exit}</td><td>{} ago</td></tr>",
            esc(&a.digest),
            a.seconds,
            esc(&a.digest),
            esc(&human(a.seconds, Unit::Seconds)),
            human_duration(a.ago_seconds),
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // exact values are the point
mod tests {
    use super::*;
    use crate::metrics::summary::SlowAction;
    use crate::metrics::{Snapshot, history::History};

    #[test]
    fn axis_ceilings_are_round() {
        assert_eq!(nice_ceiling(0.0, Unit::Count), 1.0);
        assert_eq!(nice_ceiling(19801.0, Unit::Count), 20000.0);
        assert_eq!(nice_ceiling(1655.0, Unit::PerSecond), 2000.0);
        assert_eq!(nice_ceiling(3.0, Unit::Count), 5.0);
        let mib = 1024.0 * 1024.0;
        assert_eq!(nice_ceiling(256.0 * mib, Unit::Bytes), 500.0 * mib);
        assert_eq!(nice_ceiling(80.0 * mib, Unit::Bytes), 100.0 * mib);
    }

    #[test]
    fn hostile_text_is_escaped_and_an_empty_ring_renders() {
        let snap = Snapshot::parse("kiln_auth_denied_total{principal=\"<script>x</script>\"} 2\n");
        let slow = vec![SlowAction {
            digest: "\"><img src=x onerror=alert(1)>".into(),
            seconds: 1.0,
            exit_code: Some(3),
            ago_seconds: 2.0,
        }];
        let page = render(
            &Summary::build(&snap, &History::default(), slow),
            &History::default(),
        );
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(page.contains("collecting…"));
        assert!(!page.contains("<polyline"));
    }
}
