//! Starting runs: inserting them past their trigger (`insert_runs`), and single starts in batches.
//!
//! Each `POST /v1/workflows/{name}/runs` would otherwise cost a transaction of its own: the run's insert, its
//! first jobs' enqueue and a synchronous commit. Through a [`Coalescer`] (as single job enqueues do, see
//! `api::batcher`), starts that arrive while a batch is being written go out together in the next one: one
//! `START_RUNS` per workflow version in the batch, one enqueue, one commit. Each caller still gets its own
//! answer, and only after the commit, so "started" still means "stored". An idle system adds no delay.
//!
//! Idempotency keys keep their meaning: a key already taken (by an earlier run, or by another start in the same
//! batch) answers with the run that holds it, looked up inside the transaction, so every answer is known before
//! the commit. A batch that fails before its commit is retried one start at a time, so one start's problem never
//! fails another's; one whose commit failed is not retried (it may be stored: see `coalesce::whole_or_each_once`).
//! Every statement runs under the batch writers' deadline (`db::begin_bounded`), so a lock held elsewhere cannot
//! hold a batch and its callers forever.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};
use sqlx::PgPool;

use super::catalog::Catalog;
use super::definition::{Workflow, extract_trigger};
use super::inline::{self, RunId};
use super::metrics;
use super::{NodeJobs, WorkflowError, sql};
use crate::coalesce::{Coalescer, Failed, whole_or_each_once};
use crate::db;

/// Most starts one batch writes.
const MAX_BATCH: usize = 256;
/// Batches being written at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// The outcome of starting a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// A new run, on this version.
    Created { id: i64, version: i32 },
    /// The idempotency key already started this run.
    Existing { id: i64, version: i32 },
}

/// One run to start: the workflow (its latest version runs), the trigger data, and its keys.
pub(super) struct RunStart {
    pub workflow: String,
    pub data: Value,
    pub key: Option<String>,
    pub request_id: Option<String>,
    /// The recipient the run is for (`"recipient": "<id>"` in the trigger request).
    pub recipient: Option<String>,
    /// The caller's trace (captured in its span: the batch runs in a task of its own).
    pub trace_parent: Option<String>,
}

/// A start whose version is known and whose trigger data passed, with its work done: ready to insert.
struct Checked {
    definition: Arc<Workflow>,
    run: NewRun,
}

type Answer = Result<Started, Arc<WorkflowError>>;

/// The batching handle of one process.
pub(super) struct StartBatches {
    starts: Coalescer<RunStart, Answer>,
}

impl StartBatches {
    /// Starts the background task (inside the runtime); it stops when this is dropped. `pool` commits
    /// synchronously: a caller told its run started must find it after a crash.
    pub(super) fn start(pool: PgPool, jobs: NodeJobs, catalog: Catalog) -> Self {
        let starts = Coalescer::start(MAX_BATCH, BATCHES_IN_FLIGHT, move |batch: Vec<RunStart>| {
            let (pool, jobs, catalog) = (pool.clone(), jobs.clone(), catalog.clone());
            async move { write(&pool, &jobs, &catalog, batch).await }
        });
        Self { starts }
    }

    /// Starts the run through the next batch; returns once it is committed.
    pub(super) async fn start_run(&self, start: RunStart) -> Result<Started, WorkflowError> {
        WorkflowError::from_batch(self.starts.call(start).await)
    }
}

