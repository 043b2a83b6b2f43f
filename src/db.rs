//! Connecting to PostgreSQL and migrating it.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::embedded_postgres;
use crate::setting;

/// `[database]`, plus `DATABASE_URL` (read from the environment by `config`, as every Postgres tool does).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connections per pool (a worker has two: the handlers' and the queue's own).
    pub max_connections: NonZeroU32,
    #[serde(rename = "acquire_timeout_ms", deserialize_with = "setting::millis")]
    pub acquire_timeout: Duration,
    /// Whether a process applies pending migrations when it boots. Off (`--no-migrate`) for roles whose database
    /// user has no DDL rights: they check that the database is current and refuse to start if not.
    pub migrate: bool,
    /// `DATABASE_URL`, if set and not blank.
    #[serde(skip)]
    pub url: Option<String>,
}

/// The URL may hold a password: `Debug` says only whether it is set.
impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("migrate", &self.migrate)
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("could not connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "no database: set DATABASE_URL (postgres://user@host:port/db), or start `herald up` in this directory, \
         which runs a private PostgreSQL under {0}"
    )]
    NoDatabase(String),
    #[error(
        "{0} (database.migrate is off for this process: run `herald migrate` first, as the Procfile's release phase does)"
    )]
    NotMigrated(String),
}

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `DATABASE_URL` if set; otherwise the private cluster `herald up` runs from `embedded_dir`, if it is running.
pub fn database_url(settings: &DatabaseSettings, embedded_dir: &Path) -> Result<String, DbError> {
    if let Some(url) = &settings.url {
        return Ok(url.clone());
    }
    embedded_postgres::running_url(embedded_dir)
        .ok_or_else(|| DbError::NoDatabase(embedded_dir.display().to_string()))
}

pub async fn connect(url: &str, settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(settings.max_connections.get())
        // No ping before every checkout: it doubled the round trips of each claim and ack, and the cost of an idle
        // worker. A connection that died is found on use; every caller retries with backoff.
        .test_before_acquire(false)
        .acquire_timeout(settings.acquire_timeout)
        .connect(url)
        .await
        .map_err(DbError::Connect)
}

/// A second pool on the same database whose transactions commit without waiting for the WAL flush
/// (`synchronous_commit = off`), for work whose loss in a PostgreSQL crash is harmless because it is redone.
///
/// Why this is safe for workflow steps: PostgreSQL writes WAL in order, and the queue's acknowledgement of the
/// node job (on the ordinary pool) is a synchronous commit that comes later, so it flushes the step's commit
/// too. If PostgreSQL crashes before that, the step and the ack are lost together and the node job runs again.
pub fn relaxed_commit_pool(pool: &PgPool, settings: &DatabaseSettings) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    PgPoolOptions::new()
        .max_connections(settings.max_connections.get())
        .test_before_acquire(false)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options)
}

/// How long one statement of a batch writer (run starts, events, deliveries, node steps) may run, lock waits
/// included, before PostgreSQL cancels it. Each takes milliseconds; one that waits this long is stuck behind a
/// lock (a long transaction, `LOCK TABLE`, an uncommitted run holding an idempotency key), and waiting on would
/// hold its batch, every caller queued in it, and one of the writer's few batch slots, for as long as that lock
/// lives. Cancelled, the batch fails and its callers retry.
pub const BATCH_STATEMENT_DEADLINE: &str = "10s";

/// Begins a transaction whose statements PostgreSQL cancels after [`BATCH_STATEMENT_DEADLINE`], with any further
/// `SET LOCAL` settings in `more` (such as `"synchronous_commit TO on"`), all sent with the `BEGIN` in one round
/// trip.
pub async fn begin_bounded(
    pool: &PgPool,
    more: &[&str],
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut statement =
        format!("BEGIN; SET LOCAL statement_timeout = '{BATCH_STATEMENT_DEADLINE}'");
    for setting in more {
        statement.push_str("; SET LOCAL ");
        statement.push_str(setting);
    }
    let asked = std::time::Instant::now();
    let begun = pool.begin_with(statement).await;
    BEGIN_SECONDS.observe(asked.elapsed().as_secs_f64());
    begun
}

/// [`begin_bounded`], then `statement` in the same round trip (a lock to take first, say). `statement` is sent as
/// simple-query text: it must be made of constants and trusted text only (no outside data).
pub async fn begin_bounded_then(
    pool: &PgPool,
    statement: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let statement =
        format!("BEGIN; SET LOCAL statement_timeout = '{BATCH_STATEMENT_DEADLINE}'; {statement}");
    let asked = std::time::Instant::now();
    let begun = pool.begin_with(statement).await;
    BEGIN_SECONDS.observe(asked.elapsed().as_secs_f64());
    begun
}

