//! Throttle nodes: at most `limit` continuations per key in any window, exact across worker processes; the rest
//! end as `throttled` or wait for a free slot; a retried attempt keeps the slot its step already took.

use std::time::Duration;

use crate::common::flows::{Flow, step};
use crate::common::scalar_i64;
use serde_json::json;

/// Three notifications per user per hour; the rest are skipped.
const CAPPED: &str = r#"
name: capped
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      user: { type: string }
    next: cap
  - id: cap
    kind: throttle
    limit: 3
    window: 1h
    key: "{{ trigger.user }}"
    next: mail
  - id: mail
    kind: action
    channel: email
    to: "{{ trigger.user }}@example.com"
    content:
      subject: "hello"
      body: "hello"
"#;

/// One per user every second; the rest wait for their slot.
const PACED: &str = r#"
name: paced
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      user: { type: string }
    next: pace
  - id: pace
    kind: throttle
    limit: 1
    window: 1s
    key: "{{ trigger.user }}"
    on_limit: delay
    next: mail
  - id: mail
    kind: action
    channel: email
    to: "{{ trigger.user }}@example.com"
    content:
      subject: "hello"
      body: "hello"
"#;

/// How many steps of `node` ended with `outcome`.
async fn outcomes(flow: &Flow, node: &str, outcome: &str) -> i64 {
    scalar_i64(
        &flow.db.pool,
        &format!(
            "SELECT count(*) FROM herald_run_steps WHERE node_id = '{node}' AND outcome = '{outcome}'"
        ),
    )
    .await
}

#[tokio::test]
async fn a_throttle_lets_exactly_its_limit_through_across_worker_processes() {
    let flow = Flow::without_worker(&[CAPPED]).await;
    let mut runs = Vec::new();
    for _ in 0..40 {
        runs.push(flow.trigger("capped", json!({"user": "ada"})).await);
    }
    for _ in 0..2 {
        runs.push(flow.trigger("capped", json!({"user": "bob"})).await);
    }
    // Two processes take slots at once: a `herald worker` with connections of its own (registered first), and this
    // test's worker.
    let mut other = flow.other_worker().await;
    let flow = flow.with_worker();
    flow.all_runs_finished(Duration::from_secs(60)).await;
    other.kill().await.unwrap();
    assert_eq!(outcomes(&flow, "cap", "allowed").await, 3 + 2);
    assert_eq!(outcomes(&flow, "cap", "throttled").await, 40 - 3);
    assert_eq!(outcomes(&flow, "mail", "sent").await, 3 + 2);
    // Ada's three grants and Bob's two, under the keys' digests: no key is stored as given.
    let grants = "SELECT count(*) FROM herald_throttle_grants GROUP BY key ORDER BY 1";
    let per_key: Vec<i64> = sqlx::query_scalar(grants)
        .fetch_all(&flow.db.pool)
        .await
        .unwrap();
    assert_eq!(per_key, vec![2, 3]);
    let plain =
        "SELECT count(*) FROM herald_throttle_grants WHERE key LIKE '%ada%' OR key LIKE '%bob%'";
    assert_eq!(scalar_i64(&flow.db.pool, plain).await, 0);
    // A throttled run completes: that branch ends, recorded in its timeline with the limit.
    let throttled: i64 = scalar_i64(
        &flow.db.pool,
        "SELECT min(run_id) FROM herald_run_steps WHERE node_id = 'cap' AND outcome = 'throttled'",
    )
    .await;
    let run = flow.finished(throttled, "completed").await;
    let cap = step(&run, "cap");
    assert_eq!(
        cap.output.as_ref().map(|o| o["limit"].clone()),
        Some(json!(3))
    );
    assert!(run.steps.iter().all(|s| s.node != "mail"), "{run:#?}");
    flow.stop().await;
}

#[tokio::test]
async fn a_throttle_on_limit_delay_reserves_the_next_slots_each_waiter_woken_once() {
    let flow = Flow::start(&[PACED]).await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(flow.trigger("paced", json!({"user": "ada"})).await);
    }
    for run in &runs {
        flow.finished(*run, "completed").await;
    }
    assert_eq!(outcomes(&flow, "pace", "allowed").await, 3);
    assert_eq!(outcomes(&flow, "pace", "throttled").await, 0);
    // One slot per run, a window apart (in the order the runs' node jobs reached the throttle).
    let slots: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT run_id, extract(epoch FROM granted_at)::float8 FROM herald_throttle_grants ORDER BY granted_at",
    )
    .fetch_all(&flow.db.pool)
    .await
    .unwrap();
    let mut granted: Vec<i64> = slots.iter().map(|(run, _)| *run).collect();
    granted.sort_unstable();
    assert_eq!(granted, runs);
    for pair in slots.windows(2) {
        assert!(pair[1].1 - pair[0].1 >= 1.0, "slots too close: {slots:?}");
    }
    // Each waiter parked once and was resumed once: no thundering herd of resumes re-parking.
    let resumes = scalar_i64(
        &flow.db.pool,
        "SELECT count(*) FROM herald_job_history WHERE payload->>'phase' = 'resume'",
    )
    .await;
    assert_eq!(resumes, 2);
    assert_eq!(flow.recorder.to("ada@example.com").len(), 3);
    flow.stop().await;
}

#[tokio::test]
async fn a_retried_throttle_attempt_keeps_the_slot_its_step_took() {
    let flow = Flow::without_worker(&[PACED]).await;
    let run = flow.trigger("paced", json!({"user": "ada"})).await;
    // An earlier attempt of this step took the only slot, then died before the step was recorded.
    sqlx::query(
        "INSERT INTO herald_throttle_grants (run_id, epoch, node_id, key) VALUES ($1, 1, 'pace', 'ada')",
    )
    .bind(run)
    .execute(&flow.db.pool)
    .await
    .unwrap();
    let flow = flow.with_worker();
    flow.finished(run, "completed").await;
    assert_eq!(outcomes(&flow, "pace", "allowed").await, 1);
    let grants = "SELECT count(*) FROM herald_throttle_grants";
    assert_eq!(scalar_i64(&flow.db.pool, grants).await, 1, "no second slot");
    flow.stop().await;
}

#[tokio::test]
async fn throttled_steps_are_counted_apart_in_the_node_metrics() {
    let throttled = || {
        herald::workflow::metrics::NODE_EXECUTIONS
            .with_label_values(&["throttle", "throttled"])
            .get()
    };
    let before = throttled();
    let flow = Flow::start(&[CAPPED]).await;
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(flow.trigger("capped", json!({"user": "cy"})).await);
    }
    for run in &runs {
        flow.finished(*run, "completed").await;
    }
    assert_eq!(outcomes(&flow, "cap", "throttled").await, 2);
    // At least this test's two (other tests of this process may count theirs meanwhile).
    assert!(throttled() >= before + 2, "{before} -> {}", throttled());
    flow.stop().await;
}
