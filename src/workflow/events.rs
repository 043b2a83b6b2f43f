//! Events and wait-for-events nodes: aggregate events that arrive in any order, correlated by a key.
//!
//! * An event is stored once per event id (`herald_events`); a redelivered event counts once.
//! * A wait node registers what it waits for (`herald_waits`) and checks the events already stored (received
//!   since the run started, minus `workflows.event_lookback_secs`), in one statement.
//! * An arriving event marks satisfied every wait on its key it completes, and enqueues their `resume` jobs.
//! * Both sides lock the correlation key first (a transaction-scoped advisory lock), so a wait and an event
//!   racing each other cannot both miss the other, and two events arriving together on two servers resume the
//!   run once: the second transaction sees the first's event, and the wait is already satisfied.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::Row;

use super::definition::{Node, WaitSpec};
use super::engine::{Step, retryable};
use super::metrics::RunsEnded;
use super::runs::StepStatus;
use super::steps::{FinishedStep, RunState, finish_steps};
use super::{Engine, NodeJob, NodeJobs, Phase, WorkflowError, sql};
use crate::coalesce::{Coalescer, Failed, whole_or_each_once};
use crate::db;
use crate::queue::JobError;

/// An event for wait-for-events nodes.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The sender's id for the event; a second event with the same id is a duplicate. Generated if absent.
    pub id: Option<String>,
    pub name: String,
    /// The correlation key (an order id, a user id) that wait nodes match on.
    pub key: String,
    pub payload: Value,
}

/// What happened to an event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventReceipt {
    pub event_id: String,
    /// The event id was seen before; this delivery changed nothing.
    pub duplicate: bool,
    /// Runs whose wait this event completed.
    pub resumed_runs: Vec<i64>,
}

/// A wait's status, as `herald_waits.status` stores it: `waiting` until an event satisfies it, its deadline times
/// it out, or its run is cancelled. Only read here (the statements write the statuses themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub(super) enum WaitStatus {
    Waiting,
    Satisfied,
    TimedOut,
    Cancelled,
}

impl WaitStatus {
    #[cfg(test)]
    const ALL: [WaitStatus; 4] = [
        Self::Waiting,
        Self::Satisfied,
        Self::TimedOut,
        Self::Cancelled,
    ];

