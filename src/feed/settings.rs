//! `[feed]`: recipient tokens, browser access and live streams.

use serde::Deserialize;

use crate::setting::InvalidSetting;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedSettings {
    /// Origins browsers may call the feed routes from (CORS); empty: none (server-to-server only). `*` allows
    /// any origin (tokens are sent as a header or query parameter, never as cookies).
    pub cors_origins: Vec<String>,
    /// The longest a recipient token may live (a mint asks for less, or gets this).
    pub token_max_ttl_secs: u64,
    /// Server-Sent-Events streams one API process keeps open at most (a new one past it: 503); less than
    /// `api.max_connections`, so streams never take every connection.
    pub max_streams: usize,
    /// Streams one recipient may have open on one API process (tabs, devices); a new one past it: 429.
    pub max_streams_per_recipient: usize,
    /// A comment line sent on an idle stream this often, so proxies keep it open.
    pub keepalive_secs: u64,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            cors_origins: Vec::new(),
            token_max_ttl_secs: 3600,
            max_streams: 2_000,
            max_streams_per_recipient: 16,
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
            // An origin is a scheme and a host (and port): a path never matches a browser's `Origin` header.
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            if origin != "*" && !host.is_some_and(|h| !h.is_empty() && !h.contains('/')) {
                return Err(InvalidSetting::new(
                    "feed.cors_origins",
                    format!("`{origin}` is not an origin like https://app.example.com (or `*`)"),
                ));
            }
        }
        Ok(())
    }
}
