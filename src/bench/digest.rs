//! `herald bench digest`: many events over many digest keys, every window closing at the same minute, executed by
//! real `herald worker` processes.
//!
//! 1. The workflow: trigger -> digest (`until` one UTC minute at least `--lead` seconds ahead, key: the user) ->
//!    email (log sink) saying how many events the batch counted.
//! 2. **arrivals**: E runs over K users (E/K each, interleaved) are started; the workers take them through the
//!    digest (one window per user, every other event batched). Rate: E over the first to the last arrival
//!    (the entries' own timestamps, the database's clock).
//! 3. **close**: every window comes due at the same instant; continuations/s is K over the close instant to the
//!    last email step finished; *first* is how long after the close the first continuation finished.
//! 4. Exactly-once check: K continuations, E - K batched runs, their counts sum to E, K emails sent, one per user.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use serde::Serialize;
use sqlx::Row;

use crate::bench::{
    BenchError, scratch_database, spawn_worker, stop_workers, wait_for_registered_workers,
};
use herald::config::Settings;
use herald::workflow::definition;

#[derive(Debug, Clone, clap::Args)]
pub struct DigestBenchArgs {
    /// Events (runs reaching the digest).
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Digest keys (users) the events are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Concurrency of each worker process.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// At least this many seconds from the start to the windows' close (every arrival must be in by then).
    #[arg(long, default_value_t = 120)]
    pub lead: u64,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "herald_bench_digest")]
    pub database: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct DigestBenchReport {
    pub events: usize,
    pub keys: usize,
    pub arrival_secs: f64,
    pub arrivals_per_s: f64,
    pub close_secs: f64,
    pub continuations_per_s: f64,
    pub first_continuation_ms: f64,
}

fn workflow(until: &str) -> String {
    format!(
        r#"
name: comments
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      user: {{ type: string }}
      n: {{ type: integer }}
    next: batch
  - id: batch
    kind: digest
    until: "{until}"
    key: "{{{{ trigger.user }}}}"
    keep: 5
    next: mail
  - id: mail
    kind: action
    channel: email
    to: "{{{{ trigger.user }}}}@example.com"
    content:
      subject: "{{{{ digest.count }}}} new comments"
      body: "{{% for e in digest.events %}}#{{{{ e.data.n }}}} {{% endfor %}}"
"#
    )
}

