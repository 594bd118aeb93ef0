//! Scheduler tests without gRPC: a fake bot drives leases through the public API.

use super::platform::Properties;
use super::*;
use crate::digest::DigestFunction;
use crate::proto::reapi::{Action, Command, Directory};
use crate::storage::{MemoryStore, Store};
use bytes::Bytes;
use prost::Message;

fn scheduler(max_requeues: u32) -> (Scheduler, Cas) {
    scheduler_polling(max_requeues, Duration::from_millis(20))
}

fn scheduler_polling(max_requeues: u32, bot_poll: Duration) -> (Scheduler, Cas) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 30));
    let cas = Cas::new(store.clone());
    let ac = ActionCache::new(cas.clone(), store);
    let config = SchedulerConfig {
        bot_poll,
        max_requeues,
        ..Default::default()
    };
    (Scheduler::new(cas.clone(), ac, config), cas)
}

async fn put(cas: &Cas, m: &impl Message) -> Digest {
    let bytes = m.encode_to_vec();
    let d = DigestFunction::Sha256.digest_of(&bytes);
    cas.put(&d, Bytes::from(bytes)).await.unwrap();
    d
}

async fn action(cas: &Cas, arg: &str, do_not_cache: bool) -> Digest {
    let command = put(
        cas,
        &Command {
            arguments: vec![arg.into()],
            ..Default::default()
        },
    )
    .await;
    let root = put(cas, &Directory::default()).await;
    let action = Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(root.to_proto()),
        do_not_cache,
        ..Default::default()
    };
    put(cas, &action).await
}

fn params(d: Digest, priority: i32) -> ExecuteParams {
    ExecuteParams {
        instance: String::new(),
        action_digest: d,
        skip_cache_lookup: false,
        priority,
    }
}

async fn take(s: &Scheduler, session: &str) -> Option<LeaseView> {
    let views = s
        .update_bot_session(session, Properties::default(), vec![])
        .await
        .unwrap();
    views.into_iter().find(|v| v.state == LeaseState::Pending)
}

#[tokio::test]
async fn priority_orders_the_queue() {
    let (s, cas) = scheduler(2);
    let low = s
        .execute(params(action(&cas, "low", false).await, 10))
        .await
        .unwrap();
    let high = s
        .execute(params(action(&cas, "high", false).await, -5))
        .await
        .unwrap();
    let default = s
        .execute(params(action(&cas, "default", false).await, 0))
        .await
        .unwrap();
    let bot = s.create_bot_session("", "b", Properties::default());
    let mut order = vec![];
    for _ in 0..3 {
        let lease = take(&s, &bot).await.unwrap();
        order.push(lease.id.clone());
        let report = LeaseReport {
            id: lease.id,
            state: LeaseState::Completed,
            status: None,
            result: Some(crate::proto::reapi::ActionResult::default()),
        };
        s.update_bot_session(&bot, Properties::default(), vec![report])
            .await
            .unwrap();
    }
    assert_eq!(order, [high.name, default.name, low.name]);
}

#[tokio::test]
async fn identical_actions_merge_unless_do_not_cache() {
    let (s, cas) = scheduler(2);
    let d = action(&cas, "same", false).await;
    let a = s.execute(params(d, 0)).await.unwrap();
    let b = s.execute(params(d, 0)).await.unwrap();
    assert_eq!(a.name, b.name);
    let n = action(&cas, "uncached", true).await;
    let x = s.execute(params(n, 0)).await.unwrap();
    let y = s.execute(params(n, 0)).await.unwrap();
    assert_ne!(x.name, y.name);
}

#[tokio::test]
async fn lost_leases_are_requeued_a_bounded_number_of_times() {
    let (s, cas) = scheduler(1);
    let mut op = s
        .execute(params(action(&cas, "flaky", false).await, 0))
        .await
        .unwrap();
    for attempt in 0..2 {
        let bot = s.create_bot_session("", &format!("bot{attempt}"), Properties::default());
        let lease = take(&s, &bot).await.unwrap();
        // Acknowledge, then vanish.
        let ack = LeaseReport {
            id: lease.id.clone(),
            state: LeaseState::Active,
            status: None,
            result: None,
        };
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            s.update_bot_session(&bot, Properties::default(), vec![ack]),
        )
        .await;
        // The scheduler reads tokio's clock: an hour passes at once, and the bot is lost.
        tokio::time::pause();
        tokio::time::advance(Duration::from_hours(1)).await;
        tokio::time::resume();
        s.reap(tokio::time::Instant::now());
    }
    let snap = op.wait_done(Duration::from_secs(5)).await;
    let err = snap
        .outcome
        .unwrap()
        .error
        .as_ref()
        .map(ToString::to_string)
        .unwrap();
    assert!(err.contains("lost with its bot 2 time"), "{err}");
}

#[tokio::test]
async fn cancelling_a_queued_operation_completes_it() {
    let (s, cas) = scheduler(2);
    let mut op = s
        .execute(params(action(&cas, "c", false).await, 0))
        .await
        .unwrap();
    s.cancel(&op.name).unwrap();
    let snap = op.wait_done(Duration::from_secs(1)).await;
    assert!(matches!(
        snap.outcome.unwrap().error,
        Some(ExecError::Cancelled)
    ));
    let bot = s.create_bot_session("", "b", Properties::default());
    assert!(take(&s, &bot).await.is_none(), "nothing left to run");
}

