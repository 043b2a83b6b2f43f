//! The chat adapters' common shape: named webhooks, one JSON POST per message. Slack, Discord and Teams differ
//! only in the body they post, the query they add and how they answer; each gives those as a [`WebhookShape`].
//!
//! Settings: `webhooks = { ops = "https://hooks.slack.com/services/…" }` and an optional `default_webhook` used
//! when an action's `to` is empty. An action's `to` names a webhook, never a URL: a template must not be able to
//! make herald post to an arbitrary address. The URLs are secrets (whoever has one can post), so they are never
//! printed and errors name the webhook, not its URL. Each webhook is a destination with its own rate limit.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::channels::provider::{
    Answer, CommonSettings, Provider, ProviderConfigError, ProviderFuture, Secret, exchange,
    http_client, parse_settings,
};
use crate::channels::{Message, Outcome};

/// What makes one chat provider different from another.
pub struct WebhookShape {
    pub name: &'static str,
    /// The JSON body for a message, or the outcome refusing it before any request.
    pub body: fn(&Message) -> Result<serde_json::Value, Outcome>,
    /// Query parameters added to the webhook URL.
    pub query: &'static [(&'static str, &'static str)],
    pub classify: fn(&Answer) -> Outcome,
}

/// A chat adapter: a [`WebhookShape`] over the configured webhooks.
pub struct WebhookAdapter {
    shape: WebhookShape,
    client: reqwest::Client,
    webhooks: Webhooks,
}

/// Builds a chat adapter of `shape` from its settings table.
pub fn build(
    shape: WebhookShape,
    settings: &serde_json::Value,
) -> Result<Arc<dyn Provider>, ProviderConfigError> {
    let parsed: WebhookSettings = parse_settings(shape.name, settings)?;
    let common: CommonSettings = parse_settings(shape.name, settings)?;
    Ok(Arc::new(WebhookAdapter {
        client: http_client(common.timeout())?,
        webhooks: Webhooks::new(shape.name, parsed)?,
        shape,
    }))
}

impl Provider for WebhookAdapter {
    fn name(&self) -> &'static str {
        self.shape.name
    }

    fn destination_key(&self, message: &Message) -> Option<String> {
        self.webhooks.name_for(message)
    }

    fn send<'a>(&'a self, message: &'a Message) -> ProviderFuture<'a> {
        Box::pin(async move {
            let url = match self.webhooks.url_for(message) {
                Ok(url) => url,
                Err(outcome) => return outcome,
            };
            let body = match (self.shape.body)(message) {
                Ok(body) => body,
                Err(outcome) => return outcome,
            };
            let request = self.client.post(url).query(self.shape.query).json(&body);
            exchange(request, |answer| (self.shape.classify)(&answer)).await
        })
    }
}

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
