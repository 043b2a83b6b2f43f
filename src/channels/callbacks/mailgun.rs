//! Mailgun webhooks: JSON `{"signature": {"timestamp", "token", "signature"}, "event-data": {…}}`, where the
//! signature is hex HMAC-SHA256 of timestamp + token with the webhook signing key.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{CallbackError, CallbackEvent, CallbackRequest, check_fresh};
use crate::channels::DeliveryStatus;

/// Checks the signature and freshness, and refuses a token already seen within the freshness window (Mailgun's
/// advice against replays: a captured request replayed within the window has a valid signature).
pub fn verify(
    request: &CallbackRequest<'_>,
    signing_key: &str,
    max_age: Duration,
    seen: &SeenTokens,
) -> Result<Vec<CallbackEvent>, CallbackError> {
    let body: MailgunBody = serde_json::from_slice(request.body)
        .map_err(|e| CallbackError::Malformed(e.to_string()))?;
    let signature = &body.signature;
    let expected = hex_decode(&signature.signature).ok_or(CallbackError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_key.as_bytes())
        .map_err(|_| CallbackError::NotConfigured("mailgun".into()))?;
    mac.update(signature.timestamp.as_bytes());
    mac.update(signature.token.as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| CallbackError::BadSignature)?;
    check_fresh(&signature.timestamp, max_age)?;
    if !seen.first_time(&signature.token, max_age) {
        return Err(CallbackError::Stale);
    }
    Ok(body.event_data.normalize().into_iter().collect())
}

/// Tokens of the signed callbacks accepted within the freshness window, in this process (bounded: a token older
/// than the window is refused by its timestamp anyway, so old entries are dropped).
#[derive(Default)]
pub struct SeenTokens {
    tokens: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl SeenTokens {
    const MAX: usize = 100_000;

    /// True the first time `token` is offered within `window`.
    fn first_time(&self, token: &str, window: Duration) -> bool {
        let Ok(mut tokens) = self.tokens.lock() else {
            return true;
        };
        let now = std::time::Instant::now();
        if tokens.len() >= Self::MAX {
            tokens.retain(|_, at| now.duration_since(*at) <= window * 2);
            if tokens.len() >= Self::MAX {
                tokens.clear();
            }
        }
        match tokens.get(token) {
            Some(at) if now.duration_since(*at) <= window * 2 => false,
            _ => {
                tokens.insert(token.to_string(), now);
                true
            }
        }
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Deserialize)]
struct MailgunBody {
    signature: MailgunSignature,
    #[serde(rename = "event-data")]
    event_data: MailgunEvent,
}

#[derive(Deserialize)]
struct MailgunSignature {
    timestamp: String,
    token: String,
    signature: String,
}

#[derive(Deserialize)]
struct MailgunEvent {
    id: Option<String>,
    event: String,
    severity: Option<String>,
    recipient: Option<String>,
    reason: Option<String>,
    message: Option<MailgunMessage>,
}

#[derive(Deserialize)]
struct MailgunMessage {
    headers: MailgunHeaders,
}

#[derive(Deserialize)]
struct MailgunHeaders {
    #[serde(rename = "message-id")]
    message_id: Option<String>,
}

impl MailgunEvent {
    fn normalize(self) -> Option<CallbackEvent> {
        use DeliveryStatus as S;
        let (status, suppress) = match (self.event.as_str(), self.severity.as_deref()) {
            ("delivered", _) => (Some(S::Delivered), false),
            ("failed", Some("permanent")) => (Some(S::Bounced), true),
            // A temporary failure: Mailgun keeps retrying on its own.
            ("failed", _) => (None, false),
            ("complained" | "unsubscribed", _) => (Some(S::Suppressed), true),
            _ => (None, false),
        };
        let message_id = self
            .message?
            .headers
            .message_id?
            .trim_matches(['<', '>'])
            .to_string();
        Some(CallbackEvent {
            event_key: self.id?,
            provider_message_id: message_id,
            status,
            recipient: self.recipient,
            suppress,
            reason: Some(format!(
                "{}{}",
                self.event,
                self.reason.map(|r| format!(": {r}")).unwrap_or_default()
            )),
        })
    }
}
