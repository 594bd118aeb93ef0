//! One reading of every metric, parsed back from the `/metrics` text itself. The status page,
//! `/status` and the history ring read only this, so every figure they show is a value
//! `/metrics` exposed (no second bookkeeping that could drift from it).

use std::collections::BTreeMap;

/// Every series of one `/metrics` exposition: `name{labels}` -> value.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    series: BTreeMap<String, f64>,
}

/// One series of a metric: its labels and value.
pub struct Series<'a> {
    /// The full series key as exposed (`name{a="x"}`), the `data-metric` of a figure.
    pub key: &'a str,
    /// Label names and (unescaped) values, in exposition order.
    pub labels: Vec<(&'a str, String)>,
    /// The value.
    pub value: f64,
}

impl Series<'_> {
    /// The value of label `name`, or "".
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

impl Snapshot {
    /// Parses OpenMetrics/Prometheus text: comment lines skipped, `series value` lines kept.
    pub fn parse(text: &str) -> Self {
        let mut series = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => match v.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            series.insert(key.to_string(), value);
        }
        Self { series }
    }

    /// The value of the series `key` (exactly as exposed), 0 when absent.
    pub fn get(&self, key: &str) -> f64 {
        self.series.get(key).copied().unwrap_or(0.0)
    }

    /// The value of the series `key`, if exposed.
    pub fn find(&self, key: &str) -> Option<f64> {
        self.series.get(key).copied()
    }

    /// Every series without labels: (key, value).
    pub fn unlabelled(&self) -> impl Iterator<Item = (&str, f64)> {
        self.series
            .iter()
            .filter(|(k, _)| !k.contains('{'))
            .map(|(k, v)| (k.as_str(), *v))
    }

    /// Every series of metric `name` (with labels, or the bare one).
    pub fn family<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Series<'a>> + 'a {
        self.series
            .range(name.to_string()..)
            .take_while(move |(k, _)| k.starts_with(name))
            .filter_map(move |(k, v)| {
                let rest = &k[name.len()..];
                let labels = if rest.is_empty() {
                    Vec::new()
                } else {
                    parse_labels(rest.strip_prefix('{')?.strip_suffix('}')?)?
                };
                Some(Series {
                    key: k,
                    labels,
                    value: *v,
                })
            })
    }

    /// The sum of every series of metric `name` whose labels satisfy `keep`.
    pub fn sum(&self, name: &str, keep: impl Fn(&Series<'_>) -> bool) -> f64 {
        self.family(name).filter(|s| keep(s)).map(|s| s.value).sum()
    }
}

/// Parses `a="x",b="y\"z"` into names and unescaped values.
fn parse_labels(s: &str) -> Option<Vec<(&str, String)>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((name, value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Some(out)
}

/// The `q` quantile (0..1) of a cumulative histogram, by linear interpolation inside the bucket
/// the rank falls in (as Prometheus' `histogram_quantile`): `buckets` are (upper bound,
/// cumulative count) sorted by bound, the last one `+Inf`. A rank in the `+Inf` bucket
/// answers the largest finite bound. `None` when the histogram is empty.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(upper, cumulative) in buckets {
        if cumulative >= rank && cumulative > below {
            if upper.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (upper - lower) * (rank - below) / (cumulative - below));
        }
        lower = if upper.is_finite() { upper } else { lower };
        below = cumulative;
    }
    Some(lower)
}

/// The buckets of histogram `name` for the series whose labels satisfy `keep`.
pub fn buckets(snap: &Snapshot, name: &str, keep: impl Fn(&Series<'_>) -> bool) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = snap
        .family(&format!("{name}_bucket"))
        .filter(|s| keep(s))
        .filter_map(|s| {
            let le = match s.label("le") {
                "+Inf" => f64::INFINITY,
                v => v.parse().ok()?,
            };
            Some((le, s.value))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // exact values are the point
mod tests {
    use super::*;

    #[test]
    fn parses_series_and_labels() {
        let s = Snapshot::parse(
            "# HELP x y\nkiln_a_total 3\nkiln_b{p=\"a\\\"b,c\",q=\"z\"} 2.5\n# EOF\n",
        );
        assert_eq!(s.get("kiln_a_total"), 3.0);
        let b: Vec<_> = s.family("kiln_b").collect();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].label("p"), "a\"b,c");
        assert_eq!(b[0].label("q"), "z");
        assert_eq!(b[0].value, 2.5);
        assert_eq!(s.family("kiln_a").count(), 0, "a prefix is not a family");
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        // 10 requests <= 1 s, 10 more in (1, 2], none above.
        let b = [(1.0, 10.0), (2.0, 20.0), (f64::INFINITY, 20.0)];
        assert_eq!(quantile(0.5, &b), Some(1.0));
        assert!((quantile(0.75, &b).unwrap() - 1.5).abs() < 1e-9);
        assert!((quantile(0.25, &b).unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(quantile(1.0, &b), Some(2.0));
        // Empty buckets before the rank are skipped, not interpolated into.
        let b = [(1.0, 0.0), (2.0, 0.0), (4.0, 4.0), (f64::INFINITY, 4.0)];
        assert!((quantile(0.5, &b).unwrap() - 3.0).abs() < 1e-9);
        // A rank past the last finite bound answers that bound.
        let b = [(1.0, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.9, &b), Some(1.0));
        assert_eq!(quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }
}
