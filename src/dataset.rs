//! What a data set is, for retention: the rows of one table aged by one time column, with the few statements
//! retention runs on them. Each owner module describes its own data sets (`queue::retention`,
//! `workflow::retention`, `channels::retention`, `bridge::retention`), so only the owner's files name its tables
//! (see `layering.rs`); the clock (`clock::retention`) runs the statements without knowing any table.
//!
//! This module imports only [`crate::partitions`] (a leaf), so every owner can use it without an import cycle.
//!
//! The statements work on half-open time ranges `[from, to)` of the data set's time column, and every one is
//! bounded: a range is read and deleted in *slices* that [`DataSet::slice`] sizes with a capped count (`probe`),
//! so no statement touches more than about `batch_size` rows, holds its locks long, or keeps an old snapshot
//! open while the queue runs.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use crate::partitions::Partitioning;

/// What retention does with a data set's rows once they are older than its maximum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// Archive them (verified), then delete them.
    Archive,
    /// Delete them: they are bookkeeping with no value once expired (idempotency keys, old circuit states).
    Delete,
}

/// One data set. Build the statements with `data_set_statements!` (or write them by hand, keeping its
/// parameter contract).
#[derive(Debug, Clone, Copy)]
pub struct DataSet {
    /// The name in settings, archive paths and manifests (`job_history`).
    pub name: &'static str,
    /// Bumped when the archived row's shape changes (a column added or renamed); written in every manifest.
    pub schema_version: u32,
    pub disposal: Disposal,
    pub sql: Statements,
    /// Rows of other tables archived inside each row, under a field of their own (a run's deliveries).
    pub attachments: &'static [Attachment],
    /// Run before working on a range: for a BRIN-indexed table, `brin_summarize_new_values` of its index. Pages
    /// appended since the last vacuum are not summarized, and every range scan reads all of them; on a busy
    /// table that is millions of rows per statement.
    pub prepare: Option<&'static str>,
    /// The table is partitioned by the time column: a removed range's whole partitions are dropped instead of
    /// deleted row by row, and the cutoff is rounded down to a partition's start so that only whole partitions
    /// are archived (see [`crate::partitions`]).
    pub partitioning: Option<Partitioning>,
}

/// The statements of a data set, each with a fixed parameter contract. They run unprepared (`persistent(false)`):
/// a prepared statement soon gets PostgreSQL's generic plan, which cannot know that `[$1, $2)` is a thin slice of
/// one partition and scans whole partitions instead (measured: 108 ms per probe instead of 2.5 ms). Planned with
/// the values, each statement reads only its slice.
#[derive(Debug, Clone, Copy)]
pub struct Statements {
    /// `$1` cutoff → the oldest time before it (`NULL` when no row is that old).
    pub oldest: &'static str,
    /// `$1` from, `$2` to, `$3` limit → how many rows lie in `[from, to)`, counting at most `$3`.
    pub probe: &'static str,
    /// `$1` from, `$2` to → the exact number of rows in `[from, to)`.
    pub count: &'static str,
    /// `$1` from, `$2` to → every row in `[from, to)` as `(at timestamptz, key int8, line text)`, ordered by
    /// time: `line` is the row as one JSON object (`to_jsonb(row)::text`), `key` what attachments join on.
    pub rows: &'static str,
    /// `$1` from, `$2` to, `$3` limit → deletes about `$3` rows of `[from, to)` (never a row outside it; in a
    /// partitioned table up to `$3` per partition the range spans).
    pub delete: &'static str,
}

/// Rows of another table that belong to each row of a data set, archived with it (and removed with it by a
/// cascading foreign key). `sql`: `$1` the rows' keys (`int8[]`) → `(key int8, rows text)`, `rows` being a JSON
/// array.
#[derive(Debug, Clone, Copy)]
pub struct Attachment {
    pub field: &'static str,
    pub sql: &'static str,
}

