//! What the status page shows about execution: bots, queue and running counts, and the
//! slowest actions finished lately (a bounded list; nothing else keeps finished actions).

use super::Scheduler;
use super::state::Run;
use crate::digest::Digest;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Finished actions remembered for [`Scheduler::slowest_recent`].
const REMEMBERED: usize = 256;
/// How far back "recent" reaches.
const RECENT: Duration = Duration::from_hours(1);

/// Counts of the scheduler's state right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecStats {
    /// Bot sessions open.
    pub bots: usize,
    /// Actions waiting in the queue.
    pub queued: usize,
    /// Actions leased to a bot (or having their result stored).
    pub running: usize,
    /// Actions bots finished since start (with a result or an error).
    pub finished: u64,
}

/// An action a bot finished.
#[derive(Clone, Debug)]
pub struct FinishedAction {
    /// The Action's digest.
    pub digest: Digest,
    /// From the lease being handed out to the bot reporting completion.
    pub ran: Duration,
    /// The command's exit code; `None` when the bot reported an error instead of a result.
    pub exit_code: Option<i32>,
    /// When it finished.
    pub at: Instant,
}

/// The last [`REMEMBERED`] finished actions, oldest first, and how many finished in all.
#[derive(Default)]
pub(super) struct Finished(VecDeque<FinishedAction>, u64);

impl Finished {
    /// Remembers one finished action, forgetting the oldest past the bound.
    pub fn record(&mut self, a: FinishedAction) {
        if self.0.len() == REMEMBERED {
            self.0.pop_front();
        }
        self.0.push_back(a);
        self.1 += 1;
    }

    /// The `n` slowest of those finished within the last hour, slowest first.
    pub fn slowest(&self, n: usize) -> Vec<FinishedAction> {
        let mut v: Vec<FinishedAction> = self
            .0
            .iter()
            .filter(|a| a.at.elapsed() < RECENT)
            .cloned()
            .collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.ran));
        v.truncate(n);
        v
    }
}

impl Scheduler {
    /// Bots, queue and running counts now.
    pub fn stats(&self) -> ExecStats {
        let st = self.lock();
        ExecStats {
            bots: st.bots.len(),
            queued: st.queued().count(),
            running: st
                .ops
                .values()
                .filter(|op| matches!(op.run, Run::Leased { .. } | Run::Finishing))
                .count(),
            finished: st.finished.1,
        }
    }

    /// The `n` slowest actions bots finished in the last hour (among the last 256), slowest
    /// first.
    pub fn slowest_recent(&self, n: usize) -> Vec<FinishedAction> {
        self.lock().finished.slowest(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_list_is_bounded_and_sorted() {
        let mut f = Finished::default();
        let d = crate::digest::DigestFunction::Sha256.digest_of(b"x");
        for i in 0..(REMEMBERED as u64 + 50) {
            f.record(FinishedAction {
                digest: d,
                ran: Duration::from_millis(i % 97),
                exit_code: Some(0),
                at: Instant::now(),
            });
        }
        assert_eq!(f.0.len(), REMEMBERED);
        assert_eq!(
            f.1,
            REMEMBERED as u64 + 50,
            "the total counts past the bound"
        );
        let top = f.slowest(3);
        assert_eq!(top.len(), 3);
        assert_eq!(top[0].ran, Duration::from_millis(96));
        assert!(top[0].ran >= top[1].ran && top[1].ran >= top[2].ran);
    }
}
