//! Starting runs: inserting them past their trigger (`insert_runs`), and single starts in batches.
//!
//! Each `POST /v1/workflows/{name}/runs` would otherwise cost a transaction of its own: the run's insert, its
//! first jobs' enqueue and a synchronous commit. Through a [`Coalescer`] (as single job enqueues do, see
//! `api::batcher`), starts that arrive while a batch is being written go out together in the next one: one
//! `START_RUNS` per workflow version in the batch, one enqueue, one commit. Each caller still gets its own
//! answer, and only after the commit, so "started" still means "stored". An idle system adds no delay.
//!
//! Idempotency keys keep their meaning: a key already taken (by an earlier run, or by another start in the same
//! batch) answers with the run that holds it, looked up after the commit. A batch the database refuses is
//! retried one start at a time, so one start's problem never fails another's.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use sqlx::PgPool;

use super::catalog::Catalog;
use super::definition::{Workflow, extract_trigger};
use super::inline::{self, RunId};
use super::{NodeJobs, WorkflowError, sql};
use crate::coalesce::{Coalescer, whole_or_each};

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
}

/// A start whose version is known and whose trigger data passed: ready to insert.
struct Checked {
    definition: Arc<Workflow>,
    context: Value,
    key: Option<String>,
    request_id: Option<String>,
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
        let answer = self
            .starts
            .call(start)
            .await
            .map_err(|stopped| WorkflowError::Io(stopped.to_string()))?;
        answer.map_err(|shared| Arc::try_unwrap(shared).unwrap_or_else(WorkflowError::Shared))
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
    let written = whole_or_each("run starts", &checked, |starts| commit(pool, jobs, starts)).await;
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
    let context = trigger_context(&definition, start.data, "data")?;
    Ok(Checked {
        definition,
        context,
        key: start.key,
        request_id: start.request_id,
    })
}

/// Starts `starts` in one transaction, grouped by workflow version; answers in order.
async fn commit(
    pool: &PgPool,
    jobs: &NodeJobs,
    starts: &[Checked],
) -> Result<Vec<Started>, WorkflowError> {
    let mut groups: HashMap<(&str, i32), Vec<usize>> = HashMap::new();
    for (position, start) in starts.iter().enumerate() {
        let version = (start.definition.name.as_str(), start.definition.version);
        groups.entry(version).or_default().push(position);
    }
    let mut created: Vec<Option<i64>> = vec![None; starts.len()];
    let mut tx = pool.begin().await?;
    for positions in groups.values() {
        let Some(&first) = positions.first() else {
            continue;
        };
        let definition = &starts[first].definition;
        let contexts = positions
            .iter()
            .map(|&p| starts[p].context.clone())
            .collect();
        let keys = positions.iter().map(|&p| starts[p].key.clone()).collect();
        let request_ids = positions
            .iter()
            .map(|&p| starts[p].request_id.clone())
            .collect();
        let inserted = insert_runs(&mut tx, jobs, definition, contexts, keys, request_ids).await?;
        for Inserted { id, position, .. } in inserted {
            if let Some(&start) = positions.get(position) {
                created[start] = Some(id);
            }
        }
    }
    tx.commit().await?;
    let mut answers = Vec::with_capacity(starts.len());
    for (start, created) in starts.iter().zip(created) {
        let version = start.definition.version;
        let answer = match (created, &start.key) {
            (Some(id), _) => Started::Created { id, version },
            // The key is taken, by an earlier run or by another start of this batch: that run is the answer
            // (committed: ours waited for it, or was it).
            (None, Some(key)) => {
                let (id, version) = sqlx::query_as(sql::FIND_RUN_BY_KEY)
                    .bind(&start.definition.name)
                    .bind(key)
                    .fetch_one(pool)
                    .await?;
                Started::Existing { id, version }
            }
            (None, None) => {
                return Err(WorkflowError::Io(
                    "a run without an idempotency key was not inserted".into(),
                ));
            }
        };
        answers.push(answer);
    }
    Ok(answers)
}

/// A run `insert_runs` started: its id, idempotency key, and position in the input (0-based).
pub(super) struct Inserted {
    pub id: i64,
    pub key: Option<String>,
    pub position: usize,
}

/// Inserts runs past their trigger and the pure nodes after it (see `inline.rs`), with their steps, and enqueues
/// the jobs of the nodes that come next, in the caller's transaction. A run whose idempotency key is taken is
/// skipped: only the runs inserted are returned.
pub(super) async fn insert_runs(
    conn: &mut sqlx::PgConnection,
    jobs: &NodeJobs,
    definition: &Workflow,
    mut contexts: Vec<Value>,
    keys: Vec<Option<String>>,
    request_ids: Vec<Option<String>>,
) -> Result<Vec<Inserted>, WorkflowError> {
    // The trigger node is done at start (see `trigger_context`): the walk begins at its successors.
    let mut first: Vec<String> = definition
        .node(&definition.trigger)
        .map(|trigger| trigger.next.clone())
        .unwrap_or_default();
    first.sort();
    first.dedup();
    let run_vars = json!({ "workflow": definition.name, "version": definition.version });
    let (mut done, mut next) = (Vec::new(), Vec::new());
    for context in &mut contexts {
        let walk = inline::walk(definition, context, &run_vars, RunId::NotYet, first.clone());
        done.push(json!(walk.steps));
        next.push(json!(walk.next));
    }
    let runs: Vec<(i64, Option<String>, Value, i64)> = sqlx::query_as(sql::START_RUNS)
        .bind(&definition.name)
        .bind(definition.version)
        .bind(contexts)
        .bind(keys)
        .bind(request_ids)
        .bind(done)
        .bind(next)
        .bind(&definition.trigger)
        .fetch_all(&mut *conn)
        .await?;
    let mut first_jobs = Vec::with_capacity(runs.len());
    for (id, _, next, _) in &runs {
        for node in next
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            first_jobs.push((*id, 1, node.to_string()));
        }
    }
    jobs.enqueue_run_phase(conn, first_jobs).await?;
    Ok(runs
        .into_iter()
        .map(|(id, key, _, ord)| Inserted {
            id,
            key,
            position: usize::try_from(ord - 1).unwrap_or(usize::MAX),
        })
        .collect())
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
