//! Retention against real Postgres with an injected "now": exactly the old rows archived and removed, archives
//! that restore to the original rows, crashes (simulated, and a real `abort()` of `herald retention run`) that
//! lose nothing and archive nothing twice, an S3-compatible target (moto's server, started by the test), and
//! idempotency keys deleted after their TTL.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use herald::clock::retention::{self, ArchiveTarget, Retention, RetentionSettings, S3Settings};
use serde_json::Value;
use sqlx::PgPool;

use crate::common::{TestDb, scalar_i64, spawn_herald_with, wait_until};

/// The pass's "now" in every test: cutoff (180 days) = 2025-09-02T12:00:00Z.
const NOW: &str = "2026-03-01T12:00:00Z";

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test time")
        .with_timezone(&Utc)
}

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("test day")
}

/// Small slices and parts, so a few hundred rows exercise both.
fn settings_for(dir: &Path) -> RetentionSettings {
    let mut settings = RetentionSettings::default();
    settings.archive.dir = dir.to_path_buf();
    settings.batch_size = 7;
    settings.rows_per_object = 40;
    settings
}

/// `n` completed history rows finished from `first`, one second apart.
async fn history(pool: &PgPool, n: i64, first: &str, queue: &str) {
    sqlx::query(
        "INSERT INTO herald_job_history (job_id, queue, kind, payload, priority, outcome, attempt, max_attempts, \
                                         errors, created_at, claimed_at, finished_at) \
         SELECT g, $3, 'test.kind', jsonb_build_object('n', g, 'text', 'héllo \"quoted\"'), 0, 'completed', 1, 5, \
                '[]', t - interval '1 minute', t - interval '30 seconds', t \
         FROM generate_series(1, $1::int8) g, LATERAL (SELECT $2::timestamptz + g * interval '1 second' AS t) x",
    )
    .bind(n)
    .bind(at(first))
    .bind(queue)
    .execute(pool)
    .await
    .expect("insert history");
}

async fn jsonb_rows(pool: &PgPool, sql: &str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, Value>(sql)
        .fetch_all(pool)
        .await
        .expect(sql)
        .iter()
        .map(Value::to_string)
        .collect()
}

async fn pass(pool: &PgPool, settings: &RetentionSettings) -> retention::RetentionReport {
    let report = Retention::new(pool.clone(), settings)
        .run(at(NOW))
        .await
        .expect("retention pass");
    assert!(report.errors().is_empty(), "{:?}", report.errors());
    report
}

