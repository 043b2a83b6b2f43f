//! Daily rollups: per day, counts and latency percentiles of jobs, runs, steps and deliveries, kept in the clock's
//! own tables long after retention removed the raw rows (`clock.rollups.keep_days`, default 5 years).
//!
//! The contract:
//! 1. A day is a calendar day in `clock.rollups.timezone`: from its local midnight to the next one (23 or 25 hours
//!    around a DST change; a midnight that does not exist starts the day at the first instant after the gap).
//! 2. Each raw row belongs to the day of one of its instants: jobs by `finished_at`, runs by `created_at`
//!    (started) and `finished_at` (completed, failed, cancelled), steps by `finished_at`, deliveries by
//!    `created_at` (counted by the status they have when the day is computed).
//! 3. The counting is done by each table's owner (`queue::daily`, `workflow::daily`, `channels::daily`), one
//!    statement each, outside any transaction of ours: a day of a busy fleet takes a while to read, and a
//!    transaction holding an xid that long would stall vacuum on the queue's hot table.
//! 4. Then one short transaction, serialized per day by an advisory lock, deletes the day's rows and inserts the
//!    fresh ones. So computing a day again is harmless, and from the same raw rows gives the same rows.
//! 5. The nightly job (`herald.rollup`, payload `{"tick": …}`) computes the day before its tick's local date,
//!    and removes rollups older than `keep_days` before that day. The day comes from the tick, never from the
//!    clock, so a retried job does the same work.
//!
//! `herald rollup --day D` / `--from D --to D` recompute days while their raw rows exist; `herald rollup show` and
//! `GET /v1/analytics/daily` read them.

use std::str::FromStr;
use std::sync::Arc;

use chrono::offset::LocalResult;
use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use super::ClockError;
use crate::channels::daily::{self as channel_days, DeliveryDay};
use crate::queue::daily::{self as queue_days, JobDay};
use crate::queue::{HandlerRegistry, Job, JobError};
use crate::setting::InvalidSetting;
use crate::workflow::daily::{self as workflow_days, RunDay, StepDay};

/// The most days one recompute or one read covers (a leap year).
pub const MAX_DAYS: i64 = 366;
/// The most groups (queue × kind, workflow × node kind, …) one day may have in one table. A day past it is refused
/// rather than stored cut: kinds or workflows that many are a naming bug, not traffic.
const MAX_GROUPS: usize = 100_000;
/// The most rows one read returns per table (`truncated` says when it cut).
pub const MAX_ROWS: usize = 50_000;
/// The longest filter value accepted (workflow, channel and provider names are far shorter).
pub const MAX_FILTER_CHARS: usize = 200;
/// First key of the advisory lock that serializes computing one day (the second is the day number).
const LOCK_CLASS: i32 = 0x6872_6c70; // "hrlp"

/// `[clock.rollups]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupSettings {
    /// When the built-in `herald.rollup` schedule runs, in `timezone`.
    #[serde(default = "default_cron")]
    pub cron: String,
    /// The time zone whose midnight separates days (IANA name).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// How many days of rollups the nightly job keeps (older days are removed).
    #[serde(default = "default_keep_days")]
    pub keep_days: u32,
}

fn default_cron() -> String {
    "15 0 * * *".to_string()
}

fn default_timezone() -> String {
    "UTC".to_string()
}

fn default_keep_days() -> u32 {
    5 * 365 + 1
}

impl Default for RollupSettings {
    fn default() -> Self {
        Self {
            cron: default_cron(),
            timezone: default_timezone(),
            keep_days: default_keep_days(),
        }
    }
}

impl RollupSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.zone()
            .map_err(|e| InvalidSetting::new("clock.rollups.timezone", e.to_string()))?;
        // Beyond a century a typo is likelier than intent, and the date arithmetic stays far from its limits.
        if !(1..=36_500).contains(&self.keep_days) {
            return Err(InvalidSetting::new(
                "clock.rollups.keep_days",
                "must be between 1 and 36500",
            ));
        }
        Ok(())
    }

    /// The time zone that separates days.
    pub fn zone(&self) -> Result<Tz, ClockError> {
        Tz::from_str(self.timezone.trim()).map_err(|_| {
            ClockError::Invalid(format!(
                "unknown time zone {:?} (use an IANA name such as Europe/Paris)",
                self.timezone
            ))
        })
    }
}

