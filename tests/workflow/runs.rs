//! Workflow runs through the real engine and a real worker: every node kind, branching, delays, failures,
//! retries, cancellation, idempotent triggers, versioning, and the three examples in `jobs/`.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use crate::common::flows::{Behaviour, Flow, example, step, timeline};
use chrono::Utc;
use herald::workflow::{RunStatus, StepStatus};
use serde_json::json;

async fn dead_letters_reach(flow: &Flow, count: i64) {
    let sql = "SELECT count(*) FROM herald_dead_letters WHERE kind = 'herald.workflow.node'";
    common::wait_until(
        Duration::from_secs(10),
        "node job dead-lettered",
        || async { common::scalar_i64(&flow.db.pool, sql).await == count },
    )
    .await;
}

const BRANCHY: &str = r#"
name: branchy
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      vip: { type: boolean, required: false }
      amount: { type: number, required: false, default: 0 }
    next: is_vip
  - id: is_vip
    kind: condition
    if: trigger.vip
    then: vip_mail
    else: tier
  - id: tier
    kind: branch
    cases:
      - when: trigger.amount > 100
        next: big
      - when: trigger.amount > 10
        next: medium
    default: small
  - id: vip_mail
    kind: action
    channel: email
    to: vip@example.com
    content: { body: "hello vip" }
  - id: big
    kind: action
    channel: email
    to: big@example.com
  - id: medium
    kind: action
    channel: email
    to: medium@example.com
  - id: small
    kind: action
    channel: email
    to: small@example.com
"#;

#[tokio::test]
async fn condition_follows_then_else_and_treats_a_missing_field_as_false() {
    let flow = Flow::start(&[BRANCHY]).await;
    let yes = flow.trigger("branchy", json!({ "vip": true })).await;
    let no = flow.trigger("branchy", json!({ "vip": false })).await;
    let missing = flow.trigger("branchy", json!({})).await;

    let yes = flow.finished(yes, "completed").await;
    assert_eq!(step(&yes, "is_vip").outcome.as_deref(), Some("then"));
    assert!(
        yes.steps.iter().all(|s| s.node != "tier"),
        "else edge not taken"
    );
    for run in [no, missing] {
        let run = flow.finished(run, "completed").await;
        assert_eq!(step(&run, "is_vip").outcome.as_deref(), Some("else"));
        assert_eq!(
            step(&run, "is_vip").output,
            Some(json!({ "result": false }))
        );
        assert!(run.steps.iter().all(|s| s.node != "vip_mail"));
    }
    assert_eq!(flow.recorder.to("vip@example.com").len(), 1);
    assert_eq!(flow.recorder.to("small@example.com").len(), 2);
    flow.stop().await;
}

#[tokio::test]
async fn branch_takes_the_first_matching_case_or_the_default() {
    let flow = Flow::start(&[BRANCHY]).await;
    let big = flow.trigger("branchy", json!({ "amount": 500 })).await;
    let medium = flow.trigger("branchy", json!({ "amount": 50 })).await;
    let small = flow.trigger("branchy", json!({ "amount": 5 })).await;
    for (id, outcome, node) in [
        (big, "case_0", "big"),
        (medium, "case_1", "medium"),
        (small, "default", "small"),
    ] {
        let run = flow.finished(id, "completed").await;
        assert_eq!(step(&run, "tier").outcome.as_deref(), Some(outcome));
        assert_eq!(step(&run, node).status, StepStatus::Completed);
        assert_eq!(
            run.steps.len(),
            4,
            "exactly one branch ran: {:?}",
            timeline(&run)
        );
    }
    flow.stop().await;
}

#[tokio::test]
async fn trigger_extracts_declared_fields_applies_defaults_and_refuses_bad_data() {
    let flow = Flow::start(&[&example("welcome.yaml")]).await;
    let id = flow
        .trigger(
            "welcome",
            json!({ "user_id": "u1", "email": "a@example.com", "extra": "dropped" }),
        )
        .await;
    let run = flow.finished(id, "completed").await;
    assert_eq!(
        run.context["trigger"],
        json!({ "user_id": "u1", "email": "a@example.com", "name": "there", "sms_opt_in": false })
    );
    let refused = flow
        .engine
        .start_run("welcome", json!({ "user_id": 7 }), None, None)
        .await;
    let message = refused.expect_err("bad trigger data").to_string();
    assert!(
        message.contains("data.user_id must be of type string"),
        "{message}"
    );
    assert!(message.contains("data.email is required"), "{message}");
    flow.stop().await;
}