fn files_named(dir: &Path, suffix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read archive dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path.display().to_string());
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn retention_archives_exactly_the_old_rows_and_removes_them() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    // Old: 100 rows on 2025-08-01, 30 on the cutoff's own day before it. Young: 25 after the cutoff that day,
    // 20 the week before now.
    history(&db.pool, 100, "2025-08-01T10:00:00Z", "old").await;
    history(&db.pool, 30, "2025-09-02T06:00:00Z", "old").await;
    history(&db.pool, 25, "2025-09-02T12:00:00Z", "young").await;
    history(&db.pool, 20, "2026-02-22T00:00:00Z", "young").await;
    sqlx::query(
        "INSERT INTO herald_dead_letters (job_id, queue, kind, payload, priority, attempt, max_attempts, timeout_ms, \
                                          errors, reason, created_at, failed_at) \
         SELECT g, 'q', 'k', '{}', 0, 3, 3, 1000, '[]', 'boom', t, t \
         FROM generate_series(1, 6) g, \
              LATERAL (SELECT CASE WHEN g <= 4 THEN timestamptz '2025-07-01' ELSE timestamptz '2026-01-01' END \
                       + g * interval '1 minute' AS t) x",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO herald_events (event_id, name, key, payload, received_at) \
         VALUES ('e1', 'paid', 'u1', '{}', '2025-06-01T00:00:00Z'), ('e2', 'paid', 'u2', '{}', '2026-02-01T00:00:00Z')",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    // In-app feed items: two older than the cutoff, one young.
    sqlx::query(
        "INSERT INTO herald_feed_items (recipient_id, idempotency_key, title, created_at) \
         VALUES ('ada', 'f1', 'old', '2025-07-01T00:00:00Z'), ('ada', 'f2', 'old', '2025-08-01T00:00:00Z'), \
                ('ada', 'f3', 'young', '2026-02-01T00:00:00Z')",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let report = pass(&db.pool, &settings_for(dir.path())).await;

    let feed = report.data_set("feed_items").unwrap();
    assert_eq!((feed.archived_rows, feed.deleted_rows), (2, 2));
    assert_eq!(
        scalar_i64(
            &db.pool,
            "SELECT count(*) FROM herald_feed_items WHERE title = 'young'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_feed_items").await,
        1
    );

    let history_report = report.data_set("job_history").unwrap();
    assert_eq!(history_report.archived_rows, 130);
    assert_eq!(history_report.deleted_rows, 130);
    assert_eq!(
        history_report.days,
        vec![day("2025-08-01"), day("2025-09-02")]
    );
    assert_eq!(
        scalar_i64(
            &db.pool,
            "SELECT count(*) FROM herald_job_history WHERE queue = 'old'"
        )
        .await,
        0
    );
    assert_eq!(
        scalar_i64(
            &db.pool,
            "SELECT count(*) FROM herald_job_history WHERE queue = 'young'"
        )
        .await,
        45
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_dead_letters").await,
        2
    );
    assert_eq!(
        scalar_i64(
            &db.pool,
            "SELECT count(*) FROM herald_events WHERE event_id = 'e2'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_events").await,
        1
    );

    // 100 rows at 40 per object: three parts; the cutoff's day: one part ending at the cutoff.
    let target = ArchiveTarget::from_settings(&settings_for(dir.path()).archive).unwrap();
    let manifests = target.manifests(Some("job_history")).await.unwrap();
    let shape: Vec<(NaiveDate, u32, u64)> =
        manifests.iter().map(|m| (m.day, m.part, m.rows)).collect();
    assert_eq!(
        shape,
        vec![
            (day("2025-08-01"), 0, 40),
            (day("2025-08-01"), 1, 40),
            (day("2025-08-01"), 2, 20),
            (day("2025-09-02"), 0, 30),
        ]
    );
    assert_eq!(manifests[3].to, at("2025-09-02T12:00:00Z"));
    assert_eq!(manifests[0].from, at("2025-08-01T00:00:00Z"));
    for pair in manifests[..3].windows(2) {
        assert_eq!(pair[0].to, pair[1].from, "parts of a day are contiguous");
    }
    assert_eq!(manifests[0].schema_version, 1);
    // The pass reports (and the job counts in `clock_archived_bytes_total`) the objects' size as written.
    assert_eq!(
        history_report.archived_bytes,
        manifests.iter().map(|m| m.bytes).sum::<u64>()
    );
    assert_eq!(manifests[0].sha256.len(), 64);
    // Four of job history, one of dead letters, one of events, and one for each of the feed's two days.
    assert_eq!(files_named(dir.path(), ".jsonl.gz").len(), 8);
    assert!(
        dir.path()
            .join("feed_items/2025/07/01/0000.jsonl.gz")
            .exists()
    );
    assert!(
        dir.path()
            .join("job_history/2025/08/01/0002.jsonl.gz")
            .exists()
    );
    assert_eq!(
        target.manifests(Some("dead_letters")).await.unwrap()[0].rows,
        4
    );

    // A second pass finds nothing old and writes nothing.
    let again = pass(&db.pool, &settings_for(dir.path())).await;
    assert!(
        again
            .data_sets
            .iter()
            .all(|d| d.objects_written == 0 && d.deleted_rows == 0)
    );
    assert_eq!(target.manifests(None).await.unwrap().len(), 8);
}

#[tokio::test]
async fn archived_days_restore_to_the_original_rows() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    history(&db.pool, 90, "2025-08-01T10:00:00Z", "old").await;
    let original = jsonb_rows(
        &db.pool,
        "SELECT to_jsonb(h) FROM herald_job_history h WHERE queue = 'old'",
    )
    .await;
    // A finished run with a step, a wait and a delivery; and a run still running since long ago (kept).
    sqlx::query(
        "INSERT INTO herald_workflows (name, version, definition, digest, source) VALUES ('w', 1, '{}', 'd', 'test')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO herald_runs (id, workflow, version, status, pending, context, created_at, finished_at) VALUES \
         (1, 'w', 1, 'completed', 0, '{\"a\": 1}', '2025-08-01T09:00:00Z', '2025-08-01T09:05:00Z'), \
         (2, 'w', 1, 'running', 1, '{}', '2025-08-01T09:00:00Z', NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO herald_run_steps (run_id, epoch, node_id, status, outcome) VALUES (1, 1, 'wait', 'completed', \
         'satisfied'), (1, 1, 'send', 'completed', 'sent'), (2, 1, 'send', 'running', NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO herald_waits (run_id, epoch, node_id, key, events, mode, needed, since, status) \
         VALUES (1, 1, 'wait', 'u1', '{paid}', 'all', 1, '2025-08-01T09:00:00Z', 'satisfied')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO herald_deliveries (run_id, node_id, recipient, channel, status, provider) \
         VALUES (1, 'send', 'a@example.com', 'email', 'delivered', 'ses'), (2, 'send', 'b@example.com', 'email', \
         'sending', 'ses')",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    pass(&db.pool, &settings_for(dir.path())).await;
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_runs").await,
        1
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_run_steps").await,
        1
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_waits").await,
        0
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_deliveries").await,
        1
    );

    let target = ArchiveTarget::from_settings(&settings_for(dir.path()).archive).unwrap();
    // Into the scratch table: one jsonb per archived row.
    let restored = retention::restore(&db.pool, &target, "job_history", day("2025-08-01"), None)
        .await
        .unwrap();
    assert_eq!(restored.table, "herald_restored_job_history_20250801");
    assert_eq!((restored.rows, restored.parts), (90, 3));
    let scratch = jsonb_rows(
        &db.pool,
        "SELECT row FROM herald_restored_job_history_20250801",
    )
    .await;
    assert_eq!(scratch, original);
    // Restoring twice adds nothing.
    retention::restore(&db.pool, &target, "job_history", day("2025-08-01"), None)
        .await
        .unwrap();
    assert_eq!(
        scalar_i64(
            &db.pool,
            "SELECT count(*) FROM herald_restored_job_history_20250801"
        )
        .await,
        90
    );
    // Into a table shaped like the original: the rows, column for column.
    sqlx::query("CREATE TABLE history_copy (LIKE herald_job_history)")
        .execute(&db.pool)
        .await
        .unwrap();
    retention::restore(
        &db.pool,
        &target,
        "job_history",
        day("2025-08-01"),
        Some("history_copy"),
    )
    .await
    .unwrap();
    assert_eq!(
        jsonb_rows(&db.pool, "SELECT to_jsonb(c) FROM history_copy c").await,
        original
    );

    // The run came back with its steps, wait and delivery.
    let restored = retention::restore(&db.pool, &target, "runs", day("2025-08-01"), None)
        .await
        .unwrap();
    assert_eq!(restored.rows, 1);
    let run: Value = sqlx::query_scalar("SELECT row FROM herald_restored_runs_20250801")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(run["id"], 1);
    assert_eq!(run["context"], serde_json::json!({"a": 1}));
    assert_eq!(run["steps"].as_array().map(Vec::len), Some(2));
    assert_eq!(run["waits"][0]["status"], "satisfied");
    assert_eq!(run["deliveries"][0]["recipient"], "a@example.com");

    // A day with no archive, and a tampered object, are refused.
    assert!(
        retention::restore(&db.pool, &target, "job_history", day("2025-08-02"), None)
            .await
            .is_err()
    );
    std::fs::write(
        dir.path().join("job_history/2025/08/01/0001.jsonl.gz"),
        b"tampered",
    )
    .unwrap();
    let error = retention::restore(
        &db.pool,
        &target,
        "job_history",
        day("2025-08-01"),
        Some("history_copy"),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("does not read back"), "{error}");
}

