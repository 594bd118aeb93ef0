//! Single flight: concurrent misses of one blob make one upstream fetch. The first caller
//! leads (gets a [`Lead`] and fetches); the others follow (wait for the leader's outcome, then
//! read the local store). The table is bounded: past `limit` fetches a new miss waits for room
//! (see [`Flights::room`]) and is refused only when none frees up in time.
//!
//! Concurrency: one mutex around the map, held only to look up, insert or remove.

use crate::digest::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How a finished fetch ended: `Ok(true)` stored, `Ok(false)` the upstream lacks the blob,
/// `Err` a failure (its message, shown to followers).
pub type Outcome = Result<bool, Arc<str>>;

/// Where a follower waits for a leader's outcome.
pub type Slot = watch::Receiver<Option<Outcome>>;

/// The table of fetches in progress.
pub struct Flights {
    map: Mutex<HashMap<Digest, Slot>>,
    limit: usize,
    /// Told whenever a fetch leaves the table.
    freed: tokio::sync::Notify,
}

/// What a caller does about one missing blob.
pub enum Claim {
    /// Fetch it, then call [`Lead::finish`].
    Lead(Lead),
    /// Someone else is fetching it: wait with [`follow`].
    Follow(Slot),
    /// The table is full.
    Full,
}

/// The leader's duty for one digest. Dropped without `finish` (a cancelled fetch), it tells
/// followers the fetch was abandoned so none waits for ever.
pub struct Lead {
    flights: Arc<Flights>,
    digest: Digest,
    tx: Option<watch::Sender<Option<Outcome>>>,
}

impl Flights {
    /// An empty table of at most `limit` fetches.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            limit,
            freed: tokio::sync::Notify::new(),
        })
    }

    /// Waits until the table has room or `deadline` passes; `false` on the deadline. Callers
    /// must hold no [`Lead`] while they wait (theirs could be the fetches that must end).
    pub async fn room(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a fetch ending in between is not missed.
            freed.as_mut().enable();
            if self.len() < self.limit {
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }

    /// [`Self::claim`], waiting for room (until `deadline`) while the table is full.
    pub async fn claim_waiting(
        self: &Arc<Self>,
        digest: Digest,
        deadline: tokio::time::Instant,
    ) -> Claim {
        loop {
            match self.claim(digest) {
                Claim::Full if self.room(deadline).await => {}
                claim => return claim,
            }
        }
    }

    /// The bound given at construction.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Leads or follows the fetch of `digest`.
    pub fn claim(self: &Arc<Self>, digest: Digest) -> Claim {
        let mut map = self.map.lock().expect("flights lock");
        if let Some(rx) = map.get(&digest) {
            return Claim::Follow(rx.clone());
        }
        if map.len() >= self.limit {
            return Claim::Full;
        }
        let (tx, rx) = watch::channel(None);
        map.insert(digest, rx);
        Claim::Lead(Lead {
            flights: self.clone(),
            digest,
            tx: Some(tx),
        })
    }

    /// Fetches in progress.
    pub fn len(&self) -> usize {
        self.map.lock().expect("flights lock").len()
    }

    /// Whether no fetch is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Lead {
    /// The digest this lead fetches.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Publishes the outcome to the followers and leaves the table.
    pub fn finish(mut self, outcome: Outcome) {
        self.publish(outcome);
    }

    fn publish(&mut self, outcome: Outcome) {
        // Removed before publishing: a caller arriving after this sees the store, not us.
        self.flights
            .map
            .lock()
            .expect("flights lock")
            .remove(&self.digest);
        self.flights.freed.notify_waiters();
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(outcome));
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.publish(Err("the fetch was abandoned".into()));
        }
    }
}

/// Waits for a leader's outcome.
pub async fn follow(mut slot: Slot) -> Outcome {
    match slot.wait_for(Option::is_some).await {
        Ok(v) => v.clone().expect("waited for Some"),
        Err(_) => Err("the fetch was abandoned".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[tokio::test]
    async fn one_leader_many_followers_and_a_bound() {
        let flights = Flights::new(1);
        let a = DigestFunction::Sha256.digest_of(b"a");
        let b = DigestFunction::Sha256.digest_of(b"b");
        let Claim::Lead(lead) = flights.claim(a) else {
            panic!("first claim leads")
        };
        let Claim::Follow(slot) = flights.claim(a) else {
            panic!("second claim follows")
        };
        assert!(matches!(flights.claim(b), Claim::Full));
        let waiter = tokio::spawn(follow(slot));
        lead.finish(Ok(true));
        assert_eq!(waiter.await.unwrap(), Ok(true));
        assert!(flights.is_empty());
        assert!(matches!(flights.claim(b), Claim::Lead(_)));
    }

    #[tokio::test]
    async fn a_claim_on_a_full_table_waits_for_room_until_its_deadline() {
        use tokio::time::{Duration, Instant};
        let flights = Flights::new(1);
        let a = DigestFunction::Sha256.digest_of(b"a");
        let b = DigestFunction::Sha256.digest_of(b"b");
        let Claim::Lead(lead) = flights.claim(a) else {
            panic!("first claim leads")
        };
        // No room before the deadline: Full.
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(matches!(flights.claim_waiting(b, soon).await, Claim::Full));
        // Room made while waiting: the claim leads.
        let later = Instant::now() + Duration::from_secs(30);
        let f = flights.clone();
        let waiter =
            tokio::spawn(async move { matches!(f.claim_waiting(b, later).await, Claim::Lead(_)) });
        tokio::task::yield_now().await;
        lead.finish(Ok(true));
        assert!(
            waiter.await.unwrap(),
            "the waiting claim leads once the first fetch ends"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let flights = Flights::new(4);
        let a = DigestFunction::Sha256.digest_of(b"a");
        let Claim::Lead(lead) = flights.claim(a) else {
            panic!()
        };
        let Claim::Follow(slot) = flights.claim(a) else {
            panic!()
        };
        drop(lead);
        assert!(follow(slot).await.is_err());
        assert!(flights.is_empty());
    }
}
