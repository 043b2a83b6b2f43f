//! The chat adapters (Slack, Discord, Teams) against local servers speaking each one's wire format: the exact
//! request sent, and the outcome derived from every kind of answer.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::fake_provider::{FakeProvider, Reply};
use herald::channels::providers;
use herald::channels::{ChannelKind, Message, Outcome, Provider, RateScope};
use serde_json::json;

fn message(to: &str, body: &str, title: Option<&str>) -> Message {
    let mut content = BTreeMap::from([("body".to_string(), body.to_string())]);
    if let Some(title) = title {
        content.insert("title".into(), title.into());
    }
    Message {
        channel: ChannelKind::Chat,
        providers: Vec::new(),
        to: to.into(),
        content,
        idempotency_key: "run:1:1:notify".into(),
    }
}

fn adapter(name: &str, fake: &FakeProvider, path: &str) -> Arc<dyn Provider> {
    let settings =
        json!({ "webhooks": { "ops": format!("{}{path}", fake.url()) }, "timeout_ms": 300 });
    providers::build(name, &settings).expect("adapter builds")
}

async fn answer(name: &str, path: &str, reply: Reply) -> Outcome {
    let fake = FakeProvider::start(reply).await;
    adapter(name, &fake, path)
        .send(&message("ops", "hello", None))
        .await
}

#[tokio::test]
async fn slack_posts_the_text_to_the_named_webhook() {
    let fake = FakeProvider::start(Reply::text(200, "ok")).await;
    let slack = adapter("slack", &fake, "/services/T0/B0/secret");
    let outcome = slack
        .send(&message("ops", "disk full", Some("Alert")))
        .await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: None
        }
    );
    let request = fake.single_request();
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/services/T0/B0/secret")
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.json(), json!({ "text": "*Alert*\ndisk full" }));
    assert_eq!(
        slack.destination_key(&message("ops", "x", None)).as_deref(),
        Some("ops")
    );
}

#[tokio::test]
async fn slack_answers_are_classified_by_status_and_plain_text_body() {
    let cases = [
        (Reply::text(400, "invalid_payload"), "permanent"),
        (Reply::text(404, "channel_not_found"), "permanent"),
        (Reply::text(410, "channel_is_archived"), "permanent"),
        (Reply::text(403, "action_prohibited"), "config"),
        (Reply::text(404, "no_service"), "config"),
        (Reply::text(500, "<html>oops</html>"), "transient"),
        (Reply::status(200).body("<html>not slack</html>"), "sent"),
    ];
    for (reply, expected) in cases {
        let shown = format!("{reply:?}");
        assert_eq!(
            answer("slack", "/s", reply).await.label(),
            expected,
            "{shown}"
        );
    }
    let limited = answer(
        "slack",
        "/s",
        Reply::text(429, "rate_limited").header("retry-after", "7"),
    )
    .await;
    assert_eq!(
        limited,
        Outcome::RateLimited {
            reason: "429 rate_limited".into(),
            retry_after: Some(Duration::from_secs(7)),
            scope: RateScope::Destination,
        }
    );
}

#[tokio::test]
async fn discord_waits_for_the_message_and_reads_its_id() {
    let fake =
        FakeProvider::start(Reply::json(200, json!({ "id": "1180", "content": "hi" }))).await;
    let discord = adapter("discord", &fake, "/api/webhooks/42/token");
    let outcome = discord.send(&message("ops", "deploy done", None)).await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some("1180".into())
        }
    );
    let request = fake.single_request();
    assert_eq!(request.path, "/api/webhooks/42/token");
    assert_eq!(request.query.as_deref(), Some("wait=true"));
    assert_eq!(request.json(), json!({ "content": "deploy done" }));
}

