//! Queries for `[upstream] execute = "local-first"`: before an Execute is queued here, the api
//! asks whether a local bot could start it now; when none could, the action goes upstream.
//!
//! The answer is a snapshot, not a reservation: if the idle bot is taken between the question
//! and the queueing, the action simply waits in the local queue like any other. That keeps the
//! scheduler's locking unchanged (one short section, nothing held across an await).

use super::platform::Properties;
use super::{ExecError, Scheduler, prepare};
use crate::cas::InlineRequest;
use crate::digest::Digest;
use tokio::time::Instant;

impl Scheduler {
    /// The platform an action asks for, from its Action and Command only (read on a blocking
    /// thread; each bounded by `execution.max_action_bytes` / `max_command_bytes`).
    pub async fn platform_of(&self, digest: &Digest) -> Result<Properties, ExecError> {
        let cas = self.shared.cas.clone();
        let limits = self.shared.config.action_limits;
        let digest = *digest;
        tokio::task::spawn_blocking(move || prepare::platform_of(&cas, &digest, limits))
            .await
            .map_err(|e| ExecError::InvalidArgument(format!("platform check failed: {e}")))?
    }

    /// Whether the local action cache holds a result for the action (an Execute of it is then
    /// answered here at once, wherever it would otherwise run).
    pub async fn has_cached_result(&self, instance: &str, digest: &Digest) -> bool {
        self.shared
            .ac
            .get(instance, digest, &InlineRequest::default())
            .await
            .is_ok()
    }

    /// Whether a connected bot offering `platform` is idle now and not already spoken for: the
    /// idle matching bots outnumber the queued actions they could take. A bot counts as
    /// connected while it has called within `execution.bot_timeout` (idle bots long-poll, so
    /// a live one calls at least every `bot_poll`).
    pub fn idle_bot_for(&self, platform: &Properties) -> bool {
        let now = Instant::now();
        let fresh = self.shared.config.bot_timeout;
        let st = self.lock();
        let idle: Vec<&Properties> = st
            .bots
            .values()
            .filter(|b| {
                b.leases.is_empty()
                    && now.duration_since(b.last_seen) <= fresh
                    && platform.satisfied_by(&b.properties)
            })
            .map(|b| &b.properties)
            .collect();
        if idle.is_empty() {
            return false;
        }
        // Counting stops at `idle.len()`: a long queue costs no more than that many matches.
        let waiting = st
            .queued()
            .filter(|n| {
                st.ops
                    .get(*n)
                    .is_some_and(|op| idle.iter().any(|p| op.platform.satisfied_by(p)))
            })
            .take(idle.len())
            .count();
        waiting < idle.len()
    }
}
