//! SES events delivered by SNS: an SNS message (JSON) whose signature is checked with the X.509 certificate at
//! `SigningCertURL` (fetched only from SNS's own hosts, then cached). SignatureVersion 1 signs with SHA1withRSA,
//! 2 with SHA256withRSA, over a canonical string of the message's fields.
//!
//! `Notification` messages carry an SES event (`eventType` for configuration-set events, `notificationType` for
//! identity notifications): Delivery, Bounce (Permanent ones suppress each bounced recipient), Complaint
//! (suppresses), Reject and Rendering Failure (failed). `SubscriptionConfirmation` asks herald to confirm the
//! subscription by fetching `SubscribeURL`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use openssl::hash::MessageDigest;
use openssl::sign::Verifier;
use openssl::x509::X509;
use serde::Deserialize;
use serde_json::Value;

use super::{CallbackError, CallbackEvent, CallbackOutcome, CallbackRequest, CallbackVerifier};
use crate::channels::DeliveryStatus;
use crate::channels::provider::read_capped;

#[derive(Deserialize)]
struct SnsMessage {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "MessageId")]
    message_id: String,
    #[serde(rename = "TopicArn")]
    topic_arn: String,
    #[serde(rename = "Subject")]
    subject: Option<String>,
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "Timestamp")]
    timestamp: String,
    #[serde(rename = "SignatureVersion")]
    signature_version: String,
    #[serde(rename = "Signature")]
    signature: String,
    #[serde(rename = "SigningCertURL")]
    signing_cert_url: String,
    #[serde(rename = "SubscribeURL")]
    subscribe_url: Option<String>,
    #[serde(rename = "Token")]
    token: Option<String>,
}

pub async fn verify(
    verifier: &CallbackVerifier,
    request: &CallbackRequest<'_>,
) -> Result<CallbackOutcome, CallbackError> {
    let message: SnsMessage = serde_json::from_slice(request.body)
        .map_err(|e| CallbackError::Malformed(e.to_string()))?;
    // The topic first: a message from someone else's topic is refused before anything is fetched or confirmed.
    if !verifier
        .settings()
        .ses_topic_arns
        .contains(&message.topic_arn)
    {
        return Err(CallbackError::ForeignTopic);
    }
    // arn:aws:sns:<region>:<account>:<name>
    let region = message.topic_arn.split(':').nth(3).unwrap_or_default();
    if !verifier.is_sns_url(&message.signing_cert_url, region)
        || !certificate_path(&message.signing_cert_url)
    {
        return Err(CallbackError::BadSignature);
    }
    // SNS retries a failed delivery for about an hour at most; an older message is a replay.
    check_sns_timestamp(&message.timestamp)?;
    let certificate = certificate(verifier, &message.signing_cert_url).await?;
    check_signature(&message, &certificate)?;
    match message.kind.as_str() {
        "SubscriptionConfirmation" => {
            let url = message
                .subscribe_url
                .filter(|url| verifier.is_sns_url(url, region));
            let url = url.ok_or_else(|| CallbackError::Malformed("no SNS SubscribeURL".into()))?;
            Ok(CallbackOutcome {
                events: Vec::new(),
                subscribe_url: Some(url),
            })
        }
        "Notification" => Ok(CallbackOutcome {
            events: ses_events(&message.message)?,
            subscribe_url: None,
        }),
        _ => Ok(CallbackOutcome::default()),
    }
}

const MAX_CERTIFICATE_BYTES: usize = 64 * 1024;
/// How old (or how far ahead) an SNS message's `Timestamp` may be.
const SNS_MAX_AGE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Whether the certificate URL has the shape SNS's signing certificates have:
/// `/SimpleNotificationService-<hex>.pem`, with no query and no fragment (the host is checked by
/// [`CallbackVerifier::is_sns_url`]). Anything else is not fetched.
fn certificate_path(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    parsed.query().is_none()
        && parsed.fragment().is_none()
        && parsed
            .path()
            .strip_prefix("/SimpleNotificationService-")
            .and_then(|rest| rest.strip_suffix(".pem"))
            .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_sns_timestamp(timestamp: &str) -> Result<(), CallbackError> {
    let sent = chrono::DateTime::parse_from_rfc3339(timestamp)
        .map_err(|_| CallbackError::Malformed("the SNS Timestamp is not RFC 3339".into()))?;
    let age = chrono::Utc::now().signed_duration_since(sent);
    if age > SNS_MAX_AGE || age < -SNS_MAX_AGE {
        return Err(CallbackError::Stale);
    }
    Ok(())
}
const MAX_CACHED_CERTIFICATES: usize = 16;

async fn certificate(verifier: &CallbackVerifier, url: &str) -> Result<X509, CallbackError> {
    // Keyed by host and path (the URL was checked to have no query): one entry per certificate.
    let key = reqwest::Url::parse(url)
        .map(|u| format!("{}{}", u.host_str().unwrap_or_default(), u.path()))
        .unwrap_or_else(|_| url.to_string());
    if let Some(cached) = verifier.certificates.lock().await.get(&key) {
        return Ok(cached.clone());
    }
    let response = verifier
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| CallbackError::Certificate(e.to_string()))?;
    if !response.status().is_success() {
        return Err(CallbackError::Certificate(format!(
            "{} answered {}",
            url,
            response.status()
        )));
    }
    // A signing certificate is a few KiB; a larger answer is not one, and is not read past the cap.
    let pem = read_capped(response, MAX_CERTIFICATE_BYTES)
        .await
        .map_err(|e| CallbackError::Certificate(e.to_string()))?;
    let certificate = X509::from_pem(&pem)
        .map_err(|_| CallbackError::Certificate("not a PEM certificate".into()))?;
    let mut cached = verifier.certificates.lock().await;
    // SNS signs with one or two certificates per region at a time; many distinct URLs mean someone is probing.
    // The cache does not grow with them, and keeps the certificates it holds (a full cache caches no newcomer).
    if cached.len() < MAX_CACHED_CERTIFICATES {
        cached.insert(key, certificate.clone());
    }
    Ok(certificate)
}

