//! One file per provider adapter, and [`CATALOGUE`], the one table of them. Each adapter exposes
//! `build(settings) -> Arc<dyn Provider>`, which reads its `[providers.<name>]` table and fails when a credential is
//! missing, so a misconfigured fleet stops at start.

use std::sync::Arc;

use super::ChannelKind;
use super::provider::{Provider, ProviderConfigError};

pub mod apns;
pub mod discord;
pub mod fcm;
mod jws;
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

/// How an adapter is made from its settings table.
type Build = fn(&serde_json::Value) -> Result<Arc<dyn Provider>, ProviderConfigError>;

/// One provider herald has an adapter for.
pub struct Entry {
    pub name: &'static str,
    pub channel: ChannelKind,
    build: Build,
}

/// The catalogue: every provider, its channel and its constructor. Adding a provider is one row here (and its
/// file); validation, the fleet, the API's overview and definitions all read this table.
pub const CATALOGUE: [Entry; 13] = [
    entry("smtp", ChannelKind::Email, smtp::build),
    entry("sendgrid", ChannelKind::Email, sendgrid::build),
    entry("mailgun", ChannelKind::Email, mailgun::build),
    entry("ses", ChannelKind::Email, ses::build),
    entry("twilio", ChannelKind::Sms, twilio::build),
    entry("sns", ChannelKind::Sms, sns::build),
    entry("vonage", ChannelKind::Sms, vonage::build),
    entry("fcm", ChannelKind::Push, fcm::build),
    entry("apns", ChannelKind::Push, apns::build),
    entry("webpush", ChannelKind::Push, webpush::build),
    entry("slack", ChannelKind::Chat, slack::build),
    entry("discord", ChannelKind::Chat, discord::build),
    entry("teams", ChannelKind::Chat, teams::build),
];

const fn entry(name: &'static str, channel: ChannelKind, build: Build) -> Entry {
    Entry {
        name,
        channel,
        build,
    }
}

/// The catalogue's entry for `name`.
pub fn find(name: &str) -> Option<&'static Entry> {
    CATALOGUE.iter().find(|entry| entry.name == name)
}

/// The channel the provider `name` serves, if herald has an adapter by that name.
pub fn channel_of(name: &str) -> Option<ChannelKind> {
    find(name).map(|entry| entry.channel)
}

/// Builds the adapter called `name` from its settings table.
pub fn build(
    name: &str,
    settings: &serde_json::Value,
) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    match find(name) {
        Some(entry) => (entry.build)(settings),
        None => Err(ProviderConfigError::new(
            name,
            "herald has no adapter with this name",
        )),
    }
}
