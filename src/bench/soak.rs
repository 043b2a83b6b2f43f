//! `herald bench soak`: a long steady load, reported minute by minute, to show that the queue stays small and fast
//! for months: pickup p50/p99, jobs done, and each hot table's live rows, dead tuples and size.
//!
//! * `--rate R`: a producer enqueues R no-op jobs per second (in 10 ms slices); `--saturate` instead keeps a
//!   backlog topped up, so the minute's throughput is the queue's capacity.
//! * `--hold-xid-secs H` (after `--hold-after-secs S`): a session opens a transaction, takes a transaction id and
//!   sits idle in it for H seconds, as a forgotten `psql` or a stuck report would. Vacuum can remove no row
//!   deleted after it began, so this is the worst case for a Postgres queue; the report says how the queue held.
//! * `--history-keep-secs K`: the clock's own retention at minutes instead of months. The clock process runs the
//!   `herald.retention` job every minute with the job history's maximum age set to K seconds, the history in
//!   partitions `--partition-secs` wide, and archives written to a scratch directory: whole partitions older than
//!   K are archived, verified and dropped, so the history's size must stay flat too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::{BenchError, scratch_database, spawn_worker, stop_workers};
use herald::config::Settings;
use herald::queue::worker::builtin::Noop;
use herald::queue::{self, NewJob, QueueName};

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 30)]
    pub minutes: u64,
    /// Jobs per second the producer enqueues (ignored with --saturate).
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Keep a backlog of this many jobs instead of a fixed rate: the throughput is then the queue's capacity.
    #[arg(long)]
    pub saturate: Option<u64>,
    /// Worker processes, and the concurrency of each.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Hold an idle transaction with a transaction id for this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub hold_xid_secs: u64,
    /// When the holder starts, in seconds from the start of the load.
    #[arg(long, default_value_t = 120)]
    pub hold_after_secs: u64,
    /// Retention: the clock archives and removes history older than this, every minute (0: keep it all).
    #[arg(long, default_value_t = 0)]
    pub history_keep_secs: u64,
    /// The history partitions' width with --history-keep-secs (`clock.partitions.width_secs`).
    #[arg(long, default_value_t = 60)]
    pub partition_secs: u64,
    /// Retention's duty cycle with --history-keep-secs. At minutes, history arrives as fast as the queue runs
    /// and a pass must keep up with it, so it works all the time (the months-long default runs a pass a day at
    /// 0.5).
    #[arg(long, default_value_t = 1.0)]
    pub retention_duty_cycle: f64,
    /// With --history-keep-secs: archive the history before dropping it (`clock.retention.job_history_archive`).
    /// Archiving costs about a core per 25,000 rows/s here, so on two cores a queue at half its capacity cannot
    /// also archive every row it finishes; without it the partitions are dropped unarchived.
    #[arg(long)]
    pub archive_history: bool,
    /// Run without a `herald clock` process (no housekeeping vacuum: autovacuum alone).
    #[arg(long)]
    pub no_clock: bool,
    /// Seconds per report line.
    #[arg(long, default_value_t = 60)]
    pub every_secs: u64,
    #[arg(long, default_value = "herald_soak")]
    pub database: String,
    /// One JSON object per report line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One report line: what the last interval looked like.
#[derive(Debug, Serialize)]
struct Interval {
    minute: f64,
    holder: bool,
    jobs_per_s: f64,
    pickup_p50_ms: f64,
    pickup_p99_ms: f64,
    claim_probe_ms: f64,
    jobs_live: i64,
    jobs_dead_tuples: i64,
    jobs_mb: f64,
    history_rows: i64,
    history_dead_tuples: i64,
    history_mb: f64,
    history_partitions: i64,
}

