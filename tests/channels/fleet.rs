//! Provider sends from separate `herald worker` processes: a fleet-wide rate limit shared by two workers, and a
//! worker killed with SIGKILL in the middle of a provider call (the message is never sent twice).

use crate::common;

use std::time::{Duration, Instant};

use crate::common::flows::{Flow, step};
use crate::common::{scalar_i64, spawn_herald_with, wait_until};
use crate::fake_provider::{FakeProvider, Reply};
use serde_json::json;

const ALERT: &str = r#"
name: alert
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      n: { type: string }
    next: notify
  - id: notify
    kind: action
    channel: chat
    to: ops
    content:
      body: "message {{ trigger.n }}"
"#;

/// Settings for a worker process sending chat through Slack at `webhook`, as environment variables.
fn slack_env(webhook: &str, rate_per_sec: Option<u32>) -> Vec<(String, String)> {
    let mut env = vec![
        ("HERALD_CHANNELS__SINK".to_string(), "providers".to_string()),
        ("HERALD_CHANNELS__CHAINS__CHAT".into(), "[\"slack\"]".into()),
        (
            "HERALD_PROVIDERS__SLACK__WEBHOOKS__OPS".into(),
            webhook.to_string(),
        ),
        ("HERALD_PROVIDERS__SLACK__TIMEOUT_MS".into(), "10000".into()),
    ];
    if let Some(rate) = rate_per_sec {
        env.push((
            "HERALD_PROVIDERS__SLACK__RATE_PER_SEC".into(),
            rate.to_string(),
        ));
    }
    env
}

fn spawn_worker(url: &str, env: &[(String, String)]) -> tokio::process::Child {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_herald_with(url, &["worker", "--queues", "workflows:16"], &env)
}

#[tokio::test]
async fn a_rate_of_20_per_second_is_shared_by_two_worker_processes() {
    let flow = Flow::without_worker(&[ALERT]).await;
    let slack = FakeProvider::start(Reply::text(200, "ok")).await;
    let runs: Vec<_> = (0..600).map(|n| json!({ "n": n.to_string() })).collect();
    flow.engine.start_runs("alert", runs).await.unwrap();

    let env = slack_env(&format!("{}/services/T/B/x", slack.url()), Some(20));
    let mut workers = vec![
        spawn_worker(&flow.db.url, &env),
        spawn_worker(&flow.db.url, &env),
    ];
    // Measure once both workers are registered and have had time to see each other (heartbeats and share
    // refreshes every second in tests): 60 more sends at 20/s is 3 s of settling.
    wait_until(
        Duration::from_secs(30),
        "both workers registered",
        || async { scalar_i64(&flow.db.pool, "SELECT count(*) FROM herald_workers").await == 2 },
    )
    .await;
    let registered = slack.request_count();
    wait_until(
        Duration::from_secs(30),
        "both workers at their share",
        || async { slack.request_count() >= registered + 60 },
    )
    .await;
    let window = Duration::from_secs(10);
    let start = Instant::now();
    let before = slack.request_count();
    wait_until(
        window + Duration::from_secs(5),
        "the measurement window",
        || async { start.elapsed() >= window },
    )
    .await;
    let sent = slack
        .requests()
        .iter()
        .filter(|r| r.at >= start && r.at < start + window)
        .count();
    for worker in &mut workers {
        worker.kill().await.unwrap();
    }
    let rate = sent as f64 / window.as_secs_f64();
    eprintln!("fleet rate over {window:?}: {rate:.2} msg/s ({before} sent before the window)");
    assert!(
        (19.0..=21.0).contains(&rate),
        "20 ± 1 msg/s across the fleet, measured {rate:.2}"
    );
}

#[tokio::test]
async fn a_worker_killed_mid_send_never_causes_a_second_send() {
    let flow = Flow::without_worker(&[ALERT]).await;
    // Slack holds the request for 3 s: the kill lands while the provider has the message.
    let slack = FakeProvider::start(Reply::text(200, "ok")).await;
    slack.script([Reply::text(200, "ok").delayed(Duration::from_secs(3))]);
    let env = slack_env(&format!("{}/services/T/B/x", slack.url()), None);
    let mut victim = spawn_worker(&flow.db.url, &env);
    let id = flow.trigger("alert", json!({ "n": "1" })).await;
    wait_until(
        Duration::from_secs(20),
        "the provider received the message",
        || async { slack.request_count() == 1 },
    )
    .await;
    victim.kill().await.unwrap(); // SIGKILL mid-call

    let mut survivor = spawn_worker(&flow.db.url, &env);
    let run = flow.finished(id, "completed").await;
    survivor.kill().await.unwrap();
    assert_eq!(
        step(&run, "notify").outcome.as_deref(),
        Some("unknown"),
        "{run:#?}"
    );
    assert_eq!(slack.request_count(), 1, "never sent twice");
    let status = "SELECT count(*) FROM herald_deliveries WHERE status = 'unknown'";
    assert_eq!(scalar_i64(&flow.db.pool, status).await, 1);
}

#[tokio::test]
async fn a_worker_with_a_missing_credential_stops_at_start_naming_it() {
    let db = common::TestDb::new().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["worker"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", &db.url)
        .env("HERALD_ENV", "test")
        .env("HERALD_CHANNELS__SINK", "providers")
        .env("HERALD_CHANNELS__CHAINS__EMAIL", "[\"sendgrid\"]")
        .env("HERALD_PROVIDERS__SENDGRID__FROM", "noreply@acme.test")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the worker stops instead of running")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sendgrid") && stderr.contains("api_key"),
        "{stderr}"
    );
}