/// Begins a read-side transaction whose statements PostgreSQL cancels after `budget` (a constant such as `"5s"`),
/// in the `BEGIN`'s round trip: for operators' searches that could read much of a large table. A statement
/// cancelled for its budget fails with an error [`cancelled_for_time`] recognizes.
pub async fn begin_within(
    pool: &PgPool,
    budget: &'static str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with(format!("BEGIN; SET LOCAL statement_timeout = '{budget}'"))
        .await
}

/// How long the batch writers (API enqueues, run starts, events, workflow steps, deliveries: every
/// [`begin_bounded`] caller) waited to take a pooled connection and open their transaction. A round trip when the
/// pool has a connection free; a pool too small for its load (callers waiting for connections) shows here first.
pub static BEGIN_SECONDS: std::sync::LazyLock<prometheus::Histogram> =
    std::sync::LazyLock::new(|| {
        prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new(
            "db_begin_seconds",
            "Time to take a pooled connection and begin a batch transaction (pool waits show here)",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]),
    )
    .unwrap_or_else(|_| unreachable!("the metric's name is valid"))
    });

/// This module's metrics, for the process's registry.
pub fn metrics() -> Vec<Box<dyn prometheus::core::Collector>> {
    vec![Box::new(BEGIN_SECONDS.clone())]
}

/// Applies pending migrations (sqlx holds an advisory lock, so many processes may call this at once).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// A session-level advisory lock held on a connection of its own, for work one process of the fleet does at a
/// time (a leader). The lock lives as long as that connection: if the process dies or its connection breaks,
/// PostgreSQL releases it and another process takes it on its next try.
pub struct SessionLock {
    class: i32,
    key: i32,
    /// The server ends the holding session after this long without a statement (`idle_session_timeout`): a leader
    /// whose host died or was cut off leaves no half-open connection holding the lock until TCP gives up (hours).
    idle_limit: std::time::Duration,
    /// The connection holding the lock, once taken.
    held: Option<sqlx::PgConnection>,
}

impl SessionLock {
    /// The lock (`class`, `key`), not yet taken. Call [`SessionLock::hold`] more often than `idle_limit`.
    pub fn new(class: i32, key: i32, idle_limit: std::time::Duration) -> Self {
        Self {
            class,
            key,
            idle_limit,
            held: None,
        }
    }

    /// Takes the lock if it is free, or checks that the connection holding it still answers; returns whether
    /// this process holds it now. Never waits for the lock: a process that does not get it tries again later.
    pub async fn hold(&mut self, pool: &PgPool) -> bool {
        if let Some(conn) = self.held.as_mut() {
            let alive = tokio::time::timeout(
                Duration::from_secs(5),
                sqlx::query("SELECT 1").execute(&mut *conn),
            )
            .await;
            if matches!(alive, Ok(Ok(_))) {
                return true;
            }
            // Broken or stuck: drop it (the server ends the session and frees the lock).
            self.held = None;
            return false;
        }
        let Ok(Ok(mut pooled)) = tokio::time::timeout(Duration::from_secs(5), pool.acquire()).await
        else {
            return false;
        };
        let taken: Result<bool, sqlx::Error> =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(self.class)
                .bind(self.key)
                .fetch_one(&mut *pooled)
                .await;
        if matches!(taken, Ok(true)) {
            // Out of the pool for good: a pooled connection handed to someone else would carry the lock with it.
            let mut conn = pooled.detach();
            let limit = format!(
                "SET idle_session_timeout = '{}ms'",
                self.idle_limit.as_millis().max(1_000)
            );
            if sqlx::query(&limit).execute(&mut conn).await.is_err() {
                // Closing the connection ends the session and frees the lock.
                return false;
            }
            self.held = Some(conn);
            true
        } else {
            // Not taken: the connection holds nothing and goes back to the pool.
            false
        }
    }
}

/// Whether this process can serve: the database answers, and its migrations are those this binary expects.
/// The reason if not (for `/readyz`).
pub async fn readiness(pool: &PgPool) -> Result<(), String> {
    let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    // A probe must answer, not wait: a database that does not answer in 5 s is not ready.
    let query = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool);
    let applied: Option<i64> = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .map_err(|_| "database unavailable: no answer in 5 s".to_string())?
        .map_err(|e| format!("database unavailable: {e}"))?;
    if applied.unwrap_or(0) < expected {
        return Err(format!(
            "migrations pending: database at {applied:?}, binary at {expected}"
        ));
    }
    Ok(())
}

