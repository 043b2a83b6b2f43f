//! `herald bench workflows`: runs of a three-node workflow (trigger -> condition -> action, the log channel, no
//! network) through the whole engine, executed by a real `herald worker` process.
//!
//! Phases:
//! 1. **throughput**: N runs are started (in batches), then one worker process drains them; the rate is
//!    N / (last run finished - first node job started), from the runs' and steps' own timestamps. Commits and
//!    WAL per run come from `pg_stat_database` and the WAL position around the phase; statements per run from
//!    `pg_stat_statements` when the server loads it.
//! 2. **latency**: with the worker idle and ready, runs are started one at a time at a steady rate; latency is
//!    the action step's start minus the run's creation (both stamped by PostgreSQL).

use herald::db::with_database;
use std::time::Duration;

use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::bench::{
    BenchError, database_counters, recreate_database, spawn_worker, stop_workers, wait_for_count,
};
use herald::config::Settings;
use herald::db;
use herald::workflow::{Engine, definition};

/// The benchmark's workflow.
const BENCH_WORKFLOW: &str = r#"
name: bench
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      user: { type: string }
      vip: { type: boolean, required: false, default: false }
    next: check
  - id: check
    kind: condition
    if: trigger.vip or trigger.user
    then: notify
  - id: notify
    kind: action
    channel: email
    to: "{{ trigger.user }}@example.com"
    content:
      subject: "Hello {{ trigger.user }}"
"#;

/// Node jobs per run of [`BENCH_WORKFLOW`]: the condition and the action.
const NODE_JOBS_PER_RUN: f64 = 2.0;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkflowBenchArgs {
    /// Runs in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    pub runs: usize,
    /// Concurrency of the worker process.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Runs started one at a time in the latency phase.
    #[arg(long, default_value_t = 1_000)]
    pub latency_runs: usize,
    /// Runs per second in the latency phase.
    #[arg(long, default_value_t = 200)]
    pub latency_rate: u64,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "herald_bench_workflows")]
    pub database: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct WorkflowBenchReport {
    pub runs: usize,
    pub concurrency: usize,
    pub runs_per_s: f64,
    pub node_jobs_per_s: f64,
    pub commits_per_run: f64,
    /// `None` unless the server preloads `pg_stat_statements`.
    pub statements_per_run: Option<f64>,
    pub wal_bytes_per_run: f64,
    pub start_to_action_p50_ms: f64,
    pub start_to_action_p95_ms: f64,
    pub start_to_action_p99_ms: f64,
}

