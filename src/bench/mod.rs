//! `herald bench`: throughput and latency on a scratch database, with real worker processes. Part of the binary,
//! not the library: nothing here is API.
//!
//! * this file: the queue (`herald bench`), and the helpers the others share (scratch databases, worker
//!   processes, counters);
//! * [`workflows`], [`http`], [`channels`], [`bridge`], [`soak`], [`retention`], [`fanout`], [`digest`], [`feed`]:
//!   `herald bench workflows|http|channels|bridge|soak|retention|fanout|digest|feed`.
//!
//! The queue bench's phases, each measured on its own:
//! Phases, each measured on its own:
//! 1. **enqueue**: N no-op jobs through the batch enqueue statement;
//! 2. **execute**: W worker processes (this binary, `herald worker`) with concurrency C drain them; the rate is
//!    N / (last ack - first claim), read from the jobs' history rows. Commits and WAL bytes are read from
//!    `pg_stat_database` and `pg_current_wal_lsn()` around this phase; dead tuples from `pg_stat_user_tables`.
//! 3. **pickup**: one idle worker; jobs enqueued one at a time; latency = claim time - start of the enqueue call.
//! 4. **idle**: one idle worker on a database of its own; its cost is that database's transaction count over the
//!    quietest of three 5-second windows.

pub mod bridge;
pub mod channels;
pub mod digest;
pub mod fanout;
pub mod feed;
pub mod http;
pub mod retention;
pub mod soak;
pub mod workflows;
pub mod wrk;

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::Serialize;
use sqlx::{PgPool, Row};
use tokio::process::{Child, Command};

use herald::config::Settings;
use herald::db::{self, with_database};
use herald::queue::worker::builtin::Noop;
use herald::queue::{self, JobDefaults, NewJob, QueueName};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Jobs in the enqueue and execute phases.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Worker processes in the execute phase.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Concurrency of each worker process.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Jobs per enqueue statement.
    #[arg(long, default_value_t = 5_000)]
    pub enqueue_batch: usize,
    /// Connections enqueueing at once in the enqueue phase.
    #[arg(long, default_value_t = 2)]
    pub enqueue_connections: usize,
    /// Jobs per claim statement in the workers.
    #[arg(long, default_value_t = 1_000)]
    pub claim_batch: usize,
    /// Jobs in the pickup-latency phase.
    #[arg(long, default_value_t = 200)]
    pub pickup_samples: usize,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "herald_bench")]
    pub database: String,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    pub json: bool,
}

/// The figures `herald bench --json` prints (the key names are a contract with scripts).
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub jobs: usize,
    pub workers: usize,
    pub concurrency: usize,
    pub enqueue_jobs_per_s: f64,
    pub exec_jobs_per_s: f64,
    pub pickup_p50_ms: f64,
    pub pickup_p95_ms: f64,
    pub pickup_p99_ms: f64,
    pub commits_per_1k_jobs: f64,
    pub wal_bytes_per_job: f64,
    pub dead_tuples_after: i64,
    pub worker_rss_mb: f64,
    /// Transactions per second an idle worker process costs the database (measured over 10 s).
    pub idle_queries_per_s: f64,
}

pub async fn run(settings: &Settings, args: BenchArgs) -> Result<(), BenchError> {
    let (bench_url, pool) = scratch_database(settings, &args.database).await?;
    let defaults = settings.jobs.defaults();

    let enqueue_jobs_per_s = enqueue_phase(&pool, &defaults, &args).await?;
    let execution = execute_phase(&pool, &bench_url, &args).await?;
    let pickup = pickup_phase(&pool, &bench_url, &defaults, &args).await?;
    pool.close().await;
    let idle_queries_per_s = idle_phase(settings, &format!("{}_idle", args.database)).await?;

    let report = BenchReport {
        jobs: args.jobs,
        workers: args.workers,
        concurrency: args.concurrency,
        enqueue_jobs_per_s,
        exec_jobs_per_s: execution.jobs_per_s,
        pickup_p50_ms: pickup.value_at_quantile(0.50) as f64 / 1000.0,
        pickup_p95_ms: pickup.value_at_quantile(0.95) as f64 / 1000.0,
        pickup_p99_ms: pickup.value_at_quantile(0.99) as f64 / 1000.0,
        commits_per_1k_jobs: execution.commits as f64 * 1000.0 / args.jobs as f64,
        wal_bytes_per_job: execution.wal_bytes as f64 / args.jobs as f64,
        dead_tuples_after: execution.dead_tuples,
        worker_rss_mb: execution.worker_rss_kb as f64 / 1024.0,
        idle_queries_per_s,
    };
    print_report(&report, args.json);
    Ok(())
}

