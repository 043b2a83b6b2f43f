//! Firebase Cloud Messaging HTTP v1: `POST /v1/projects/{project}/messages:send`,
//! `Authorization: Bearer <OAuth2 access token>`, JSON `{"message": {"token", "notification", "data"}}`.
//!
//! The access token comes from the service account: an RS256-signed JWT assertion (iss = client_email, scope
//! firebase.messaging, aud = token_uri) exchanged at `token_uri` for a token valid about an hour. It is cached
//! and refreshed a minute before it expires, by one sender at a time.
//!
//! Errors: `{"error": {"code", "message", "status", "details": [{"errorCode"}]}}`; the FCM `errorCode` is the most
//! specific and is read first. `UNREGISTERED` means the app was uninstalled: the token is suppressed.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use super::jws::Rs256Key;
use crate::channels::provider::{
    Answer, CommonSettings, Provider, ProviderConfigError, ProviderFuture, Secret, body_text,
    exchange, http_client, parse_settings, transport_failure,
};
use crate::channels::{Message, Outcome};

const NAME: &str = "fcm";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google asks for at least a minute before retrying a quota error.
const QUOTA_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct FcmSettings {
    #[serde(default = "default_base_url")]
    base_url: String,
    /// The service account key file's JSON (or use `service_account_file`).
    #[serde(default)]
    service_account_json: Secret,
    #[serde(default)]
    service_account_file: Option<String>,
    /// Overrides the key file's `project_id`.
    #[serde(default)]
    project_id: Option<String>,
}

fn default_base_url() -> String {
    "https://fcm.googleapis.com".into()
}

/// The fields of a service account key file herald uses.
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    #[serde(default = "default_token_uri")]
    token_uri: String,
    #[serde(default)]
    project_id: Option<String>,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

pub struct Fcm {
    client: reqwest::Client,
    send_url: String,
    client_email: String,
    token_uri: String,
    key: Rs256Key,
    token: Mutex<Option<(String, Instant)>>,
}

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let parsed: FcmSettings = parse_settings(NAME, settings)?;
    let common: CommonSettings = parse_settings(NAME, settings)?;
    let key_json = match (
        &parsed.service_account_file,
        parsed.service_account_json.is_empty(),
    ) {
        (Some(path), true) => std::fs::read_to_string(path).map_err(|e| {
            ProviderConfigError::new(NAME, format!("cannot read service_account_file: {e}"))
        })?,
        (_, false) => parsed.service_account_json.expose().to_string(),
        (None, true) => {
            return Err(ProviderConfigError::new(
                NAME,
                "`service_account_json` is not set (or `service_account_file`)",
            ));
        }
    };
    let account: ServiceAccount = serde_json::from_str(&key_json).map_err(|_| {
        ProviderConfigError::new(NAME, "the service account key is not a valid key file")
    })?;
    let key = Rs256Key::from_pem(NAME, &account.private_key).map_err(|_| {
        ProviderConfigError::new(
            NAME,
            "the service account's private_key is not an RSA PEM key",
        )
    })?;
    let project = parsed
        .project_id
        .or(account.project_id)
        .ok_or_else(|| ProviderConfigError::new(NAME, "`project_id` is not set"))?;
    Ok(Arc::new(Fcm {
        client: http_client(common.timeout())?,
        send_url: format!(
            "{}/v1/projects/{project}/messages:send",
            parsed.base_url.trim_end_matches('/')
        ),
        client_email: account.client_email,
        token_uri: account.token_uri,
        key,
        token: Mutex::new(None),
    }))
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default = "default_expiry")]
    expires_in: u64,
}

fn default_expiry() -> u64 {
    3600
}

impl Provider for Fcm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a> {
        Box::pin(async move {
            let token = match self.access_token().await {
                Ok(token) => token,
                Err(outcome) => return outcome,
            };
            let request = self
                .client
                .post(&self.send_url)
                .bearer_auth(&token)
                .json(&payload(message));
            let outcome = exchange(request, |answer| classify(&answer)).await;
            if outcome.reason().is_some_and(|r| r.starts_with("401")) {
                // The token may have been revoked: mint a new one next time.
                *self.token.lock().await = None;
            }
            outcome
        })
    }
}

impl Fcm {
    /// The cached access token, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some((token, valid_until)) = cached.as_ref()
            && Instant::now() < *valid_until
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch_token().await?;
        let valid_until = Instant::now() + lifetime.saturating_sub(Duration::from_secs(60));
        *cached = Some((token.clone(), valid_until));
        Ok(token)
    }

    async fn fetch_token(&self) -> Result<(String, Duration), Outcome> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Assertion {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let assertion = self
            .key
            .sign(&claims)
            .map_err(|e| Outcome::config(format!("cannot sign the token assertion: {e}")))?;
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &assertion),
        ];
        let response = self
            .client
            .post(&self.token_uri)
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_failure(&e))?;
        let status = response.status().as_u16();
        let body = body_text(response).await;
        match status {
            200 => serde_json::from_str::<TokenAnswer>(&body)
                .map(|t| (t.access_token, Duration::from_secs(t.expires_in)))
                .map_err(|_| Outcome::transient("the token endpoint's answer is not a token")),
            400 | 401 | 403 => Err(Outcome::config(format!(
                "token endpoint refused the service account: {status}"
            ))),
            _ => Err(Outcome::transient(format!(
                "token endpoint answered {status}"
            ))),
        }
    }
}

/// `notification` carries title and body; every other content field goes to `data` (FCM data values are strings).
fn payload(message: &Message) -> Value {
    let mut notification = Map::new();
    let mut data = Map::new();
    for (field, value) in &message.content {
        match field.as_str() {
            "title" | "body" => notification.insert(field.clone(), json!(value)),
            _ => data.insert(field.clone(), json!(value)),
        };
    }
    let mut body = json!({ "token": message.to, "notification": notification });
    if !data.is_empty() {
        body["data"] = Value::Object(data);
    }
    json!({ "message": body })
}

#[derive(Deserialize, Default)]
struct FcmAnswer {
    name: Option<String>,
    error: Option<FcmError>,
}

#[derive(Deserialize, Default)]
struct FcmError {
    message: Option<String>,
    status: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body, wait) = (answer.status, answer.body.as_str(), answer.retry_after());
    let answer: FcmAnswer = serde_json::from_str(body).unwrap_or_default();
    if (200..300).contains(&status) {
        return Outcome::Sent {
            provider_message_id: answer.name,
        };
    }
    let error = answer.error.unwrap_or_default();
    let code = error
        .details
        .iter()
        .find_map(|d| d.get("errorCode").and_then(Value::as_str))
        .or(error.status.as_deref())
        .unwrap_or("")
        .to_string();
    let reason = format!("{status} {code}: {}", error.message.unwrap_or_default());
    match (code.as_str(), status) {
        ("UNREGISTERED", _) | (_, 404) => Outcome::suppress(reason),
        ("QUOTA_EXCEEDED" | "RESOURCE_EXHAUSTED", _) | (_, 429) => Outcome::rate_limited(
            Some(wait.unwrap_or(QUOTA_BACKOFF).max(QUOTA_BACKOFF)),
            reason,
        ),
        (
            "THIRD_PARTY_AUTH_ERROR"
            | "SENDER_ID_MISMATCH"
            | "PERMISSION_DENIED"
            | "UNAUTHENTICATED",
            _,
        )
        | (_, 401 | 403) => Outcome::config(reason),
        ("UNAVAILABLE" | "INTERNAL", _) | (_, 500..=599) => Outcome::Transient {
            reason,
            retry_after: wait,
        },
        _ => Outcome::permanent(reason),
    }
}
