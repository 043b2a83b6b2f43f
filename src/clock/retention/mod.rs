//! Retention: each data set's old rows archived, verified, then removed, in bounded steps that never stall the
//! queue.
//!
//! The data sets are described by the modules that own their tables ([`crate::dataset`]): the queue's history,
//! dead letters and idempotency keys, the workflows' runs (with their steps, waits and deliveries) and events,
//! the channels' callback events and circuit states, the bridge's dead letters. Each has a maximum age
//! (`[clock.retention]`); a pass at time `now` (the tick of the `herald.retention` job, never the wall clock, so a
//! retried job does the same work) handles every row older than `now - age`.
//!
//! A pass, per data set (one clock at a time: a Postgres advisory lock; another clock skips the data set):
//!
//! 1. Find the oldest row older than the cutoff; its UTC day is the day to work on (oldest first, at most
//!    `days_per_run` days, no new part after `max_run`).
//! 2. Finish what a crashed pass left: for each manifest of that day whose range still has rows, verify the
//!    object again and delete the range. (Rows in such a range can only be fewer than the manifest's, never
//!    more: the rows of a past range do not change. If there are more, the pass stops with an error and
//!    deletes nothing.)
//! 3. Archive the rest of the day up to the cutoff, part by part: read it in slices of about `batch_size` rows
//!    (short statements, no long snapshot), write them to one gzip JSON Lines object (streamed, at most
//!    `rows_per_object` rows), read the object back and check its SHA-256 and row count, check that the range
//!    still holds exactly those rows, **then** write the manifest, **then** delete the range in slices.
//!    Data sets that are only deleted (idempotency keys, circuit states) skip the archive.
//!
//! A partitioned data set (the job history, see [`crate::partitions`]) differs in two ways: its cutoff is rounded
//! down to the start of the partition holding it, and a day's archived span is removed once, after its parts, by
//! dropping the partitions inside it (and deleting in slices only rows of the default partition).
//!
//! Crash safety: a crash before the manifest is written leaves an object without a manifest, which the next
//! pass writes again under the same name (nothing is removed without a manifest); a crash after it leaves a
//! manifest whose range the next pass removes without writing anything again (step 2). So no row is lost, and
//! none is archived twice: each part's range starts where the previous one ended.

mod archive;
mod restore;
mod settings;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgPool};

pub use archive::{ArchiveTarget, Manifest};
pub use restore::{Restored, restore};
pub use settings::{ArchiveSettings, RetentionSettings, S3Settings};

use super::{ClockError, metrics};
use crate::dataset::{DataSet, Disposal, Pace, Removed};
use crate::queue::{HandlerRegistry, Job, JobContext, JobError};

/// Every data set retention knows, in the order a pass handles them.
pub fn data_sets() -> Vec<DataSet> {
    vec![
        crate::queue::retention::JOB_HISTORY,
        crate::queue::retention::DEAD_LETTERS,
        crate::queue::retention::IDEMPOTENCY_KEYS,
        crate::workflow::retention::RUNS,
        crate::workflow::retention::EVENTS,
        crate::channels::retention::CALLBACK_EVENTS,
        crate::channels::retention::PROVIDER_CIRCUITS,
        crate::feed::retention::FEED_ITEMS,
        crate::bridge::retention::BRIDGE_DEAD_LETTERS,
    ]
}

/// The data set named `name`.
pub fn data_set(name: &str) -> Result<DataSet, ClockError> {
    data_sets()
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = data_sets().iter().map(|d| d.name).collect();
            ClockError::Invalid(format!(
                "no data set named {name:?} (one of: {})",
                names.join(", ")
            ))
        })
}

/// What one pass did.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionReport {
    pub now: DateTime<Utc>,
    pub data_sets: Vec<DataSetReport>,
    /// Some data set has old rows left (the pass reached `days_per_run` or `max_run`).
    pub more: bool,
}

impl RetentionReport {
    /// The data sets that failed, with their errors.
    pub fn errors(&self) -> Vec<String> {
        self.data_sets
            .iter()
            .filter_map(|d| d.error.as_ref().map(|e| format!("{}: {e}", d.name)))
            .collect()
    }

