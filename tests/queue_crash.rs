//! Crashes: a worker process killed with SIGKILL while holding jobs, and PostgreSQL itself restarting under a
//! running worker. Nothing may be lost, nothing completed twice.

mod common;

use std::time::Duration;

use common::*;
use herald::embedded_postgres::EmbeddedPostgres;
use herald::queue::{self, HandlerRegistry};
use serde_json::json;

#[tokio::test]
async fn kill_9_of_a_worker_process_holding_jobs_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let jobs: Vec<_> = (0..300)
        .map(|_| job("crash", "herald.sleep", json!({"ms": 20})))
        .collect();
    let mut conn = db.pool.acquire().await.unwrap();
    queue::enqueue_many(&mut conn, &defaults(), &jobs)
        .await
        .unwrap();

    let mut victim = spawn_herald(&db.url, &["worker", "--queues", "crash:10"]);
    wait_until(
        Duration::from_secs(30),
        "the victim to complete some jobs and hold others",
        || async {
            completions(&db.pool).await.0 >= 30
                && scalar_i64(
                    &db.pool,
                    "SELECT count(*) FROM herald_jobs WHERE lease_token IS NOT NULL",
                )
                .await
                    > 0
        },
    )
    .await;
    victim.kill().await.unwrap(); // SIGKILL: no graceful anything
    let orphaned = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM herald_jobs WHERE lease_token IS NOT NULL",
    )
    .await;
    assert!(orphaned > 0, "the killed worker held leases");

    let mut survivor = spawn_herald(&db.url, &["worker", "--queues", "crash:10"]);
    wait_until(Duration::from_secs(60), "every job to finish", || async {
        live_jobs(&db.pool).await == 0
    })
    .await;
    survivor.kill().await.unwrap();

    assert_eq!(
        completions(&db.pool).await,
        (300, 300),
        "each job completed exactly once"
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_dead_letters").await,
        0
    );
    let rescued = scalar_i64(
        &db.pool,
        "SELECT count(*) FROM herald_job_history WHERE errors @> '[{\"kind\": \"lease_expired\"}]'",
    )
    .await;
    // An ack flush already sent when the victim died may still commit, so some held jobs finish without rescue.
    assert!(
        rescued > 0 && rescued <= orphaned,
        "{rescued} of {orphaned} held jobs were rescued by the survivor"
    );
}

/// Stops the private cluster even when the test fails.
struct ClusterGuard(EmbeddedPostgres);
impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}

#[tokio::test]
async fn a_postgres_restart_under_a_running_worker_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterGuard(
        tokio::task::spawn_blocking({
            let path = dir.path().join("pg");
            move || EmbeddedPostgres::start(&path)
        })
        .await
        .unwrap()
        .expect("a private PostgreSQL (needs initdb and pg_ctl)"),
    );
    let db = TestDb::on_server(&cluster.0.url()).await;
    let executed = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let mut registry = HandlerRegistry::new();
    let seen = std::sync::Arc::clone(&executed);
    registry.register_raw("test", move |_, ctx| {
        let seen = std::sync::Arc::clone(&seen);
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            seen.lock().unwrap().insert(ctx.id);
            Ok(())
        }
    });
    let worker = RunningWorker::start(&db.pool, options(&[("q", 8)]), registry);
    let jobs: Vec<_> = (0..2000).map(|_| job("q", "test", json!({}))).collect();
    let ids = db.enqueue(jobs).await;
    wait_until(
        Duration::from_secs(30),
        "some progress before the restart",
        || async { completions(&db.pool).await.0 >= 200 },
    )
    .await;

    let restart = tokio::task::spawn_blocking(move || {
        let result = cluster.0.restart();
        (cluster, result)
    });
    let (cluster, restarted) = restart.await.unwrap();
    restarted.expect("restart PostgreSQL");
    assert!(
        completions(&db.pool).await.0 < 2000,
        "the restart happened mid-run"
    );

    wait_until(
        Duration::from_secs(90),
        "every job to finish after the restart",
        || async { live_jobs(&db.pool).await == 0 },
    )
    .await;
    worker.stop().await;
    assert_eq!(completions(&db.pool).await, (2000, 2000));
    let executed = executed.lock().unwrap();
    assert!(ids.iter().all(|id| executed.contains(id)), "every job ran");
    drop(db);
    drop(cluster);
}
