//! What a provider's answer means for herald: every adapter maps every answer (and every transport failure) to
//! exactly one [`Outcome`]. The chain in `chain.rs` decides what to do with it (retry, fall back, re-schedule,
//! dead-letter), so adapters never retry or sleep themselves.

use std::time::Duration;

use serde::Serialize;

/// One provider call's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the provider (not yet delivered: callbacks move the delivery on).
    Sent { provider_message_id: Option<String> },
    /// Provider or network trouble (5xx, timeout, connection refused): worth retrying this provider.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The provider asked us to slow down.
    RateLimited {
        reason: String,
        retry_after: Option<Duration>,
        scope: RateScope,
    },
    /// The message or recipient is wrong: no retry, never a fallback. `suppress` adds the recipient to the
    /// suppression list (bounced address, unsubscribed number, unregistered device).
    Permanent { reason: String, suppress: bool },
    /// Our credentials or account are wrong: this provider cannot send anything until an operator fixes it.
    Config { reason: String },
}

/// What a rate limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateScope {
    /// The whole provider account.
    Provider,
    /// One destination (a Slack channel, an APNs device, a Discord webhook).
    Destination,
}

impl Outcome {
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent {
            reason: reason.into(),
            suppress: false,
        }
    }

    pub fn suppress(reason: impl Into<String>) -> Self {
        Self::Permanent {
            reason: reason.into(),
            suppress: true,
        }
    }

    pub fn config(reason: impl Into<String>) -> Self {
        Self::Config {
            reason: reason.into(),
        }
    }

    pub fn rate_limited(retry_after: Option<Duration>, reason: impl Into<String>) -> Self {
        Self::RateLimited {
            reason: reason.into(),
            retry_after,
            scope: RateScope::Provider,
        }
    }

    /// The short name used in metrics, timelines and delivery attempts.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Sent { .. } => "sent",
            Self::Transient { .. } => "transient",
            Self::RateLimited { .. } => "rate_limited",
            Self::Permanent { suppress: true, .. } => "suppressed",
            Self::Permanent { .. } => "permanent",
            Self::Config { .. } => "config",
        }
    }

    /// The reason text, if the outcome is a failure.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Sent { .. } => None,
            Self::Transient { reason, .. }
            | Self::RateLimited { reason, .. }
            | Self::Permanent { reason, .. }
            | Self::Config { reason } => Some(reason),
        }
    }
}
