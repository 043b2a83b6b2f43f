//! Topic fan-out: one run per member of a topic, for topics of any size.
//!
//! A topic trigger (`POST /v1/workflows/{name}/runs` with `"topic"`) checks the workflow and the trigger data,
//! stores a `herald_fanouts` row and enqueues one [`FanoutJob`], all in one transaction, and answers at once with
//! the fan-out's id. Each fan-out job then writes pages for up to [`JOB_BUDGET`], each page in one transaction:
//! 1. locks the fan-out row (a second copy of the job waits, then finds the cursor moved);
//! 2. reads the next page of members after `cursor` (in id order, by the topic's primary key);
//! 3. starts their runs with the idempotency key `fanout:<id>:<member>`: a member's run is made once however
//!    often a page is written;
//! 4. moves the cursor and the run count and, on the job's last page, enqueues the next job (at the highest
//!    priority, ahead of the node jobs the pages made), or marks the fan-out completed.
//!
//! A worker killed mid-page rolls the page back; the job is retried from the cursor the committed pages left. No
//! transaction holds more than one page, and each job ends within its budget, so the worker's other queues and a
//! graceful stop never wait long for it.
//! Members added after their place in the order was passed are not included; members removed before it are not.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;

use super::starts::{RunsStarted, for_recipient, insert_runs, prepare, trigger_context};
use super::{Engine, WorkflowError, sql};
use crate::queue::{Job, JobError, JobKind, NewJob, Priority};
use crate::recipients::store;

/// Members started per fan-out job (one transaction).
pub const PAGE: i64 = 500;

/// How long one fan-out job writes pages before it hands over to the next job (so a worker's stop, or other work
/// of the same priority, never waits long for it), and the most pages it writes.
const JOB_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);
const PAGES_PER_JOB: usize = 100;

/// The largest trigger data a fan-out takes (as JSON): each member's run stores it, so a page holds it a thousand
/// times over.
pub const MAX_DATA_BYTES: usize = 64 * 1024;

/// Expands the next page of a fan-out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutJob {
    pub fanout: i64,
}

impl Job for FanoutJob {
    const KIND: &'static str = "herald.workflow.fanout";
}

/// A fan-out's progress (`GET /v1/fanouts/{id}`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Fanout {
    pub id: i64,
    pub workflow: String,
    pub topic: String,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// Runs started so far.
    pub runs: i64,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a topic trigger did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanoutStarted {
    Created(i64),
    /// The idempotency key had started this fan-out already.
    Existing(i64),
}

impl FanoutStarted {
    pub fn id(self) -> i64 {
        match self {
            Self::Created(id) | Self::Existing(id) => id,
        }
    }
}

/// The row a fan-out job works from.
#[derive(sqlx::FromRow)]
struct Progress {
    workflow: String,
    topic: String,
    data: Json<Value>,
    cursor: Option<String>,
    request_id: Option<String>,
}

impl Engine {
    /// Starts a fan-out of `workflow` to `topic`'s members once stored, or (an idempotency key that already
    /// started one) answers that one. The workflow and the data are checked now (404, 422), not by the jobs.
    pub async fn start_fanout(
        &self,
        workflow: &str,
        topic: &str,
        data: Value,
        idempotency_key: Option<String>,
        request_id: Option<String>,
    ) -> Result<FanoutStarted, WorkflowError> {
        if data.to_string().len() > MAX_DATA_BYTES {
            let message =
                format!("a topic trigger's data is at most {MAX_DATA_BYTES} bytes as JSON");
            return Err(WorkflowError::InvalidInput(vec![("data".into(), message)]));
        }
        let definition = self.catalog.latest(workflow).await?;
        trigger_context(&definition, data.clone(), "data")?;
        let mut tx = crate::db::begin_bounded(&self.pool, &[]).await?;
        let id: Option<i64> = sqlx::query_scalar(sql::INSERT_FANOUT)
            .bind(workflow)
            .bind(topic)
            .bind(Json(&data))
            .bind(request_id.as_deref())
            .bind(idempotency_key.as_deref())
            .fetch_optional(&mut *tx)
            .await?;
        let started = match (id, idempotency_key.as_deref()) {
            (Some(id), _) => {
                self.enqueue_page(&mut tx, id).await?;
                FanoutStarted::Created(id)
            }
            // The key's insert waited for the transaction that took it, so its fan-out is visible now.
            (None, Some(key)) => FanoutStarted::Existing(
                sqlx::query_scalar(sql::FANOUT_BY_KEY)
                    .bind(workflow)
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?,
            ),
            (None, None) => {
                return Err(WorkflowError::Io(
                    "a fan-out without a key was not stored".into(),
                ));
            }
        };
        tx.commit().await?;
        Ok(started)
    }

