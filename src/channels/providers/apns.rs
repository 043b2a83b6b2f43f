//! Apple Push Notification service over HTTP/2: `POST /3/device/{token}` with token authentication.
//!
//! Headers: `authorization: bearer <ES256 JWT {kid; iss = team id, iat}>`, `apns-topic` (the bundle id),
//! `apns-push-type: alert`, `apns-priority: 10`, `apns-expiration`, and `apns-id`: a UUID derived from the message's
//! idempotency key, so a repeat of the same notification carries the same id. Apple wants the provider token
//! reused for 20 to 60 minutes; herald re-signs it every 50.
//!
//! 200 answers with the `apns-id` header. Errors are `{"reason"}`: `Unregistered` (410), `BadDeviceToken` and
//! `DeviceTokenNotForTopic` mean this token will never work here, so it is suppressed; `ExpiredProviderToken`
//! drops the cached JWT and is transient (the next attempt signs a new one). APNs throttles per device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use super::jws::{Es256Key, unix_now};
use crate::channels::provider::{
    Answer, CommonSettings, Provider, ProviderConfigError, ProviderFuture, Secret, exchange,
    parse_settings, required,
};
use crate::channels::{Message, Outcome, RateScope};

const NAME: &str = "apns";
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

#[derive(Deserialize)]
struct ApnsSettings {
    /// `https://api.sandbox.push.apple.com` for development builds.
    #[serde(default = "default_base_url")]
    base_url: String,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    team_id: Option<String>,
    /// The `.p8` key's PEM text (or use `private_key_file`).
    #[serde(default)]
    private_key: Secret,
    #[serde(default)]
    private_key_file: Option<String>,
    /// The app's bundle id (`apns-topic`).
    #[serde(default)]
    topic: Option<String>,
    /// Seconds Apple keeps trying to deliver; 0 = once.
    #[serde(default)]
    expiration_secs: u64,
}

fn default_base_url() -> String {
    "https://api.push.apple.com".into()
}

pub struct Apns {
    client: reqwest::Client,
    base_url: String,
    key_id: String,
    team_id: String,
    topic: String,
    expiration_secs: u64,
    key: Es256Key,
    token: Mutex<Option<(String, Instant)>>,
}

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let parsed: ApnsSettings = parse_settings(NAME, settings)?;
    let common: CommonSettings = parse_settings(NAME, settings)?;
    let pem = match (&parsed.private_key_file, parsed.private_key.is_empty()) {
        (Some(path), true) => std::fs::read_to_string(path).map_err(|e| {
            ProviderConfigError::new(NAME, format!("cannot read private_key_file: {e}"))
        })?,
        (_, false) => parsed.private_key.expose().to_string(),
        (None, true) => {
            return Err(ProviderConfigError::new(
                NAME,
                "`private_key` is not set (or `private_key_file`)",
            ));
        }
    };
    // APNs speaks only HTTP/2: over TLS it is negotiated (ALPN); a plain-HTTP base URL (a test server) gets it
    // with prior knowledge.
    let mut builder = reqwest::Client::builder()
        .timeout(common.timeout())
        .redirect(reqwest::redirect::Policy::none());
    if parsed.base_url.starts_with("http://") {
        builder = builder.http2_prior_knowledge();
    }
    let client = builder.build().map_err(|e| {
        ProviderConfigError::new(NAME, format!("cannot build the HTTP/2 client: {e}"))
    })?;
    Ok(Arc::new(Apns {
        client,
        base_url: parsed.base_url.trim_end_matches('/').to_string(),
        key_id: required(NAME, "key_id", &parsed.key_id)?.to_string(),
        team_id: required(NAME, "team_id", &parsed.team_id)?.to_string(),
        topic: required(NAME, "topic", &parsed.topic)?.to_string(),
        expiration_secs: parsed.expiration_secs,
        key: Es256Key::from_pem(NAME, &pem)?,
        token: Mutex::new(None),
    }))
}

#[derive(Serialize)]
struct ProviderClaims<'a> {
    iss: &'a str,
    iat: u64,
}

impl Provider for Apns {
    fn name(&self) -> &'static str {
        NAME
    }

    fn destination_key(&self, message: &Message) -> Option<String> {
        Some(message.to.clone())
    }

    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a> {
        Box::pin(async move {
            let device = message.to.trim();
            if device.is_empty() || !device.chars().all(|c| c.is_ascii_hexdigit()) {
                return Outcome::suppress("not an APNs device token (expected hex)");
            }
            let token = match self.provider_token().await {
                Ok(token) => token,
                Err(reason) => return Outcome::config(reason),
            };
            let expiration = if self.expiration_secs == 0 {
                0
            } else {
                unix_now() + self.expiration_secs
            };
            let mut request = self
                .client
                .post(format!("{}/3/device/{device}", self.base_url))
                .header("authorization", format!("bearer {token}"))
                .header("apns-topic", &self.topic)
                .header("apns-push-type", "alert")
                .header("apns-priority", "10")
                .header("apns-expiration", expiration.to_string())
                .header("apns-id", notification_id(&message.idempotency_key))
                .json(&payload(message));
            if let Some(collapse) = message.content.get("collapse_id") {
                request = request.header("apns-collapse-id", collapse);
            }
            let outcome = exchange(request, |answer| classify(&answer)).await;
            if outcome
                .reason()
                .is_some_and(|r| r.contains("ExpiredProviderToken"))
            {
                *self.token.lock().await = None;
            }
            outcome
        })
    }
}

impl Apns {
    async fn provider_token(&self) -> Result<String, String> {
        let mut cached = self.token.lock().await;
        if let Some((token, signed_at)) = cached.as_ref()
            && signed_at.elapsed() < TOKEN_LIFETIME
        {
            return Ok(token.clone());
        }
        let token = self.key.sign(
            Some(&self.key_id),
            &ProviderClaims {
                iss: &self.team_id,
                iat: unix_now(),
            },
        )?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }
}

/// A stable UUID for a notification, from its idempotency key (APNs ids are UUIDs).
fn notification_id(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// `aps.alert` carries title and body; other content fields are custom keys beside `aps`.
fn payload(message: &Message) -> Value {
    let mut root = Map::new();
    let mut alert = Map::new();
    for (field, value) in &message.content {
        match field.as_str() {
            "title" | "body" => {
                alert.insert(field.clone(), json!(value));
            }
            "collapse_id" => {}
            _ => {
                root.insert(field.clone(), json!(value));
            }
        }
    }
    root.insert("aps".into(), json!({ "alert": alert }));
    Value::Object(root)
}

#[derive(Deserialize, Default)]
struct ApnsAnswer {
    reason: Option<String>,
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body, wait) = (answer.status, answer.body.as_str(), answer.retry_after());
    let id = answer.header("apns-id").map(str::to_string);
    if status == 200 {
        return Outcome::Sent {
            provider_message_id: id,
        };
    }
    let reason_code = serde_json::from_str::<ApnsAnswer>(body)
        .unwrap_or_default()
        .reason
        .unwrap_or_default();
    let reason = format!("{status} {reason_code}");
    match (status, reason_code.as_str()) {
        (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => Outcome::suppress(reason),
        (403, "ExpiredProviderToken") => Outcome::transient(reason),
        (403, _) => Outcome::config(reason),
        (429, _) => Outcome::RateLimited {
            reason,
            retry_after: wait,
            scope: RateScope::Destination,
        },
        (500..=599, _) => Outcome::Transient {
            reason,
            retry_after: wait,
        },
        _ => Outcome::permanent(reason),
    }
}
