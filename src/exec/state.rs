//! The scheduler's mutable state, kept under one mutex: operations, the priority queue, bot
//! sessions and their leases. Every method here is synchronous and quick; nothing awaits while
//! the lock is held.

use super::operation::{OpSnapshot, Outcome, Stage};
use super::platform::Properties;
use crate::digest::Digest;
use crate::proto::reapi::Action;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::SystemTime;
use tokio::sync::watch;
use tokio::time::Instant;

/// Where an operation is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Run {
    /// In the queue.
    Queued,
    /// Leased to the bot session named here.
    Leased { session: String },
    /// The bot reported completion; the result is being written to the action cache.
    Finishing,
    /// Completed at this instant (kept for WaitExecution/GetOperation until retention ends).
    Done { at: Instant },
}

/// One operation.
pub(super) struct Op {
    pub instance: String,
    pub digest: Digest,
    pub action: Action,
    pub platform: Properties,
    pub priority: i32,
    /// Registered in `State::inflight` (identical requests merge into it).
    pub mergeable: bool,
    pub tx: watch::Sender<OpSnapshot>,
    pub run: Run,
    /// Times a bot lost this action while running it.
    pub attempts: u32,
    pub queued_at: SystemTime,
    /// Since when no connected bot can run it (queued operations only).
    pub unmatched_since: Option<Instant>,
    /// When a bot was last handed it (for the slowest-actions list).
    pub leased_at: Option<Instant>,
    seq: u64,
}

/// A lease as the server tracks it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct LeaseEntry {
    /// The bot has reported this lease back at least once, so it knows it holds it.
    pub acked: bool,
    /// A client cancelled the operation; the bot is told CANCELLED.
    pub cancelled: bool,
}

/// One bot session.
#[allow(clippy::struct_field_names)]
pub(super) struct Bot {
    pub bot_id: String,
    pub properties: Properties,
    pub last_seen: Instant,
    pub leases: HashMap<String, LeaseEntry>,
    /// Leases this bot reported COMPLETED or CANCELLED lately (newest last, a few kept): a
    /// call still naming one as running was overtaken by a later call and is stale.
    pub finished: VecDeque<String>,
}

impl Bot {
    /// How many finished lease ids a session remembers.
    const FINISHED_KEPT: usize = 8;

    /// Remembers that the bot is done with `id`.
    pub fn finished(&mut self, id: String) {
        if self.finished.len() == Self::FINISHED_KEPT {
            self.finished.pop_front();
        }
        self.finished.push_back(id);
    }
}

/// Everything under the scheduler's lock.
#[derive(Default)]
pub(super) struct State {
    pub ops: HashMap<String, Op>,
    /// (instance, action digest) -> operation name, for merging identical in-flight actions.
    pub inflight: HashMap<(String, Digest), String>,
    /// (priority, arrival) -> operation name; lower priority values run first.
    queue: BTreeSet<(i32, u64, String)>,
    pub bots: HashMap<String, Bot>,
    /// The last actions bots finished, for the status page.
    pub finished: super::stats::Finished,
    seq: u64,
}

impl State {
    /// Adds a new operation and queues it.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        name: &str,
        instance: String,
        digest: Digest,
        action: Action,
        platform: Properties,
        priority: i32,
        mergeable: bool,
    ) -> watch::Receiver<OpSnapshot> {
        let (tx, rx) = watch::channel(OpSnapshot::at(Stage::Queued));
        if mergeable {
            self.inflight
                .insert((instance.clone(), digest), name.to_string());
        }
        let op = Op {
            instance,
            digest,
            action,
            platform,
            priority,
            mergeable,
            tx,
            run: Run::Queued,
            attempts: 0,
            queued_at: SystemTime::now(),
            unmatched_since: None,
            leased_at: None,
            seq: 0,
        };
        self.ops.insert(name.to_string(), op);
        self.enqueue(name);
        rx
    }

    /// Puts an existing operation (back) into the queue.
    pub fn enqueue(&mut self, name: &str) {
        self.seq += 1;
        let seq = self.seq;
        let Some(op) = self.ops.get_mut(name) else {
            return;
        };
        op.run = Run::Queued;
        op.seq = seq;
        op.tx.send_replace(OpSnapshot::at(Stage::Queued));
        self.queue.insert((op.priority, seq, name.to_string()));
    }

    /// Names of queued operations, in queue order.
    pub fn queued(&self) -> impl Iterator<Item = &str> {
        self.queue.iter().map(|(_, _, n)| n.as_str())
    }

    /// Takes the first queued operation a bot with `offer` can run.
    pub fn take_for(&mut self, offer: &Properties) -> Option<String> {
        let key = self
            .queue
            .iter()
            .find(|(_, _, n)| {
                self.ops
                    .get(n)
                    .is_some_and(|op| op.platform.satisfied_by(offer))
            })?
            .clone();
        self.queue.remove(&key);
        Some(key.2)
    }

    /// Marks an operation completed and tells every watcher.
    pub fn finish(&mut self, name: &str, outcome: Outcome) {
        let Some(op) = self.ops.get_mut(name) else {
            return;
        };
        if let Run::Queued = op.run {
            self.queue.remove(&(op.priority, op.seq, name.to_string()));
        }
        op.run = Run::Done { at: Instant::now() };
        if op.mergeable {
            op.mergeable = false;
            let key = (op.instance.clone(), op.digest);
            if self.inflight.get(&key).is_some_and(|n| n == name) {
                self.inflight.remove(&key);
            }
        }
        op.tx.send_replace(OpSnapshot::done(outcome));
    }

    /// After a bot lost an operation: queue it again, or fail it once `max_requeues` is spent.
    /// `counts` is false when the bot never acknowledged the lease (it never ran).
    pub fn requeue_or_fail(&mut self, name: &str, bot_id: &str, counts: bool, max_requeues: u32) {
        let Some(op) = self.ops.get_mut(name) else {
            return;
        };
        if !matches!(op.run, Run::Leased { .. }) {
            return;
        }
        if counts {
            op.attempts += 1;
        }
        let attempts = op.attempts;
        if attempts > max_requeues {
            let error = super::ExecError::BotLost {
                bot: bot_id.to_string(),
                attempts,
            };
            self.finish(
                name,
                Outcome {
                    result: None,
                    cached: false,
                    error: Some(error),
                },
            );
        } else {
            tracing::warn!(
                operation = name,
                attempts,
                bot_id,
                "bot lost the action; requeued"
            );
            self.enqueue(name);
        }
    }
}
