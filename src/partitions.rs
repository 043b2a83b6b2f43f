//! Time-partitioned tables. A table that takes billions of rows a day (the job history) is split into range
//! partitions of one timestamptz column, so that removing a day is dropping a table: no row-by-row `DELETE`, no
//! dead tuples for vacuum, no WAL per row, and the space is back at once.
//!
//! The owner of such a table describes it with a [`Partitioning`] (`queue::retention::JOB_HISTORY_PARTITIONS`);
//! the clock keeps partitions ahead of time ([`Partitioning::ensure_ahead`]) and retention drops the ones it
//! has archived ([`Partitioning::drop_within`]). The table also has a `DEFAULT` partition for rows no partition
//! covers, so an insert never fails for want of a partition; retention removes those rows in bounded batches.
//!
//! Locks, and why each step is short: creating a partition as a table of its own and then attaching it takes only
//! a SHARE UPDATE EXCLUSIVE lock on the parent (inserts go on), plus ACCESS EXCLUSIVE on the `DEFAULT` partition,
//! which the ack path does not touch while partitions cover the present. Dropping a partition takes ACCESS
//! EXCLUSIVE on the parent for an instant; every DDL statement here runs under a short `lock_timeout`, so one that
//! would wait (behind a long report reading the history) gives up instead of queueing the ack path behind it,
//! and is tried again later. (`DETACH … CONCURRENTLY` would take a weaker lock, but PostgreSQL refuses it on a
//! table with a `DEFAULT` partition.)
//!
//! This module imports nothing of herald's, so every owner can use it.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{PgPool, Row};

/// A table partitioned by range of one timestamptz column.
#[derive(Debug, Clone, Copy)]
pub struct Partitioning {
    /// The partitioned table; its partitions are named `<table>_p<YYYYMMDD_HHMMSS>` after their start (UTC).
    pub table: &'static str,
    /// The partition key.
    pub column: &'static str,
}

/// One partition and its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    /// The `DEFAULT` partition (no bounds).
    pub default: bool,
    /// Inclusive; `None`: `MINVALUE` (or the default partition).
    pub from: Option<DateTime<Utc>>,
    /// Exclusive; `None`: `MAXVALUE` (or the default partition).
    pub to: Option<DateTime<Utc>>,
}

/// How long a partition's DDL may wait for a lock before it gives up (and is tried again later).
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '200ms'";
/// How long any one statement of a partition's upkeep may run (the default partition's scan before an attach).
const STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '30s'";
/// How often a drop that could not get its lock is tried again within one call, and the pause between tries.
const DROP_TRIES: u32 = 5;
const DROP_PAUSE: Duration = Duration::from_millis(300);

/// `55P03`: lock_not_available (a `lock_timeout` fired).
fn lock_timed_out(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("55P03"))
}

/// The largest multiple of `width` since the Unix epoch that is not after `t` (partitions are aligned to it: one
/// day wide, they start at UTC midnight).
pub fn align_down(t: DateTime<Utc>, width: Duration) -> DateTime<Utc> {
    let width_us = i64::try_from(width.as_micros()).unwrap_or(i64::MAX).max(1);
    let us = t.timestamp_micros();
    DateTime::from_timestamp_micros(us - us.rem_euclid(width_us)).unwrap_or(t)
}

impl Partitioning {
    /// The name a partition starting at `from` gets.
    pub fn partition_name(&self, from: DateTime<Utc>) -> String {
        format!("{}_p{}", self.table, from.format("%Y%m%d_%H%M%S"))
    }

