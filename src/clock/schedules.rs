//! Cron schedules, fired exactly once per tick across the fleet.
//!
//! A schedule's definition lives in the configuration; its progress lives in `herald_schedules`, one row per
//! schedule with `last_tick`, the latest tick claimed. Any number of clocks look at the time; a clock that sees a
//! tick after `last_tick` locks the row (`FOR UPDATE SKIP LOCKED`: a clock never waits for another), enqueues the
//! tick's job or workflow run and moves `last_tick` forward in the same transaction. Another clock that saw the
//! same tick then finds it claimed (or the row locked, and skips it). The job also carries the idempotency key
//! `clock:<schedule>:<tick>`, so even two clocks with different views of `last_tick` cannot enqueue a tick twice.
//!
//! Time zones follow the wall clock, the way cron does: ticks are computed in local time and mapped to instants.
//! A local time that does not exist (the hour skipped when clocks spring forward) fires once, at the first instant
//! after the gap; a local time that happens twice (the hour repeated when clocks fall back) fires once, at its
//! first occurrence. So `30 2 * * *` in Europe/Paris runs once on both days.
//!
//! Ticks no clock was up for (older than `clock.missed_after_secs`) are *missed*: with `missed = "skip"` they are
//! passed over; with `missed = "run_once"` the latest of them fires once, whatever their number. A paused
//! schedule passes over its ticks, so resuming it fires nothing from the pause.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::ClockError;
use crate::audit::{self, Actor};
use crate::queue::{self, IdempotencyKey, JobDefaults, JobKind, NewJob, QueueName};
use crate::setting::InvalidSetting;
use crate::workflow::{Engine, Started};

/// The most ticks one look fires for one schedule (a per-second schedule after a minute's pause fires 60).
const MOST_TICKS_PER_LOOK: usize = 1_000;
/// Bounds the walk over missed ticks when counting them (a per-second schedule down for a month).
const MOST_TICKS_COUNTED: u64 = 100_000;
/// The largest payload a schedule may carry (it is copied into every tick's job).
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// `[[clock.schedules]]`: one user schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    pub name: String,
    /// Five fields (minute hour day-of-month month day-of-week), or six/seven with seconds first and a year last,
    /// or `@daily`, `@hourly`, ….
    pub cron: String,
    /// An IANA time zone (`Europe/Paris`); ticks follow its wall clock.
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub missed: MissedPolicy,
    /// Trigger this workflow with `payload` as its data...
    #[serde(default)]
    pub workflow: Option<String>,
    /// ...or enqueue a job of this kind on `queue` (default `default`) with `payload`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
}

fn utc() -> String {
    "UTC".to_string()
}

/// What happens to ticks no clock was up for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// Pass over them; the schedule goes on from its next tick.
    #[default]
    Skip,
    /// Fire the latest of them once, as soon as a clock is back.
    RunOnce,
}

/// What a tick makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Job { queue: QueueName, kind: JobKind },
    Workflow(String),
}

/// A checked schedule, ready to compute ticks.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub expression: String,
    pub timezone: Tz,
    pub missed: MissedPolicy,
    pub target: Target,
    pub payload: serde_json::Value,
    /// The clock's own maintenance schedules (`herald.*`): their jobs carry `{"tick": …}` as payload.
    pub builtin: bool,
    cron: cron::Schedule,
}

