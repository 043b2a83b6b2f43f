//! Discord webhooks: `POST <webhook url>?wait=true` with `{"content": …}`.
//!
//! With `wait=true` Discord answers 200 with the created message (its `id` is the provider message id); without
//! it, 204. A 429 carries `Retry-After` and a JSON body whose `retry_after` is a float in seconds (older API
//! versions sent milliseconds, so an implausibly large value is read as milliseconds), and `global` says whether
//! the whole application or only this webhook is limited.
//!
//! Discord bans clients that make too many invalid requests (401/403/429) in ten minutes, so a dead webhook
//! (401, 403, 404 unknown webhook) is a `Config` outcome: it opens the circuit and stops the hammering.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::webhooks::{self, WebhookShape};
use crate::channels::provider::{Answer, Provider, ProviderConfigError, seconds_to_duration};
use crate::channels::{Message, Outcome, RateScope};

const NAME: &str = "discord";
/// Discord rejects longer message content.
const MAX_CONTENT: usize = 2000;

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let shape = WebhookShape {
        name: NAME,
        body,
        query: &[("wait", "true")],
        classify,
    };
    webhooks::build(shape, settings)
}

/// `{"content"}`, refused before sending when Discord would reject its length: truncating would silently change
/// what the user receives.
fn body(message: &Message) -> Result<serde_json::Value, Outcome> {
    let content = content(message);
    if content.chars().count() > MAX_CONTENT {
        return Err(Outcome::permanent(format!(
            "content is longer than {MAX_CONTENT} characters"
        )));
    }
    Ok(serde_json::json!({ "content": content }))
}

fn content(message: &Message) -> String {
    let body = message.content.get("body").map_or("", String::as_str);
    match message.content.get("title") {
        Some(title) if !title.is_empty() => format!("**{title}**\n{body}"),
        _ => body.to_string(),
    }
}

#[derive(Deserialize, Default)]
struct DiscordAnswer {
    id: Option<String>,
    code: Option<i64>,
    message: Option<String>,
    retry_after: Option<f64>,
    global: Option<bool>,
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body, header_wait) = (answer.status, answer.body.as_str(), answer.retry_after());
    let answer: DiscordAnswer = serde_json::from_str(body).unwrap_or_default();
    let detail = match (&answer.code, &answer.message) {
        (Some(code), Some(message)) => format!("{status} code {code}: {message}"),
        (_, Some(message)) => format!("{status}: {message}"),
        _ => format!("{status}"),
    };
    match status {
        200 | 204 => Outcome::Sent {
            provider_message_id: answer.id,
        },
        429 => Outcome::RateLimited {
            reason: detail,
            retry_after: answer
                .retry_after
                .and_then(plausible_seconds)
                .or(header_wait),
            scope: if answer.global == Some(true) {
                RateScope::Provider
            } else {
                RateScope::Destination
            },
        },
        401 | 403 | 404 => Outcome::config(detail),
        500..=599 => Outcome::transient(detail),
        _ => Outcome::permanent(detail),
    }
}

/// Discord's `retry_after` is in seconds; a value above 1,000 can only be milliseconds (an old API version).
fn plausible_seconds(value: f64) -> Option<Duration> {
    if value > 1000.0 {
        seconds_to_duration(value / 1000.0)
    } else {
        seconds_to_duration(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_retry_after_is_a_float_in_seconds_and_global_widens_the_scope() {
        let limited = classify(&Answer::new(
            429,
            r#"{"retry_after": 0.25, "global": false}"#,
        ));
        let Outcome::RateLimited {
            retry_after, scope, ..
        } = limited
        else {
            panic!("{limited:?}")
        };
        assert_eq!(retry_after, Some(Duration::from_millis(250)));
        assert_eq!(scope, RateScope::Destination);
        let global = classify(&Answer::new(
            429,
            r#"{"retry_after": 1500, "global": true}"#,
        ));
        let Outcome::RateLimited {
            retry_after, scope, ..
        } = global
        else {
            panic!("{global:?}")
        };
        assert_eq!(
            retry_after,
            Some(Duration::from_millis(1500)),
            "milliseconds from an old API version"
        );
        assert_eq!(scope, RateScope::Provider);
    }

    #[test]
    fn a_dead_webhook_is_a_config_error_and_garbage_never_panics() {
        assert_eq!(
            classify(&Answer::new(
                404,
                r#"{"code": 10015, "message": "Unknown Webhook"}"#
            ))
            .label(),
            "config"
        );
        assert_eq!(classify(&Answer::new(400, "<html>")).label(), "permanent");
        assert_eq!(
            classify(&Answer::new(502, "<html>bad gateway</html>")).label(),
            "transient"
        );
        assert_eq!(
            classify(&Answer::new(200, r#"{"id": "123"}"#)),
            Outcome::Sent {
                provider_message_id: Some("123".into())
            }
        );
    }
}