    /// A fan-out's progress.
    pub async fn fanout(&self, id: i64) -> Result<Fanout, WorkflowError> {
        sqlx::query_as(sql::GET_FANOUT)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("fan-out {id}")))
    }

    async fn enqueue_page(
        &self,
        conn: &mut sqlx::PgConnection,
        id: i64,
    ) -> Result<(), WorkflowError> {
        let payload = serde_json::to_value(FanoutJob { fanout: id })
            .map_err(|e| WorkflowError::Io(e.to_string()))?;
        let kind = JobKind::parse(FanoutJob::KIND).map_err(crate::queue::QueueError::from)?;
        // Ahead of the node jobs on the same queue: each page enqueues a thousand of them, and the next page
        // must not wait behind them (creating runs is the fan-out's own work; running them is everyone's).
        let priority =
            Priority::new(i64::from(Priority::MAX)).map_err(crate::queue::QueueError::from)?;
        let job = NewJob::new(self.jobs.queue.clone(), kind, payload)
            .max_attempts(self.jobs.max_attempts)
            .priority(priority);
        crate::queue::enqueue_many(conn, &self.jobs.defaults, &[job]).await?;
        Ok(())
    }

    /// One page of a fan-out (see the module docs).
    pub(super) async fn fanout_page(
        &self,
        job: FanoutJob,
        ctx: crate::queue::JobContext,
    ) -> Result<(), JobError> {
        // Pages, each its own transaction, until the job's time budget is spent; the last one written enqueues
        // the next job. (A page per job would pace the fan-out by the node jobs its pages enqueued, which a worker
        // has already claimed ahead of the next page job.)
        let began = std::time::Instant::now();
        let mut pages = 0;
        let error = loop {
            pages += 1;
            let hand_over = began.elapsed() >= JOB_BUDGET || pages >= PAGES_PER_JOB;
            match self.write_page(job.fanout, hand_over).await {
                Ok(Some((counted, more))) => {
                    counted.count();
                    if !more || hand_over {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(error) => break error,
            }
        };
        // The workflow was deleted, the data no longer fits its latest version, or the last attempt failed: the
        // fan-out fails (and says why), rather than stay `running` with no job left to move it.
        let gives_up = matches!(
            error,
            WorkflowError::NotFound(_) | WorkflowError::InvalidInput(_)
        ) || ctx.attempt >= ctx.max_attempts;
        if !gives_up {
            return Err(JobError::retry(error.to_string()));
        }
        sqlx::query(sql::FAIL_FANOUT)
            .bind(job.fanout)
            .bind(error.to_string())
            .execute(&self.pool)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        Err(JobError::permanent(error.to_string()))
    }

    /// Writes the next page; answers its runs and whether members are left, or `None` if the fan-out is over.
    /// `hand_over`: enqueue the next page's job in the page's transaction.
    async fn write_page(
        &self,
        id: i64,
        hand_over: bool,
    ) -> Result<Option<(RunsStarted, bool)>, WorkflowError> {
        let mut tx = crate::db::begin_bounded(&self.pool, &[]).await?;
        let progress: Option<Progress> = sqlx::query_as(sql::LOCK_FANOUT)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(progress) = progress else {
            return Ok(None);
        };
        let members =
            store::members(&mut *tx, &progress.topic, progress.cursor.as_deref(), PAGE).await?;
        let Some(last) = members.last().cloned() else {
            finish(&mut tx, id, None, 0, true).await?;
            tx.commit().await?;
            return Ok(None);
        };
        let definition = self.catalog.latest(&progress.workflow).await?;
        let context = trigger_context(&definition, progress.data.0, "data")?;
        let runs: Vec<_> = members
            .iter()
            .map(|member| {
                let mut context = context.clone();
                for_recipient(&mut context, member);
                let key = format!("fanout:{id}:{member}");
                prepare(&definition, context, Some(key), progress.request_id.clone())
            })
            .collect();
        let refs: Vec<_> = runs.iter().collect();
        let (inserted, started) = insert_runs(&mut tx, &self.jobs, &definition, &refs).await?;
        let last_page = (members.len() as i64) < PAGE;
        finish(&mut tx, id, Some(&last), inserted.len() as i64, last_page).await?;
        if !last_page && hand_over {
            self.enqueue_page(&mut tx, id).await?;
        }
        tx.commit().await?;
        Ok(Some((started, !last_page)))
    }
}

/// Moves a fan-out's cursor past a page and counts its runs; `done` completes it.
async fn finish(
    conn: &mut sqlx::PgConnection,
    id: i64,
    cursor: Option<&str>,
    runs: i64,
    done: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql::ADVANCE_FANOUT)
        .bind(id)
        .bind(cursor)
        .bind(runs)
        .bind(done)
        .execute(conn)
        .await?;
    Ok(())
}