/// Checks each start against its workflow's latest version (one lookup for the batch), then inserts the ones
/// that passed; answers in order.
async fn write(
    pool: &PgPool,
    jobs: &NodeJobs,
    catalog: &Catalog,
    batch: Vec<RunStart>,
) -> Vec<Answer> {
    let mut names: Vec<&str> = batch.iter().map(|s| s.workflow.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let latest = match catalog.latest_versions(&names).await {
        Ok(latest) => latest,
        Err(error) => {
            let error = Arc::new(error);
            return batch.iter().map(|_| Err(Arc::clone(&error))).collect();
        }
    };
    let mut answers: Vec<Option<Answer>> = Vec::with_capacity(batch.len());
    let (mut checked, mut positions) = (Vec::new(), Vec::new());
    for (position, start) in batch.into_iter().enumerate() {
        match check(catalog, &latest, start).await {
            Ok(ready) => {
                answers.push(None);
                checked.push(ready);
                positions.push(position);
            }
            Err(error) => answers.push(Some(Err(Arc::new(error)))),
        }
    }
    let written = if checked.is_empty() {
        Vec::new()
    } else {
        whole_or_each_once("run starts", &checked, |starts| commit(pool, jobs, starts)).await
    };
    for (position, answer) in positions.into_iter().zip(written) {
        answers[position] = Some(answer);
    }
    answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| {
                Err(Arc::new(WorkflowError::Io(
                    "a run start was not answered".into(),
                )))
            })
        })
        .collect()
}

/// The start's latest version, and its trigger data checked against it.
async fn check(
    catalog: &Catalog,
    latest: &HashMap<String, i32>,
    start: RunStart,
) -> Result<Checked, WorkflowError> {
    let version = latest
        .get(&start.workflow)
        .ok_or_else(|| WorkflowError::NotFound(format!("workflow {}", start.workflow)))?;
    let definition = catalog.version(&start.workflow, *version).await?;
    let mut context = trigger_context(&definition, start.data, "data")?;
    if let Some(recipient) = &start.recipient {
        for_recipient(&mut context, recipient);
    }
    let mut run = prepare(&definition, context, start.key, start.request_id);
    run.trace_parent = start.trace_parent;
    Ok(Checked { definition, run })
}

/// Starts `starts` in one transaction; answers in order. Workflow versions, and the runs within one, are
/// inserted in a fixed order (by name and version, then by idempotency key), so two batches never wait on each
/// other's keys in a cycle. Every answer is known before the commit: a key taken by an earlier run (whose
/// transaction ours waited for) or by another start of this batch is looked up inside the transaction.
async fn commit(
    pool: &PgPool,
    jobs: &NodeJobs,
    starts: &[Checked],
) -> Result<Vec<Started>, Failed<WorkflowError>> {
    // In order of version, then of key.
    let mut groups: BTreeMap<(&str, i32), Vec<usize>> = BTreeMap::new();
    for (position, start) in starts.iter().enumerate() {
        let version = (start.definition.name.as_str(), start.definition.version);
        groups.entry(version).or_default().push(position);
    }
    for positions in groups.values_mut() {
        positions.sort_by(|&a, &b| starts[a].run.key.cmp(&starts[b].run.key));
    }
    let before = Failed::BeforeCommit;
    let mut answers: Vec<Option<Started>> = vec![None; starts.len()];
    let mut counts = Vec::with_capacity(groups.len());
    let mut tx = db::begin_bounded(pool, &[])
        .await
        .map_err(|e| before(e.into()))?;
    for ((name, version), positions) in &groups {
        let Some(&first) = positions.first() else {
            continue;
        };
        let runs: Vec<&NewRun> = positions.iter().map(|&p| &starts[p].run).collect();
        let (inserted, started) = insert_runs(&mut tx, jobs, &starts[first].definition, &runs)
            .await
            .map_err(before)?;
        counts.push(started);
        for Inserted { id, position, .. } in inserted {
            if let Some(&start) = positions.get(position) {
                answers[start] = Some(Started::Created {
                    id,
                    version: *version,
                });
            }
        }
        // The keys that were taken: those runs are the answers.
        let taken: Vec<&str> = positions
            .iter()
            .filter(|&&p| answers[p].is_none())
            .filter_map(|&p| starts[p].run.key.as_deref())
            .collect();
        if taken.is_empty() {
            continue;
        }
        let holders = runs_holding(&mut tx, name, &taken)
            .await
            .map_err(|e| before(e.into()))?;
        for &p in positions {
            if answers[p].is_none()
                && let Some(&(id, version)) =
                    starts[p].run.key.as_ref().and_then(|k| holders.get(k))
            {
                answers[p] = Some(Started::Existing { id, version });
            }
        }
    }
    let answers: Vec<Started> = answers.into_iter().collect::<Option<_>>().ok_or_else(|| {
        before(WorkflowError::Io(
            "a run start was neither inserted nor found by its key".into(),
        ))
    })?;
    tx.commit().await.map_err(|e| Failed::AtCommit(e.into()))?;
    counts.into_iter().for_each(RunsStarted::count);
    Ok(answers)
}

