//! Enqueueing: one statement per batch, usable inside the caller's own transaction.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use herald::queue::{self, JobDefaults, JobKind, NewJob, QueueName};
//!
//! let defaults = JobDefaults {
//!     max_attempts: 10,
//!     timeout: Duration::from_secs(60),
//!     priority_aging: Duration::from_secs(60),
//! };
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
//! let payload = serde_json::json!({ "order": 42 });
//! let job = NewJob::new(QueueName::parse("emails")?, JobKind::parse("order.confirmation")?, payload);
//! queue::enqueue(&mut tx, &defaults, job).await?;
//! tx.commit().await?; // the job exists, and a worker is woken, only if this commits
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;

use sqlx::{PgConnection, Row};

use super::QueueError;
use super::sql;
use super::types::{Enqueued, JobDefaults, NewJob};

/// Enqueues one job. See [`enqueue_many`].
pub async fn enqueue(
    conn: &mut PgConnection,
    defaults: &JobDefaults,
    job: NewJob,
) -> Result<Enqueued, QueueError> {
    let mut results = enqueue_many(conn, defaults, std::slice::from_ref(&job)).await?;
    results
        .pop()
        .ok_or_else(|| QueueError::NotFound("enqueue result".into()))
}

/// Enqueues a batch in one statement and returns one result per job, in order. A job whose idempotency key is
/// already taken is not inserted; its result is [`Enqueued::Duplicate`] with the id of the job holding the key.
pub async fn enqueue_many(
    conn: &mut PgConnection,
    defaults: &JobDefaults,
    jobs: &[NewJob],
) -> Result<Vec<Enqueued>, QueueError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let columns = Columns::from_jobs(defaults, jobs);
    let rows = sqlx::query(sql::ENQUEUE)
        .bind(columns.queue)
        .bind(columns.kind)
        .bind(columns.payload)
        .bind(columns.priority)
        .bind(columns.run_at)
        .bind(columns.max_attempts)
        .bind(columns.timeout_ms)
        .bind(&columns.idempotency_key)
        .bind(vec![None::<i64>; jobs.len()])
        .bind(defaults.priority_aging.as_secs_f64())
        .fetch_all(&mut *conn)
        .await?;

    let mut results = Vec::with_capacity(rows.len());
    let mut duplicate_keys = Vec::new();
    for row in &rows {
        let id: i64 = row.try_get("id")?;
        if row.try_get::<bool, _>("inserted")? {
            results.push(Enqueued::Inserted(id));
        } else {
            let key: Option<String> = row.try_get("idempotency_key")?;
            duplicate_keys.extend(key.clone());
            results.push(Enqueued::Duplicate(id)); // placeholder id, replaced below
        }
    }
    if !duplicate_keys.is_empty() {
        resolve_duplicates(
            conn,
            &columns.idempotency_key,
            &duplicate_keys,
            &mut results,
        )
        .await?;
    }
    Ok(results)
}

/// Replaces the placeholder ids of duplicates with the ids of the jobs that hold their keys. This is a second
/// statement on purpose: under READ COMMITTED it sees a racing transaction that committed the key after the
/// insert statement's snapshot was taken.
async fn resolve_duplicates(
    conn: &mut PgConnection,
    keys_by_position: &[Option<String>],
    duplicate_keys: &[String],
    results: &mut [Enqueued],
) -> Result<(), QueueError> {
    let holders: HashMap<String, i64> = sqlx::query(sql::JOBS_BY_IDEMPOTENCY_KEY)
        .bind(duplicate_keys)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("key")?, row.try_get("job_id")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    for (result, key) in results.iter_mut().zip(keys_by_position) {
        if let (Enqueued::Duplicate(id), Some(key)) = (result, key) {
            // Only possible if the key was deleted between the two statements (retention racing a replay).
            *id = *holders.get(key).ok_or_else(|| {
                QueueError::Conflict(format!(
                    "idempotency key `{key}` changed hands during enqueue; try again"
                ))
            })?;
        }
    }
    Ok(())
}

/// The batch as parallel arrays, the shape `unnest` takes.
struct Columns {
    queue: Vec<String>,
    kind: Vec<String>,
    payload: Vec<serde_json::Value>,
    priority: Vec<i16>,
    run_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    max_attempts: Vec<i32>,
    timeout_ms: Vec<i32>,
    idempotency_key: Vec<Option<String>>,
}

impl Columns {
    fn from_jobs(defaults: &JobDefaults, jobs: &[NewJob]) -> Self {
        let timeout_ms = |job: &NewJob| {
            let timeout = job.timeout.unwrap_or(defaults.timeout);
            i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX)
        };
        Self {
            queue: jobs.iter().map(|j| j.queue.as_str().to_string()).collect(),
            kind: jobs.iter().map(|j| j.kind.as_str().to_string()).collect(),
            payload: jobs.iter().map(|j| j.payload.clone()).collect(),
            priority: jobs.iter().map(|j| j.priority.get()).collect(),
            run_at: jobs.iter().map(|j| j.run_at).collect(),
            max_attempts: jobs
                .iter()
                .map(|j| j.max_attempts.unwrap_or(defaults.max_attempts).max(1))
                .collect(),
            timeout_ms: jobs.iter().map(timeout_ms).collect(),
            idempotency_key: jobs
                .iter()
                .map(|j| j.idempotency_key.as_ref().map(|k| k.as_str().to_string()))
                .collect(),
        }
    }
}