impl Schedule {
    /// Checks a user schedule. The error names what is wrong, for `InvalidSetting`.
    pub fn from_settings(settings: &ScheduleSettings) -> Result<Self, String> {
        let name = settings.name.trim();
        check_name(name)?;
        if name.starts_with("herald.") {
            return Err(format!(
                "{name:?}: names starting with \"herald.\" are the clock's own"
            ));
        }
        let target = match (&settings.workflow, &settings.kind) {
            (Some(workflow), None) if settings.queue.is_none() => {
                Target::Workflow(workflow.trim().to_string())
            }
            (None, Some(kind)) => Target::Job {
                queue: QueueName::parse(settings.queue.as_deref().unwrap_or("default"))
                    .map_err(|e| format!("{name:?}: {e}"))?,
                kind: JobKind::parse(kind).map_err(|e| format!("{name:?}: {e}"))?,
            },
            _ => {
                return Err(format!(
                    "{name:?}: set either `workflow`, or `kind` (with an optional `queue`)"
                ));
            }
        };
        let payload = settings
            .payload
            .clone()
            .unwrap_or_else(|| serde_json::json!({}));
        if payload.to_string().len() > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "{name:?}: payload is larger than {MAX_PAYLOAD_BYTES} bytes"
            ));
        }
        let mut schedule = Self::new(name, &settings.cron, &settings.timezone, target)
            .map_err(|e| format!("{name:?}: {e}"))?;
        schedule.missed = settings.missed;
        schedule.payload = payload;
        Ok(schedule)
    }

    /// A schedule from its parts (the built-in ones use this), with `missed = "skip"` and an empty payload.
    pub fn new(
        name: &str,
        expression: &str,
        timezone: &str,
        target: Target,
    ) -> Result<Self, String> {
        let cron = parse_cron(expression)?;
        let timezone = Tz::from_str(timezone.trim()).map_err(|_| {
            format!("unknown time zone {timezone:?} (use an IANA name such as Europe/Paris)")
        })?;
        Ok(Self {
            name: name.to_string(),
            expression: expression.trim().to_string(),
            timezone,
            missed: MissedPolicy::Skip,
            target,
            payload: serde_json::json!({}),
            builtin: false,
            cron,
        })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone).naive_local();
        // Wall-clock ticks, computed on naive local time (UTC stands in for "no time zone", so no tick is skipped
        // or doubled by the cron crate), then mapped to instants. The mapped instant can lie at or before `after`
        // in the repeated hour of a fall-back, where local time runs twice; those are walked past.
        for naive in self.cron.after(&local.and_utc()).take(MOST_TICKS_PER_LOOK) {
            let instant = self.instant_of(naive.naive_utc());
            if instant > after {
                return Some(instant);
            }
        }
        None
    }

    /// The latest tick at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.timezone).naive_local();
        // Start a second past `at`'s wall time (ticks are whole seconds), walk backwards, and keep the first
        // whose instant is not after `at` (a tick in a spring-forward gap maps forward, past `at`).
        let start = (local + chrono::Duration::seconds(1)).and_utc();
        for naive in self.cron.after(&start).rev().take(MOST_TICKS_PER_LOOK) {
            let instant = self.instant_of(naive.naive_utc());
            if instant <= at {
                return Some(instant);
            }
        }
        None
    }

    /// The instant a wall-clock tick fires at: itself, its first occurrence if it happens twice, or the first
    /// instant after the gap if the clocks skipped it.
    fn instant_of(&self, naive: NaiveDateTime) -> DateTime<Utc> {
        if let Some(instant) = self.timezone.from_local_datetime(&naive).earliest() {
            return instant.with_timezone(&Utc);
        }
        // In a gap. Gaps end on a whole minute and last at most a few hours (most one): the first minute that
        // exists is the end of it.
        let mut probe = naive.with_second(0).unwrap_or(naive);
        for _ in 0..(24 * 60) {
            probe += chrono::Duration::minutes(1);
            if let Some(instant) = self.timezone.from_local_datetime(&probe).earliest() {
                return instant.with_timezone(&Utc);
            }
        }
        naive.and_utc()
    }

    fn payload_for(&self, tick: DateTime<Utc>) -> serde_json::Value {
        if self.builtin {
            serde_json::json!({ "tick": tick })
        } else {
            self.payload.clone()
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("schedule name {name:?} must be 1-64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "schedule name {name:?} may contain only ASCII letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

/// Five-field crontab lines get a leading `0` seconds field (the cron crate wants six or seven fields).
fn parse_cron(expression: &str) -> Result<cron::Schedule, String> {
    let expression = expression.trim();
    let fields = expression.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expression}")
    } else {
        expression.to_string()
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("cron expression {expression:?}: {e}"))
}

/// Checks `[[clock.schedules]]`: each one valid, names unique.
pub fn validate(schedules: &[ScheduleSettings]) -> Result<(), InvalidSetting> {
    let mut names = std::collections::HashSet::new();
    for settings in schedules {
        Schedule::from_settings(settings).map_err(|e| InvalidSetting::new("clock.schedules", e))?;
        if !names.insert(settings.name.trim()) {
            return Err(InvalidSetting::new(
                "clock.schedules",
                format!("two schedules are named {:?}", settings.name.trim()),
            ));
        }
    }
    Ok(())
}

/// What one tick of one schedule did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fired {
    pub schedule: String,
    pub tick: DateTime<Utc>,
    /// The job enqueued (job targets)...
    pub job_id: Option<i64>,
    /// ...or the workflow run started.
    pub run_id: Option<i64>,
}

