//! Enqueueing: batches in one statement, idempotency keys (single, batch, concurrent), transactional enqueue.

use crate::common::*;
use herald::queue::{self, Enqueued, IdempotencyKey, Priority};
use serde_json::json;

#[tokio::test]
async fn a_batch_is_inserted_in_order_and_becomes_claimable() {
    let db = TestDb::new().await;
    let jobs: Vec<_> = (0..100).map(|i| job("q", "k", json!({ "n": i }))).collect();
    let mut conn = db.pool.acquire().await.unwrap();
    let results = queue::enqueue_many(&mut conn, &defaults(), &jobs)
        .await
        .unwrap();

    assert_eq!(results.len(), 100);
    assert!(results.iter().all(|r| matches!(r, Enqueued::Inserted(_))));
    let ids: Vec<i64> = results.iter().map(|r| r.id()).collect();
    let payload_n: Vec<i64> = sqlx::query_scalar(
        "SELECT (payload->>'n')::int8 FROM herald_jobs WHERE id = ANY($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        payload_n,
        (0..100).collect::<Vec<i64>>(),
        "results come back in input order"
    );
    assert_eq!(live_jobs(&db.pool).await, 100);
}

#[tokio::test]
async fn job_options_are_stored_and_defaults_fill_the_rest() {
    let db = TestDb::new().await;
    let at = chrono::Utc::now() + chrono::Duration::hours(1);
    let custom = job("q", "k", json!({}))
        .priority(Priority::new(7).unwrap())
        .run_at(at)
        .max_attempts(3)
        .timeout(std::time::Duration::from_millis(1500));
    let mut conn = db.pool.acquire().await.unwrap();
    let results = queue::enqueue_many(&mut conn, &defaults(), &[custom, job("q", "k", json!({}))])
        .await
        .unwrap();
    let row: (i16, bool, i32, i32) = sqlx::query_as(
        "SELECT priority, scheduled, max_attempts, timeout_ms FROM herald_jobs WHERE id = $1",
    )
    .bind(results[0].id())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row, (7, true, 3, 1500));
    let row: (i16, bool, i32, i32) = sqlx::query_as(
        "SELECT priority, scheduled, max_attempts, timeout_ms FROM herald_jobs WHERE id = $1",
    )
    .bind(results[1].id())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row, (0, false, defaults().max_attempts, 30_000));
}

#[tokio::test]
async fn a_duplicate_idempotency_key_returns_the_existing_job() {
    let db = TestDb::new().await;
    let key = IdempotencyKey::parse("order-42").unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let first = queue::enqueue(
        &mut conn,
        &defaults(),
        job("q", "k", json!({})).idempotency_key(key.clone()),
    )
    .await
    .unwrap();
    let second = queue::enqueue(
        &mut conn,
        &defaults(),
        job("q", "k", json!({})).idempotency_key(key),
    )
    .await
    .unwrap();
    assert!(matches!(first, Enqueued::Inserted(_)));
    assert_eq!(second, Enqueued::Duplicate(first.id()));
    assert_eq!(live_jobs(&db.pool).await, 1);
}

#[tokio::test]
async fn duplicates_in_a_batch_are_reported_per_item_and_the_rest_inserted() {
    let db = TestDb::new().await;
    let key = |k: &str| IdempotencyKey::parse(k).unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let existing = queue::enqueue(
        &mut conn,
        &defaults(),
        job("q", "k", json!({})).idempotency_key(key("a")),
    )
    .await
    .unwrap();
    let batch = vec![
        job("q", "k", json!({})).idempotency_key(key("a")), // taken before the batch
        job("q", "k", json!({})).idempotency_key(key("b")),
        job("q", "k", json!({})).idempotency_key(key("b")), // repeated inside the batch
        job("q", "k", json!({})),
    ];
    let results = queue::enqueue_many(&mut conn, &defaults(), &batch)
        .await
        .unwrap();
    assert_eq!(results[0], Enqueued::Duplicate(existing.id()));
    assert!(matches!(results[1], Enqueued::Inserted(_)));
    assert_eq!(results[2], Enqueued::Duplicate(results[1].id()));
    assert!(matches!(results[3], Enqueued::Inserted(_)));
    assert_eq!(live_jobs(&db.pool).await, 3);
}

