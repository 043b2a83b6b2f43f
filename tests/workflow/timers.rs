//! Timers leave the hot table with the step they served: a satisfied wait's timeout job, a cancelled or failed
//! run's delay and timeout jobs are removed (as `cancelled` jobs, with a history row) in the transaction that
//! ends the step, instead of sitting in `herald_jobs` until they fall due to do nothing. A timer that a worker
//! already holds is left alone, and finds nothing to do.

use std::time::Duration;

use crate::common;

use crate::common::flows::{Behaviour, Flow, example, step};
use herald::workflow::{RunStatus, StepStatus};
use serde_json::json;
use sqlx::PgPool;

/// Jobs due later (timers, or retries in backoff): none should be left behind by a finished step.
async fn scheduled_jobs(pool: &PgPool) -> i64 {
    common::scalar_i64(pool, "SELECT count(*) FROM herald_jobs WHERE scheduled").await
}

/// The timer job recorded on a run's step (`None` if the step parked without one).
async fn timer_of(pool: &PgPool, run: i64, node: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT timer_job_id FROM herald_run_steps WHERE run_id = $1 AND node_id = $2 AND epoch = 1",
    )
    .bind(run)
    .bind(node)
    .fetch_one(pool)
    .await
    .expect("step")
}

/// The history outcomes of one job, oldest first (empty while it is still in the hot table).
async fn outcomes(pool: &PgPool, job: i64) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT outcome FROM herald_job_history WHERE job_id = $1 ORDER BY finished_at",
    )
    .bind(job)
    .fetch_all(pool)
    .await
    .expect("history")
}

async fn in_hot_table(pool: &PgPool, job: i64) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM herald_jobs WHERE id = $1)")
        .bind(job)
        .fetch_one(pool)
        .await
        .expect("lookup")
}

/// A `payment_kyc` event for `user` (the payment carries the id the welcome email quotes).
async fn kyc_event(flow: &Flow, name: &str, user: &str) {
    let event = herald::workflow::NewEvent {
        id: Some(format!("{user}-{name}")),
        name: name.to_string(),
        key: user.to_string(),
        payload: json!({ "payment_id": format!("pi-{user}") }),
    };
    flow.engine.ingest_event(event).await.expect("event");
}

/// 50 `payment_kyc` runs whose events arrive before the run, around its wait, or after: once they complete, not
/// one 3-day timeout job is left in `herald_jobs`, and each removed timeout has a `cancelled` history row.
#[tokio::test]
async fn completed_payment_kyc_runs_leave_no_timeout_jobs_behind() {
    let flow = Flow::start(&[&example("payment_kyc.yaml")]).await;
    let pool = &flow.db.pool;
    let mut runs = Vec::new();
    for i in 0..50 {
        let user = format!("user-{i}");
        // Run i % 3: 0 both events first (satisfied as it registers: no timer), 1 KYC first, 2 neither.
        let early: &[&str] = match i % 3 {
            0 => &["kyc.passed", "payment.succeeded"],
            1 => &["kyc.passed"],
            _ => &[],
        };
        for name in early {
            kyc_event(&flow, name, &user).await;
        }
        let data = json!({ "user_id": user, "email": format!("{user}@example.com") });
        let id = flow.trigger("payment_kyc", data).await;
        runs.push((id, user, early.len()));
    }
    let mut timers = Vec::new();
    for (id, user, early) in &runs {
        if *early == 2 {
            continue;
        }
        flow.step_reaches(*id, "checks", "waiting").await;
        let timer = timer_of(pool, *id, "checks")
            .await
            .expect("a waiting wait has a timer");
        assert!(
            in_hot_table(pool, timer).await,
            "run {id}: timeout scheduled"
        );
        timers.push(timer);
        for name in ["payment.succeeded", "kyc.passed"] {
            if name == "kyc.passed" && *early == 1 {
                continue;
            }
            kyc_event(&flow, name, user).await;
        }
        // Gone with the event that satisfied the wait, not at the deadline.
        assert!(
            !in_hot_table(pool, timer).await,
            "run {id}: timeout removed"
        );
    }
    assert_eq!(timers.len(), 33);
    assert_eq!(scheduled_jobs(pool).await, 0, "no timer left scheduled");
    for (id, user, early) in &runs {
        let run = flow.finished(*id, "completed").await;
        assert_eq!(step(&run, "checks").outcome.as_deref(), Some("satisfied"));
        assert_eq!(flow.recorder.to(&format!("{user}@example.com")).len(), 1);
        if *early == 2 {
            assert_eq!(
                timer_of(pool, *id, "checks").await,
                None,
                "run {id}: no timer"
            );
        }
    }
    flow.queue_drained().await;
    for timer in &timers {
        assert_eq!(outcomes(pool, *timer).await, ["cancelled"], "timer {timer}");
    }
    let timeouts = common::scalar_i64(
        pool,
        "SELECT count(*) FROM herald_job_history WHERE payload->>'phase' = 'timeout'",
    )
    .await;
    assert_eq!(timeouts, 33, "every timeout accounted for, each once");
    flow.stop().await;
}