/// The runs of `workflow` holding these idempotency keys, by key: (id, version). Inside the transaction that
/// tried to take the keys, so a key taken by a transaction it waited for, or by itself, is found.
pub(super) async fn runs_holding(
    conn: &mut sqlx::PgConnection,
    workflow: &str,
    keys: &[&str],
) -> Result<HashMap<String, (i64, i32)>, sqlx::Error> {
    let holders: Vec<(String, i64, i32)> = sqlx::query_as(sql::FIND_RUNS_BY_KEYS)
        .bind(workflow)
        .bind(keys)
        .fetch_all(conn)
        .await?;
    Ok(holders
        .into_iter()
        .map(|(key, id, version)| (key, (id, version)))
        .collect())
}

/// A run `insert_runs` started: its id, idempotency key, and position in the input (0-based).
pub(super) struct Inserted {
    pub id: i64,
    pub key: Option<String>,
    pub position: usize,
}

/// A run ready to insert: its context holds the work of its trigger and of the pure nodes after it.
pub(super) struct NewRun {
    context: Value,
    /// The pure nodes completed at start (`inline::InlineStep`s), and the nodes to run as jobs: JSON arrays.
    done: Value,
    next: Value,
    pub key: Option<String>,
    request_id: Option<String>,
    /// The recipient it is for (from the context's `recipient.id`, see [`for_recipient`]).
    recipient: Option<String>,
    /// The trace its first node jobs continue.
    pub trace_parent: Option<String>,
}

/// Evaluates the pure nodes after the trigger (see `inline.rs`) for a new run whose `context` came from
/// [`trigger_context`]. CPU work only: callers do it before their transaction opens where they can.
pub(super) fn prepare(
    definition: &Workflow,
    mut context: Value,
    key: Option<String>,
    request_id: Option<String>,
) -> NewRun {
    // The trigger node is done at start (see `trigger_context`): the walk begins at its successors.
    let mut first: Vec<String> = definition
        .node(&definition.trigger)
        .map(|trigger| trigger.next.clone())
        .unwrap_or_default();
    first.sort();
    first.dedup();
    let run_vars = json!({ "workflow": definition.name, "version": definition.version });
    let walk = inline::walk(definition, &mut context, &run_vars, RunId::NotYet, first);
    let recipient = context
        .pointer("/recipient/id")
        .and_then(Value::as_str)
        .map(str::to_string);
    NewRun {
        recipient,
        context,
        done: json!(walk.steps),
        next: json!(walk.next),
        key,
        request_id,
        trace_parent: crate::telemetry::current_traceparent(),
    }
}

