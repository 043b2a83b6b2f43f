//! Twilio Programmable Messaging: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, HTTP Basic
//! `AccountSid:AuthToken`, form fields `To`, `From` (or `MessagingServiceSid`), `Body`, optional `StatusCallback`.
//!
//! 201 answers the message resource (its `sid` is the provider message id). Errors are JSON
//! `{"code","message","more_info","status"}`; the Twilio error code says more than the status, so it is read first:
//! 21610 (the recipient replied STOP) suppresses the number, 20429 is a rate limit, 20003 is bad credentials.

use std::sync::Arc;

use serde::Deserialize;

use crate::channels::provider::{
    Answer, CommonSettings, Provider, ProviderConfigError, ProviderFuture, Secret, exchange,
    http_client, parse_settings,
};
use crate::channels::{Message, Outcome};

const NAME: &str = "twilio";

#[derive(Deserialize)]
struct TwilioSettings {
    #[serde(default = "default_base_url")]
    base_url: String,
    #[serde(default)]
    account_sid: Option<String>,
    #[serde(default)]
    auth_token: Secret,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    messaging_service_sid: Option<String>,
    /// Where Twilio posts status callbacks (herald's `POST /v1/callbacks/twilio`, as the internet reaches it).
    #[serde(default)]
    status_callback_url: Option<String>,
}

fn default_base_url() -> String {
    "https://api.twilio.com".into()
}

/// Who the message is from: a number (or alphanumeric sender id), or a Messaging Service that picks one.
enum Sender {
    From(String),
    Service(String),
}

pub struct Twilio {
    client: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: Secret,
    sender: Sender,
    status_callback_url: Option<String>,
}

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let parsed: TwilioSettings = parse_settings(NAME, settings)?;
    let common: CommonSettings = parse_settings(NAME, settings)?;
    let account_sid =
        crate::channels::provider::required(NAME, "account_sid", &parsed.account_sid)?.to_string();
    parsed.auth_token.required(NAME, "auth_token")?;
    let sender = match (parsed.from, parsed.messaging_service_sid) {
        (_, Some(service)) if !service.trim().is_empty() => Sender::Service(service),
        (Some(from), _) if !from.trim().is_empty() => Sender::From(from),
        _ => {
            return Err(ProviderConfigError::new(
                NAME,
                "set `from` or `messaging_service_sid`",
            ));
        }
    };
    let url = format!(
        "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
        parsed.base_url.trim_end_matches('/')
    );
    Ok(Arc::new(Twilio {
        client: http_client(common.timeout())?,
        url,
        account_sid,
        auth_token: parsed.auth_token,
        sender,
        status_callback_url: parsed.status_callback_url,
    }))
}

impl Provider for Twilio {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a> {
        Box::pin(async move {
            let body = message.content.get("body").map_or("", String::as_str);
            let mut form = vec![("To", message.to.as_str()), ("Body", body)];
            match &self.sender {
                Sender::From(from) => form.push(("From", from)),
                Sender::Service(sid) => form.push(("MessagingServiceSid", sid)),
            }
            if let Some(callback) = &self.status_callback_url {
                form.push(("StatusCallback", callback));
            }
            let request = self
                .client
                .post(&self.url)
                .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
                .form(&form);
            exchange(request, |answer| classify(&answer)).await
        })
    }
}

#[derive(Deserialize, Default)]
struct TwilioAnswer {
    sid: Option<String>,
    code: Option<i64>,
    message: Option<String>,
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body, wait) = (answer.status, answer.body.as_str(), answer.retry_after());
    let answer: TwilioAnswer = serde_json::from_str(body).unwrap_or_default();
    if (200..300).contains(&status) {
        return match answer.sid {
            Some(sid) => Outcome::Sent {
                provider_message_id: Some(sid),
            },
            // Accepted, but the answer is not Twilio's: we cannot track it, yet sending again would duplicate.
            None => Outcome::Sent {
                provider_message_id: None,
            },
        };
    }
    let reason = match (answer.code, &answer.message) {
        (Some(code), Some(message)) => format!("{status} code {code}: {message}"),
        _ => format!("{status}"),
    };
    match (answer.code, status) {
        (Some(21610), _) => Outcome::suppress(reason),
        (Some(20429), _) | (_, 429) => Outcome::rate_limited(wait, reason),
        (Some(20003), _) | (_, 401 | 403) => Outcome::config(reason),
        (_, 500..=599) => Outcome::transient(reason),
        _ => Outcome::permanent(reason),
    }
}
