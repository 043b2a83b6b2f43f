//! The AWS adapters (SES v2 email, SNS SMS) against local servers: SigV4-signed requests (the signature is
//! recomputed here over what the server received) and errors classified by their type name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::fake_provider::{FakeProvider, Recorded, Reply};
use herald::channels::aws::{AwsSettings, AwsSigner};
use herald::channels::providers;
use herald::channels::{ChannelKind, Message, Outcome, Provider, Secret};
use serde_json::json;

fn message(channel: ChannelKind, to: &str) -> Message {
    Message {
        channel,
        providers: Vec::new(),
        to: to.into(),
        content: BTreeMap::from([
            ("subject".to_string(), "Receipt".to_string()),
            ("body".to_string(), "Thanks!".to_string()),
        ]),
        idempotency_key: "run:3:1:receipt".into(),
    }
}

fn aws(fake: &FakeProvider, extra: serde_json::Value) -> serde_json::Value {
    let mut settings = json!({
        "base_url": fake.url(), "region": "eu-west-1", "access_key_id": "AKIDTEST",
        "secret_access_key": "aws-secret-key", "timeout_ms": 300,
    });
    settings
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    settings
}

fn ses(fake: &FakeProvider) -> Arc<dyn Provider> {
    providers::build("ses", &aws(fake, json!({ "from": "billing@acme.test" }))).expect("ses builds")
}

fn sns(fake: &FakeProvider) -> Arc<dyn Provider> {
    providers::build("sns", &aws(fake, json!({ "sms_type": "Transactional" }))).expect("sns builds")
}

/// Checks the request's SigV4 signature by signing the same request again at its `x-amz-date`.
fn assert_signed(request: &Recorded, url: &str, service: &'static str) {
    let authorization = request.header("authorization").expect("signed");
    let date = request.header("x-amz-date").expect("x-amz-date");
    let prefix = format!(
        "AWS4-HMAC-SHA256 Credential=AKIDTEST/{}/eu-west-1/{service}/aws4_request",
        &date[..8]
    );
    assert!(authorization.starts_with(&prefix), "{authorization}");
    assert!(
        authorization.contains("SignedHeaders=") && authorization.contains("host"),
        "{authorization}"
    );
    let when = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
        .unwrap()
        .and_utc();
    let signer = AwsSigner::new(
        "test",
        service,
        AwsSettings {
            region: Some("eu-west-1".into()),
            access_key_id: Some("AKIDTEST".into()),
            secret_access_key: Secret::new("aws-secret-key"),
            session_token: None,
        },
    )
    .unwrap();
    let content_type = request.header("content-type").unwrap();
    let again = signer
        .sign(
            "POST",
            url,
            &[("content-type", content_type)],
            &request.body,
            SystemTime::from(when),
        )
        .unwrap();
    let expected = again
        .iter()
        .find(|(name, _)| name == "authorization")
        .unwrap();
    assert_eq!(
        authorization, expected.1,
        "the signature matches the request the server received"
    );
}

#[tokio::test]
async fn ses_sends_a_signed_v2_email_and_reads_the_message_id() {
    let fake = FakeProvider::start(Reply::json(200, json!({ "MessageId": "0102-ses-1" }))).await;
    let mut email = message(ChannelKind::Email, "ada@example.com");
    email.content.insert(
        "unsubscribe_url".into(),
        "https://herald.test/v1/unsubscribe/t.s".into(),
    );
    let outcome = ses(&fake).send(&email).await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some("0102-ses-1".into())
        }
    );
    let request = fake.single_request();
    assert_eq!(request.path, "/v2/email/outbound-emails");
    let body = request.json();
    assert_eq!(body["FromEmailAddress"], "billing@acme.test");
    assert_eq!(
        body["Destination"]["ToAddresses"],
        json!(["ada@example.com"])
    );
    assert_eq!(body["Content"]["Simple"]["Subject"]["Data"], "Receipt");
    assert_eq!(body["Content"]["Simple"]["Body"]["Text"]["Data"], "Thanks!");
    assert_eq!(
        body["Content"]["Simple"]["Headers"],
        json!([{ "Name": "List-Unsubscribe", "Value": "<https://herald.test/v1/unsubscribe/t.s>" },
               { "Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click" }])
    );
    assert_signed(
        &request,
        &format!("{}/v2/email/outbound-emails", fake.url()),
        "ses",
    );
}

