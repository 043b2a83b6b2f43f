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
        .bind(&columns.request_id)
        .bind(&columns.trace_parent)
        .fetch_all(&mut *conn)
        .await?;

    let mut results = Vec::with_capacity(rows.len());
    let mut duplicates = Vec::new();
    // Mapped by hand, not through a row struct: the key and fingerprint are read only for the rare duplicate,
    // so an inserted job (the enqueue path of the API and the bridge) costs no String per row.
    for (position, row) in rows.iter().enumerate() {
        let id: i64 = row.try_get("id")?;
        if row.try_get::<bool, _>("inserted")? {
            results.push(Enqueued::Inserted(id));
        } else {
            let key: Option<String> = row.try_get("idempotency_key")?;
            let fingerprint: Option<String> = row.try_get("fingerprint")?;
            duplicates.push((position, key.unwrap_or_default(), fingerprint));
            results.push(Enqueued::Duplicate(id)); // placeholder, resolved below
        }
    }
    if !duplicates.is_empty() {
        resolve_duplicates(conn, &duplicates, &mut results).await?;
    }
    Ok(results)
}

/// Replaces the placeholders of jobs whose key was taken with the job holding the key: a duplicate if it was
/// enqueued with the same content, a conflict otherwise. This is a second statement on purpose: under READ
/// COMMITTED it sees a racing transaction that committed the key after the insert statement's snapshot.
async fn resolve_duplicates(
    conn: &mut PgConnection,
    duplicates: &[(usize, String, Option<String>)],
    results: &mut [Enqueued],
) -> Result<(), QueueError> {
    let keys: Vec<&str> = duplicates.iter().map(|(_, key, _)| key.as_str()).collect();
    let holders: Vec<(String, i64, Option<String>)> = sqlx::query_as(sql::JOBS_BY_IDEMPOTENCY_KEY)
        .bind(&keys)
        .fetch_all(&mut *conn)
        .await?;
    let holders: HashMap<String, (i64, Option<String>)> = holders
        .into_iter()
        .map(|(key, job_id, fingerprint)| (key, (job_id, fingerprint)))
        .collect();
    for (position, key, fingerprint) in duplicates {
        // Only possible if the key was deleted between the two statements (retention racing a replay).
        let (holder, held_fingerprint) = holders.get(key).ok_or_else(|| {
            QueueError::Conflict(format!(
                "idempotency key `{key}` changed hands during enqueue; try again"
            ))
        })?;
        // Keys taken before fingerprints existed have none: give them the benefit of the doubt.
        results[*position] = if held_fingerprint.is_none() || held_fingerprint == fingerprint {
            Enqueued::Duplicate(*holder)
        } else {
            Enqueued::Conflict(*holder)
        };
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
    request_id: Vec<Option<String>>,
    trace_parent: Vec<Option<String>>,
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
            request_id: jobs.iter().map(|j| j.request_id.clone()).collect(),
            trace_parent: jobs.iter().map(|j| j.trace_parent.clone()).collect(),
        }
    }
}