    #[cfg(test)]
    fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Satisfied => "satisfied",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The longest event name, in characters.
pub const MAX_EVENT_NAME_CHARS: usize = 128;
/// The longest correlation key and event id, in characters.
pub const MAX_EVENT_KEY_CHARS: usize = 255;

impl NewEvent {
    /// Checks the bounds of the event's fields (the HTTP API and the Kafka bridge answer a bad event alone).
    pub fn validate(&self) -> Result<(), WorkflowError> {
        let mut problems = Vec::new();
        // Characters, not bytes, as JSON Schema's maxLength (the API document) counts them; NUL because
        // PostgreSQL's text cannot hold it.
        let bounded = |text: &str, max: usize| {
            !text.is_empty() && text.chars().count() <= max && !text.contains('\0')
        };
        let mut check = |field: &str, text: &str, max: usize| {
            if !bounded(text, max) {
                problems.push((
                    field.to_string(),
                    format!("must be 1-{max} characters, none of them NUL"),
                ));
            }
        };
        check("name", &self.name, MAX_EVENT_NAME_CHARS);
        check("key", &self.key, MAX_EVENT_KEY_CHARS);
        if let Some(id) = &self.id {
            check("id", id, MAX_EVENT_KEY_CHARS);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(WorkflowError::InvalidInput(problems))
        }
    }
}

/// Most events one batch stores.
const MAX_BATCH: usize = 64;
/// Batches being written at once.
const BATCHES_IN_FLIGHT: usize = 4;

type Received = Result<EventReceipt, Arc<WorkflowError>>;

/// Single events in batches: each `POST /v1/events` would otherwise cost a transaction and a synchronous commit
/// of its own. Events handed in while a batch is being written go out together in the next one, stored and
/// matched set-wise ([`ingest_in`]: four statements whatever the batch's size), with one commit, and each caller
/// is answered only after it. Keys are locked in sorted order, so two batches cannot wait on each other in a
/// cycle (a deadlock PostgreSQL still finds, through a hash collision, fails the batch, which is then retried one
/// event at a time, as is any batch the database refuses).
pub(super) struct EventBatches {
    events: Coalescer<NewEvent, Received>,
}

impl EventBatches {
    /// Starts the background task (inside the runtime); `pool` commits synchronously.
    pub(super) fn start(pool: PgPool, jobs: NodeJobs) -> Self {
        let events = Coalescer::start(MAX_BATCH, BATCHES_IN_FLIGHT, move |batch: Vec<NewEvent>| {
            let (pool, jobs) = (pool.clone(), jobs.clone());
            async move {
                whole_or_each_once("events", &batch, |events| ingest_all(&pool, &jobs, events))
                    .await
            }
        });
        Self { events }
    }
}

/// A wait an event batch completed (a row of `SATISFY_WAITS`).
#[derive(sqlx::FromRow)]
struct SatisfiedWait {
    run_id: i64,
    epoch: i32,
    node_id: String,
    /// The step's timeout job, now pointless.
    timer_job_id: Option<i64>,
    key: String,
    /// `all`, `any` or `at_least` (what `needed` counts: distinct names, or events).
    mode: String,
    needed: i32,
    events: Vec<String>,
    /// The matching events stored before this batch: how many, and their distinct names.
    prior_count: i64,
    prior_names: Vec<String>,
}

impl SatisfiedWait {
    /// The position of the batch's event that completed this wait: the first, in the order stored (`stored`: row
    /// id and position, sorted), at which its count reached what it needs, counting from the events stored before
    /// the batch; as if the batch's events had arrived one by one.
    fn completed_by(&self, stored: &[(i64, usize)], batch: &[NewEvent]) -> Option<usize> {
        let mut count = self.prior_count;
        let mut names: HashSet<&str> = self.prior_names.iter().map(String::as_str).collect();
        let mut last = None;
        for &(_, position) in stored {
            let event = &batch[position];
            if event.key != self.key || !self.events.contains(&event.name) {
                continue;
            }
            count += 1;
            names.insert(&event.name);
            last = Some(position);
            let reached = if self.mode == "all" {
                names.len() as i64
            } else {
                count
            };
            if reached >= i64::from(self.needed) {
                return Some(position);
            }
        }
        // Not reached by this reckoning (it cannot be, short of a concurrent change): the last that matched.
        last
    }
}

async fn ingest_all(
    pool: &PgPool,
    jobs: &NodeJobs,
    events: &[NewEvent],
) -> Result<Vec<EventReceipt>, Failed<WorkflowError>> {
    let before = Failed::BeforeCommit;
    let mut tx = db::begin_bounded(pool, &[])
        .await
        .map_err(|e| before(e.into()))?;
    let receipts = ingest_in(&mut tx, jobs, events).await.map_err(before)?;
    tx.commit().await.map_err(|e| Failed::AtCommit(e.into()))?;
    Ok(receipts)
}

/// Stores events and resumes the waits they complete, inside the caller's transaction, in four statements
/// whatever their number (lock the keys, store, satisfy the waits, enqueue the resumes). Receipts in the order
/// of `events`. Every event must be valid ([`NewEvent::validate`]): one that is not fails the whole call.
async fn ingest_in(
    tx: &mut sqlx::PgConnection,
    jobs: &NodeJobs,
    events: &[NewEvent],
) -> Result<Vec<EventReceipt>, WorkflowError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    for event in events {
        event.validate()?;
    }
    let ids: Vec<String> = events
        .iter()
        .map(|event| {
            event
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
        })
        .collect();
    // Ordered by hash in the statement; deduplicated here only to send less.
    let mut keys: Vec<&str> = events.iter().map(|event| event.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query(sql::LOCK_KEYS)
        .bind(&keys)
        .execute(&mut *tx)
        .await?;

    // An id repeated inside the batch is stored by its first occurrence; the others are duplicates of it.
    let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(events.len());
    let mut offered = Vec::with_capacity(events.len());
    for (position, id) in ids.iter().enumerate() {
        if let Entry::Vacant(slot) = first_of.entry(id.as_str()) {
            slot.insert(position);
            offered.push(position);
        }
    }
    let column = |field: fn(&NewEvent) -> &str| -> Vec<&str> {
        offered.iter().map(|&p| field(&events[p])).collect()
    };
    let stored: Vec<(i64, String)> = sqlx::query_as(sql::INSERT_EVENTS)
        .bind(offered.iter().map(|&p| ids[p].as_str()).collect::<Vec<_>>())
        .bind(column(|event| &event.name))
        .bind(column(|event| &event.key))
        .bind(
            offered
                .iter()
                .map(|&p| &events[p].payload)
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
    // Row id → the position of the event stored as it; every other position is a duplicate.
    let mut stored_at: HashMap<i64, usize> = HashMap::with_capacity(stored.len());
    let mut fresh = vec![false; events.len()];
    for (row, id) in &stored {
        if let Some(&position) = first_of.get(id.as_str()) {
            stored_at.insert(*row, position);
            fresh[position] = true;
        }
    }
    let mut receipts: Vec<EventReceipt> = ids
        .into_iter()
        .zip(fresh)
        .map(|(event_id, fresh)| EventReceipt {
            event_id,
            duplicate: !fresh,
            resumed_runs: Vec::new(),
        })
        .collect();
    if stored.is_empty() {
        return Ok(receipts);
    }

    // The stored events in the order their ids were drawn (one statement, in batch order).
    let mut in_order: Vec<(i64, usize)> = stored_at.into_iter().collect();
    in_order.sort_unstable();
    let distinct = |field: fn(&NewEvent) -> &str| {
        let mut values: Vec<&str> = in_order.iter().map(|&(_, p)| field(&events[p])).collect();
        values.sort_unstable();
        values.dedup();
        values
    };
    let rows: Vec<i64> = in_order.iter().map(|&(row, _)| row).collect();
    let satisfied: Vec<SatisfiedWait> = sqlx::query_as(sql::SATISFY_WAITS)
        .bind(distinct(|event| &event.key))
        .bind(&rows)
        .bind(distinct(|event| &event.name))
        .fetch_all(&mut *tx)
        .await?;
    let mut resume_jobs = Vec::with_capacity(satisfied.len());
    let mut timers = Vec::new();
    for wait in satisfied {
        if let Some(position) = wait.completed_by(&in_order, events) {
            receipts[position].resumed_runs.push(wait.run_id);
        }
        let job = NodeJob::new(wait.run_id, wait.epoch, wait.node_id, Phase::Resume);
        resume_jobs.push(jobs.new_job(job, None));
        timers.extend(wait.timer_job_id);
    }
    jobs.enqueue(&mut *tx, &resume_jobs).await?;
    // The satisfied waits' timeouts have nothing left to do: they leave the queue with this event.
    jobs.cancel_timers(&mut *tx, &timers).await?;
    Ok(receipts)
}

impl Engine {
    /// Stores an event and resumes the waits it completes, in one transaction (shared with the events other
    /// callers hand in at the same moment: see [`EventBatches`]).
    pub async fn ingest_event(&self, mut event: NewEvent) -> Result<EventReceipt, WorkflowError> {
        event.validate()?;
        // Named before it joins a batch, so that whatever happens to the batch, it is this event.
        event
            .id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string());
        WorkflowError::from_batch(self.event_batches().events.call(event).await)
    }

    /// Stores events as [`Engine::ingest_event`] does, inside the caller's transaction (the Kafka bridge stores a
    /// batch's events with its offsets), in a fixed number of statements; receipts in the order given. Their keys
    /// stay locked until the transaction ends. Every event must be valid ([`NewEvent::validate`]), or the whole
    /// call fails.
    pub async fn ingest_events_in(
        &self,
        tx: &mut sqlx::PgConnection,
        events: &[NewEvent],
    ) -> Result<Vec<EventReceipt>, WorkflowError> {
        ingest_in(tx, &self.jobs, events).await
    }

    /// The `run` phase of a wait node: register the wait; finish at once if stored events already satisfy it,
    /// otherwise park the step and schedule the timeout.
    pub(super) async fn start_wait(
        &self,
        job: &NodeJob,
        run: &RunState,
        spec: &WaitSpec,
        next: &[String],
        scope: &minijinja::Value,
    ) -> Result<Step, JobError> {
        let key = match spec.key.eval_json(scope).map_err(JobError::permanent)? {
            Value::String(key) if !key.is_empty() => key,
            Value::Number(n) => n.to_string(),
            other => {
                return Err(JobError::permanent(format!(
                    "correlation key `{}` evaluated to {other}, not a string or number",
                    spec.key.source()
                )));
            }
        };
        let lookback = chrono::Duration::from_std(self.settings.event_lookback)
            .unwrap_or(chrono::Duration::zero());
        let since = run.created_at - lookback;
        let deadline = spec
            .timeout
            .and_then(|t| chrono::Duration::from_std(t).ok())
            .map(|t| Utc::now() + t);
        self.register_wait(job, spec, &key, since, deadline, next)
            .await
            .map_err(retryable)?;
        Ok(Step::Recorded)
    }

    async fn register_wait(
        &self,
        job: &NodeJob,
        spec: &WaitSpec,
        key: &str,
        since: chrono::DateTime<Utc>,
        deadline: Option<chrono::DateTime<Utc>>,
        next: &[String],
    ) -> Result<(), WorkflowError> {
        let mut tx = self.steps_pool.begin().await?;
        sqlx::query(sql::LOCK_KEY)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        // Park the step first: if another attempt already did, there is nothing to do. Its timer, if any, is
        // recorded below, once the wait is known to be waiting.
        if !job.park(&mut tx, None).await? {
            return Ok(());
        }
        let status: WaitStatus = job
            .step_query(sql::REGISTER_WAIT)
            .bind(key)
            .bind(&spec.events)
            .bind(spec.mode.as_str())
            .bind(spec.mode.needed(spec.events.len()))
            .bind(since)
            .bind(deadline)
            .fetch_one(&mut *tx)
            .await?
            .try_get("status")?;
        let mut ended = RunsEnded::none();
        if status == WaitStatus::Satisfied {
            let output = self.matched_events(&mut tx, job).await?;
            let done = FinishedStep {
                job: job.clone(),
                from: StepStatus::Waiting,
                outcome: "satisfied".into(),
                output,
                patch: Default::default(),
                inline: Vec::new(),
                deliveries: Vec::new(),
                next: next.to_vec(),
                trace_parent: crate::telemetry::current_traceparent(),
            };
            ended = finish_steps(&mut tx, &self.jobs, &[done]).await?;
        } else if let Some(deadline) = deadline {
            let timeout = NodeJob {
                phase: Phase::Timeout,
                ..job.clone()
            };
            let new = self.jobs.new_job(timeout, Some(deadline));
            let enqueued = self.jobs.enqueue(&mut tx, &[new]).await?;
            // Kept on the step, so that whatever ends the wait first takes the timeout job out of the queue.
            if let Some(timer) = enqueued.first() {
                job.step_query(sql::SET_STEP_TIMER)
                    .bind(timer.id())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        ended.count();
        Ok(())
    }

    /// The `resume` phase: an event satisfied the wait; finish with the matched events as output.
    pub(super) async fn wait_satisfied(
        &self,
        job: &NodeJob,
        next: &[String],
    ) -> Result<Step, JobError> {
        let mut conn = self
            .steps_pool
            .acquire()
            .await
            .map_err(|e| retryable(e.into()))?;
        let output = self
            .matched_events(&mut conn, job)
            .await
            .map_err(retryable)?;
        Ok(Step::done("satisfied", output, next))
    }

    /// The `timeout` phase: time the wait out unless an event satisfied it first, then follow `on_timeout`, or
    /// fail the node if there is none.
    pub(super) async fn time_out(
        &self,
        job: &NodeJob,
        node: &Node,
        spec: &WaitSpec,
    ) -> Result<(), WorkflowError> {
        let mut tx = self.steps_pool.begin().await?;
        let timed_out = job
            .step_query(sql::TIME_OUT_WAIT)
            .fetch_optional(&mut *tx)
            .await?;
        if timed_out.is_none() {
            return Ok(()); // satisfied (or cancelled) first
        }
        let ended;
        if spec.on_timeout.is_empty() {
            let message = format!(
                "timed out waiting for {} ({})",
                spec.events.join(", "),
                spec.mode.as_str()
            );
            ended = self.fail_node_in(&mut tx, job, node, &message).await?;
        } else {
            let output = self.matched_events(&mut tx, job).await?;
            let output = json!({ "timed_out": true, "events": output["events"] });
            let done = FinishedStep {
                job: job.clone(),
                from: StepStatus::Waiting,
                outcome: "timed_out".into(),
                output,
                patch: Default::default(),
                inline: Vec::new(),
                deliveries: Vec::new(),
                next: spec.on_timeout.clone(),
                trace_parent: crate::telemetry::current_traceparent(),
            };
            ended = finish_steps(&mut tx, &self.jobs, &[done]).await?;
        }
        tx.commit().await?;
        ended.count();
        Ok(())
    }

    async fn matched_events(
        &self,
        conn: &mut sqlx::PgConnection,
        job: &NodeJob,
    ) -> Result<Value, WorkflowError> {
        let row = job
            .step_query(sql::MATCHED_EVENTS)
            .fetch_one(&mut *conn)
            .await?;
        let events: Value = row.try_get("events")?;
        let ids: Value = row.try_get("event_ids")?;
        Ok(json!({ "events": events, "event_ids": ids }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_are_spelled_as_the_waits_table_stores_them() {
        for status in WaitStatus::ALL {
            // What sqlx writes is what it reads back: the same spelling.
            let mut sent = sqlx::postgres::PgArgumentBuffer::default();
            let _ = sqlx::Encode::<sqlx::Postgres>::encode_by_ref(&status, &mut sent);
            assert_eq!(&sent[..], status.as_str().as_bytes());
        }
        let quoted: Vec<String> = WaitStatus::ALL
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let check = format!("CHECK (status IN ({}))", quoted.join(", "));
        let migration = include_str!("../../migrations/0003_workflows.sql");
        let migration = migration.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(migration.contains(&check), "{check} not in the migration");
    }
}
