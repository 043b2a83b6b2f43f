//! Coalescing: requests from many concurrent callers go to the database together, in one batch.
//!
//! A caller hands its item to [`Coalescer::call`] and waits for its own answer. A background task takes the
//! first waiting item plus everything that queued up behind it (up to `max_batch`) and runs the batch function
//! on them, with at most `in_flight` batches at once. Under load most batches carry many items; an idle system
//! adds no delay, since a lone item goes out at once. Used for single enqueues over HTTP (`api::batcher`), run
//! starts and events (`workflow::starts`, `workflow::events`), the reads and writes of workflow node jobs
//! (`workflow::steps`), and delivery records (`channels::deliveries`). [`whole_or_each`] and
//! [`whole_or_each_once`] are the batch writers' fallbacks when the database refuses a batch.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// The handle callers use; cheap to clone. The background task ends when every clone is dropped.
pub struct Coalescer<T, R> {
    requests: mpsc::Sender<(T, oneshot::Sender<R>)>,
}

impl<T, R> Clone for Coalescer<T, R> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

/// The background task stopped (the process is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batching task has stopped")]
pub struct Stopped;

impl<T: Send + 'static, R: Send + 'static> Coalescer<T, R> {
    /// Starts the background task. `run` gets a batch and must answer with one result per item, in order.
    pub fn start<F, Fut>(max_batch: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (requests, incoming) = mpsc::channel(max_batch * in_flight * 2);
        tokio::spawn(coalesce(incoming, max_batch, in_flight, run));
        Self { requests }
    }

    /// Hands `item` to the next batch and waits for its result.
    pub async fn call(&self, item: T) -> Result<R, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((item, reply))
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

async fn coalesce<T, R, F, Fut>(
    mut incoming: mpsc::Receiver<(T, oneshot::Sender<R>)>,
    max_batch: usize,
    in_flight: usize,
    run: F,
) where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<R>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = incoming.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        // Let the callers that are ready to run hand in their items first: each job runs on a task of its own, so
        // the callers of one moment reach here one by one, and without this turn the first would go out alone.
        // (On an idle system nothing else is ready and the turn costs nothing.)
        tokio::task::yield_now().await;
        // Everything that queued up while we waited goes in this batch.
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match incoming.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
        let results = run(items);
        tokio::spawn(async move {
            for (reply, result) in replies.into_iter().zip(results.await) {
                let _ = reply.send(result);
            }
            drop(slot);
        });
    }
}

/// Runs `run` on a whole batch and, if the database refuses it (one bad row, a deadlock with another process's
/// batch), on each item alone, so that one item's problem never fails the others. `run` answers one result per
/// item it is given; this answers one per item of `items`, in order. The batch writers of node steps
/// (`workflow::steps`) and deliveries (`channels::deliveries`) use it.
pub async fn whole_or_each<'a, T, R, E, F, Fut>(
    what: &str,
    items: &'a [T],
    run: F,
) -> Vec<Result<R, Arc<E>>>
where
    E: From<sqlx::Error> + std::fmt::Display,
    F: Fn(&'a [T]) -> Fut,
    Fut: Future<Output = Result<Vec<R>, E>>,
{
    // Whatever the failure, retrying is safe for these writers: their batches can be applied twice.
    let refused = |batch: &'a [T]| {
        let written = run(batch);
        async move { written.await.map_err(Failed::BeforeCommit) }
    };
    whole_or_each_once(what, items, refused).await
}

/// How a batch that is written once and for all failed.
pub enum Failed<E> {
    /// Before its commit: the transaction rolled back and nothing of it is stored.
    BeforeCommit(E),
    /// At its commit: it may or may not be stored.
    AtCommit(E),
}