/// The nightly job: roll up the day before `tick`'s local date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollupJob {
    pub tick: DateTime<Utc>,
}

impl Job for RollupJob {
    const KIND: &'static str = super::ROLLUP_KIND;
}

impl RollupJob {
    /// The day this tick rolls up: the local day before the tick's.
    pub fn day(&self, zone: Tz) -> Option<NaiveDate> {
        self.tick.with_timezone(&zone).date_naive().pred_opt()
    }
}

/// The first instant of `day` in `zone`: its local midnight, or the end of the gap if the clocks skipped it.
pub fn start_of_day(zone: Tz, day: NaiveDate) -> DateTime<Utc> {
    let midnight = day.and_time(NaiveTime::MIN);
    match zone.from_local_datetime(&midnight) {
        LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => at.with_timezone(&Utc),
        LocalResult::None => {
            // Gaps end on a whole minute and last at most a few hours.
            let mut probe = midnight;
            for _ in 0..(24 * 60) {
                probe += chrono::Duration::minutes(1);
                if let Some(at) = zone.from_local_datetime(&probe).earliest() {
                    return at.with_timezone(&Utc);
                }
            }
            midnight.and_utc()
        }
    }
}

/// `[start, end)` of `day` in `zone`.
pub fn day_bounds(zone: Tz, day: NaiveDate) -> Result<(DateTime<Utc>, DateTime<Utc>), ClockError> {
    let next = day
        .succ_opt()
        .ok_or_else(|| ClockError::Invalid(format!("{day} has no next day")))?;
    Ok((start_of_day(zone, day), start_of_day(zone, next)))
}

/// The days `from..=to`, refused if reversed or longer than [`MAX_DAYS`].
pub fn days_between(from: NaiveDate, to: NaiveDate) -> Result<Vec<NaiveDate>, ClockError> {
    check_range(from, to)?;
    Ok(from.iter_days().take_while(|d| *d <= to).collect())
}

fn check_range(from: NaiveDate, to: NaiveDate) -> Result<(), ClockError> {
    if to < from {
        return Err(ClockError::Invalid(format!(
            "the range ends ({to}) before it starts ({from})"
        )));
    }
    if (to - from).num_days() + 1 > MAX_DAYS {
        return Err(ClockError::Invalid(format!(
            "the range {from}..{to} covers more than {MAX_DAYS} days"
        )));
    }
    Ok(())
}

/// What computing one day wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rebuilt {
    pub day: NaiveDate,
    pub timezone: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Rows written per table.
    pub jobs: usize,
    pub runs: usize,
    pub steps: usize,
    pub deliveries: usize,
}

/// A row of a rollup table as written: the owner's aggregate with its day.
#[derive(Serialize)]
struct Dated<'a, T> {
    day: NaiveDate,
    #[serde(flatten)]
    row: &'a T,
}

/// The day's aggregates, read from their owners.
struct DayAggregates {
    jobs: Vec<JobDay>,
    runs: Vec<RunDay>,
    steps: Vec<StepDay>,
    deliveries: Vec<DeliveryDay>,
}

/// Computes `day` from the raw rows and replaces its rollup rows (see the module docs).
pub async fn rebuild(
    pool: &PgPool,
    settings: &RollupSettings,
    day: NaiveDate,
) -> Result<Rebuilt, ClockError> {
    let zone = settings.zone()?;
    let (from, to) = day_bounds(zone, day)?;
    let aggregates = {
        let mut conn = pool.acquire().await?;
        read_day(&mut conn, day, from, to).await?
    };
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(day_number(day))
        .execute(&mut *tx)
        .await?;
    for table in TABLES {
        sqlx::query(&format!("DELETE FROM {table} WHERE day = $1"))
            .bind(day)
            .execute(&mut *tx)
            .await?;
    }
    insert(&mut tx, "herald_rollup_jobs", day, &aggregates.jobs).await?;
    insert(&mut tx, "herald_rollup_runs", day, &aggregates.runs).await?;
    insert(&mut tx, "herald_rollup_steps", day, &aggregates.steps).await?;
    insert(
        &mut tx,
        "herald_rollup_deliveries",
        day,
        &aggregates.deliveries,
    )
    .await?;
    sqlx::query(
        "INSERT INTO herald_rollup_days (day, timezone, starts_at, ends_at, computed_at) \
         VALUES ($1, $2, $3, $4, now()) \
         ON CONFLICT (day) DO UPDATE SET timezone = EXCLUDED.timezone, starts_at = EXCLUDED.starts_at, \
         ends_at = EXCLUDED.ends_at, computed_at = EXCLUDED.computed_at",
    )
    .bind(day)
    .bind(zone.name())
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Rebuilt {
        day,
        timezone: zone.name().to_string(),
        starts_at: from,
        ends_at: to,
        jobs: aggregates.jobs.len(),
        runs: aggregates.runs.len(),
        steps: aggregates.steps.len(),
        deliveries: aggregates.deliveries.len(),
    })
}

