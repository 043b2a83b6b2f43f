//! `[recipients]`: how one-click unsubscribe links are made.

use serde::Deserialize;

use crate::setting::InvalidSetting;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientsSettings {
    /// The key unsubscribe tokens are signed with (at least 32 characters). Unset: herald makes a random one on
    /// first start and keeps it in the database, shared by the fleet (`herald_recipient_secrets`).
    #[serde(default)]
    pub signing_secret: Option<String>,
    /// Where the API is reached from the outside: unsubscribe links are `<public_url>/v1/unsubscribe/<token>`.
    pub public_url: String,
    /// How long an unsubscribe link works after its email was sent.
    pub unsubscribe_ttl_days: u32,
}

impl Default for RecipientsSettings {
    fn default() -> Self {
        Self {
            signing_secret: None,
            public_url: "http://127.0.0.1:8080".into(),
            unsubscribe_ttl_days: 60,
        }
    }
}

impl RecipientsSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self
            .signing_secret
            .as_deref()
            .is_some_and(|s| s.chars().count() < 32)
        {
            return Err(InvalidSetting::new(
                "recipients.signing_secret",
                "must be at least 32 characters",
            ));
        }
        let url = self.public_url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 512 {
            return Err(InvalidSetting::new(
                "recipients.public_url",
                "must be an http:// or https:// URL of at most 512 characters",
            ));
        }
        if !(1..=3650).contains(&self.unsubscribe_ttl_days) {
            return Err(InvalidSetting::new(
                "recipients.unsubscribe_ttl_days",
                "must be 1-3650",
            ));
        }
        Ok(())
    }
}
