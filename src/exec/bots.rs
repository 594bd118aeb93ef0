//! Bot sessions and leases, as the Remote Worker API models them: a bot creates a session, then
//! keeps calling UpdateBotSession with the state of its leases. Each call may hand out one new
//! lease (one action per session; a worker with N slots opens N sessions), waits up to
//! `bot_poll` for work or a cancellation, and doubles as the bot's heartbeat.

use super::operation::{Outcome, Stage};
use super::platform::Properties;
use super::state::{Bot, LeaseEntry, Run};
use super::{ExecError, OpSnapshot, Scheduler};
use crate::digest::Digest;
use crate::proto::google::rpc;
use crate::proto::reapi::{Action, ActionResult};
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;
use tokio::time::Instant;

/// Lease states of the Remote Worker API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Offered to the bot, not yet acknowledged.
    Pending,
    /// The bot is running it.
    Active,
    /// The bot finished it (result and status attached).
    Completed,
    /// The server withdrew it (or the bot gave it up).
    Cancelled,
}

/// A lease as a bot reports it.
#[derive(Clone, Debug)]
pub struct LeaseReport {
    /// Lease id (the operation name).
    pub id: String,
    /// The bot's view of the lease.
    pub state: LeaseState,
    /// For completed leases: the status of the run (OK, DEADLINE_EXCEEDED, ...).
    pub status: Option<rpc::Status>,
    /// For completed leases: the action's result.
    pub result: Option<ActionResult>,
}

/// A lease as the server tells a bot about it.
#[derive(Clone, Debug)]
pub struct LeaseView {
    /// Lease id (the operation name).
    pub id: String,
    /// What the bot should do.
    pub state: LeaseState,
    /// For new (PENDING) leases: the Action to run, with its effective timeout.
    pub action: Option<Action>,
    /// The digest function of the Action's digests (and of the outputs to report).
    pub function: crate::digest::DigestFunction,
}

struct Completion {
    name: String,
    instance: String,
    digest: Digest,
    write_ac: bool,
    queued_at: SystemTime,
    leased_at: Option<Instant>,
    bot_id: String,
    status: Option<rpc::Status>,
    result: Option<ActionResult>,
}

impl Scheduler {
    /// Opens a session for a bot advertising `properties`; returns the session name.
    pub fn create_bot_session(&self, parent: &str, bot_id: &str, properties: Properties) -> String {
        let id = uuid::Uuid::new_v4();
        let name = if parent.is_empty() {
            format!("botSessions/{id}")
        } else {
            format!("{parent}/botSessions/{id}")
        };
        let bot = Bot {
            bot_id: bot_id.to_string(),
            properties,
            last_seen: Instant::now(),
            leases: HashMap::new(),
            finished: std::collections::VecDeque::new(),
        };
        self.lock().bots.insert(name.clone(), bot);
        tracing::info!(session = %name, bot_id, "bot session created");
        self.wake();
        name
    }

