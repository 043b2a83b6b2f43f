//! A delivery's status. Statuses only move forward: a late or repeated callback never moves a delivery back
//! (`delivered` followed by a late `sent` stays `delivered`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Recorded, not sent yet (or a definite failure that will be retried).
    Queued,
    /// A send is in progress: the provider may or may not have accepted it if the worker dies now.
    Sending,
    /// A worker died while the delivery was `sending`: the provider may have accepted it. Never re-sent
    /// automatically (at-most-once: see `deliveries.rs`).
    Unknown,
    /// The provider accepted the message.
    Sent,
    /// The provider reported it delivered.
    Delivered,
    /// The recipient's server or device rejected it.
    Bounced,
    /// Sending failed for good.
    Failed,
    /// The recipient is on the suppression list, or the provider said to stop sending to it.
    Suppressed,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 8] = [
        Self::Queued,
        Self::Sending,
        Self::Unknown,
        Self::Sent,
        Self::Delivered,
        Self::Bounced,
        Self::Failed,
        Self::Suppressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Unknown => "unknown",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Bounced => "bounced",
            Self::Failed => "failed",
            Self::Suppressed => "suppressed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Position in the forward order; a callback may only move a delivery to a higher rank. The same order is
    /// in the migration's `herald_delivery_rank` function, which the callback update uses.
    pub fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Sending => 1,
            Self::Unknown => 2,
            Self::Sent => 3,
            Self::Delivered => 4,
            Self::Bounced | Self::Failed | Self::Suppressed => 5,
        }
    }
}
