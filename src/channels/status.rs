//! A delivery's status. Statuses only move forward: a late or repeated callback never moves a delivery back
//! (`delivered` followed by a late `sent` stays `delivered`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A delivery's status. A provider's callback only moves it forward, in the order `queued`, `sending`, `unknown`,
/// `sent`, `delivered`, then `bounced`, `failed` or `suppressed`.
// Spelled as `herald_deliveries.status` stores it.
// sqlx declares this type by name (`text`): bind `as_str()`, since binding the enum itself costs a type lookup
// per connection.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
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
    /// Not sent on purpose, with the reason in its error: the recipient opted out (`preference`), or has no
    /// address for the channel (`no_address`).
    Skipped,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 9] = [
        Self::Queued,
        Self::Sending,
        Self::Unknown,
        Self::Sent,
        Self::Delivered,
        Self::Bounced,
        Self::Failed,
        Self::Suppressed,
        Self::Skipped,
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
            Self::Skipped => "skipped",
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
            Self::Bounced | Self::Failed | Self::Suppressed | Self::Skipped => 5,
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_statuses_are_spelled_as_the_deliveries_table_stores_them() {
        for status in DeliveryStatus::ALL {
            let json = serde_json::to_value(status).unwrap();
            assert_eq!(json, status.as_str());
            assert_eq!(status.to_string(), status.as_str());
            assert_eq!(
                serde_json::from_value::<DeliveryStatus>(json).unwrap(),
                status
            );
            assert_eq!(DeliveryStatus::parse(status.as_str()), Some(status));
            // sqlx writes (and reads) the same spelling.
            let mut sent = sqlx::postgres::PgArgumentBuffer::default();
            let _ = sqlx::Encode::<sqlx::Postgres>::encode_by_ref(&status, &mut sent);
            assert_eq!(&sent[..], status.as_str().as_bytes());
        }
        // The CHECK as the latest migration that sets it states it (0017 added `skipped`); the rank function's
        // arms in the one that made it.
        let flat = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        let migration = flat(include_str!("../../migrations/0004_channels.sql"));
        let checked = flat(include_str!("../../migrations/0017_recipients.sql"));
        let quoted: Vec<String> = DeliveryStatus::ALL
            .iter()
            .map(|s| format!("'{s}'"))
            .collect();
        let check = format!("CHECK (status IN ({}))", quoted.join(", "));
        assert!(checked.contains(&check), "{check} not in migration 0017");
        // The rank function in the migration orders the statuses as `rank` does.
        for status in DeliveryStatus::ALL.into_iter().filter(|s| s.rank() < 5) {
            let arm = format!("WHEN '{status}' THEN {}", status.rank());
            assert!(migration.contains(&arm), "{arm} not in the migration");
        }
    }
}
