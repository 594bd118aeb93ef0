//! A circuit breaker in front of the upstream: after `threshold` consecutive failures it opens
//! and calls fail at once (no client waits on a dead upstream); after `reset` it lets exactly
//! one probe through, whose outcome closes or re-opens it.
//!
//! Concurrency: one mutex around a few words, held only to read or change the state, never
//! across a call. Times are passed in (`*_at`) so tests drive the clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state as exported (`kiln_upstream_breaker_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed = 0,
    /// Calls fail at once until the reset delay passes.
    Open = 1,
    /// One probe call is in flight; others fail at once.
    Probing = 2,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Instant,
    /// When the last probe was let through: a probe whose caller gave up (and so never
    /// reported) must not block the breaker for ever, so another goes after `reset`.
    probe_at: Instant,
}

/// The circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    reset: Duration,
    inner: Mutex<Inner>,
}

/// Whether a call may go ahead; `Err` carries the time until the next probe.
pub type Permit = Result<(), Duration>;

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures and probes again
    /// `reset` after opening.
    pub fn new(threshold: u32, reset: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            reset,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: Instant::now(),
                probe_at: Instant::now(),
            }),
        }
    }

    /// Asks to make a call now.
    pub fn allow(&self) -> Permit {
        self.allow_at(Instant::now())
    }

    /// Asks to make a call at `now`: closed lets it through; open lets one probe through once
    /// the reset delay has passed; probing refuses everything but the probe.
    pub fn allow_at(&self, now: Instant) -> Permit {
        let mut i = self.inner.lock().expect("breaker lock");
        match i.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => {
                let since = now.saturating_duration_since(i.opened_at);
                if since >= self.reset {
                    i.state = BreakerState::Probing;
                    i.probe_at = now;
                    Ok(())
                } else {
                    Err(self.reset.saturating_sub(since))
                }
            }
            BreakerState::Probing => {
                let since = now.saturating_duration_since(i.probe_at);
                if since >= self.reset {
                    i.probe_at = now;
                    Ok(())
                } else {
                    Err(self.reset.saturating_sub(since))
                }
            }
        }
    }

    /// Records a call that worked: the breaker closes.
    pub fn success(&self) {
        let mut i = self.inner.lock().expect("breaker lock");
        i.state = BreakerState::Closed;
        i.failures = 0;
    }

    /// Records a call that failed because of the upstream.
    pub fn failure(&self) {
        self.failure_at(Instant::now());
    }

    /// Records a failure at `now`: a failed probe, or the threshold reached, opens it.
    pub fn failure_at(&self, now: Instant) {
        let mut i = self.inner.lock().expect("breaker lock");
        i.failures = i.failures.saturating_add(1);
        if i.state == BreakerState::Probing || i.failures >= self.threshold {
            if i.state != BreakerState::Open {
                tracing::warn!(
                    failures = i.failures,
                    "upstream circuit breaker open: misses fail at once until a probe succeeds"
                );
            }
            i.state = BreakerState::Open;
            i.opened_at = now;
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.inner.lock().expect("breaker lock").state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_once_after_reset() {
        let b = Breaker::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        for _ in 0..2 {
            b.failure_at(t0);
            assert_eq!(b.allow_at(t0), Ok(()));
        }
        b.failure_at(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.allow_at(t0 + Duration::from_secs(1)),
            Err(Duration::from_secs(4))
        );
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.allow_at(later), Ok(()), "the probe");
        assert_eq!(b.state(), BreakerState::Probing);
        assert!(b.allow_at(later).is_err(), "only one probe at a time");
        // A probe that never reports (its caller gave up) does not block for ever.
        assert_eq!(b.allow_at(later + Duration::from_secs(5)), Ok(()));
        // A failed probe re-opens it for another full delay.
        b.failure_at(later);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow_at(later + Duration::from_secs(4)).is_err());
        assert_eq!(b.allow_at(later + Duration::from_secs(5)), Ok(()));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.allow_at(later + Duration::from_secs(5)), Ok(()));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let b = Breaker::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        b.failure_at(t0);
        b.success();
        b.failure_at(t0);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
