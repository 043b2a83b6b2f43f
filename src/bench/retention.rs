//! `herald bench retention`: what retention costs the queue. On a scratch database:
//!
//! 1. `--rows` old history rows (200 days back, spread over 10 days) are inserted in one statement and vacuumed,
//!    as a table that has run for months would hold them: in daily partitions (what the clock makes), or with
//!    `--unpartitioned` in the default partition (rows no partition covers, removed by bounded deletes);
//! 2. a steady load: `--workers` worker processes drain no-op jobs that a feeder keeps topping up, so the queue
//!    always has work; the throughput is completions per second, read from the history rows' `finished_at`;
//! 3. **baseline**: the load alone for `--baseline-secs`;
//! 4. **with retention**: the same load while one retention pass (in this process, to a scratch directory)
//!    archives and removes the old rows; measured over the pass's duration;
//! 5. **after**: the load alone again for `--baseline-secs`. The baseline is the mean of 3 and 5: a queue slows
//!    down by itself as its history grows and autovacuum comes by.
//!
//! Reported: rows archived per second, the queue's throughput in both phases and their ratio (target >= 0.80).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use herald::clock::retention::{ArchiveTarget, Retention, RetentionSettings};
use herald::config::Settings;
use herald::queue::retention::JOB_HISTORY_PARTITIONS;
use herald::queue::worker::builtin::Noop;
use herald::queue::{self, NewJob, QueueName};

use super::{BenchError, scratch_database, spawn_worker, stop_workers};

#[derive(Debug, Clone, clap::Args)]
pub struct RetentionBenchArgs {
    /// Old history rows to archive and remove.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: i64,
    /// Worker processes running the steady load.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Concurrency of each worker process.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long the baseline (load without retention) is measured.
    #[arg(long, default_value_t = 20)]
    pub baseline_secs: u64,
    /// Retention's rows per statement (`clock.retention.batch_size`).
    #[arg(long, default_value_t = 5_000)]
    pub batch_size: usize,
    /// Retention's share of the time (`clock.retention.duty_cycle`; default: the setting's).
    #[arg(long)]
    pub duty_cycle: Option<f64>,
    /// Put the old rows in the default partition instead of daily ones: what retention costs when it must
    /// delete rows in batches.
    #[arg(long)]
    pub unpartitioned: bool,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "herald_bench_retention")]
    pub database: String,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct RetentionBenchReport {
    pub rows: i64,
    pub workers: usize,
    pub concurrency: usize,
    pub batch_size: usize,
    pub duty_cycle: f64,
    pub partitioned: bool,
    pub partitions_dropped: u32,
    pub rows_deleted: u64,
    pub retention_secs: f64,
    pub archived_rows_per_s: f64,
    pub archive_objects: u32,
    pub archive_bytes: u64,
    pub before_jobs_per_s: f64,
    pub after_jobs_per_s: f64,
    /// The mean of before and after.
    pub baseline_jobs_per_s: f64,
    pub during_retention_jobs_per_s: f64,
    /// during / baseline.
    pub ratio: f64,
}

const LOAD_QUEUE: &str = "load";
/// The feeder keeps at least this many jobs waiting.
const MIN_DEPTH: i64 = 50_000;
const FEED_BATCH: usize = 5_000;