#[tokio::test]
async fn ses_errors_are_classified_by_type_name_not_status() {
    let error = |status: u16, kind: &str, message: &str| {
        Reply::json(status, json!({ "message": message })).header(
            "x-amzn-errortype",
            &format!("{kind}:http://internal.amazon.com/"),
        )
    };
    let cases = [
        (
            error(400, "MessageRejected", "Email address is not verified."),
            "permanent",
        ),
        (
            error(400, "MailFromDomainNotVerifiedException", "x"),
            "permanent",
        ),
        (
            error(400, "AccountSuspendedException", "suspended"),
            "config",
        ),
        (error(400, "SendingPausedException", "paused"), "config"),
        (
            error(
                429,
                "TooManyRequestsException",
                "Maximum sending rate exceeded.",
            ),
            "rate_limited",
        ),
        (error(500, "InternalFailure", "x"), "transient"),
        (
            Reply::json(
                400,
                json!({ "__type": "com.amazon#BadRequestException", "message": "bad" }),
            ),
            "permanent",
        ),
        (Reply::text(503, "<html>"), "transient"),
    ];
    for (reply, expected) in cases {
        let shown = format!("{reply:?}");
        let fake = FakeProvider::start(reply).await;
        assert_eq!(
            ses(&fake)
                .send(&message(ChannelKind::Email, "a@b"))
                .await
                .label(),
            expected,
            "{shown}"
        );
    }
    let fake = FakeProvider::start(error(
        400,
        "ThrottlingException",
        "Daily message quota exceeded.",
    ))
    .await;
    let outcome = ses(&fake).send(&message(ChannelKind::Email, "a@b")).await;
    let Outcome::RateLimited { retry_after, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        retry_after,
        Some(Duration::from_secs(3600)),
        "a daily quota means waiting long"
    );
}

#[tokio::test]
async fn sns_publishes_a_signed_query_request_and_reads_the_xml_answer() {
    let answer = "<PublishResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult>\
                  <MessageId>567910cd-659e-55d4</MessageId></PublishResult></PublishResponse>";
    let fake =
        FakeProvider::start(Reply::text(200, answer).header("content-type", "text/xml")).await;
    let outcome = sns(&fake)
        .send(&message(ChannelKind::Sms, "+15551234567"))
        .await;
    assert_eq!(
        outcome,
        Outcome::Sent {
            provider_message_id: Some("567910cd-659e-55d4".into())
        }
    );
    let request = fake.single_request();
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/")
    );
    let form: BTreeMap<_, _> = request.form().into_iter().collect();
    assert_eq!(form["Action"], "Publish");
    assert_eq!(form["PhoneNumber"], "+15551234567");
    assert_eq!(form["Message"], "Thanks!");
    assert_eq!(form["Version"], "2010-03-31");
    assert_eq!(
        form["MessageAttributes.entry.1.Name"],
        "AWS.SNS.SMS.SMSType"
    );
    assert_eq!(
        form["MessageAttributes.entry.1.Value.StringValue"],
        "Transactional"
    );
    assert_signed(&request, &format!("{}/", fake.url()), "sns");
}

#[tokio::test]
async fn sns_errors_are_classified_by_code() {
    let error = |status: u16, code: &str| {
        Reply::text(
            status,
            &format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>m</Message></Error></ErrorResponse>"
            ),
        )
    };
    for (reply, expected) in [
        (error(400, "OptedOut"), "suppressed"),
        (error(400, "InvalidParameter"), "permanent"),
        (error(403, "AuthorizationError"), "config"),
        (error(400, "Throttling"), "rate_limited"),
        (error(500, "InternalError"), "transient"),
        (Reply::text(502, "<html>bad gateway</html>"), "transient"),
    ] {
        let shown = format!("{reply:?}");
        let fake = FakeProvider::start(reply).await;
        assert_eq!(
            sns(&fake)
                .send(&message(ChannelKind::Sms, "+1"))
                .await
                .label(),
            expected,
            "{shown}"
        );
    }
}

#[tokio::test]
async fn slow_answers_are_transient_and_missing_credentials_fail_the_build() {
    let fake = FakeProvider::start(Reply::status(200).delayed(Duration::from_secs(2))).await;
    assert_eq!(
        ses(&fake)
            .send(&message(ChannelKind::Email, "a@b"))
            .await
            .label(),
        "transient"
    );
    assert_eq!(
        sns(&fake)
            .send(&message(ChannelKind::Sms, "+1"))
            .await
            .label(),
        "transient"
    );
    let Err(error) = providers::build(
        "sns",
        &json!({ "region": "eu-west-1", "access_key_id": "AKID" }),
    ) else {
        panic!("built without a secret key");
    };
    assert!(error.to_string().contains("secret_access_key"), "{error}");
    let settings = AwsSettings {
        region: None,
        access_key_id: None,
        secret_access_key: Secret::new("aws-secret-key"),
        session_token: None,
    };
    assert!(!format!("{settings:?}").contains("aws-secret-key"));
}