/// The same server URL with another database name.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// Vacuums each of `tables` whose dead rows pass `min_dead` and a fifth of its live ones; returns those it
/// vacuumed with how many dead rows each had. For the clock's housekeeping: a busy queue makes two dead rows per
/// job, and a server with autovacuum off (or falling behind) lets them pile up until every claim and ack pays
/// for them. One statistics query for all the tables; `SKIP_LOCKED`: if another vacuum (autovacuum, another
/// clock) is at a table, this one passes. A table that fails to vacuum is logged and skipped.
pub async fn vacuum_bloated(
    pool: &PgPool,
    tables: &[&'static str],
    min_dead: i64,
) -> Result<Vec<(&'static str, i64)>, sqlx::Error> {
    let due = "SELECT relname::text, n_dead_tup FROM pg_stat_user_tables \
         WHERE schemaname = current_schema() AND relname = ANY($1) AND n_dead_tup >= greatest($2, n_live_tup / 5)";
    // Not a transaction: VACUUM refuses to run inside one.
    maintain(pool, tables, due, min_dead, "VACUUM (SKIP_LOCKED)").await
}

/// Analyzes each of `tables` that has grown to twice the rows its planner statistics counted (and at least
/// `min_rows`); returns those analyzed with their rows. A plan made while a table was nearly empty reads it
/// whole: sound for ten rows, ruinous for a million, and a prepared statement keeps its plan until the table's
/// statistics change. A queue that fills from empty (a fan-out, a backlog) outgrows its plans in seconds, well
/// before autovacuum's next analyze (a minute apart at best; never with autovacuum off); `ANALYZE` makes every
/// session plan afresh. Growth only: a table that shrank keeps plans that suit a larger one, which stay sound.
/// `SKIP_LOCKED`: if another process is analyzing a table, this one passes. Only tables the current user may
/// analyze (their owner's rights): for anyone else PostgreSQL skips the table with a warning, and it would be
/// found grown again on every look.
pub async fn analyze_grown(
    pool: &PgPool,
    tables: &[&'static str],
    min_rows: i64,
) -> Result<Vec<(&'static str, i64)>, sqlx::Error> {
    let due = "SELECT s.relname::text, s.n_live_tup FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
         WHERE s.schemaname = current_schema() AND s.relname = ANY($1) \
           AND s.n_live_tup >= greatest($2, 2 * c.reltuples) AND pg_has_role(c.relowner, 'USAGE')";
    maintain(pool, tables, due, min_rows, "ANALYZE (SKIP_LOCKED)").await
}

/// Runs `command` on each of `tables` that the statistics query `due` ($1 the tables, $2 `threshold`; answering
/// name and figure) finds due; returns those done with their figure. One that fails is logged and skipped.
async fn maintain(
    pool: &PgPool,
    tables: &[&'static str],
    due: &'static str,
    threshold: i64,
    command: &str,
) -> Result<Vec<(&'static str, i64)>, sqlx::Error> {
    let found: Vec<(String, i64)> = sqlx::query_as(due)
        .bind(tables)
        .bind(threshold)
        .fetch_all(pool)
        .await?;
    let mut done = Vec::new();
    for (name, figure) in found {
        // Only names from `tables` (the owners' constants) reach the statement.
        let Some(table) = tables.iter().copied().find(|t| *t == name) else {
            continue;
        };
        match sqlx::raw_sql(&format!("{command} {table}"))
            .execute(pool)
            .await
        {
            Ok(_) => done.push((table, figure)),
            Err(error) => tracing::warn!(table, %error, command, "table maintenance failed"),
        }
    }
    Ok(done)
}

/// Listens on PostgreSQL channel `channel` until `shutdown`, on one connection of `pool`, reconnecting with backoff
/// (100 ms doubling to 5 s) when it drops. Each notification's payload goes to `notified`; `caught_up` runs each
/// time the connection is (re)established, because anything sent while nobody listened is lost and the owner must
/// look once. `name` names the listener in the logs. The queue's wakeups and the feed's live streams share it.
pub async fn listen(
    pool: &PgPool,
    channel: &str,
    name: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    notified: impl Fn(&str),
    caught_up: impl Fn(),
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() && !pool.is_closed() {
        let error = match listen_once(pool, channel, shutdown, &notified, &caught_up).await {
            Ok(()) => return,
            Err(error) => error,
        };
        tracing::warn!(%error, listener = name, retry_in = ?backoff, "listener lost its connection");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    pool: &PgPool,
    channel: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    notified: &impl Fn(&str),
    caught_up: &impl Fn(),
) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    caught_up();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = listener.try_recv() => match message? {
                Some(notification) => notified(notification.payload()),
                // PgListener reconnected under us: treat it as a new connection, so the owner catches up.
                None => return Err(sqlx::Error::Protocol("listener connection was re-established".into())),
            },
        }
    }
}

/// Whether `error` is the database cancelling a statement for its `statement_timeout` (SQLSTATE 57014): a read
/// that gave up within its budget, which its caller reports as such rather than as a failure.
pub fn cancelled_for_time(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "57014")
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_in_a_url() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "b"),
            "postgres://u@h:5432/b"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "b"),
            "postgres://u@h:5432/b"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "b"),
            "postgres://u@h/b?sslmode=disable"
        );
    }
}
