//! Dead letters: jobs that failed for good, kept with the error of every attempt until replayed or purged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool, Row};

use super::QueueError;
use super::sql;
use super::types::JobId;

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

/// A replayed dead letter and the new job it became.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Replayed {
    pub dead_letter_id: i64,
    pub job_id: JobId,
}

/// Re-enqueues every matching dead letter that was not replayed yet, with attempts reset.
pub async fn replay(
    pool: &PgPool,
    filter: &DeadLetterFilter,
    priority_aging: Duration,
) -> Result<Vec<Replayed>, QueueError> {
    let rows = filter
        .bind(sqlx::query(sql::REPLAY_DEAD_LETTERS))
        .bind(priority_aging.as_secs_f64())
        .try_map(|row| Replayed::from_row(&row))
        .fetch_all(pool)
        .await?;
    Ok(rows)
}

/// Deletes every matching dead letter; returns how many.
pub async fn purge(pool: &PgPool, filter: &DeadLetterFilter) -> Result<i64, QueueError> {
    Ok(filter
        .bind(sqlx::query(sql::PURGE_DEAD_LETTERS))
        .fetch_one(pool)
        .await?
        .try_get(0)?)
}
