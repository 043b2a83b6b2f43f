//! What a provider's answer means for herald: every adapter maps every answer (and every transport failure) to
//! exactly one [`Outcome`]. The chain in `chain.rs` decides what to do with it (retry, fall back, re-schedule,
//! dead-letter), so adapters never retry or sleep themselves.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// How one provider call (or skipped call) of a send ended, as a delivery's `attempts` and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Sent,
    Transient,
    RateLimited,
    Permanent,
    /// A permanent failure that put the recipient on the suppression list.
    Suppressed,
    Config,
    /// No call was made: the circuit was open, or no rate permit came in time.
    Skipped,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 7] = [
        Self::Sent,
        Self::Transient,
        Self::RateLimited,
        Self::Permanent,
        Self::Suppressed,
        Self::Config,
        Self::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Transient => "transient",
            Self::RateLimited => "rate_limited",
            Self::Permanent => "permanent",
            Self::Suppressed => "suppressed",
            Self::Config => "config",
            Self::Skipped => "skipped",
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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

    /// How the call ended, as a delivery's attempts record it.
    pub fn attempt_outcome(&self) -> AttemptOutcome {
        match self {
            Self::Sent { .. } => AttemptOutcome::Sent,
            Self::Transient { .. } => AttemptOutcome::Transient,
            Self::RateLimited { .. } => AttemptOutcome::RateLimited,
            Self::Permanent { suppress: true, .. } => AttemptOutcome::Suppressed,
            Self::Permanent { .. } => AttemptOutcome::Permanent,
            Self::Config { .. } => AttemptOutcome::Config,
        }
    }

    /// The short name used in metrics, timelines and delivery attempts.
    pub fn label(&self) -> &'static str {
        self.attempt_outcome().as_str()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_outcomes_are_spelled_as_delivery_attempts_store_them() {
        for outcome in AttemptOutcome::ALL {
            let json = serde_json::to_value(outcome).unwrap();
            assert_eq!(json, outcome.as_str());
            assert_eq!(outcome.to_string(), outcome.as_str());
            assert_eq!(
                serde_json::from_value::<AttemptOutcome>(json).unwrap(),
                outcome
            );
        }
        // The metrics label of each provider answer is its attempt's outcome.
        let answers = [
            Outcome::Sent {
                provider_message_id: None,
            },
            Outcome::transient("503"),
            Outcome::rate_limited(None, "429"),
            Outcome::permanent("bad address"),
            Outcome::suppress("bounced"),
            Outcome::config("401"),
        ];
        let labels: Vec<&str> = answers.iter().map(Outcome::label).collect();
        let spelled: Vec<&str> = AttemptOutcome::ALL[..6]
            .iter()
            .map(|o| o.as_str())
            .collect();
        assert_eq!(labels, spelled);
    }
}