fn check_signature(message: &SnsMessage, certificate: &X509) -> Result<(), CallbackError> {
    let digest = match message.signature_version.as_str() {
        "1" => MessageDigest::sha1(),
        "2" => MessageDigest::sha256(),
        _ => return Err(CallbackError::BadSignature),
    };
    let signature = STANDARD
        .decode(message.signature.trim())
        .map_err(|_| CallbackError::BadSignature)?;
    let key = certificate
        .public_key()
        .map_err(|_| CallbackError::BadSignature)?;
    let valid = Verifier::new(digest, &key)
        .and_then(|mut verifier| {
            verifier.update(canonical(message).as_bytes())?;
            verifier.verify(&signature)
        })
        .unwrap_or(false);
    if valid {
        Ok(())
    } else {
        Err(CallbackError::BadSignature)
    }
}

/// The string SNS signs: "Name\nvalue\n" for each field of the message type, in this order.
fn canonical(message: &SnsMessage) -> String {
    let mut fields: Vec<(&str, Option<&str>)> = vec![
        ("Message", Some(&message.message)),
        ("MessageId", Some(&message.message_id)),
    ];
    if message.kind == "Notification" {
        fields.push(("Subject", message.subject.as_deref()));
        fields.extend([
            ("Timestamp", Some(message.timestamp.as_str())),
            ("TopicArn", Some(&message.topic_arn)),
        ]);
    } else {
        fields.extend([
            ("SubscribeURL", message.subscribe_url.as_deref()),
            ("Timestamp", Some(message.timestamp.as_str())),
            ("Token", message.token.as_deref()),
            ("TopicArn", Some(&message.topic_arn)),
        ]);
    }
    fields.push(("Type", Some(&message.kind)));
    fields
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}\n{v}\n")))
        .collect()
}

/// The SES event inside an SNS notification, one callback event per affected recipient.
fn ses_events(text: &str) -> Result<Vec<CallbackEvent>, CallbackError> {
    let event: Value =
        serde_json::from_str(text).map_err(|e| CallbackError::Malformed(e.to_string()))?;
    let kind = event
        .get("eventType")
        .or_else(|| event.get("notificationType"))
        .and_then(Value::as_str)
        .ok_or_else(|| CallbackError::Malformed("no eventType".into()))?;
    let message_id = event
        .pointer("/mail/messageId")
        .and_then(Value::as_str)
        .ok_or_else(|| CallbackError::Malformed("no mail.messageId".into()))?;
    let addresses = |list: &str, field: &str| -> Vec<String> {
        event
            .pointer(list)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| {
                        item.get(field)
                            .or(Some(item))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, suppress, recipients) = match kind {
        "Delivery" => (
            Some(DeliveryStatus::Delivered),
            false,
            addresses("/delivery/recipients", ""),
        ),
        "Bounce" => {
            let permanent =
                event.pointer("/bounce/bounceType").and_then(Value::as_str) == Some("Permanent");
            let status = permanent.then_some(DeliveryStatus::Bounced);
            (
                status,
                permanent,
                addresses("/bounce/bouncedRecipients", "emailAddress"),
            )
        }
        "Complaint" => (
            Some(DeliveryStatus::Suppressed),
            true,
            addresses("/complaint/complainedRecipients", "emailAddress"),
        ),
        "Reject" | "Rendering Failure" => (Some(DeliveryStatus::Failed), false, Vec::new()),
        _ => (None, false, Vec::new()),
    };
    let recipients = if recipients.is_empty() {
        vec![None]
    } else {
        recipients.into_iter().map(Some).collect()
    };
    Ok(recipients
        .into_iter()
        .map(|recipient| CallbackEvent {
            event_key: format!("{message_id}:{kind}:{}", recipient.as_deref().unwrap_or("")),
            provider_message_id: message_id.to_string(),
            status,
            recipient,
            suppress,
            reason: Some(kind.to_string()),
        })
        .collect())
}

#[cfg(test)]
mod region_tests {
    use super::super::{CallbackSettings, CallbackVerifier};

    /// A certificate is fetched only from SNS in the region of the message's topic: anyone knowing a topic ARN
    /// cannot make herald fetch from any region's endpoint.
    #[test]
    fn certificates_come_only_from_the_topics_region() {
        let verifier = CallbackVerifier::new(CallbackSettings::default());
        let url = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc123.pem";
        assert!(verifier.is_sns_url(url, "eu-west-1"));
        assert!(!verifier.is_sns_url(url, "us-east-1"));
        assert!(!verifier.is_sns_url(url, ""));
        let plain = "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc123.pem";
        assert!(!verifier.is_sns_url(plain, "eu-west-1"), "https only");
    }
}
