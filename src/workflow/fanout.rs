//! Topic fan-out: one run per member of a topic, for topics of any size.
//!
//! A topic trigger (`POST /v1/workflows/{name}/runs` with `"topic"`) checks the workflow and the trigger data,
//! stores a `herald_fanouts` row with one lane (the whole topic) and enqueues that lane's [`FanoutJob`], all in
//! one transaction, and answers at once with the fan-out's id.
//!
//! **Lanes.** A lane is a range of the topic's member ids with its own cursor and its own chain of jobs. The first
//! job of a topic larger than [`SPLIT_ABOVE`] cuts it into `workflows.fanout_lanes` ranges of equal size and
//! enqueues a job for each new lane, so that many transactions write pages at once: one writer, a transaction at
//! a time, is bounded by a core; the lanes of a large fan-out are shared by every worker serving the queue.
//!
//! **Pages.** Each lane job writes pages for up to [`JOB_BUDGET`], each page in one transaction:
//! 1. locks its lane's row (a second copy of the job waits, then finds the cursor moved);
//! 2. reads the next page of members after the lane's cursor, up to its upper bound, by the topic's primary key;
//! 3. starts their runs with the idempotency key `fanout:<id>:<member>`: a member's run is made once however
//!    often a page is written;
//! 4. moves the cursor and the lane's run count and, on the job's last page, enqueues the lane's next job (at the
//!    highest priority, ahead of the node jobs the pages made); a lane's last page marks it done, and the last lane
//!    done completes the fan-out.
//!
//! The lanes partition the member ids and each cursor moves in the transaction that wrote its page, so every
//! member gets exactly one run. A worker killed mid-page rolls the page back; the job is retried from the cursor
//! the committed pages left. No transaction holds more than one page, and each job ends within its budget, so the
//! worker's other queues and a graceful stop never wait long for it.
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

/// A topic is cut into lanes only above this many members (ten pages): below, one writer is done in a moment.
pub const SPLIT_ABOVE: i64 = 10 * PAGE;

/// A split counts the topic's members no further than this (the count reads each one): a larger topic is cut as
/// if it had this many, and its last lane takes the rest.
const SPLIT_COUNT_CAP: i64 = 10_000_000;

/// The statement deadline of the split's transaction: counting and cutting the topic reads its members twice
/// over (measured: 0.5 s for a million), longer than a page's statements may take.
const SPLIT_DEADLINE: &str = "statement_timeout TO '60s'";

/// Expands the next pages of one lane of a fan-out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutJob {
    pub fanout: i64,
    /// The lane (0: the first, and the only one a fan-out had before lanes; a job queued then has no field).
    #[serde(default)]
    pub lane: i32,
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

/// The fan-out and lane a page is written from (`LOCK_LANE`).
#[derive(sqlx::FromRow)]
struct Progress {
    workflow: String,
    topic: String,
    data: Json<Value>,
    request_id: Option<String>,
    cursor: Option<String>,
    upper: Option<String>,
    /// How many lanes the fan-out has.
    lanes: i64,
}

impl Progress {
    /// A fan-out that was never split nor paged: the only lane is the whole topic, untouched.
    fn unsplit(&self) -> bool {
        self.lanes == 1 && self.cursor.is_none() && self.upper.is_none()
    }
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
                sqlx::query(sql::INSERT_FIRST_LANE)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                self.enqueue_lane(&mut tx, id, 0).await?;
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

