//! The status page's memory: a bounded ring of samples taken every few seconds from the same
//! metrics `/metrics` exposes (each sample is parsed from an exposition, see [`Snapshot`]).
//! With the default 5 s interval its 720 samples cover the last hour.

use super::snapshot::Snapshot;
use std::collections::VecDeque;

/// Samples kept (the oldest is dropped first): one hour at 5 s.
pub const SAMPLES: usize = 720;

/// The figures plotted over time, read from one snapshot. Counters are cumulative; the page
/// plots their rates between neighbouring samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Seconds since the server started (monotonic).
    pub at: f64,
    /// `kiln_storage_capacity_bytes`.
    pub capacity: f64,
    /// `kiln_storage_bytes_used`.
    pub used: f64,
    /// `kiln_storage_blobs`.
    pub blobs: f64,
    /// Action-cache lookups that hit / missed (`kiln_store_gets_total{space="ac"}`).
    pub ac_hits: f64,
    /// See `ac_hits`.
    pub ac_misses: f64,
    /// CAS lookups and existence checks that hit / missed.
    pub cas_hits: f64,
    /// See `cas_hits`.
    pub cas_misses: f64,
    /// Finished gRPC requests (`kiln_grpc_requests_total`, every method and code).
    pub requests: f64,
    /// `kiln_store_read_bytes_total`.
    pub bytes_read: f64,
    /// `kiln_store_written_bytes_total`.
    pub bytes_written: f64,
}

/// Lookups of `space` with `result`, summed over `store_gets` (and `store_contains` for CAS).
fn lookups(s: &Snapshot, space: &str, result: &str) -> f64 {
    let keep =
        |x: &super::snapshot::Series<'_>| x.label("space") == space && x.label("result") == result;
    let mut n = s.sum("kiln_store_gets_total", keep);
    if space == "cas" {
        n += s.sum("kiln_store_contains_total", keep);
    }
    n
}

impl Sample {
    /// The plotted figures of `snap`, taken `at` seconds after start.
    pub fn of(snap: &Snapshot, at: f64) -> Self {
        Self {
            at,
            capacity: snap.get("kiln_storage_capacity_bytes"),
            used: snap.get("kiln_storage_bytes_used"),
            blobs: snap.get("kiln_storage_blobs"),
            ac_hits: lookups(snap, "ac", "hit"),
            ac_misses: lookups(snap, "ac", "miss"),
            cas_hits: lookups(snap, "cas", "hit"),
            cas_misses: lookups(snap, "cas", "miss"),
            requests: snap.sum("kiln_grpc_requests_total", |_| true),
            bytes_read: snap.get("kiln_store_read_bytes_total"),
            bytes_written: snap.get("kiln_store_written_bytes_total"),
        }
    }
}

/// The ring: at most `capacity` samples, oldest first.
#[derive(Debug)]
pub struct History {
    samples: VecDeque<Sample>,
    capacity: usize,
}

impl Default for History {
    fn default() -> Self {
        Self::with_capacity(SAMPLES)
    }
}

impl History {
    /// An empty ring keeping at most `capacity` (at least 2) samples.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(2);
        Self {
            samples: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Appends a sample, dropping the oldest at capacity.
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> impl ExactSizeIterator<Item = &Sample> {
        self.samples.iter()
    }

    /// How many samples are held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample was taken yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The per-second rate of `f` between each pair of neighbouring samples, at the later one's
    /// time. A counter that went down (never, short of a restart) counts as 0.
    pub fn rates(&self, f: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
        self.samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .filter(|(a, b)| b.at > a.at)
            .map(|(a, b)| (b.at, ((f(b) - f(a)) / (b.at - a.at)).max(0.0)))
            .collect()
    }

    /// The latest rate of `f` (between the last two samples), if there are two.
    pub fn current_rate(&self, f: impl Fn(&Sample) -> f64) -> Option<f64> {
        let n = self.samples.len();
        if n < 2 {
            return None;
        }
        let (a, b) = (&self.samples[n - 2], &self.samples[n - 1]);
        (b.at > a.at).then(|| ((f(b) - f(a)) / (b.at - a.at)).max(0.0))
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // exact values are the point
mod tests {
    use super::*;

    fn at(t: f64, requests: f64) -> Sample {
        Sample {
            at: t,
            requests,
            ..Sample::default()
        }
    }

    #[test]
    fn ring_is_bounded_and_drops_the_oldest() {
        let mut h = History::with_capacity(4);
        assert!(h.is_empty());
        for i in 0..10 {
            h.push(at(f64::from(i), f64::from(i) * 10.0));
        }
        assert_eq!(h.len(), 4);
        let times: Vec<f64> = h.samples().map(|s| s.at).collect();
        assert_eq!(times, [6.0, 7.0, 8.0, 9.0]);
        assert_eq!(History::default().capacity, SAMPLES);
    }

    #[test]
    fn rates_between_neighbours() {
        let mut h = History::with_capacity(8);
        assert_eq!(h.current_rate(|s| s.requests), None);
        h.push(at(0.0, 0.0));
        h.push(at(2.0, 10.0));
        h.push(at(4.0, 30.0));
        h.push(at(5.0, 0.0)); // a counter that went down: 0, not negative
        assert_eq!(
            h.rates(|s| s.requests),
            vec![(2.0, 5.0), (4.0, 10.0), (5.0, 0.0)]
        );
        assert_eq!(h.current_rate(|s| s.requests), Some(0.0));
    }
}
