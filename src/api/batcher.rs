//! Coalesces concurrent single-job enqueues into one batch statement.
//!
//! Each `POST /v1/jobs` would otherwise cost one statement and one commit. With [`Coalescer`], requests that
//! arrive while a batch is being written go out together in the next one, so under load most commits carry many
//! jobs, and an idle server adds no delay. Every request still gets its own answer: inserted, duplicate or
//! conflict, with its own request id stored on its job.

use std::sync::Arc;

use sqlx::PgPool;

use crate::coalesce::Coalescer;
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

    pub async fn enqueue(&self, job: NewJob) -> Outcome {
        let stopped = |_| Arc::new(QueueError::Conflict("the server is shutting down".into()));
        self.batches.call(job).await.map_err(stopped)?
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
