//! Wait-for-events: events correlated by key, in any order, counted once per event id, resuming the run exactly
//! once even when the last two events arrive together; the timeout path; the payment+KYC example.

use crate::common;

use crate::common::flows::{Flow, example, step};
use herald::workflow::{RunStatus, StepStatus};
use serde_json::json;

const WAIT3: &str = r#"
name: wait3
version: 1
nodes:
  - id: start
    kind: trigger
    fields: { order: { type: string } }
    next: gate
  - id: gate
    kind: wait_for_events
    events: [a, b, c]
    key: trigger.order
    mode: all
    next: done
  - id: done
    kind: action
    channel: chat
    to: "{{ trigger.order }}"
    content: { text: "{{ nodes.gate.event_ids | join(',') }}" }
"#;

/// Starts a `wait3` run for `order` and waits until it is parked at its `gate`.
async fn waiting_at_gate(flow: &Flow, order: &str) -> i64 {
    let id = flow.trigger("wait3", json!({ "order": order })).await;
    flow.step_reaches(id, "gate", "waiting").await;
    id
}

/// Every ordering of three events relative to each other and to the run reaching its wait node.
#[tokio::test]
async fn every_ordering_of_three_events_before_and_after_the_wait_completes_once() {
    let flow = Flow::start(&[WAIT3]).await;
    let orders = [
        ["a", "b", "c"],
        ["a", "c", "b"],
        ["b", "a", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["c", "b", "a"],
    ];
    let mut runs = Vec::new();
    for (index, order) in orders.iter().enumerate() {
        // `before` events arrive before the run exists; the rest after it is waiting.
        for before in 0..=3 {
            let key = format!("o-{index}-{before}");
            for name in &order[..before] {
                flow.event(name, &key, &format!("{key}-{name}")).await;
            }
            let id = flow.trigger("wait3", json!({ "order": key })).await;
            runs.push((id, key, order, before));
        }
    }
    for (id, key, order, before) in &runs {
        if *before < 3 {
            flow.step_reaches(*id, "gate", "waiting").await;
            assert_eq!(
                flow.run(*id).await.status,
                RunStatus::Running,
                "{key}: no early resume"
            );
        }
        for (position, name) in order[*before..].iter().enumerate() {
            let receipt = flow.event(name, key, &format!("{key}-{name}")).await;
            let last = *before + position == 2;
            assert_eq!(
                receipt.resumed_runs,
                if last { vec![*id] } else { vec![] },
                "{key} after {name}"
            );
        }
    }
    for (id, key, ..) in &runs {
        let run = flow.finished(*id, "completed").await;
        assert_eq!(step(&run, "gate").outcome.as_deref(), Some("satisfied"));
        assert_eq!(
            flow.recorder.to(key).len(),
            1,
            "{key}: resumed exactly once"
        );
    }
    flow.stop().await;
}

#[tokio::test]
async fn a_duplicate_event_counts_once() {
    let flow = Flow::start(&[WAIT3]).await;
    let id = waiting_at_gate(&flow, "dup").await;
    flow.event("a", "dup", "ev-1").await;
    let again = flow.event("a", "dup", "ev-1").await;
    assert!(again.duplicate);
    // Still waiting: `c` is missing. The redelivered `a` was not stored a second time.
    flow.event("b", "dup", "ev-2").await;
    assert_eq!(
        step(&flow.run(id).await, "gate").status,
        StepStatus::Waiting
    );
    let stored = common::scalar_i64(&flow.db.pool, "SELECT count(*) FROM herald_events").await;
    assert_eq!(stored, 2);
    flow.event("c", "dup", "ev-3").await;
    let run = flow.finished(id, "completed").await;
    assert_eq!(
        step(&run, "gate").output.as_ref().unwrap()["event_ids"],
        json!(["ev-1", "ev-2", "ev-3"])
    );
    flow.stop().await;
}

#[tokio::test]
async fn events_for_another_key_or_name_do_not_count() {
    let flow = Flow::start(&[WAIT3]).await;
    let id = waiting_at_gate(&flow, "mine").await;
    for (name, key) in [
        ("a", "other"),
        ("b", "other"),
        ("c", "other"),
        ("z", "mine"),
    ] {
        flow.event(name, key, &format!("{name}-{key}")).await;
    }
    assert_eq!(
        step(&flow.run(id).await, "gate").status,
        StepStatus::Waiting
    );
    flow.stop().await;
}

/// Events stored together (one batch, as the API's coalescer and the bridge store them): a wait completed by
/// the batch resumes once, credited to the event at which its count was reached (counting events stored before
/// the batch too); an id repeated inside the batch counts once; a wait the batch does not complete keeps waiting.
#[tokio::test]
async fn a_batch_of_events_completes_each_wait_once_and_names_the_event_that_did() {
    let flow = Flow::start(&[WAIT3]).await;
    let first = waiting_at_gate(&flow, "batch-1").await;
    let second = waiting_at_gate(&flow, "batch-2").await;
    let third = waiting_at_gate(&flow, "batch-3").await;
    // Stored before the batch: batch-2 needs only `b` and `a` more.
    flow.event("c", "batch-2", "b2-c-before").await;
    let event = |name: &str, key: &str, id: &str| herald::workflow::NewEvent {
        id: Some(id.to_string()),
        name: name.to_string(),
        key: key.to_string(),
        payload: json!({ "event": id }),
    };
    let batch = [
        event("a", "batch-1", "b1-a"),
        event("b", "batch-2", "b2-b"),
        event("b", "batch-1", "b1-b"),
        event("a", "batch-3", "b3-a"),
        event("c", "batch-1", "b1-c"),
        event("c", "batch-1", "b1-c"),
        event("a", "batch-1", "b1-a-again"),
        event("a", "batch-2", "b2-a"),
        event("b", "batch-2", "b2-b-again"),
    ];
    let mut tx = flow.db.pool.begin().await.unwrap();
    let receipts = flow.engine.ingest_events_in(&mut tx, &batch).await.unwrap();
    tx.commit().await.unwrap();

    let summary: Vec<(&str, bool, Vec<i64>)> = receipts
        .iter()
        .map(|r| (r.event_id.as_str(), r.duplicate, r.resumed_runs.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("b1-a", false, vec![]),
            ("b2-b", false, vec![]),
            ("b1-b", false, vec![]),
            ("b3-a", false, vec![]),
            ("b1-c", false, vec![first]),
            ("b1-c", true, vec![]),
            ("b1-a-again", false, vec![]),
            ("b2-a", false, vec![second]),
            ("b2-b-again", false, vec![]),
        ]
    );
    flow.finished(first, "completed").await;
    flow.finished(second, "completed").await;
    assert_eq!(flow.recorder.to("batch-1").len(), 1);
    assert_eq!(flow.recorder.to("batch-2").len(), 1);
    assert_eq!(
        step(&flow.run(third).await, "gate").status,
        StepStatus::Waiting,
        "batch-3 still lacks b and c"
    );
    let stored = common::scalar_i64(&flow.db.pool, "SELECT count(*) FROM herald_events").await;
    assert_eq!(
        stored, 9,
        "the repeated id once, the one stored before included"
    );
    flow.stop().await;
}

/// The last two events arrive at the same moment on two connections (two API servers): the run resumes once.
#[tokio::test]
async fn the_last_two_events_arriving_together_resume_the_run_exactly_once() {
    let flow = Flow::start(&[WAIT3]).await;
    let mut ids = Vec::new();
    for round in 0..30 {
        let key = format!("race-{round}");
        let id = flow.trigger("wait3", json!({ "order": key })).await;
        flow.event("a", &key, &format!("{key}-a")).await;
        ids.push((id, key));
    }
    for (id, key) in &ids {
        flow.step_reaches(*id, "gate", "waiting").await;
        let (b_id, c_id) = (format!("{key}-b"), format!("{key}-c"));
        // Two futures on two pool connections: two concurrent transactions, as on two API servers.
        let (b, c) = tokio::join!(flow.event("b", key, &b_id), flow.event("c", key, &c_id));
        let resumed = b.resumed_runs.len() + c.resumed_runs.len();
        assert_eq!(
            resumed, 1,
            "{key}: exactly one of the two events resumes the run"
        );
    }
    for (id, key) in &ids {
        flow.finished(*id, "completed").await;
        assert_eq!(flow.recorder.to(key).len(), 1);
    }
    let resume_jobs = common::scalar_i64(
        &flow.db.pool,
        "SELECT count(*) FROM herald_job_history WHERE payload->>'phase' = 'resume' AND outcome = 'completed'",
    )
    .await;
    assert_eq!(resume_jobs, 30);
    flow.stop().await;
}

/// An event racing the run's arrival at its wait node is never missed.
#[tokio::test]
async fn an_event_racing_the_wait_registration_is_not_missed() {
    const ONE: &str = r#"
name: one
version: 1
nodes:
  - id: start
    kind: trigger
    next: gate
  - id: gate
    kind: wait_for_events
    events: [go]
    key: trigger.k
    next: done
  - id: done
    kind: transform
    set: { ok: "true" }
"#;
    let flow = Flow::start(&[ONE]).await;
    let mut ids = Vec::new();
    for round in 0..40 {
        let key = format!("k{round}");
        let id = flow.trigger("one", json!({ "k": key })).await;
        // Fire while the trigger node job is running or the wait is registering.
        flow.event("go", &key, &key).await;
        ids.push(id);
    }
    for id in ids {
        let run = flow.finished(id, "completed").await;
        assert_eq!(run.context["ok"], true);
    }
    flow.stop().await;
}

const MODES: &str = r#"
name: modes
version: 1
nodes:
  - id: start
    kind: trigger
    next: [any_gate, two_gate]
  - id: any_gate
    kind: wait_for_events
    events: [x, y]
    key: trigger.k
    mode: any
  - id: two_gate
    kind: wait_for_events
    events: [vote]
    key: trigger.k
    mode: at_least
    count: 2
"#;

#[tokio::test]
async fn any_and_at_least_modes() {
    let flow = Flow::start(&[MODES]).await;
    let id = flow.trigger("modes", json!({ "k": "m" })).await;
    flow.step_reaches(id, "any_gate", "waiting").await;
    flow.step_reaches(id, "two_gate", "waiting").await;
    flow.event("y", "m", "y1").await;
    flow.step_reaches(id, "any_gate", "completed").await;
    flow.event("vote", "m", "v1").await;
    flow.event("vote", "m", "v1").await; // the same vote again
    assert_eq!(
        step(&flow.run(id).await, "two_gate").status,
        StepStatus::Waiting
    );
    flow.event("vote", "m", "v2").await;
    let run = flow.finished(id, "completed").await;
    assert_eq!(
        step(&run, "two_gate").output.as_ref().unwrap()["event_ids"],
        json!(["v1", "v2"])
    );
    flow.stop().await;
}

const TIMEOUT: &str = r#"
name: timeout
version: 1
nodes:
  - id: start
    kind: trigger
    next: gate
  - id: gate
    kind: wait_for_events
    events: [a, b]
    key: trigger.k
    timeout: 1s
    next: happy
    on_timeout: nudge
  - id: happy
    kind: action
    channel: email
    to: happy
  - id: nudge
    kind: action
    channel: email
    to: "nudge {{ nodes.gate.events | list | join(',') }}"
"#;

#[tokio::test]
async fn a_wait_that_times_out_follows_on_timeout_with_what_did_arrive() {
    let flow = Flow::start(&[TIMEOUT]).await;
    let id = flow.trigger("timeout", json!({ "k": "t" })).await;
    flow.event("a", "t", "t-a").await;
    let run = flow.finished(id, "completed").await;
    let gate = step(&run, "gate");
    assert_eq!(gate.outcome.as_deref(), Some("timed_out"));
    assert_eq!(gate.output.as_ref().unwrap()["timed_out"], true);
    assert_eq!(flow.recorder.to("nudge a").len(), 1);
    assert!(flow.recorder.to("happy").is_empty());
    // A late event changes nothing.
    let late = flow.event("b", "t", "t-b").await;
    assert!(late.resumed_runs.is_empty());
    flow.stop().await;
}

#[tokio::test]
async fn a_wait_satisfied_in_time_ignores_its_timeout() {
    let flow = Flow::start(&[TIMEOUT]).await;
    let id = flow.trigger("timeout", json!({ "k": "s" })).await;
    flow.event("a", "s", "s-a").await;
    flow.event("b", "s", "s-b").await;
    let run = flow.finished(id, "completed").await;
    assert_eq!(step(&run, "gate").outcome.as_deref(), Some("satisfied"));
    // The timeout job (if the wait parked before both events came) left the queue with the event that
    // satisfied the wait, as a cancelled job: it never runs.
    flow.queue_drained().await;
    let timeouts = "SELECT count(*) FROM herald_job_history WHERE payload->>'phase' = 'timeout' \
                    AND outcome <> 'cancelled'";
    assert_eq!(common::scalar_i64(&flow.db.pool, timeouts).await, 0);
    let run = flow.run(id).await;
    assert_eq!(step(&run, "gate").outcome.as_deref(), Some("satisfied"));
    assert!(run.steps.iter().all(|s| s.node != "nudge"));
    assert_eq!(flow.recorder.to("happy").len(), 1);
    flow.stop().await;
}

#[tokio::test]
async fn a_timeout_without_on_timeout_fails_the_run() {
    let flow = Flow::start(&[&TIMEOUT.replace("    on_timeout: nudge\n", "").replace(
        "  - id: nudge\n    kind: action\n    channel: email\n    to: \"nudge {{ nodes.gate.events | list | join(',') }}\"\n",
        "",
    )])
    .await;
    let id = flow.trigger("timeout", json!({ "k": "f" })).await;
    let run = flow.finished(id, "failed").await;
    assert_eq!(run.failed_node.as_deref(), Some("gate"));
    assert!(
        run.error
            .as_deref()
            .unwrap_or("")
            .contains("timed out waiting for a, b")
    );
    flow.stop().await;
}

#[tokio::test]
async fn payment_kyc_example_waits_for_both_events_in_either_order() {
    let flow = Flow::start(&[&example("payment_kyc.yaml")]).await;
    // KYC passed before the signup was even triggered; the payment arrives while the run waits.
    flow.event("kyc.passed", "user-1", "kyc-1").await;
    let data = json!({ "user_id": "user-1", "email": "u1@example.com", "phone": "+1555", "sms_opt_in": true });
    let id = flow.trigger("payment_kyc", data).await;
    flow.step_reaches(id, "checks", "waiting").await;
    let payment = herald::workflow::NewEvent {
        id: Some("pay-1".into()),
        name: "payment.succeeded".into(),
        key: "user-1".into(),
        payload: json!({ "payment_id": "pi_123" }),
    };
    let receipt = flow.engine.ingest_event(payment).await.unwrap();
    assert_eq!(receipt.resumed_runs, vec![id]);
    let run = flow.finished(id, "completed").await;
    let email = flow.recorder.to("u1@example.com");
    assert_eq!(email.len(), 1);
    assert_eq!(
        email[0].content["body"],
        "Payment pi_123 received and identity verified."
    );
    assert_eq!(flow.recorder.to("+1555").len(), 1);
    assert!(run.steps.iter().all(|s| s.node != "reminder_email"));
    flow.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_events_share_commits_and_a_repeated_id_counts_once_even_within_a_batch() {
    let flow = Flow::without_worker(&[WAIT3]).await;
    // 300 events at once: 100 with ids of their own, and one id sent 200 times.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300 {
        let engine = std::sync::Arc::clone(&flow.engine);
        calls.spawn(async move {
            let id = if i < 100 {
                format!("e{i}")
            } else {
                "repeated".to_string()
            };
            let event = herald::workflow::NewEvent {
                id: Some(id.clone()),
                name: "a".into(),
                key: format!("order-{}", i % 7),
                payload: json!({ "i": i }),
            };
            (id, engine.ingest_event(event).await.expect("ingest"))
        });
    }
    let mut fresh_repeats = 0;
    let mut fresh_own = 0;
    while let Some(answer) = calls.join_next().await {
        let (id, receipt) = answer.unwrap();
        assert_eq!(receipt.event_id, id);
        match (id.as_str(), receipt.duplicate) {
            ("repeated", false) => fresh_repeats += 1,
            ("repeated", true) => {}
            (_, false) => fresh_own += 1,
            (_, true) => panic!("{id} was called a duplicate"),
        }
    }
    assert_eq!(fresh_repeats, 1, "the repeated id is stored once");
    assert_eq!(fresh_own, 100);
    let pool = &flow.db.pool;
    assert_eq!(
        common::scalar_i64(pool, "SELECT count(*) FROM herald_events").await,
        101
    );
    let transactions =
        common::scalar_i64(pool, "SELECT count(DISTINCT xmin::text) FROM herald_events").await;
    assert!(
        transactions < 101,
        "{transactions} transactions for 101 events"
    );
    flow.stop().await;
}