pub async fn run(settings: &Settings, args: WorkflowBenchArgs) -> Result<(), BenchError> {
    let server_url = db::database_url(&settings.database, &settings.embedded_postgres.dir)?;
    let url = with_database(&server_url, &args.database);
    recreate_database(&server_url, &settings.database, &args.database).await?;
    let pool = db::connect(&url, &settings.database).await?;
    db::migrate(&pool).await?;
    let engine = herald::app::App::on_pool(settings.clone(), pool.clone())
        .map_err(|e| BenchError::Failed(e.to_string()))?
        .engine;
    let definition = definition::parse_text("bench.yaml", BENCH_WORKFLOW)
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    engine
        .catalog
        .save(
            &herald::audit::Actor::herald("bench"),
            "bench.yaml",
            &definition,
        )
        .await
        .map_err(failed)?;

    for chunk in (0..args.runs).collect::<Vec<_>>().chunks(1_000) {
        let data = chunk
            .iter()
            .map(|i| serde_json::json!({ "user": format!("u{i}") }))
            .collect();
        engine.start_runs("bench", data).await.map_err(failed)?;
    }
    let before = database_counters(&pool).await?;
    // The default channel sink is the log (no network); logs are at warn, so it costs nothing.
    let queues = format!("workflows:{}", args.concurrency);
    let worker = spawn_worker(&url, &queues, 1_000)?;
    wait_for_runs(&pool, args.runs as i64, Duration::from_secs(600)).await?;
    let after = database_counters(&pool).await?;
    // From the first node job's start: runs start past their trigger (`start`, recorded when the runs were
    // inserted, before the worker began), so the first job is a `check`.
    let row = sqlx::query(
        "SELECT extract(epoch FROM (SELECT max(finished_at) FROM herald_runs) - \
                (SELECT min(started_at) FROM herald_run_steps WHERE node_id <> 'start'))::float8 AS secs",
    )
    .fetch_one(&pool)
    .await?;
    let secs: f64 = row
        .try_get::<Option<f64>, _>("secs")?
        .unwrap_or(f64::INFINITY);
    let runs_per_s = args.runs as f64 / secs.max(1e-6);

    let latencies = latency_phase(&engine, &pool, &args).await?;
    stop_workers(vec![worker]).await;
    pool.close().await;

    let report = WorkflowBenchReport {
        runs: args.runs,
        concurrency: args.concurrency,
        runs_per_s,
        // check and notify: the trigger runs at start, not as a job.
        node_jobs_per_s: runs_per_s * NODE_JOBS_PER_RUN,
        commits_per_run: (after.commits - before.commits) as f64 / args.runs as f64,
        statements_per_run: after
            .statements
            .zip(before.statements)
            .map(|(a, b)| (a - b) as f64 / args.runs as f64),
        wal_bytes_per_run: (after.wal_lsn - before.wal_lsn) as f64 / args.runs as f64,
        start_to_action_p50_ms: latencies.0,
        start_to_action_p95_ms: latencies.1,
        start_to_action_p99_ms: latencies.2,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!(
            "herald bench workflows: {} runs of trigger -> condition -> action, 1 worker x {}",
            report.runs, report.concurrency
        );
        println!(
            "  runs completed         {:>10.0} runs/s ({:.0} node jobs/s)",
            report.runs_per_s, report.node_jobs_per_s
        );
        println!("  commits per run        {:>10.2}", report.commits_per_run);
        match report.statements_per_run {
            Some(statements) => println!("  statements per run     {statements:>10.1}"),
            None => println!(
                "  statements per run            n/a (load pg_stat_statements on the server to count them)"
            ),
        }
        println!(
            "  WAL per run            {:>10.0} bytes",
            report.wal_bytes_per_run
        );
        println!(
            "  run start -> action    p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms (at {} runs/s)",
            report.start_to_action_p50_ms,
            report.start_to_action_p95_ms,
            report.start_to_action_p99_ms,
            args.latency_rate
        );
    }
    Ok(())
}

fn failed(error: herald::workflow::WorkflowError) -> BenchError {
    BenchError::Failed(error.to_string())
}

/// Starts runs one at a time at a steady rate and returns p50/p95/p99 of run start -> action start, in ms.
async fn latency_phase(
    engine: &Engine,
    pool: &PgPool,
    args: &WorkflowBenchArgs,
) -> Result<(f64, f64, f64), BenchError> {
    let first: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM herald_runs")
        .fetch_one(pool)
        .await?;
    let interval = Duration::from_micros(1_000_000 / args.latency_rate.max(1));
    let mut ticker = tokio::time::interval(interval);
    for i in 0..args.latency_runs {
        ticker.tick().await;
        let data = serde_json::json!({ "user": format!("l{i}") });
        engine
            .start_run("bench", data, None, None)
            .await
            .map_err(failed)?;
    }
    wait_for_runs(
        pool,
        (args.runs + args.latency_runs) as i64,
        Duration::from_secs(120),
    )
    .await?;
    let row = sqlx::query(
        "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms) AS p FROM ( \
           SELECT extract(epoch FROM s.started_at - r.created_at) * 1000 AS ms \
           FROM herald_runs r JOIN herald_run_steps s ON s.run_id = r.id AND s.node_id = 'notify' \
           WHERE r.id > $1) t",
    )
    .bind(first)
    .fetch_one(pool)
    .await?;
    let p: Vec<f64> = row.try_get("p")?;
    Ok((p[0], p[1], p[2]))
}

async fn wait_for_runs(pool: &PgPool, total: i64, limit: Duration) -> Result<(), BenchError> {
    let finished = "SELECT count(*) FROM herald_runs WHERE status <> 'running'";
    wait_for_count(pool, finished, total, limit, "runs finished").await?;
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM herald_runs WHERE status <> 'completed'")
            .fetch_one(pool)
            .await?;
    if failed > 0 {
        return Err(BenchError::Failed(format!(
            "{failed} runs did not complete"
        )));
    }
    Ok(())
}