/// Recomputes every day of `from..=to` (at most [`MAX_DAYS`]), oldest first.
pub async fn rebuild_range(
    pool: &PgPool,
    settings: &RollupSettings,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<Rebuilt>, ClockError> {
    let mut done = Vec::new();
    for day in days_between(from, to)? {
        done.push(rebuild(pool, settings, day).await?);
    }
    Ok(done)
}

/// The rollup tables whose rows are keyed by day (`herald_rollup_days` records the days themselves).
const TABLES: [&str; 4] = [
    "herald_rollup_jobs",
    "herald_rollup_runs",
    "herald_rollup_steps",
    "herald_rollup_deliveries",
];

async fn read_day(
    conn: &mut PgConnection,
    day: NaiveDate,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<DayAggregates, ClockError> {
    // One more than accepted, to tell a full day from one past the bound.
    let limit = i64::try_from(MAX_GROUPS + 1).unwrap_or(i64::MAX);
    let aggregates = DayAggregates {
        jobs: queue_days::job_days(conn, from, to, limit).await?,
        runs: workflow_days::run_days(conn, from, to, limit).await?,
        steps: workflow_days::step_days(conn, from, to, limit).await?,
        deliveries: channel_days::delivery_days(conn, from, to, limit).await?,
    };
    for (what, len) in [
        ("queue/kind", aggregates.jobs.len()),
        ("workflow", aggregates.runs.len()),
        ("workflow/node kind", aggregates.steps.len()),
        ("workflow/channel/provider", aggregates.deliveries.len()),
    ] {
        if len > MAX_GROUPS {
            return Err(ClockError::Invalid(format!(
                "{day} has more than {MAX_GROUPS} {what} groups; not rolled up"
            )));
        }
    }
    Ok(aggregates)
}

/// Inserts one table's rows: the owner's aggregates as JSON, mapped onto the table's columns by name
/// (`jsonb_populate_recordset`), so each table takes its rows in one statement whatever its width, and a field
/// the table lacks fails the NOT NULL constraints instead of being dropped silently.
async fn insert<T: Serialize>(
    tx: &mut PgConnection,
    table: &str,
    day: NaiveDate,
    rows: &[T],
) -> Result<(), ClockError> {
    if rows.is_empty() {
        return Ok(());
    }
    let dated: Vec<Dated<'_, T>> = rows.iter().map(|row| Dated { day, row }).collect();
    let json =
        serde_json::to_value(&dated).map_err(|e| ClockError::Invalid(format!("{table}: {e}")))?;
    sqlx::query(&format!(
        "INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1)"
    ))
    .bind(json)
    .execute(tx)
    .await?;
    Ok(())
}

fn day_number(day: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN);
    i32::try_from((day - epoch).num_days()).unwrap_or(i32::MAX)
}

/// Removes the rollups of days more than `keep_days` before `today`. Returns the days removed.
pub async fn purge(
    pool: &PgPool,
    settings: &RollupSettings,
    today: NaiveDate,
) -> Result<u64, ClockError> {
    let Some(cutoff) = today.checked_sub_days(chrono::Days::new(u64::from(settings.keep_days)))
    else {
        return Ok(0);
    };
    let mut tx = pool.begin().await?;
    for table in TABLES {
        sqlx::query(&format!("DELETE FROM {table} WHERE day < $1"))
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
    }
    let days = sqlx::query("DELETE FROM herald_rollup_days WHERE day < $1")
        .bind(cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(days)
}

/// Registers the `herald.rollup` handler (the worker inside each clock serves it).
pub fn register(registry: &mut HandlerRegistry, pool: PgPool, settings: RollupSettings) {
    let settings = Arc::new(settings);
    registry.register(move |job: RollupJob, _ctx| {
        let (pool, settings) = (pool.clone(), Arc::clone(&settings));
        async move { run_job(&pool, &settings, &job).await }
    });
}

async fn run_job(
    pool: &PgPool,
    settings: &RollupSettings,
    job: &RollupJob,
) -> Result<(), JobError> {
    let zone = settings
        .zone()
        .map_err(|e| JobError::permanent(e.to_string()))?;
    let day = job
        .day(zone)
        .ok_or_else(|| JobError::permanent(format!("tick {} has no day before it", job.tick)))?;
    let as_job_error = |error: ClockError| match error {
        ClockError::Invalid(message) => JobError::Permanent(message),
        other => JobError::Retry(other.to_string()),
    };
    let rebuilt = rebuild(pool, settings, day).await.map_err(as_job_error)?;
    let purged = purge(pool, settings, day).await.map_err(as_job_error)?;
    super::metrics::succeeded("rollup");
    tracing::info!(
        day = %day, jobs = rebuilt.jobs, runs = rebuilt.runs, steps = rebuilt.steps,
        deliveries = rebuilt.deliveries, purged_days = purged, "daily rollup computed"
    );
    Ok(())
}

// ---- reading ----

/// Which rollups to read: the days `from..=to` (at most [`MAX_DAYS`]), optionally one workflow, channel or
/// provider. A table without a filtered dimension is left out of the answer (jobs have no workflow, runs and
/// steps no channel).
#[derive(Debug, Clone, PartialEq)]
pub struct RollupFilter {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub workflow: Option<String>,
    pub channel: Option<String>,
    pub provider: Option<String>,
}

impl RollupFilter {
    /// Checks the range and the filters' lengths.
    pub fn new(
        from: NaiveDate,
        to: NaiveDate,
        workflow: Option<String>,
        channel: Option<String>,
        provider: Option<String>,
    ) -> Result<Self, ClockError> {
        check_range(from, to)?;
        for (name, value) in [
            ("workflow", &workflow),
            ("channel", &channel),
            ("provider", &provider),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.chars().count() > MAX_FILTER_CHARS)
            {
                return Err(ClockError::Invalid(format!(
                    "{name} is longer than {MAX_FILTER_CHARS} characters"
                )));
            }
            // PostgreSQL text cannot hold NUL, and no name contains one.
            if value.as_ref().is_some_and(|v| v.contains('\0')) {
                return Err(ClockError::Invalid(format!(
                    "{name} contains a NUL character"
                )));
            }
        }
        Ok(Self {
            from,
            to,
            workflow,
            channel,
            provider,
        })
    }
}

/// A computed day.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RollupDay {
    pub day: NaiveDate,
    /// The time zone whose midnights bounded it.
    pub timezone: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub computed_at: DateTime<Utc>,
}

