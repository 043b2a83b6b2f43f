//! `herald bench fanout`: one topic trigger to N members, executed by a real `herald worker` process that also
//! serves another queue.
//!
//! 1. N recipients (each with an email address) are made members of one topic, by SQL, then `ANALYZE`.
//! 2. **pickup at rest**: with the worker idle, no-op jobs on the `pickup` queue one every 20 ms; latency is
//!    the claim time minus the start of the enqueue call.
//! 3. **fan-out**: the workflow (trigger -> email to the run's recipient, through the log sink) is triggered for
//!    the topic; the fan-out jobs create the runs page by page while the same worker executes them. *Runs
//!    created* is N over the fan-out row's own life (created -> finished, PostgreSQL's timestamps); *sends* is N
//!    over the trigger to the last run finished. Meanwhile pickup jobs keep arriving every 20 ms: their latency
//!    is what the fan-out costs the other queues.
//! 4. Checks: exactly one run and one `sent` delivery per member.
//!
//! The tables grow from nothing to N rows during the measurement: plans made for empty tables would stay until
//! their statistics change. A fleet's clock keeps them fresh (`clock::housekeeping::keep_statistics`); the bench
//! starts no clock process and runs that part of its housekeeping itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::bench::{
    BenchError, queue_name, scratch_database, spawn_worker, stop_workers,
    wait_for_registered_workers,
};
use herald::config::Settings;
use herald::queue::worker::builtin::Noop;
use herald::queue::{self, JobDefaults, NewJob};
use herald::workflow::definition;

const FANOUT_WORKFLOW: &str = r#"
name: announce
version: 1
category: product
nodes:
  - id: start
    kind: trigger
    fields:
      release: { type: string }
    next: mail
  - id: mail
    kind: action
    channel: email
    content:
      subject: "{{ trigger.release }} is out"
      body: "Hello {{ recipient.id }}"
