//! SendGrid v3 Mail Send: `POST /v3/mail/send`, `Authorization: Bearer <key>`, JSON with personalizations.
//!
//! 202 means accepted; the message id is the `X-Message-Id` header (SendGrid's event webhook reports it as the
//! prefix of `sg_message_id`). A 429 carries no `Retry-After`: the wait is `X-RateLimit-Reset` (epoch seconds)
//! minus now. 403 means the account is blocked or the key lacks permission: treated as `Config` (open the
//! circuit, fall back), since no retry soon will fix it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::json;

use crate::channels::provider::{
    Answer, CommonSettings, Provider, ProviderConfigError, ProviderFuture, Secret, exchange,
    http_client, parse_settings, required,
};
use crate::channels::{Message, Outcome, unsubscribe_headers};

const NAME: &str = "sendgrid";

#[derive(Deserialize)]
struct SendGridSettings {
    #[serde(default = "default_base_url")]
    base_url: String,
    #[serde(default)]
    api_key: Secret,
    #[serde(default)]
    from: Option<String>,
}

fn default_base_url() -> String {
    "https://api.sendgrid.com".into()
}

pub struct SendGrid {
    client: reqwest::Client,
    url: String,
    api_key: Secret,
    from: String,
}

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let parsed: SendGridSettings = parse_settings(NAME, settings)?;
    let common: CommonSettings = parse_settings(NAME, settings)?;
    parsed.api_key.required(NAME, "api_key")?;
    Ok(Arc::new(SendGrid {
        client: http_client(common.timeout())?,
        url: format!("{}/v3/mail/send", parsed.base_url.trim_end_matches('/')),
        from: required(NAME, "from", &parsed.from)?.to_string(),
        api_key: parsed.api_key,
    }))
}

impl Provider for SendGrid {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a> {
        Box::pin(async move {
            let request = self
                .client
                .post(&self.url)
                .bearer_auth(self.api_key.expose())
                .json(&mail_body(&self.from, message));
            exchange(request, |answer| classify(&answer)).await
        })
    }
}

fn mail_body(from: &str, message: &Message) -> serde_json::Value {
    let text = message.content.get("body").map_or("", String::as_str);
    let mut content = vec![json!({ "type": "text/plain", "value": text })];
    if let Some(html) = message.content.get("html") {
        content.push(json!({ "type": "text/html", "value": html }));
    }
    let mut body = json!({
        "personalizations": [{ "to": [{ "email": message.to }] }],
        "from": { "email": from },
        "subject": message.content.get("subject").map_or("", String::as_str),
        "content": content,
        // Echoed back in event webhooks, so a callback can be traced to its run even without the message id.
        "custom_args": { "herald_key": message.idempotency_key },
    });
    if let Some(headers) = unsubscribe_headers(message) {
        body["headers"] = json!(
            headers
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
        );
    }
    body
}

#[derive(Deserialize, Default)]
struct SendGridErrors {
    #[serde(default)]
    errors: Vec<SendGridError>,
}

#[derive(Deserialize)]
struct SendGridError {
    message: Option<String>,
    field: Option<String>,
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body, reset) = (
        answer.status,
        answer.body.as_str(),
        answer.header("x-ratelimit-reset"),
    );
    let message_id = answer.header("x-message-id").map(str::to_string);
    if (200..300).contains(&status) {
        return Outcome::Sent {
            provider_message_id: message_id,
        };
    }
    let errors: SendGridErrors = serde_json::from_str(body).unwrap_or_default();
    let details: Vec<String> = errors
        .errors
        .iter()
        .map(|e| match (&e.field, &e.message) {
            (Some(field), Some(message)) => format!("{field}: {message}"),
            (None, Some(message)) => message.clone(),
            _ => "error".into(),
        })
        .collect();
    let reason = if details.is_empty() {
        format!("{status}")
    } else {
        format!("{status} {}", details.join("; "))
    };
    match status {
        429 => Outcome::rate_limited(reset.and_then(until_epoch), reason),
        401 | 403 => Outcome::config(reason),
        500..=599 => Outcome::transient(reason),
        _ => Outcome::permanent(reason),
    }
}

/// `X-RateLimit-Reset` is the epoch second when the limit resets.
fn until_epoch(value: &str) -> Option<Duration> {
    let reset = value.trim().parse::<u64>().ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)))
}