/// The usual statements for a table whose rows age by one timestamptz column: the column needs an index that
/// range scans can use (a BRIN index for an append-only table, a btree otherwise).
/// `data_set_statements!("herald_runs", "finished_at", "id")`: table, time column, and the column
/// whose value is the row's key (`NULL` if the data set has no attachments).
#[rustfmt::skip]
macro_rules! data_set_statements {
    ($table:literal, $time:literal, $key:literal) => {
        $crate::dataset::Statements {
            oldest: concat!("SELECT min(", $time, ") FROM ", $table, " WHERE ", $time, " < $1"),
            probe: concat!(
                "SELECT count(*) FROM (SELECT 1 FROM ", $table, " WHERE ", $time, " >= $1 AND ", $time,
                " < $2 LIMIT $3) s"
            ),
            count: concat!("SELECT count(*) FROM ", $table, " WHERE ", $time, " >= $1 AND ", $time, " < $2"),
            rows: concat!(
                "SELECT t.", $time, " AS at, ", $key, "::int8 AS key, to_jsonb(t)::text AS line FROM ", $table,
                " t WHERE t.", $time, " >= $1 AND t.", $time, " < $2 ORDER BY t.", $time
            ),
            // ctid: the rows the inner select found, whatever their key (some tables have none). The range is
            // repeated outside: in a partitioned table a ctid names a row in each partition, and only rows of
            // the range (all archived) may go.
            delete: concat!(
                "DELETE FROM ", $table, " WHERE ", $time, " >= $1 AND ", $time, " < $2 AND ctid = ANY(ARRAY(",
                "SELECT ctid FROM ", $table, " WHERE ", $time, " >= $1 AND ", $time, " < $2 LIMIT $3))"
            ),
        }
    };
}
pub(crate) use data_set_statements;

/// One row of a data set, as archived.
#[derive(Debug, Clone)]
pub struct ArchivedRow {
    pub at: DateTime<Utc>,
    /// One JSON object, attachments included.
    pub line: String,
}

/// A slice of a time range that [`DataSet::slice`] found small enough to read or delete in one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Rows in it when probed (more than the cap only for a slice of one microsecond).
    pub rows: i64,
}

/// What [`DataSet::remove_range`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub partitions_dropped: usize,
    pub rows_deleted: u64,
}

/// How much of the time a walk over a range may work: after a step that took `t` it rests
/// `t * (1 - duty) / duty`, so it leaves the rest of the database's (and the machine's) time to the queue.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    duty: f64,
}

impl Pace {
    /// `duty` in (0, 1]: 1 never rests, 0.25 works a quarter of the time.
    pub fn new(duty: f64) -> Self {
        Self {
            duty: if duty.is_finite() {
                duty.clamp(0.01, 1.0)
            } else {
                1.0
            },
        }
    }

    /// Rests after a step that started at `started`.
    pub async fn rest_after(&self, started: std::time::Instant) {
        if self.duty < 1.0 {
            let rest = started.elapsed().mul_f64((1.0 - self.duty) / self.duty);
            tokio::time::sleep(rest).await;
        }
    }
}

/// Slices between two runs of [`DataSet::prepare`] while walking a long range.
pub const PREPARE_EVERY: u32 = 20;
/// The widest slice tried: a day (the archive's unit).
const WIDEST: chrono::TimeDelta = chrono::TimeDelta::days(1);
/// The narrowest: timestamps have microsecond precision, so a narrower slice cannot split rows further.
const NARROWEST: chrono::TimeDelta = chrono::TimeDelta::microseconds(1);

