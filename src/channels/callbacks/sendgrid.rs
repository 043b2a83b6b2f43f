//! SendGrid Event Webhook: a JSON array of events, signed with ECDSA (P-256, SHA-256) over the
//! `X-Twilio-Email-Event-Webhook-Timestamp` header followed by the raw body; the signature (base64 DER) is in
//! `X-Twilio-Email-Event-Webhook-Signature`, checked with the verification key from SendGrid's settings.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Verifier;
use serde::Deserialize;

use super::{CallbackError, CallbackEvent, CallbackRequest, check_fresh};
use crate::channels::DeliveryStatus;

const SIGNATURE: &str = "x-twilio-email-event-webhook-signature";
const TIMESTAMP: &str = "x-twilio-email-event-webhook-timestamp";

pub fn verify(
    request: &CallbackRequest<'_>,
    public_key: &str,
    max_age: Duration,
) -> Result<Vec<CallbackEvent>, CallbackError> {
    let signature = request
        .header(SIGNATURE)
        .ok_or(CallbackError::BadSignature)?;
    let timestamp = request
        .header(TIMESTAMP)
        .ok_or(CallbackError::BadSignature)?;
    let signature = STANDARD
        .decode(signature.trim())
        .map_err(|_| CallbackError::BadSignature)?;
    let key_der = STANDARD.decode(public_key.trim()).map_err(|_| {
        CallbackError::NotConfigured("sendgrid (the public key is not base64)".into())
    })?;
    let key = PKey::public_key_from_der(&key_der).map_err(|_| {
        CallbackError::NotConfigured("sendgrid (the public key is not a DER EC key)".into())
    })?;
    let valid = Verifier::new(MessageDigest::sha256(), &key)
        .and_then(|mut verifier| {
            verifier.update(timestamp.as_bytes())?;
            verifier.update(request.body)?;
            verifier.verify(&signature)
        })
        .unwrap_or(false);
    if !valid {
        return Err(CallbackError::BadSignature);
    }
    check_fresh(timestamp, max_age)?;
    let events: Vec<SendGridEvent> = serde_json::from_slice(request.body)
        .map_err(|e| CallbackError::Malformed(e.to_string()))?;
    Ok(events
        .into_iter()
        .filter_map(SendGridEvent::normalize)
        .collect())
}

#[derive(Deserialize)]
struct SendGridEvent {
    event: String,
    sg_event_id: Option<String>,
    sg_message_id: Option<String>,
    email: Option<String>,
    #[serde(rename = "type")]
    bounce_type: Option<String>,
    reason: Option<String>,
}

impl SendGridEvent {
    /// Events without ids cannot be correlated or deduplicated: they are dropped.
    fn normalize(self) -> Option<CallbackEvent> {
        use DeliveryStatus as S;
        let reason_text = self.reason.clone().unwrap_or_default().to_lowercase();
        let (status, suppress) = match self.event.as_str() {
            "delivered" => (Some(S::Delivered), false),
            "bounce" if self.bounce_type.as_deref() == Some("blocked") => (Some(S::Failed), false),
            "bounce" => (Some(S::Bounced), true),
            "dropped" => {
                let gone = ["bounce", "unsubscribe", "spam"]
                    .iter()
                    .any(|w| reason_text.contains(w));
                (Some(S::Failed), gone)
            }
            "spamreport" | "unsubscribe" | "group_unsubscribe" => (Some(S::Suppressed), true),
            _ => (None, false),
        };
        // SendGrid's event message id is the send's X-Message-Id plus a filter suffix after the first dot.
        let message_id = self.sg_message_id?.split('.').next()?.to_string();
        Some(CallbackEvent {
            event_key: self.sg_event_id?,
            provider_message_id: message_id,
            status,
            recipient: self.email,
            suppress,
            reason: Some(format!(
                "{}{}",
                self.event,
                self.reason.map(|r| format!(": {r}")).unwrap_or_default()
            )),
        })
    }
}