/// Finished jobs of one queue and kind on one day.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct JobRollup {
    pub day: NaiveDate,
    pub queue: String,
    pub kind: String,
    /// `completed + dead`: jobs whose handler ran to an end.
    pub executed: i64,
    pub completed: i64,
    /// Dead-lettered.
    pub dead: i64,
    pub cancelled: i64,
    /// Jobs that needed more than one attempt.
    pub retried: i64,
    /// Attempts made by all these jobs.
    pub attempts: i64,
    /// Claim of the last attempt minus the time it was due, in milliseconds.
    pub pickup_p50_ms: Option<f64>,
    pub pickup_p95_ms: Option<f64>,
    pub pickup_p99_ms: Option<f64>,
}

/// One workflow's runs on one day.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunRollup {
    pub day: NaiveDate,
    pub workflow: String,
    /// Runs triggered that day.
    pub started: i64,
    /// Runs that finished that day, by final status.
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Trigger to completion of the runs that completed that day, in milliseconds.
    pub duration_p50_ms: Option<f64>,
    pub duration_p95_ms: Option<f64>,
    pub duration_p99_ms: Option<f64>,
}

/// One workflow's steps of one node kind that finished on one day.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StepRollup {
    pub day: NaiveDate,
    pub workflow: String,
    /// `trigger`, `action`, `condition`, `branch`, `transform`, `delay`, `wait_for_events` or `unknown`.
    pub node_kind: String,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Steps that needed more than one attempt.
    pub retried: i64,
    /// Start to finish of a step (a delay or a wait counts its waiting), in milliseconds.
    pub duration_p50_ms: Option<f64>,
    pub duration_p95_ms: Option<f64>,
    pub duration_p99_ms: Option<f64>,
}

