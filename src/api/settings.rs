//! `[api]`: where the HTTP API listens and the limits it puts on every client.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::Deserialize;

use crate::setting::{self, InvalidSetting};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// The address to bind. `PORT` (set by Procfile platforms) replaces it with `0.0.0.0:$PORT` when settings load.
    pub listen: String,
    /// Largest request body; a larger one is answered 413 before it is read.
    pub max_body_bytes: NonZeroUsize,
    /// Most jobs in one `POST /v1/jobs/batch`.
    pub max_batch: NonZeroUsize,
    #[serde(rename = "request_timeout_secs", deserialize_with = "setting::secs")]
    pub request_timeout: Duration,
    /// Requests per second per API key, and the burst above it.
    pub rate_limit_per_second: NonZeroU32,
    pub rate_limit_burst: NonZeroU32,
    /// How long a key's lookup is cached (so a revoked key works this long at most).
    #[serde(rename = "key_cache_secs", deserialize_with = "setting::secs")]
    pub key_cache: Duration,
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "setting::secs")]
    pub shutdown_grace: Duration,
}

impl ApiSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        setting::positive("api.request_timeout_secs", self.request_timeout)
    }
}
