//! Web Push (RFC 8030) with VAPID (RFC 8292) and message encryption (RFC 8291, `aes128gcm` from RFC 8188).
//!
//! An action's `to` is the browser's subscription as JSON: `{"endpoint", "keys": {"p256dh", "auth"}}`. The payload
//! (`{"title","body",…}` as JSON) is encrypted for the subscription's keys with the `ece` crate and posted to the
//! endpoint with `TTL`, `Content-Encoding: aes128gcm` and `Authorization: vapid t=<ES256 JWT>, k=<public key>`.
//! The JWT's `aud` is the endpoint's origin, `exp` 12 hours ahead, `sub` the operator's contact.
//!
//! 201 means accepted (`Location` names the message). 404/410 mean the subscription is gone: it is suppressed.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::jws::{Es256Key, unix_now};
use crate::channels::egress::EgressPolicy;
use crate::channels::provider::{
    Answer, CommonSettings, Provider, ProviderConfigError, ProviderFuture, Secret, exchange,
    parse_settings, required,
};
use crate::channels::{Message, Outcome};

const NAME: &str = "webpush";

#[derive(Deserialize)]
struct WebPushSettings {
    /// The VAPID private key, PEM (P-256; SEC1 or PKCS#8). Its public key is derived from it.
    #[serde(default)]
    vapid_private_key: Secret,
    /// `mailto:` or `https:` contact for push services.
    #[serde(default)]
    subject: Option<String>,
    /// Seconds the push service keeps an undelivered message.
    #[serde(default = "default_ttl")]
    ttl_secs: u64,
    /// Push services a subscription may point at (`fcm.googleapis.com`, `*.push.services.mozilla.com`,
    /// `*.notify.windows.com`, `web.push.apple.com`); empty: any public https host.
    #[serde(default)]
    allowed_hosts: Vec<String>,
    /// Allow http endpoints and non-public addresses: for tests against local servers only. The endpoint comes
    /// from run data, so without this guard a run could make herald POST into the private network.
    #[serde(default)]
    allow_private_endpoints: bool,
}

fn default_ttl() -> u64 {
    86_400
}

pub struct WebPush {
    client: reqwest::Client,
    egress: EgressPolicy,
    key: Es256Key,
    public_key: String,
    subject: String,
    ttl_secs: u64,
}

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let parsed: WebPushSettings = parse_settings(NAME, settings)?;
    let common: CommonSettings = parse_settings(NAME, settings)?;
    let pem = parsed
        .vapid_private_key
        .required(NAME, "vapid_private_key")?;
    let key = Es256Key::from_pem(NAME, pem)?;
    let subject = required(NAME, "subject", &parsed.subject)?.to_string();
    if !(subject.starts_with("mailto:") || subject.starts_with("https:")) {
        return Err(ProviderConfigError::new(
            NAME,
            "`subject` must be a mailto: or https: URL",
        ));
    }
    let egress = EgressPolicy {
        allowed_hosts: parsed.allowed_hosts,
        allow_private: parsed.allow_private_endpoints,
    };
    Ok(Arc::new(WebPush {
        client: egress.client(common.timeout()).map_err(|err| {
            ProviderConfigError::new(NAME, format!("cannot build an HTTP client: {err}"))
        })?,
        egress,
        public_key: URL_SAFE_NO_PAD.encode(&key.public_point),
        key,
        subject,
        ttl_secs: parsed.ttl_secs,
    }))
}

/// A browser's push subscription.
#[derive(Deserialize)]
struct Subscription {
    endpoint: String,
    keys: SubscriptionKeys,
}

#[derive(Deserialize)]
struct SubscriptionKeys {
    p256dh: String,
    auth: String,
}

#[derive(Serialize)]
struct VapidClaims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

impl Provider for WebPush {
    fn name(&self) -> &'static str {
        NAME
    }

    fn destination_key(&self, message: &Message) -> Option<String> {
        serde_json::from_str::<Subscription>(&message.to)
            .ok()
            .map(|s| s.endpoint)
    }

    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a> {
        Box::pin(async move {
            let prepared = match self.prepare(message) {
                Ok(prepared) => prepared,
                Err(outcome) => return outcome,
            };
            // The endpoint is data: only a public https push service (the client re-checks the addresses it
            // connects to).
            if let Err(refused) = self.egress.check(&prepared.url).await {
                return Outcome::permanent(refused);
            }
            let mut request = self
                .client
                .post(&prepared.endpoint)
                .header("ttl", self.ttl_secs.to_string())
                .header("content-encoding", "aes128gcm")
                .header("content-type", "application/octet-stream")
                .header("authorization", prepared.authorization)
                .body(prepared.body);
            if let Some(urgency) = message.content.get("urgency") {
                request = request.header("urgency", urgency);
            }
            if let Some(topic) = message.content.get("topic") {
                request = request.header("topic", topic);
            }
            exchange(request, |answer| classify(&answer)).await
        })
    }
}

struct Prepared {
    url: reqwest::Url,
    endpoint: String,
    authorization: String,
    body: Vec<u8>,
}

impl WebPush {
    /// Parses the subscription, encrypts the payload for it and signs the VAPID token for its origin.
    fn prepare(&self, message: &Message) -> Result<Prepared, Outcome> {
        let subscription: Subscription = serde_json::from_str(&message.to).map_err(|_| {
            Outcome::permanent("`to` is not a push subscription ({endpoint, keys: {p256dh, auth}})")
        })?;
        let endpoint = reqwest::Url::parse(&subscription.endpoint)
            .map_err(|_| Outcome::permanent("the subscription's endpoint is not a URL"))?;
        let decode = |value: &str| {
            URL_SAFE_NO_PAD
                .decode(value.trim_end_matches('='))
                .map_err(|_| Outcome::permanent("the subscription's keys are not base64url"))
        };
        let (p256dh, auth) = (
            decode(&subscription.keys.p256dh)?,
            decode(&subscription.keys.auth)?,
        );
        let plaintext = serde_json::to_vec(&payload(message)).unwrap_or_default();
        let body = ece::encrypt(&p256dh, &auth, &plaintext).map_err(|_| {
            Outcome::permanent("cannot encrypt for this subscription (bad p256dh or auth key)")
        })?;
        let origin = endpoint.origin().ascii_serialization();
        let claims = VapidClaims {
            aud: &origin,
            exp: unix_now() + 12 * 3600,
            sub: &self.subject,
        };
        let token = self.key.sign(None, &claims).map_err(Outcome::config)?;
        Ok(Prepared {
            url: endpoint,
            endpoint: subscription.endpoint,
            authorization: format!("vapid t={token}, k={}", self.public_key),
            body,
        })
    }
}

fn payload(message: &Message) -> Value {
    let fields: Map<String, Value> = message
        .content
        .iter()
        .filter(|(field, _)| !matches!(field.as_str(), "urgency" | "topic"))
        .map(|(field, value)| (field.clone(), json!(value)))
        .collect();
    Value::Object(fields)
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body, wait) = (answer.status, answer.body.as_str(), answer.retry_after());
    let location = answer.header("location").map(str::to_string);
    let reason = format!(
        "{status} {}",
        body.chars().take(200).collect::<String>().trim()
    );
    match status {
        200..=299 => Outcome::Sent {
            provider_message_id: location,
        },
        404 | 410 => Outcome::suppress(reason),
        401 | 403 => Outcome::config(reason),
        429 => Outcome::rate_limited(wait, reason),
        500..=599 => Outcome::Transient {
            reason,
            retry_after: wait,
        },
        _ => Outcome::permanent(reason),
    }
}
