//! The lease life cycle, driven statement by statement: claim order, stale acks, rescue, release, promotion,
//! heartbeats, pause, cancel, dead letters.

use std::time::Duration;

use crate::common::*;
use herald::queue::dead_letters::{self, DeadLetterFilter};
use herald::queue::lease::{self, AttemptError, Settled, Settlement, WorkerIdentity};
use herald::queue::{JobState, Priority, QueueError, admin};
use serde_json::json;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);

fn error(attempt: i32, message: &str) -> AttemptError {
    AttemptError {
        attempt,
        kind: "error",
        message: message.into(),
        at: chrono::Utc::now(),
    }
}

/// Claims the next job of queue `q` for a fresh (unregistered) worker.
async fn claim_one(db: &TestDb, q: &str) -> lease::ClaimedJob {
    let mut claimed = lease::claim(&db.pool, &queue(q), 1, LEASE, Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "one job to claim in {q}");
    claimed.remove(0)
}

async fn expire_leases(db: &TestDb) {
    sqlx::query("UPDATE herald_jobs SET lease_expires_at = now() - interval '1 second' WHERE lease_token IS NOT NULL")
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn claim_takes_higher_priority_first_then_oldest() {
    let db = TestDb::new().await;
    let low = db
        .enqueue((0..5).map(|_| job("q", "k", json!({}))).collect())
        .await;
    let high = db
        .enqueue(vec![
            job("q", "k", json!({})).priority(Priority::new(5).unwrap()),
        ])
        .await;
    let claimed = lease::claim(&db.pool, &queue("q"), 3, LEASE, Uuid::new_v4())
        .await
        .unwrap();
    let ids: Vec<i64> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![high[0], low[0], low[1]]);
    assert!(claimed.iter().all(|j| j.attempt == 1));
    assert!(
        claimed
            .windows(2)
            .all(|w| w[0].lease_token == w[1].lease_token),
        "one token per claim batch"
    );
}

