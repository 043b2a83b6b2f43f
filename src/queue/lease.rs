//! The life of a lease: claim, settle, release, promote, rescue, heartbeat, and the list of a worker's leases.
//!
//! Every function is one statement from `sql.rs`. The worker runtime calls them; so do the tests, which is how a
//! test can play a worker that was presumed dead and try a late ack.
//!
//! Every call has a deadline on both sides (see [`SERVER_DEADLINE`]): the database gives up on a statement no
//! later than the worker does, so a statement the worker abandoned cannot commit behind its back.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgExecutor, PgPool, Row};
use uuid::Uuid;

use super::QueueError;
use super::sql;
use super::types::{JobId, QueueName};

/// A job this worker holds a lease on.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    pub queue: QueueName,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i16,
    /// 1 on the first attempt.
    pub attempt: i32,
    pub max_attempts: i32,
    pub timeout: Duration,
    pub lease_token: i64,
    /// When this attempt was due; it never starts earlier.
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// When the lease term ends, on this process's clock, counted from when the claim was sent (so no later than
    /// the term the database recorded). Past it the job may have been rescued; the worker starts it only if its
    /// heartbeats since prove otherwise (`worker/liveness.rs`).
    pub start_by: Instant,
    /// The trace the attempt continues, if the job was enqueued under an exported span.
    pub trace_parent: Option<String>,
}

/// How an attempt ended, as the completer reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    Completed,
    /// Try again after `delay`, unless the attempts are spent (then the job is dead-lettered).
    Retry {
        delay: Duration,
        error: AttemptError,
    },
    /// Straight to the dead letters.
    Dead {
        error: AttemptError,
    },
    /// The worker stopped the handler (shutdown past its grace period): available again at once, attempt
    /// refunded, never dead-lettered for it.
    Interrupted {
        error: AttemptError,
    },
    /// The work could not start (every provider's circuit open, no rate permit): try again after `delay` with the
    /// attempt refunded, so waiting out an outage never spends the job's attempts.
    Snoozed {
        delay: Duration,
        error: AttemptError,
    },
    /// The job was never started: its lease term passed while it waited in the worker, and the worker cannot
    /// prove no rescuer took it (it was frozen). Give it back unchanged (attempt refunded, place in line kept).
    NotStarted,
}

/// The longest error message stored per attempt; longer ones are cut.
const MAX_ERROR_MESSAGE_BYTES: usize = 8 * 1024;
/// The longest retry delay honoured; a handler asking for more gets this.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(365 * 86_400);

/// One attempt's failure, appended to the job's error list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttemptError {
    pub attempt: i32,
    /// `error`, `permanent`, `panic`, `timeout`, `no_handler`, `bad_payload`, `shutdown`.
    pub kind: &'static str,
    pub message: String,
    pub at: DateTime<Utc>,
}

impl AttemptError {
    /// An attempt error with a message PostgreSQL can store: NUL characters (which `jsonb` rejects) are replaced
    /// and overly long messages are cut, so one odd message can never block an ack batch.
    pub fn new(attempt: i32, kind: &'static str, message: &str) -> Self {
        let mut message = message.replace('\0', "\u{FFFD}");
        if message.len() > MAX_ERROR_MESSAGE_BYTES {
            let mut end = MAX_ERROR_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str(" [cut]");
        }
        Self {
            attempt,
            kind,
            message,
            at: Utc::now(),
        }
    }
}

/// What the database did with one settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Completed,
    Retrying,
    Dead,
    /// Given back unstarted ([`Settlement::NotStarted`]).
    Released,
}

/// How long PostgreSQL may spend on one queue statement before it cancels it (`statement_timeout` on the
/// queue's connections, see [`with_server_deadline`]). Every statement takes milliseconds; one that waits this
/// long is stuck behind a lock (a migration, `LOCK TABLE`, a long transaction).
pub const SERVER_DEADLINE: Duration = Duration::from_secs(10);

/// How long the worker waits for an answer. Longer than [`SERVER_DEADLINE`], so that the server has always
/// cancelled a statement before the worker gives up on it: a claim the worker abandoned cannot commit later
/// and lease jobs to a worker that never received them. (An answer lost after the commit, as in a crash, is the
/// other way to that state; the worker's reconciliation closes it, see `worker/ledger.rs`.) The deadline also
/// catches a connection left half-dead by a PostgreSQL restart, which otherwise stalls a worker silently.
pub const CALL_DEADLINE: Duration = Duration::from_secs(15);

