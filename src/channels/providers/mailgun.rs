//! Mailgun Messages API: `POST /v3/{domain}/messages`, HTTP Basic `api:<key>`, multipart form fields `from`, `to`,
//! `subject`, `text` (and `html`).
//!
//! 200 answers `{"id": "<…@domain>", "message": "Queued. Thank you."}`; the id without its angle brackets is the
//! provider message id (Mailgun's events report it that way). Mailgun's EU region is `https://api.eu.mailgun.net`.
//! Some accounts answer 420 instead of 429 for their hourly limit.

use std::sync::Arc;

use reqwest::multipart::Form;
use serde::Deserialize;

use crate::channels::provider::{
    Answer, CommonSettings, Provider, ProviderConfigError, ProviderFuture, Secret, exchange,
    http_client, parse_settings, required,
};
use crate::channels::{Message, Outcome, unsubscribe_headers};

const NAME: &str = "mailgun";

#[derive(Deserialize)]
struct MailgunSettings {
    #[serde(default = "default_base_url")]
    base_url: String,
    #[serde(default)]
    api_key: Secret,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    from: Option<String>,
}

fn default_base_url() -> String {
    "https://api.mailgun.net".into()
}

pub struct Mailgun {
    client: reqwest::Client,
    url: String,
    api_key: Secret,
    from: String,
}

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let parsed: MailgunSettings = parse_settings(NAME, settings)?;
    let common: CommonSettings = parse_settings(NAME, settings)?;
    parsed.api_key.required(NAME, "api_key")?;
    let domain = required(NAME, "domain", &parsed.domain)?;
    Ok(Arc::new(Mailgun {
        client: http_client(common.timeout())?,
        url: format!(
            "{}/v3/{domain}/messages",
            parsed.base_url.trim_end_matches('/')
        ),
        from: required(NAME, "from", &parsed.from)?.to_string(),
        api_key: parsed.api_key,
    }))
}

impl Provider for Mailgun {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a> {
        Box::pin(async move {
            let field = |name: &str| message.content.get(name).cloned().unwrap_or_default();
            let mut form = Form::new()
                .text("from", self.from.clone())
                .text("to", message.to.clone())
                .text("subject", field("subject"))
                .text("text", field("body"))
                .text("v:herald_key", message.idempotency_key.clone());
            if let Some(html) = message.content.get("html") {
                form = form.text("html", html.clone());
            }
            for (name, value) in unsubscribe_headers(message).into_iter().flatten() {
                form = form.text(format!("h:{name}"), value);
            }
            let request = self
                .client
                .post(&self.url)
                .basic_auth("api", Some(self.api_key.expose()))
                .multipart(form);
            exchange(request, |answer| classify(&answer)).await
        })
    }
}

#[derive(Deserialize, Default)]
struct MailgunAnswer {
    id: Option<String>,
    message: Option<String>,
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body, wait) = (answer.status, answer.body.as_str(), answer.retry_after());
    let answer: MailgunAnswer = serde_json::from_str(body).unwrap_or_default();
    let reason = format!(
        "{status} {}",
        answer.message.as_deref().unwrap_or(body.trim())
    );
    match status {
        200..=299 => Outcome::Sent {
            provider_message_id: answer.id.map(|id| id.trim_matches(['<', '>']).to_string()),
        },
        420 | 429 => Outcome::rate_limited(wait, reason),
        401 | 403 => Outcome::config(reason),
        500..=599 => Outcome::transient(reason),
        _ => Outcome::permanent(reason),
    }
}
