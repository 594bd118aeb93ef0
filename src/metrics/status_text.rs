//! The plain-text rendering of a [`Summary`] (`/status`, `kiln status`), and the
//! human-readable units both renderings use.

use super::summary::{Summary, Unit};
use std::fmt::Write as _;

impl Summary {
    /// The plain-text rendering (`/status`, `kiln status`): the same figures as the page.
    pub fn text(&self) -> String {
        let mut s = format!("kiln {}\nuptime: {}s\n", self.version, self.uptime_seconds);
        if self
            .auth
            .iter()
            .any(|f| f.metric == "kiln_auth_open_network_listeners" && f.value > 0.0)
        {
            s.push_str(
                "!!! NO AUTH: kiln listens on a non-loopback address and every client that \
                 reaches it may read, write the cache and run actions ([auth] tokens_file) !!!\n",
            );
        }
        // The summary lines scripts grep for (kept from earlier versions).
        let f = |label: &str| {
            self.cache
                .iter()
                .find(|f| f.label == label)
                .map_or(0.0, |f| f.value)
        };
        let _ = writeln!(
            s,
            "cas: {} hits, {} misses\naction cache: {} hits, {} misses\n\
             written: {} blobs, {} bytes ({} errors)\nread: {} bytes",
            f("CAS reads that hit") + f("CAS existence checks found"),
            f("CAS reads that missed") + f("CAS existence checks missing"),
            f("action cache hits"),
            f("action cache misses"),
            f("blobs written"),
            f("bytes written"),
            f("write errors"),
            f("bytes read"),
        );
        for (title, figures) in [
            ("storage", &self.storage),
            ("cache", &self.cache),
            ("rates (last sample interval)", &self.rates),
            ("execution", &self.execution),
            ("auth", &self.auth),
            ("errors", &self.errors),
        ] {
            if figures.is_empty() {
                continue;
            }
            let _ = writeln!(s, "\n[{title}]");
            for fig in figures {
                // Labels may hold label values (principal names): no control characters.
                let label = fig.label.escape_debug();
                let _ = writeln!(s, "{label}: {}", human(fig.value, fig.unit));
            }
        }
        if !self.rpcs.is_empty() {
            let _ = writeln!(
                s,
                "\n[latency per RPC since start (p50/p90/p99 interpolated in histogram buckets)]"
            );
            for r in &self.rpcs {
                let q = r
                    .quantiles
                    .map(|q| q.map_or("-".into(), |v| human(v, Unit::Seconds)));
                let _ = writeln!(
                    s,
                    "{}: {} requests, {} errors, p50 {} p90 {} p99 {}",
                    r.method, r.requests, r.errors, q[0], q[1], q[2]
                );
            }
        }
        if !self.slow_actions.is_empty() {
            let _ = writeln!(s, "\n[slowest recent actions]");
            for a in &self.slow_actions {
                let exit = a.exit_code.map_or("none".into(), |c| c.to_string());
                let _ = writeln!(
                    s,
                    "{}: {} (exit {exit}, {} ago)",
                    a.digest.escape_debug(),
                    human(a.seconds, Unit::Seconds),
                    human(a.ago_seconds, Unit::Seconds)
                );
            }
        }
        if !self.other.is_empty() {
            let _ = writeln!(s, "\n[other]");
        }
        for fig in &self.other {
            let _ = writeln!(s, "{}: {}", fig.label, fig.value);
        }
        s
    }
}

/// A value for people: sizes in KiB/MiB/GiB, ratios in %, seconds in ms/s.
pub fn human(v: f64, unit: Unit) -> String {
    let sized = |v: f64| {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut x = v;
        let mut i = 0;
        while x.abs() >= 1024.0 && i + 1 < units.len() {
            x /= 1024.0;
            i += 1;
        }
        if i == 0 && (x.fract() == 0.0 || x.abs() >= 10.0) {
            format!("{x:.0} B")
        } else if i == 0 {
            format!("{x:.1} B")
        } else {
            format!("{x:.1} {}", units[i])
        }
    };
    match unit {
        Unit::Count if v.fract() == 0.0 => format!("{v:.0}"),
        Unit::Count => format!("{v:.2}"),
        Unit::Bytes => sized(v),
        Unit::BytesPerSecond => format!("{}/s", sized(v)),
        Unit::Ratio => format!("{:.1}%", v * 100.0),
        Unit::PerSecond => format!("{v:.1}/s"),
        Unit::Seconds if v < 1.0 => format!("{:.2} ms", v * 1000.0),
        Unit::Seconds => format!("{v:.2} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human(512.0, Unit::Bytes), "512 B");
        assert_eq!(human(0.5, Unit::BytesPerSecond), "0.5 B/s");
        assert_eq!(human(3.0 * 1024.0 * 1024.0, Unit::Bytes), "3.0 MiB");
        assert_eq!(human(0.25, Unit::Ratio), "25.0%");
        assert_eq!(human(0.0015, Unit::Seconds), "1.50 ms");
        assert_eq!(human(7.0, Unit::Count), "7");
    }
}
