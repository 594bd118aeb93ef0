//! The one way tests wait for state: poll a condition until it holds or a deadline passes
//! (then fail, naming what never happened). Never a fixed sleep standing in for a wait.
//! Included by `common/mod.rs` and, by path, by tests that do not compile the server harness.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(5);

/// Blocks until `cond` holds; panics with `what` once `timeout` has passed without it.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "never happened within {timeout:?}: {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Awaits `f` until it yields `Some`, and returns that; panics with `what` once `timeout` has
/// passed without it. For conditions that must await (an RPC, a lock).
pub async fn poll_until<T, F>(what: &str, timeout: Duration, mut f: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "never happened within {timeout:?}: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