fn print_report(report: &BenchReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
        return;
    }
    println!(
        "herald bench: {} jobs, {} worker process(es) x concurrency {}",
        report.jobs, report.workers, report.concurrency
    );
    println!(
        "  enqueue (batch)        {:>12.0} jobs/s",
        report.enqueue_jobs_per_s
    );
    println!(
        "  execute (first claim -> last ack) {:>8.0} jobs/s",
        report.exec_jobs_per_s
    );
    println!(
        "  pickup latency         p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms",
        report.pickup_p50_ms, report.pickup_p95_ms, report.pickup_p99_ms
    );
    println!(
        "  commits per 1k jobs    {:>12.1}",
        report.commits_per_1k_jobs
    );
    println!(
        "  WAL bytes per job      {:>12.0}",
        report.wal_bytes_per_job
    );
    println!("  dead tuples after      {:>12}", report.dead_tuples_after);
    println!("  worker peak RSS        {:>12.1} MB", report.worker_rss_mb);
    println!(
        "  idle worker cost       {:>12.2} queries/s",
        report.idle_queries_per_s
    );
}

async fn enqueue_phase(
    pool: &PgPool,
    defaults: &JobDefaults,
    args: &BenchArgs,
) -> Result<f64, BenchError> {
    let queue = queue_name("bench")?;
    let job = NewJob::typed(queue, &Noop {}).map_err(|e| BenchError::Failed(e.to_string()))?;
    let batch: std::sync::Arc<Vec<NewJob>> =
        std::sync::Arc::new(vec![job; args.enqueue_batch.max(1)]);
    let connections = args.enqueue_connections.max(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for share in split_evenly(args.jobs, connections) {
        let (pool, defaults, batch) = (
            pool.clone(),
            defaults.clone(),
            std::sync::Arc::clone(&batch),
        );
        tasks.spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut remaining = share;
            while remaining > 0 {
                let n = remaining.min(batch.len());
                queue::enqueue_many(&mut conn, &defaults, &batch[..n]).await?;
                remaining -= n;
            }
            Ok::<(), BenchError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| BenchError::Failed(e.to_string()))??;
    }
    Ok(args.jobs as f64 / started.elapsed().as_secs_f64())
}

