//! The execution scheduler: operations, a priority queue, bot sessions with leases, platform
//! matching, lost-bot detection. No tonic: the Execution, Operations and Bots services are thin
//! layers over [`Scheduler`].
//!
//! Concurrency contract: all state lives in one `std::sync::Mutex<State>`, held only for short
//! synchronous sections (never across an await). Waiters (bots long-polling for work or for a
//! cancellation) subscribe to one `watch` counter that is bumped whenever the queue or a lease
//! changes, then re-check the state; subscribing before checking means no wake-up is lost.
//!
//! Time: every timestamp is a `tokio::time::Instant` (lease start, bot last seen, unmatched
//! since, finished at), so the scheduler follows tokio's clock and its tests pause and advance
//! it instead of sleeping; the reaper takes `now` as an argument.

mod bots;
mod error;
mod local_first;
mod operation;
pub mod platform;
mod prepare;
mod reaper;
mod state;
mod stats;
#[cfg(test)]
mod tests;

pub use bots::{LeaseReport, LeaseState, LeaseView};
pub use error::ExecError;
pub use operation::{OpHandle, OpSnapshot, Outcome, Stage};
pub use prepare::{ActionLimits, PreparedAction, Timeouts};
pub use stats::{ExecStats, FinishedAction};

use crate::cas::{ActionCache, Cas, CasError, InlineRequest};
use crate::digest::Digest;
use state::{Run, State};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Scheduler settings (from the `[execution]` config section).
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Default and maximum action timeouts.
    pub timeouts: Timeouts,
    /// Size and shape bounds of the Action, Command and input tree an Execute names.
    pub action_limits: ActionLimits,
    /// How long an UpdateBotSession call waits for work or a cancellation before answering.
    pub bot_poll: Duration,
    /// A bot silent for this long is lost; its leases are requeued.
    pub bot_timeout: Duration,
    /// How many times one action may be requeued after losing its bot before it fails.
    pub max_requeues: u32,
    /// How long a queued action may wait with no connected bot able to run it.
    pub unmatched_grace: Duration,
    /// How long completed operations stay visible to WaitExecution/GetOperation.
    pub retention: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            timeouts: Timeouts {
                default: Duration::from_mins(10),
                max: Duration::from_hours(1),
            },
            action_limits: ActionLimits::default(),
            bot_poll: Duration::from_secs(5),
            bot_timeout: Duration::from_secs(30),
            max_requeues: 2,
            unmatched_grace: Duration::from_mins(1),
            retention: Duration::from_mins(10),
        }
    }
}

/// An Execute request, validated.
#[derive(Clone, Debug)]
pub struct ExecuteParams {
    /// Instance name (an action-cache namespace).
    pub instance: String,
    /// The Action's digest.
    pub action_digest: Digest,
    /// Skip the action-cache lookup.
    pub skip_cache_lookup: bool,
    /// ExecutionPolicy.priority: lower runs sooner, 0 is the default.
    pub priority: i32,
}

struct Shared {
    cas: Cas,
    ac: ActionCache,
    config: SchedulerConfig,
    state: Mutex<State>,
    wake: watch::Sender<u64>,
    /// Input checks running at once: each may decode a Command and walk a large input tree
    /// on a blocking thread, so their number (not only their size) is bounded.
    prepare_slots: Arc<tokio::sync::Semaphore>,
}

/// Input checks (`prepare`) running at once; more Executes wait their turn.
const PREPARE_SLOTS: usize = 8;

/// The scheduler. Cheap to clone; every clone shares one state.
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

/// A handle that does not keep the scheduler alive (for callbacks registered with objects
/// the scheduler itself reaches, such as the metrics registry through the metered store).
#[derive(Clone)]
pub struct WeakScheduler(std::sync::Weak<Shared>);

impl WeakScheduler {
    /// The scheduler, while it lives.
    pub fn upgrade(&self) -> Option<Scheduler> {
        self.0.upgrade().map(|shared| Scheduler { shared })
    }
}

impl Scheduler {
    /// A handle that does not keep the scheduler alive.
    pub fn downgrade(&self) -> WeakScheduler {
        WeakScheduler(Arc::downgrade(&self.shared))
    }

