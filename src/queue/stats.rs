//! Queue depth for the whole fleet, computed by one process and exported by all.
//!
//! Counting `herald_jobs` on every scrape of every process would cost the database a scan per process per scrape.
//! Instead every herald process runs [`run`]: the one holding the queue-stats lock (a session advisory lock, see
//! `db::SessionLock`) counts the jobs per queue every period and writes `herald_queue_stats`; every process (the
//! leader too) reads that small table on the same period into its gauges. If the leader dies, its connection
//! closes, the lock is free, and the first process to try next takes over: within one period.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{Gauge, GaugeVec, IntGaugeVec, Opts};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db::SessionLock;

/// Advisory lock class of the queue-stats leader (1213 is the queue's own, 1214 the workflow keys').
const LOCK_CLASS: i32 = 1215;
/// Most queues published by name (the deepest ones; the rest are summed under [`OTHER_QUEUES`]): a client
/// inventing queue names cannot grow the label set without bound, nor hide a real queue.
pub const MAX_QUEUES: i64 = 100;

/// The row that sums every queue beyond the [`MAX_QUEUES`] deepest (parentheses: no queue name can hold them).
pub const OTHER_QUEUES: &str = "(other)";

/// Counts per queue and state: the [`MAX_QUEUES`] deepest queues by name, the rest summed under [`OTHER_QUEUES`]
/// (always present, so the freshest `computed_at` says when the fleet last counted).
/// A queue that holds no job at all keeps a row of zeros for an hour, then goes; a queue that still holds jobs but
/// fell out of the deepest is counted in the sum. $1 who computes, $2 the most queues.
const PUBLISH: &str = "
WITH every_queue AS (
    SELECT queue,
           count(*) FILTER (WHERE lease_token IS NULL AND NOT scheduled) AS available,
           count(*) FILTER (WHERE scheduled) AS scheduled,
           count(*) FILTER (WHERE lease_token IS NOT NULL) AS running,
           min(run_at) FILTER (WHERE lease_token IS NULL AND NOT scheduled) AS oldest_available_at,
           row_number() OVER (ORDER BY count(*) DESC, queue) AS rank
    FROM herald_jobs GROUP BY queue
), counts AS (
    SELECT queue, available, scheduled, running, oldest_available_at FROM every_queue WHERE rank <= $2
    UNION ALL
    -- Always written, zeros included: its `computed_at` is the fleet's proof that someone counts, even when no
    -- queue holds a job (an idle fleet's counts are fresh, not missing).
    SELECT '(other)', coalesce(sum(available), 0), coalesce(sum(scheduled), 0), coalesce(sum(running), 0),
           min(oldest_available_at)
    FROM every_queue WHERE rank > $2
), emptied AS (
    UPDATE herald_queue_stats s
    SET available = 0, scheduled = 0, running = 0, oldest_available_at = NULL, computed_at = now(),
        computed_by = $1
    WHERE NOT EXISTS (SELECT 1 FROM every_queue e WHERE e.queue = s.queue)
      AND NOT EXISTS (SELECT 1 FROM counts c WHERE c.queue = s.queue)
      AND s.last_seen_at > now() - interval '1 hour'
), gone AS (
    DELETE FROM herald_queue_stats s
    WHERE NOT EXISTS (SELECT 1 FROM counts c WHERE c.queue = s.queue)
      AND (EXISTS (SELECT 1 FROM every_queue e WHERE e.queue = s.queue)
           OR s.last_seen_at <= now() - interval '1 hour')
)
INSERT INTO herald_queue_stats AS s (queue, available, scheduled, running, oldest_available_at, computed_at,
                                     computed_by, last_seen_at)
SELECT queue, available, scheduled, running, oldest_available_at, now(), $1, now() FROM counts
ON CONFLICT (queue) DO UPDATE
SET available = excluded.available, scheduled = excluded.scheduled, running = excluded.running,
    oldest_available_at = excluded.oldest_available_at, computed_at = excluded.computed_at,
    computed_by = excluded.computed_by, last_seen_at = excluded.last_seen_at";

/// What every process reads: the published rows, deepest first (the sum of the rest included), with ages as of
/// now.
const READ: &str = "
SELECT queue, available, scheduled, running,
       extract(epoch FROM now() - oldest_available_at)::float8 AS oldest_available_secs,
       extract(epoch FROM now() - computed_at)::float8 AS age_secs, computed_by
FROM herald_queue_stats ORDER BY available + scheduled + running DESC, queue LIMIT $1";

pub static QUEUE_JOBS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    crate::metrics::int_gauge_vec(
        "queue_jobs",
        "Jobs per queue and state (available, scheduled, running), as the fleet's queue-stats leader last \
         counted them",
        &["queue", "state"],
    )
});

pub static QUEUE_OLDEST_AVAILABLE_SECONDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    crate::metrics::gauge_vec(
        "queue_oldest_available_seconds",
        "How long the oldest available job of each queue has been due (0: none waiting)",
        &["queue"],
    )
});

pub static QUEUE_STATS_AGE_SECONDS: LazyLock<Gauge> = LazyLock::new(|| {
    Gauge::with_opts(Opts::new(
        "queue_stats_age_seconds",
        "Age of the queue counts this process exports (grows while no process counts, or this one cannot read \
         them; +Inf before the first count)",
    ))
    .unwrap_or_else(|_| unreachable!("the metric's name is valid"))
});