    pub fn data_set(&self, name: &str) -> Option<&DataSetReport> {
        self.data_sets.iter().find(|d| d.name == name)
    }
}

/// What one pass did to one data set.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataSetReport {
    pub name: String,
    /// Rows older than this were in scope (none when the data set is kept forever).
    pub cutoff: Option<DateTime<Utc>>,
    /// The days worked on.
    pub days: Vec<NaiveDate>,
    pub archived_rows: u64,
    /// The archive objects' size (compressed).
    pub archived_bytes: u64,
    pub objects_written: u32,
    pub deleted_rows: u64,
    /// Partitions dropped whole (their rows archived): a partitioned data set's rows leave this way.
    pub partitions_dropped: u32,
    /// Parts a crashed pass had archived, whose rows this pass removed.
    pub resumed_parts: u32,
    /// Old rows are left for the next pass.
    pub more: bool,
    /// Why nothing was done (kept forever, or another clock holds it).
    pub skipped: Option<String>,
    pub error: Option<String>,
}

impl DataSetReport {
    fn count(&mut self, removed: Removed) {
        self.deleted_rows += removed.rows_deleted;
        self.partitions_dropped += u32::try_from(removed.partitions_dropped).unwrap_or(u32::MAX);
    }
}

/// The retention pass, with what it needs.
pub struct Retention {
    pool: PgPool,
    settings: RetentionSettings,
    data_sets: Vec<DataSet>,
}

impl Retention {
    pub fn new(pool: PgPool, settings: &RetentionSettings) -> Self {
        Self {
            pool,
            settings: settings.clone(),
            data_sets: data_sets(),
        }
    }

    /// One pass as of `now` (see the module's documentation).
    pub async fn run(&self, now: DateTime<Utc>) -> Result<RetentionReport, ClockError> {
        let target = ArchiveTarget::from_settings(&self.settings.archive)?;
        self.run_on(&target, now).await
    }

    /// One pass as of `now`, archiving to `target`.
    pub async fn run_on(
        &self,
        target: &ArchiveTarget,
        now: DateTime<Utc>,
    ) -> Result<RetentionReport, ClockError> {
        let deadline = Instant::now() + self.settings.max_run;
        let mut report = RetentionReport {
            now,
            data_sets: Vec::new(),
            more: false,
        };
        for data_set in &self.data_sets {
            let mut entry = DataSetReport {
                name: data_set.name.to_string(),
                ..DataSetReport::default()
            };
            match self.settings.max_age(data_set.name) {
                None => entry.skipped = Some("kept forever (max age 0)".to_string()),
                Some(age) => {
                    let cutoff = now - TimeDelta::from_std(age).unwrap_or(TimeDelta::MAX);
                    entry.cutoff = Some(cutoff);
                    if let Err(error) = self
                        .locked(target, data_set, cutoff, deadline, &mut entry)
                        .await
                    {
                        tracing::warn!(data_set = data_set.name, %error, "retention failed");
                        entry.error = Some(error.to_string());
                    }
                }
            }
            report.more |= entry.more;
            report.data_sets.push(entry);
        }
        Ok(report)
    }

