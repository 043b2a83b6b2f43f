//! Vonage (Nexmo) SMS API: `POST /sms/json`, form fields `api_key, api_secret, from, to, text`.
//!
//! Vonage answers **HTTP 200 for failures too**: the outcome is in `messages[].status` (`"0"` accepted). A 200
//! whose body is not Vonage's JSON is treated as transient: we cannot tell whether it was accepted, and Vonage's
//! own failures are always reported in the JSON.

use std::sync::Arc;

use serde::Deserialize;

use crate::channels::provider::{
    Answer, CommonSettings, Provider, ProviderConfigError, ProviderFuture, Secret, exchange,
    http_client, parse_settings, required,
};
use crate::channels::{Message, Outcome};

const NAME: &str = "vonage";

#[derive(Deserialize)]
struct VonageSettings {
    #[serde(default = "default_base_url")]
    base_url: String,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    api_secret: Secret,
    #[serde(default)]
    from: Option<String>,
}

fn default_base_url() -> String {
    "https://rest.nexmo.com".into()
}

pub struct Vonage {
    client: reqwest::Client,
    url: String,
    api_key: String,
    api_secret: Secret,
    from: String,
}

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let parsed: VonageSettings = parse_settings(NAME, settings)?;
    let common: CommonSettings = parse_settings(NAME, settings)?;
    parsed.api_secret.required(NAME, "api_secret")?;
    Ok(Arc::new(Vonage {
        client: http_client(common.timeout())?,
        url: format!("{}/sms/json", parsed.base_url.trim_end_matches('/')),
        api_key: required(NAME, "api_key", &parsed.api_key)?.to_string(),
        from: required(NAME, "from", &parsed.from)?.to_string(),
        api_secret: parsed.api_secret,
    }))
}

impl Provider for Vonage {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a> {
        Box::pin(async move {
            let text = message.content.get("body").map_or("", String::as_str);
            let form = [
                ("api_key", self.api_key.as_str()),
                ("api_secret", self.api_secret.expose()),
                ("from", self.from.as_str()),
                ("to", message.to.as_str()),
                ("text", text),
            ];
            exchange(self.client.post(&self.url).form(&form), |answer| {
                classify(&answer)
            })
            .await
        })
    }
}

#[derive(Deserialize)]
struct VonageAnswer {
    messages: Vec<VonageMessage>,
}

#[derive(Deserialize)]
struct VonageMessage {
    status: String,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
    #[serde(rename = "error-text")]
    error_text: Option<String>,
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body) = (answer.status, answer.body.as_str());
    if status != 200 {
        return if status >= 500 || status == 429 {
            Outcome::transient(format!("HTTP {status}"))
        } else {
            Outcome::permanent(format!("HTTP {status}"))
        };
    }
    let Ok(answer) = serde_json::from_str::<VonageAnswer>(body) else {
        return Outcome::transient("HTTP 200 without Vonage's JSON answer");
    };
    let Some(first) = answer.messages.into_iter().next() else {
        return Outcome::transient("HTTP 200 with no message status");
    };
    let reason = format!(
        "status {}: {}",
        first.status,
        first.error_text.as_deref().unwrap_or("no error text")
    );
    match first.status.as_str() {
        "0" => Outcome::Sent {
            provider_message_id: first.message_id,
        },
        "1" => Outcome::rate_limited(None, reason),
        "5" => Outcome::transient(reason),
        "7" => Outcome::suppress(reason),
        "4" | "8" | "9" => Outcome::config(reason),
        _ => Outcome::permanent(reason),
    }
}