#[tokio::test]
async fn transform_sets_context_fields_that_later_templates_use() {
    let flow = Flow::start(&[&example("order_shipped.yaml")]).await;
    let data = json!({ "order_id": "o-1", "email": "c@example.com", "carrier": "dhl",
                       "tracking_url": "https://t/1", "service": "express" });
    let id = flow.trigger("order_shipped", data).await;
    let run = flow.finished(id, "completed").await;
    assert_eq!(run.context["carrier_name"], "DHL");
    assert_eq!(run.context["eta"], "1-2 days");
    assert_eq!(
        step(&run, "describe").output,
        Some(json!({ "carrier_name": "DHL", "eta": "1-2 days" }))
    );
    let mails = flow.recorder.to("c@example.com");
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].content["body"].contains("ships with DHL and should arrive in 1-2 days"),
        "{:?}",
        mails[0]
    );
    flow.stop().await;
}

#[tokio::test]
async fn order_shipped_pushes_then_emails_when_a_device_is_known() {
    let flow = Flow::start(&[&example("order_shipped.yaml")]).await;
    let data = json!({ "order_id": "o-2", "email": "d@example.com", "carrier": "ups",
                       "tracking_url": "https://t/2", "device_token": "device-1" });
    let id = flow.trigger("order_shipped", data).await;
    let run = flow.finished(id, "completed").await;
    let nodes: Vec<_> = timeline(&run).into_iter().map(|(node, ..)| node).collect();
    assert_eq!(
        nodes,
        [
            "shipped",
            "describe",
            "route",
            "push_shipped",
            "email_shipped"
        ]
    );
    let push = flow.recorder.to("device-1");
    assert_eq!(push.len(), 1);
    assert_eq!(push[0].content["title"], "Order o-2 shipped");
    assert_eq!(
        flow.recorder.to("d@example.com").len(),
        1,
        "the email is sent once"
    );
    flow.stop().await;
}

#[tokio::test]
async fn welcome_example_sends_email_and_sms_to_opted_in_users() {
    let flow = Flow::start(&[&example("welcome.yaml")]).await;
    let data = json!({ "user_id": "u2", "email": "e@example.com", "name": "Ada",
                       "phone": "+15550001", "sms_opt_in": true });
    let id = flow.trigger("welcome", data).await;
    let run = flow.finished(id, "completed").await;
    assert_eq!(step(&run, "wants_sms").outcome.as_deref(), Some("then"));
    let email = flow.recorder.to("e@example.com");
    assert_eq!(email.len(), 1);
    assert_eq!(email[0].content["subject"], "Welcome to Acme, Ada!");
    assert_eq!(email[0].providers, ["sendgrid", "ses", "smtp"]);
    assert_eq!(
        email[0].idempotency_key,
        format!("run:{id}:1:welcome_email")
    );
    assert_eq!(flow.recorder.to("+15550001").len(), 1);
    flow.stop().await;
}

#[tokio::test]
async fn a_rejected_email_follows_on_error_to_the_sms_fallback_and_is_dead_lettered() {
    let flow = Flow::start(&[&example("welcome.yaml")]).await;
    flow.recorder
        .behave("bounce@example.com", Behaviour::Reject);
    let data = json!({ "user_id": "u3", "email": "bounce@example.com", "phone": "+15550002" });
    let id = flow.trigger("welcome", data).await;
    let run = flow.finished(id, "completed").await;
    let email = step(&run, "welcome_email");
    assert_eq!(email.status, StepStatus::Failed);
    assert!(
        email.error.as_deref().unwrap_or("").contains("rejected"),
        "{email:?}"
    );
    assert_eq!(step(&run, "fallback_sms").status, StepStatus::Completed);
    let sms = flow.recorder.to("+15550002");
    assert_eq!(sms.len(), 1);
    assert!(sms[0].content["body"].contains("could not reach bounce@example.com"));
    // The node job is dead-lettered like any job (the worker records that just after the handler returns).
    dead_letters_reach(&flow, 1).await;
    flow.stop().await;
}

const FRAGILE: &str = r#"
name: fragile
version: 1
nodes:
  - id: start
    kind: trigger
    next: send
  - id: send
    kind: action
    channel: sms
    to: "{{ trigger.to }}"
    content: { body: "hi" }
    next: after
  - id: after
    kind: transform
    set: { done: "true" }