/// The clock's view of one schedule's row.
#[derive(Debug, sqlx::FromRow)]
struct Progress {
    paused: bool,
    last_tick: DateTime<Utc>,
}

/// Fires schedules' ticks. Every clock process has one; they agree through `herald_schedules`.
pub struct Ticker {
    pool: PgPool,
    schedules: Vec<Schedule>,
    defaults: JobDefaults,
    engine: Arc<Engine>,
    missed_after: Duration,
}

impl Ticker {
    pub fn new(
        pool: PgPool,
        schedules: Vec<Schedule>,
        defaults: JobDefaults,
        engine: Arc<Engine>,
        missed_after: Duration,
    ) -> Self {
        Self {
            pool,
            schedules,
            defaults,
            engine,
            missed_after,
        }
    }

    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// One look at the time `now` (the injectable clock: tests pass any instant): fires every due tick of every
    /// schedule and returns what fired.
    pub async fn fire_due(&self, now: DateTime<Utc>) -> Result<Vec<Fired>, ClockError> {
        let mut fired = Vec::new();
        for schedule in &self.schedules {
            // A schedule that cannot fire (an unknown workflow) must not stop the others.
            match self.fire_schedule(schedule, now).await {
                Ok(mut ticks) => fired.append(&mut ticks),
                Err(error) => {
                    tracing::warn!(schedule = %schedule.name, error = %error, "schedule could not fire")
                }
            }
        }
        Ok(fired)
    }

    /// When the next tick of any schedule is due, after `now`.
    pub fn next_due(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedules
            .iter()
            .filter_map(|s| s.next_after(now))
            .min()
    }

