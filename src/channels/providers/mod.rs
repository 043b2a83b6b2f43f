//! One file per provider adapter. Each exposes `build(settings) -> Arc<dyn Provider>`, which reads its
//! `[providers.<name>]` table and fails when a credential is missing, so a misconfigured fleet stops at start.

use std::sync::Arc;

use super::provider::{Provider, ProviderConfigError};

pub mod apns;
pub mod discord;
mod es256;
pub mod fcm;
pub mod mailgun;
pub mod sendgrid;
pub mod ses;
pub mod slack;
pub mod smtp;
pub mod sns;
pub mod teams;
pub mod twilio;
pub mod vonage;
mod webhooks;
pub mod webpush;

/// Every provider name herald has an adapter for.
pub const NAMES: [&str; 13] = [
    "smtp", "sendgrid", "mailgun", "ses", "twilio", "sns", "vonage", "fcm", "apns", "webpush",
    "slack", "discord", "teams",
];

/// Builds the adapter called `name` from its settings table.
pub fn build(
    name: &str,
    settings: &serde_json::Value,
) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    match name {
        "smtp" => smtp::build(settings),
        "sendgrid" => sendgrid::build(settings),
        "mailgun" => mailgun::build(settings),
        "ses" => ses::build(settings),
        "twilio" => twilio::build(settings),
        "sns" => sns::build(settings),
        "vonage" => vonage::build(settings),
        "fcm" => fcm::build(settings),
        "apns" => apns::build(settings),
        "webpush" => webpush::build(settings),
        "slack" => slack::build(settings),
        "discord" => discord::build(settings),
        "teams" => teams::build(settings),
        other => Err(ProviderConfigError::new(
            other,
            "herald has no adapter with this name",
        )),
    }
}
