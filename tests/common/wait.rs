//! The one way tests wait for state: poll a condition until it holds or a deadline passes
//! (then fail, naming what never happened). Never a fixed sleep standing in for a wait.
//! Included by `common/mod.rs` and, by path, by tests that do not compile the server harness.
//!
//! `wait_until` / `poll_until` name the awaited state up front; the `_ok` forms take a check
//! that returns `Err(what it saw)` while the state is not there yet, and fail with the last
//! such report (a log tail, the metrics text), which is what a reader of a failure needs.
#![allow(dead_code)]

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(5);

/// A failure report made only when shown: `Err(Lazy(|| format!(..)))` from a check that
/// would otherwise build (read a log, format a page) on every poll.
pub struct Lazy<F>(pub F);

impl<F: Fn() -> String> Display for Lazy<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// Blocks until `cond` holds; panics with `what` once `timeout` has passed without it.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_until_ok(timeout, || if cond() { Ok(()) } else { Err(what) });
}

/// Blocks until `cond` holds or `timeout` has passed, and says which: for a caller that must
/// clean up (kill a child, dump a log) before it fails.
pub fn holds_within(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Blocks until `check` returns `Ok`, and returns its value; once `timeout` has passed
/// without it, panics with the last `Err` (what the check saw instead).
pub fn wait_until_ok<T, E: Display>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) => assert!(
                start.elapsed() < timeout,
                "never happened within {timeout:?}: {e}"
            ),
        }
        std::thread::sleep(POLL);
    }
}

/// Awaits `f` until it yields `Some`, and returns that; panics with `what` once `timeout` has
/// passed without it. For conditions that must await (an RPC, a lock).
pub async fn poll_until<T, F>(what: &str, timeout: Duration, mut f: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    poll_until_ok(timeout, || {
        let next = f();
        async move { next.await.ok_or(what) }
    })
    .await
}

/// Awaits `check` until it yields `Ok`, and returns its value; once `timeout` has passed
/// without it, panics with the last `Err` (what the check saw instead).
pub async fn poll_until_ok<T, E: Display, F>(timeout: Duration, mut check: impl FnMut() -> F) -> T
where
    F: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) => assert!(
                start.elapsed() < timeout,
                "never happened within {timeout:?}: {e}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}