/// Inserts prepared runs with their steps, and enqueues the jobs of the nodes that come next, in the caller's
/// transaction. A run whose idempotency key is taken is skipped: only the runs inserted are returned.
pub(super) async fn insert_runs(
    conn: &mut sqlx::PgConnection,
    jobs: &NodeJobs,
    definition: &Workflow,
    runs: &[&NewRun],
) -> Result<(Vec<Inserted>, RunsStarted), WorkflowError> {
    let rows: Vec<(i64, Option<String>, Value, i64)> = sqlx::query_as(sql::START_RUNS)
        .bind(&definition.name)
        .bind(definition.version)
        .bind(runs.iter().map(|r| &r.context).collect::<Vec<_>>())
        .bind(runs.iter().map(|r| r.key.as_deref()).collect::<Vec<_>>())
        .bind(
            runs.iter()
                .map(|r| r.request_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(runs.iter().map(|r| &r.done).collect::<Vec<_>>())
        .bind(runs.iter().map(|r| &r.next).collect::<Vec<_>>())
        .bind(&definition.trigger)
        .bind(
            runs.iter()
                .map(|r| r.recipient.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
    let mut first_jobs = Vec::with_capacity(rows.len());
    for (id, _, next, ord) in &rows {
        let trace = usize::try_from(ord - 1)
            .ok()
            .and_then(|i| runs.get(i))
            .and_then(|run| run.trace_parent.clone());
        for node in next
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            first_jobs.push((*id, 1, node.to_string(), trace.clone()));
        }
    }
    jobs.enqueue_run_phase(conn, first_jobs).await?;
    // What the statement did, for the metrics: counted by the caller once its transaction commits.
    let mut started = RunsStarted {
        workflow: definition.name.clone(),
        runs: rows.len() as u64,
        ..RunsStarted::default()
    };
    for (_, _, next, ord) in &rows {
        let run = usize::try_from(ord - 1).ok().and_then(|i| runs.get(i));
        // A run with nothing left to run completed here.
        started.completed += u64::from(next.as_array().is_some_and(Vec::is_empty));
        // The trigger and the pure nodes evaluated with it (`done`), for the inserted runs only (a taken key's run
        // was never started).
        started.nodes.push("trigger");
        for step in run.and_then(|r| r.done.as_array()).into_iter().flatten() {
            let node = step
                .get("node")
                .and_then(Value::as_str)
                .and_then(|id| definition.node(id));
            if let Some(node) = node {
                started.nodes.push(node.kind.name());
            }
        }
    }
    let inserted = rows
        .into_iter()
        .map(|(id, key, _, ord)| Inserted {
            id,
            key,
            position: usize::try_from(ord - 1).unwrap_or(usize::MAX),
        })
        .collect();
    Ok((inserted, started))
}

/// The runs a start statement inserted, to count in the metrics once the caller's transaction commits (a batch
/// that fails and is retried start by start must not count twice).
#[derive(Debug, Default)]
#[must_use = "count the started runs after the commit"]
pub(super) struct RunsStarted {
    workflow: String,
    runs: u64,
    /// Of them, completed at once (nothing after the trigger and its pure nodes).
    completed: u64,
    /// The kinds of the nodes run at start (each trigger, and the pure nodes after it).
    nodes: Vec<&'static str>,
}

impl RunsStarted {
    pub(super) fn count(self) {
        metrics::runs_started(&self.workflow, self.runs);
        for _ in 0..self.completed {
            metrics::run_finished(&self.workflow, "completed");
        }
        for kind in self.nodes {
            metrics::node_executed(kind, "completed");
        }
    }
}

/// Makes a new run's context one for a recipient: `recipient.id` in expressions and templates, the run's
/// recipient column (what an erase finds), and the default `to` of its actions.
pub(super) fn for_recipient(context: &mut Value, recipient: &str) {
    if let Some(object) = context.as_object_mut() {
        object.insert("recipient".into(), json!({ "id": recipient }));
    }
}

/// Checks trigger data against the trigger's fields (problems named under `prefix`) and builds a new run's
/// context, with the trigger node already run: the run starts past its trigger. Bad input is refused before
/// anything is stored.
///
/// The trigger node's whole work is this extraction (defaults filled in, only the declared fields kept), and
/// its data was already checked here, so running it as a node job of its own only cost a claim, a step read, a
/// step write and an ack per run. The context is exactly what that job produced: the extracted data as
/// `trigger` and as the trigger node's output.
pub(super) fn trigger_context(
    definition: &Workflow,
    data: Value,
    prefix: &str,
) -> Result<Value, WorkflowError> {
    let extracted = extract_trigger(definition.trigger_fields(), &data).map_err(|problems| {
        let fields = problems
            .into_iter()
            .map(|(f, m)| (format!("{prefix}.{f}"), m));
        WorkflowError::InvalidInput(fields.collect())
    })?;
    let mut nodes = serde_json::Map::new();
    nodes.insert(definition.trigger.clone(), extracted.clone());
    Ok(json!({ "trigger": extracted, "nodes": nodes }))
}