    /// Runs the data set under its advisory lock, on a connection of its own (closing it releases the lock,
    /// and so does a crash).
    async fn locked(
        &self,
        target: &ArchiveTarget,
        data_set: &DataSet,
        cutoff: DateTime<Utc>,
        deadline: Instant,
        report: &mut DataSetReport,
    ) -> Result<(), ClockError> {
        let mut lock = sqlx::PgConnection::connect_with(&self.pool.connect_options()).await?;
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtext('herald.retention'), hashtext($1))",
        )
        .bind(data_set.name)
        .fetch_one(&mut lock)
        .await?;
        if !locked {
            report.skipped = Some("another clock is working on it".to_string());
            lock.close().await?;
            return Ok(());
        }
        let result = self
            .data_set_pass(target, data_set, cutoff, deadline, report)
            .await;
        lock.close().await?;
        result
    }

    async fn data_set_pass(
        &self,
        target: &ArchiveTarget,
        data_set: &DataSet,
        cutoff: DateTime<Utc>,
        deadline: Instant,
        report: &mut DataSetReport,
    ) -> Result<(), ClockError> {
        // A partitioned data set is archived partition by partition: the partition holding the cutoff waits until
        // the cutoff has passed its end.
        let cutoff = data_set.effective_cutoff(&self.pool, cutoff).await?;
        report.cutoff = Some(cutoff);
        while let Some(oldest) = self.next_day(data_set, report.days.last(), cutoff).await? {
            // Some progress in every pass, however short `max_run`.
            if report.days.len() >= self.settings.days_per_run
                || (!report.days.is_empty() && Instant::now() >= deadline)
            {
                report.more = true;
                return Ok(());
            }
            let day = oldest.date_naive();
            if report.days.last() == Some(&day) {
                // A day is left only when it is done: rows still there lie outside its archived parts.
                return Err(ClockError::Archive(format!(
                    "{}: rows older than the cutoff remain on {day} outside its archived parts (was a manifest \
                     removed by hand?)",
                    data_set.name
                )));
            }
            report.days.push(day);
            let (start, end) = day_range(day);
            let end = end.min(cutoff);
            let disposal = match data_set.disposal {
                Disposal::Archive if !self.settings.archived(data_set.name) => Disposal::Delete,
                other => other,
            };
            match disposal {
                Disposal::Delete => {
                    let removed = self.remove(data_set, start, end).await?;
                    report.count(removed);
                }
                Disposal::Archive => {
                    if !self
                        .archive_day(target, data_set, day, end, deadline, report)
                        .await?
                    {
                        report.more = true;
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes `[from, to)`, every row of which is archived (or needs no archive).
    async fn remove(
        &self,
        data_set: &DataSet,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Removed, ClockError> {
        Ok(data_set
            .remove_range(&self.pool, from, to, self.batch(), self.pace())
            .await?)
    }

    /// The oldest day with rows older than the cutoff, or a time in it. After `done` (the day just worked on),
    /// the days that follow are probed one by one (each probe reads at most one row through the time index);
    /// the first look, and a long run of empty days, ask for the oldest row instead, which reads every old row
    /// the index cannot rule out.
    async fn next_day(
        &self,
        data_set: &DataSet,
        done: Option<&NaiveDate>,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, ClockError> {
        data_set.prepare(&self.pool).await?;
        if let Some(done) = done {
            let mut day = *done;
            for _ in 0..EMPTY_DAYS_PROBED {
                day = day.succ_opt().unwrap_or(day);
                let (start, end) = day_range(day);
                if start >= cutoff {
                    return Ok(None);
                }
                if data_set
                    .probe(&self.pool, start, end.min(cutoff), 1)
                    .await?
                    > 0
                {
                    return Ok(Some(start));
                }
            }
        }
        Ok(data_set.oldest(&self.pool, cutoff).await?)
    }

    fn pace(&self) -> Pace {
        Pace::new(self.settings.duty_cycle)
    }

    fn batch(&self) -> i64 {
        i64::try_from(self.settings.batch_size).unwrap_or(i64::MAX)
    }

    /// Archives and removes one day's rows before `end` (the day's end, or the cutoff inside it). False when
    /// the deadline stopped it first.
    ///
    /// Each part's range is removed as soon as it is archived, except in a partitioned data set: there the day's
    /// archived span is removed once, after its parts, so that whole partitions are dropped instead of their
    /// rows deleted part by part.
    async fn archive_day(
        &self,
        target: &ArchiveTarget,
        data_set: &DataSet,
        day: NaiveDate,
        end: DateTime<Utc>,
        deadline: Instant,
        report: &mut DataSetReport,
    ) -> Result<bool, ClockError> {
        let manifests = target.day_manifests(data_set.name, day).await?;
        // 2. What a crashed pass archived but did not remove. A day's parts are contiguous, so the span from
        //    the first to the last of them that still has rows is archived throughout.
        let mut left_span: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        for manifest in &manifests {
            let left = data_set
                .count(&self.pool, manifest.from, manifest.to)
                .await?;
            if left == 0 {
                continue;
            }
            if u64::try_from(left).unwrap_or(u64::MAX) > manifest.rows {
                return Err(ClockError::Archive(format!(
                    "{}: {left} rows in [{}, {}), archived as {} rows in {}: rows were added to an archived \
                     range; nothing was removed",
                    data_set.name, manifest.from, manifest.to, manifest.rows, manifest.object
                )));
            }
            target.verify_manifest(manifest).await?;
            report.resumed_parts += 1;
            let from = match left_span {
                Some((from, _)) => from,
                None => manifest.from,
            };
            left_span = Some((from, manifest.to));
        }
        let deferred = data_set.partitioning.is_some();
        let mut unremoved_from = None;
        if let Some((from, to)) = left_span {
            if deferred {
                unremoved_from = Some(from);
            } else {
                let removed = self.remove(data_set, from, to).await?;
                report.count(removed);
            }
        }
        // 3. The rest of the day, part by part.
        let mut part = manifests.last().map_or(0, |m| m.part + 1);
        let mut start = manifests
            .iter()
            .map(|m| m.to)
            .max()
            .unwrap_or_else(|| day_range(day).0);
        let unremoved_from = unremoved_from.unwrap_or(start);
        let mut finished = true;
        let mut first = true;
        while start < end {
            if !first && Instant::now() >= deadline {
                finished = false;
                break;
            }
            first = false;
            let Some(manifest) = self
                .archive_part(target, data_set, day, part, start, end)
                .await?
            else {
                break;
            };
            report.archived_rows += manifest.rows;
            report.archived_bytes += manifest.bytes;
            report.objects_written += 1;
            failpoint("after_manifest");
            if !deferred {
                let removed = self.remove(data_set, manifest.from, manifest.to).await?;
                report.count(removed);
            }
            start = manifest.to;
            part += 1;
        }
        if deferred {
            // A finished day holds no row between its last part and `end` (the last look found none), so the span
            // reaches `end` and covers the day's partitions whole.
            let to = if finished { end } else { start };
            if to > unremoved_from {
                let removed = self.remove(data_set, unremoved_from, to).await?;
                report.count(removed);
            }
        }
        Ok(finished)
    }

    /// Writes, verifies and records one part: the rows of `[start, to)` for the largest `to <= end` that keeps
    /// it within `rows_per_object`. `None` when `[start, end)` has no rows.
    async fn archive_part(
        &self,
        target: &ArchiveTarget,
        data_set: &DataSet,
        day: NaiveDate,
        part: u32,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Option<Manifest>, ClockError> {
        let cap = self.batch();
        let mut width = TimeDelta::hours(1);
        let mut slices = 0u32;
        let mut cursor = start;
        let mut writer = None;
        let mut rows = 0u64;
        let mut times: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        let written = async {
            while cursor < end && rows < self.settings.rows_per_object {
                let started = Instant::now();
                if slices.is_multiple_of(crate::dataset::PREPARE_EVERY) {
                    data_set.prepare(&self.pool).await?;
                }
                slices += 1;
                // The last slice of a part is cut to what the part has room for.
                let room = i64::try_from(self.settings.rows_per_object - rows).unwrap_or(i64::MAX);
                let slice = data_set
                    .slice(&self.pool, cursor, end, cap.min(room), &mut width)
                    .await?;
                if slice.rows > 0 {
                    let fetched = data_set.rows(&self.pool, &slice).await?;
                    if writer.is_none() && !fetched.is_empty() {
                        writer = Some(target.writer(data_set.name, day, part).await?);
                    }
                    if let Some(writer) = writer.as_mut() {
                        for row in &fetched {
                            writer.write_line(&row.line).await?;
                            times =
                                Some(times.map_or((row.at, row.at), |(first, _)| (first, row.at)));
                            rows += 1;
                        }
                    }
                }
                cursor = slice.to;
                self.pace().rest_after(started).await;
            }
            Ok::<_, ClockError>(())
        }
        .await;
        if let Err(error) = written {
            if let Some(writer) = writer {
                writer.abort().await;
            }
            return Err(error);
        }
        let (Some(writer), Some((first_at, last_at))) = (writer, times) else {
            return Ok(None);
        };
        let object = writer.object().to_string();
        let started = Instant::now();
        let written = writer.finish().await?;
        target.sync(&object).await?;
        failpoint("after_upload");
        target.verify(&object, &written).await?;
        // The rows are removed by range: the range must hold exactly what the object holds.
        let now_in_range = data_set.count(&self.pool, start, cursor).await?;
        if u64::try_from(now_in_range).ok() != Some(written.rows) {
            return Err(ClockError::Archive(format!(
                "{}: [{start}, {cursor}) held {} rows when archived and {now_in_range} now; the part is archived \
                 again next pass",
                data_set.name, written.rows
            )));
        }
        let manifest = Manifest {
            dataset: data_set.name.to_string(),
            day,
            part,
            object,
            rows: written.rows,
            from: start,
            to: cursor,
            first_at,
            last_at,
            bytes: written.bytes,
            sha256: written.sha256,
            schema_version: data_set.schema_version,
            format: archive::FORMAT.to_string(),
            created_at: Utc::now(),
        };
        target.put_manifest(&manifest).await?;
        // Reading the object back is work too.
        self.pace().rest_after(started).await;
        tracing::info!(data_set = data_set.name, %day, part, rows = manifest.rows, object = %manifest.object,
            "archived");
        Ok(Some(manifest))
    }
}

/// One pass as of `now` with `settings` (for the CLI, the bench and tests).
pub async fn run(
    pool: &PgPool,
    settings: &RetentionSettings,
    now: DateTime<Utc>,
) -> Result<RetentionReport, ClockError> {
    Retention::new(pool.clone(), settings).run(now).await
}

/// `[start, end)` of a UTC day.
fn day_range(day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    (start, start + TimeDelta::days(1))
}

/// `HERALD_FAILPOINT=retention.<name>` aborts the process at that point: how the crash tests kill a pass
/// between two steps (`after_upload`: the object is written, its manifest is not; `after_manifest`: the
/// manifest is written, no row is removed yet).
fn failpoint(name: &str) {
    if std::env::var("HERALD_FAILPOINT").is_ok_and(|v| v.strip_prefix("retention.") == Some(name)) {
        tracing::error!(failpoint = name, "HERALD_FAILPOINT: aborting");
        std::process::abort();
    }
}

/// The `herald.retention` job: one pass as of `tick`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetentionJob {
    pub tick: DateTime<Utc>,
}

impl Job for RetentionJob {
    const KIND: &'static str = super::RETENTION_KIND;
}

/// Days after the last one worked on that are probed one by one before asking for the oldest row.
const EMPTY_DAYS_PROBED: usize = 31;

/// How soon a pass that stopped at `max_run` comes back for the rest.
const COME_BACK: Duration = Duration::from_secs(1);

/// Registers the `herald.retention` handler. A pass that leaves old rows (it reached `days_per_run` or
/// `max_run`) is snoozed, not retried: it comes back at once for the rest without spending an attempt; a data
/// set that failed makes the job retry (after the others were done).
pub fn register(registry: &mut HandlerRegistry, retention: Arc<Retention>) {
    registry.register(move |job: RetentionJob, _ctx: JobContext| {
        let retention = Arc::clone(&retention);
        async move {
            let report = retention
                .run(job.tick)
                .await
                .map_err(|e| JobError::retry(e.to_string()))?;
            for entry in &report.data_sets {
                let name = [entry.name.as_str()];
                metrics::ARCHIVED_ROWS
                    .with_label_values(&name)
                    .inc_by(entry.archived_rows);
                metrics::ARCHIVED_BYTES
                    .with_label_values(&name)
                    .inc_by(entry.archived_bytes);
                metrics::REMOVED_ROWS
                    .with_label_values(&name)
                    .inc_by(entry.deleted_rows);
                if entry.archived_rows + entry.deleted_rows > 0 {
                    tracing::info!(data_set = %entry.name, archived = entry.archived_rows,
                        deleted = entry.deleted_rows, objects = entry.objects_written, "retention");
                }
            }
            let errors = report.errors();
            if !errors.is_empty() {
                return Err(JobError::retry(errors.join("; ")));
            }
            metrics::succeeded("retention");
            if report.more {
                return Err(JobError::Snooze(
                    COME_BACK,
                    "old rows left after days_per_run or max_run".to_string(),
                ));
            }
            Ok(())
        }
    });
}
