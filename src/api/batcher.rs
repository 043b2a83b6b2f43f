//! Coalesces concurrent single-job enqueues into one batch statement.
//!
//! Each `POST /v1/jobs` would otherwise cost one statement and one commit. With [`Coalescer`], requests that
//! arrive while a batch is being written go out together in the next one, so under load most commits carry many
//! jobs, and an idle server adds no delay. Every request still gets its own answer: inserted, duplicate or
//! conflict, with its own request id stored on its job.

use std::sync::Arc;

use sqlx::PgPool;

use super::error::ApiError;
use crate::coalesce::{Coalescer, Stopped};
use crate::queue::{self, Enqueued, JobDefaults, NewJob, QueueError};

/// Most jobs written in one coalesced statement.
const MAX_COALESCED: usize = 256;
/// Batches being written at once.
const BATCHES_IN_FLIGHT: usize = 4;

type Outcome = Result<Enqueued, Arc<QueueError>>;

#[derive(Clone)]
pub struct EnqueueBatcher {
    batches: Coalescer<NewJob, Outcome>,
}

impl EnqueueBatcher {
    /// Starts the background task; it ends when every `EnqueueBatcher` clone is dropped.
    pub fn start(pool: PgPool, defaults: JobDefaults) -> Self {
        let batches = Coalescer::start(MAX_COALESCED, BATCHES_IN_FLIGHT, move |jobs| {
            let (pool, defaults) = (pool.clone(), defaults.clone());
            async move { write(&pool, &defaults, jobs).await }
        });
        Self { batches }
    }

    /// Enqueues through the next batch. If the batching task has stopped, the process is shutting down: the
    /// answer is 503 with `Retry-After`, so the client retries (likely reaching another instance), rather than a
    /// 409 that says its request conflicts with something.
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, ApiError> {
        match self.batches.call(job).await {
            Ok(outcome) => outcome.map_err(ApiError::from),
            Err(Stopped) => Err(ApiError::shutting_down()),
        }
    }
}

async fn write(pool: &PgPool, defaults: &JobDefaults, jobs: Vec<NewJob>) -> Vec<Outcome> {
    match enqueue_all(pool, defaults, &jobs).await {
        Ok(results) => results.into_iter().map(Ok).collect(),
        // One job the database cannot store must not fail its neighbours: write them one by one. (Any other
        // error, such as a lost connection, would fail them all alike, so it is answered as it is.)
        Err(error) if error.is_refused_data() && jobs.len() > 1 => {
            let mut outcomes = Vec::with_capacity(jobs.len());
            for job in jobs {
                let result = enqueue_all(pool, defaults, std::slice::from_ref(&job)).await;
                outcomes.push(result.map(|mut r| r.remove(0)).map_err(Arc::new));
            }
            outcomes
        }
        Err(error) => {
            let error = Arc::new(error);
            jobs.iter().map(|_| Err(Arc::clone(&error))).collect()
        }
    }
}

async fn enqueue_all(
    pool: &PgPool,
    defaults: &JobDefaults,
    jobs: &[NewJob],
) -> Result<Vec<Enqueued>, QueueError> {
    let mut conn = pool.acquire().await?;
    queue::enqueue_many(&mut conn, defaults, jobs).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{JobKind, QueueName};
    use axum::response::IntoResponse;

    #[tokio::test]
    async fn a_stopped_batcher_answers_503_with_retry_after() {
        // A batch function that answers nothing drops every reply, as a batching task that has stopped would.
        let batcher = EnqueueBatcher {
            batches: Coalescer::start(1, 1, |_jobs: Vec<NewJob>| async { Vec::new() }),
        };
        let job = NewJob::new(
            QueueName::parse("q").unwrap(),
            JobKind::parse("k").unwrap(),
            serde_json::json!({}),
        );
        let error = batcher.enqueue(job).await.unwrap_err();
        let response = error.into_response();
        assert_eq!(
            response.status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(
            response
                .headers()
                .contains_key(axum::http::header::RETRY_AFTER)
        );
    }
}
