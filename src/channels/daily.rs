//! Per-day aggregates of deliveries, for the clock's daily rollups (`clock::rollups` stores them; the channel
//! layer owns `herald_deliveries`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::sql;

/// The deliveries of one workflow over one channel and provider created in a time range, by current status.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct DeliveryDay {
    /// `''` for deliveries created before the workflow was recorded on them.
    pub workflow: String,
    pub channel: String,
    /// The provider that accepted the message, or was last tried; `''` if none was (suppressed before a call).
    pub provider: String,
    pub deliveries: i64,
    /// Deliveries a provider accepted, whatever their status now (sent, delivered, bounced).
    pub accepted: i64,
    pub queued: i64,
    pub sending: i64,
    pub sent: i64,
    pub delivered: i64,
    pub bounced: i64,
    pub failed: i64,
    pub suppressed: i64,
    pub unknown: i64,
    /// The provider's acceptance minus the run's trigger, in milliseconds.
    pub accept_p50_ms: Option<f64>,
    pub accept_p95_ms: Option<f64>,
    pub accept_p99_ms: Option<f64>,
}

/// Deliveries created in `[from, to)`, per workflow, channel and provider, ordered by the three; at most `limit`
/// groups.
pub async fn delivery_days(
    conn: &mut PgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<DeliveryDay>, sqlx::Error> {
    sqlx::query_as(sql::DELIVERY_DAYS)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(conn)
        .await
}