    /// Applies a bot's report, then answers with its leases, waiting up to `bot_poll` for a
    /// new lease or a cancellation when there is nothing new to say.
    pub async fn update_bot_session(
        &self,
        session: &str,
        properties: Properties,
        reports: Vec<LeaseReport>,
    ) -> Result<Vec<LeaseView>, ExecError> {
        // Work is offered only in answer to a call in which the bot says it is idle. A heartbeat
        // sent while running a lease may be abandoned by the bot once the lease finishes; a new
        // lease put in that answer would never be seen (and would come back as lost).
        let idle = !reports
            .iter()
            .any(|r| matches!(r.state, LeaseState::Pending | LeaseState::Active));
        let (completions, unknown) = self.apply_reports(session, properties, reports)?;
        for c in completions {
            self.complete(c).await;
        }
        let deadline = Instant::now() + self.shared.config.bot_poll;
        let mut wake = self.shared.wake.subscribe();
        loop {
            if let Some(views) = self.answer(session, &unknown, idle, Instant::now() >= deadline)? {
                return Ok(views);
            }
            tokio::select! {
                _ = wake.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Records what the bot says about its leases. Returns completions to finish and lease ids
    /// the bot holds that the server no longer knows (they are answered CANCELLED).
    fn apply_reports(
        &self,
        session: &str,
        properties: Properties,
        reports: Vec<LeaseReport>,
    ) -> Result<(Vec<Completion>, Vec<String>), ExecError> {
        let max_requeues = self.shared.config.max_requeues;
        let mut st = self.lock();
        let bot = st
            .bots
            .get_mut(session)
            .ok_or_else(|| ExecError::BotSessionNotFound(session.to_string()))?;
        bot.last_seen = Instant::now();
        bot.properties = properties;
        // Calls of one bot run concurrently, so a heartbeat sent before the bot finished a lease
        // can be handled after the call that reported it finished. Such a stale report says
        // nothing about the bot's leases now (in particular it does not know of newer ones).
        let stale = reports.iter().any(|r| {
            matches!(r.state, LeaseState::Pending | LeaseState::Active)
                && bot.finished.contains(&r.id)
        });
        if stale {
            return Ok((Vec::new(), Vec::new()));
        }
        let bot_id = bot.bot_id.clone();
        let reported: HashSet<String> = reports.iter().map(|r| r.id.clone()).collect();
        let mut unknown = Vec::new();
        let mut done = Vec::new();
        let mut lost = Vec::new();
        for r in reports {
            let entry = bot.leases.get(&r.id).copied();
            match (r.state, entry) {
                (LeaseState::Completed, Some(e)) => {
                    bot.leases.remove(&r.id);
                    bot.finished(r.id.clone());
                    if !e.cancelled {
                        done.push(r);
                    }
                }
                (LeaseState::Cancelled, Some(e)) => {
                    bot.leases.remove(&r.id);
                    bot.finished(r.id.clone());
                    if !e.cancelled {
                        lost.push((r.id, true));
                    }
                }
                (LeaseState::Pending | LeaseState::Active, Some(_)) => {
                    bot.leases.get_mut(&r.id).expect("present").acked = true;
                }
                (LeaseState::Pending | LeaseState::Active, None) => unknown.push(r.id),
                (LeaseState::Completed | LeaseState::Cancelled, None) => {}
            }
        }
        // Leases the bot no longer mentions: it never saw them (answer lost) or dropped them.
        let forgotten: Vec<(String, LeaseEntry)> = bot
            .leases
            .iter()
            .filter(|(id, _)| !reported.contains(*id))
            .map(|(id, e)| (id.clone(), *e))
            .collect();
        for (id, e) in forgotten {
            bot.leases.remove(&id);
            bot.finished(id.clone());
            if !e.cancelled {
                lost.push((id, e.acked));
            }
        }
        let requeued = !lost.is_empty();
        for (id, counts) in lost {
            st.requeue_or_fail(&id, &bot_id, counts, max_requeues);
        }
        let mut completions = Vec::new();
        for r in done {
            let Some(op) = st.ops.get_mut(&r.id) else {
                continue;
            };
            if op.run
                != (Run::Leased {
                    session: session.to_string(),
                })
            {
                continue;
            }
            op.run = Run::Finishing;
            completions.push(Completion {
                name: r.id,
                instance: op.instance.clone(),
                digest: op.digest,
                write_ac: !op.action.do_not_cache,
                queued_at: op.queued_at,
                leased_at: op.leased_at,
                bot_id: bot_id.clone(),
                status: r.status,
                result: r.result,
            });
        }
        drop(st);
        if requeued {
            self.wake();
        }
        Ok((completions, unknown))
    }

    /// The bot's leases now, handing out a new one if it is `idle` and holds none. `None` means
    /// nothing new: keep waiting (unless `last`).
    fn answer(
        &self,
        session: &str,
        unknown: &[String],
        idle: bool,
        last: bool,
    ) -> Result<Option<Vec<LeaseView>>, ExecError> {
        let mut st = self.lock();
        let bot = st
            .bots
            .get(session)
            .ok_or_else(|| ExecError::BotSessionNotFound(session.to_string()))?;
        let mut news = !unknown.is_empty();
        let mut views: Vec<LeaseView> = unknown
            .iter()
            .map(|id| LeaseView {
                id: id.clone(),
                state: LeaseState::Cancelled,
                action: None,
                function: crate::digest::DigestFunction::Sha256,
            })
            .collect();
        for (id, e) in &bot.leases {
            let state = if e.cancelled {
                LeaseState::Cancelled
            } else {
                LeaseState::Active
            };
            news |= e.cancelled;
            views.push(LeaseView {
                id: id.clone(),
                state,
                action: None,
                function: crate::digest::DigestFunction::Sha256,
            });
        }
        if idle && bot.leases.is_empty() {
            let offer = bot.properties.clone();
            if let Some(name) = st.take_for(&offer) {
                let op = st.ops.get_mut(&name).expect("queued operations exist");
                op.run = Run::Leased {
                    session: session.to_string(),
                };
                op.unmatched_since = None;
                op.leased_at = Some(Instant::now());
                op.tx.send_replace(OpSnapshot::at(Stage::Executing));
                views.push(LeaseView {
                    id: name.clone(),
                    state: LeaseState::Pending,
                    action: Some(op.action.clone()),
                    function: op.digest.function,
                });
                let bot = st.bots.get_mut(session).expect("checked");
                // A requeued lease can come back to the same session: it is live again.
                bot.finished.retain(|f| *f != name);
                bot.leases.insert(name, LeaseEntry::default());
                news = true;
            }
        }
        Ok((news || last).then_some(views))
    }

    /// Finishes an operation a bot completed: fills metadata, writes the action cache for a
    /// successful cacheable run, then publishes COMPLETED.
    async fn complete(&self, c: Completion) {
        let status = c.status.unwrap_or_default();
        let mut result = c.result;
        if let Some(r) = result.as_mut() {
            let meta = r.execution_metadata.get_or_insert_with(Default::default);
            meta.queued_timestamp = Some(c.queued_at.into());
            if meta.worker.is_empty() {
                meta.worker.clone_from(&c.bot_id);
            }
        }
        let ok = status.code == 0;
        if ok
            && c.write_ac
            && let Some(r) = result.as_ref().filter(|r| r.exit_code == 0)
            && let Err(e) = self.shared.ac.update(&c.instance, &c.digest, r).await
        {
            tracing::warn!(error = %e, action = %c.digest, "could not store the action result");
        }
        let error = if !ok {
            Some(ExecError::Bot {
                code: status.code,
                message: status.message,
                details: status.details,
            })
        } else if result.is_none() {
            let message = "bot completed the lease without a result".into();
            Some(ExecError::Bot {
                code: RPC_INTERNAL,
                message,
                details: vec![],
            })
        } else {
            None
        };
        let mut st = self.lock();
        st.finished.record(super::FinishedAction {
            digest: c.digest,
            ran: c.leased_at.map(|t| t.elapsed()).unwrap_or_default(),
            exit_code: result
                .as_ref()
                .filter(|_| error.is_none())
                .map(|r| r.exit_code),
            at: Instant::now(),
        });
        st.finish(
            &c.name,
            Outcome {
                result,
                cached: false,
                error,
            },
        );
    }
}

/// google.rpc.Code INTERNAL (the exec layer does not depend on tonic).
const RPC_INTERNAL: i32 = 13;
