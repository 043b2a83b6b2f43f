//! Dead letters: jobs that failed for good, kept with the error of every attempt until replayed or purged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{FromRow, PgPool, Row};

use super::QueueError;
use super::sql;
use super::types::JobId;
use crate::audit::{self, Actor};

/// How many (dead letter, new job) pairs a replay's audit row lists; the rest are counted.
const AUDITED_IDS: usize = 100;

/// Which dead letters an operation applies to. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub id: Option<i64>,
    pub queue: Option<String>,
    pub kind: Option<String>,
    /// Failed at or after this time.
    pub failed_since: Option<DateTime<Utc>>,
    /// Failed before this time.
    pub failed_before: Option<DateTime<Utc>>,
}

impl DeadLetterFilter {
    pub fn by_id(id: i64) -> Self {
        Self {
            id: Some(id),
            ..Self::default()
        }
    }

    /// The audit log's target: one dead letter, or the selection.
    fn target(&self) -> String {
        match self.id {
            Some(id) => format!("dead_letter:{id}"),
            None => "dead_letters".to_string(),
        }
    }

    /// The filter's set fields, for the audit log's details.
    fn describe(&self) -> serde_json::Value {
        let mut fields = serde_json::Map::new();
        let mut put = |name: &str, value: Option<serde_json::Value>| {
            if let Some(value) = value {
                fields.insert(name.to_string(), value);
            }
        };
        put("id", self.id.map(|v| json!(v)));
        put("queue", self.queue.as_ref().map(|v| json!(v)));
        put("kind", self.kind.as_ref().map(|v| json!(v)));
        put("failed_since", self.failed_since.map(|v| json!(v)));
        put("failed_before", self.failed_before.map(|v| json!(v)));
        serde_json::Value::Object(fields)
    }

    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.id)
            .bind(&self.queue)
            .bind(&self.kind)
            .bind(self.failed_since)
            .bind(self.failed_before)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub job_id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    /// Every attempt's error, oldest first.
    pub errors: serde_json::Value,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub failed_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    /// The job that replayed this dead letter.
    pub replayed_as: Option<JobId>,
}

/// Newest first. Pass the last id of a page as `before_id` to get the next page.
pub async fn list(
    pool: &PgPool,
    filter: &DeadLetterFilter,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<DeadLetter>, QueueError> {
    let rows = filter
        .bind(sqlx::query(sql::LIST_DEAD_LETTERS))
        .bind(before_id)
        .bind(limit)
        .try_map(|row| DeadLetter::from_row(&row))
        .fetch_all(pool)
        .await?;
    Ok(rows)
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<DeadLetter>, QueueError> {
    Ok(list(pool, &DeadLetterFilter::by_id(id), None, 1)
        .await?
        .pop())
}

/// How many matching dead letters a replay would take (those not replayed yet): what a confirmation shows.
pub async fn count_replayable(pool: &PgPool, filter: &DeadLetterFilter) -> Result<i64, QueueError> {
    Ok(filter
        .bind(sqlx::query(sql::COUNT_REPLAYABLE_DEAD_LETTERS))
        .fetch_one(pool)
        .await?
        .try_get(0)?)
}

/// The database's clock now: the bound a bulk action's confirmation fixes (`failed_before`), so that letters
/// failing after the count was shown are not taken.
pub async fn database_now(pool: &PgPool) -> Result<DateTime<Utc>, QueueError> {
    Ok(sqlx::query_scalar("SELECT now()").fetch_one(pool).await?)
}

/// How many dead letters match (replayed or not): what [`purge`] with the same filter would delete.
pub async fn count(pool: &PgPool, filter: &DeadLetterFilter) -> Result<i64, QueueError> {
    Ok(filter
        .bind(sqlx::query(sql::COUNT_DEAD_LETTERS))
        .fetch_one(pool)
        .await?
        .try_get(0)?)
}

/// A replayed dead letter and the new job it became.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Replayed {
    pub dead_letter_id: i64,
    pub job_id: JobId,
}

/// Re-enqueues every matching dead letter that was not replayed yet, with attempts reset (audited when any was).
pub async fn replay(
    pool: &PgPool,
    actor: &Actor,
    filter: &DeadLetterFilter,
    priority_aging: Duration,
) -> Result<Vec<Replayed>, QueueError> {
    let mut tx = pool.begin().await?;
    let rows = filter
        .bind(sqlx::query(sql::REPLAY_DEAD_LETTERS))
        .bind(priority_aging.as_secs_f64())
        .try_map(|row| Replayed::from_row(&row))
        .fetch_all(&mut *tx)
        .await?;
    if !rows.is_empty() {
        // The count and the first ids: a replay of millions must not make one huge row.
        let first: Vec<&Replayed> = rows.iter().take(AUDITED_IDS).collect();
        let details =
            json!({ "filter": filter.describe(), "replayed": rows.len(), "first": first });
        audit::record(
            &mut *tx,
            actor,
            "dead_letter.replay",
            &filter.target(),
            details,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(rows)
}

/// Deletes every matching dead letter; returns how many (audited when any were).
pub async fn purge(
    pool: &PgPool,
    actor: &Actor,
    filter: &DeadLetterFilter,
) -> Result<i64, QueueError> {
    let mut tx = pool.begin().await?;
    let purged: i64 = filter
        .bind(sqlx::query(sql::PURGE_DEAD_LETTERS))
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    if purged > 0 {
        let details = json!({ "filter": filter.describe(), "deleted": purged });
        audit::record(
            &mut *tx,
            actor,
            "dead_letter.delete",
            &filter.target(),
            details,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(purged)
}