    /// Every partition, the default one first, then by start.
    pub async fn list(&self, pool: &PgPool) -> Result<Vec<Partition>, sqlx::Error> {
        // The bounds come back as text in this session's time zone and are cast back in the same session, so
        // the round trip is exact whatever the server's `TimeZone`.
        let rows = sqlx::query(
            r#"
            SELECT name, bound = 'DEFAULT' AS is_default,
                   substring(bound FROM 'FROM \(''([^'']*)''\)')::timestamptz AS from_at,
                   substring(bound FROM 'TO \(''([^'']*)''\)')::timestamptz AS to_at
            FROM (SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
                  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                  WHERE i.inhparent = to_regclass($1)) p
            ORDER BY is_default DESC, from_at NULLS FIRST
            "#,
        )
        .bind(self.table)
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Partition {
                    name: row.try_get("name")?,
                    default: row.try_get("is_default")?,
                    from: row.try_get("from_at")?,
                    to: row.try_get("to_at")?,
                })
            })
            .collect()
    }

    /// Makes sure partitions `width` wide (aligned, see [`align_down`]) cover the present and `ahead` more
    /// widths after it; returns the names created. Starts after the last partition there is; a range whose rows
    /// already sit in the default partition (no partition covered them in time) is left to the default
    /// partition, since attaching a partition over them would fail. Safe to run from several clocks at once
    /// (one creates, the others see it).
    pub async fn ensure_ahead(
        &self,
        pool: &PgPool,
        now: DateTime<Utc>,
        width: Duration,
        ahead: u32,
    ) -> Result<Vec<String>, sqlx::Error> {
        let step = TimeDelta::from_std(width).unwrap_or(TimeDelta::days(1));
        let present = align_down(now, width);
        let goal = present + step * (i32::try_from(ahead).unwrap_or(i32::MAX).saturating_add(1));
        let partitions = self.list(pool).await?;
        if partitions.iter().any(|p| !p.default && p.to.is_none()) {
            return Ok(Vec::new()); // a partition reaches MAXVALUE: nothing to add
        }
        let last_end = partitions.iter().filter_map(|p| p.to).max();
        let mut start = last_end.map_or(present, |end| end.max(present));
        let mut created = Vec::new();
        while start < goal {
            let end = align_down(start, width) + step;
            if self.create(pool, start, end).await? {
                created.push(self.partition_name(start));
            }
            start = end;
        }
        Ok(created)
    }

    /// Creates and attaches the partition `[from, to)`; false when another clock did it first or the default
    /// partition holds rows of that range (or a lock was busy: the next call tries again).
    pub async fn create(
        &self,
        pool: &PgPool,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let name = self.partition_name(from);
        let mut tx = pool.begin().await?;
        // Every statement below is bounded: a lock that stays busy or a scan of a grown default partition gives
        // up, and the next look (a few seconds later) tries again.
        sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
        sqlx::query(STATEMENT_TIMEOUT).execute(&mut *tx).await?;
        // One clock at a time per table: another one busy creating it makes this call pass.
        let mine: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtext('herald.partitions'), hashtext($1))",
        )
        .bind(self.table)
        .fetch_one(&mut *tx)
        .await?;
        // Each early return rolls back explicitly: a dropped transaction is rolled back later, when its connection
        // is next used, and until then it keeps the advisory lock, so the next range's `create` (on another
        // connection of the pool) would find it taken and skip that range.
        if !mine {
            tx.rollback().await?;
            return Ok(false);
        }
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
        if exists {
            tx.rollback().await?;
            return Ok(false);
        }
        // Rows of this range can only be in the default partition (no partition covers it yet).
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE {col} >= $1 AND {col} < $2)",
            self.table,
            col = self.column
        );
        let stranded: bool = sqlx::query_scalar(&sql)
            .bind(from)
            .bind(to)
            .fetch_one(&mut *tx)
            .await?;
        if stranded {
            tracing::warn!(table = self.table, %from, %to,
                "rows of this range are in the default partition: no partition created for it");
            tx.rollback().await?;
            return Ok(false);
        }
        // A table of its own first, then attached: CREATE TABLE … PARTITION OF would lock the parent against
        // inserts. The bounds are RFC 3339 literals written by chrono (DDL takes no parameters); the names come
        // from constants and timestamps.
        let create = format!(
            "CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
            table = self.table,
        );
        let attach = format!(
            "ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{from}') TO ('{to}')",
            table = self.table,
            from = from.to_rfc3339(),
            to = to.to_rfc3339(),
        );
        sqlx::query(&create)
            .persistent(false)
            .execute(&mut *tx)
            .await?;
        let attached = sqlx::query(&attach)
            .persistent(false)
            .execute(&mut *tx)
            .await;
        match attached {
            Ok(_) => {
                tx.commit().await?;
                tracing::info!(table = self.table, partition = %name, %from, %to, "partition created");
                Ok(true)
            }
            Err(error) if lock_timed_out(&error) => {
                tracing::info!(table = self.table, partition = %name, "partition not created: a lock was busy");
                tx.rollback().await?;
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Analyzes each partition whose time is over (its end has passed) and that has no statistics yet; returns
    /// how many. Retention reads a partition in slices of its time column: without statistics the planner
    /// takes each slice for most of the table and scans all of it (measured: 94 ms per slice of 5,000 rows in
    /// a 900,000-row partition, so reading it took minutes). Autovacuum analyzes a partition soon after it fills;
    /// this covers a server where autovacuum is off or behind. One statistics query, then `ANALYZE` (a sample
    /// of 30,000 rows) of the few partitions that need it.
    pub async fn analyze_complete(&self, pool: &PgPool) -> Result<u32, sqlx::Error> {
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
        let complete: Vec<String> = self
            .list(pool)
            .await?
            .into_iter()
            .filter(|p| !p.default && p.to.is_some_and(|end| end <= now))
            .map(|p| p.name)
            .collect();
        if complete.is_empty() {
            return Ok(0);
        }
        let unanalyzed: Vec<String> = sqlx::query_scalar(
            "SELECT relname::text FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname = ANY($1) \
               AND last_analyze IS NULL AND last_autoanalyze IS NULL",
        )
        .bind(&complete)
        .fetch_all(pool)
        .await?;
        let mut analyzed = 0;
        for name in unanalyzed {
            // Only names of this table's partitions (read from the catalog above) reach the statement.
            if !complete.contains(&name) {
                continue;
            }
            // ANALYZE waits for a DROP, ATTACH or VACUUM of the same partition: bounded like them, and skipped
            // when busy (the next slice's `prepare` tries again).
            let statement = format!("ANALYZE {name}");
            let mut tx = pool.begin().await?;
            sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
            sqlx::query(STATEMENT_TIMEOUT).execute(&mut *tx).await?;
            let result = sqlx::query(&statement)
                .persistent(false)
                .execute(&mut *tx)
                .await;
            match result {
                Ok(_) => {
                    tx.commit().await?;
                    analyzed += 1;
                }
                Err(error) if lock_timed_out(&error) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(analyzed)
    }

    /// The start of the partition (not the default one, not one reaching `MINVALUE`) that contains `t`, or `t`
    /// when none does: a retention cutoff rounded down to it leaves only whole partitions to archive.
    pub async fn boundary_at_or_before(
        &self,
        pool: &PgPool,
        t: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, sqlx::Error> {
        Ok(self
            .list(pool)
            .await?
            .into_iter()
            .filter(|p| !p.default)
            .find_map(|p| match (p.from, p.to) {
                (Some(from), Some(to)) if from <= t && t < to => Some(from),
                _ => None,
            })
            .unwrap_or(t))
    }

    /// Drops every partition whose rows all lie in `[from, to)` (its bounds inside the range; for the one reaching
    /// `MINVALUE`, no row before `from`) and returns their names. The caller must know every row of the range
    /// archived. A partition whose lock stays busy is left (the caller deletes what is left in batches, or a
    /// later pass drops it).
    pub async fn drop_within(
        &self,
        pool: &PgPool,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<String>, sqlx::Error> {
        let mut dropped = Vec::new();
        for partition in self.list(pool).await? {
            let end = match partition.to {
                Some(end) if !partition.default && end <= to => end,
                _ => continue,
            };
            let inside = match partition.from {
                Some(start) => start >= from,
                None => {
                    let sql = format!(
                        "SELECT EXISTS (SELECT 1 FROM {} WHERE {} < $1)",
                        partition.name, self.column
                    );
                    let before: bool = sqlx::query_scalar(&sql).bind(from).fetch_one(pool).await?;
                    !before
                }
            };
            if inside && self.drop_partition(pool, &partition.name).await? {
                tracing::info!(table = self.table, partition = %partition.name, %end, "partition dropped");
                dropped.push(partition.name);
            }
        }
        Ok(dropped)
    }

    /// `DROP TABLE` under a short lock timeout, tried a few times; false if the lock stayed busy.
    async fn drop_partition(&self, pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
        let ddl = format!("DROP TABLE IF EXISTS {name}");
        for _ in 0..DROP_TRIES {
            // IF EXISTS: another clock's pass may have dropped it since the list was read.
            let mut tx = pool.begin().await?;
            sqlx::query(LOCK_TIMEOUT).execute(&mut *tx).await?;
            let result = sqlx::query(&ddl).persistent(false).execute(&mut *tx).await;
            match result {
                Ok(_) => {
                    tx.commit().await?;
                    return Ok(true);
                }
                Err(error) if lock_timed_out(&error) => {}
                Err(error) => return Err(error),
            }
            // At once, not when the connection is next used: the failed attempt's locks go with it.
            tx.rollback().await?;
            tokio::time::sleep(DROP_PAUSE).await;
        }
        tracing::warn!(
            table = self.table,
            partition = name,
            "partition not dropped: its lock stayed busy"
        );
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_down_starts_partitions_at_multiples_of_their_width() {
        let t = DateTime::parse_from_rfc3339("2026-11-30T18:47:13.5Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let day = align_down(t, Duration::from_secs(86_400));
        assert_eq!(day.to_rfc3339(), "2026-11-30T00:00:00+00:00");
        let minute = align_down(t, Duration::from_secs(60));
        assert_eq!(minute.to_rfc3339(), "2026-11-30T18:47:00+00:00");
        assert_eq!(align_down(day, Duration::from_secs(86_400)), day);
    }

    #[test]
    fn partition_names_carry_their_start() {
        let p = Partitioning {
            table: "t",
            column: "at",
        };
        let from = DateTime::parse_from_rfc3339("2026-11-29T06:30:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(p.partition_name(from), "t_p20261129_063000");
    }
}