/// One workflow's deliveries over one channel and provider created on one day, by status when computed.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeliveryRollup {
    pub day: NaiveDate,
    /// `''` for deliveries made before deliveries recorded their workflow.
    pub workflow: String,
    pub channel: String,
    /// `''` when no provider was tried (suppressed before any call).
    pub provider: String,
    pub deliveries: i64,
    /// Accepted by a provider (now sent, delivered or bounced).
    pub accepted: i64,
    pub queued: i64,
    pub sending: i64,
    pub sent: i64,
    pub delivered: i64,
    pub bounced: i64,
    pub failed: i64,
    pub suppressed: i64,
    pub unknown: i64,
    /// Run trigger to provider acceptance, in milliseconds.
    pub accept_p50_ms: Option<f64>,
    pub accept_p95_ms: Option<f64>,
    pub accept_p99_ms: Option<f64>,
}

/// The rollups of a range of days, as `GET /v1/analytics/daily` and `herald rollup show` answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DailyRollups {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// The days of the range that have been computed; a day absent here has no rollups yet (a computed day
    /// without activity is here, with no rows below).
    pub days: Vec<RollupDay>,
    /// By day, queue, kind. Left out (empty) when a workflow, channel or provider filter is given.
    pub jobs: Vec<JobRollup>,
    /// By day, workflow. Left out when a channel or provider filter is given.
    pub runs: Vec<RunRollup>,
    /// By day, workflow, node kind. Left out when a channel or provider filter is given.
    pub steps: Vec<StepRollup>,
    /// By day, workflow, channel, provider.
    pub deliveries: Vec<DeliveryRollup>,
    /// A table had more than the most rows one answer carries (50,000): ask for fewer days.
    pub truncated: bool,
}

