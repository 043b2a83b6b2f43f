//! Digest nodes: the runs that reach a digest with one key inside a window continue once, with the batch; exact
//! across worker processes, across a worker killed at the window's close, and for windows `until` a time of day in
//! the recipient's zone.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::flows::{Flow, step};
use crate::common::{scalar_i64, spawn_herald_with, wait_until};
use serde_json::{Value, json};

/// "N new comments" per user, collected over a few seconds.
const COMMENTS: &str = r#"
name: comments
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      user: { type: string }
      author: { type: string }
    next: batch
  - id: batch
    kind: digest
    window: 4s
    keep: 3
    key: "{{ trigger.user }}"
    next: mail
  - id: mail
    kind: action
    channel: email
    to: "{{ trigger.user }}@example.com"
    content:
      subject: "{{ digest.count }} new comments"
      body: "{% for e in digest.events %}{{ e.data.author }} {% endfor %}"
"#;

/// The same, but the first comment goes out at once.
const FIRST: &str = r#"
name: first
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      user: { type: string }
    next: batch
  - id: batch
    kind: digest
    window: 2s
    send_first: true
    key: "{{ trigger.user }}"
    next: mail
  - id: mail
    kind: action
    channel: email
    to: "{{ trigger.user }}@example.com"
    content:
      subject: "{{ digest.count }} new"
      body: "first: {{ digest.first }}"
"#;

/// A morning digest: until 09:00 in the run's recipient's zone (default key: workflow and recipient).
const MORNING: &str = r#"
name: morning
version: 1
nodes:
  - id: start
    kind: trigger
    next: batch
  - id: batch
    kind: digest
    until: "09:00"
    next: mail
  - id: mail
    kind: action
    channel: email
    to: "morning@example.com"
    content:
      subject: "{{ digest.count }} overnight"
      body: "."
"#;

async fn outcomes(flow: &Flow, outcome: &str) -> i64 {
    scalar_i64(
        &flow.db.pool,
        &format!(
            "SELECT count(*) FROM herald_run_steps WHERE node_id = 'batch' AND outcome = '{outcome}'"
        ),
    )
    .await
}