    async fn fire_schedule(
        &self,
        schedule: &Schedule,
        now: DateTime<Utc>,
    ) -> Result<Vec<Fired>, ClockError> {
        // A schedule seen for the first time starts from now: nothing before it was ever due.
        sqlx::query(
            "INSERT INTO herald_schedules (name, last_tick) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&schedule.name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let progress: Option<Progress> =
            sqlx::query_as("SELECT paused, last_tick FROM herald_schedules WHERE name = $1")
                .bind(&schedule.name)
                .fetch_optional(&self.pool)
                .await?;
        // Most looks find nothing due: decide that without a transaction or a lock.
        let Some(progress) = progress else {
            return Ok(Vec::new());
        };
        if schedule
            .next_after(progress.last_tick)
            .is_none_or(|next| next > now)
        {
            return Ok(Vec::new());
        }

        let mut tx = self.pool.begin().await?;
        // Another clock holding the row is firing this schedule right now: leave it to that clock.
        let locked: Option<Progress> = sqlx::query_as(
            "SELECT paused, last_tick FROM herald_schedules WHERE name = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(&schedule.name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(progress) = locked else {
            return Ok(Vec::new());
        };
        let plan = plan(schedule, progress.last_tick, now, self.missed_after);
        let Some(latest) = plan.latest else {
            return Ok(Vec::new());
        };
        let mut fired = Vec::new();
        let mut error = None;
        if !progress.paused {
            for &tick in &plan.fire {
                match self.fire_tick(&mut tx, schedule, tick).await {
                    Ok(made) => fired.push(made),
                    Err(ClockError::Workflow(refused)) => {
                        // The workflow is unknown or refuses the payload: every tick would fail the same way.
                        // Record why, pass the tick over, and keep the schedule moving.
                        error = Some(refused.to_string());
                        break;
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        let passed_over = plan.passed_over + (plan.fire.len() - fired.len()) as u64;
        let last = fired.last();
        sqlx::query(
            "UPDATE herald_schedules SET last_tick = $2, passed_over = passed_over + $3, \
             last_fired_tick = COALESCE($4, last_fired_tick), \
             last_fired_at = CASE WHEN $4 IS NULL THEN last_fired_at ELSE now() END, \
             last_job_id = CASE WHEN $4 IS NULL THEN last_job_id ELSE $5 END, \
             last_run_id = CASE WHEN $4 IS NULL THEN last_run_id ELSE $6 END, \
             last_error = CASE WHEN $4 IS NULL THEN COALESCE($7, last_error) ELSE $7 END, \
             updated_at = now() WHERE name = $1",
        )
        .bind(&schedule.name)
        .bind(latest)
        .bind(i64::try_from(passed_over).unwrap_or(i64::MAX))
        .bind(last.map(|f| f.tick))
        .bind(last.and_then(|f| f.job_id))
        .bind(last.and_then(|f| f.run_id))
        .bind(&error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        super::metrics::TICKS
            .with_label_values(&[&schedule.name, "fired"])
            .inc_by(fired.len() as u64);
        super::metrics::TICKS
            .with_label_values(&[&schedule.name, "passed_over"])
            .inc_by(passed_over);
        for made in &fired {
            tracing::info!(schedule = %made.schedule, tick = %made.tick, job = ?made.job_id, run = ?made.run_id,
                "schedule fired");
        }
        Ok(fired)
    }

    async fn fire_tick(
        &self,
        tx: &mut sqlx::PgConnection,
        schedule: &Schedule,
        tick: DateTime<Utc>,
    ) -> Result<Fired, ClockError> {
        let key = tick_key(&schedule.name, tick);
        let payload = schedule.payload_for(tick);
        let (job_id, run_id) = match &schedule.target {
            Target::Job { queue, kind } => {
                let key =
                    IdempotencyKey::parse(&key).map_err(|e| ClockError::Invalid(e.to_string()))?;
                let job = NewJob::new(queue.clone(), kind.clone(), payload).idempotency_key(key);
                // A taken key (even with another payload: a clock running older settings) means the tick's job
                // exists already: that job is the tick's.
                let id = queue::enqueue(tx, &self.defaults, job).await?.id();
                (Some(id), None)
            }
            Target::Workflow(workflow) => {
                let started = self.engine.start_run_in(tx, workflow, payload, key).await?;
                let (Started::Created { id, .. } | Started::Existing { id, .. }) = started;
                (None, Some(id))
            }
        };
        Ok(Fired {
            schedule: schedule.name.clone(),
            tick,
            job_id,
            run_id,
        })
    }

    /// Looks at the time until `shutdown`: fires what is due, then sleeps until the next tick (at most `poll`).
    pub async fn run(self, poll: Duration, shutdown: CancellationToken) {
        let names: Vec<&str> = self.schedules.iter().map(|s| s.name.as_str()).collect();
        tracing::info!(schedules = ?names, "clock started");
        loop {
            let now = Utc::now();
            if let Err(error) = self.fire_due(now).await {
                tracing::warn!(%error, "clock: cannot fire schedules; trying again");
            }
            let now = Utc::now();
            let wait = self
                .next_due(now)
                .and_then(|next| (next - now).to_std().ok())
                .map_or(poll, |until| until.min(poll));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("clock stopped");
    }
}

/// The idempotency key of one tick: the same for every clock that sees it.
pub fn tick_key(schedule: &str, tick: DateTime<Utc>) -> String {
    format!(
        "clock:{schedule}:{}",
        tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// What one look does with one schedule whose `last_tick` is `last`.
#[derive(Debug, PartialEq)]
struct Plan {
    /// The ticks to fire, oldest first.
    fire: Vec<DateTime<Utc>>,
    /// Missed ticks passed over (counted up to a bound).
    passed_over: u64,
    /// The new `last_tick`: the latest tick at or before now (None: nothing due).
    latest: Option<DateTime<Utc>>,
}

fn plan(
    schedule: &Schedule,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    missed_after: Duration,
) -> Plan {
    let nothing = Plan {
        fire: Vec::new(),
        passed_over: 0,
        latest: None,
    };
    let Some(first) = schedule.next_after(last).filter(|t| *t <= now) else {
        return nothing;
    };
    let latest = schedule
        .latest_at_or_before(now)
        .unwrap_or(first)
        .max(first);
    let late_before =
        now - chrono::Duration::from_std(missed_after).unwrap_or(chrono::Duration::MAX);
    // On time: ticks in (max(last, late_before), now].
    let mut fire = Vec::new();
    let mut cursor = last.max(late_before);
    while let Some(tick) = schedule.next_after(cursor).filter(|t| *t <= now) {
        fire.push(tick);
        cursor = tick;
        if fire.len() >= MOST_TICKS_PER_LOOK {
            break;
        }
    }
    let mut passed_over = 0;
    if first <= late_before {
        // Missed ticks in (last, late_before].
        let mut cursor = last;
        while let Some(tick) = schedule.next_after(cursor).filter(|t| *t <= late_before) {
            passed_over += 1;
            cursor = tick;
            if passed_over >= MOST_TICKS_COUNTED {
                break;
            }
        }
        let run_once = schedule.missed == MissedPolicy::RunOnce && fire.is_empty();
        if let Some(tick) = schedule
            .latest_at_or_before(late_before)
            .filter(|_| run_once)
        {
            fire.push(tick);
            passed_over = passed_over.saturating_sub(1);
        }
    }
    Plan {
        fire,
        passed_over,
        latest: Some(latest),
    }
}

/// A schedule as `herald cron list` and `GET /v1/schedules` show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScheduleView {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    /// `skip` or `run_once`.
    pub missed: String,
    /// `job` or `workflow`.
    pub target: String,
    /// The workflow, or `queue/kind`.
    pub destination: String,
    pub paused: bool,
    pub next_tick: Option<DateTime<Utc>>,
    pub last_tick: Option<DateTime<Utc>>,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub last_job_id: Option<i64>,
    pub last_run_id: Option<i64>,
    /// The last fired tick's job state (`available`, `running`, `completed`, `dead`, …) or run status
    /// (`running`, `completed`, `failed`, `cancelled`); `gone` once retention removed it.
    pub last_outcome: Option<String>,
    /// Why the last tick could not fire, if it could not.
    pub last_error: Option<String>,
    /// Ticks passed over (missed with `skip`, or paused).
    pub passed_over: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    name: String,
    paused: bool,
    last_fired_tick: Option<DateTime<Utc>>,
    last_fired_at: Option<DateTime<Utc>>,
    last_job_id: Option<i64>,
    last_run_id: Option<i64>,
    last_error: Option<String>,
    passed_over: i64,
}

/// A schedule's progress as the clocks stored it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct ScheduleTick {
    pub name: String,
    pub paused: bool,
    pub last_tick: DateTime<Utc>,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Every schedule's progress as stored, for `herald status` (which knows no schedule definitions: it reads what
/// the clocks wrote).
pub async fn last_ticks(pool: &PgPool) -> Result<Vec<ScheduleTick>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, paused, last_tick, last_fired_at, last_error FROM herald_schedules ORDER BY name LIMIT 1000",
    )
    .fetch_all(pool)
    .await
}

/// The schedules whose latest tick is failing, with why: the tick could not fire (`last_error`), or the job it
/// enqueued failed for good (dead-lettered) or is failing and being retried. For the `clock_failing` alert. A
/// tick that started a workflow run is the run's business (its failures are the workflow's, not the clock's).
pub async fn failing(pool: &PgPool) -> Result<Vec<(String, String)>, ClockError> {
    // Two statements under the batch writers' deadline, whatever the number of schedules.
    let mut tx = crate::db::begin_bounded(pool, &[]).await?;
    let rows: Vec<(String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT name, last_error, last_job_id FROM herald_schedules WHERE NOT paused ORDER BY name LIMIT 1000",
    )
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<i64> = rows.iter().filter_map(|(_, _, job)| *job).collect();
    let jobs = queue::admin::failing_jobs(&mut tx, &ids).await?;
    tx.commit().await?;
    let mut failing = Vec::new();
    for (name, last_error, last_job) in rows {
        if let Some(error) = last_error {
            failing.push((name, format!("its latest tick could not fire: {error}")));
            continue;
        }
        let Some(job) = last_job.and_then(|id| jobs.iter().find(|j| j.id == id)) else {
            continue;
        };
        let error = job.error.as_deref().unwrap_or_default();
        let why = if job.dead {
            format!("job {} ({}) failed for good: {error}", job.id, job.kind)
        } else {
            format!(
                "job {} ({}) is failing, attempt {} of {}: {error}",
                job.id, job.kind, job.attempt, job.max_attempts
            )
        };
        failing.push((name, why));
    }
    Ok(failing)
}

/// The schedules and their progress, in the order given.
pub async fn list(
    pool: &PgPool,
    engine: &Engine,
    schedules: &[Schedule],
    now: DateTime<Utc>,
) -> Result<Vec<ScheduleView>, ClockError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT name, paused, last_fired_tick, last_fired_at, last_job_id, last_run_id, last_error, passed_over \
         FROM herald_schedules WHERE name = ANY($1)",
    )
    .bind(schedules.iter().map(|s| s.name.clone()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    let mut views = Vec::with_capacity(schedules.len());
    for schedule in schedules {
        let row = rows.iter().find(|r| r.name == schedule.name);
        let last_outcome = match row.map(|r| (r.last_job_id, r.last_run_id)) {
            Some((Some(job), _)) => Some(
                queue::admin::find_job(pool, job)
                    .await?
                    .map_or_else(|| "gone".to_string(), |j| j.state.as_str().to_string()),
            ),
            Some((None, Some(run))) => Some(match engine.get_run(run).await {
                Ok(view) => view.status.to_string(),
                Err(crate::workflow::WorkflowError::NotFound(_)) => "gone".to_string(),
                Err(other) => return Err(other.into()),
            }),
            _ => None,
        };
        let (target, destination) = match &schedule.target {
            Target::Job { queue, kind } => ("job", format!("{queue}/{kind}")),
            Target::Workflow(workflow) => ("workflow", workflow.clone()),
        };
        views.push(ScheduleView {
            name: schedule.name.clone(),
            cron: schedule.expression.clone(),
            timezone: schedule.timezone.name().to_string(),
            missed: match schedule.missed {
                MissedPolicy::Skip => "skip",
                MissedPolicy::RunOnce => "run_once",
            }
            .to_string(),
            target: target.to_string(),
            destination,
            paused: row.is_some_and(|r| r.paused),
            next_tick: schedule.next_after(now),
            last_tick: row.and_then(|r| r.last_fired_tick),
            last_fired_at: row.and_then(|r| r.last_fired_at),
            last_job_id: row.and_then(|r| r.last_job_id),
            last_run_id: row.and_then(|r| r.last_run_id),
            last_outcome,
            last_error: row.and_then(|r| r.last_error.clone()),
            passed_over: row.map_or(0, |r| r.passed_over),
        });
    }
    Ok(views)
}

/// Pauses or resumes a schedule fleet-wide. Ticks while paused are passed over, not fired on resume.
pub async fn set_paused(
    pool: &PgPool,
    actor: &Actor,
    schedules: &[Schedule],
    name: &str,
    paused: bool,
) -> Result<(), ClockError> {
    if !schedules.iter().any(|s| s.name == name) {
        return Err(ClockError::UnknownSchedule(name.to_string()));
    }
    let mut tx = pool.begin().await?;
    // A schedule no clock has seen yet gets its row here, starting from now like a clock would. `changed`:
    // whether this is news (pausing a paused schedule is not an action to audit).
    let changed: bool = sqlx::query_scalar(
        "WITH previous AS (SELECT paused FROM herald_schedules WHERE name = $1), \
         upsert AS (INSERT INTO herald_schedules (name, last_tick, paused) VALUES ($1, now(), $2) \
           ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now() RETURNING 1) \
         SELECT coalesce((SELECT paused FROM previous), false) <> $2 FROM upsert",
    )
    .bind(name)
    .bind(paused)
    .fetch_one(&mut *tx)
    .await?;
    if changed {
        let action = if paused {
            "schedule.pause"
        } else {
            "schedule.resume"
        };
        audit::record(&mut *tx, actor, action, name, serde_json::json!({})).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn job_schedule(cron: &str, timezone: &str) -> Schedule {
        let target = Target::Job {
            queue: QueueName::parse("default").unwrap(),
            kind: JobKind::parse("test.tick").unwrap(),
        };
        Schedule::new("test", cron, timezone, target).unwrap()
    }

    fn ticks(schedule: &Schedule, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let (mut cursor, to) = (at(from), at(to));
        let mut found = Vec::new();
        while let Some(tick) = schedule.next_after(cursor).filter(|t| *t <= to) {
            found.push(tick);
            cursor = tick;
        }
        found
    }

    #[test]
    fn five_field_lines_are_read_as_crontab_minutes() {
        let schedule = job_schedule("0 8 * * *", "Europe/Paris");
        // 08:00 in Paris in winter is 07:00 UTC.
        assert_eq!(
            schedule.next_after(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-11T07:00:00Z"))
        );
        assert!(Schedule::new("x", "not cron", "UTC", schedule.target.clone()).is_err());
        assert!(Schedule::new("x", "0 8 * * *", "Mars/Olympus", schedule.target.clone()).is_err());
    }

    #[test]
    fn a_time_skipped_by_spring_forward_fires_once_right_after_the_gap() {
        // Europe/Paris sprang forward on 2026-03-29: 02:00 local became 03:00 (01:00 UTC).
        let schedule = job_schedule("30 2 * * *", "Europe/Paris");
        let fired = ticks(&schedule, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z");
        assert_eq!(
            fired,
            vec![
                at("2026-03-28T01:30:00Z"), // 02:30 CET
                at("2026-03-29T01:00:00Z"), // 02:30 does not exist: 03:00 CEST, the end of the gap
                at("2026-03-30T00:30:00Z"), // 02:30 CEST
            ]
        );
        // Ticks every 15 minutes inside the gap collapse onto the same instant, so it fires once.
        let quarterly = job_schedule("*/15 * * * *", "Europe/Paris");
        let around = ticks(&quarterly, "2026-03-29T00:40:00Z", "2026-03-29T01:20:00Z");
        assert_eq!(
            around,
            vec![
                at("2026-03-29T00:45:00Z"), // 01:45 CET
                at("2026-03-29T01:00:00Z"), // 03:00 CEST (02:00-02:45 fall into the gap)
                at("2026-03-29T01:15:00Z"),
            ]
        );
    }

    #[test]
    fn a_time_repeated_by_fall_back_fires_once_at_its_first_occurrence() {
        // Europe/Paris fell back on 2026-10-25: 03:00 CEST became 02:00 CET, so 02:30 happened twice.
        let schedule = job_schedule("30 2 * * *", "Europe/Paris");
        let fired = ticks(&schedule, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z");
        assert_eq!(
            fired,
            vec![at("2026-10-25T00:30:00Z"), at("2026-10-26T01:30:00Z")]
        );
    }

    #[test]
    fn latest_at_or_before_finds_the_tick_a_missed_run_fires() {
        let schedule = job_schedule("0 * * * *", "UTC");
        assert_eq!(
            schedule.latest_at_or_before(at("2026-05-01T10:59:59Z")),
            Some(at("2026-05-01T10:00:00Z"))
        );
        assert_eq!(
            schedule.latest_at_or_before(at("2026-05-01T11:00:00Z")),
            Some(at("2026-05-01T11:00:00Z"))
        );
        let spring = job_schedule("30 2 * * *", "Europe/Paris");
        assert_eq!(
            spring.latest_at_or_before(at("2026-03-29T01:10:00Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn missed_ticks_follow_the_schedule_policy() {
        let mut schedule = job_schedule("0 * * * *", "UTC");
        let last = at("2026-05-01T00:00:00Z");
        let now = at("2026-05-01T05:30:00Z");
        let grace = Duration::from_secs(60);
        let skipped = plan(&schedule, last, now, grace);
        assert!(skipped.fire.is_empty());
        assert_eq!(skipped.passed_over, 5);
        assert_eq!(skipped.latest, Some(at("2026-05-01T05:00:00Z")));

        schedule.missed = MissedPolicy::RunOnce;
        let once = plan(&schedule, last, now, grace);
        assert_eq!(once.fire, vec![at("2026-05-01T05:00:00Z")]);
        assert_eq!(once.passed_over, 4);

        // A tick within the grace is on time: it fires under either policy.
        schedule.missed = MissedPolicy::Skip;
        let on_time = plan(&schedule, last, at("2026-05-01T05:00:20Z"), grace);
        assert_eq!(on_time.fire, vec![at("2026-05-01T05:00:00Z")]);
        assert_eq!(on_time.passed_over, 4);
        // Nothing due: nothing planned.
        assert_eq!(
            plan(&schedule, at("2026-05-01T05:00:00Z"), now, grace).latest,
            None
        );
    }
}
