//! Delivery callbacks through `POST /v1/callbacks/{provider}` on the real API: each provider's signature scheme
//! with keys generated here, forged and stale requests refused, events applied once and only forward, bounces
//! feeding the suppression list.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::{TestApp, spawn_app_with};
use crate::fake_provider::{FakeProvider, Reply};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use serde_json::{Value, json};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A sent delivery whose provider message id is `message_id`, for callbacks to move.
async fn sent_delivery(
    app: &TestApp,
    provider: &str,
    message_id: &str,
    channel: &str,
    recipient: &str,
) -> i64 {
    sqlx::query(
        "INSERT INTO herald_workflows (name, version, definition, digest, source) \
         VALUES ('t', 1, '{}', 'd', 'test') ON CONFLICT DO NOTHING",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let run: i64 = sqlx::query_scalar(
        "INSERT INTO herald_runs (workflow, version, status, context) VALUES ('t', 1, 'completed', '{}') RETURNING id",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    sqlx::query_scalar(
        "INSERT INTO herald_deliveries (run_id, node_id, recipient, channel, status, provider, provider_message_id) \
         VALUES ($1, 'notify', $2, $3, 'sent', $4, $5) RETURNING id",
    )
    .bind(run)
    .bind(recipient)
    .bind(channel)
    .bind(provider)
    .bind(message_id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

async fn status(app: &TestApp, id: i64) -> String {
    sqlx::query_scalar("SELECT status FROM herald_deliveries WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

async fn suppressed(app: &TestApp, address: &str) -> bool {
    sqlx::query_scalar("SELECT count(*) > 0 FROM herald_suppressions WHERE address = $1")
        .bind(address)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn sendgrid_signature(key: &PKey<Private>, timestamp: &str, body: &str) -> String {
    let mut signer = Signer::new(MessageDigest::sha256(), key).unwrap();
    signer.update(timestamp.as_bytes()).unwrap();
    signer.update(body.as_bytes()).unwrap();
    STANDARD.encode(signer.sign_to_vec().unwrap())
}

#[tokio::test]
async fn sendgrid_events_with_a_valid_signature_move_deliveries_once() {
    let key = ec_key();
    let public = STANDARD.encode(key.public_key_to_der().unwrap());
    let app = spawn_app_with(|s| {
        s.callbacks.sendgrid_public_key = Some(herald::channels::Secret::new(public));
    })
    .await;
    let delivered = sent_delivery(&app, "sendgrid", "msg-A", "email", "ada@example.com").await;
    let bounced = sent_delivery(&app, "sendgrid", "msg-B", "email", "bob@example.com").await;
    let body = json!([
        { "email": "ada@example.com", "event": "delivered", "sg_event_id": "ev1", "sg_message_id": "msg-A.filter0001", "timestamp": now() },
        { "email": "ada@example.com", "event": "open", "sg_event_id": "ev2", "sg_message_id": "msg-A.filter0001", "timestamp": now() },
        { "email": "bob@example.com", "event": "bounce", "type": "bounce", "reason": "550 5.1.1 no such user",
          "sg_event_id": "ev3", "sg_message_id": "msg-B.filter0002", "timestamp": now() }
    ])
    .to_string();
    let timestamp = now().to_string();
    let post = |signature: String, timestamp: String, body: String| {
        app.client
            .post(app.url("/v1/callbacks/sendgrid"))
            .header("content-type", "application/json")
            .header("X-Twilio-Email-Event-Webhook-Signature", signature)
            .header("X-Twilio-Email-Event-Webhook-Timestamp", timestamp)
            .body(body)
            .send()
    };
    let response = post(
        sendgrid_signature(&key, &timestamp, &body),
        timestamp.clone(),
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let receipt: Value = response.json().await.unwrap();
    assert_eq!(
        receipt,
        json!({ "events": 3, "moved": 2, "duplicates": 0, "subscription_confirmed": false })
    );
    assert_eq!(status(&app, delivered).await, "delivered");
    assert_eq!(status(&app, bounced).await, "bounced");
    assert!(
        suppressed(&app, "bob@example.com").await,
        "a hard bounce suppresses the address"
    );

    let again = post(
        sendgrid_signature(&key, &timestamp, &body),
        timestamp.clone(),
        body.clone(),
    )
    .await
    .unwrap();
    let receipt: Value = again.json().await.unwrap();
    assert_eq!(
        receipt["duplicates"], 3,
        "the provider called twice: nothing applied twice"
    );

    let forged = post(
        sendgrid_signature(&ec_key(), &timestamp, &body),
        timestamp.clone(),
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), 401, "signed with another key");
    let tampered = body.replace("ada@", "eve@");
    let tampered = post(
        sendgrid_signature(&key, &timestamp, &body),
        timestamp.clone(),
        tampered,
    )
    .await
    .unwrap();
    assert_eq!(tampered.status(), 401, "body changed after signing");
    let old = (now() - 3600).to_string();
    let stale = post(sendgrid_signature(&key, &old, &body), old, body.clone())
        .await
        .unwrap();
    assert_eq!(stale.status(), 401, "a replay from an hour ago");
    assert_eq!(stale.headers()["content-type"], "application/problem+json");
}

fn mailgun_body(key: &str, timestamp: u64, event: Value) -> Value {
    let token = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0";
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{timestamp}{token}").as_bytes());
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    json!({ "signature": { "timestamp": timestamp.to_string(), "token": token, "signature": signature }, "event-data": event })
}

#[tokio::test]
async fn mailgun_events_are_checked_with_the_signing_key() {
    let app = spawn_app_with(|s| {
        s.callbacks.mailgun_signing_key = Some(herald::channels::Secret::new("mg-signing-key"));
    })
    .await;
    let id = sent_delivery(
        &app,
        "mailgun",
        "20261123.1@mg.acme.test",
        "email",
        "cy@example.com",
    )
    .await;
    let event = json!({ "id": "mg-ev-1", "event": "failed", "severity": "permanent", "recipient": "cy@example.com",
        "reason": "bounce", "message": { "headers": { "message-id": "20261123.1@mg.acme.test" } } });
    let url = app.url("/v1/callbacks/mailgun");
    let signed = mailgun_body("mg-signing-key", now(), event.clone());
    let valid = app.client.post(&url).json(&signed).send().await.unwrap();
    assert_eq!(valid.status(), 200);
    assert_eq!(status(&app, id).await, "bounced");
    assert!(suppressed(&app, "cy@example.com").await);
    // Security finding 10: the same signed request replayed within the window is refused (its token was seen).
    let replayed = app.client.post(&url).json(&signed).send().await.unwrap();
    assert_eq!(replayed.status(), 401, "a replayed token");

    let forged = app
        .client
        .post(&url)
        .json(&mailgun_body("guessed-key", now(), event.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let stale = app
        .client
        .post(&url)
        .json(&mailgun_body("mg-signing-key", now() - 3600, event))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 401);
    let malformed = app.client.post(&url).body("not json").send().await.unwrap();
    assert_eq!(malformed.status(), 400);
}

fn twilio_signature(token: &str, url: &str, form: &[(&str, &str)]) -> String {
    let mut sorted = form.to_vec();
    sorted.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn twilio_status_callbacks_are_signed_over_the_url_and_sorted_fields() {
    let app = spawn_app_with(|s| {
        s.callbacks.twilio_auth_token = Some(herald::channels::Secret::new("twilio-token"));
        s.callbacks.public_url = Some("https://herald.acme.test".to_string());
    })
    .await;
    let id = sent_delivery(&app, "twilio", "SM42", "sms", "+15550001111").await;
    let public = "https://herald.acme.test/v1/callbacks/twilio";
    let post = |form: Vec<(&'static str, &'static str)>, signature: String| {
        app.client
            .post(app.url("/v1/callbacks/twilio"))
            .header("X-Twilio-Signature", signature)
            .form(&form)
            .send()
    };
    let failed = vec![
        ("MessageSid", "SM42"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "21610"),
        ("To", "+15550001111"),
    ];
    let response = post(
        failed.clone(),
        twilio_signature("twilio-token", public, &failed),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(status(&app, id).await, "failed");
    assert!(
        suppressed(&app, "+15550001111").await,
        "21610: the recipient replied STOP"
    );

    // A late `sent` after `undelivered` changes nothing.
    let late = vec![("MessageSid", "SM42"), ("MessageStatus", "sent")];
    let receipt: Value = post(
        late.clone(),
        twilio_signature("twilio-token", public, &late),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(receipt["moved"], 0);
    assert_eq!(status(&app, id).await, "failed");

    let other_url = twilio_signature(
        "twilio-token",
        "https://evil.test/v1/callbacks/twilio",
        &late,
    );
    assert_eq!(
        post(late.clone(), other_url).await.unwrap().status(),
        401,
        "signed for another URL"
    );
    assert_eq!(
        post(late, "bm90IGEgc2lnbmF0dXJl".into())
            .await
            .unwrap()
            .status(),
        401
    );
}

/// A CA-less, self-signed certificate standing in for SNS's signing certificate.
fn sns_certificate() -> (PKey<Private>, String) {
    use openssl::{asn1::Asn1Time, rsa::Rsa, x509::X509, x509::X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "sns.amazonaws.com")
        .unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    (
        key,
        String::from_utf8(cert.build().to_pem().unwrap()).unwrap(),
    )
}

/// The SNS topic herald is configured to accept SES events from.
const SES_TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:ses-events";

fn sns_notification(key: &PKey<Private>, cert_url: &str, ses_event: &Value) -> Value {
    sns_notification_from(SES_TOPIC, key, cert_url, ses_event)
}

fn sns_notification_from(
    topic: &str,
    key: &PKey<Private>,
    cert_url: &str,
    ses_event: &Value,
) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    sns_notification_at(topic, key, cert_url, ses_event, &now)
}

fn sns_notification_at(
    topic: &str,
    key: &PKey<Private>,
    cert_url: &str,
    ses_event: &Value,
    timestamp: &str,
) -> Value {
    let message = ses_event.to_string();
    let id = "sns-msg-1";
    let canonical = format!(
        "Message\n{message}\nMessageId\n{id}\nTimestamp\n{timestamp}\nTopicArn\n{topic}\nType\nNotification\n"
    );
    let mut signer = Signer::new(MessageDigest::sha256(), key).unwrap();
    signer.update(canonical.as_bytes()).unwrap();
    json!({
        "Type": "Notification", "MessageId": id, "TopicArn": topic, "Message": message, "Timestamp": timestamp,
        "SignatureVersion": "2", "Signature": STANDARD.encode(signer.sign_to_vec().unwrap()),
        "SigningCertURL": cert_url,
    })
}

#[tokio::test]
async fn ses_events_through_sns_are_checked_with_the_signing_certificate() {
    let (key, cert_pem) = sns_certificate();
    let cert_server = FakeProvider::start(Reply::text(200, &cert_pem)).await;
    let allowed = cert_server.url();
    let app = spawn_app_with(|s| {
        s.callbacks.sns_hosts = vec![allowed.to_string()];
        s.callbacks.ses_topic_arns = vec![SES_TOPIC.to_string()];
    })
    .await;
    let id = sent_delivery(&app, "ses", "0102-ses-1", "email", "dee@example.com").await;
    let bounce = json!({ "eventType": "Bounce", "mail": { "messageId": "0102-ses-1" },
        "bounce": { "bounceType": "Permanent", "bouncedRecipients": [{ "emailAddress": "dee@example.com" }] } });
    let cert_url = format!("{}/SimpleNotificationService-abc.pem", cert_server.url());
    let url = app.url("/v1/callbacks/ses");
    let valid = app
        .client
        .post(&url)
        .json(&sns_notification(&key, &cert_url, &bounce))
        .send()
        .await
        .unwrap();
    assert_eq!(valid.status(), 200);
    assert_eq!(status(&app, id).await, "bounced");
    assert!(suppressed(&app, "dee@example.com").await);

    let (other_key, _) = sns_certificate();
    let forged = app
        .client
        .post(&url)
        .json(&sns_notification(&other_key, &cert_url, &bounce))
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        401,
        "signed by a key that is not the certificate's"
    );
    assert_eq!(
        cert_server.request_count(),
        1,
        "the certificate is fetched once and cached"
    );

    let elsewhere = sns_notification(&key, "https://attacker.example/cert.pem", &bounce);
    let refused = app.client.post(&url).json(&elsewhere).send().await.unwrap();
    assert_eq!(
        refused.status(),
        401,
        "a certificate from a host that is not SNS is never fetched"
    );
}

/// Security finding 1: SES callbacks were accepted from any SNS topic, so anyone with an AWS account could
/// subscribe herald to a topic of their own and suppress any address. Now: refused unless topics are configured,
/// a foreign topic is refused before any fetch, and only recipients of herald's own deliveries are suppressed.
#[tokio::test]
async fn ses_callbacks_need_a_configured_topic_and_only_suppress_heralds_own_recipients() {
    let (key, cert_pem) = sns_certificate();
    let cert_server = FakeProvider::start(Reply::text(200, &cert_pem)).await;
    let cert_url = format!("{}/SimpleNotificationService-abc.pem", cert_server.url());
    let complaint = |message_id: &str, address: &str| {
        json!({ "eventType": "Complaint", "mail": { "messageId": message_id },
            "complaint": { "complainedRecipients": [{ "emailAddress": address }] } })
    };

    // No topic configured: SES callbacks are off.
    let allowed = cert_server.url();
    let unconfigured = spawn_app_with(|s| {
        s.callbacks.sns_hosts = vec![allowed.to_string()];
    })
    .await;
    let refused = unconfigured
        .client
        .post(unconfigured.url("/v1/callbacks/ses"))
        .json(&sns_notification(
            &key,
            &cert_url,
            &complaint("m-1", "ceo@example.com"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
    assert!(!suppressed(&unconfigured, "ceo@example.com").await);

    let app = spawn_app_with(|s| {
        s.callbacks.sns_hosts = vec![allowed.to_string()];
        s.callbacks.ses_topic_arns = vec![SES_TOPIC.to_string()];
    })
    .await;
    let url = app.url("/v1/callbacks/ses");
    // Someone else's topic, validly signed: refused before the certificate is fetched.
    let attacker_topic = "arn:aws:sns:us-east-1:999999999999:mine";
    let foreign = app
        .client
        .post(&url)
        .json(&sns_notification_from(
            attacker_topic,
            &key,
            &cert_url,
            &complaint("m-1", "ceo@example.com"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    assert_eq!(
        cert_server.request_count(),
        0,
        "nothing fetched for a foreign topic"
    );
    assert!(!suppressed(&app, "ceo@example.com").await);

    // The right topic, about a message herald never sent: accepted, and nobody is suppressed.
    let stray = app
        .client
        .post(&url)
        .json(&sns_notification(
            &key,
            &cert_url,
            &complaint("not-ours", "ceo@example.com"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stray.status(), 200);
    assert!(!suppressed(&app, "ceo@example.com").await);

    // About herald's own delivery: its recipient is suppressed (not the address the event names).
    sent_delivery(&app, "ses", "ours-1", "email", "dee@example.com").await;
    let ours = app
        .client
        .post(&url)
        .json(&sns_notification(
            &key,
            &cert_url,
            &complaint("ours-1", "ceo@example.com"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(ours.status(), 200);
    assert!(suppressed(&app, "dee@example.com").await);
    assert!(!suppressed(&app, "ceo@example.com").await);
}

/// Security finding 10: the SNS certificate URL is pinned to SNS's shape (no query, `SimpleNotificationService-<hex>.pem`)
/// and an old message is refused as a replay, both before anything is fetched.
#[tokio::test]
async fn sns_certificate_urls_are_pinned_and_old_messages_are_refused() {
    let (key, cert_pem) = sns_certificate();
    let cert_server = FakeProvider::start(Reply::text(200, &cert_pem)).await;
    let allowed = cert_server.url();
    let app = spawn_app_with(|s| {
        s.callbacks.sns_hosts = vec![allowed.to_string()];
        s.callbacks.ses_topic_arns = vec![SES_TOPIC.to_string()];
    })
    .await;
    let url = app.url("/v1/callbacks/ses");
    let delivery = json!({ "eventType": "Delivery", "mail": { "messageId": "m-1" },
        "delivery": { "recipients": ["dee@example.com"] } });
    let good_cert = format!(
        "{}/SimpleNotificationService-0123abcd.pem",
        cert_server.url()
    );
    for cert_url in [
        format!(
            "{}/SimpleNotificationService-0123abcd.pem?x=1",
            cert_server.url()
        ),
        format!("{}/other/cert.pem", cert_server.url()),
        format!("{}/SimpleNotificationService-zz.pem", cert_server.url()),
    ] {
        let response = app
            .client
            .post(&url)
            .json(&sns_notification(&key, &cert_url, &delivery))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{cert_url}");
    }
    let old = sns_notification_at(
        SES_TOPIC,
        &key,
        &good_cert,
        &delivery,
        "2020-01-01T00:00:00.000Z",
    );
    let response = app.client.post(&url).json(&old).send().await.unwrap();
    assert_eq!(response.status(), 401, "a message from 2020 is a replay");
    assert_eq!(
        cert_server.request_count(),
        0,
        "nothing was fetched for any of them"
    );
    let fresh = app
        .client
        .post(&url)
        .json(&sns_notification(&key, &good_cert, &delivery))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);
}