/// `total` split into `parts` shares that differ by at most one.
fn split_evenly(total: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

struct Execution {
    jobs_per_s: f64,
    commits: i64,
    wal_bytes: i64,
    dead_tuples: i64,
    worker_rss_kb: u64,
}

async fn execute_phase(
    pool: &PgPool,
    url: &str,
    args: &BenchArgs,
) -> Result<Execution, BenchError> {
    let before = database_counters(pool).await?;
    let mut workers = Vec::new();
    for _ in 0..args.workers.max(1) {
        workers.push(spawn_worker(
            url,
            &format!("bench:{}", args.concurrency),
            args.claim_batch,
        )?);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while count_live_jobs(pool).await? > 0 {
        if Instant::now() > deadline {
            return Err(BenchError::Failed(
                "jobs still waiting after 10 minutes".into(),
            ));
        }
        // The rate comes from the jobs' own timestamps, so polling slowly costs no precision and no CPU.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let worker_rss_kb = workers
        .iter()
        .filter_map(|w| w.id())
        .filter_map(peak_rss_kb)
        .max()
        .unwrap_or(0);
    stop_workers(workers).await;
    let after = database_counters(pool).await?;

    let row = sqlx::query(
        "SELECT count(*) AS n, extract(epoch FROM max(finished_at) - min(claimed_at))::float8 AS secs \
         FROM herald_job_history WHERE queue = 'bench' AND outcome = 'completed'",
    )
    .fetch_one(pool)
    .await?;
    let (completed, secs): (i64, Option<f64>) = (row.try_get("n")?, row.try_get("secs")?);
    if completed != args.jobs as i64 {
        return Err(BenchError::Failed(format!(
            "{completed} of {} jobs completed",
            args.jobs
        )));
    }
    Ok(Execution {
        jobs_per_s: args.jobs as f64 / secs.unwrap_or(f64::INFINITY).max(1e-6),
        commits: after.commits - before.commits,
        wal_bytes: after.wal_lsn - before.wal_lsn,
        dead_tuples: after.dead_tuples,
        worker_rss_kb,
    })
}

async fn pickup_phase(
    pool: &PgPool,
    url: &str,
    defaults: &JobDefaults,
    args: &BenchArgs,
) -> Result<Histogram<u64>, BenchError> {
    let worker = spawn_worker(url, "pickup:4", 10)?;
    wait_for_registered_workers(pool, 1).await?;
    // Let the worker settle into its idle wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = NewJob::typed(queue_name("pickup")?, &Noop {})
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let mut conn = pool.acquire().await?;
    let mut started_at: Vec<(i64, DateTime<Utc>)> = Vec::with_capacity(args.pickup_samples);
    for _ in 0..args.pickup_samples {
        let t0 = Utc::now();
        let id = queue::enqueue(&mut conn, defaults, job.clone()).await?.id();
        started_at.push((id, t0));
        // Near-idle queue: give each job time to be picked up before the next.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_live_jobs(pool).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_workers(vec![worker]).await;
    let claimed: std::collections::HashMap<i64, DateTime<Utc>> =
        sqlx::query("SELECT job_id, claimed_at FROM herald_job_history WHERE queue = 'pickup'")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("job_id")?, row.try_get("claimed_at")?)))
            .collect::<Result<_, sqlx::Error>>()?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    for (id, t0) in started_at {
        let at = claimed
            .get(&id)
            .ok_or_else(|| BenchError::Failed(format!("pickup job {id} never ran")))?;
        let micros = (*at - t0).num_microseconds().unwrap_or(0).max(1) as u64;
        histogram.saturating_record(micros);
    }
    Ok(histogram)
}

/// What an idle worker costs the database, in transactions per second. Measured on a database of its own (so
/// autovacuum cleaning up after the execute phase is not counted) and read from another database (so the reads
/// themselves are not counted either).
async fn idle_phase(settings: &Settings, name: &str) -> Result<f64, BenchError> {
    let (url, pool) = scratch_database(settings, name).await?;
    let server_url = &db::database_url(&settings.database, &settings.embedded_postgres.dir)?;
    let worker = spawn_worker(&url, "idle:4", 10)?;
    wait_for_registered_workers(&pool, 1).await?;
    pool.close().await;
    let observer = db::connect(server_url, &settings.database).await?;
    let transactions = || async {
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&observer)
            .await?;
        sqlx::query_scalar::<_, i64>(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
        )
        .bind(name)
        .fetch_one(&observer)
        .await
    };
    tokio::time::sleep(Duration::from_secs(2)).await; // start-up queries are reported by now
    // Autovacuum's visits to a new database count as its transactions too; the quietest of three windows
    // leaves them out.
    let window = Duration::from_secs(5);
    let mut quietest = i64::MAX;
    for _ in 0..3 {
        let before = transactions().await?;
        tokio::time::sleep(window).await;
        quietest = quietest.min(transactions().await? - before);
    }
    stop_workers(vec![worker]).await;
    observer.close().await;
    Ok(quietest.max(0) as f64 / window.as_secs_f64())
}

pub(crate) fn spawn_worker(
    url: &str,
    queues: &str,
    claim_batch: usize,
) -> Result<Child, BenchError> {
    worker_command(url, queues, claim_batch)?
        .spawn()
        .map_err(|e| BenchError::Failed(format!("cannot start a worker process: {e}")))
}