#[tokio::test]
async fn a_job_that_waited_longer_than_the_aging_rule_beats_newer_urgent_work() {
    let db = TestDb::new().await;
    // Aging 60 s per level: a priority-0 job due 10 minutes ago outranks a priority-9 job due now.
    let old = db
        .enqueue(vec![
            job("q", "k", json!({})).run_at(chrono::Utc::now() - chrono::Duration::minutes(10)),
        ])
        .await;
    db.enqueue(vec![
        job("q", "k", json!({})).priority(Priority::new(9).unwrap()),
    ])
    .await;
    let claimed = lease::claim(&db.pool, &queue("q"), 1, LEASE, Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(claimed[0].id, old[0]);
}

#[tokio::test]
async fn a_claimed_job_is_not_claimed_again_and_other_queues_are_untouched() {
    let db = TestDb::new().await;
    db.enqueue(vec![job("q", "k", json!({})), job("other", "k", json!({}))])
        .await;
    assert_eq!(
        lease::claim(&db.pool, &queue("q"), 10, LEASE, Uuid::new_v4())
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        lease::claim(&db.pool, &queue("q"), 10, LEASE, Uuid::new_v4())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_stale_ack_is_rejected_after_the_lease_was_rescued_and_reclaimed() {
    let db = TestDb::new().await;
    db.enqueue(vec![job("q", "k", json!({}))]).await;
    let presumed_dead = claim_one(&db, "q").await;
    expire_leases(&db).await;
    let rescue = lease::rescue(&db.pool, LEASE).await.unwrap();
    assert_eq!((rescue.returned, rescue.dead), (1, 0));
    let second = claim_one(&db, "q").await;
    assert_eq!(second.attempt, 2, "the rescued attempt counted");

    // The worker that was presumed dead finally acks: nothing happens.
    let late = lease::settle(
        &db.pool,
        &[(
            presumed_dead.id,
            presumed_dead.lease_token,
            Settlement::Completed,
        )],
        LEASE,
    )
    .await
    .unwrap();
    assert!(late.is_empty(), "stale ack rejected");
    assert_eq!(live_jobs(&db.pool).await, 1);

    let current = lease::settle(
        &db.pool,
        &[(second.id, second.lease_token, Settlement::Completed)],
        LEASE,
    )
    .await
    .unwrap();
    assert_eq!(current, vec![(second.id, Settled::Completed)]);
    assert_eq!(completions(&db.pool).await, (1, 1));
    let errors: serde_json::Value = sqlx::query_scalar("SELECT errors FROM herald_job_history")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        errors[0]["kind"], "lease_expired",
        "history keeps why attempt 1 ended"
    );
}

#[tokio::test]
async fn completion_moves_the_job_from_the_hot_table_to_history() {
    let db = TestDb::new().await;
    db.enqueue(vec![job("q", "k", json!({"x": 1}))]).await;
    let claimed = claim_one(&db, "q").await;
    lease::settle(
        &db.pool,
        &[(claimed.id, claimed.lease_token, Settlement::Completed)],
        LEASE,
    )
    .await
    .unwrap();
    assert_eq!(live_jobs(&db.pool).await, 0);
    let view = admin::find_job(&db.pool, claimed.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.state, JobState::Completed);
    assert_eq!(view.payload, json!({"x": 1}));
    assert!(view.claimed_at.is_some() && view.finished_at.is_some());
}

#[tokio::test]
async fn retry_schedules_the_next_attempt_and_the_last_failure_dead_letters_with_every_error() {
    let db = TestDb::new().await;
    db.enqueue(vec![job("q", "k", json!({})).max_attempts(2)])
        .await;
    let first = claim_one(&db, "q").await;
    let retry = Settlement::Retry {
        delay: Duration::from_secs(3600),
        error: error(1, "boom 1"),
    };
    let settled = lease::settle(&db.pool, &[(first.id, first.lease_token, retry)], LEASE)
        .await
        .unwrap();
    assert_eq!(settled, vec![(first.id, Settled::Retrying)]);
    let view = admin::find_job(&db.pool, first.id).await.unwrap().unwrap();
    assert_eq!(view.state, JobState::Scheduled);
    let wait = view.run_at.unwrap() - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::minutes(59) && wait <= chrono::Duration::minutes(60),
        "run_at = now + delay"
    );
    assert!(
        lease::claim(&db.pool, &queue("q"), 1, LEASE, Uuid::new_v4())
            .await
            .unwrap()
            .is_empty()
    );

    sqlx::query("UPDATE herald_jobs SET run_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(lease::promote(&db.pool, 100).await.unwrap().promoted, 1);
    let second = claim_one(&db, "q").await;
    let retry = Settlement::Retry {
        delay: Duration::from_millis(10),
        error: error(2, "boom 2"),
    };
    let settled = lease::settle(&db.pool, &[(second.id, second.lease_token, retry)], LEASE)
        .await
        .unwrap();
    assert_eq!(
        settled,
        vec![(second.id, Settled::Dead)],
        "attempts spent: dead, not retried"
    );

    let letters = dead_letters::list(&db.pool, &DeadLetterFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    let messages: Vec<&str> = letters[0]
        .errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, vec!["boom 1", "boom 2"]);
    assert_eq!(letters[0].reason, "boom 2");
    assert_eq!(live_jobs(&db.pool).await, 0);
}

#[tokio::test]
async fn a_permanent_failure_goes_straight_to_the_dead_letters() {
    let db = TestDb::new().await;
    db.enqueue(vec![job("q", "k", json!({}))]).await;
    let claimed = claim_one(&db, "q").await;
    let dead = Settlement::Dead {
        error: error(1, "bad address"),
    };
    let settled = lease::settle(&db.pool, &[(claimed.id, claimed.lease_token, dead)], LEASE)
        .await
        .unwrap();
    assert_eq!(settled, vec![(claimed.id, Settled::Dead)]);
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_dead_letters").await,
        1
    );
    assert_eq!(
        admin::find_job(&db.pool, claimed.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Dead
    );
}

#[tokio::test]
async fn rescue_of_a_last_attempt_dead_letters_it() {
    let db = TestDb::new().await;
    db.enqueue(vec![job("q", "k", json!({})).max_attempts(1)])
        .await;
    lease::claim(&db.pool, &queue("q"), 1, LEASE, Uuid::new_v4())
        .await
        .unwrap();
    expire_leases(&db).await;
    let rescue = lease::rescue(&db.pool, LEASE).await.unwrap();
    assert_eq!((rescue.returned, rescue.dead), (0, 1));
    let letters = dead_letters::list(&db.pool, &DeadLetterFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(letters[0].reason, "lease expired on the last attempt");
}

#[tokio::test]
async fn release_refunds_the_attempt_and_makes_the_job_claimable_at_once() {
    let db = TestDb::new().await;
    db.enqueue(vec![job("q", "k", json!({}))]).await;
    let claimed = claim_one(&db, "q").await;
    assert_eq!(
        lease::release(&db.pool, &[(claimed.id, claimed.lease_token)])
            .await
            .unwrap(),
        1
    );
    let again = claim_one(&db, "q").await;
    assert_eq!((again.id, again.attempt), (claimed.id, 1));
    assert_eq!(
        lease::release(&db.pool, &[(claimed.id, claimed.lease_token)])
            .await
            .unwrap(),
        0,
        "stale token"
    );
}

#[tokio::test]
async fn promote_makes_due_jobs_available_and_reports_the_next_due_time() {
    let db = TestDb::new().await;
    let soon = chrono::Utc::now() + chrono::Duration::seconds(30);
    db.enqueue(vec![
        job("q", "k", json!({})).run_at(soon),
        job("q", "k", json!({})),
    ])
    .await;
    sqlx::query("INSERT INTO herald_jobs (queue, kind, payload, run_at, scheduled, sort_key, max_attempts, timeout_ms) \
                 VALUES ('q', 'k', '{}', now() - interval '1 second', true, now(), 3, 1000)")
        .execute(&db.pool)
        .await
        .unwrap();
    let pass = lease::promote(&db.pool, 100).await.unwrap();
    assert_eq!(pass.promoted, 1);
    let next = pass.next_run_at.expect("a job is still scheduled");
    assert!((next - soon).num_milliseconds().abs() < 5);
    assert_eq!(
        lease::claim(&db.pool, &queue("q"), 10, LEASE, Uuid::new_v4())
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn a_heartbeating_worker_keeps_its_leases_and_a_silent_one_loses_them() {
    let db = TestDb::new().await;
    db.enqueue(vec![job("q", "k", json!({})), job("q", "k", json!({}))])
        .await;
    let alive = WorkerIdentity::of_this_process(vec!["q".into()], 4);
    let silent = WorkerIdentity::of_this_process(vec!["q".into()], 4);
    lease::heartbeat(&db.pool, &alive, LEASE).await.unwrap();
    lease::heartbeat(&db.pool, &silent, LEASE).await.unwrap();
    lease::claim(&db.pool, &queue("q"), 1, LEASE, alive.id)
        .await
        .unwrap();
    lease::claim(&db.pool, &queue("q"), 1, LEASE, silent.id)
        .await
        .unwrap();
    expire_leases(&db).await; // both lease terms have passed
    sqlx::query("UPDATE herald_workers SET heartbeat_at = now() - interval '1 hour' WHERE id = $1")
        .bind(silent.id)
        .execute(&db.pool)
        .await
        .unwrap();

    let pass = lease::rescue(&db.pool, LEASE).await.unwrap();
    assert_eq!(pass.returned, 1, "only the silent worker's job is rescued");
    let still_held: Option<Uuid> =
        sqlx::query_scalar("SELECT leased_by FROM herald_jobs WHERE lease_token IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(still_held, Some(alive.id));

    let fleet = admin::list_workers(&db.pool).await.unwrap();
    assert_eq!(fleet.len(), 2);
    assert_eq!(
        lease::reap_workers(&db.pool, Duration::from_secs(60))
            .await
            .unwrap(),
        1,
        "the silent one"
    );
    lease::deregister(&db.pool, alive.id).await.unwrap();
    assert!(admin::list_workers(&db.pool).await.unwrap().is_empty());
    assert_eq!(
        lease::rescue(&db.pool, LEASE).await.unwrap().returned,
        1,
        "a worker that left holds nothing"
    );
}

#[tokio::test]
async fn a_paused_queue_yields_nothing_until_resumed_and_stats_show_it() {
    let db = TestDb::new().await;
    db.enqueue(vec![
        job("q", "k", json!({})),
        job("q", "k", json!({})).run_at(chrono::Utc::now() + chrono::Duration::hours(1)),
    ])
    .await;
    admin::set_paused(&db.pool, &herald::audit::Actor::cli(), &queue("q"), true)
        .await
        .unwrap();
    assert!(
        lease::claim(&db.pool, &queue("q"), 10, LEASE, Uuid::new_v4())
            .await
            .unwrap()
            .is_empty()
    );
    let stats = admin::queue_stats(&db.pool).await.unwrap();
    assert_eq!(
        (
            stats[0].name.as_str(),
            stats[0].paused,
            stats[0].available,
            stats[0].scheduled
        ),
        ("q", true, 1, 1)
    );
    admin::set_paused(&db.pool, &herald::audit::Actor::cli(), &queue("q"), false)
        .await
        .unwrap();
    assert_eq!(
        lease::claim(&db.pool, &queue("q"), 10, LEASE, Uuid::new_v4())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(admin::queue_stats(&db.pool).await.unwrap()[0].running, 1);
}

#[tokio::test]
async fn cancel_removes_a_waiting_job_but_not_a_running_one() {
    let db = TestDb::new().await;
    let ids = db
        .enqueue(vec![job("q", "k", json!({})), job("q", "k", json!({}))])
        .await;
    let running = claim_one(&db, "q").await;
    let waiting = if running.id == ids[0] { ids[1] } else { ids[0] };
    admin::cancel_job(&db.pool, &herald::audit::Actor::cli(), waiting)
        .await
        .unwrap();
    assert_eq!(
        admin::find_job(&db.pool, waiting)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Cancelled
    );
    // Cancelling again is answered as done (an idempotent DELETE), and changes nothing.
    admin::cancel_job(&db.pool, &herald::audit::Actor::cli(), waiting)
        .await
        .expect("a cancelled job cancels again");
    assert!(matches!(
        admin::cancel_job(&db.pool, &herald::audit::Actor::cli(), running.id).await,
        Err(QueueError::Conflict(_))
    ));
    assert!(matches!(
        admin::cancel_job(&db.pool, &herald::audit::Actor::cli(), 999_999).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(admin::find_job(&db.pool, 999_999).await.unwrap().is_none());
}

/// The batch form, inside the caller's transaction: a scheduled and an available job go (with a `cancelled`
/// history row each) only if the transaction commits; a leased job and an unknown id are passed over.
#[tokio::test]
async fn cancel_waiting_jobs_takes_the_unleased_ones_with_the_callers_transaction() {
    let db = TestDb::new().await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let ids = db
        .enqueue(vec![
            job("q", "k", json!({ "n": 1 })),
            job("q", "k", json!({ "n": 2 })),
            job("q", "k", json!({ "n": 3 })).run_at(later),
        ])
        .await;
    let running = claim_one(&db, "q").await;
    let available = if running.id == ids[0] { ids[1] } else { ids[0] };
    let scheduled = ids[2];
    let all = [available, running.id, scheduled, 999_999];

    let mut tx = db.pool.begin().await.unwrap();
    let mut cancelled = admin::cancel_waiting_jobs(&mut tx, &all).await.unwrap();
    cancelled.sort_unstable();
    assert_eq!(cancelled, [available, scheduled]);
    tx.rollback().await.unwrap();
    assert_eq!(live_jobs(&db.pool).await, 3, "rolled back with the caller");

    let mut tx = db.pool.begin().await.unwrap();
    let mut cancelled = admin::cancel_waiting_jobs(&mut tx, &all).await.unwrap();
    cancelled.sort_unstable();
    assert_eq!(cancelled, [available, scheduled]);
    tx.commit().await.unwrap();
    for id in [available, scheduled] {
        let job = admin::find_job(&db.pool, id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Cancelled, "job {id}");
    }
    let job = admin::find_job(&db.pool, running.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Running);
    let history = "SELECT count(*) FROM herald_job_history WHERE outcome = 'cancelled'";
    assert_eq!(scalar_i64(&db.pool, history).await, 2);
    let mut conn = db.pool.acquire().await.unwrap();
    let none = admin::cancel_waiting_jobs(&mut conn, &[]).await.unwrap();
    assert!(none.is_empty());
}

/// Fails `n` jobs of `kind` in `queue` straight into the dead letters.
async fn dead_letter(db: &TestDb, queue_name: &str, kind: &str, n: usize) {
    db.enqueue(
        (0..n)
            .map(|i| job(queue_name, kind, json!({ "i": i })))
            .collect(),
    )
    .await;
    let claimed = lease::claim(&db.pool, &queue(queue_name), n, LEASE, Uuid::new_v4())
        .await
        .unwrap();
    let batch: Vec<_> = claimed
        .iter()
        .map(|j| {
            (
                j.id,
                j.lease_token,
                Settlement::Dead {
                    error: error(1, "nope"),
                },
            )
        })
        .collect();
    lease::settle(&db.pool, &batch, LEASE).await.unwrap();
}

#[tokio::test]
async fn dead_letters_list_with_cursor_replay_one_or_many_and_purge() {
    let db = TestDb::new().await;
    dead_letter(&db, "a", "x", 3).await;
    dead_letter(&db, "b", "y", 2).await;

    let page1 = dead_letters::list(&db.pool, &DeadLetterFilter::default(), None, 2)
        .await
        .unwrap();
    let page2 = dead_letters::list(&db.pool, &DeadLetterFilter::default(), Some(page1[1].id), 2)
        .await
        .unwrap();
    let page3 = dead_letters::list(&db.pool, &DeadLetterFilter::default(), Some(page2[1].id), 2)
        .await
        .unwrap();
    assert_eq!((page1.len(), page2.len(), page3.len()), (2, 2, 1));
    assert!(
        page1[0].id > page1[1].id && page1[1].id > page2[0].id,
        "newest first, no overlap"
    );

    let only_a = DeadLetterFilter {
        queue: Some("a".into()),
        ..Default::default()
    };
    assert_eq!(
        dead_letters::list(&db.pool, &only_a, None, 10)
            .await
            .unwrap()
            .len(),
        3
    );

    // Replay one: a new job with attempts reset, linked both ways.
    let one = page3[0].id;
    let replayed = dead_letters::replay(
        &db.pool,
        &herald::audit::Actor::cli(),
        &DeadLetterFilter::by_id(one),
        LEASE,
    )
    .await
    .unwrap();
    assert_eq!(replayed.len(), 1);
    let job_view = admin::find_job(&db.pool, replayed[0].job_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (job_view.state.as_str(), job_view.attempt),
        ("available", 0)
    );
    let letter = dead_letters::get(&db.pool, one).await.unwrap().unwrap();
    assert_eq!(letter.replayed_as, Some(replayed[0].job_id));
    let replay_of: Option<i64> =
        sqlx::query_scalar("SELECT replay_of FROM herald_jobs WHERE id = $1")
            .bind(replayed[0].job_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(replay_of, Some(one));
    assert!(
        dead_letters::replay(
            &db.pool,
            &herald::audit::Actor::cli(),
            &DeadLetterFilter::by_id(one),
            LEASE
        )
        .await
        .unwrap()
        .is_empty(),
        "once"
    );

    // Replay by filter: the rest of queue "a"; an age filter in the future matches nothing.
    let future = DeadLetterFilter {
        failed_since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..only_a.clone()
    };
    assert!(
        dead_letters::replay(&db.pool, &herald::audit::Actor::cli(), &future, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let rest = dead_letters::replay(&db.pool, &herald::audit::Actor::cli(), &only_a, LEASE)
        .await
        .unwrap();
    assert_eq!(
        rest.len(),
        2,
        "three of queue a, one replayed before: two left"
    );

    let purged = dead_letters::purge(
        &db.pool,
        &herald::audit::Actor::cli(),
        &DeadLetterFilter {
            kind: Some("y".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(purged, 2);
    assert_eq!(
        dead_letters::purge(
            &db.pool,
            &herald::audit::Actor::cli(),
            &DeadLetterFilter::by_id(one)
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_dead_letters").await,
        2
    );
}

#[tokio::test]
async fn a_snoozed_attempt_is_refunded_and_scheduled_after_its_delay_even_on_the_last_attempt() {
    let db = TestDb::new().await;
    db.enqueue(vec![job("q", "k", json!({})).max_attempts(1)])
        .await;
    let claimed = claim_one(&db, "q").await;
    assert_eq!(claimed.attempt, 1);
    let snooze = Settlement::Snoozed {
        delay: Duration::from_secs(600),
        error: error(1, "every provider's circuit is open"),
    };
    let settled = lease::settle(
        &db.pool,
        &[(claimed.id, claimed.lease_token, snooze)],
        LEASE,
    )
    .await
    .unwrap();
    assert_eq!(
        settled,
        vec![(claimed.id, Settled::Retrying)],
        "not dead-lettered"
    );
    let view = admin::find_job(&db.pool, claimed.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.state, JobState::Scheduled);
    assert_eq!(view.attempt, 0, "the attempt is refunded");
    let wait = view.run_at.unwrap() - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::minutes(9),
        "run_at = now + delay: {wait:?}"
    );
}

/// The aging bound as documented (docs/architecture.md): a job is claimed before every more urgent job that
/// became available more than `priority gap × aging` after it; urgent work that became available within that
/// gap goes first. So under a saturated urgent stream a job waits at most the gap × aging, plus the time the
/// fleet needs to drain the urgent work already ahead of it then.
#[tokio::test]
async fn aging_bound_a_low_job_precedes_urgent_work_newer_than_the_gap_and_follows_older() {
    let db = TestDb::new().await;
    let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
    let gap = chrono::Duration::seconds(9 * 60); // priority 9 vs 0, aging 60 s
    let urgent = |offset: chrono::Duration| {
        job("q", "k", json!({}))
            .priority(Priority::new(9).unwrap())
            .run_at(t0 + offset)
    };
    let ahead = db
        .enqueue(vec![urgent(gap - chrono::Duration::seconds(1))])
        .await;
    let low = db.enqueue(vec![job("q", "k", json!({})).run_at(t0)]).await;
    let behind = db
        .enqueue(vec![urgent(gap + chrono::Duration::seconds(1))])
        .await;
    let claimed = lease::claim(&db.pool, &queue("q"), 3, LEASE, Uuid::new_v4())
        .await
        .unwrap();
    let order: Vec<i64> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(order, vec![ahead[0], low[0], behind[0]]);
}

/// History's `claimed_at` never precedes the job's `run_at`, even when the claiming transaction began before the
/// job was enqueued (the claim used to stamp `now()`, the transaction's start).
#[tokio::test]
async fn claimed_at_is_never_before_run_at() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT now()").execute(&mut *tx).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    db.enqueue(vec![job("q", "k", json!({}))]).await;
    let claimed = lease::claim_on(
        &mut *tx,
        &queue("q"),
        1,
        LEASE,
        Uuid::new_v4(),
        lease::new_lease_token(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(claimed.len(), 1);
    let before_run_at: bool = sqlx::query_scalar("SELECT claimed_at < run_at FROM herald_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!before_run_at, "claimed_at precedes run_at");
}

/// Reconciliation's two statements: a worker's leases as the database sees them, and a release by token that
/// gives back only leases still holding that token (an orphan) and leaves a re-claimed job alone.
#[tokio::test]
async fn leases_of_lists_a_workers_leases_and_release_by_token_touches_only_that_lease() {
    let db = TestDb::new().await;
    db.enqueue(vec![job("q", "k", json!({})), job("q", "k", json!({}))])
        .await;
    let me = Uuid::new_v4();
    let orphan = lease::claim(&db.pool, &queue("q"), 1, LEASE, me)
        .await
        .unwrap()
        .remove(0);
    let other = lease::claim(&db.pool, &queue("q"), 1, LEASE, Uuid::new_v4())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        lease::leases_of(&db.pool, me).await.unwrap(),
        vec![(orphan.id, orphan.lease_token)]
    );
    // A stale token releases nothing.
    assert_eq!(
        lease::release(&db.pool, &[(orphan.id, orphan.lease_token + 1)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        lease::release(&db.pool, &[(orphan.id, orphan.lease_token)])
            .await
            .unwrap(),
        1
    );
    assert!(lease::leases_of(&db.pool, me).await.unwrap().is_empty());
    let attempt: i32 = sqlx::query_scalar("SELECT attempt FROM herald_jobs WHERE id = $1")
        .bind(orphan.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempt, 0, "the orphan's attempt is refunded: it never ran");
    let still_leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM herald_jobs WHERE id = $1 AND lease_token IS NOT NULL",
    )
    .bind(other.id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(still_leased, 1);
}

/// A job given back unstarted (its lease term passed while it waited in a frozen worker) keeps its attempt and
/// its place in line, and a settle that mixes it with finished attempts settles both.
#[tokio::test]
async fn a_not_started_settlement_releases_the_job_and_keeps_its_place() {
    let db = TestDb::new().await;
    let now = chrono::Utc::now();
    let ids = db
        .enqueue(
            (0..3)
                .map(|i| job("q", "k", json!({})).run_at(now - chrono::Duration::seconds(3 - i)))
                .collect(),
        )
        .await;
    let claimed = lease::claim(&db.pool, &queue("q"), 2, LEASE, Uuid::new_v4())
        .await
        .unwrap();
    let settled = lease::settle(
        &db.pool,
        &[
            (
                claimed[0].id,
                claimed[0].lease_token,
                Settlement::NotStarted,
            ),
            (claimed[1].id, claimed[1].lease_token, Settlement::Completed),
        ],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        settled,
        vec![(ids[0], Settled::Released), (ids[1], Settled::Completed)]
    );
    let next = lease::claim(&db.pool, &queue("q"), 1, LEASE, Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(next[0].id, ids[0], "first in line again");
    assert_eq!(next[0].attempt, 1, "the unstarted attempt was refunded");
}