pub async fn run(settings: &Settings, args: SoakArgs) -> Result<(), BenchError> {
    let (url, pool) = scratch_database(settings, &args.database).await?;

    let mut workers = Vec::new();
    for _ in 0..args.workers.max(1) {
        workers.push(spawn_worker(
            &url,
            &format!("soak:{}", args.concurrency),
            1_000,
        )?);
    }
    // A fleet is workers and a clock: the clock's housekeeping vacuums the churned tables when autovacuum does not.
    let archive_dir =
        std::env::temp_dir().join(format!("herald-bench-soak-{}", std::process::id()));
    if !args.no_clock {
        let mut clock = super::herald_process(&url, "warn")?;
        clock.arg("clock");
        if args.history_keep_secs > 0 {
            clock
                .env("HERALD_CLOCK__RETENTION__CRON", "* * * * *")
                .env(
                    "HERALD_CLOCK__RETENTION__JOB_HISTORY_DAYS",
                    format!("{}s", args.history_keep_secs),
                )
                .env("HERALD_CLOCK__RETENTION__ARCHIVE__DIR", &archive_dir)
                .env(
                    "HERALD_CLOCK__PARTITIONS__WIDTH_SECS",
                    args.partition_secs.to_string(),
                )
                .env("HERALD_CLOCK__PARTITIONS__AHEAD", "5")
                .env(
                    "HERALD_CLOCK__RETENTION__JOB_HISTORY_ARCHIVE",
                    args.archive_history.to_string(),
                )
                .env(
                    "HERALD_CLOCK__RETENTION__DUTY_CYCLE",
                    args.retention_duty_cycle.to_string(),
                );
        }
        workers.push(
            clock
                .spawn()
                .map_err(|e| BenchError::Failed(format!("cannot start a clock process: {e}")))?,
        );
    } else if args.history_keep_secs > 0 {
        return Err(BenchError::Failed(
            "--history-keep-secs needs the clock (it runs retention): drop --no-clock".into(),
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let enqueued = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(
        pool.clone(),
        settings.jobs.defaults(),
        args.clone(),
        Arc::clone(&stop),
        Arc::clone(&enqueued),
    ));
    let holder = (args.hold_xid_secs > 0).then(|| {
        tokio::spawn(hold_xid(
            url.clone(),
            Duration::from_secs(args.hold_after_secs),
            Duration::from_secs(args.hold_xid_secs),
        ))
    });

    let started = Instant::now();
    let hold_from = Duration::from_secs(args.hold_after_secs);
    let hold_to = hold_from + Duration::from_secs(args.hold_xid_secs);
    let every = Duration::from_secs(args.every_secs.max(1));
    let total = Duration::from_secs(args.minutes.max(1) * 60);
    let mut window_start = Utc::now();
    let mut lines = Vec::new();
    if !args.json {
        println!(
            "minute  holder  jobs/s   pickup p50/p99 ms   probe ms   jobs: live  dead    MB   history: rows  dead    MB  parts"
        );
    }
    while started.elapsed() < total {
        tokio::time::sleep(every).await;
        let window_end = Utc::now();
        let elapsed = started.elapsed();
        // An interval counts as held if the holder was open through all of it (a second's slack either side).
        let slack = Duration::from_secs(1);
        let holder_on = args.hold_xid_secs > 0
            && elapsed.saturating_sub(every) + slack >= hold_from
            && elapsed <= hold_to + slack;
        let line = measure(&pool, window_start, window_end, elapsed, holder_on).await?;
        print_line(&line, args.json);
        lines.push(line);
        window_start = window_end;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = producer.await;
    if let Some(holder) = holder {
        holder.abort();
    }
    stop_workers(workers).await;
    let _ = std::fs::remove_dir_all(&archive_dir);
    summarize(&lines, &args);
    Ok(())
}

/// The producer: a fixed rate in 10 ms slices, or a backlog topped up every 50 ms.
async fn produce(
    pool: PgPool,
    defaults: queue::JobDefaults,
    args: SoakArgs,
    stop: Arc<AtomicBool>,
    enqueued: Arc<AtomicU64>,
) -> Result<(), BenchError> {
    let queue = QueueName::parse("soak").map_err(|e| BenchError::Failed(e.to_string()))?;
    let job = NewJob::typed(queue, &Noop {}).map_err(|e| BenchError::Failed(e.to_string()))?;
    let batch = vec![job; 5_000];
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(if args.saturate.is_some() {
        50
    } else {
        10
    }));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let due = match args.saturate {
            Some(backlog) => {
                // Jobs waiting = enqueued - deleted (finished). Not `count(*)`: on a table an old transaction has
                // bloated, counting takes seconds and would itself be the load. The statistics lag by a second or
                // so, which only makes the backlog a little deeper.
                let deleted: i64 = sqlx::query_scalar(
                    "SELECT coalesce(n_tup_del, 0) FROM pg_stat_user_tables WHERE relname = 'herald_jobs'",
                )
                .fetch_one(&mut *conn)
                .await?;
                let waiting = enqueued
                    .load(Ordering::Relaxed)
                    .saturating_sub(u64::try_from(deleted).unwrap_or(0));
                backlog.saturating_sub(waiting)
            }
            None => {
                let target = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
                target.saturating_sub(enqueued.load(Ordering::Relaxed))
            }
        };
        let mut left = due as usize;
        while left > 0 {
            let n = left.min(batch.len());
            queue::enqueue_many(&mut conn, &defaults, &batch[..n]).await?;
            enqueued.fetch_add(n as u64, Ordering::Relaxed);
            left -= n;
        }
    }
    Ok(())
}

/// An idle session in a transaction that holds a transaction id: vacuum's horizon stops at it.
async fn hold_xid(url: String, after: Duration, hold: Duration) -> Result<(), BenchError> {
    tokio::time::sleep(after).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    let mut tx = pool.begin().await?;
    let xid: i64 = sqlx::query_scalar("SELECT txid_current()")
        .fetch_one(&mut *tx)
        .await?;
    eprintln!("holder: transaction {xid} open and idle for {hold:?}");
    tokio::time::sleep(hold).await;
    tx.rollback().await?;
    eprintln!("holder: transaction {xid} ended");
    Ok(())
}

async fn measure(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    elapsed: Duration,
    holder: bool,
) -> Result<Interval, BenchError> {
    let (done, p50, p99): (i64, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT count(*), \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM claimed_at - created_at)) * 1000, \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM claimed_at - created_at)) * 1000 \
         FROM herald_job_history WHERE finished_at >= $1 AND finished_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    // The claim's search, as a worker runs it, without taking anything: how far it wades through dead entries.
    let probe_started = Instant::now();
    let mut tx = pool.begin().await?;
    let _: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM herald_jobs WHERE queue = 'soak' AND lease_token IS NULL AND NOT scheduled \
         ORDER BY sort_key LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    let claim_probe_ms = probe_started.elapsed().as_secs_f64() * 1000.0;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await?;
    let table = |name: &'static str| async move {
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT coalesce(n_live_tup, 0), coalesce(n_dead_tup, 0), pg_total_relation_size(relid) \
             FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(name)
        .fetch_one(pool)
        .await?;
        Ok::<_, sqlx::Error>(row)
    };
    let (jobs_live, jobs_dead, jobs_bytes) = table("herald_jobs").await?;
    // The history is partitioned: its figures are the sums over its partitions (live rows as the statistics
    // count them: a `count(*)` of millions of rows every minute would itself be load).
    let (history_rows, history_dead, history_bytes, history_partitions): (i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT coalesce(sum(s.n_live_tup), 0)::int8, coalesce(sum(s.n_dead_tup), 0)::int8, \
                    coalesce(sum(pg_total_relation_size(s.relid)), 0)::int8, count(*) \
             FROM pg_partition_tree('herald_job_history') t JOIN pg_stat_user_tables s ON s.relid = t.relid \
             WHERE t.isleaf",
        )
        .fetch_one(pool)
        .await?;
    let secs = (to - from).num_milliseconds().max(1) as f64 / 1000.0;
    Ok(Interval {
        minute: elapsed.as_secs_f64() / 60.0,
        holder,
        jobs_per_s: done as f64 / secs,
        pickup_p50_ms: p50.unwrap_or(0.0),
        pickup_p99_ms: p99.unwrap_or(0.0),
        claim_probe_ms,
        jobs_live,
        jobs_dead_tuples: jobs_dead,
        jobs_mb: jobs_bytes as f64 / 1_048_576.0,
        history_rows,
        history_dead_tuples: history_dead,
        history_mb: history_bytes as f64 / 1_048_576.0,
        history_partitions,
    })
}