#[tokio::test]
async fn concurrent_arrivals_across_worker_processes_close_into_exactly_one_continuation_per_key() {
    let flow = Flow::without_worker(&[COMMENTS]).await;
    let mut data = Vec::new();
    for i in 0..60 {
        data.push(json!({"user": "ada", "author": format!("a{i}")}));
    }
    for i in 0..30 {
        data.push(json!({"user": "bob", "author": format!("b{i}")}));
    }
    let runs = flow.engine.start_runs("comments", data).await.unwrap();
    assert_eq!(runs.len(), 90);
    // Every node job is queued before any worker starts: two processes reach the digest at the same moment, each
    // on connections of its own (a `herald worker`, registered first, and this test's worker).
    let mut other = flow.other_worker().await;
    let flow = flow.with_worker();
    flow.all_runs_finished(Duration::from_secs(60)).await;
    other.kill().await.unwrap();
    // One continuation per key, the other runs batched; one message each (sent by whichever process closed the
    // window: the deliveries are the record), counting every comment.
    assert_eq!(outcomes(&flow, "released").await, 2);
    assert_eq!(outcomes(&flow, "batched").await, 88);
    let counts: Vec<String> = sqlx::query_scalar(
        "SELECT output->>'count' FROM herald_run_steps WHERE node_id = 'batch' AND outcome = 'released' ORDER BY 1",
    )
    .fetch_all(&flow.db.pool)
    .await
    .unwrap();
    assert_eq!(counts, vec!["30", "60"]);
    let sent: Vec<(String, i64)> = sqlx::query_as(
        "SELECT recipient, count(*) FROM herald_deliveries WHERE node_id = 'mail' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&flow.db.pool)
    .await
    .unwrap();
    assert_eq!(
        sent,
        vec![
            ("ada@example.com".to_string(), 1),
            ("bob@example.com".to_string(), 1)
        ]
    );
    // The batch's times: first and last arrival, within the window.
    let owner = scalar_i64(
        &flow.db.pool,
        "SELECT s.run_id FROM herald_run_steps s JOIN herald_digest_entries e USING (run_id, epoch, node_id) \
         WHERE s.outcome = 'released' AND e.seq = 1 AND (SELECT batched FROM herald_digest_windows WHERE id = e.window_id) = 60",
    )
    .await;
    let run = flow.finished(owner, "completed").await;
    let digest = &run.context["digest"];
    assert_eq!(digest["count"], json!(60));
    assert_eq!(digest["events"].as_array().map(Vec::len), Some(3));
    assert!(digest["first_at"].as_str() <= digest["last_at"].as_str());
    // A batched run completed at the digest: its path ended there, with the window it joined.
    let batched = scalar_i64(
        &flow.db.pool,
        "SELECT min(run_id) FROM herald_run_steps WHERE node_id = 'batch' AND outcome = 'batched'",
    )
    .await;
    let run = flow.finished(batched, "completed").await;
    assert!(step(&run, "batch").output.as_ref().unwrap()["window"].is_i64());
    assert!(run.steps.iter().all(|s| s.node != "mail"), "{run:#?}");
    flow.stop().await;
}

#[tokio::test]
async fn send_first_lets_the_first_event_through_and_a_later_event_opens_the_next_window() {
    let flow = Flow::without_worker(&[FIRST]).await;
    let data = vec![json!({"user": "ada"}); 4];
    let runs = flow.engine.start_runs("first", data).await.unwrap();
    assert_eq!(runs.len(), 4);
    let flow = flow.with_worker();
    flow.all_runs_finished(Duration::from_secs(30)).await;
    // The first went on alone at once; the three after it closed into one message.
    let mut subjects: Vec<String> = flow
        .recorder
        .to("ada@example.com")
        .iter()
        .map(|m| m.content["subject"].clone())
        .collect();
    subjects.sort();
    assert_eq!(subjects, vec!["1 new", "3 new"]);
    assert_eq!(outcomes(&flow, "released").await, 2);
    assert_eq!(outcomes(&flow, "batched").await, 2);
    // The window is closed: the next comment opens a new one, and (send_first) goes out at once.
    let later = flow.trigger("first", json!({"user": "ada"})).await;
    let run = flow.finished(later, "completed").await;
    assert_eq!(run.context["digest"]["count"], json!(1));
    assert_eq!(run.context["digest"]["first"], json!(true));
    assert_eq!(flow.recorder.to("ada@example.com").len(), 3);
    let windows = "SELECT count(*) FROM herald_digest_windows";
    assert_eq!(scalar_i64(&flow.db.pool, windows).await, 2);
    flow.stop().await;
}

#[tokio::test]
async fn a_retried_close_continues_once_with_the_same_batch() {
    let flow = Flow::without_worker(&[COMMENTS]).await;
    let data = (0..3)
        .map(|i| json!({"user": "cy", "author": format!("c{i}")}))
        .collect();
    flow.engine.start_runs("comments", data).await.unwrap();
    let flow = flow.with_worker();
    wait_until(Duration::from_secs(20), "the window's owner parked", || async {
        outcomes(&flow, "batched").await == 2
            && scalar_i64(
                &flow.db.pool,
                "SELECT count(*) FROM herald_run_steps WHERE node_id = 'batch' AND status = 'waiting'",
            )
            .await
                == 1
    })
    .await;
    // An earlier close committed and its worker died before the step was recorded: the window is closed already.
    // A comment arriving now opens the next window; the resumed owner reads the same batch of three.
    sqlx::query("UPDATE herald_digest_windows SET closed_at = now(), closes_at = now()")
        .execute(&flow.db.pool)
        .await
        .unwrap();
    let late = flow
        .trigger("comments", json!({"user": "cy", "author": "late"}))
        .await;
    sqlx::query("UPDATE herald_jobs SET run_at = now() WHERE payload->>'phase' = 'resume'")
        .execute(&flow.db.pool)
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "the first batch sent", || async {
        !flow.recorder.to("cy@example.com").is_empty()
    })
    .await;
    let sent = flow.recorder.to("cy@example.com");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].content["subject"], "3 new comments");
    // The three comments (in the order they reached the digest, which concurrent workers may shuffle).
    let mut authors: Vec<&str> = sent[0].content["body"].split_whitespace().collect();
    authors.sort_unstable();
    assert_eq!(authors, ["c0", "c1", "c2"]);
    // The late comment owns a window of its own.
    flow.step_reaches(late, "batch", "waiting").await;
    assert_eq!(
        scalar_i64(&flow.db.pool, "SELECT count(*) FROM herald_digest_windows").await,
        2
    );
    flow.stop().await;
}

