//! The clock's housekeeping vacuums a churned table once its dead rows pile up, and leaves a clean one alone; it
//! analyzes a churned table that outgrew its statistics, so plans made for it empty are made again.

use std::time::Duration;

use crate::common::{TestDb, defaults, job, scalar_i64, wait_until};

async fn dead_jobs(db: &TestDb) -> i64 {
    scalar_i64(
        &db.pool,
        "SELECT coalesce(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relname = 'herald_jobs'",
    )
    .await
}

/// Enqueues `count` empty jobs.
async fn enqueue(db: &TestDb, count: usize) {
    let jobs: Vec<_> = (0..count)
        .map(|_| job("q", "test", serde_json::json!({})))
        .collect();
    let mut conn = db.pool.acquire().await.expect("connection");
    herald::queue::enqueue_many(&mut conn, &defaults(), &jobs)
        .await
        .expect("enqueue");
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
    enqueue(&db, 5_000).await;
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

/// The plan of `statement` (one line per node) on `conn`.
async fn plan(conn: &mut sqlx::PgConnection, statement: &str) -> String {
    let rows: Vec<String> = sqlx::query_scalar(statement)
        .fetch_all(&mut *conn)
        .await
        .expect("explain");
    rows.join("\n")
}

#[tokio::test]
async fn a_job_table_grown_from_empty_is_analyzed_and_its_cached_plans_are_made_again() {
    let db = TestDb::new().await;
    sqlx::query("ALTER TABLE herald_jobs SET (autovacuum_enabled = false)")
        .execute(&db.pool)
        .await
        .expect("autovacuum off");
    sqlx::query("ANALYZE herald_jobs")
        .execute(&db.pool)
        .await
        .expect("analyze the empty table");
    // A session's prepared statement, planned once and kept (as a worker's claim is), while the table is empty.
    let mut session = db.pool.acquire().await.expect("connection");
    sqlx::raw_sql(
        "SET plan_cache_mode = force_generic_plan; \
         PREPARE by_ids(int8[]) AS SELECT id FROM herald_jobs WHERE id = ANY($1)",
    )
    .execute(&mut *session)
    .await
    .expect("prepare");
    let explain = "EXPLAIN EXECUTE by_ids('{1,2,3}')";
    assert!(plan(&mut session, explain).await.contains("Seq Scan"));
    assert!(
        herald::clock::housekeeping::analyze_grown(&db.pool)
            .await
            .expect("look")
            .is_empty(),
        "nothing grew"
    );

    enqueue(&db, 20_000).await;
    // The table grew; the statement's plan did not move.
    assert!(plan(&mut session, explain).await.contains("Seq Scan"));
    wait_until(
        Duration::from_secs(10),
        "the inserts in the statistics",
        || async {
            scalar_i64(
                &db.pool,
                "SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'herald_jobs'",
            )
            .await
                >= 20_000
        },
    )
    .await;
    let analyzed = herald::clock::housekeeping::analyze_grown(&db.pool)
        .await
        .expect("look");
    assert!(
        analyzed
            .iter()
            .any(|(table, rows)| *table == "herald_jobs" && *rows >= 20_000),
        "{analyzed:?}"
    );
    let replanned = plan(&mut session, explain).await;
    assert!(!replanned.contains("Seq Scan"), "{replanned}");
    // Analyzed at its size: not grown since.
    let again = herald::clock::housekeeping::analyze_grown(&db.pool)
        .await
        .expect("look");
    assert!(
        !again.iter().any(|(table, _)| *table == "herald_jobs"),
        "{again:?}"
    );
}
