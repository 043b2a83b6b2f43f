//! Erase (GDPR): deleting a recipient removes their profile at once and then scrubs what herald still holds of
//! them, in bounded batches, by a queue job.
//!
//! In the delete's transaction: the profile goes (its devices and topic memberships with it), a
//! `herald_erasures` row keeps their addresses for the scrub, the act is audited, and an [`EraseJob`] is
//! enqueued. The job then:
//! 1. cancels the recipient's running runs (a node still in flight finds its run cancelled);
//! 2. scrubs the runs started for them: the context (trigger data, node outputs) becomes `{"erased": true}`,
//!    each step's output and error are dropped, and a fan-out's idempotency key (it names the member) is cleared;
//! 3. scrubs the deliveries resolved from the profile or sent to one of its addresses (`channels::deliveries`);
//! 4. scrubs the events whose key is the recipient's id (their payload becomes `{}`);
//! 5. clears the erasure's addresses and marks it completed.
//!
//! Each batch is its own transaction of at most [`BATCH`] rows, so a large history never holds long locks; a
//! worker killed mid-erase resumes where the rows say it stopped (scrubbed rows are not matched again). Ids,
//! statuses, timings and counts stay, so rollups and metrics keep adding up. Runs started with a raw address
//! and no recipient cannot be found without reading every run: they age out with retention.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Engine, WorkflowError, sql};
use crate::audit::{self, Actor};
use crate::queue::{Job, JobError, JobKind, NewJob, QueueError};
use crate::recipients::store;

/// Rows per scrub transaction.
pub const BATCH: i64 = 500;

/// Scrubs an erased recipient's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EraseJob {
    pub erasure: i64,
}

impl Job for EraseJob {
    const KIND: &'static str = "herald.recipients.erase";
}

impl Engine {
    /// Deletes a recipient and schedules the scrub of their history; answers the erasure's id, or `None` if
    /// there is no such recipient. Audited.
    pub async fn erase_recipient(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<Option<i64>, WorkflowError> {
        let mut tx = self.pool.begin().await?;
        let Some(addresses) = store::delete_in(&mut tx, id).await? else {
            return Ok(None);
        };
        let erasure: i64 = sqlx::query_scalar(sql::INSERT_ERASURE)
            .bind(id)
            .bind(&addresses)
            .fetch_one(&mut *tx)
            .await?;
        audit::record(
            &mut *tx,
            actor,
            "recipient.erase",
            id,
            json!({"erasure": erasure}),
        )
        .await?;
        let payload = serde_json::to_value(EraseJob { erasure })
            .map_err(|e| WorkflowError::Io(e.to_string()))?;
        let kind = JobKind::parse(EraseJob::KIND).map_err(QueueError::from)?;
        let job = NewJob::new(self.jobs.queue.clone(), kind, payload)
            .max_attempts(self.jobs.max_attempts);
        crate::queue::enqueue_many(&mut tx, &self.jobs.defaults, &[job]).await?;
        tx.commit().await?;
        Ok(Some(erasure))
    }

    pub(super) async fn erase(&self, job: EraseJob) -> Result<(), JobError> {
        self.scrub(job.erasure)
            .await
            .map_err(|e| JobError::retry(e.to_string()))
    }

    async fn scrub(&self, erasure: i64) -> Result<(), WorkflowError> {
        let found: Option<(String, Vec<String>)> = sqlx::query_as(sql::GET_ERASURE)
            .bind(erasure)
            .fetch_optional(&self.pool)
            .await?;
        let Some((recipient, addresses)) = found else {
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
        let (mut runs, mut deliveries, mut events) = (0u64, 0u64, 0u64);
        loop {
            let done = sqlx::query(sql::SCRUB_RUNS)
                .bind(&recipient)
                .bind(BATCH)
                .execute(&self.pool)
                .await?
                .rows_affected();
            runs += done;
            if done == 0 {
                break;
            }
        }
        loop {
            let mut conn = self.pool.acquire().await?;
            let done =
                crate::channels::deliveries::erase_batch(&mut conn, &recipient, &addresses, BATCH)
                    .await?;
            deliveries += done;
            if done == 0 {
                break;
            }
        }
        loop {
            let done = sqlx::query(sql::SCRUB_EVENTS)
                .bind(&recipient)
                .bind(BATCH)
                .execute(&self.pool)
                .await?
                .rows_affected();
            events += done;
            if done == 0 {
                break;
            }
        }
        sqlx::query(sql::FINISH_ERASURE)
            .bind(erasure)
            .bind(runs as i64)
            .bind(deliveries as i64)
            .bind(events as i64)
            .execute(&self.pool)
            .await?;
        tracing::info!(erasure, runs, deliveries, events, "recipient erased");
        Ok(())
    }
}