/// Reads the stored rollups the filter selects.
pub async fn show(pool: &PgPool, filter: &RollupFilter) -> Result<DailyRollups, ClockError> {
    check_range(filter.from, filter.to)?;
    let limit = i64::try_from(MAX_ROWS + 1).unwrap_or(i64::MAX);
    let by_workflow = filter.workflow.is_some();
    let by_channel = filter.channel.is_some() || filter.provider.is_some();
    let days: Vec<RollupDay> = sqlx::query_as(
        "SELECT day, timezone, starts_at, ends_at, computed_at FROM herald_rollup_days \
         WHERE day BETWEEN $1 AND $2 ORDER BY day",
    )
    .bind(filter.from)
    .bind(filter.to)
    .fetch_all(pool)
    .await?;
    let mut jobs: Vec<JobRollup> = Vec::new();
    if !by_workflow && !by_channel {
        jobs = sqlx::query_as(
            "SELECT * FROM herald_rollup_jobs WHERE day BETWEEN $1 AND $2 \
             ORDER BY day, queue, kind LIMIT $3",
        )
        .bind(filter.from)
        .bind(filter.to)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    }
    let (mut runs, mut steps): (Vec<RunRollup>, Vec<StepRollup>) = (Vec::new(), Vec::new());
    if !by_channel {
        runs = sqlx::query_as(
            "SELECT * FROM herald_rollup_runs WHERE day BETWEEN $1 AND $2 \
             AND ($3::text IS NULL OR workflow = $3) ORDER BY day, workflow LIMIT $4",
        )
        .bind(filter.from)
        .bind(filter.to)
        .bind(&filter.workflow)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        steps = sqlx::query_as(
            "SELECT * FROM herald_rollup_steps WHERE day BETWEEN $1 AND $2 \
             AND ($3::text IS NULL OR workflow = $3) ORDER BY day, workflow, node_kind LIMIT $4",
        )
        .bind(filter.from)
        .bind(filter.to)
        .bind(&filter.workflow)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    }
    let mut deliveries: Vec<DeliveryRollup> = sqlx::query_as(
        "SELECT * FROM herald_rollup_deliveries WHERE day BETWEEN $1 AND $2 \
         AND ($3::text IS NULL OR workflow = $3) AND ($4::text IS NULL OR channel = $4) \
         AND ($5::text IS NULL OR provider = $5) \
         ORDER BY day, workflow, channel, provider LIMIT $6",
    )
    .bind(filter.from)
    .bind(filter.to)
    .bind(&filter.workflow)
    .bind(&filter.channel)
    .bind(&filter.provider)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let truncated = [jobs.len(), runs.len(), steps.len(), deliveries.len()]
        .iter()
        .any(|len| *len > MAX_ROWS);
    jobs.truncate(MAX_ROWS);
    runs.truncate(MAX_ROWS);
    steps.truncate(MAX_ROWS);
    deliveries.truncate(MAX_ROWS);
    Ok(DailyRollups {
        from: filter.from,
        to: filter.to,
        days,
        jobs,
        runs,
        steps,
        deliveries,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_day_runs_from_local_midnight_to_local_midnight() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        assert_eq!(
            day_bounds(paris, date("2026-01-10")).unwrap(),
            (at("2026-01-09T23:00:00Z"), at("2026-01-10T23:00:00Z"))
        );
        // Spring forward: 23 hours; fall back: 25.
        let (start, end) = day_bounds(paris, date("2026-03-29")).unwrap();
        assert_eq!((end - start).num_hours(), 23);
        let (start, end) = day_bounds(paris, date("2026-10-25")).unwrap();
        assert_eq!((end - start).num_hours(), 25);
        assert_eq!(
            day_bounds(Tz::UTC, date("2026-05-01")).unwrap(),
            (at("2026-05-01T00:00:00Z"), at("2026-05-02T00:00:00Z"))
        );
    }

    #[test]
    fn a_skipped_midnight_starts_the_day_after_the_gap() {
        // America/Santiago sprang forward at midnight on 2025-09-07: 00:00 became 01:00 (04:00 UTC).
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let (start, end) = day_bounds(santiago, date("2025-09-07")).unwrap();
        assert_eq!(start, at("2025-09-07T04:00:00Z"));
        assert_eq!((end - start).num_hours(), 23);
        // The day before ends where this one starts: no instant belongs to two days or to none.
        assert_eq!(day_bounds(santiago, date("2025-09-06")).unwrap().1, start);
    }

    #[test]
    fn the_job_rolls_up_the_local_day_before_its_tick() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        // 00:15 in Paris on May 2 is 22:15 UTC on May 1.
        let job = RollupJob {
            tick: at("2026-05-01T22:15:00Z"),
        };
        assert_eq!(job.day(paris), Some(date("2026-05-01")));
        assert_eq!(job.day(Tz::UTC), Some(date("2026-04-30")));
        let decoded: RollupJob =
            serde_json::from_value(serde_json::json!({ "tick": "2026-05-02T00:15:00Z" })).unwrap();
        assert_eq!(decoded.day(Tz::UTC), Some(date("2026-05-01")));
    }

    #[test]
    fn ranges_are_bounded_and_ordered() {
        assert_eq!(
            days_between(date("2026-02-27"), date("2026-03-01")).unwrap(),
            vec![date("2026-02-27"), date("2026-02-28"), date("2026-03-01")]
        );
        assert!(days_between(date("2026-03-01"), date("2026-02-27")).is_err());
        assert_eq!(
            days_between(date("2025-01-01"), date("2025-12-31"))
                .unwrap()
                .len(),
            365
        );
        assert!(days_between(date("2024-01-01"), date("2024-12-31")).is_ok()); // 366 days
        assert!(days_between(date("2025-01-01"), date("2026-01-01")).is_ok()); // 365 + 1
        assert!(days_between(date("2025-01-01"), date("2026-01-02")).is_err()); // 367
    }

    #[test]
    fn settings_refuse_an_unknown_zone_and_a_zero_keep() {
        assert!(RollupSettings::default().validate().is_ok());
        let zone = RollupSettings {
            timezone: "Mars/Olympus".into(),
            ..RollupSettings::default()
        };
        assert!(zone.validate().is_err());
        let keep = RollupSettings {
            keep_days: 0,
            ..RollupSettings::default()
        };
        assert!(keep.validate().is_err());
    }
}
