//! The HTTP email adapters (SendGrid, Mailgun) against local servers speaking their wire formats.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fake_provider::{FakeProvider, Reply};
use base64::Engine as _;
use herald::channels::providers;
use herald::channels::{ChannelKind, Message, Outcome, Provider};
use serde_json::json;

fn email(to: &str) -> Message {
    Message {
        channel: ChannelKind::Email,
        providers: Vec::new(),
        to: to.into(),
        content: BTreeMap::from([
            ("subject".to_string(), "Welcome".to_string()),
            ("body".to_string(), "Hi Ada".to_string()),
            ("html".to_string(), "<p>Hi Ada</p>".to_string()),
            ("unsubscribe_url".to_string(), UNSUBSCRIBE.to_string()),
        ]),
        idempotency_key: "run:7:1:welcome_email".into(),
    }
}

/// A one-click unsubscribe link: sent as the List-Unsubscribe headers (RFC 8058).
const UNSUBSCRIBE: &str = "https://herald.test/v1/unsubscribe/tok.sig";

fn sendgrid(fake: &FakeProvider) -> Arc<dyn Provider> {
    let settings = json!({ "base_url": fake.url(), "api_key": "SG.secret", "from": "noreply@acme.test", "timeout_ms": 300 });
    providers::build("sendgrid", &settings).expect("sendgrid builds")
}

fn mailgun(fake: &FakeProvider) -> Arc<dyn Provider> {
    let settings = json!({
        "base_url": fake.url(), "api_key": "key-secret", "domain": "mg.acme.test", "from": "Acme <noreply@acme.test>",
        "timeout_ms": 300,
    });
    providers::build("mailgun", &settings).expect("mailgun builds")
}

#[tokio::test]
async fn sendgrid_sends_the_v3_mail_body_and_reads_the_message_id_header() {
    let fake = FakeProvider::start(Reply::status(202).header("x-message-id", "sg-abc123")).await;
    let outcome = sendgrid(&fake).send(&email("ada@example.com")).await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some("sg-abc123".into())
        }
    );
    let request = fake.single_request();
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/v3/mail/send")
    );
    assert_eq!(request.header("authorization"), Some("Bearer SG.secret"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body = request.json();
    assert_eq!(
        body["personalizations"],
        json!([{ "to": [{ "email": "ada@example.com" }] }])
    );
    assert_eq!(body["from"], json!({ "email": "noreply@acme.test" }));
    assert_eq!(body["subject"], "Welcome");
    assert_eq!(
        body["content"],
        json!([{ "type": "text/plain", "value": "Hi Ada" }, { "type": "text/html", "value": "<p>Hi Ada</p>" }])
    );
    assert_eq!(
        body["headers"],
        json!({ "List-Unsubscribe": format!("<{UNSUBSCRIBE}>"),
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click" })
    );
}

#[tokio::test]
async fn sendgrid_answers_are_classified() {
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 30;
    let fake = FakeProvider::start(
        Reply::json(
            429,
            json!({ "errors": [{ "message": "too many requests" }] }),
        )
        .header("x-ratelimit-reset", &reset.to_string()),
    )
    .await;
    let outcome = sendgrid(&fake).send(&email("a@b")).await;
    let Outcome::RateLimited {
        retry_after: Some(wait),
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!((28..=30).contains(&wait.as_secs()), "reset - now: {wait:?}");

    let cases = [
        (
            Reply::json(
                400,
                json!({ "errors": [{ "field": "from.email", "message": "invalid" }] }),
            ),
            "permanent",
        ),
        (Reply::status(413), "permanent"),
        (
            Reply::json(401, json!({ "errors": [{ "message": "bad key" }] })),
            "config",
        ),
        (
            Reply::json(403, json!({ "errors": [{ "message": "blocked" }] })),
            "config",
        ),
        (Reply::status(500), "transient"),
        (Reply::text(503, "<html>maintenance</html>"), "transient"),
    ];
    for (reply, expected) in cases {
        let shown = format!("{reply:?}");
        let fake = FakeProvider::start(reply).await;
        assert_eq!(
            sendgrid(&fake).send(&email("a@b")).await.label(),
            expected,
            "{shown}"
        );
    }
    let fake = FakeProvider::start(Reply::json(
        400,
        json!({ "errors": [{ "field": "from.email", "message": "invalid" }] }),
    ))
    .await;
    let outcome = sendgrid(&fake).send(&email("a@b")).await;
    assert!(
        outcome.reason().unwrap().contains("from.email: invalid"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn mailgun_posts_a_multipart_form_with_basic_auth() {
    let fake = FakeProvider::start(Reply::json(
        200,
        json!({ "id": "<20261123.1@mg.acme.test>", "message": "Queued. Thank you." }),
    ))
    .await;
    let outcome = mailgun(&fake).send(&email("ada@example.com")).await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some("20261123.1@mg.acme.test".into())
        }
    );
    let request = fake.single_request();
    assert_eq!(request.path, "/v3/mg.acme.test/messages");
    let basic = base64::engine::general_purpose::STANDARD.encode("api:key-secret");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert!(
        request
            .header("content-type")
            .unwrap()
            .starts_with("multipart/form-data; boundary=")
    );
    let body = request.text();
    for (name, value) in [
        ("from", "Acme <noreply@acme.test>"),
        ("to", "ada@example.com"),
        ("subject", "Welcome"),
        ("text", "Hi Ada"),
        ("html", "<p>Hi Ada</p>"),
        ("h:List-Unsubscribe", &format!("<{UNSUBSCRIBE}>")),
        ("h:List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ] {
        let part = format!("name=\"{name}\"\r\n\r\n{value}\r\n");
        assert!(body.contains(&part), "missing form field {name}: {body}");
    }
}

#[tokio::test]
async fn mailgun_answers_are_classified() {
    let cases = [
        (
            Reply::json(
                400,
                json!({ "message": "to parameter is not a valid address" }),
            ),
            "permanent",
        ),
        (Reply::status(401).body("Forbidden"), "config"),
        (Reply::status(403), "config"),
        (
            Reply::status(420).header("retry-after", "60"),
            "rate_limited",
        ),
        (Reply::status(429), "rate_limited"),
        (Reply::status(500).body("<html>"), "transient"),
    ];
    for (reply, expected) in cases {
        let shown = format!("{reply:?}");
        let fake = FakeProvider::start(reply).await;
        assert_eq!(
            mailgun(&fake).send(&email("a@b")).await.label(),
            expected,
            "{shown}"
        );
    }
}

#[tokio::test]
async fn slow_answers_are_transient_and_missing_credentials_fail_the_build() {
    let fake = FakeProvider::start(Reply::status(202).delayed(Duration::from_secs(2))).await;
    assert_eq!(
        sendgrid(&fake).send(&email("a@b")).await.label(),
        "transient"
    );
    assert_eq!(
        mailgun(&fake).send(&email("a@b")).await.label(),
        "transient"
    );
    for (name, settings, missing) in [
        ("sendgrid", json!({ "from": "a@b" }), "api_key"),
        ("sendgrid", json!({ "api_key": "SG.x" }), "from"),
        (
            "mailgun",
            json!({ "api_key": "k", "from": "a@b" }),
            "domain",
        ),
    ] {
        let Err(error) = providers::build(name, &settings) else {
            panic!("{name} built without {missing}")
        };
        assert!(error.to_string().contains(missing), "{error}");
    }
}