/// Every metric above, for the process's registry.
pub fn all() -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(QUEUE_JOBS.clone()),
        Box::new(QUEUE_OLDEST_AVAILABLE_SECONDS.clone()),
        Box::new(QUEUE_STATS_AGE_SECONDS.clone()),
    ]
}

/// One published row.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct QueueStats {
    pub queue: String,
    pub available: i64,
    pub scheduled: i64,
    pub running: i64,
    pub oldest_available_secs: Option<f64>,
    pub age_secs: f64,
    pub computed_by: String,
}

/// This process, as `computed_by` names it.
fn identity() -> String {
    let host = gethostname::gethostname();
    format!("{}:{}", host.to_string_lossy(), std::process::id())
}

/// Another module's fleet-wide gauge (the workflows' waiting runs), counted by the same elected process right
/// after the queue counts: one count per fleet per period, without an election of its own. Only the leader
/// exports a value; the others read zero (take the max across processes).
pub trait FleetGauge: Send + Sync {
    /// Counts, under a statement deadline, and sets the gauge; logs a failure (the gauge keeps its last value).
    fn refresh<'a>(
        &'a self,
        pool: &'a PgPool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
    /// This process stopped leading: its count is no longer current.
    fn clear(&self);
}

/// Takes part in the election and refreshes this process's gauges every `every`, until `shutdown`; while
/// leading, also refreshes `fleet_gauges`.
pub async fn run(
    pool: PgPool,
    every: Duration,
    fleet_gauges: Vec<Box<dyn FleetGauge>>,
    shutdown: CancellationToken,
) {
    let me = identity();
    // The lock's session is touched once per loop: it must outlive the longest loop (the count and each fleet
    // gauge under the batch writers' 10 s deadline, the 5 s read, the wait), or a slow database would hand the
    // lock to a second counter while this one still counts.
    let longest_loop = every + Duration::from_secs(10 * (1 + fleet_gauges.len() as u64) + 5);
    let mut lock = SessionLock::new(
        LOCK_CLASS,
        0,
        (every * 3).max(longest_loop + Duration::from_secs(10)),
    );
    let mut leading = false;
    let mut counted_at: Option<std::time::Instant> = None;
    loop {
        let leader = lock.hold(&pool).await;
        if leader != leading {
            tracing::info!(leader, "queue-stats leadership changed");
            leading = leader;
            if !leader {
                fleet_gauges.iter().for_each(|gauge| gauge.clear());
            }
        }
        if leader {
            if let Err(error) = publish(&pool, &me).await {
                tracing::warn!(%error, "publishing queue stats failed");
            }
            for gauge in &fleet_gauges {
                gauge.refresh(&pool).await;
            }
        }
        // A read stuck behind a lock must not stop the gauges' age from growing.
        match tokio::time::timeout(Duration::from_secs(5), read(&pool))
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::Protocol("no answer in 5 s".into())))
        {
            Ok(rows) => {
                export(&rows);
                // When the counts were made, on this process's clock (the freshest row's age at reading).
                let age = rows
                    .iter()
                    .map(|r| r.age_secs)
                    .fold(f64::INFINITY, f64::min);
                counted_at = age
                    .is_finite()
                    .then(|| std::time::Instant::now() - Duration::from_secs_f64(age.max(0.0)));
            }
            Err(error) => tracing::warn!(%error, "reading queue stats failed"),
        }
        // Grows while nobody counts or this process cannot read: a stale gauge must not look fresh.
        QUEUE_STATS_AGE_SECONDS
            .set(counted_at.map_or(f64::INFINITY, |at| at.elapsed().as_secs_f64()));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Counts the jobs per queue and writes them (the leader's part), under the batch writers' statement deadline: a
/// count stuck behind a lock gives up rather than hold a connection.
pub async fn publish(pool: &PgPool, me: &str) -> Result<(), sqlx::Error> {
    let mut tx = crate::db::begin_bounded(pool, &[]).await?;
    sqlx::query(PUBLISH)
        .bind(me)
        .bind(MAX_QUEUES)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The published rows: the deepest queues, and the sum of the rest.
pub async fn read(pool: &PgPool) -> Result<Vec<QueueStats>, sqlx::Error> {
    sqlx::query_as(READ)
        .bind(MAX_QUEUES + 1)
        .fetch_all(pool)
        .await
}

/// Replaces this process's gauges with `rows` (a queue no longer published leaves the gauges).
fn export(rows: &[QueueStats]) {
    QUEUE_JOBS.reset();
    QUEUE_OLDEST_AVAILABLE_SECONDS.reset();
    for row in rows {
        for (state, value) in [
            ("available", row.available),
            ("scheduled", row.scheduled),
            ("running", row.running),
        ] {
            QUEUE_JOBS
                .with_label_values(&[row.queue.as_str(), state])
                .set(value);
        }
        QUEUE_OLDEST_AVAILABLE_SECONDS
            .with_label_values(&[row.queue.as_str()])
            .set(row.oldest_available_secs.unwrap_or(0.0).max(0.0));
    }
}
