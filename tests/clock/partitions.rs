//! The job history's partitions: kept ahead by the clock (aligned, idempotent, safe from several clocks at
//! once, never over rows already in the default partition), and rows routed to them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald::clock::PartitionSettings;
use herald::clock::housekeeping::keep_partitions;
use herald::partitions::Partition;
use herald::queue::retention::JOB_HISTORY_PARTITIONS;

use crate::common::{TestDb, scalar_i64};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test time")
        .with_timezone(&Utc)
}

fn hourly(ahead: u32) -> PartitionSettings {
    PartitionSettings {
        width: Duration::from_secs(3600),
        ahead,
    }
}

async fn ranged(db: &TestDb) -> Vec<Partition> {
    JOB_HISTORY_PARTITIONS
        .list(&db.pool)
        .await
        .expect("list partitions")
        .into_iter()
        .filter(|p| !p.default)
        .collect()
}

async fn history_at(db: &TestDb, job_id: i64, finished_at: &str) {
    sqlx::query(
        "INSERT INTO herald_job_history (job_id, queue, kind, payload, priority, outcome, attempt, max_attempts, \
                                         errors, created_at, finished_at) \
         VALUES ($1, 'q', 'k', '{}', 0, 'completed', 1, 1, '[]', $2, $2)",
    )
    .bind(job_id)
    .bind(at(finished_at))
    .execute(&db.pool)
    .await
    .expect("insert history");
}

async fn partition_of(db: &TestDb, job_id: i64) -> String {
    sqlx::query_scalar("SELECT tableoid::regclass::text FROM herald_job_history WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&db.pool)
        .await
        .expect("row's partition")
}

#[tokio::test]
async fn partitions_are_kept_ahead_aligned_and_created_once() {
    let db = TestDb::new().await;
    // A new installation: the default partition only.
    let all = JOB_HISTORY_PARTITIONS.list(&db.pool).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].default);

    let now = at("2026-11-30T18:47:13Z");
    let created = keep_partitions(&db.pool, &hourly(3), now).await;
    assert_eq!(
        created,
        vec![
            "herald_job_history_p20261130_180000",
            "herald_job_history_p20261130_190000",
            "herald_job_history_p20261130_200000",
            "herald_job_history_p20261130_210000",
        ]
    );
    let parts = ranged(&db).await;
    assert_eq!(
        parts.first().and_then(|p| p.from),
        Some(at("2026-11-30T18:00:00Z"))
    );
    assert_eq!(
        parts.last().and_then(|p| p.to),
        Some(at("2026-11-30T22:00:00Z"))
    );
    for pair in parts.windows(2) {
        assert_eq!(pair[0].to, pair[1].from, "partitions are contiguous");
    }
    // Again, and from three clocks at once: nothing more.
    assert!(keep_partitions(&db.pool, &hourly(3), now).await.is_empty());
    let four = hourly(4);
    let (a, b, c) = tokio::join!(
        keep_partitions(&db.pool, &four, now),
        keep_partitions(&db.pool, &four, now),
        keep_partitions(&db.pool, &four, now),
    );
    let mut made: Vec<String> = a.into_iter().chain(b).chain(c).collect();
    made.sort();
    assert_eq!(made, vec!["herald_job_history_p20261130_220000"]);
    assert_eq!(ranged(&db).await.len(), 5);

    // Rows go to the partition of their time; a time no partition covers goes to the default one.
    history_at(&db, 1, "2026-11-30T18:50:00Z").await;
    history_at(&db, 2, "2026-11-30T22:59:59Z").await;
    history_at(&db, 3, "2026-12-01T00:30:00Z").await;
    assert_eq!(
        partition_of(&db, 1).await,
        "herald_job_history_p20261130_180000"
    );
    assert_eq!(
        partition_of(&db, 2).await,
        "herald_job_history_p20261130_220000"
    );
    assert_eq!(partition_of(&db, 3).await, "herald_job_history_default");

    // Later: the range whose rows already sit in the default partition is left to it (attaching over them would
    // fail); the next ones are created.
    let created = keep_partitions(&db.pool, &hourly(2), at("2026-11-30T23:10:00Z")).await;
    assert_eq!(
        created,
        vec![
            "herald_job_history_p20261130_230000",
            "herald_job_history_p20261201_010000",
        ]
    );
    assert_eq!(partition_of(&db, 3).await, "herald_job_history_default");
    assert_eq!(
        scalar_i64(&db.pool, "SELECT count(*) FROM herald_job_history").await,
        3
    );
}

#[tokio::test]
async fn a_clock_down_for_longer_than_its_partitions_resumes_at_the_present() {
    let db = TestDb::new().await;
    keep_partitions(&db.pool, &hourly(1), at("2026-11-30T10:00:00Z")).await;
    // Four hours later: no partition for 12:00-14:00 is created in the past; the present and one ahead are.
    let created = keep_partitions(&db.pool, &hourly(1), at("2026-11-30T14:05:00Z")).await;
    assert_eq!(
        created,
        vec![
            "herald_job_history_p20261130_140000",
            "herald_job_history_p20261130_150000",
        ]
    );
}