#[tokio::test]
async fn a_crash_between_archive_and_removal_loses_nothing_and_archives_nothing_twice() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(dir.path());
    history(&db.pool, 60, "2025-08-01T10:00:00Z", "old").await;
    let original = jsonb_rows(&db.pool, "SELECT to_jsonb(h) FROM herald_job_history h").await;
    pass(&db.pool, &settings).await;
    let target = ArchiveTarget::from_settings(&settings.archive).unwrap();
    let manifests = target.manifests(None).await.unwrap();
    assert_eq!(manifests.len(), 2);

    // The state a crash after the manifests and before any removal leaves: every archived row still there.
    // (The rows are put back from the archive itself.)
    retention::restore(
        &db.pool,
        &target,
        "job_history",
        day("2025-08-01"),
        Some("herald_job_history"),
    )
    .await
    .unwrap();
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_job_history").await,
        60
    );
    let report = pass(&db.pool, &settings).await;
    let entry = report.data_set("job_history").unwrap();
    assert_eq!(
        (
            entry.objects_written,
            entry.resumed_parts,
            entry.deleted_rows
        ),
        (0, 2, 60)
    );
    assert_eq!(
        target.manifests(None).await.unwrap(),
        manifests,
        "manifests untouched"
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_job_history").await,
        0
    );

    // A crash in the middle of the removal: part of the rows gone.
    retention::restore(
        &db.pool,
        &target,
        "job_history",
        day("2025-08-01"),
        Some("herald_job_history"),
    )
    .await
    .unwrap();
    sqlx::query("DELETE FROM herald_job_history WHERE job_id % 3 = 0")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = pass(&db.pool, &settings).await;
    assert_eq!(report.data_set("job_history").unwrap().deleted_rows, 40);
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_job_history").await,
        0
    );

    // A crash in the middle of a write: an object without a manifest is written again, once.
    history(&db.pool, 10, "2025-08-03T10:00:00Z", "old").await;
    let third = target.manifests(None).await.unwrap().len();
    std::fs::create_dir_all(dir.path().join("job_history/2025/08/03")).unwrap();
    std::fs::write(
        dir.path().join("job_history/2025/08/03/0000.jsonl.gz"),
        b"half an obj",
    )
    .unwrap();
    pass(&db.pool, &settings).await;
    let after = target.manifests(None).await.unwrap();
    assert_eq!(after.len(), third + 1);
    assert_eq!(after.last().unwrap().rows, 10);

    // Everything archived is there, once.
    sqlx::query("CREATE TABLE everything (LIKE herald_job_history)")
        .execute(&db.pool)
        .await
        .unwrap();
    retention::restore(
        &db.pool,
        &target,
        "job_history",
        day("2025-08-01"),
        Some("everything"),
    )
    .await
    .unwrap();
    assert_eq!(
        jsonb_rows(&db.pool, "SELECT to_jsonb(e) FROM everything e").await,
        original
    );
}