/// Connection options whose statements the server cancels after `deadline`.
pub fn with_server_deadline(options: &PgConnectOptions, deadline: Duration) -> PgConnectOptions {
    options
        .clone()
        .options([("statement_timeout", deadline.as_millis().to_string())])
}

/// A statement under [`CALL_DEADLINE`]. Callers take their connection from the pool first (bounded by the pool's
/// acquire timeout), so the deadline counts the statement alone and stays longer than the server's.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, QueueError> {
    within(CALL_DEADLINE, call).await
}

/// `call`, failing with a timeout error if it has not answered within `deadline`.
pub async fn within<T>(
    deadline: Duration,
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, QueueError> {
    match tokio::time::timeout(deadline, call).await {
        Ok(result) => result.map_err(QueueError::from),
        Err(_) => Err(QueueError::Database(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the database did not answer within {deadline:?}"),
        )))),
    }
}

/// A fresh lease token. The worker makes it (rather than the database) so that it knows the token of a claim
/// before the claim is sent: a claim whose answer never arrives is then recognisable by its token.
/// Positive and random: a token only has to differ from the job's previous ones.
pub fn new_lease_token() -> i64 {
    (rand::random::<u64>() >> 1).max(1) as i64
}

/// Claims up to `limit` jobs of `queue` for `worker`, under a fresh lease token.
pub async fn claim(
    pool: &PgPool,
    queue: &QueueName,
    limit: usize,
    lease: Duration,
    worker: Uuid,
) -> Result<Vec<ClaimedJob>, QueueError> {
    let mut conn = pool.acquire().await?;
    claim_on(&mut *conn, queue, limit, lease, worker, new_lease_token()).await
}

/// Claims up to `limit` jobs of `queue` for `worker` under `token` (from [`new_lease_token`]), on a connection
/// the caller took from the pool (so that the statement's deadline counts the statement alone) or an open
/// transaction of a test's.
pub async fn claim_on<'c>(
    conn: impl PgExecutor<'c>,
    queue: &QueueName,
    limit: usize,
    lease: Duration,
    worker: Uuid,
    token: i64,
) -> Result<Vec<ClaimedJob>, QueueError> {
    let claim = Claim {
        queue,
        limit,
        lease,
        worker,
        token,
    };
    Ok(claim_from(conn, &claim, None).await?.jobs)
}

/// What a claim asks for.
pub struct Claim<'a> {
    pub queue: &'a QueueName,
    pub limit: usize,
    pub lease: Duration,
    pub worker: Uuid,
    pub token: i64,
}

/// What a claim got, and the `sort_key` of the last job it took (where the next claim may start).
pub struct Claimed {
    pub jobs: Vec<ClaimedJob>,
    pub last_sort_key: Option<DateTime<Utc>>,
}

