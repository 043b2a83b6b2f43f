//! The SMS adapters (Twilio, Vonage) against local servers speaking their wire formats.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::fake_provider::{FakeProvider, Reply};
use base64::Engine as _;
use herald::channels::providers;
use herald::channels::{ChannelKind, Message, Outcome, Provider};
use serde_json::json;

fn sms(to: &str, body: &str) -> Message {
    Message {
        channel: ChannelKind::Sms,
        providers: Vec::new(),
        to: to.into(),
        content: BTreeMap::from([("body".to_string(), body.to_string())]),
        idempotency_key: "run:1:1:sms".into(),
    }
}

fn twilio(fake: &FakeProvider) -> Arc<dyn Provider> {
    let settings = json!({
        "base_url": fake.url(), "account_sid": "AC123", "auth_token": "tok-secret", "from": "+15550001111",
        "status_callback_url": "https://herald.example.com/v1/callbacks/twilio", "timeout_ms": 300,
    });
    providers::build("twilio", &settings).expect("twilio builds")
}

fn vonage(fake: &FakeProvider) -> Arc<dyn Provider> {
    let settings = json!({
        "base_url": fake.url(), "api_key": "key1", "api_secret": "vonage-secret", "from": "Acme", "timeout_ms": 300,
    });
    providers::build("vonage", &settings).expect("vonage builds")
}

fn twilio_error(status: u16, code: i64) -> Reply {
    Reply::json(
        status,
        json!({ "code": code, "message": "m", "more_info": "https://www.twilio.com/docs/errors", "status": status }),
    )
}

#[tokio::test]
async fn twilio_posts_the_form_with_basic_auth_and_reads_the_sid() {
    let fake = FakeProvider::start(Reply::json(
        201,
        json!({ "sid": "SM42", "status": "queued" }),
    ))
    .await;
    let outcome = twilio(&fake)
        .send(&sms("+15552223333", "Your code is 1234"))
        .await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some("SM42".into())
        }
    );
    let request = fake.single_request();
    assert_eq!(request.method.as_str(), "POST");
    assert_eq!(request.path, "/2010-04-01/Accounts/AC123/Messages.json");
    let basic = base64::engine::general_purpose::STANDARD.encode("AC123:tok-secret");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form: BTreeMap<_, _> = request.form().into_iter().collect();
    assert_eq!(form["To"], "+15552223333");
    assert_eq!(form["From"], "+15550001111");
    assert_eq!(form["Body"], "Your code is 1234");
    assert_eq!(
        form["StatusCallback"],
        "https://herald.example.com/v1/callbacks/twilio"
    );
}

#[tokio::test]
async fn twilio_answers_are_classified_by_error_code_first() {
    let cases = [
        (twilio_error(400, 21610), "suppressed"),
        (twilio_error(400, 21211), "permanent"),
        (twilio_error(400, 21614), "permanent"),
        (twilio_error(401, 20003), "config"),
        (twilio_error(500, 20500), "transient"),
        (Reply::text(503, "<html>unavailable</html>"), "transient"),
    ];
    for (reply, expected) in cases {
        let shown = format!("{reply:?}");
        let fake = FakeProvider::start(reply).await;
        assert_eq!(
            twilio(&fake).send(&sms("+1555", "x")).await.label(),
            expected,
            "{shown}"
        );
    }
    let fake = FakeProvider::start(twilio_error(429, 20429).header("retry-after", "3")).await;
    let outcome = twilio(&fake).send(&sms("+1555", "x")).await;
    let Outcome::RateLimited { retry_after, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(retry_after, Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn vonage_failures_hide_inside_a_200() {
    let accepted = json!({ "message-count": "1", "messages": [{ "status": "0", "message-id": "0A00000012345678" }] });
    let fake = FakeProvider::start(Reply::json(200, accepted)).await;
    let outcome = vonage(&fake).send(&sms("447700900000", "hi")).await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some("0A00000012345678".into())
        }
    );
    let request = fake.single_request();
    assert_eq!(request.path, "/sms/json");
    let form: BTreeMap<_, _> = request.form().into_iter().collect();
    assert_eq!(
        (
            form["api_key"].as_str(),
            form["api_secret"].as_str(),
            form["from"].as_str(),
            form["to"].as_str(),
            form["text"].as_str()
        ),
        ("key1", "vonage-secret", "Acme", "447700900000", "hi")
    );

    for (status, expected) in [
        ("1", "rate_limited"),
        ("5", "transient"),
        ("2", "permanent"),
        ("6", "permanent"),
        ("7", "suppressed"),
        ("4", "config"),
        ("9", "config"),
    ] {
        let body =
            json!({ "message-count": "1", "messages": [{ "status": status, "error-text": "e" }] });
        let fake = FakeProvider::start(Reply::json(200, body)).await;
        assert_eq!(
            vonage(&fake).send(&sms("44", "x")).await.label(),
            expected,
            "status {status}"
        );
    }
    let fake = FakeProvider::start(Reply::text(200, "<html>proxy</html>")).await;
    assert_eq!(
        vonage(&fake).send(&sms("44", "x")).await.label(),
        "transient",
        "garbage in a 200"
    );
}

#[tokio::test]
async fn slow_answers_are_transient_and_missing_credentials_fail_the_build() {
    let fake = FakeProvider::start(Reply::status(201).delayed(Duration::from_secs(2))).await;
    assert_eq!(
        twilio(&fake).send(&sms("+1", "x")).await.label(),
        "transient"
    );
    assert_eq!(
        vonage(&fake).send(&sms("+1", "x")).await.label(),
        "transient"
    );

    let Err(error) = providers::build("twilio", &json!({ "account_sid": "AC1", "from": "+1" }))
    else {
        panic!("built without auth_token");
    };
    assert!(error.to_string().contains("auth_token"), "{error}");
    let Err(error) = providers::build("vonage", &json!({ "api_key": "k", "from": "x" })) else {
        panic!("built without api_secret");
    };
    assert!(error.to_string().contains("api_secret"), "{error}");
    let Err(error) = providers::build(
        "twilio",
        &json!({ "account_sid": "AC1", "auth_token": "t-secret" }),
    ) else {
        panic!("built without a sender");
    };
    assert!(!error.to_string().contains("t-secret"), "{error}");
}
