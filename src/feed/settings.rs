//! `[feed]`: recipient tokens, browser access and live streams.

use serde::Deserialize;

use crate::setting::InvalidSetting;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    /// Origins browsers may call the feed routes from (CORS); empty: none (server-to-server only). `*` allows
    /// any origin (tokens are sent as a header or query parameter, never as cookies).
    pub cors_origins: Vec<String>,
    /// The longest a recipient token may live (a mint asks for less, or gets this).
    pub token_max_ttl_secs: u64,
    /// Server-Sent-Events streams one API process keeps open at most (a new one past it: 503).
    pub max_streams: usize,
    /// A comment line sent on an idle stream this often, so proxies keep it open.
    pub keepalive_secs: u64,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            cors_origins: Vec::new(),
            token_max_ttl_secs: 3600,
            max_streams: 10_000,
            keepalive_secs: 15,
        }
    }
}

impl FeedSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(60..=86_400).contains(&self.token_max_ttl_secs) {
            return Err(InvalidSetting::new(
                "feed.token_max_ttl_secs",
                "must be from 60 to 86400",
            ));
        }
        if self.max_streams == 0 {
            return Err(InvalidSetting::new(
                "feed.max_streams",
                "must be at least 1",
            ));
        }
        if !(1..=300).contains(&self.keepalive_secs) {
            return Err(InvalidSetting::new(
                "feed.keepalive_secs",
                "must be from 1 to 300",
            ));
        }
        for origin in &self.cors_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(InvalidSetting::new(
                    "feed.cors_origins",
                    format!("`{origin}` is not an origin like https://app.example.com (or `*`)"),
                ));
            }
        }
        Ok(())
    }
}