/// [`whole_or_each`] for batches whose items must never be stored twice (runs and events without an idempotency
/// key): a batch that failed before its commit is retried one item at a time; one whose commit failed is not
/// retried, since it may be stored already, and every item gets the error (a caller may retry with its key).
pub async fn whole_or_each_once<'a, T, R, E, F, Fut>(
    what: &str,
    items: &'a [T],
    run: F,
) -> Vec<Result<R, Arc<E>>>
where
    E: From<sqlx::Error> + std::fmt::Display,
    F: Fn(&'a [T]) -> Fut,
    Fut: Future<Output = Result<Vec<R>, Failed<E>>>,
{
    match run(items).await {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(Failed::BeforeCommit(error)) if items.len() > 1 => {
            tracing::warn!(%error, items = items.len(), "a batch of {what} failed; retrying them one at a time");
            let mut answers = Vec::with_capacity(items.len());
            for item in items {
                let answer = match run(std::slice::from_ref(item)).await {
                    Ok(mut one) if one.len() == 1 => {
                        one.pop().ok_or_else(|| unreachable_empty(what))
                    }
                    Ok(_) => Err(unreachable_empty(what)),
                    Err(Failed::BeforeCommit(error) | Failed::AtCommit(error)) => {
                        Err(Arc::new(error))
                    }
                };
                answers.push(answer);
            }
            answers
        }
        Err(Failed::BeforeCommit(error) | Failed::AtCommit(error)) => {
            let error = Arc::new(error);
            items.iter().map(|_| Err(Arc::clone(&error))).collect()
        }
    }
}

/// A `run` that did not answer one result for one item: a bug, reported to that item's caller.
fn unreachable_empty<E: From<sqlx::Error>>(what: &str) -> Arc<E> {
    Arc::new(E::from(sqlx::Error::Protocol(format!(
        "a batch of one of {what} did not answer exactly one result"
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let doubler = Coalescer::start(8, 1, move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.len());
            async move {
                tokio::task::yield_now().await;
                items.into_iter().map(|n| n * 2).collect::<Vec<_>>()
            }
        });
        let calls = (0..40).map(|n| {
            let doubler = doubler.clone();
            tokio::spawn(async move { (n, doubler.call(n).await) })
        });
        for call in futures::future::join_all(calls).await {
            let (n, answer) = call.unwrap();
            assert_eq!(answer, Ok(n * 2));
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.iter().all(|&s| s <= 8), "{sizes:?}");
    }

    /// A refused batch is retried item by item: the good items succeed, the bad one fails alone, in order.
    #[tokio::test]
    async fn a_refused_batch_is_retried_one_item_at_a_time() {
        let calls = std::sync::Mutex::new(Vec::new());
        let items = [1u32, 13, 3];
        let answers = whole_or_each("numbers", &items, |batch: &[u32]| {
            calls.lock().unwrap().push(batch.len());
            let batch = batch.to_vec();
            async move {
                if batch.contains(&13) {
                    Err(sqlx::Error::Protocol("13 refused".into()))
                } else {
                    Ok(batch.iter().map(|n| n * 10).collect::<Vec<_>>())
                }
            }
        })
        .await;
        assert_eq!(*calls.lock().unwrap(), vec![3, 1, 1, 1]);
        assert_eq!(answers.len(), 3);
        assert_eq!(*answers[0].as_ref().unwrap(), 10);
        assert!(
            answers[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("13 refused")
        );
        assert_eq!(*answers[2].as_ref().unwrap(), 30);
    }

    /// A batch whose commit failed may be stored already: it is not retried, and every item gets the error. One
    /// that failed before its commit is retried item by item.
    #[tokio::test]
    async fn a_batch_whose_commit_failed_is_not_written_again() {
        let calls = std::sync::Mutex::new(Vec::new());
        let items = [1u32, 2, 3];
        let answers = whole_or_each_once("numbers", &items, |batch: &[u32]| {
            calls.lock().unwrap().push(batch.len());
            async move {
                Err::<Vec<u32>, _>(Failed::AtCommit(sqlx::Error::Protocol(
                    "connection lost at commit".into(),
                )))
            }
        })
        .await;
        assert_eq!(*calls.lock().unwrap(), vec![3], "no second write");
        assert!(answers.iter().all(|a| {
            a.as_ref()
                .is_err_and(|e| e.to_string().contains("at commit"))
        }));

        calls.lock().unwrap().clear();
        let answers = whole_or_each_once("numbers", &items, |batch: &[u32]| {
            calls.lock().unwrap().push(batch.len());
            let batch = batch.to_vec();
            async move {
                if batch.len() > 1 {
                    Err(Failed::BeforeCommit(sqlx::Error::Protocol(
                        "refused".into(),
                    )))
                } else {
                    Ok(batch)
                }
            }
        })
        .await;
        assert_eq!(*calls.lock().unwrap(), vec![3, 1, 1, 1]);
        let values: Vec<u32> = answers.into_iter().map(|a| a.unwrap()).collect();
        assert_eq!(values, items);
    }
}