"#;

#[tokio::test]
async fn transient_failures_are_retried_and_the_attempts_are_recorded() {
    let flow = Flow::start(&[FRAGILE]).await;
    flow.recorder.behave("+1", Behaviour::FailTimes(2));
    let id = flow.trigger("fragile", json!({ "to": "+1" })).await;
    let run = flow.finished(id, "completed").await;
    let send = step(&run, "send");
    assert_eq!(send.attempts, 3);
    assert_eq!(send.status, StepStatus::Completed);
    assert_eq!(send.error, None, "a later success clears the error");
    assert_eq!(flow.recorder.to("+1").len(), 1);
    assert_eq!(run.context["done"], true);
    flow.stop().await;
}

#[tokio::test]
async fn a_node_that_exhausts_its_attempts_fails_the_run_and_retry_resumes_from_it() {
    let flow = Flow::start(&[FRAGILE]).await;
    // node_max_attempts is 5 in the settings: fail all five.
    flow.recorder.behave("+2", Behaviour::FailTimes(5));
    let id = flow.trigger("fragile", json!({ "to": "+2" })).await;
    let run = flow.finished(id, "failed").await;
    assert_eq!(run.failed_node.as_deref(), Some("send"));
    assert_eq!(step(&run, "send").attempts, 5);
    assert!(
        run.error
            .as_deref()
            .unwrap_or("")
            .contains("provider unavailable")
    );
    assert!(run.steps.iter().all(|s| s.node != "after"));
    dead_letters_reach(&flow, 1).await;

    // The provider recovers; retry from the failed node in a new epoch.
    let retried = flow
        .engine
        .retry_run(&herald::audit::Actor::cli(), id)
        .await
        .expect("retry");
    assert_eq!(retried.epoch, 2);
    let run = flow.finished(id, "completed").await;
    let epochs: Vec<_> = run
        .steps
        .iter()
        .map(|s| (s.epoch, s.node.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(
        epochs,
        [
            (1, "start", "completed"),
            (1, "send", "failed"),
            (2, "send", "completed"),
            (2, "after", "completed")
        ]
    );
    assert_eq!(flow.recorder.to("+2").len(), 1);
    let again = flow
        .engine
        .retry_run(&herald::audit::Actor::cli(), id)
        .await
        .expect_err("only failed runs retry");
    assert!(again.to_string().contains("not failed"), "{again}");
    flow.stop().await;
}

#[tokio::test]
async fn a_template_error_fails_the_node_at_once() {
    let flow = Flow::start(&[FRAGILE]).await;
    let id = flow.trigger("fragile", json!({})).await; // `trigger.to` is missing: strict templates refuse
    let run = flow.finished(id, "failed").await;
    let send = step(&run, "send");
    assert_eq!(send.attempts, 1, "a permanent error is not retried");
    assert!(
        send.error.as_deref().unwrap_or("").contains("undefined"),
        "{send:?}"
    );
    assert!(flow.recorder.messages().is_empty());
    flow.stop().await;
}

const DELAYED: &str = r#"
name: delayed
version: 1
nodes:
  - id: start
    kind: trigger
    next: pause
  - id: pause
    kind: delay
    duration: 1500ms
    next: until
  - id: until
    kind: delay
    until: trigger.at
    next: done
  - id: done
    kind: action
    channel: chat
    to: ops-room
    content: { text: "done" }
"#;

#[tokio::test]
async fn delay_nodes_start_the_next_node_on_time_without_holding_a_worker() {
    let flow = Flow::start(&[DELAYED]).await;
    let started = Utc::now();
    let at = started + chrono::Duration::milliseconds(2500);
    let id = flow
        .trigger("delayed", json!({ "at": at.to_rfc3339() }))
        .await;
    flow.step_reaches(id, "pause", "waiting").await;
    // While parked, no node job is running: the delay is a scheduled job.
    let leased = "SELECT count(*) FROM herald_jobs WHERE lease_token IS NOT NULL";
    common::wait_until(Duration::from_secs(1), "no job leased", || async {
        common::scalar_i64(&flow.db.pool, leased).await == 0
    })
    .await;
    assert_eq!(
        step(&flow.run(id).await, "pause").status,
        StepStatus::Waiting
    );
    let run = flow.finished(id, "completed").await;
    let pause = step(&run, "pause");
    let after_pause = step(&run, "until").started_at.expect("until started");
    let waited = after_pause - pause.started_at.expect("pause started");
    assert!(
        waited >= chrono::Duration::milliseconds(1500),
        "next node started after {waited}"
    );
    assert!(
        waited < chrono::Duration::milliseconds(2500),
        "next node started late: {waited}"
    );
    let done = step(&run, "done").started_at.expect("done started");
    assert!(done >= at, "until: started {done} before {at}");
    assert!(
        done - at < chrono::Duration::milliseconds(1000),
        "until: started late: {}",
        done - at
    );
    flow.stop().await;
}

#[tokio::test]
async fn a_delay_until_a_past_time_continues_at_once() {
    let flow = Flow::start(&[DELAYED]).await;
    let id = flow.trigger("delayed", json!({ "at": 0 })).await; // Unix 0: long past
    let run = flow.finished(id, "completed").await;
    assert_eq!(step(&run, "until").outcome.as_deref(), Some("elapsed"));
    flow.stop().await;
}

#[tokio::test]
async fn cancelling_a_run_stops_its_pending_nodes() {
    let flow = Flow::start(&[DELAYED]).await;
    let at = Utc::now() + chrono::Duration::hours(1);
    let id = flow
        .trigger("delayed", json!({ "at": at.to_rfc3339() }))
        .await;
    flow.step_reaches(id, "until", "waiting").await;
    let run = flow
        .engine
        .cancel_run(&herald::audit::Actor::cli(), id)
        .await
        .expect("cancel");
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(step(&run, "until").status, StepStatus::Cancelled);
    let again = flow
        .engine
        .cancel_run(&herald::audit::Actor::cli(), id)
        .await
        .expect_err("already cancelled");
    assert!(again.to_string().contains("not running"));
    // The parked resume job left the queue with the cancel (tests/workflow/timers.rs looks closer).
    let scheduled = "SELECT count(*) FROM herald_jobs WHERE scheduled";
    assert_eq!(common::scalar_i64(&flow.db.pool, scheduled).await, 0);
    flow.queue_drained().await;
    let run = flow.run(id).await;
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(run.steps.iter().all(|s| s.node != "done"));
    assert!(flow.recorder.messages().is_empty());
    flow.stop().await;
}

#[tokio::test]
async fn idempotent_trigger_returns_the_same_run() {
    let flow = Flow::without_worker(&[FRAGILE]).await;
    let key = Some("signup-42".to_string());
    let first = flow
        .engine
        .start_run("fragile", json!({}), key.clone(), None)
        .await
        .unwrap();
    let second = flow
        .engine
        .start_run("fragile", json!({}), key, None)
        .await
        .unwrap();
    let herald::workflow::Started::Created { id, .. } = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        second,
        herald::workflow::Started::Existing { id, version: 1 }
    );
    let runs = common::scalar_i64(&flow.db.pool, "SELECT count(*) FROM herald_runs").await;
    assert_eq!(runs, 1);
    let jobs = common::live_jobs(&flow.db.pool).await;
    assert_eq!(jobs, 1, "one trigger job");
}

#[tokio::test]
async fn a_new_version_does_not_change_runs_in_flight() {
    let flow = Flow::without_worker(&[FRAGILE]).await;
    let old = flow.trigger("fragile", json!({ "to": "+9" })).await;
    flow.save(
        &FRAGILE
            .replace("version: 1", "version: 2")
            .replace("body: \"hi\"", "body: \"hi v2\""),
    )
    .await;
    let new = flow.trigger("fragile", json!({ "to": "+9" })).await;
    let flow = flow.with_worker();
    let old = flow.finished(old, "completed").await;
    let new = flow.finished(new, "completed").await;
    assert_eq!((old.version, new.version), (1, 2));
    let mut bodies: Vec<_> = flow
        .recorder
        .to("+9")
        .iter()
        .map(|m| m.content["body"].clone())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["hi", "hi v2"]);
    flow.stop().await;
}