#[tokio::test]
async fn a_heartbeat_answer_never_carries_new_work() {
    // A bot's heartbeat (lease ACTIVE) can still be waiting on the server when the bot reports
    // the lease COMPLETED on another call and abandons the heartbeat. Work handed out in the
    // heartbeat's answer would never reach the bot and would come back as lost.
    let (s, cas) = scheduler_polling(2, Duration::from_secs(1));
    let first = s
        .execute(params(action(&cas, "first", false).await, 0))
        .await
        .unwrap();
    let bot = s.create_bot_session("", "b", Properties::default());
    let lease = take(&s, &bot).await.unwrap();
    assert_eq!(lease.id, first.name);
    let s = Arc::new(s);
    let heartbeat = {
        let s = Arc::clone(&s);
        let (bot, id) = (bot.clone(), lease.id.clone());
        tokio::spawn(async move {
            let active = LeaseReport {
                id,
                state: LeaseState::Active,
                status: None,
                result: None,
            };
            s.update_bot_session(&bot, Properties::default(), vec![active])
                .await
                .unwrap()
        })
    };
    // Until the heartbeat call waits for news (it subscribes to the wake counter first).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.shared.wake.receiver_count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the heartbeat call never waited"
        );
        tokio::task::yield_now().await;
    }
    let done = LeaseReport {
        id: lease.id,
        state: LeaseState::Completed,
        status: None,
        result: Some(crate::proto::reapi::ActionResult::default()),
    };
    // Nothing is queued, so this call waits; the bot gives up on it.
    let _ = tokio::time::timeout(
        Duration::from_millis(50),
        s.update_bot_session(&bot, Properties::default(), vec![done]),
    )
    .await;
    let second = s
        .execute(params(action(&cas, "second", false).await, 0))
        .await
        .unwrap();
    let views = heartbeat.await.unwrap();
    assert!(
        views.iter().all(|v| v.state != LeaseState::Pending),
        "heartbeat answer offered work: {views:?}"
    );
    let next = take(&s, &bot).await.expect("the idle call gets the work");
    assert_eq!(next.id, second.name);
}

#[tokio::test]
async fn a_heartbeat_overtaken_by_the_completion_is_ignored() {
    // The heartbeat for the first lease reaches the server only after the call that completed
    // that lease and took the next one. It must not make the next lease look forgotten.
    let (s, cas) = scheduler(2);
    let first = s
        .execute(params(action(&cas, "one", false).await, 0))
        .await
        .unwrap();
    let mut second = s
        .execute(params(action(&cas, "two", false).await, 0))
        .await
        .unwrap();
    let bot = s.create_bot_session("", "b", Properties::default());
    let lease = take(&s, &bot).await.unwrap();
    assert_eq!(lease.id, first.name);
    let report = |id: &str, state| LeaseReport {
        id: id.to_string(),
        state,
        status: None,
        result: (state == LeaseState::Completed).then(crate::proto::reapi::ActionResult::default),
    };
    let views = s
        .update_bot_session(
            &bot,
            Properties::default(),
            vec![report(&lease.id, LeaseState::Completed)],
        )
        .await
        .unwrap();
    let next = views
        .iter()
        .find(|v| v.state == LeaseState::Pending)
        .expect("the completing call gets the next lease");
    assert_eq!(next.id, second.name);
    // The stale heartbeat.
    s.update_bot_session(
        &bot,
        Properties::default(),
        vec![report(&lease.id, LeaseState::Active)],
    )
    .await
    .unwrap();
    let other = s.create_bot_session("", "other", Properties::default());
    assert!(
        take(&s, &other).await.is_none(),
        "the second action was requeued although its bot holds it"
    );
    s.update_bot_session(
        &bot,
        Properties::default(),
        vec![report(&second.name, LeaseState::Completed)],
    )
    .await
    .unwrap();
    let snap = second.wait_done(Duration::from_secs(5)).await;
    assert!(snap.outcome.unwrap().error.is_none());
}

/// `local-first`'s question: an idle matching bot counts only while the queued actions it
/// could take do not already claim it; a busy bot or one that does not match never counts.
#[tokio::test]
async fn idle_bot_for_counts_idle_matching_bots_against_the_queue() {
    let (s, cas) = scheduler(2);
    let any = Properties::default();
    let gpu = Properties(vec![("gpu".into(), "1".into())]);
    assert!(!s.idle_bot_for(&any), "no bot at all");
    let bot = s.create_bot_session("", "bot-1", any.clone());
    assert!(s.idle_bot_for(&any));
    assert!(!s.idle_bot_for(&gpu), "the bot does not offer gpu=1");
    let a = action(&cas, "a", false).await;
    assert_eq!(s.platform_of(&a).await.unwrap(), any);
    s.execute(params(a, 0)).await.unwrap();
    assert!(
        !s.idle_bot_for(&any),
        "the queued action claims the idle bot"
    );
    assert!(take(&s, &bot).await.is_some());
    assert!(!s.idle_bot_for(&any), "the bot is busy");
    s.create_bot_session("", "bot-2", any.clone());
    assert!(s.idle_bot_for(&any));
}

/// A bot silent for longer than `bot_timeout` (gone, not yet reaped) is not an idle bot.
#[tokio::test(start_paused = true)]
async fn idle_bot_for_ignores_a_silent_bot() {
    let (s, _) = scheduler(2);
    let any = Properties::default();
    s.create_bot_session("", "bot-1", any.clone());
    assert!(s.idle_bot_for(&any));
    tokio::time::advance(s.config().bot_timeout + Duration::from_secs(1)).await;
    assert!(!s.idle_bot_for(&any), "silent past bot_timeout");
}
