//! Periodic housekeeping: declares silent bots lost (requeueing their leases), fails queued
//! actions that no connected bot can run once the grace period has passed, and forgets
//! completed operations after the retention time.

use super::operation::Outcome;
use super::platform::Properties;
use super::state::{Run, State};
use super::{ExecError, Scheduler, SchedulerConfig};
use std::time::Duration;
use tokio::time::Instant;

impl Scheduler {
    /// Starts the housekeeping task. It stops when every clone of the scheduler is dropped.
    pub fn spawn_reaper(&self) {
        let weak = std::sync::Arc::downgrade(&self.shared);
        let period = (self.shared.config.bot_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let scheduler = Scheduler { shared };
                scheduler.reap(Instant::now());
            }
        });
    }

    /// One housekeeping pass as of `now`.
    pub(super) fn reap(&self, now: Instant) {
        let config = self.shared.config.clone();
        let changed = {
            let mut st = self.lock();
            let lost = reap_bots(&mut st, &config, now);
            reap_unmatched(&mut st, &config, now);
            st.ops.retain(|_, op| !matches!(op.run, Run::Done { at } if now.duration_since(at) > config.retention));
            lost
        };
        if changed {
            self.wake();
        }
    }
}

fn reap_bots(st: &mut State, config: &SchedulerConfig, now: Instant) -> bool {
    let lost: Vec<String> = st
        .bots
        .iter()
        .filter(|(_, b)| now.duration_since(b.last_seen) > config.bot_timeout)
        .map(|(name, _)| name.clone())
        .collect();
    for name in &lost {
        let bot = st.bots.remove(name).expect("listed above");
        tracing::warn!(session = %name, bot_id = %bot.bot_id, leases = bot.leases.len(), "bot lost");
        for (id, lease) in bot.leases {
            if !lease.cancelled {
                st.requeue_or_fail(&id, &bot.bot_id, true, config.max_requeues);
            }
        }
    }
    !lost.is_empty()
}

fn reap_unmatched(st: &mut State, config: &SchedulerConfig, now: Instant) {
    let offers: Vec<Properties> = st.bots.values().map(|b| b.properties.clone()).collect();
    let queued: Vec<String> = st.queued().map(str::to_string).collect();
    let mut failed = Vec::new();
    for name in queued {
        let Some(op) = st.ops.get_mut(&name) else {
            continue;
        };
        if offers.iter().any(|o| op.platform.satisfied_by(o)) {
            op.unmatched_since = None;
            continue;
        }
        let since = *op.unmatched_since.get_or_insert(now);
        if now.duration_since(since) >= config.unmatched_grace {
            let why = if offers.is_empty() {
                "no bot is connected".to_string()
            } else {
                let unmet = offers
                    .iter()
                    .find_map(|o| op.platform.first_unmet(o))
                    .unwrap_or_default();
                format!("no connected bot satisfies platform property {unmet}")
            };
            failed.push((name, why));
        }
    }
    for (name, why) in failed {
        let message = format!("{why} (waited {}s)", config.unmatched_grace.as_secs());
        tracing::warn!(operation = %name, %message, "failing unschedulable action");
        st.finish(
            &name,
            Outcome {
                result: None,
                cached: false,
                error: Some(ExecError::NoMatchingBot(message)),
            },
        );
    }
}
