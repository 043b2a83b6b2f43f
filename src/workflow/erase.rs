//! Erase (GDPR): deleting a recipient removes their profile at once and then scrubs what herald still holds of
//! them, in bounded batches, by queue jobs.
//!
//! In the delete's transaction: the profile goes (its devices and topic memberships with it), a
//! `herald_erasures` row records the erase, the act is audited, and an [`EraseJob`] is enqueued. An id without a
//! profile is erased all the same (runs can be started for a recipient who has none). Each pass of the job:
//! 1. cancels the recipient's running runs;
//! 2. for each batch of the runs started for them: scrubs those runs' deliveries (`channels::deliveries`), then the
//!    runs themselves (the context becomes `{"erased": true}`, steps' outputs and errors go, a fan-out's
//!    idempotency key, which names the member, is cleared);
//! 3. scrubs the other deliveries resolved from their profile (actions of other runs that addressed them) and, in
//!    those runs, the sending node's step output and its entry in the context (which quote the address);
//! 4. empties the payload of the events whose correlation key is their id.
//!
//! The first pass leaves deliveries still `sending` (a provider call in flight: scrubbing its address would
//! remove the guard against sending it twice) and ends by scheduling the final pass, after the longest a node job
//! may run, so a send that read the profile just before the delete is scrubbed too. The final pass takes
//! everything left and marks the erasure completed.
//!
//! Every lookup is by an index (`recipient_id` on runs and deliveries, `run_id` on deliveries, `key` on events);
//! each batch is its own statement of at most [`BATCH`] rows, so a long history never holds long locks, and a
//! worker killed mid-erase resumes where the rows say it stopped (scrubbed rows are not matched again). Ids,
//! statuses, timings and counts stay. A raw address (`to: "{{ trigger.email }}"`) in a run that was not started
//! for the recipient is not found: it ages out with retention.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Engine, WorkflowError, sql};
use crate::audit::{self, Actor};
use crate::channels::deliveries;
use crate::queue::{Job, JobError, JobKind, NewJob, QueueError};
use crate::recipients::store;

/// Rows per scrub statement.
pub const BATCH: i64 = 500;

/// Scrubs an erased recipient's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EraseJob {
    pub erasure: i64,
    /// The last pass: it also takes deliveries still `sending`, and completes the erasure.
    #[serde(default)]
    pub last: bool,
}

impl Job for EraseJob {
    const KIND: &'static str = "herald.recipients.erase";
}

/// What one pass scrubbed.
#[derive(Debug, Default)]
struct Scrubbed {
    runs: u64,
    deliveries: u64,
    events: u64,
}