fn print_line(line: &Interval, json: bool) {
    if json {
        println!("{}", serde_json::to_string(line).unwrap_or_default());
        return;
    }
    println!(
        "{:>6.1}  {:>6}  {:>7.0}   {:>7.2} / {:>7.2}   {:>8.2}   {:>10} {:>6} {:>5.1}   {:>13} {:>5} {:>5.1}  {:>5}",
        line.minute,
        if line.holder { "held" } else { "-" },
        line.jobs_per_s,
        line.pickup_p50_ms,
        line.pickup_p99_ms,
        line.claim_probe_ms,
        line.jobs_live,
        line.jobs_dead_tuples,
        line.jobs_mb,
        line.history_rows,
        line.history_dead_tuples,
        line.history_mb,
        line.history_partitions,
    );
}

/// With a holder: the throughput while it held, against the clean intervals before it (the first one, warm-up,
/// left out).
fn summarize(lines: &[Interval], args: &SoakArgs) {
    if args.hold_xid_secs == 0 || lines.len() < 3 {
        return;
    }
    let mean = |xs: Vec<f64>| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let clean = mean(
        lines
            .iter()
            .skip(1)
            .take_while(|l| !l.holder)
            .map(|l| l.jobs_per_s)
            .collect(),
    );
    let held = mean(
        lines
            .iter()
            .filter(|l| l.holder)
            .map(|l| l.jobs_per_s)
            .collect(),
    );
    let summary = serde_json::json!({
        "clean_jobs_per_s": clean,
        "held_jobs_per_s": held,
        "held_over_clean": if clean > 0.0 { held / clean } else { 0.0 },
    });
    println!("{summary}");
}
