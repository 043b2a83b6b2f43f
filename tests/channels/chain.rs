//! Action nodes through real provider chains (the Slack and Discord adapters against fake servers speaking their
//! wire formats): fallback, permanent failures, circuit breakers and the run's timeline of attempts.

use crate::common;

use std::time::Duration;

use crate::common::flows::{Flow, step};
use crate::fake_provider::{FakeProvider, Reply};
use herald::channels::DeliveryStatus;
use herald::channels::breaker::CircuitState;
use herald::config::Settings;
use serde_json::json;

const ALERT: &str = r#"
name: alert
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      room: { type: string }
      text: { type: string }
    next: notify
  - id: notify
    kind: action
    channel: chat
    to: "{{ trigger.room }}"
    content:
      body: "{{ trigger.text }}"
"#;

/// Settings sending chat through `slack -> discord`, both pointed at fakes.
fn chat_settings(slack: &FakeProvider, discord: &FakeProvider) -> Settings {
    let mut settings = common::settings();
    settings.channels.sink = herald::channels::Sink::Providers;
    settings.channels.chains.chat = vec!["slack".into(), "discord".into()];
    settings.channels.retry_pause = Duration::from_millis(5);
    settings.channels.breaker_failures = 3;
    settings.channels.breaker_cooldown = Duration::from_secs(600);
    settings.providers.0.insert(
        "slack".into(),
        json!({ "webhooks": { "ops": format!("{}/services/T0/B0/xyz", slack.url()) }, "timeout_ms": 1000 }),
    );
    settings.providers.0.insert(
        "discord".into(),
        json!({ "webhooks": { "ops": format!("{}/api/webhooks/1/abc", discord.url()) }, "timeout_ms": 1000 }),
    );
    settings
}

async fn fakes() -> (FakeProvider, FakeProvider) {
    let slack = FakeProvider::start(Reply::text(200, "ok")).await;
    let discord = FakeProvider::start(Reply::json(200, json!({ "id": "d-1" }))).await;
    (slack, discord)
}

#[tokio::test]
async fn a_failing_first_provider_is_retried_then_the_next_one_sends() {
    let (slack, discord) = fakes().await;
    slack.set_default(Reply::text(503, "upstream unavailable"));
    let flow = Flow::with_providers(&[ALERT], &chat_settings(&slack, &discord))
        .await
        .with_worker();
    let id = flow
        .trigger("alert", json!({ "room": "ops", "text": "disk full" }))
        .await;
    let run = flow.finished(id, "completed").await;

    let output = step(&run, "notify").output.clone().unwrap();
    assert_eq!(output["provider"], "discord");
    assert_eq!(output["provider_message_id"], "d-1");
    let outcomes: Vec<_> = output["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("slack", "transient"),
            ("slack", "transient"),
            ("discord", "sent")
        ],
        "the timeline shows every attempt"
    );
    assert_eq!(
        slack.request_count(),
        2,
        "attempts_per_provider calls to slack"
    );
    assert_eq!(discord.single_request().json()["content"], "disk full");

    let deliveries = herald::channels::deliveries::for_run(&flow.db.pool, id)
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, DeliveryStatus::Sent);
    assert_eq!(deliveries[0].provider.as_deref(), Some("discord"));
    flow.stop().await;
}

#[tokio::test]
async fn a_permanent_answer_fails_the_node_and_never_falls_back() {
    let (slack, discord) = fakes().await;
    slack.set_default(Reply::text(400, "invalid_payload"));
    let flow = Flow::with_providers(&[ALERT], &chat_settings(&slack, &discord))
        .await
        .with_worker();
    let id = flow
        .trigger("alert", json!({ "room": "ops", "text": "bad" }))
        .await;
    let run = flow.finished(id, "failed").await;
    assert!(
        run.error
            .as_deref()
            .unwrap_or("")
            .contains("invalid_payload"),
        "{run:#?}"
    );
    assert_eq!(
        slack.request_count(),
        1,
        "a permanent answer is not retried"
    );
    assert_eq!(discord.request_count(), 0, "and never falls back");
    let deliveries = herald::channels::deliveries::for_run(&flow.db.pool, id)
        .await
        .unwrap();
    assert_eq!(deliveries[0].status, DeliveryStatus::Failed);
    flow.stop().await;
}

#[tokio::test]
async fn a_config_failure_opens_the_circuit_and_the_fleet_view_shows_it() {
    let (slack, discord) = fakes().await;
    slack.set_default(Reply::text(403, "action_prohibited"));
    let flow = Flow::with_providers(&[ALERT], &chat_settings(&slack, &discord))
        .await
        .with_worker();
    for text in ["one", "two", "three"] {
        let id = flow
            .trigger("alert", json!({ "room": "ops", "text": text }))
            .await;
        flow.finished(id, "completed").await;
    }
    assert_eq!(
        slack.request_count(),
        1,
        "after a config error the open circuit skips slack"
    );
    assert_eq!(discord.request_count(), 3);

    common::wait_until(
        Duration::from_secs(10),
        "the open circuit is recorded",
        || async {
            let circuits = herald::channels::circuits::list(&flow.db.pool)
                .await
                .unwrap();
            circuits
                .iter()
                .any(|c| c.provider == "slack" && c.state == CircuitState::Open)
        },
    )
    .await;
    flow.stop().await;
}

#[tokio::test]
async fn a_run_retry_after_a_permanent_failure_sends_once_more_and_a_sent_node_is_never_resent() {
    let (slack, discord) = fakes().await;
    slack.script([Reply::text(400, "invalid_payload")]);
    let flow = Flow::with_providers(&[ALERT], &chat_settings(&slack, &discord))
        .await
        .with_worker();
    let id = flow
        .trigger("alert", json!({ "room": "ops", "text": "again" }))
        .await;
    flow.finished(id, "failed").await;
    flow.engine
        .retry_run(&herald::audit::Actor::cli(), id)
        .await
        .unwrap();
    flow.finished(id, "completed").await;
    assert_eq!(
        slack.request_count(),
        2,
        "the operator's retry sent once more"
    );
    let deliveries = herald::channels::deliveries::for_run(&flow.db.pool, id)
        .await
        .unwrap();
    assert_eq!(
        deliveries.len(),
        1,
        "one delivery row per (run, node, recipient, channel)"
    );
    assert_eq!(deliveries[0].status, DeliveryStatus::Sent);
    flow.stop().await;
}

#[tokio::test]
async fn a_suppressed_recipient_is_skipped_and_the_run_goes_on() {
    let (slack, discord) = fakes().await;
    let flow = Flow::with_providers(&[ALERT], &chat_settings(&slack, &discord))
        .await
        .with_worker();
    herald::channels::deliveries::suppress(
        &flow.db.pool,
        herald::channels::ChannelKind::Chat,
        "ops",
        "channel archived",
        None,
    )
    .await
    .unwrap();
    let id = flow
        .trigger("alert", json!({ "room": "ops", "text": "quiet" }))
        .await;
    let run = flow.finished(id, "completed").await;
    assert_eq!(step(&run, "notify").outcome.as_deref(), Some("suppressed"));
    assert_eq!(
        slack.request_count() + discord.request_count(),
        0,
        "nothing was sent"
    );
    let deliveries = herald::channels::deliveries::for_run(&flow.db.pool, id)
        .await
        .unwrap();
    assert_eq!(deliveries[0].status, DeliveryStatus::Suppressed);
    flow.stop().await;
}