/// Three branches that park: a wait with a timeout, a delay, and a wait without a timeout that leads to a send.
const PARKED: &str = r#"
name: parked
version: 1
nodes:
  - id: start
    kind: trigger
    next: [gate, pause, trip]
  - id: gate
    kind: wait_for_events
    events: [go]
    key: trigger.k
    timeout: 1h
  - id: pause
    kind: delay
    duration: 1h
  - id: trip
    kind: wait_for_events
    events: [trip]
    key: trigger.k
    next: send
  - id: send
    kind: action
    channel: chat
    to: rejecting
    content: { text: "tripped" }
"#;

/// Starts a `parked` run and waits until all three branches are parked; returns the run and the timers of
/// `gate` (a timeout) and `pause` (a resume).
async fn parked_run(flow: &Flow, key: &str) -> (i64, [i64; 2]) {
    let id = flow.trigger("parked", json!({ "k": key })).await;
    for node in ["gate", "pause", "trip"] {
        flow.step_reaches(id, node, "waiting").await;
    }
    let pool = &flow.db.pool;
    let gate = timer_of(pool, id, "gate").await.expect("gate timer");
    let pause = timer_of(pool, id, "pause").await.expect("pause timer");
    assert_eq!(
        timer_of(pool, id, "trip").await,
        None,
        "no timeout, no timer"
    );
    for timer in [gate, pause] {
        assert!(in_hot_table(pool, timer).await);
    }
    (id, [gate, pause])
}

#[tokio::test]
async fn a_cancelled_run_leaves_no_wait_or_delay_timers_behind() {
    let flow = Flow::start(&[PARKED]).await;
    let pool = &flow.db.pool;
    let (id, timers) = parked_run(&flow, "c").await;
    assert_eq!(scheduled_jobs(pool).await, 2);
    let run = flow
        .engine
        .cancel_run(&herald::audit::Actor::cli(), id)
        .await
        .expect("cancel");
    assert_eq!(run.status, RunStatus::Cancelled);
    // Removed by the cancel itself: nothing is left to fall due.
    assert_eq!(scheduled_jobs(pool).await, 0);
    for timer in timers {
        assert!(!in_hot_table(pool, timer).await, "timer {timer} removed");
        assert_eq!(outcomes(pool, timer).await, ["cancelled"], "timer {timer}");
    }
    let phases: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'phase' FROM herald_job_history WHERE job_id = ANY($1) ORDER BY 1",
    )
    .bind(&timers[..])
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(phases, ["resume", "timeout"]);
    flow.queue_drained().await;
    flow.stop().await;
}