#[tokio::test]
async fn discord_answers_are_classified() {
    let limited = answer(
        "discord",
        "/w",
        Reply::json(429, json!({ "message": "You are being rate limited.", "retry_after": 0.5, "global": false }))
            .header("retry-after", "1"),
    )
    .await;
    let Outcome::RateLimited {
        retry_after, scope, ..
    } = limited
    else {
        panic!("{limited:?}")
    };
    assert_eq!(
        (retry_after, scope),
        (Some(Duration::from_millis(500)), RateScope::Destination)
    );
    let cases = [
        (
            Reply::json(404, json!({ "code": 10015, "message": "Unknown Webhook" })),
            "config",
        ),
        (
            Reply::json(
                401,
                json!({ "code": 50027, "message": "Invalid Webhook Token" }),
            ),
            "config",
        ),
        (
            Reply::json(
                400,
                json!({ "code": 50006, "message": "Cannot send an empty message" }),
            ),
            "permanent",
        ),
        (Reply::text(502, "<html>Bad Gateway</html>"), "transient"),
        (Reply::status(204), "sent"),
    ];
    for (reply, expected) in cases {
        let shown = format!("{reply:?}");
        assert_eq!(
            answer("discord", "/w", reply).await.label(),
            expected,
            "{shown}"
        );
    }
    let fake = FakeProvider::start(Reply::status(204)).await;
    let too_long = "x".repeat(2001);
    let outcome = adapter("discord", &fake, "/w")
        .send(&message("ops", &too_long, None))
        .await;
    assert_eq!(outcome.label(), "permanent");
    assert_eq!(fake.request_count(), 0, "refused before sending");
}

#[tokio::test]
async fn teams_sends_an_adaptive_card_and_reads_legacy_errors_inside_a_200() {
    let fake = FakeProvider::start(Reply::status(202)).await;
    let teams = adapter("teams", &fake, "/workflows/trigger");
    let outcome = teams.send(&message("ops", "build broke", Some("CI"))).await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: None
        }
    );
    let body = fake.single_request().json();
    assert_eq!(body["type"], "message");
    let attachment = &body["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(attachment["content"]["type"], "AdaptiveCard");
    assert_eq!(attachment["content"]["body"][0]["text"], "CI");
    assert_eq!(attachment["content"]["body"][1]["text"], "build broke");

    let legacy = answer(
        "teams",
        "/w",
        Reply::text(
            200,
            "Microsoft Teams endpoint returned HTTP error 429 with ContextId tcid=0",
        ),
    )
    .await;
    assert_eq!(legacy.label(), "rate_limited");
    assert_eq!(
        answer("teams", "/w", Reply::text(200, "1")).await.label(),
        "sent"
    );
    assert_eq!(
        answer("teams", "/w", Reply::status(412)).await.label(),
        "transient"
    );
    assert_eq!(
        answer("teams", "/w", Reply::status(400)).await.label(),
        "permanent"
    );
    assert_eq!(
        answer("teams", "/w", Reply::status(403)).await.label(),
        "config"
    );
}

#[tokio::test]
async fn a_slow_webhook_times_out_as_transient_and_an_unknown_name_is_permanent() {
    for name in ["slack", "discord", "teams"] {
        let fake = FakeProvider::start(Reply::status(200).delayed(Duration::from_secs(2))).await;
        let outcome = adapter(name, &fake, "/slow")
            .send(&message("ops", "x", None))
            .await;
        assert_eq!(outcome.label(), "transient", "{name}: {outcome:?}");
        assert!(
            !outcome.reason().unwrap_or("").contains("/slow"),
            "{name}: the URL is a secret: {outcome:?}"
        );

        let outcome = adapter(name, &fake, "/slow")
            .send(&message("nope", "x", None))
            .await;
        assert_eq!(outcome.label(), "permanent", "{name}");
    }
}

#[tokio::test]
async fn a_chat_adapter_without_webhooks_fails_at_build_and_never_prints_a_url() {
    for name in ["slack", "discord", "teams"] {
        let Err(error) = providers::build(name, &json!({})) else {
            panic!("{name} built without webhooks")
        };
        assert!(error.to_string().contains("webhook"), "{error}");
        let Err(error) = providers::build(
            name,
            &json!({ "webhooks": { "ops": "not a url secret-123" } }),
        ) else {
            panic!("{name} accepted a bad URL");
        };
        assert!(!error.to_string().contains("secret-123"), "{error}");
    }
    let mut settings = common::settings();
    settings.providers.0.insert(
        "slack".into(),
        json!({ "webhooks": { "ops": "https://hooks/secret-xyz" } }),
    );
    let printed = format!("{settings:?}");
    assert!(
        printed.contains("slack") && !printed.contains("secret-xyz"),
        "{printed}"
    );
}
