//! The clock's housekeeping vacuums a churned table once its dead rows pile up, and leaves a clean one alone.

use std::time::Duration;

use crate::common::{TestDb, defaults, job, scalar_i64, wait_until};

async fn dead_jobs(db: &TestDb) -> i64 {
    scalar_i64(
        &db.pool,
        "SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relname = 'herald_jobs'",
    )
    .await
}

#[tokio::test]
async fn a_bloated_job_table_is_vacuumed_and_a_clean_one_is_not() {
    let db = TestDb::new().await;
    // Whatever the server's autovacuum does, it must not do this test's work.
    sqlx::query("ALTER TABLE herald_jobs SET (autovacuum_enabled = false)")
        .execute(&db.pool)
        .await
        .expect("autovacuum off");
    assert!(
        herald::clock::housekeeping::vacuum_bloated(&db.pool, 1_000)
            .await
            .is_empty(),
        "nothing to vacuum in a new database"
    );
    let jobs: Vec<_> = (0..5_000)
        .map(|_| job("q", "test", serde_json::json!({})))
        .collect();
    let mut conn = db.pool.acquire().await.expect("connection");
    herald::queue::enqueue_many(&mut conn, &defaults(), &jobs)
        .await
        .expect("enqueue");
    drop(conn);
    sqlx::query("DELETE FROM herald_jobs")
        .execute(&db.pool)
        .await
        .expect("delete");
    wait_until(
        Duration::from_secs(10),
        "the deletes in the statistics",
        || async { dead_jobs(&db).await >= 5_000 },
    )
    .await;
    let vacuumed = herald::clock::housekeeping::vacuum_bloated(&db.pool, 1_000).await;
    assert!(
        vacuumed
            .iter()
            .any(|(table, dead)| *table == "herald_jobs" && *dead >= 5_000),
        "{vacuumed:?}"
    );
    wait_until(Duration::from_secs(10), "dead rows removed", || async {
        dead_jobs(&db).await == 0
    })
    .await;
}