/// Runs `herald retention run --now NOW` on `db` with the archive in `dir`; the failpoint, if any, aborts it.
async fn herald_pass(db: &TestDb, dir: &Path, failpoint: Option<&str>) -> std::process::ExitStatus {
    let archive_dir = dir.display().to_string();
    let mut env = vec![
        (
            "HERALD_CLOCK__RETENTION__ARCHIVE__DIR",
            archive_dir.as_str(),
        ),
        ("HERALD_CLOCK__RETENTION__ROWS_PER_OBJECT", "40"),
    ];
    if let Some(name) = failpoint {
        env.push(("HERALD_FAILPOINT", name));
    }
    let mut child = spawn_herald_with(&db.url, &["retention", "run", "--now", NOW], &env);
    tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("herald retention run finishes")
        .expect("wait")
}

#[tokio::test]
async fn a_killed_retention_process_loses_nothing_and_the_rerun_archives_nothing_twice() {
    use std::os::unix::process::ExitStatusExt;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    history(&db.pool, 50, "2025-08-01T10:00:00Z", "old").await;
    let original = jsonb_rows(&db.pool, "SELECT to_jsonb(h) FROM herald_job_history h").await;
    let target = ArchiveTarget::from_settings(&settings_for(dir.path()).archive).unwrap();

    // Killed after the first object is written, before its manifest: nothing recorded, nothing removed.
    let status = herald_pass(&db, dir.path(), Some("retention.after_upload")).await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    assert_eq!(files_named(dir.path(), ".jsonl.gz").len(), 1);
    assert!(target.manifests(None).await.unwrap().is_empty());
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_job_history").await,
        50
    );

    // Killed after the first manifest, before its rows are removed.
    let status = herald_pass(&db, dir.path(), Some("retention.after_manifest")).await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let manifests = target.manifests(None).await.unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_job_history").await,
        50
    );

    // The rerun removes the first part's rows without writing it again, then archives the rest.
    let status = herald_pass(&db, dir.path(), None).await;
    assert!(status.success(), "{status:?}");
    let after = target.manifests(None).await.unwrap();
    assert_eq!(after.len(), 2, "{after:#?}");
    assert_eq!(
        after[0], manifests[0],
        "the first manifest is not written twice"
    );
    assert_eq!((after[0].rows, after[1].rows), (40, 10));
    assert_eq!(files_named(dir.path(), ".jsonl.gz").len(), 2);
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_job_history").await,
        0
    );
    sqlx::query("CREATE TABLE everything (LIKE herald_job_history)")
        .execute(&db.pool)
        .await
        .unwrap();
    retention::restore(
        &db.pool,
        &target,
        "job_history",
        day("2025-08-01"),
        Some("everything"),
    )
    .await
    .unwrap();
    assert_eq!(
        jsonb_rows(&db.pool, "SELECT to_jsonb(e) FROM everything e").await,
        original
    );
}