#[tokio::test]
async fn a_worker_killed_at_the_windows_close_loses_no_batch_and_sends_none_twice() {
    const KEYS: usize = 400;
    let flow = Flow::without_worker(&[COMMENTS]).await;
    let data: Vec<Value> = (0..KEYS)
        .flat_map(|k| {
            (0..2).map(move |i| json!({"user": format!("u{k}"), "author": format!("a{i}")}))
        })
        .collect();
    flow.engine.start_runs("comments", data).await.unwrap();
    let outbox = tempfile::NamedTempFile::new().unwrap();
    let outbox_path = outbox.path().to_str().unwrap().to_string();
    let env = [
        ("HERALD_CHANNELS__SINK", "file"),
        ("HERALD_CHANNELS__OUTBOX_FILE", outbox_path.as_str()),
    ];
    let args = ["worker", "--queues", "workflows:8"];
    let mut victim = spawn_herald_with(&flow.db.url, &args, &env);
    // Every window opens within moments, so they close together: kill the worker as the first closes land.
    wait_until(
        Duration::from_secs(60),
        "the first windows closed",
        || async { outcomes(&flow, "released").await >= 1 },
    )
    .await;
    victim.kill().await.unwrap(); // SIGKILL: closes in flight, leases held
    let released_at_kill = outcomes(&flow, "released").await;
    assert!(
        released_at_kill < KEYS as i64,
        "the kill must land while windows are closing ({released_at_kill} of {KEYS} done)"
    );
    let mut survivor = spawn_herald_with(&flow.db.url, &args, &env);
    flow.all_runs_finished(Duration::from_secs(120)).await;
    survivor.kill().await.unwrap();
    assert_eq!(outcomes(&flow, "released").await, KEYS as i64);
    assert_eq!(outcomes(&flow, "batched").await, KEYS as i64);
    let windows =
        "SELECT count(*) FROM herald_digest_windows WHERE closed_at IS NOT NULL AND batched = 2";
    assert_eq!(scalar_i64(&flow.db.pool, windows).await, KEYS as i64);
    // One message per key, never two (a send the kill cut off is `unknown`, not sent again).
    let text = std::fs::read_to_string(&outbox_path).unwrap();
    let mut per_address: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        let message: Value = serde_json::from_str(line).expect("whole JSON lines");
        assert_eq!(
            message["content"]["subject"],
            json!("2 new comments"),
            "{message}"
        );
        *per_address
            .entry(message["to"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(per_address.values().all(|n| *n == 1), "{per_address:?}");
    let deliveries =
        "SELECT count(DISTINCT recipient) FROM herald_deliveries WHERE node_id = 'mail'";
    assert_eq!(scalar_i64(&flow.db.pool, deliveries).await, KEYS as i64);
    eprintln!("windows closed at the kill: {released_at_kill} of {KEYS}");
}

#[tokio::test]
async fn a_window_until_a_time_of_day_closes_then_in_the_recipients_zone() {
    let flow = Flow::start(&[MORNING]).await;
    let zone = "America/New_York";
    herald::recipients::store::put(
        &flow.db.pool,
        &herald::audit::Actor::cli(),
        "night-owl",
        &herald::recipients::Profile::parse(&json!({"timezone": zone}), false).unwrap(),
    )
    .await
    .unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let started = flow
            .engine
            .start_run_for("morning", json!({}), None, None, Some("night-owl".into()))
            .await
            .unwrap();
        let herald::workflow::Started::Created { id, .. } = started else {
            panic!("{started:?}")
        };
        runs.push(id);
    }
    wait_until(
        Duration::from_secs(20),
        "two batched, one waiting",
        || async { outcomes(&flow, "batched").await == 2 },
    )
    .await;
    // The owner parks after the others joined: its timer job is written by its own step, a moment later.
    wait_until(
        Duration::from_secs(20),
        "the window's timer job",
        || async {
            scalar_i64(
                &flow.db.pool,
                "SELECT count(*) FROM herald_jobs WHERE payload->>'phase' = 'resume'",
            )
            .await
                == 1
        },
    )
    .await;
    // The window closes at the next 09:00 in New York (the database's clock), and the close is a scheduled job.
    let (opened, closes): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT opened_at, closes_at FROM herald_digest_windows")
            .fetch_one(&flow.db.pool)
            .await
            .unwrap();
    let tz: chrono_tz::Tz = zone.parse().unwrap();
    let nine = chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap();
    assert_eq!(
        closes,
        herald::recipients::quiet_hours::next_local(opened, nine, tz)
    );
    assert_eq!(
        closes.with_timezone(&tz).format("%H:%M").to_string(),
        "09:00"
    );
    assert!(closes > opened && closes - opened <= chrono::Duration::hours(25));
    let timer: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT run_at FROM herald_jobs WHERE payload->>'phase' = 'resume'")
            .fetch_one(&flow.db.pool)
            .await
            .unwrap();
    assert_eq!(timer, closes);
    // Morning comes.
    sqlx::query("UPDATE herald_digest_windows SET closes_at = now()")
        .execute(&flow.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE herald_jobs SET run_at = now() WHERE payload->>'phase' = 'resume'")
        .execute(&flow.db.pool)
        .await
        .unwrap();
    flow.all_runs_finished(Duration::from_secs(20)).await;
    let sent = flow.recorder.to("morning@example.com");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].content["subject"], "3 overnight");
    flow.stop().await;
}