    /// Enqueues the next job of lane `lane` of fan-out `id`.
    async fn enqueue_lane(
        &self,
        conn: &mut sqlx::PgConnection,
        id: i64,
        lane: i32,
    ) -> Result<(), WorkflowError> {
        let payload = serde_json::to_value(FanoutJob { fanout: id, lane })
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

    /// One job of a fan-out lane (see the module docs).
    pub(super) async fn fanout_page(
        &self,
        job: FanoutJob,
        ctx: crate::queue::JobContext,
    ) -> Result<(), JobError> {
        // Pages, each its own transaction, until the job's time budget is spent; the last one written enqueues
        // the next job. (A page per job would pace the fan-out by the node jobs its pages enqueued, which a worker
        // has already claimed ahead of the next page job.)
        let began = std::time::Instant::now();
        if job.lane == 0
            && let Err(error) = self.prepare_lanes(job.fanout).await
        {
            // The lanes are a speed-up: without them lane 0 covers the whole topic. Its first page then moves the
            // cursor, so the split is not tried again.
            tracing::warn!(fanout = job.fanout, %error, "fan-out: cutting the topic into lanes failed; one lane");
        }
        let mut pages = 0;
        let error = loop {
            pages += 1;
            let hand_over = began.elapsed() >= JOB_BUDGET || pages >= PAGES_PER_JOB;
            match self.write_page(job.fanout, job.lane, hand_over).await {
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

    /// Writes lane `lane`'s next page; answers its runs and whether the lane has members left, or `None` if the
    /// lane (or the fan-out) is over. `hand_over`: enqueue the lane's next job in the page's transaction.
    async fn write_page(
        &self,
        id: i64,
        lane: i32,
        hand_over: bool,
    ) -> Result<Option<(RunsStarted, bool)>, WorkflowError> {
        let mut tx = crate::db::begin_bounded(&self.pool, &[]).await?;
        let progress: Option<Progress> = sqlx::query_as(sql::LOCK_LANE)
            .bind(id)
            .bind(lane)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(progress) = progress else {
            return Ok(None);
        };
        let (cursor, upper) = (progress.cursor.as_deref(), progress.upper.as_deref());
        let members = store::members(&mut *tx, &progress.topic, cursor, upper, PAGE).await?;
        let Some(last) = members.last().cloned() else {
            end_lane(&mut tx, id, lane, None, 0).await?;
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
        let runs = inserted.len() as i64;
        let last_page = (members.len() as i64) < PAGE;
        if last_page {
            end_lane(&mut tx, id, lane, Some(&last), runs).await?;
        } else {
            advance_lane(&mut tx, id, lane, Some(&last), runs, false).await?;
            if hand_over {
                self.enqueue_lane(&mut tx, id, lane).await?;
            }
        }
        tx.commit().await?;
        Ok(Some((started, !last_page)))
    }

    /// At the start of each job of lane 0: makes sure the fan-out has its lane 0 (one stored by a process older
    /// than lanes has none), and if that lane is still the whole topic, untouched, and the topic is larger than
    /// [`SPLIT_ABOVE`], cuts it into `workflows.fanout_lanes` lanes of equal size and enqueues a job for each new
    /// one. One transaction, holding lane 0's lock: a retried job finds the split made, or not made at all.
    async fn prepare_lanes(&self, id: i64) -> Result<(), WorkflowError> {
        let mut tx = crate::db::begin_bounded(&self.pool, &[SPLIT_DEADLINE]).await?;
        sqlx::query(sql::INSERT_FIRST_LANE)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let progress: Option<Progress> = sqlx::query_as(sql::LOCK_LANE)
            .bind(id)
            .bind(0_i32)
            .fetch_optional(&mut *tx)
            .await?;
        let lanes = i64::from(self.settings.fanout_lanes);
        let Some(progress) = progress.filter(|p| p.unsplit() && lanes > 1) else {
            tx.commit().await?;
            return Ok(());
        };
        let members = store::count_members(&mut *tx, &progress.topic, SPLIT_COUNT_CAP).await?;
        if members <= SPLIT_ABOVE {
            tx.commit().await?;
            return Ok(());
        }
        // Lane i ends at member (i + 1) * width: the bounds are every width-th member, one fewer than the lanes.
        let width = (members + lanes - 1) / lanes;
        let bounds = store::every_nth_member(&mut *tx, &progress.topic, width, lanes - 1).await?;
        if !bounds.is_empty() {
            let new_lanes: Vec<i32> = sqlx::query_scalar(sql::SPLIT_LANES)
                .bind(id)
                .bind(&bounds)
                .fetch_all(&mut *tx)
                .await?;
            for lane in new_lanes {
                self.enqueue_lane(&mut tx, id, lane).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Marks lane `lane` done past its last page, and completes the fan-out if it was the last lane left.
async fn end_lane(
    conn: &mut sqlx::PgConnection,
    id: i64,
    lane: i32,
    cursor: Option<&str>,
    runs: i64,
) -> Result<(), sqlx::Error> {
    // The fan-out's lock first: lanes ending at once complete it one after the other, the last one seeing the
    // others done.
    sqlx::query(sql::LOCK_FANOUT)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    advance_lane(&mut *conn, id, lane, cursor, runs, true).await?;
    sqlx::query(sql::COMPLETE_FANOUT)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves lane `lane` of fan-out `id` past a page: its cursor (unchanged if `None`), its runs; `done` ends it.
async fn advance_lane(
    conn: &mut sqlx::PgConnection,
    id: i64,
    lane: i32,
    cursor: Option<&str>,
    runs: i64,
    done: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql::ADVANCE_LANE)
        .bind(id)
        .bind(lane)
        .bind(cursor)
        .bind(runs)
        .bind(done)
        .execute(conn)
        .await?;
    Ok(())
}