pub async fn run(settings: &Settings, args: RetentionBenchArgs) -> Result<(), BenchError> {
    let (url, pool) = scratch_database(settings, &args.database).await?;

    let now = Utc::now();
    if !args.unpartitioned {
        // The partitions a clock would have made: the old days', and the present's for the load.
        let day = chrono::TimeDelta::days(1);
        let first = herald::partitions::align_down(now - day * 200, Duration::from_secs(86_400));
        for n in 0..=10 {
            JOB_HISTORY_PARTITIONS
                .create(&pool, first + day * n, first + day * (n + 1))
                .await?;
        }
        JOB_HISTORY_PARTITIONS
            .ensure_ahead(&pool, now, Duration::from_secs(86_400), 2)
            .await?;
    }
    insert_old_history(&pool, args.rows, now).await?;

    let stop_feeding = CancellationToken::new();
    let feeder = tokio::spawn(feed(
        pool.clone(),
        settings.jobs.defaults(),
        stop_feeding.clone(),
    ));
    let mut workers = Vec::new();
    for _ in 0..args.workers.max(1) {
        workers.push(spawn_worker(
            &url,
            &format!("{LOAD_QUEUE}:{}", args.concurrency),
            1_000,
        )?);
    }
    // Warm up: the workers connect and the queue reaches its pace.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let baseline_from = Utc::now();
    tokio::time::sleep(Duration::from_secs(args.baseline_secs.max(1))).await;
    let baseline_to = Utc::now();

    let archive_dir =
        std::env::temp_dir().join(format!("herald-bench-retention-{}", std::process::id()));
    let mut retention_settings = RetentionSettings::default();
    retention_settings.archive.dir = archive_dir.clone();
    retention_settings.batch_size = args.batch_size;
    if let Some(duty) = args.duty_cycle {
        retention_settings.duty_cycle = duty;
    }
    retention_settings.max_run = Duration::from_secs(3600);
    let target = ArchiveTarget::from_settings(&retention_settings.archive)
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let retention = Arc::new(Retention::new(pool.clone(), &retention_settings));
    let during_from = Utc::now();
    let started = Instant::now();
    let report = retention
        .run_on(&target, now)
        .await
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let retention_secs = started.elapsed().as_secs_f64();
    let during_to = Utc::now();
    // The load alone again: a queue slows down by itself as its history grows and autovacuum comes by, so the
    // pass is compared with the load before and after it.
    tokio::time::sleep(Duration::from_secs(args.baseline_secs.max(1))).await;
    let after_to = Utc::now();

    stop_feeding.cancel();
    let _ = feeder.await;
    stop_workers(workers).await;

    let errors = report.errors();
    if !errors.is_empty() {
        return Err(BenchError::Failed(format!(
            "retention failed: {}",
            errors.join("; ")
        )));
    }
    let history = report
        .data_set("job_history")
        .ok_or_else(|| BenchError::Failed("no job_history in the report".into()))?;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM herald_job_history WHERE queue = 'old'")
            .fetch_one(&pool)
            .await?;
    if history.archived_rows != args.rows as u64 || left != 0 {
        return Err(BenchError::Failed(format!(
            "archived {} of {} rows, {left} left",
            history.archived_rows, args.rows
        )));
    }
    let manifests = target
        .manifests(Some("job_history"))
        .await
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let archive_bytes = manifests.iter().map(|m| m.bytes).sum();

    let before = completions_per_s(&pool, baseline_from, baseline_to).await?;
    let after = completions_per_s(&pool, during_to, after_to).await?;
    let baseline = (before + after) / 2.0;
    let during = completions_per_s(&pool, during_from, during_to).await?;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&archive_dir);

    let report = RetentionBenchReport {
        rows: args.rows,
        workers: args.workers,
        concurrency: args.concurrency,
        batch_size: args.batch_size,
        duty_cycle: retention_settings.duty_cycle,
        partitioned: !args.unpartitioned,
        partitions_dropped: history.partitions_dropped,
        rows_deleted: history.deleted_rows,
        retention_secs,
        archived_rows_per_s: args.rows as f64 / retention_secs.max(1e-6),
        archive_objects: history.objects_written,
        archive_bytes,
        before_jobs_per_s: before,
        after_jobs_per_s: after,
        baseline_jobs_per_s: baseline,
        during_retention_jobs_per_s: during,
        ratio: during / baseline.max(1e-6),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!(
            "herald bench retention: {} old history rows ({}), {} worker process(es) x concurrency {}, batch {}, \
             duty cycle {}",
            report.rows,
            if report.partitioned {
                "in daily partitions"
            } else {
                "in the default partition"
            },
            report.workers,
            report.concurrency,
            report.batch_size,
            report.duty_cycle
        );
        println!(
            "  removed                 {:>10} partitions dropped, {} rows deleted",
            report.partitions_dropped, report.rows_deleted
        );
        println!(
            "  retention pass          {:>10.1} s   {:>10.0} rows/s archived+removed ({} objects, {:.1} MB)",
            report.retention_secs,
            report.archived_rows_per_s,
            report.archive_objects,
            report.archive_bytes as f64 / 1e6
        );
        println!(
            "  queue alone             {:>10.0} jobs/s",
            report.baseline_jobs_per_s
        );
        println!(
            "  queue during retention  {:>10.0} jobs/s   ratio {:.2}",
            report.during_retention_jobs_per_s, report.ratio
        );
    }
    Ok(())
}

/// `rows` completed jobs finished 200 to 190 days before `now`, in finish order (as the ack path appends them),
/// then vacuumed (summarized BRIN ranges, hint bits set), as months-old rows would be.
async fn insert_old_history(
    pool: &PgPool,
    rows: i64,
    now: DateTime<Utc>,
) -> Result<(), BenchError> {
    let from = now - chrono::TimeDelta::days(200);
    let span_secs = 10.0 * 86_400.0;
    sqlx::query(
        "INSERT INTO herald_job_history (job_id, queue, kind, payload, priority, outcome, attempt, max_attempts, \
                                         errors, created_at, claimed_at, finished_at) \
         SELECT g, 'old', 'herald.noop', jsonb_build_object('user', g, 'template', 'welcome'), 0, 'completed', 1, \
                10, '[]', t, t, t \
         FROM generate_series(1, $1::int8) g, \
              LATERAL (SELECT $2::timestamptz + make_interval(secs => g * $3::float8 / $1) AS t) x",
    )
    .bind(rows)
    .bind(from)
    .bind(span_secs)
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE herald_job_history")
        .execute(pool)
        .await?;
    Ok(())
}

/// Keeps at least [`MIN_DEPTH`] jobs waiting until `stop`.
async fn feed(
    pool: PgPool,
    defaults: queue::JobDefaults,
    stop: CancellationToken,
) -> Result<(), BenchError> {
    let queue = QueueName::parse(LOAD_QUEUE).map_err(|e| BenchError::Failed(e.to_string()))?;
    let job = NewJob::typed(queue, &Noop {}).map_err(|e| BenchError::Failed(e.to_string()))?;
    let batch = vec![job; FEED_BATCH];
    let mut conn = pool.acquire().await?;
    while !stop.is_cancelled() {
        let depth: i64 = sqlx::query_scalar("SELECT count(*) FROM herald_jobs")
            .fetch_one(&mut *conn)
            .await?;
        if depth < MIN_DEPTH {
            for _ in 0..4 {
                queue::enqueue_many(&mut conn, &defaults, &batch).await?;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

async fn completions_per_s(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<f64, BenchError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM herald_job_history WHERE queue = $1 AND finished_at >= $2 AND finished_at < $3",
    )
    .bind(LOAD_QUEUE)
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    let secs = (to - from).num_milliseconds() as f64 / 1000.0;
    Ok(n as f64 / secs.max(1e-3))
}