#[tokio::test]
async fn a_run_failing_in_one_branch_removes_the_timers_of_the_others() {
    let flow = Flow::start(&[PARKED]).await;
    flow.recorder.behave("rejecting", Behaviour::Reject);
    let pool = &flow.db.pool;
    let (id, timers) = parked_run(&flow, "f").await;
    flow.event("trip", "f", "f-trip").await;
    let run = flow.finished(id, "failed").await;
    assert_eq!(run.failed_node.as_deref(), Some("send"));
    assert_eq!(scheduled_jobs(pool).await, 0);
    for timer in timers {
        assert_eq!(outcomes(pool, timer).await, ["cancelled"], "timer {timer}");
    }
    flow.queue_drained().await;
    flow.stop().await;
}

const TIMED: &str = r#"
name: timed
version: 1
nodes:
  - id: start
    kind: trigger
    next: gate
  - id: gate
    kind: wait_for_events
    events: [a, b]
    key: trigger.k
    timeout: 1h
    next: happy
    on_timeout: nudge
  - id: happy
    kind: action
    channel: email
    to: happy
  - id: nudge
    kind: action
    channel: email
    to: nudge
"#;

/// The deadline passed and a worker claimed the timeout job just before the last event arrived: the event
/// cannot take a job a worker holds, so it stays; when it runs (here after its worker vanished and its lease
/// was rescued), it finds the wait satisfied and does nothing.
#[tokio::test]
async fn a_timer_already_claimed_is_left_to_its_worker_and_does_nothing() {
    let mut flow = Flow::start(&[TIMED]).await;
    let pool = flow.db.pool.clone();
    let id = flow.trigger("timed", json!({ "k": "l" })).await;
    flow.step_reaches(id, "gate", "waiting").await;
    let timer = timer_of(&pool, id, "gate").await.expect("gate timer");
    flow.stop_worker().await;
    // The deadline passes; a worker that will never heartbeat claims the timeout.
    sqlx::query(
        "UPDATE herald_jobs SET run_at = now(), sort_key = now(), scheduled = false WHERE id = $1",
    )
    .bind(timer)
    .execute(&pool)
    .await
    .unwrap();
    let claimed = herald::queue::lease::claim(
        &pool,
        flow.engine.node_queue(),
        10,
        Duration::from_millis(200),
        uuid::Uuid::new_v4(),
    )
    .await
    .expect("claim");
    let claimed: Vec<i64> = claimed.iter().map(|job| job.id).collect();
    assert_eq!(claimed, [timer]);

    flow.event("a", "l", "l-a").await;
    let receipt = flow.event("b", "l", "l-b").await;
    assert_eq!(receipt.resumed_runs, [id]);
    let leased: Option<bool> =
        sqlx::query_scalar("SELECT lease_token IS NOT NULL FROM herald_jobs WHERE id = $1")
            .bind(timer)
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(
        leased,
        Some(true),
        "the claimed timer is left to its worker"
    );
    assert!(outcomes(&pool, timer).await.is_empty());

    // A worker again: it rescues the abandoned timer and runs it, and runs the resume job.
    let flow = flow.with_worker();
    let run = flow.finished(id, "completed").await;
    common::wait_until(Duration::from_secs(20), "the timer ran", || async {
        !outcomes(&pool, timer).await.is_empty()
    })
    .await;
    assert_eq!(
        outcomes(&pool, timer).await,
        ["completed"],
        "ran once, did nothing"
    );
    flow.queue_drained().await;
    let run_after = flow.run(id).await;
    assert_eq!(run_after.status, RunStatus::Completed);
    let gate = step(&run_after, "gate");
    assert_eq!(gate.status, StepStatus::Completed);
    assert_eq!(gate.outcome.as_deref(), Some("satisfied"));
    assert!(
        run.steps
            .iter()
            .chain(&run_after.steps)
            .all(|s| s.node != "nudge")
    );
    assert_eq!(flow.recorder.to("happy").len(), 1);
    assert!(flow.recorder.to("nudge").is_empty());
    flow.stop().await;
}
