//! Slack incoming webhooks: `POST <webhook url>` with `{"text": …}`.
//!
//! Slack answers `200 ok` on success and **plain-text** error bodies otherwise (`invalid_payload`,
//! `channel_not_found`, `no_service`, ...), so the body, not only the status, decides the outcome. Slack allows
//! about one message per second per channel: each webhook is a destination with its own limit
//! (`destination_rate_per_sec`), and a 429 pauses only that webhook.
//!
//! An action's `to` names a configured webhook, never a URL: a template must not be able to make herald post to
//! an arbitrary address, and the URL itself is the credential.

use std::sync::Arc;

use super::webhooks::{self, WebhookShape};
use crate::channels::provider::{Answer, Provider, ProviderConfigError};
use crate::channels::{Message, Outcome, RateScope};

const NAME: &str = "slack";

pub fn build(settings: &serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let shape = WebhookShape {
        name: NAME,
        body: |message| Ok(serde_json::json!({ "text": text(message) })),
        query: &[],
        classify,
    };
    webhooks::build(shape, settings)
}

/// The message text: a bold title line (Slack's mrkdwn) when the action has a title, then the body.
fn text(message: &Message) -> String {
    let body = message.content.get("body").map_or("", String::as_str);
    match message.content.get("title") {
        Some(title) if !title.is_empty() => format!("*{title}*\n{body}"),
        _ => body.to_string(),
    }
}

fn classify(answer: &Answer) -> Outcome {
    let (status, body, wait) = (answer.status, answer.body.trim(), answer.retry_after());
    match (status, body) {
        (200, _) => Outcome::Sent {
            provider_message_id: None,
        },
        (429, _) => Outcome::RateLimited {
            reason: format!("429 {body}"),
            retry_after: wait,
            scope: RateScope::Destination,
        },
        (403, _) | (404, "no_service") | (404, "invalid_token") | (410, "team_disabled") => {
            Outcome::config(format!("{status} {body}"))
        }
        (500..=599, _) => Outcome::transient(format!("{status} {body}")),
        _ => Outcome::permanent(format!("{status} {body}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_errors_decide_the_outcome() {
        assert_eq!(
            classify(&Answer::new(404, "channel_not_found")).label(),
            "permanent"
        );
        assert_eq!(
            classify(&Answer::new(410, "channel_is_archived")).label(),
            "permanent"
        );
        assert_eq!(
            classify(&Answer::new(400, "invalid_payload")).label(),
            "permanent"
        );
        assert_eq!(classify(&Answer::new(404, "no_service")).label(), "config");
        assert_eq!(
            classify(&Answer::new(403, "action_prohibited")).label(),
            "config"
        );
        assert_eq!(classify(&Answer::new(503, "")).label(), "transient");
    }
}
