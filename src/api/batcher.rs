//! Coalesces concurrent single-job enqueues into one batch statement.
//!
//! Each `POST /v1/jobs` would otherwise cost one statement and one commit. Requests that arrive while a batch
//! is being written wait in a channel and go out together in the next one, so under load most commits carry many
//! jobs, and an idle server adds no delay (a lone request is written at once). Every request still gets its own
//! answer: inserted, duplicate or conflict, with its own request id stored on its job.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::queue::{self, Enqueued, JobDefaults, NewJob, QueueError};

/// Most jobs written in one coalesced statement.
const MAX_COALESCED: usize = 256;
/// Batches being written at once.
const BATCHES_IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<Enqueued, Arc<QueueError>>>;

#[derive(Clone)]
pub struct EnqueueBatcher {
    requests: mpsc::Sender<(NewJob, Reply)>,
}

impl EnqueueBatcher {
    /// Starts the background task; it ends when every `EnqueueBatcher` clone is dropped.
    pub fn start(pool: PgPool, defaults: JobDefaults) -> Self {
        let (requests, incoming) = mpsc::channel(MAX_COALESCED * BATCHES_IN_FLIGHT * 2);
        tokio::spawn(coalesce(pool, defaults, incoming));
        Self { requests }
    }

    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, Arc<QueueError>> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Arc::new(QueueError::Conflict("the server is shutting down".into()));
        self.requests
            .send((job, reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn coalesce(
    pool: PgPool,
    defaults: JobDefaults,
    mut incoming: mpsc::Receiver<(NewJob, Reply)>,
) {
    let writers = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = incoming.recv().await {
        let Ok(slot) = Arc::clone(&writers).acquire_owned().await else {
            break;
        };
        // Everything that queued up while we waited for a free writer goes in this batch.
        let mut batch = vec![first];
        while batch.len() < MAX_COALESCED {
            match incoming.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (pool, defaults) = (pool.clone(), defaults.clone());
        tokio::spawn(async move {
            write(&pool, &defaults, batch).await;
            drop(slot);
        });
    }
}

async fn write(pool: &PgPool, defaults: &JobDefaults, batch: Vec<(NewJob, Reply)>) {
    let (jobs, replies): (Vec<NewJob>, Vec<Reply>) = batch.into_iter().unzip();
    match enqueue_all(pool, defaults, &jobs).await {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        // One job the database cannot store must not fail its neighbours: write them one by one. (Any other
        // error, such as a lost connection, would fail them all alike, so it is answered as it is.)
        Err(error) if error.is_refused_data() && jobs.len() > 1 => {
            for (job, reply) in jobs.into_iter().zip(replies) {
                let result = enqueue_all(pool, defaults, std::slice::from_ref(&job)).await;
                let _ = reply.send(result.map(|mut r| r.remove(0)).map_err(Arc::new));
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for reply in replies {
                let _ = reply.send(Err(Arc::clone(&error)));
            }
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