#[tokio::test]
async fn parallel_branches_merge_their_context_and_a_join_node_runs_once() {
    const FANOUT: &str = r#"
name: fanout
version: 1
nodes:
  - id: start
    kind: trigger
    next: [left, right]
  - id: left
    kind: transform
    set: { l: "1" }
    next: join
  - id: right
    kind: transform
    set: { r: "2" }
    next: join
  - id: join
    kind: action
    channel: chat
    to: joined-room
"#;
    let flow = Flow::start(&[FANOUT]).await;
    let ids: Vec<i64> = {
        let mut ids = Vec::new();
        for _ in 0..20 {
            ids.push(flow.trigger("fanout", json!({})).await);
        }
        ids
    };
    for id in ids {
        let run = flow.finished(id, "completed").await;
        assert_eq!(
            (run.context["l"].clone(), run.context["r"].clone()),
            (json!(1), json!(2))
        );
        assert_eq!(run.steps.iter().filter(|s| s.node == "join").count(), 1);
        assert_eq!(run.pending, 0);
    }
    assert_eq!(flow.recorder.to("joined-room").len(), 20);
    flow.stop().await;
}

const INLINE: &str = r#"
name: inline
version: 1
nodes:
  - id: start
    kind: trigger
    fields: { amount: { type: number } }
    next: big
  - id: big
    kind: condition
    if: trigger.amount > 100
    then: gold
    else: plain
  - id: gold
    kind: transform
    set: { tier: "'gold'" }
    next: notify
  - id: plain
    kind: transform
    set: { tier: "'plain'", share: "100 / trigger.amount" }
    next: notify
  - id: notify
    kind: action
    channel: chat
    to: ops-room
    content: { text: "{{ tier }} {{ trigger.amount }}" }
    next: routed
  - id: routed
    kind: branch
    cases:
      - when: nodes.notify.provider == 'recorder'
        next: numbered
    default: numbered
  - id: numbered
    kind: transform
    set: { odd: "run.id % 2 == 1" }