/// Claims as [`claim_on`] does, searching only jobs whose `sort_key` is at least `floor` (all of them if None).
pub async fn claim_from<'c>(
    conn: impl PgExecutor<'c>,
    claim: &Claim<'_>,
    floor: Option<DateTime<Utc>>,
) -> Result<Claimed, QueueError> {
    let start_by = Instant::now() + claim.lease;
    let query = sqlx::query(if floor.is_some() {
        sql::CLAIM_FROM
    } else {
        sql::CLAIM
    })
    .bind(claim.queue.as_str())
    .bind(i64::try_from(claim.limit).unwrap_or(i64::MAX))
    .bind(claim.lease.as_millis() as i64)
    .bind(claim.worker)
    .bind(claim.token);
    let query = match floor {
        Some(floor) => query.bind(floor),
        None => query,
    };
    let rows = bounded(query.fetch_all(conn)).await?;
    let last_sort_key = match rows.last() {
        Some(row) => Some(row.try_get("sort_key")?),
        None => None,
    };
    // The claim path: mapped by hand on purpose. `ClaimedJob` carries what is not a column (the queue, already
    // parsed, and `start_by`), so a derived row struct would mean a second struct and a move per job here.
    let jobs = rows
        .iter()
        .map(|row| {
            Ok(ClaimedJob {
                id: row.try_get("id")?,
                queue: claim.queue.clone(),
                kind: row.try_get("kind")?,
                payload: row.try_get("payload")?,
                priority: row.try_get("priority")?,
                attempt: row.try_get("attempt")?,
                max_attempts: row.try_get("max_attempts")?,
                timeout: Duration::from_millis(row.try_get::<i32, _>("timeout_ms")?.max(1) as u64),
                lease_token: row.try_get("lease_token")?,
                run_at: row.try_get("run_at")?,
                created_at: row.try_get("created_at")?,
                start_by,
                trace_parent: row.try_get("trace_parent")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(QueueError::from)?;
    Ok(Claimed {
        jobs,
        last_sort_key,
    })
}

/// Settles a batch of attempts: one statement, plus one more when some jobs are given back unstarted. Returns
/// what happened to each job whose lease was still valid; a job missing from the answer had a stale lease
/// token, and its settlement was rejected.
pub async fn settle(
    pool: &PgPool,
    batch: &[(JobId, i64, Settlement)],
    priority_aging: Duration,
) -> Result<Vec<(JobId, Settled)>, QueueError> {
    let unstarted: Vec<(JobId, i64)> = batch
        .iter()
        .filter(|(_, _, s)| matches!(s, Settlement::NotStarted))
        .map(|(id, token, _)| (*id, *token))
        .collect();
    let mut settled = Vec::with_capacity(batch.len());
    if !unstarted.is_empty() {
        let released = release_returning(pool, &unstarted).await?;
        settled.extend(released.into_iter().map(|id| (id, Settled::Released)));
    }
    if unstarted.len() < batch.len() {
        settled.extend(settle_attempts(pool, batch, priority_aging).await?);
    }
    Ok(settled)
}

/// The SETTLE statement over every attempt of `batch` that started.
async fn settle_attempts(
    pool: &PgPool,
    batch: &[(JobId, i64, Settlement)],
    priority_aging: Duration,
) -> Result<Vec<(JobId, Settled)>, QueueError> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut tokens = Vec::with_capacity(batch.len());
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut delays = Vec::with_capacity(batch.len());
    let mut errors = Vec::with_capacity(batch.len());
    for (id, token, settlement) in batch {
        let (outcome, delay, error) = match settlement {
            Settlement::Completed => ("completed", 0, None),
            Settlement::Retry { delay, error } => (
                "retry",
                delay.min(&MAX_RETRY_DELAY).as_millis() as i64,
                Some(error),
            ),
            Settlement::Dead { error } => ("dead", 0, Some(error)),
            Settlement::Interrupted { error } => ("interrupted", 0, Some(error)),
            // The settle statement refunds an interrupted attempt and schedules it after its delay.
            Settlement::Snoozed { delay, error } => (
                "interrupted",
                delay.min(&MAX_RETRY_DELAY).as_millis() as i64,
                Some(error),
            ),
            Settlement::NotStarted => continue,
        };
        ids.push(*id);
        tokens.push(*token);
        outcomes.push(outcome);
        delays.push(delay);
        errors.push(error.map(|e| serde_json::to_value(e).unwrap_or(serde_json::Value::Null)));
    }
    let query = sqlx::query(sql::SETTLE)
        .bind(ids)
        .bind(tokens)
        .bind(outcomes)
        .bind(delays)
        .bind(errors)
        .bind(priority_aging.as_secs_f64());
    let mut conn = pool.acquire().await?;
    let rows = bounded(query.fetch_all(&mut *conn)).await?;
    // The ack path: mapped by hand on purpose, matching the borrowed text of `settled` (no String per row).
    rows.iter()
        .map(|row| {
            let settled = match row.try_get::<&str, _>("settled")? {
                "completed" => Settled::Completed,
                "retry" => Settled::Retrying,
                _ => Settled::Dead,
            };
            Ok((row.try_get("id")?, settled))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(QueueError::from)
}

/// Gives back claimed jobs that never started, refunding their attempt. Returns how many were released.
pub async fn release(pool: &PgPool, jobs: &[(JobId, i64)]) -> Result<i64, QueueError> {
    Ok(release_returning(pool, jobs).await?.len() as i64)
}

/// [`release`], returning the ids of the jobs released (those whose token still matched).
async fn release_returning(pool: &PgPool, jobs: &[(JobId, i64)]) -> Result<Vec<JobId>, QueueError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, tokens): (Vec<i64>, Vec<i64>) = jobs.iter().copied().unzip();
    let query = sqlx::query_scalar(sql::RELEASE).bind(ids).bind(tokens);
    let mut conn = pool.acquire().await?;
    bounded(query.fetch_all(&mut *conn)).await
}

/// Which of `ids` are still in the hot table (to explain a rejected ack).
pub async fn still_queued(pool: &PgPool, ids: &[JobId]) -> Result<Vec<JobId>, QueueError> {
    let query = sqlx::query_scalar(sql::STILL_QUEUED).bind(ids);
    let mut conn = pool.acquire().await?;
    bounded(query.fetch_all(&mut *conn)).await
}

/// Every lease the database says `worker` holds, as (job, token): what reconciliation compares with what the
/// worker knows it holds.
pub async fn leases_of(pool: &PgPool, worker: Uuid) -> Result<Vec<(JobId, i64)>, QueueError> {
    let query = sqlx::query_as(sql::LEASES_OF).bind(worker);
    let mut conn = pool.acquire().await?;
    bounded(query.fetch_all(&mut *conn)).await
}

/// What one promoter pass did.
#[derive(Debug, Clone, Copy)]
pub struct Promotion {
    pub promoted: i64,
    pub next_run_at: Option<DateTime<Utc>>,
    /// How long until `next_run_at`, by the database's clock.
    pub next_due_in: Option<Duration>,
}

/// `PROMOTE`'s answer, before the wait is made a [`Duration`].
#[derive(sqlx::FromRow)]
struct PromoteRow {
    promoted: i64,
    next_run_at: Option<DateTime<Utc>>,
    next_due_in_secs: Option<f64>,
}

impl From<PromoteRow> for Promotion {
    fn from(row: PromoteRow) -> Self {
        Self {
            promoted: row.promoted,
            next_run_at: row.next_run_at,
            next_due_in: row
                .next_due_in_secs
                .map(|secs| Duration::from_secs_f64(secs.max(0.0))),
        }
    }
}

/// Makes due scheduled jobs available (at most `limit`) and says when the next one falls due.
pub async fn promote(pool: &PgPool, limit: i64) -> Result<Promotion, QueueError> {
    let query = sqlx::query_as::<_, PromoteRow>(sql::PROMOTE).bind(limit);
    let mut conn = pool.acquire().await?;
    let row = bounded(query.fetch_one(&mut *conn)).await?;
    Ok(row.into())
}

/// What one rescuer pass did.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Rescue {
    pub returned: i64,
    pub dead: i64,
}

/// Returns jobs with expired leases to their queues (or to the dead letters on their last attempt). A lease is
/// expired when its term has passed and its worker has not heartbeated for `lease`.
pub async fn rescue(pool: &PgPool, lease: Duration) -> Result<Rescue, QueueError> {
    let query = sqlx::query_as(sql::RESCUE).bind(lease.as_millis() as i64);
    let mut conn = pool.acquire().await?;
    bounded(query.fetch_one(&mut *conn)).await
}

/// Who a worker process is, as the registry shows it.
#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    pub id: Uuid,
    pub hostname: String,
    pub pid: i32,
    pub queues: Vec<String>,
    pub concurrency: i32,
}

impl WorkerIdentity {
    pub fn of_this_process(queues: Vec<String>, concurrency: i32) -> Self {
        Self {
            id: Uuid::new_v4(),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id() as i32,
            queues,
            concurrency,
        }
    }
}

/// Registers or refreshes the worker; while it keeps doing so, its leases stay valid. The worker sends it on a
/// connection of its own (see `worker/mod.rs`); the caller sets the deadline, which must be short: a heartbeat
/// that waits is worse than one that fails and is sent again.
pub async fn heartbeat<'c>(
    conn: impl PgExecutor<'c>,
    worker: &WorkerIdentity,
    deadline: Duration,
) -> Result<(), QueueError> {
    let query = sqlx::query(sql::HEARTBEAT)
        .bind(worker.id)
        .bind(&worker.hostname)
        .bind(worker.pid)
        .bind(&worker.queues)
        .bind(worker.concurrency);
    within(deadline, query.execute(conn)).await?;
    Ok(())
}

/// Forgets workers silent for longer than `silence`.
pub async fn reap_workers(pool: &PgPool, silence: Duration) -> Result<u64, QueueError> {
    let query = sqlx::query(sql::REAP_WORKERS).bind(silence.as_millis() as i64);
    let mut conn = pool.acquire().await?;
    let done = bounded(query.execute(&mut *conn)).await?;
    Ok(done.rows_affected())
}

/// Removes a worker's registry row as it exits.
pub async fn deregister(pool: &PgPool, worker: Uuid) -> Result<(), QueueError> {
    let mut conn = pool.acquire().await?;
    bounded(
        sqlx::query(sql::DEREGISTER_WORKER)
            .bind(worker)
            .execute(&mut *conn),
    )
    .await?;
    Ok(())
}