"#;

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutBenchArgs {
    /// Members of the topic.
    #[arg(long, default_value_t = 1_000_000)]
    pub recipients: usize,
    /// Concurrency of the worker process on the workflow queue.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "herald_bench_fanout")]
    pub database: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct FanoutBenchReport {
    pub recipients: usize,
    pub create_secs: f64,
    pub runs_created_per_s: f64,
    pub send_secs: f64,
    pub sends_per_s: f64,
    pub pickup_at_rest_p50_ms: f64,
    pub pickup_at_rest_p99_ms: f64,
    pub pickup_during_p50_ms: f64,
    pub pickup_during_p99_ms: f64,
    pub pickup_during_max_ms: f64,
}

pub async fn run(settings: &Settings, args: FanoutBenchArgs) -> Result<(), BenchError> {
    let (url, pool) = scratch_database(settings, &args.database).await?;
    let members = i64::try_from(args.recipients).map_err(|e| BenchError::Failed(e.to_string()))?;
    sqlx::query(
        "INSERT INTO herald_recipients (id, email) \
         SELECT 'u' || lpad(i::text, 8, '0'), 'u' || i || '@example.com' FROM generate_series(1, $1) i",
    )
    .bind(members)
    .execute(&pool)
    .await?;
    sqlx::query("INSERT INTO herald_topic_members (topic, recipient_id) SELECT 'everyone', id FROM herald_recipients")
        .execute(&pool)
        .await?;
    sqlx::query("ANALYZE").execute(&pool).await?;
    let engine = herald::app::App::on_pool(settings.clone(), pool.clone())
        .map_err(|e| BenchError::Failed(e.to_string()))?
        .engine;
    let definition = definition::parse_text("announce.yaml", FANOUT_WORKFLOW)
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    engine
        .catalog
        .save(
            &herald::audit::Actor::herald("bench"),
            "announce.yaml",
            &definition,
        )
        .await
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let defaults = settings.jobs.defaults();

    let worker = spawn_worker(
        &url,
        &format!("workflows:{},pickup:4", args.concurrency),
        1_000,
    )?;
    wait_for_registered_workers(&pool, 1).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rest = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_pickup(
        pool.clone(),
        defaults.clone(),
        Arc::clone(&rest),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    rest.store(true, Ordering::Relaxed);
    let at_rest = sampler
        .await
        .map_err(|e| BenchError::Failed(e.to_string()))??;

    let fanout = engine
        .start_fanout(
            "announce",
            "everyone",
            serde_json::json!({ "release": "2.0" }),
            None,
            None,
        )
        .await
        .map_err(|e| BenchError::Failed(e.to_string()))?
        .id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_pickup(pool.clone(), defaults, Arc::clone(&done)));
    // The fleet's clock keeps the growing tables' statistics fresh; the bench starts no clock, so it runs that part
    // of the clock's housekeeping itself.
    let statistics = tokio_util::sync::CancellationToken::new();
    let keeper = tokio::spawn(herald::clock::housekeeping::keep_statistics(
        pool.clone(),
        statistics.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3_600);
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM herald_fanouts WHERE id = $1")
            .bind(fanout)
            .fetch_one(&pool)
            .await?;
        if status != "running" {
            if status != "completed" {
                return Err(BenchError::Failed(format!("the fan-out ended {status}")));
            }
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(BenchError::Failed(
                "the fan-out did not finish in an hour".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done.store(true, Ordering::Relaxed);
    let during = sampler
        .await
        .map_err(|e| BenchError::Failed(e.to_string()))??;
    crate::bench::workflows::wait_for_runs(&pool, Duration::from_secs(3_600)).await?;
    statistics.cancel();
    let _ = keeper.await;
    stop_workers(vec![worker]).await;

    let row = sqlx::query(
        "SELECT extract(epoch FROM f.finished_at - f.created_at)::float8 AS create_secs, \
                extract(epoch FROM (SELECT max(finished_at) FROM herald_runs) - f.created_at)::float8 AS send_secs, \
                (SELECT count(*) FROM herald_runs) AS runs, \
                (SELECT count(DISTINCT recipient_id) FROM herald_runs) AS distinct_members, \
                (SELECT count(*) FROM herald_deliveries WHERE status = 'sent') AS sent \
         FROM herald_fanouts f WHERE f.id = $1",
    )
    .bind(fanout)
    .fetch_one(&pool)
    .await?;
    let (runs, distinct, sent): (i64, i64, i64) = (
        row.try_get("runs")?,
        row.try_get("distinct_members")?,
        row.try_get("sent")?,
    );
    if runs != members || distinct != members || sent != members {
        return Err(BenchError::Failed(format!(
            "{members} members: {runs} runs for {distinct} of them, {sent} sent"
        )));
    }
    let at_rest = histogram(&pool, &at_rest).await?;
    let during = histogram(&pool, &during).await?;
    pool.close().await;
    let create_secs: f64 = row.try_get("create_secs")?;
    let send_secs: f64 = row.try_get("send_secs")?;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = FanoutBenchReport {
        recipients: args.recipients,
        create_secs,
        runs_created_per_s: members as f64 / create_secs.max(1e-6),
        send_secs,
        sends_per_s: members as f64 / send_secs.max(1e-6),
        pickup_at_rest_p50_ms: ms(&at_rest, 0.5),
        pickup_at_rest_p99_ms: ms(&at_rest, 0.99),
        pickup_during_p50_ms: ms(&during, 0.5),
        pickup_during_p99_ms: ms(&during, 0.99),
        pickup_during_max_ms: during.max() as f64 / 1000.0,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
        return Ok(());
    }
    println!(
        "herald bench fanout: one topic trigger to {} members, 1 worker x {} (log sink)",
        report.recipients, args.concurrency
    );
    println!(
        "  runs created           {:>10.0} runs/s ({:.1} s for all)",
        report.runs_created_per_s, report.create_secs
    );
    println!(
        "  sends (end to end)     {:>10.0} sends/s ({:.1} s from the trigger to the last)",
        report.sends_per_s, report.send_secs
    );
    println!(
        "  other queue's pickup   at rest p50 {:.2} ms p99 {:.2} ms; during the fan-out p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        report.pickup_at_rest_p50_ms,
        report.pickup_at_rest_p99_ms,
        report.pickup_during_p50_ms,
        report.pickup_during_p99_ms,
        report.pickup_during_max_ms
    );
    Ok(())
}

/// Enqueues a no-op job on `pickup` every 20 ms until `stop`; answers each job's id and enqueue start.
async fn sample_pickup(
    pool: PgPool,
    defaults: JobDefaults,
    stop: Arc<AtomicBool>,
) -> Result<Vec<(i64, DateTime<Utc>)>, BenchError> {
    let job = NewJob::typed(queue_name("pickup")?, &Noop {})
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let mut conn = pool.acquire().await?;
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t0 = Utc::now();
        let id = queue::enqueue(&mut conn, &defaults, job.clone())
            .await?
            .id();
        samples.push((id, t0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(samples)
}

/// The pickup latencies of `samples` (waiting until each has run).
async fn histogram(
    pool: &PgPool,
    samples: &[(i64, DateTime<Utc>)],
) -> Result<Histogram<u64>, BenchError> {
    let ids: Vec<i64> = samples.iter().map(|(id, _)| *id).collect();
    let claimed: std::collections::HashMap<i64, DateTime<Utc>> = sqlx::query(
        "SELECT job_id, claimed_at FROM herald_job_history WHERE queue = 'pickup' AND job_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| Ok((row.try_get("job_id")?, row.try_get("claimed_at")?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    for (id, t0) in samples {
        let at = claimed
            .get(id)
            .ok_or_else(|| BenchError::Failed(format!("pickup job {id} never ran")))?;
        histogram.saturating_record((*at - *t0).num_microseconds().unwrap_or(0).max(1) as u64);
    }
    Ok(histogram)
}