impl DataSet {
    /// Runs [`DataSet::prepare`], giving up at once if it would wait for a lock (autovacuum holds the same one
    /// while it works on the table, and summarizes the ranges itself).
    /// A partitioned data set's complete partitions are also analyzed once (see
    /// [`Partitioning::analyze_complete`]).
    pub async fn prepare(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        if let Some(partitioning) = &self.partitioning {
            partitioning.analyze_complete(pool).await?;
        }
        let Some(sql) = self.prepare else {
            return Ok(());
        };
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '100ms'")
            .execute(&mut *tx)
            .await?;
        match sqlx::query(sql).execute(&mut *tx).await {
            Ok(_) => tx.commit().await,
            // 55P03: lock_not_available.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// The oldest row time before `cutoff`.
    pub async fn oldest(
        &self,
        pool: &PgPool,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar(self.sql.oldest)
            .persistent(false)
            .bind(cutoff)
            .fetch_one(pool)
            .await
    }

    /// How many rows lie in `[from, to)`, counting at most `limit`.
    pub async fn probe(
        &self,
        pool: &PgPool,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: i64,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(self.sql.probe)
            .persistent(false)
            .bind(from)
            .bind(to)
            .bind(limit)
            .fetch_one(pool)
            .await
    }

    /// The exact number of rows in `[from, to)`.
    pub async fn count(
        &self,
        pool: &PgPool,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(self.sql.count)
            .persistent(false)
            .bind(from)
            .bind(to)
            .fetch_one(pool)
            .await
    }

    /// The next slice of `[from, end)` holding at most `cap` rows (unless one microsecond holds more: rows that
    /// one transaction wrote at the same `now()`, as many as its batch). `width` is the first width tried; it is
    /// updated for the next call (narrowed when a slice was too full, widened when it was sparse), so walking a
    /// range costs about one probe per slice.
    pub async fn slice(
        &self,
        pool: &PgPool,
        from: DateTime<Utc>,
        end: DateTime<Utc>,
        cap: i64,
        width: &mut chrono::TimeDelta,
    ) -> Result<Slice, sqlx::Error> {
        let cap = cap.max(1);
        loop {
            let to = from.checked_add_signed(*width).map_or(end, |t| t.min(end));
            let rows = self.probe(pool, from, to, cap + 1).await?;
            if rows <= cap || *width <= NARROWEST {
                if rows < cap / 4 && to < end {
                    *width = (*width * 2).min(WIDEST);
                }
                return Ok(Slice { from, to, rows });
            }
            *width = (*width / 4).max(NARROWEST);
        }
    }

    /// Every row of a slice, with its attachments, oldest first.
    pub async fn rows(
        &self,
        pool: &PgPool,
        slice: &Slice,
    ) -> Result<Vec<ArchivedRow>, sqlx::Error> {
        let fetched = sqlx::query(self.sql.rows)
            .persistent(false)
            .bind(slice.from)
            .bind(slice.to)
            .fetch_all(pool)
            .await?;
        let mut keys = Vec::with_capacity(fetched.len());
        let mut rows = Vec::with_capacity(fetched.len());
        for row in &fetched {
            keys.push(row.try_get::<Option<i64>, _>("key")?);
            rows.push(ArchivedRow {
                at: row.try_get("at")?,
                line: row.try_get("line")?,
            });
        }
        if self.attachments.is_empty() || rows.is_empty() {
            return Ok(rows);
        }
        let keyed: Vec<i64> = keys.iter().flatten().copied().collect();
        let mut objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
            .iter()
            .map(|r| serde_json::from_str(&r.line).map_err(|e| sqlx::Error::Decode(Box::new(e))))
            .collect::<Result<_, _>>()?;
        for attachment in self.attachments {
            let found: std::collections::HashMap<i64, String> = sqlx::query(attachment.sql)
                .bind(&keyed)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((row.try_get("key")?, row.try_get("rows")?)))
                .collect::<Result<_, sqlx::Error>>()?;
            for (object, key) in objects.iter_mut().zip(&keys) {
                let value = match key.and_then(|k| found.get(&k)) {
                    Some(text) => {
                        serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?
                    }
                    None => serde_json::Value::Array(Vec::new()),
                };
                object.insert(attachment.field.to_string(), value);
            }
        }
        for (row, object) in rows.iter_mut().zip(objects) {
            row.line = serde_json::Value::Object(object).to_string();
        }
        Ok(rows)
    }

    /// Removes every row of `[from, to)`, every one of them archived: drops the partitions lying inside the range
    /// (a partitioned data set), then deletes the rest slice by slice (see [`DataSet::delete_range`]).
    pub async fn remove_range(
        &self,
        pool: &PgPool,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cap: i64,
        pace: Pace,
    ) -> Result<Removed, sqlx::Error> {
        let partitions_dropped = match &self.partitioning {
            Some(partitioning) => partitioning.drop_within(pool, from, to).await?.len(),
            None => 0,
        };
        let rows_deleted = self.delete_range(pool, from, to, cap, pace).await?;
        Ok(Removed {
            partitions_dropped,
            rows_deleted,
        })
    }

    /// The time before which rows are archived and removed for a cutoff: for a partitioned data set, the start of
    /// the partition holding the cutoff, so that only whole partitions are archived and then dropped.
    pub async fn effective_cutoff(
        &self,
        pool: &PgPool,
        cutoff: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, sqlx::Error> {
        match &self.partitioning {
            Some(partitioning) => partitioning.boundary_at_or_before(pool, cutoff).await,
            None => Ok(cutoff),
        }
    }

    /// Deletes every row of `[from, to)`, slice by slice, each slice in its own short transaction, at `pace`;
    /// returns how many.
    pub async fn delete_range(
        &self,
        pool: &PgPool,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cap: i64,
        pace: Pace,
    ) -> Result<u64, sqlx::Error> {
        let cap = cap.max(1);
        let mut width = WIDEST;
        let mut cursor = from;
        let mut deleted = 0;
        let mut slices = 0u32;
        while cursor < to {
            let started = std::time::Instant::now();
            if slices.is_multiple_of(PREPARE_EVERY) {
                self.prepare(pool).await?;
            }
            slices += 1;
            let slice = self.slice(pool, cursor, to, cap, &mut width).await?;
            // A one-microsecond slice may hold more than the cap: delete it in several statements.
            loop {
                let done = sqlx::query(self.sql.delete)
                    .persistent(false)
                    .bind(slice.from)
                    .bind(slice.to)
                    .bind(cap)
                    .execute(pool)
                    .await?
                    .rows_affected();
                deleted += done;
                if done < cap as u64 {
                    break;
                }
            }
            cursor = slice.to;
            pace.rest_after(started).await;
        }
        Ok(deleted)
    }
}