/// The command of a worker process serving `queues`, claiming `claim_batch` at a time; callers may add to it
/// (a working directory with a config of its own) before spawning it.
pub(crate) fn worker_command(
    url: &str,
    queues: &str,
    claim_batch: usize,
) -> Result<Command, BenchError> {
    let mut command = herald_process(url, "warn")?;
    command
        .args(["worker", "--queues", queues])
        .env("HERALD_WORKER__BATCH_SIZE", claim_batch.to_string());
    Ok(command)
}

/// This very binary as a child process on `url`, logging at `RUST_LOG` (or `log_level`), killed if dropped.
/// Callers add the subcommand and settings.
pub(crate) fn herald_process(url: &str, log_level: &str) -> Result<Command, BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Failed(format!("cannot find own binary: {e}")))?;
    let mut command = Command::new(exe);
    command
        .env("DATABASE_URL", url)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| log_level.into()),
        )
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(command)
}

/// Polls `count_sql` (one bigint) every 50 ms until it reaches `target`; fails after `limit`, naming `what`.
pub(crate) async fn wait_for_count(
    pool: &PgPool,
    count_sql: &str,
    target: i64,
    limit: Duration,
    what: &str,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + limit;
    loop {
        let count: i64 = sqlx::query_scalar(count_sql).fetch_one(pool).await?;
        if count >= target {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "only {count} of {target} {what} in {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn stop_workers(workers: Vec<Child>) {
    for mut worker in workers {
        if let Some(pid) = worker.id() {
            // SAFETY: sending a signal to a child we own.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await;
    }
}

pub(crate) async fn wait_for_registered_workers(pool: &PgPool, n: i64) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM herald_workers")
            .fetch_one(pool)
            .await?;
        if registered >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Failed(
                "worker did not register within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count_live_jobs(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM herald_jobs")
        .fetch_one(pool)
        .await
}

pub(crate) struct Counters {
    pub commits: i64,
    pub wal_lsn: i64,
    dead_tuples: i64,
    /// Statements executed in this database, when `pg_stat_statements` is loaded on the server
    /// (`shared_preload_libraries`); `None` otherwise.
    pub statements: Option<i64>,
}

pub(crate) async fn database_counters(pool: &PgPool) -> Result<Counters, sqlx::Error> {
    // Statistics are a snapshot per transaction; clear it so we read what the workers reported as they exited.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await?;
    let row = sqlx::query(
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits, \
                pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8 AS wal_lsn, \
                coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'herald_jobs'), 0) AS dead",
    )
    .fetch_one(pool)
    .await?;
    // Only when the server preloads the extension: creating it elsewhere would fail, and that is an answer too.
    let statements = match sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(pool)
        .await
    {
        Ok(_) => sqlx::query_scalar(
            "SELECT sum(calls)::int8 FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(pool)
        .await
        .ok()
        .flatten(),
        Err(_) => None,
    };
    Ok(Counters {
        commits: row.try_get("commits")?,
        wal_lsn: row.try_get("wal_lsn")?,
        dead_tuples: row.try_get("dead")?,
        statements,
    })
}

fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A scratch database `name` on the settings' server, dropped and re-created empty, then migrated: its URL and a
/// pool on it.
pub(crate) async fn scratch_database(
    settings: &Settings,
    name: &str,
) -> Result<(String, PgPool), BenchError> {
    let server_url = db::database_url(&settings.database, &settings.embedded_postgres.dir)?;
    recreate_database(&server_url, &settings.database, name).await?;
    let url = with_database(&server_url, name);
    let pool = db::connect(&url, &settings.database).await?;
    db::migrate(&pool).await?;
    Ok((url, pool))
}

pub(crate) async fn recreate_database(
    server_url: &str,
    settings: &herald::db::DatabaseSettings,
    name: &str,
) -> Result<(), BenchError> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(BenchError::Failed(
            "--database may contain only letters, digits and '_'".into(),
        ));
    }
    let admin = db::connect(server_url, settings).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}

fn queue_name(name: &str) -> Result<QueueName, BenchError> {
    QueueName::parse(name).map_err(|e| BenchError::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_work_evenly() {
        assert_eq!(super::split_evenly(10, 3), vec![4, 3, 3]);
        assert_eq!(super::split_evenly(2, 4), vec![1, 1, 0, 0]);
    }
}