    /// A scheduler over a CAS and action cache. Call [`Scheduler::spawn_reaper`] once inside a
    /// tokio runtime so lost bots and expired operations are cleaned up.
    pub fn new(cas: Cas, ac: ActionCache, config: SchedulerConfig) -> Self {
        let (wake, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                cas,
                ac,
                config,
                state: Mutex::default(),
                wake,
                prepare_slots: Arc::new(tokio::sync::Semaphore::new(PREPARE_SLOTS)),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self) {
        self.shared.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The settings in use.
    pub fn config(&self) -> &SchedulerConfig {
        &self.shared.config
    }

    /// Starts an execution: action-cache lookup, input checks, then merge with an identical
    /// in-flight action or queue a new one. Missing blobs and invalid actions are errors of the
    /// call itself; failures while running are reported in the operation's outcome.
    pub async fn execute(&self, params: ExecuteParams) -> Result<OpHandle, ExecError> {
        let digest = params.action_digest;
        if !params.skip_cache_lookup {
            match self
                .shared
                .ac
                .get(&params.instance, &digest, &InlineRequest::default())
                .await
            {
                Ok(result) => {
                    // Cache hits are answered at once and not kept: at cache-hit rates a
                    // retained operation per hit would pile up. WaitExecution on such a name
                    // is NOT_FOUND; a client then re-executes and hits the cache again.
                    let outcome = Outcome {
                        result: Some(result),
                        cached: true,
                        error: None,
                    };
                    let (_, rx) = watch::channel(OpSnapshot::done(outcome));
                    let name = uuid::Uuid::new_v4().to_string();
                    return Ok(OpHandle {
                        name,
                        action_digest: digest,
                        rx,
                    });
                }
                Err(CasError::ActionNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The slot moves into the blocking task, so a client going away does not free it
        // while the check still runs.
        let slot = self
            .shared
            .prepare_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ExecError::InvalidArgument("scheduler stopped".into()))?;
        let cas = self.shared.cas.clone();
        let timeouts = self.shared.config.timeouts;
        let limits = self.shared.config.action_limits;
        let prepared = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            prepare::prepare(&cas, &digest, timeouts, limits)
        })
        .await
        .map_err(|e| ExecError::InvalidArgument(format!("input check failed: {e}")))??;
        let mergeable = !prepared.action.do_not_cache;
        let handle = {
            let mut st = self.lock();
            let existing = st.inflight.get(&(params.instance.clone(), digest)).cloned();
            match existing.and_then(|n| st.ops.get(&n).map(|op| (n, op.tx.subscribe()))) {
                Some((name, rx)) if mergeable => OpHandle {
                    name,
                    action_digest: digest,
                    rx,
                },
                _ => {
                    let name = uuid::Uuid::new_v4().to_string();
                    let rx = st.insert(
                        &name,
                        params.instance,
                        digest,
                        prepared.action,
                        prepared.platform,
                        params.priority,
                        mergeable,
                    );
                    OpHandle {
                        name,
                        action_digest: digest,
                        rx,
                    }
                }
            }
        };
        self.wake();
        Ok(handle)
    }

    /// The operation named `name`.
    pub fn get(&self, name: &str) -> Result<OpHandle, ExecError> {
        let st = self.lock();
        let op = st
            .ops
            .get(name)
            .ok_or_else(|| ExecError::OperationNotFound(name.to_string()))?;
        Ok(OpHandle {
            name: name.to_string(),
            action_digest: op.digest,
            rx: op.tx.subscribe(),
        })
    }

    /// Every known operation, sorted by name.
    pub fn list(&self) -> Vec<OpHandle> {
        let st = self.lock();
        let mut all: Vec<OpHandle> = st
            .ops
            .iter()
            .map(|(name, op)| OpHandle {
                name: name.clone(),
                action_digest: op.digest,
                rx: op.tx.subscribe(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Cancels an operation: a queued one leaves the queue; a running one is completed as
    /// CANCELLED at once and its bot is told to kill the process. Finished ones are unchanged.
    pub fn cancel(&self, name: &str) -> Result<(), ExecError> {
        {
            let mut st = self.lock();
            let op = st
                .ops
                .get(name)
                .ok_or_else(|| ExecError::OperationNotFound(name.to_string()))?;
            match op.run.clone() {
                Run::Queued => {}
                Run::Leased { session } => {
                    if let Some(lease) = st
                        .bots
                        .get_mut(&session)
                        .and_then(|b| b.leases.get_mut(name))
                    {
                        lease.cancelled = true;
                    }
                }
                Run::Finishing | Run::Done { .. } => return Ok(()),
            }
            st.finish(
                name,
                Outcome {
                    result: None,
                    cached: false,
                    error: Some(ExecError::Cancelled),
                },
            );
        }
        self.wake();
        Ok(())
    }

    /// Forgets an operation, cancelling it first if it is still running.
    pub fn delete(&self, name: &str) -> Result<(), ExecError> {
        self.cancel(name)?;
        self.lock().ops.remove(name);
        Ok(())
    }
}