"#;

/// Node jobs that ran for `run` (their history rows: each job is recorded there when it is acked).
async fn node_jobs_of(flow: &Flow, run: i64) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT payload->>'node' FROM herald_job_history
         WHERE kind = 'herald.workflow.node' AND (payload->>'run')::int8 = $1 ORDER BY job_id",
    )
    .bind(run)
    .fetch_all(&flow.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn pure_nodes_run_where_the_run_is_and_only_other_nodes_become_jobs() {
    let flow = Flow::start(&[INLINE]).await;
    let id = flow.trigger("inline", json!({ "amount": 500 })).await;
    let run = flow.finished(id, "completed").await;
    let order: Vec<(&str, Option<&str>, i32)> = run
        .steps
        .iter()
        .map(|s| (s.node.as_str(), s.outcome.as_deref(), s.attempts))
        .collect();
    assert_eq!(
        order,
        [
            ("start", Some("accepted"), 1),
            ("big", Some("then"), 1),
            ("gold", Some("set"), 1),
            ("notify", Some("sent"), 1),
            ("routed", Some("case_0"), 1),
            ("numbered", Some("set"), 1),
        ],
        "the timeline lists every node in the order it ran"
    );
    // Outputs and context as jobs would have left them: the transform's key reached the template, `run` is
    // this run, and every node's output is under `nodes`.
    assert_eq!(flow.recorder.to("ops-room")[0].content["text"], "gold 500");
    assert_eq!(run.context["tier"], "gold");
    assert_eq!(run.context["odd"], id % 2 == 1);
    assert_eq!(run.context["nodes"]["big"], json!({ "result": true }));
    assert_eq!(run.context["nodes"]["routed"], json!({ "case": 0 }));
    assert_eq!(
        step(&run, "numbered").output,
        Some(json!({ "odd": id % 2 == 1 }))
    );
    for s in &run.steps {
        assert!(s.started_at.is_some() && s.finished_at.is_some(), "{s:?}");
    }
    common::wait_until(
        Duration::from_secs(10),
        "the action's job acked",
        || async { node_jobs_of(&flow, id).await.len() == 1 },
    )
    .await;
    assert_eq!(
        node_jobs_of(&flow, id).await,
        ["notify"],
        "only the action was a job"
    );
    flow.stop().await;
}

#[tokio::test]
async fn a_pure_node_whose_expression_fails_fails_as_a_job_would() {
    let flow = Flow::start(&[INLINE]).await;
    // `100 / 0`: the walk stops at `plain`, whose job fails for good (an expression error is permanent).
    let id = flow.trigger("inline", json!({ "amount": 0 })).await;
    let run = flow.finished(id, "failed").await;
    assert_eq!(run.failed_node.as_deref(), Some("plain"));
    assert_eq!(step(&run, "big").outcome.as_deref(), Some("else"));
    let plain = step(&run, "plain");
    assert_eq!(plain.status, StepStatus::Failed);
    assert!(
        plain
            .error
            .as_deref()
            .unwrap_or("")
            .contains("100 / trigger.amount"),
        "{plain:?}"
    );
    assert!(flow.recorder.messages().is_empty());
    dead_letters_reach(&flow, 1).await;
    flow.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_share_commits_and_an_idempotency_key_starts_one_run_even_within_a_batch()
{
    let flow = Flow::without_worker(&[FRAGILE, INLINE]).await;
    // 400 starts at once over two workflows: 100 without a key, and 300 sharing 30 keys (10 callers each).
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..400 {
        let engine = Arc::clone(&flow.engine);
        calls.spawn(async move {
            let (workflow, data) = if i % 2 == 0 {
                ("fragile", json!({ "to": format!("+{i}") }))
            } else {
                ("inline", json!({ "amount": 500 }))
            };
            let key = (i >= 100).then(|| format!("{workflow}-{}", i % 30));
            let started = engine.start_run(workflow, data, key.clone(), None).await;
            (key, started.expect("start"))
        });
    }
    let mut by_key: std::collections::HashMap<String, Vec<herald::workflow::Started>> =
        Default::default();
    let mut unkeyed = std::collections::HashSet::new();
    while let Some(answer) = calls.join_next().await {
        let (key, started) = answer.unwrap();
        match key {
            Some(key) => by_key.entry(key).or_default().push(started),
            None => {
                let herald::workflow::Started::Created { id, .. } = started else {
                    panic!("a start without a key found an existing run: {started:?}")
                };
                assert!(unkeyed.insert(id), "run {id} answered twice");
            }
        }
    }
    assert_eq!(unkeyed.len(), 100);
    assert_eq!(by_key.len(), 30);
    for (key, answers) in &by_key {
        let created = answers
            .iter()
            .filter(|s| matches!(s, herald::workflow::Started::Created { .. }))
            .count();
        assert_eq!(created, 1, "{key}: {answers:?}");
        let ids: std::collections::HashSet<i64> = answers
            .iter()
            .map(|s| match s {
                herald::workflow::Started::Created { id, .. }
                | herald::workflow::Started::Existing { id, .. } => *id,
            })
            .collect();
        assert_eq!(
            ids.len(),
            1,
            "{key}: every caller got the same run: {answers:?}"
        );
    }
    let pool = &flow.db.pool;
    assert_eq!(
        common::scalar_i64(pool, "SELECT count(*) FROM herald_runs").await,
        130
    );
    // One first job per run, in the same transactions as the runs.
    assert_eq!(common::live_jobs(pool).await, 130);
    // Shared commits: fewer inserting transactions than runs.
    let transactions =
        common::scalar_i64(pool, "SELECT count(DISTINCT xmin::text) FROM herald_runs").await;
    assert!(
        transactions < 130,
        "{transactions} transactions for 130 runs"
    );
    flow.stop().await;
}

/// A start whose idempotency key is held by a transaction that does not end (a run inserted and never committed)
/// gives up at the batch writers' statement deadline instead of holding its batch, and the starts that shared
/// that batch are written without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_stuck_behind_a_held_key_gives_up_and_its_batch_goes_on() {
    let flow = Flow::without_worker(&[FRAGILE]).await;
    let mut holder = flow.db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO herald_runs (workflow, version, status, context, idempotency_key) \
         VALUES ('fragile', 1, 'running', '{}', 'held')",
    )
    .execute(&mut *holder)
    .await
    .unwrap();
    let began = std::time::Instant::now();
    let stuck = flow
        .engine
        .start_run("fragile", json!({}), Some("held".into()), None);
    let free = flow.engine.start_run("fragile", json!({}), None, None);
    let (stuck, free) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(stuck, free) })
            .await
            .expect("a start waited on a lock without a deadline");
    let error = stuck.expect_err("the held key cannot be taken");
    assert!(error.to_string().contains("statement timeout"), "{error}");
    assert!(
        matches!(free, Ok(herald::workflow::Started::Created { .. })),
        "{free:?}"
    );
    assert!(
        began.elapsed() >= Duration::from_secs(9),
        "it did wait for the lock"
    );
    holder.rollback().await.unwrap();
    let runs = common::scalar_i64(&flow.db.pool, "SELECT count(*) FROM herald_runs").await;
    assert_eq!(runs, 1, "only the free start's run");
    flow.stop().await;
}
