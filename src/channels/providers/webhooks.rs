//! Named webhooks, shared by the chat adapters (Slack, Discord, Teams).
//!
//! Settings: `webhooks = { ops = "https://hooks.slack.com/services/…" }` and an optional `default_webhook` used
//! when an action's `to` is empty. The URLs are secrets (whoever has one can post), so they are never printed and
//! errors name the webhook, not its URL.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::channels::provider::{ProviderConfigError, Secret};
use crate::channels::{Message, Outcome};

#[derive(Debug, Deserialize)]
pub struct WebhookSettings {
    #[serde(default)]
    pub webhooks: BTreeMap<String, Secret>,
    #[serde(default)]
    pub default_webhook: Option<String>,
}

pub struct Webhooks {
    provider: &'static str,
    urls: BTreeMap<String, Secret>,
    default: Option<String>,
}

impl Webhooks {
    pub fn new(
        provider: &'static str,
        settings: WebhookSettings,
    ) -> Result<Self, ProviderConfigError> {
        if settings.webhooks.is_empty() {
            return Err(ProviderConfigError::new(
                provider,
                format!(
                    "no webhook is configured (providers.{provider}.webhooks = {{ name = \"<url>\" }})"
                ),
            ));
        }
        for (name, url) in &settings.webhooks {
            let parsed = reqwest::Url::parse(url.expose()).map_err(|_| {
                ProviderConfigError::new(provider, format!("webhook `{name}` is not a URL"))
            })?;
            if !matches!(parsed.scheme(), "https" | "http") {
                return Err(ProviderConfigError::new(
                    provider,
                    format!("webhook `{name}` is not http(s)"),
                ));
            }
        }
        if let Some(default) = &settings.default_webhook
            && !settings.webhooks.contains_key(default)
        {
            return Err(ProviderConfigError::new(
                provider,
                format!("default_webhook `{default}` is not one of the webhooks"),
            ));
        }
        Ok(Self {
            provider,
            urls: settings.webhooks,
            default: settings.default_webhook,
        })
    }

    /// The webhook name an action addresses (its `to`, or the default).
    pub fn name_for(&self, message: &Message) -> Option<String> {
        let to = message.to.trim();
        if to.is_empty() {
            self.default.clone()
        } else {
            Some(to.to_string())
        }
    }

    /// The URL to post to, or the permanent outcome for an unknown webhook.
    pub fn url_for(&self, message: &Message) -> Result<&str, Outcome> {
        let Some(name) = self.name_for(message) else {
            return Err(Outcome::permanent(format!(
                "no webhook named: `to` is empty and {} has no default_webhook",
                self.provider
            )));
        };
        self.urls.get(&name).map(Secret::expose).ok_or_else(|| {
            Outcome::permanent(format!("no {} webhook is named `{name}`", self.provider))
        })
    }
}