pub async fn run(settings: &Settings, args: DigestBenchArgs) -> Result<(), BenchError> {
    if args.keys == 0 || args.events < args.keys {
        return Err(BenchError::Failed(
            "--events must be at least --keys (and --keys at least 1)".into(),
        ));
    }
    let (url, pool) = scratch_database(settings, &args.database).await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&pool).await?;
    // The first whole UTC minute at least `lead` seconds ahead: every window closes then.
    let ahead = now + chrono::Duration::seconds(i64::try_from(args.lead).unwrap_or(120));
    let close = (ahead + chrono::Duration::seconds(60 - i64::from(ahead.second())))
        .with_nanosecond(0)
        .unwrap_or(ahead);
    let until = close.format("%H:%M").to_string();
    let engine = herald::app::App::on_pool(settings.clone(), pool.clone())
        .map_err(|e| BenchError::Failed(e.to_string()))?
        .engine;
    let definition = definition::parse_text("comments.yaml", &workflow(&until))
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    engine
        .catalog
        .save(
            &herald::audit::Actor::herald("bench"),
            "comments.yaml",
            &definition,
        )
        .await
        .map_err(|e| BenchError::Failed(e.to_string()))?;

    let mut workers = Vec::new();
    for _ in 0..args.workers {
        workers.push(spawn_worker(
            &url,
            &format!("workflows:{}", args.concurrency),
            1_000,
        )?);
    }
    wait_for_registered_workers(&pool, i64::try_from(args.workers).unwrap_or(1)).await?;
    let statistics = tokio_util::sync::CancellationToken::new();
    let keeper = tokio::spawn(herald::clock::housekeeping::keep_statistics(
        pool.clone(),
        statistics.clone(),
    ));
    // Interleaved: event i is user i mod K, so every user's window opens early and keeps receiving.
    for chunk in (0..args.events).collect::<Vec<_>>().chunks(5_000) {
        let data = chunk
            .iter()
            .map(|i| serde_json::json!({ "user": format!("u{}", i % args.keys), "n": i }))
            .collect();
        engine
            .start_runs("comments", data)
            .await
            .map_err(|e| BenchError::Failed(e.to_string()))?;
    }
    let events = i64::try_from(args.events).unwrap_or(i64::MAX);
    let keys = i64::try_from(args.keys).unwrap_or(i64::MAX);
    let arrived_by_close = (close - Utc::now()).to_std().unwrap_or_default();
    crate::bench::wait_for_count(
        &pool,
        "SELECT count(*) FROM herald_digest_entries",
        events,
        arrived_by_close,
        "every event to arrive before the windows' close (raise --lead)",
    )
    .await?;
    crate::bench::workflows::wait_for_runs(&pool, Duration::from_secs(3_600)).await?;
    statistics.cancel();
    let _ = keeper.await;
    stop_workers(workers).await;

    let row = sqlx::query(
        "SELECT extract(epoch FROM max(arrived_at) - min(arrived_at))::float8 AS arrival_secs, \
                (SELECT min(closes_at) FROM herald_digest_windows) AS first_close, \
                (SELECT max(closes_at) FROM herald_digest_windows) AS last_close, \
                (SELECT max(finished_at) FROM herald_run_steps WHERE node_id = 'mail') AS last_mail, \
                (SELECT min(finished_at) FROM herald_run_steps WHERE node_id = 'batch' AND outcome = 'released') AS first_release, \
                (SELECT count(*) FROM herald_run_steps WHERE node_id = 'batch' AND outcome = 'released') AS released, \
                (SELECT count(*) FROM herald_run_steps WHERE node_id = 'batch' AND outcome = 'batched') AS batched, \
                (SELECT coalesce(sum((output->>'count')::bigint), 0)::bigint FROM herald_run_steps \
                 WHERE node_id = 'batch' AND outcome = 'released') AS counted, \
                (SELECT count(*) FROM herald_deliveries WHERE status = 'sent') AS sent, \
                (SELECT count(DISTINCT recipient) FROM herald_deliveries) AS addressed \
         FROM herald_digest_entries",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    let (released, batched, counted, sent, addressed): (i64, i64, i64, i64, i64) = (
        row.try_get("released")?,
        row.try_get("batched")?,
        row.try_get("counted")?,
        row.try_get("sent")?,
        row.try_get("addressed")?,
    );
    if released != keys
        || batched != events - keys
        || counted != events
        || sent != keys
        || addressed != keys
    {
        return Err(BenchError::Failed(format!(
            "{events} events over {keys} keys: {released} continuations, {batched} batched, {counted} counted, \
             {sent} sent to {addressed} addresses"
        )));
    }
    let first_close: DateTime<Utc> = row.try_get("first_close")?;
    let last_close: DateTime<Utc> = row.try_get("last_close")?;
    if first_close != last_close {
        return Err(BenchError::Failed(format!(
            "windows closed from {first_close} to {last_close}, not at one instant"
        )));
    }
    let last_mail: DateTime<Utc> = row.try_get("last_mail")?;
    let first_release: DateTime<Utc> = row.try_get("first_release")?;
    let arrival_secs: f64 = row.try_get("arrival_secs")?;
    let close_secs = (last_mail - first_close).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let report = DigestBenchReport {
        events: args.events,
        keys: args.keys,
        arrival_secs,
        arrivals_per_s: events as f64 / arrival_secs.max(1e-6),
        close_secs,
        continuations_per_s: keys as f64 / close_secs.max(1e-6),
        first_continuation_ms: (first_release - first_close)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1e3,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
        return Ok(());
    }
    println!(
        "herald bench digest: {} events over {} keys, every window closing at {first_close}; {} worker(s) x {} (log sink)",
        report.events, report.keys, args.workers, args.concurrency
    );
    println!(
        "  arrivals               {:>10.0} events/s ({:.1} s from the first to the last)",
        report.arrivals_per_s, report.arrival_secs
    );
    println!(
        "  continuations          {:>10.0} /s ({:.2} s from the close to the last email; first after {:.0} ms)",
        report.continuations_per_s, report.close_secs, report.first_continuation_ms
    );
    println!(
        "  exactly once           {released} continuations, {batched} batched, counts sum to {counted}, {sent} emails to {addressed} addresses"
    );
    Ok(())
}