impl Engine {
    /// Deletes a recipient's profile (if they have one) and schedules the scrub of their history; answers the
    /// erasure's id. Audited.
    pub async fn erase_recipient(&self, actor: &Actor, id: &str) -> Result<i64, WorkflowError> {
        let mut tx = crate::db::begin_bounded(&self.pool, &[]).await?;
        let had_profile = store::delete_in(&mut tx, id).await?;
        let erasure: i64 = sqlx::query_scalar(sql::INSERT_ERASURE)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let details = json!({"erasure": erasure, "profile": had_profile});
        audit::record(&mut *tx, actor, "recipient.erase", id, details).await?;
        self.enqueue_erase(
            &mut tx,
            EraseJob {
                erasure,
                last: false,
            },
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(erasure)
    }

    async fn enqueue_erase(
        &self,
        conn: &mut sqlx::PgConnection,
        job: EraseJob,
        run_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), WorkflowError> {
        let payload = serde_json::to_value(job).map_err(|e| WorkflowError::Io(e.to_string()))?;
        let kind = JobKind::parse(EraseJob::KIND).map_err(QueueError::from)?;
        let mut new = NewJob::new(self.jobs.queue.clone(), kind, payload)
            .max_attempts(self.jobs.max_attempts);
        if let Some(at) = run_at {
            new = new.run_at(at);
        }
        crate::queue::enqueue_many(conn, &self.jobs.defaults, &[new]).await?;
        Ok(())
    }

    pub(super) async fn erase(&self, job: EraseJob) -> Result<(), JobError> {
        self.erase_pass(job)
            .await
            .map_err(|e| JobError::retry(e.to_string()))
    }

    async fn erase_pass(&self, job: EraseJob) -> Result<(), WorkflowError> {
        let recipient: Option<String> = sqlx::query_scalar(sql::GET_ERASURE)
            .bind(job.erasure)
            .fetch_optional(&self.pool)
            .await?;
        let Some(recipient) = recipient else {
            return Ok(());
        };
        let actor = Actor::herald("erase");
        let running: Vec<i64> = sqlx::query_scalar(sql::RECIPIENT_RUNNING_RUNS)
            .bind(&recipient)
            .fetch_all(&self.pool)
            .await?;
        for run in running {
            match self.cancel_run(&actor, run).await {
                Ok(_) | Err(WorkflowError::NotFound(_) | WorkflowError::Conflict(_)) => {}
                Err(error) => return Err(error),
            }
        }
        let scrubbed = self.scrub(&recipient, job.last).await?;
        let mut tx = crate::db::begin_bounded(&self.pool, &[]).await?;
        sqlx::query(sql::COUNT_ERASURE)
            .bind(job.erasure)
            .bind(scrubbed.runs as i64)
            .bind(scrubbed.deliveries as i64)
            .bind(scrubbed.events as i64)
            .bind(job.last)
            .execute(&mut *tx)
            .await?;
        if !job.last {
            // After the longest a node job can run: a send that read the profile before the delete has ended.
            let settle = chrono::Duration::from_std(self.jobs.defaults.timeout)
                .unwrap_or(chrono::Duration::minutes(5))
                + chrono::Duration::minutes(1);
            let last = EraseJob {
                erasure: job.erasure,
                last: true,
            };
            self.enqueue_erase(&mut tx, last, Some(chrono::Utc::now() + settle))
                .await?;
        }
        tx.commit().await?;
        tracing::info!(
            erasure = job.erasure,
            last = job.last,
            ?scrubbed,
            "recipient erase pass"
        );
        Ok(())
    }

    /// One pass over everything of `recipient` (see the module docs, steps 2-4).
    async fn scrub(&self, recipient: &str, last: bool) -> Result<Scrubbed, WorkflowError> {
        let mut scrubbed = Scrubbed::default();
        // Each batch in a transaction of its own whose statements PostgreSQL cancels after the batch deadline
        // (`db::begin_bounded`): a lock held elsewhere fails the pass, which the queue retries, never hangs it.
        let bounded = || crate::db::begin_bounded(&self.pool, &[]);
        // 2. The runs started for them, a batch at a time: their deliveries first (found by run), then the runs.
        let mut after = 0i64;
        loop {
            let mut tx = bounded().await?;
            let runs: Vec<i64> = sqlx::query_scalar(sql::RECIPIENT_RUN_BATCH)
                .bind(recipient)
                .bind(after)
                .bind(BATCH)
                .fetch_all(&mut *tx)
                .await?;
            let Some(&last_run) = runs.last() else {
                break;
            };
            after = last_run;
            loop {
                let done = deliveries::erase_batch(&mut tx, None, &runs, BATCH, last).await?;
                scrubbed.deliveries += done.len() as u64;
                if done.is_empty() {
                    break;
                }
            }
            scrubbed.runs += sqlx::query(sql::SCRUB_RUNS)
                .bind(&runs)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
        }
        // 3. Deliveries of other runs that addressed them, and what those runs' sending nodes recorded: in one
        // transaction, since a scrubbed delivery is not found again to name its node.
        loop {
            let mut tx = bounded().await?;
            let done = deliveries::erase_batch(&mut tx, Some(recipient), &[], BATCH, last).await?;
            if done.is_empty() {
                break;
            }
            scrubbed.deliveries += done.len() as u64;
            let (runs, nodes): (Vec<i64>, Vec<String>) = done.into_iter().unzip();
            sqlx::query(sql::SCRUB_SENDING_STEPS)
                .bind(&runs)
                .bind(&nodes)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        // 4. Events keyed by their id.
        loop {
            let mut tx = bounded().await?;
            let done = sqlx::query(sql::SCRUB_EVENTS)
                .bind(recipient)
                .bind(BATCH)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            scrubbed.events += done;
            if done == 0 {
                break;
            }
        }
        // 5. Their in-app feed.
        crate::feed::store::erase(&self.pool, recipient)
            .await
            .map_err(|e| match e {
                crate::feed::FeedError::Database(db) => WorkflowError::Database(db),
                other => WorkflowError::Io(other.to_string()),
            })?;
        Ok(scrubbed)
    }
}
