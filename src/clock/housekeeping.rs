//! Housekeeping: the clock vacuums the tables that churn (the hot job table above all) when their dead rows pile
//! up. Autovacuum normally does this; but a server may run with `autovacuum = off`, or autovacuum may fall behind a
//! queue that deletes tens of thousands of rows a second, and then every claim and ack pays for the dead rows
//! (measured: 15 million dead rows in `herald_jobs` after 8 minutes at 15,000 jobs/s with autovacuum off). Each
//! table's owner lists its churned tables; a table is vacuumed when its dead rows pass `clock.vacuum_min_dead`
//! and a fifth of its live ones.
//!
//! It also keeps the partitioned tables' partitions ready ahead of the present ([`keep_partitions`]), and the
//! churned tables' planner statistics as fresh as their size ([`keep_statistics`]).

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::settings::PartitionSettings;

/// Every churned table, from their owners.
fn churned_tables() -> impl Iterator<Item = &'static str> {
    crate::queue::CHURNED_TABLES
        .iter()
        .chain(crate::workflow::CHURNED_TABLES)
        .chain(crate::channels::CHURNED_TABLES)
        .chain(crate::bridge::CHURNED_TABLES)
        .copied()
}

/// One look: vacuums each churned table that needs it; returns the tables vacuumed with their dead rows.
pub async fn vacuum_bloated(pool: &PgPool, min_dead: i64) -> Vec<(&'static str, i64)> {
    let tables: Vec<&'static str> = churned_tables().collect();
    crate::db::vacuum_bloated(pool, &tables, min_dead)
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "housekeeping: reading table statistics failed");
            Vec::new()
        })
}

/// Looks every `every` until `shutdown`.
pub async fn run(pool: PgPool, every: Duration, min_dead: i64, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        for (table, dead) in vacuum_bloated(&pool, min_dead).await {
            tracing::info!(table, dead, "housekeeping: vacuumed");
        }
    }
}

/// How often the clock looks at the churned tables' sizes (one statistics query), and the fewest rows a table
/// needs before its growth is worth an `ANALYZE`.
const STATISTICS_CHECK: Duration = Duration::from_secs(2);
const STATISTICS_MIN_ROWS: i64 = 10_000;

/// One look: analyzes each churned table that doubled since its last analyze; returns those analyzed with their
/// rows.
pub async fn analyze_grown(pool: &PgPool) -> Result<Vec<(&'static str, i64)>, sqlx::Error> {
    let tables: Vec<&'static str> = churned_tables().collect();
    crate::db::analyze_grown(pool, &tables, STATISTICS_MIN_ROWS).await
}

/// Analyzes every `STATISTICS_CHECK` each churned table that doubled since its last analyze (see
/// [`crate::db::analyze_grown`]), until `shutdown`. One process is enough: an `ANALYZE` makes every session of
/// the database plan afresh. Measured: claims planned while the job table was empty took 300 ms each once a
/// fan-out had filled it, until the next analyze.
pub async fn keep_statistics(pool: PgPool, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(STATISTICS_CHECK) => {}
        }
        match analyze_grown(&pool).await {
            Ok(analyzed) => {
                failing = false;
                for (table, rows) in analyzed {
                    tracing::debug!(table, rows, "housekeeping: analyzed a grown table");
                }
            }
            // Once per outage, not every two seconds.
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "housekeeping: reading table sizes failed");
            }
            Err(_) => {}
        }
    }
}

/// Every partitioned table, from their owners.
fn partitioned_tables() -> impl Iterator<Item = &'static crate::partitions::Partitioning> {
    crate::queue::retention::PARTITIONED.iter()
}

/// Makes sure each partitioned table has partitions for the present and `settings.ahead` widths after it;
/// returns the partitions created.
pub async fn keep_partitions(
    pool: &PgPool,
    settings: &PartitionSettings,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    let mut created = Vec::new();
    for table in partitioned_tables() {
        match table
            .ensure_ahead(pool, now, settings.width, settings.ahead)
            .await
        {
            Ok(names) => created.extend(names),
            Err(error) => {
                tracing::warn!(table = table.table, %error, "housekeeping: creating partitions failed")
            }
        }
    }
    created
}

/// Keeps partitions ahead at once and then every `every`, until `shutdown`.
pub async fn run_partitions(
    pool: PgPool,
    settings: PartitionSettings,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        keep_partitions(&pool, &settings, chrono::Utc::now()).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