#[tokio::test]
async fn a_window_whose_owner_was_cancelled_is_taken_over_by_the_next_event() {
    let flow = Flow::start(&[COMMENTS]).await;
    let first = flow
        .trigger("comments", json!({"user": "dee", "author": "d0"}))
        .await;
    flow.step_reaches(first, "batch", "waiting").await;
    flow.engine
        .cancel_run(&herald::audit::Actor::cli(), first)
        .await
        .unwrap();
    // The next comment takes the window over (the cancelled owner can no longer close it) and parks as its owner;
    // the one after joins it.
    let second = flow
        .trigger("comments", json!({"user": "dee", "author": "d1"}))
        .await;
    flow.step_reaches(second, "batch", "waiting").await;
    let third = flow
        .trigger("comments", json!({"user": "dee", "author": "d2"}))
        .await;
    flow.finished(third, "completed").await;
    let windows = "SELECT count(*) FROM herald_digest_windows";
    assert_eq!(scalar_i64(&flow.db.pool, windows).await, 1);
    sqlx::query("UPDATE herald_digest_windows SET closes_at = now()")
        .execute(&flow.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE herald_jobs SET run_at = now() WHERE payload->>'phase' = 'resume'")
        .execute(&flow.db.pool)
        .await
        .unwrap();
    flow.finished(second, "completed").await;
    // The cancelled run's comment is in the batch: nothing batched is dropped.
    let sent = flow.recorder.to("dee@example.com");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].content["subject"], "3 new comments");
    flow.stop().await;
}

/// Two digest nodes on one key template: each has windows of its own.
const TWO_DIGESTS: &str = r#"
name: two
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      user: { type: string }
    next: [daily, hourly]
  - id: daily
    kind: digest
    window: 1h
    key: "{{ trigger.user }}"
  - id: hourly
    kind: digest
    window: 1h
    key: "{{ trigger.user }}"
"#;

#[tokio::test]
async fn two_digest_nodes_never_share_a_window() {
    let flow = Flow::start(&[TWO_DIGESTS]).await;
    let run = flow.trigger("two", json!({"user": "eve"})).await;
    flow.step_reaches(run, "daily", "waiting").await;
    flow.step_reaches(run, "hourly", "waiting").await;
    let owners =
        "SELECT count(DISTINCT key) FROM herald_digest_windows WHERE owner_run IS NOT NULL";
    assert_eq!(scalar_i64(&flow.db.pool, owners).await, 2);
    flow.stop().await;
}
