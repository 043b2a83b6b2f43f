//! Microsoft Teams through a Workflows (Power Automate) webhook: `POST <webhook url>` with a message whose one
//! attachment is an Adaptive Card.
//!
//! Workflows webhooks answer 202 with no id. Legacy Office 365 connectors answer 200 with body `1`, and report
//! their own failures **inside a 200**: a body such as `Microsoft Teams endpoint returned HTTP error 429` is read
//! for that code and classified as if it were the status.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::webhooks::{self, WebhookShape};
use crate::channels::provider::{Answer, Provider, ProviderConfigError};
use crate::channels::{Message, Outcome, RateScope};

const NAME: &str = "teams";

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let shape = WebhookShape {
        name: NAME,
        body: |message| Ok(card_message(message)),
        query: &[],
        classify,
    };
    webhooks::build(shape, settings)
}

/// The message: one Adaptive Card with the title (bold, larger) and the body (wrapped).
pub fn card_message(message: &Message) -> Value {
    let mut blocks = Vec::new();
    if let Some(title) = message.content.get("title").filter(|t| !t.is_empty()) {
        blocks.push(json!({ "type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true }));
    }
    let body = message.content.get("body").map_or("", String::as_str);
    blocks.push(json!({ "type": "TextBlock", "text": body, "wrap": true }));
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": blocks,
            }
        }]
    })
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body, wait) = (answer.status, answer.body.trim(), answer.retry_after());
    if status == 200 {
        return match embedded_error(body) {
            Some(code) => classify_code(code, format!("200 with \"{body}\""), wait),
            None => Outcome::Sent {
                provider_message_id: None,
            },
        };
    }
    if (200..300).contains(&status) {
        return Outcome::Sent {
            provider_message_id: None,
        };
    }
    classify_code(status, format!("{status} {body}"), wait)
}

fn classify_code(code: u16, reason: String, wait: Option<Duration>) -> Outcome {
    match code {
        429 => Outcome::RateLimited {
            reason,
            retry_after: wait,
            scope: RateScope::Destination,
        },
        401 | 403 | 404 => Outcome::config(reason),
        412 | 500..=599 => Outcome::transient(reason),
        _ => Outcome::permanent(reason),
    }
}

/// A legacy connector's failure reported in a 200 body: "… HTTP error 429 …". Body `1` (or empty) is success.
fn embedded_error(body: &str) -> Option<u16> {
    if body.is_empty() || body == "1" {
        return None;
    }
    let rest = &body[body.find("HTTP error")? + "HTTP error".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .find(|part| !part.is_empty())
        .and_then(|digits| digits.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_connector_error_inside_a_200_is_read_from_the_body() {
        let limited = classify(&Answer::new(
            200,
            "Microsoft Teams endpoint returned HTTP error 429 with ContextId x",
        ));
        assert_eq!(limited.label(), "rate_limited");
        assert_eq!(
            classify(&Answer::new(
                200,
                "Webhook message delivery failed with error: HTTP error 400"
            ))
            .label(),
            "permanent"
        );
        assert_eq!(classify(&Answer::new(200, "1")).label(), "sent");
        assert_eq!(classify(&Answer::new(202, "")).label(), "sent");
        assert_eq!(classify(&Answer::new(412, "")).label(), "transient");
        assert_eq!(classify(&Answer::new(401, "")).label(), "config");
    }
}