#[tokio::test]
async fn idempotency_keys_and_circuits_are_deleted_after_their_ttl() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    sqlx::query(
        "INSERT INTO herald_idempotency_keys (key, job_id, created_at) VALUES \
         ('old-1', 1, '2026-02-20T00:00:00Z'), ('old-2', 2, '2026-02-22T11:59:59Z'), \
         ('young', 3, '2026-02-22T12:00:01Z'), ('today', 4, '2026-03-01T11:00:00Z')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO herald_provider_circuits (provider, worker_id, state, consecutive_failures, updated_at) VALUES \
         ('ses', gen_random_uuid(), 'closed', 0, '2026-01-01T00:00:00Z'), \
         ('ses', gen_random_uuid(), 'open', 3, '2026-02-28T00:00:00Z')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let report = pass(&db.pool, &settings_for(dir.path())).await;
    assert_eq!(report.data_set("idempotency_keys").unwrap().deleted_rows, 2);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT key FROM herald_idempotency_keys ORDER BY key")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(left, vec!["today", "young"]);
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_provider_circuits").await,
        1
    );
    // Deleted, never archived.
    let target = ArchiveTarget::from_settings(&settings_for(dir.path()).archive).unwrap();
    assert!(target.manifests(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_retention_job_archives_as_of_its_tick() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    history(&db.pool, 12, "2025-08-01T10:00:00Z", "old").await;
    let mut registry = herald::queue::HandlerRegistry::new();
    retention::register(
        &mut registry,
        Arc::new(Retention::new(db.pool.clone(), &settings_for(dir.path()))),
    );
    db.enqueue(vec![crate::common::job(
        "herald.maintenance",
        "herald.retention",
        serde_json::json!({ "tick": NOW }),
    )])
    .await;
    let worker = crate::common::RunningWorker::start(
        &db.pool,
        crate::common::options(&[("herald.maintenance", 1)]),
        registry,
    );
    wait_until(Duration::from_secs(30), "the retention job completes", || async {
        scalar_i64(
            &db.pool,
            "SELECT count(*) FROM herald_job_history WHERE kind = 'herald.retention' AND outcome = 'completed'",
        )
        .await
            == 1
    })
    .await;
    worker.stop().await;
    assert_eq!(
        scalar_i64(
            &db.pool,
            "SELECT count(*) FROM herald_job_history WHERE queue = 'old'"
        )
        .await,
        0
    );
    let target = ArchiveTarget::from_settings(&settings_for(dir.path()).archive).unwrap();
    assert_eq!(target.manifests(None).await.unwrap()[0].rows, 12);
}

/// moto's S3 server on a free port, killed when dropped.
struct S3Server {
    endpoint: String,
    _child: tokio::process::Child,
}

async fn start_s3() -> S3Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect(
            "python3 with moto[server] (run ./test.sh, or python3 -m pip install 'moto[server]')",
        );
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let bucket = format!("{endpoint}/herald-archive");
    wait_until(
        Duration::from_secs(30),
        "moto's S3 server answers",
        || async {
            client
                .put(&bucket)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    S3Server {
        endpoint,
        _child: child,
    }
}

#[tokio::test]
async fn archives_go_to_an_s3_compatible_server_and_restore_from_it() {
    let s3 = start_s3().await;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(dir.path());
    settings.archive.s3 = Some(S3Settings {
        bucket: "herald-archive".to_string(),
        prefix: "prod/herald".to_string(),
        endpoint: Some(s3.endpoint.clone()),
        region: Some("us-east-1".to_string()),
        access_key_id: Some("test".to_string()),
        secret_access_key: Some("test".to_string()),
        allow_http: true,
    });
    history(&db.pool, 70, "2025-08-01T10:00:00Z", "old").await;
    history(&db.pool, 5, "2026-02-01T10:00:00Z", "young").await;
    let original = jsonb_rows(
        &db.pool,
        "SELECT to_jsonb(h) FROM herald_job_history h WHERE queue = 'old'",
    )
    .await;

    let report = pass(&db.pool, &settings).await;
    assert_eq!(report.data_set("job_history").unwrap().archived_rows, 70);
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_job_history").await,
        5
    );
    // Nothing went to the directory.
    assert!(files_named(dir.path(), ".gz").is_empty());

    let target = ArchiveTarget::from_settings(&settings.archive).unwrap();
    let manifests = target.manifests(Some("job_history")).await.unwrap();
    assert_eq!(manifests.iter().map(|m| m.rows).sum::<u64>(), 70);
    assert_eq!(manifests[0].object, "job_history/2025/08/01/0000.jsonl.gz");
    // The object is where the layout says, under the prefix.
    let object = reqwest::get(format!(
        "{}/herald-archive/prod/herald/job_history/2025/08/01/0000.jsonl.gz",
        s3.endpoint
    ))
    .await
    .unwrap();
    assert!(object.status().is_success());

    sqlx::query("CREATE TABLE history_copy (LIKE herald_job_history)")
        .execute(&db.pool)
        .await
        .unwrap();
    retention::restore(
        &db.pool,
        &target,
        "job_history",
        day("2025-08-01"),
        Some("history_copy"),
    )
    .await
    .unwrap();
    assert_eq!(
        jsonb_rows(&db.pool, "SELECT to_jsonb(c) FROM history_copy c").await,
        original
    );
}

/// Creates daily history partitions for the given days.
async fn daily_partitions(pool: &PgPool, days: &[&str]) {
    for d in days {
        let from = at(&format!("{d}T00:00:00Z"));
        let created = herald::queue::retention::JOB_HISTORY_PARTITIONS
            .create(pool, from, from + chrono::TimeDelta::days(1))
            .await
            .expect("create partition");
        assert!(created, "partition for {d}");
    }
}

async fn partition_names(pool: &PgPool) -> Vec<String> {
    herald::queue::retention::JOB_HISTORY_PARTITIONS
        .list(pool)
        .await
        .expect("list partitions")
        .into_iter()
        .map(|p| p.name)
        .collect()
}

#[tokio::test]
async fn whole_partitions_are_archived_then_dropped_and_the_cutoffs_partition_waits() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_for(dir.path());
    daily_partitions(&db.pool, &["2025-08-01", "2025-08-02", "2025-09-02"]).await;
    // In partitions: 100 rows on 08-01, 30 on 08-02, 30 + 25 on 09-02 (the cutoff's day, before and after the
    // cutoff). In the default partition: 20 rows on 08-05.
    history(&db.pool, 100, "2025-08-01T10:00:00Z", "old").await;
    history(&db.pool, 30, "2025-08-02T10:00:00Z", "old").await;
    history(&db.pool, 20, "2025-08-05T10:00:00Z", "old").await;
    history(&db.pool, 30, "2025-09-02T06:00:00Z", "cutoff-day").await;
    history(&db.pool, 25, "2025-09-02T12:00:00Z", "cutoff-day").await;
    let original = jsonb_rows(
        &db.pool,
        "SELECT to_jsonb(h) FROM herald_job_history h WHERE queue = 'old'",
    )
    .await;

    let report = pass(&db.pool, &settings).await;
    let entry = report.data_set("job_history").unwrap();
    // The cutoff (2025-09-02T12:00) is rounded down to its partition's start: that day waits whole.
    assert_eq!(entry.cutoff, Some(at("2025-09-02T00:00:00Z")));
    assert_eq!(entry.archived_rows, 150);
    assert_eq!(entry.partitions_dropped, 2);
    assert_eq!(
        entry.deleted_rows, 20,
        "only the default partition's rows are deleted"
    );
    assert_eq!(
        partition_names(&db.pool).await,
        vec![
            "herald_job_history_default",
            "herald_job_history_p20250902_000000"
        ]
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_job_history").await,
        55
    );

    // Every archived row restores to what it was.
    sqlx::query("CREATE TABLE everything (LIKE herald_job_history)")
        .execute(&db.pool)
        .await
        .unwrap();
    let target = ArchiveTarget::from_settings(&settings.archive).unwrap();
    for d in ["2025-08-01", "2025-08-02", "2025-08-05"] {
        retention::restore(&db.pool, &target, "job_history", day(d), Some("everything"))
            .await
            .unwrap();
    }
    assert_eq!(
        jsonb_rows(&db.pool, "SELECT to_jsonb(e) FROM everything e").await,
        original
    );

    // A day later the cutoff's day is past: archived whole, then dropped.
    let report = Retention::new(db.pool.clone(), &settings)
        .run(at("2026-03-02T12:00:00Z"))
        .await
        .unwrap();
    assert!(report.errors().is_empty(), "{:?}", report.errors());
    let entry = report.data_set("job_history").unwrap();
    assert_eq!(
        (
            entry.archived_rows,
            entry.partitions_dropped,
            entry.deleted_rows
        ),
        (55, 1, 0)
    );
    assert_eq!(
        partition_names(&db.pool).await,
        vec!["herald_job_history_default"]
    );
}

