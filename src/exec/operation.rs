//! What a client can see of one operation: its stage and, once completed, its outcome.
//!
//! Each operation publishes [`OpSnapshot`]s through a `tokio::sync::watch` channel, so any
//! number of Execute/WaitExecution/WaitOperation callers follow the same state. A watcher sees
//! the latest snapshot, not necessarily every intermediate stage.

use super::ExecError;
use crate::digest::Digest;
use crate::proto::reapi::ActionResult;
use std::sync::Arc;
use tokio::sync::watch;

/// The REAPI execution stages kiln reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Looking the action up in the action cache.
    CacheCheck,
    /// Waiting for a bot.
    Queued,
    /// Leased to a bot.
    Executing,
    /// Finished; the outcome is set.
    Completed,
}

/// How an operation ended.
#[derive(Debug)]
pub struct Outcome {
    /// The action's result, when it ran (also for timeouts: it carries stdout/stderr).
    pub result: Option<ActionResult>,
    /// Whether the result came from the action cache.
    pub cached: bool,
    /// The failure, if any (becomes `ExecuteResponse.status`).
    pub error: Option<ExecError>,
}

/// One published state of an operation.
#[derive(Clone, Debug)]
pub struct OpSnapshot {
    /// Current stage.
    pub stage: Stage,
    /// Set exactly when `stage` is `Completed`.
    pub outcome: Option<Arc<Outcome>>,
}

impl OpSnapshot {
    /// A snapshot in a stage without an outcome.
    pub fn at(stage: Stage) -> Self {
        Self {
            stage,
            outcome: None,
        }
    }

    /// A completed snapshot.
    pub fn done(outcome: Outcome) -> Self {
        Self {
            stage: Stage::Completed,
            outcome: Some(Arc::new(outcome)),
        }
    }

    /// Whether the operation has finished.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Completed
    }
}

/// A caller's view of an operation: its name, the action, and the state channel.
#[derive(Clone, Debug)]
pub struct OpHandle {
    /// The operation name, unique on this server.
    pub name: String,
    /// The action being executed.
    pub action_digest: Digest,
    /// Follows the operation's state. Closed when the operation is deleted or expires.
    pub rx: watch::Receiver<OpSnapshot>,
}

impl OpHandle {
    /// The current snapshot.
    pub fn snapshot(&self) -> OpSnapshot {
        self.rx.borrow().clone()
    }

    /// Waits until the operation is done, it disappears, or `timeout` passes; returns the
    /// latest snapshot.
    pub async fn wait_done(&mut self, timeout: std::time::Duration) -> OpSnapshot {
        let _ = tokio::time::timeout(timeout, self.rx.wait_for(OpSnapshot::is_done)).await;
        self.snapshot()
    }
}
