//! Finishing steps, many at a time.
//!
//! Every finished node records its step, merges its output into its run and enqueues the next nodes. Done one
//! node at a time that is a transaction of four round trips per node, and the benchmark showed the database's
//! CPU, not the disk, was the limit. So node handlers hand their finished steps to one committer task per
//! process, which finishes everything that has arrived while its previous flush ran in **one** `FINISH_STEPS`
//! statement and one enqueue, in one transaction: the group commit the queue's completer does for acks. Each
//! handler waits for its own step's outcome, so "the node finished" still means "its effect is committed".
//!
//! A batch the database refuses (a deadlock with another process's batch, say) is retried one step at a time,
//! so one step's problem never fails another's.

use serde_json::{Map, Value};
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::{NodeJob, NodeJobs, WorkflowError, sql};

/// Most steps one flush takes.
const MAX_BATCH: usize = 512;

/// A node's outcome, ready to record.
pub(super) struct FinishedStep {
    pub job: NodeJob,
    /// The status the step must be in: `pending`, or `waiting` for a resumed node.
    pub from: &'static str,
    pub outcome: String,
    pub output: Value,
    /// Top-level context keys to set (transforms; the trigger's extracted data).
    pub patch: Map<String, Value>,
    pub next: Vec<String>,
}

/// Finishes `steps` inside the caller's transaction: one statement for all of them, then one enqueue for the
/// next nodes that statement inserted (a node two edges reach is inserted, and enqueued, once).
pub(super) async fn finish_steps(
    conn: &mut sqlx::PgConnection,
    jobs: &NodeJobs,
    steps: &[FinishedStep],
) -> Result<(), WorkflowError> {
    let rows = sqlx::query(sql::FINISH_STEPS)
        .bind(steps.iter().map(|s| s.job.run).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.job.epoch).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|s| s.job.node.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|s| s.from).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.outcome.as_str()).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| &s.output).collect::<Vec<_>>())
        .bind(
            steps
                .iter()
                .map(|s| Value::Object(s.patch.clone()))
                .collect::<Vec<_>>(),
        )
        .bind(
            steps
                .iter()
                .map(|s| serde_json::json!(s.next))
                .collect::<Vec<_>>(),
        )
        .bind(steps.iter().map(|s| s.job.attempt).collect::<Vec<_>>())
        .bind(steps.iter().map(|s| s.job.started_at).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
    let next = rows
        .iter()
        .map(|row| {
            Ok((
                row.try_get("run_id")?,
                row.try_get("epoch")?,
                row.try_get("node_id")?,
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    jobs.enqueue_run_phase(conn, next).await
}

struct Request {
    step: FinishedStep,
    reply: oneshot::Sender<Result<(), WorkflowError>>,
}

/// The handle node handlers finish their steps through.
pub(super) struct StepCommitter {
    sender: mpsc::UnboundedSender<Request>,
}

impl StepCommitter {
    /// Starts the committer task; it stops when the handle is dropped.
    pub(super) fn start(pool: PgPool, jobs: NodeJobs) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(receiver, pool, jobs));
        Self { sender }
    }

    /// Records a finished step (and enqueues its next nodes); returns once that is committed.
    pub(super) async fn finish(&self, step: FinishedStep) -> Result<(), WorkflowError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Request { step, reply })
            .map_err(|_| WorkflowError::Io("the step committer has stopped".into()))?;
        answer
            .await
            .map_err(|_| WorkflowError::Io("the step committer dropped a step".into()))?
    }
}

async fn run(mut receiver: mpsc::UnboundedReceiver<Request>, pool: PgPool, jobs: NodeJobs) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        // Take what has queued up while the previous flush ran; never wait for more.
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        flush(&pool, &jobs, batch).await;
    }
}

async fn flush(pool: &PgPool, jobs: &NodeJobs, mut batch: Vec<Request>) {
    // The same order in every process makes lock waits between concurrent batches less likely to deadlock.
    batch.sort_by(|a, b| {
        (a.step.job.run, &a.step.job.node).cmp(&(b.step.job.run, &b.step.job.node))
    });
    let (steps, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|r| (r.step, r.reply)).unzip();
    match commit(pool, jobs, &steps).await {
        Ok(()) => {
            for reply in replies {
                let _ = reply.send(Ok(()));
            }
        }
        Err(error) if steps.len() == 1 => {
            let _ = replies
                .into_iter()
                .next()
                .map(|reply| reply.send(Err(error)));
        }
        Err(error) => {
            tracing::warn!(%error, steps = steps.len(), "a batch of steps failed; finishing them one by one");
            for (step, reply) in steps.iter().zip(replies) {
                let _ = reply.send(commit(pool, jobs, std::slice::from_ref(step)).await);
            }
        }
    }
}

async fn commit(
    pool: &PgPool,
    jobs: &NodeJobs,
    steps: &[FinishedStep],
) -> Result<(), WorkflowError> {
    let mut tx = pool.begin().await?;
    finish_steps(&mut tx, jobs, steps).await?;
    tx.commit().await?;
    Ok(())
}