#[tokio::test]
async fn a_killed_pass_over_partitions_drops_them_on_the_rerun_without_archiving_twice() {
    use std::os::unix::process::ExitStatusExt;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    daily_partitions(&db.pool, &["2025-08-01"]).await;
    history(&db.pool, 50, "2025-08-01T10:00:00Z", "old").await;
    let original = jsonb_rows(&db.pool, "SELECT to_jsonb(h) FROM herald_job_history h").await;
    let target = ArchiveTarget::from_settings(&settings_for(dir.path()).archive).unwrap();

    // Killed after the first manifest: the partition keeps every row.
    let status = herald_pass(&db, dir.path(), Some("retention.after_manifest")).await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    assert_eq!(target.manifests(None).await.unwrap().len(), 1);
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_job_history").await,
        50
    );

    // The rerun archives the rest once, then drops the partition.
    let status = herald_pass(&db, dir.path(), None).await;
    assert!(status.success(), "{status:?}");
    let after = target.manifests(None).await.unwrap();
    assert_eq!(
        after.iter().map(|m| m.rows).collect::<Vec<_>>(),
        vec![40, 10]
    );
    assert_eq!(
        partition_names(&db.pool).await,
        vec!["herald_job_history_default"]
    );
    sqlx::query("CREATE TABLE everything (LIKE herald_job_history)")
        .execute(&db.pool)
        .await
        .unwrap();
    retention::restore(
        &db.pool,
        &target,
        "job_history",
        day("2025-08-01"),
        Some("everything"),
    )
    .await
    .unwrap();
    assert_eq!(
        jsonb_rows(&db.pool, "SELECT to_jsonb(e) FROM everything e").await,
        original
    );
}

#[tokio::test]
async fn history_without_archive_is_dropped_by_partition_and_nothing_is_written() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(dir.path());
    settings.job_history_archive = false;
    daily_partitions(&db.pool, &["2025-08-01", "2025-08-02"]).await;
    history(&db.pool, 100, "2025-08-01T10:00:00Z", "old").await;
    history(&db.pool, 30, "2025-08-02T10:00:00Z", "old").await;
    history(&db.pool, 20, "2025-08-05T10:00:00Z", "old").await; // the default partition
    history(&db.pool, 25, "2026-02-22T00:00:00Z", "young").await;

    let report = pass(&db.pool, &settings).await;
    let entry = report.data_set("job_history").unwrap();
    assert_eq!(
        (
            entry.archived_rows,
            entry.partitions_dropped,
            entry.deleted_rows
        ),
        (0, 2, 20)
    );
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_job_history").await,
        25
    );
    let target = ArchiveTarget::from_settings(&settings.archive).unwrap();
    assert!(
        target
            .manifests(Some("job_history"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        partition_names(&db.pool).await,
        vec!["herald_job_history_default"]
    );
}
