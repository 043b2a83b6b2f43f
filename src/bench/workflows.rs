//! `herald bench workflows`: runs of a three-node workflow (trigger -> condition -> action) through the whole
//! engine, executed by a real `herald worker` process. The action sends through the log sink (`--provider log`,
//! no network) or through the Slack adapter to an in-process fake that answers at once (`--provider slack`).
//!
//! Phases:
//! 0. **warm-up**: a few runs, then `ANALYZE`, so the measured phase sees the planner statistics of a database
//!    that has been running. (In a fresh database the first plans, cached per connection, assume empty tables;
//!    some scan a table whole until autovacuum's first ANALYZE replaces them, about a minute into production.)
//! 1. **throughput**: N runs are started (in batches), then one worker process drains them; the rate is
//!    N / (last run finished - first node job claimed), from PostgreSQL's own timestamps. Commits and WAL per run
//!    come from `pg_stat_database` and the WAL position around the phase; statements per run from
//!    `pg_stat_statements` when the server loads it; node jobs per run from the queue's own rows.
//! 2. **latency**: with the worker idle and ready, runs are started one at a time at a steady rate; latency is
//!    the action step's start minus the run's creation (both stamped by PostgreSQL).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::{PgPool, Row};
use tokio::process::Child;

use crate::bench::channels::{Fake, TempConfig, serve_fake, tempdir_with_config};
use crate::bench::{BenchError, database_counters, scratch_database, stop_workers, worker_command};
use herald::config::Settings;
use herald::workflow::{Engine, definition};

/// The benchmark's workflow; `{action}` is the action node's channel, recipient and content.
const BENCH_WORKFLOW: &str = r#"
name: bench
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      user: { type: string }
      room: { type: string, required: false, default: "room0" }
      vip: { type: boolean, required: false, default: false }
    next: check
  - id: check
    kind: condition
    if: trigger.vip or trigger.user
    then: notify
  - id: notify
    kind: action
{action}
"#;

/// The log sink: an email, written to the log (at `error` level, so not written at all).
const LOG_ACTION: &str = r#"    channel: email
    to: "{{ trigger.user }}@example.com"
    content:
      subject: "Hello {{ trigger.user }}""#;

/// The Slack adapter: a chat message to one of [`ROOMS`] webhooks on the fake.
const SLACK_ACTION: &str = r#"    channel: chat
    to: "{{ trigger.room }}"
    content:
      body: "Hello {{ trigger.user }}""#;

/// Chat webhooks the Slack variant spreads its messages over.
pub(crate) const ROOMS: usize = 10;

/// Runs in the warm-up phase.
const WARMUP_RUNS: usize = 2_000;

/// Where the action sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchProvider {
    /// The log sink (no network).
    Log,
    /// The Slack adapter, against an in-process fake webhook that answers `ok` at once.
    Slack,
}

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
    /// Where the action sends.
    #[arg(long, value_enum, default_value_t = BenchProvider::Log)]
    pub provider: BenchProvider,
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
    pub provider: BenchProvider,
    pub runs_per_s: f64,
    /// Queue jobs the workflow engine ran per run (pure nodes run inline: see `workflow/inline.rs`).
    pub node_jobs_per_run: f64,
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
    let (url, pool) = scratch_database(settings, &args.database).await?;
    let engine = bench_engine(settings, &pool, args.provider).await?;
    let sink = Sink::start(args.provider).await?;

    // Warm-up, then statistics, then a fresh worker whose plans are made with them.
    start_runs(&engine, 0..WARMUP_RUNS).await?;
    let worker = sink.spawn_worker(&url, args.concurrency)?;
    wait_for_runs(&pool, Duration::from_secs(600)).await?;
    stop_workers(vec![worker]).await;
    sqlx::query("ANALYZE").execute(&pool).await?;

    let first_run = WARMUP_RUNS + 1;
    start_runs(&engine, first_run..first_run + args.runs).await?;
    let began: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(&pool).await?;
    let before = database_counters(&pool).await?;
    let worker = sink.spawn_worker(&url, args.concurrency)?;
    wait_for_runs(&pool, Duration::from_secs(600)).await?;
    let after = database_counters(&pool).await?;
    let row = sqlx::query(
        "SELECT extract(epoch FROM (SELECT max(finished_at) FROM herald_runs) - \
                (SELECT min(claimed_at) FROM herald_job_history \
                 WHERE kind = 'herald.workflow.node' AND claimed_at >= $1))::float8 AS secs, \
                (SELECT count(*) FROM herald_jobs WHERE kind = 'herald.workflow.node') \
                + (SELECT count(*) FROM herald_job_history WHERE kind = 'herald.workflow.node') AS node_jobs",
    )
    .bind(began)
    .fetch_one(&pool)
    .await?;
    let secs: f64 = row
        .try_get::<Option<f64>, _>("secs")?
        .unwrap_or(f64::INFINITY);
    let runs_per_s = args.runs as f64 / secs.max(1e-6);
    let node_jobs: i64 = row.try_get("node_jobs")?;

    let latencies = latency_phase(&engine, &pool, &args).await?;
    stop_workers(vec![worker]).await;
    sink.check(WARMUP_RUNS + args.runs + args.latency_runs)?;
    pool.close().await;

    // Every run so far (warm-up and measured): both ran the same workflow.
    let node_jobs_per_run = (node_jobs as f64 / (WARMUP_RUNS + args.runs) as f64).max(0.0);
    let report = WorkflowBenchReport {
        runs: args.runs,
        concurrency: args.concurrency,
        provider: args.provider,
        runs_per_s,
        node_jobs_per_run,
        node_jobs_per_s: runs_per_s * node_jobs_per_run,
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
    print_report(&report, &args);
    Ok(())
}