#[tokio::test]
async fn concurrent_enqueues_with_one_key_create_one_job() {
    let db = TestDb::new().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            let key = IdempotencyKey::parse("same-key").unwrap();
            queue::enqueue(
                &mut conn,
                &defaults(),
                job("q", "k", json!({})).idempotency_key(key),
            )
            .await
            .unwrap()
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let inserted: Vec<_> = results
        .iter()
        .filter(|r| matches!(r, Enqueued::Inserted(_)))
        .collect();
    assert_eq!(inserted.len(), 1, "exactly one enqueue wins: {results:?}");
    assert!(
        results.iter().all(|r| r.id() == inserted[0].id()),
        "every caller learns the same id"
    );
    assert_eq!(live_jobs(&db.pool).await, 1);
}

#[tokio::test]
async fn a_finished_jobs_key_still_answers_with_its_id() {
    let db = TestDb::new().await;
    let key = IdempotencyKey::parse("done-key").unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    let first = queue::enqueue(
        &mut conn,
        &defaults(),
        job("q", "k", json!({})).idempotency_key(key.clone()),
    )
    .await
    .unwrap();
    herald::queue::admin::cancel_job(&db.pool, &herald::audit::Actor::cli(), first.id())
        .await
        .unwrap();
    let again = queue::enqueue(
        &mut conn,
        &defaults(),
        job("q", "k", json!({})).idempotency_key(key),
    )
    .await
    .unwrap();
    assert_eq!(again, Enqueued::Duplicate(first.id()));
}

#[tokio::test]
async fn enqueue_in_a_rolled_back_transaction_leaves_no_job_and_a_committed_one_does() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    queue::enqueue(&mut tx, &defaults(), job("q", "k", json!({})))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(live_jobs(&db.pool).await, 0);

    let mut tx = db.pool.begin().await.unwrap();
    queue::enqueue(&mut tx, &defaults(), job("q", "k", json!({})))
        .await
        .unwrap();
    assert_eq!(
        live_jobs(&db.pool).await,
        0,
        "invisible to others before commit"
    );
    tx.commit().await.unwrap();
    assert_eq!(live_jobs(&db.pool).await, 1);
}

#[tokio::test]
async fn an_empty_batch_is_a_no_op() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    assert!(
        queue::enqueue_many(&mut conn, &defaults(), &[])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_reused_key_with_another_body_is_a_conflict_and_the_request_id_is_kept() {
    let db = TestDb::new().await;
    let key = IdempotencyKey::parse("reused").unwrap();
    let first = job("q", "k", json!({"n": 1}))
        .idempotency_key(key.clone())
        .request_id("req-1");
    let ids = db.enqueue(vec![first]).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let other = job("q", "k", json!({"n": 2})).idempotency_key(key);
    let result = queue::enqueue(&mut conn, &defaults(), other).await.unwrap();
    assert_eq!(result, Enqueued::Conflict(ids[0]));
    let view = herald::queue::admin::find_job(&db.pool, ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.request_id.as_deref(), Some("req-1"));
}

#[tokio::test]
async fn batches_sharing_keys_in_opposite_orders_do_not_deadlock() {
    let db = TestDb::new().await;
    let key = |k: String| IdempotencyKey::parse(&k).unwrap();
    let mut tasks = Vec::new();
    for round in 0..20 {
        for reversed in [false, true] {
            let pool = db.pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut keys = vec![format!("a-{round}"), format!("b-{round}")];
                if reversed {
                    keys.reverse();
                }
                let jobs: Vec<_> = keys
                    .into_iter()
                    .map(|k| job("q", "k", json!({})).idempotency_key(key(k)))
                    .collect();
                let mut tx = pool.begin().await.unwrap();
                let result = queue::enqueue_many(&mut tx, &defaults(), &jobs).await;
                tx.commit().await.unwrap();
                result
            }));
        }
    }
    for task in tasks {
        task.await.unwrap().expect("no deadlock between batches");
    }
    assert_eq!(live_jobs(&db.pool).await, 40);
}
