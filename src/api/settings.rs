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
    /// Failed authentications (a key that is malformed, unknown or revoked) per second per client address, and
    /// the burst above it; beyond, the client is answered 429 without any lookup until its wait is over.
    #[serde(default = "default_auth_failures_per_second")]
    pub auth_failures_per_second: NonZeroU32,
    #[serde(default = "default_auth_failures_burst")]
    pub auth_failures_burst: NonZeroU32,
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "setting::secs")]
    pub shutdown_grace: Duration,
    /// Connections served at once; past it new ones wait in the listen queue until one closes. Keep it below
    /// the process's file limit (`ulimit -n`).
    #[serde(default = "default_max_connections")]
    pub max_connections: NonZeroUsize,
    /// How long an HTTP/1 client has to send a request's headers before its connection is closed.
    #[serde(
        rename = "header_read_timeout_secs",
        default = "default_header_read_timeout",
        deserialize_with = "setting::secs"
    )]
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed (an idle keep-alive, a client that
    /// never sends or never reads). Longer than `request_timeout_secs`.
    #[serde(
        rename = "idle_timeout_secs",
        default = "default_idle_timeout",
        deserialize_with = "setting::secs"
    )]
    pub idle_timeout: Duration,
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_connections() -> NonZeroUsize {
    NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN)
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_auth_failures_per_second() -> NonZeroU32 {
    NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN)
}

fn default_auth_failures_burst() -> NonZeroU32 {
    NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN)
}

impl ApiSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        setting::positive("api.request_timeout_secs", self.request_timeout)?;
        setting::positive("api.header_read_timeout_secs", self.header_read_timeout)?;
        setting::positive("api.idle_timeout_secs", self.idle_timeout)?;
        if self.idle_timeout <= self.request_timeout {
            return Err(InvalidSetting::new(
                "api.idle_timeout_secs",
                "must be longer than api.request_timeout_secs (a request being handled keeps its connection quiet)",
            ));
        }
        Ok(())
    }
}