fn print_report(report: &WorkflowBenchReport, args: &WorkflowBenchArgs) {
    if args.json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
        return;
    }
    let sink = match report.provider {
        BenchProvider::Log => "the log sink",
        BenchProvider::Slack => "the Slack adapter",
    };
    println!(
        "herald bench workflows: {} runs of trigger -> condition -> action through {sink}, 1 worker x {}",
        report.runs, report.concurrency
    );
    println!(
        "  runs completed         {:>10.0} runs/s ({:.0} node jobs/s, {:.2} node jobs per run)",
        report.runs_per_s, report.node_jobs_per_s, report.node_jobs_per_run
    );
    println!("  commits per run        {:>10.2}", report.commits_per_run);
    match report.statements_per_run {
        Some(statements) => println!("  statements per run     {statements:>10.2}"),
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

/// A workflow engine on `pool` with the bench workflow (`bench`) saved, its action sending through `provider`.
pub(crate) async fn bench_engine(
    settings: &Settings,
    pool: &PgPool,
    provider: BenchProvider,
) -> Result<Arc<Engine>, BenchError> {
    let engine = herald::app::App::on_pool(settings.clone(), pool.clone())
        .map_err(|e| BenchError::Failed(e.to_string()))?
        .engine;
    let action = match provider {
        BenchProvider::Log => LOG_ACTION,
        BenchProvider::Slack => SLACK_ACTION,
    };
    let text = BENCH_WORKFLOW.replace("{action}", action);
    let definition = definition::parse_text("bench.yaml", &text)
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
    Ok(engine)
}

/// Starts one run per number in `users`, in batches of 1,000.
async fn start_runs(engine: &Engine, users: std::ops::Range<usize>) -> Result<(), BenchError> {
    for chunk in users.collect::<Vec<_>>().chunks(1_000) {
        let data = chunk
            .iter()
            .map(|i| serde_json::json!({ "user": format!("u{i}"), "room": format!("room{}", i % ROOMS) }))
            .collect();
        engine.start_runs("bench", data).await.map_err(failed)?;
    }
    Ok(())
}

/// Where the worker's actions go: nowhere (the log sink), or the fake Slack webhooks.
enum Sink {
    Log,
    Slack { fake: Arc<Fake>, config: TempConfig },
}

impl Sink {
    async fn start(provider: BenchProvider) -> Result<Self, BenchError> {
        Ok(match provider {
            BenchProvider::Log => Sink::Log,
            BenchProvider::Slack => {
                let fake = Arc::new(Fake::new(0.0, 0.0));
                let url = serve_fake(Arc::clone(&fake)).await?;
                let config = tempdir_with_config(&url, ROOMS)?;
                Sink::Slack { fake, config }
            }
        })
    }

    /// A worker process on the workflow queue; with the fake, it runs in the folder whose config points at it.
    fn spawn_worker(&self, url: &str, concurrency: usize) -> Result<Child, BenchError> {
        let mut command = worker_command(url, &format!("workflows:{concurrency}"), 1_000)?;
        if let Sink::Slack { config, .. } = self {
            command.current_dir(config.path());
        }
        command
            .spawn()
            .map_err(|e| BenchError::Failed(format!("cannot start a worker process: {e}")))
    }

    /// With the fake: every run's message arrived exactly once.
    fn check(&self, runs: usize) -> Result<(), BenchError> {
        let Sink::Slack { fake, .. } = self else {
            return Ok(());
        };
        match fake.accepted() {
            (accepted, 0) if accepted == runs => Ok(()),
            (accepted, twice) => Err(BenchError::Failed(format!(
                "the fake accepted {accepted} of {runs} messages, {twice} of them more than once"
            ))),
        }
    }
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
    wait_for_runs(pool, Duration::from_secs(120)).await?;
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

/// Waits until no run is running (every run is started before its worker, so then all have finished), and
/// checks that all completed. The poll reads the runs index's `running` entries only: a count of every run
/// every 50 ms would cost the database more than a tenth of a core at the end of a long run.
pub(crate) async fn wait_for_runs(pool: &PgPool, limit: Duration) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let running: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM herald_runs WHERE status = 'running')",
        )
        .fetch_one(pool)
        .await?;
        if !running {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "runs still running after {limit:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
