//! `herald bench feed`: live in-app feed delivery with many open streams, against a real `herald api` process.
//!
//! 1. N recipients each hold one Server-Sent-Events stream (`/v1/recipients/{id}/feed/stream`, one connection each)
//!    to the API process.
//! 2. E sends, one every few milliseconds, each to a random connected recipient, through the `in_app` channel (the
//!    feed item's insert and its `NOTIFY`, as a worker's action makes them). Latency: from just before the send to
//!    the moment the recipient's stream delivered the item (its `id:` line), in this process.
//! 3. Checks: every item reached its own recipient's stream, and no other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::bench::{BenchError, herald_process, scratch_database, stop_workers};
use herald::api::keys::{self, Scope};
use herald::audit::Actor;
use herald::channels::{Channel, ChannelKind, Message};
use herald::config::Settings;
use herald::feed::FeedChannel;

#[derive(Debug, Clone, clap::Args)]
pub struct FeedBenchArgs {
    /// Open streams (one recipient each).
    #[arg(long, default_value_t = 1_000)]
    pub streams: usize,
    /// Items sent while they are open.
    #[arg(long, default_value_t = 2_000)]
    pub sends: usize,
    /// Pause between sends, in milliseconds.
    #[arg(long, default_value_t = 2)]
    pub interval_ms: u64,
    /// Name of the scratch database (dropped and re-created).
    #[arg(long, default_value = "herald_bench_feed")]
    pub database: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct FeedBenchReport {
    pub streams: usize,
    pub sends: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub api_rss_mib: f64,
}

/// When each item was sent, and to whom: (recipient index, send instant) by item id.
type Sent = Arc<Mutex<HashMap<i64, (usize, Instant)>>>;
/// (item id, receiving recipient index, arrival instant).
type Arrivals = Arc<Mutex<Vec<(i64, usize, Instant)>>>;

pub async fn run(settings: &Settings, args: FeedBenchArgs) -> Result<(), BenchError> {
    let (url, pool) = scratch_database(settings, &args.database).await?;
    let (key, _) = keys::create(&pool, &Actor::herald("bench"), "bench", &Scope::ALL).await?;
    let port = crate::bench::http::free_port()?;
    let api_process = herald_process(&url, "error")?
        .arg("api")
        .env("HERALD_API__LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_API__RATE_LIMIT_PER_SECOND", "1000000")
        .env("HERALD_API__RATE_LIMIT_BURST", "1000000")
        .env("HERALD_FEED__MAX_STREAMS", (args.streams + 16).to_string())
        .spawn()
        .map_err(|e| BenchError::Failed(format!("cannot start the API process: {e}")))?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            return Err(BenchError::Failed(
                "the API process did not become ready".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1. The streams: each its own connection; each counted open once its first event (the counts) arrived.
    let arrivals: Arrivals = Arc::default();
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<()>(args.streams);
    let mut readers = Vec::new();
    for index in 0..args.streams {
        // One client: an HTTP/1 stream holds its connection, so each stream gets one of its own anyway.
        let request = client
            .get(format!("{base}/v1/recipients/r{index}/feed/stream"))
            .bearer_auth(&key);
        let arrivals = Arc::clone(&arrivals);
        let opened = opened_tx.clone();
        readers.push(tokio::spawn(async move {
            let Ok(mut response) = request.send().await else {
                return;
            };
            let mut pending = String::new();
            let mut announced = false;
            while let Ok(Some(chunk)) = response.chunk().await {
                let at = Instant::now();
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find("\n\n") {
                    let event: String = pending.drain(..end + 2).collect();
                    if !announced && event.contains("event: counts") {
                        announced = true;
                        let _ = opened.send(()).await;
                    }
                    if event.contains("event: item")
                        && let Some(id) = event
                            .lines()
                            .find_map(|l| l.strip_prefix("id:"))
                            .and_then(|id| id.trim().parse::<i64>().ok())
                    {
                        arrivals
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((id, index, at));
                    }
                }
            }
        }));
    }
    drop(opened_tx);
    let mut open = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while open < args.streams {
        match tokio::time::timeout_at(deadline, opened_rx.recv()).await {
            Ok(Some(())) => open += 1,
            _ => {
                return Err(BenchError::Failed(format!(
                    "only {open} of {} streams opened",
                    args.streams
                )));
            }
        }
    }

    // 2. The sends, through the in_app channel.
    let feed = FeedChannel::new(pool.clone());
    let sent: Sent = Arc::default();
    for n in 0..args.sends {
        let recipient = (n * 7919) % args.streams;
        let message = Message {
            channel: ChannelKind::InApp,
            providers: Vec::new(),
            to: format!("r{recipient}"),
            content: [("title".to_string(), format!("item {n}"))].into(),
            idempotency_key: format!("bench:{n}"),
        };
        let started = Instant::now();
        let report = feed.send(&message).await;
        let id = report
            .result
            .map_err(|e| BenchError::Failed(e.to_string()))?
            .provider_message_id
            .and_then(|id| id.parse::<i64>().ok())
            .ok_or_else(|| BenchError::Failed("a send stored no item".into()))?;
        sent.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (recipient, started));
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap_or_else(|e| e.into_inner()).len() < args.sends {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss = api_rss_mib(&api_process);
    stop_workers(vec![api_process]).await;
    for reader in readers {
        reader.abort();
    }
    pool.close().await;

    // 3. Checks and figures.
    let arrivals = arrivals.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let sent = sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if arrivals.len() != args.sends {
        return Err(BenchError::Failed(format!(
            "{} of {} items reached a stream",
            arrivals.len(),
            args.sends
        )));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| BenchError::Failed(e.to_string()))?;
    for (id, index, at) in &arrivals {
        let Some((recipient, started)) = sent.get(id) else {
            return Err(BenchError::Failed(format!("item {id} was never sent")));
        };
        if recipient != index {
            return Err(BenchError::Failed(format!(
                "item {id} for r{recipient} reached r{index}'s stream"
            )));
        }
        histogram.saturating_record(at.duration_since(*started).as_micros().max(1) as u64);
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let report = FeedBenchReport {
        streams: args.streams,
        sends: args.sends,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
        api_rss_mib: rss,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
        return Ok(());
    }
    println!(
        "herald bench feed: {} open streams (one API process), {} in_app sends {} ms apart",
        report.streams, report.sends, args.interval_ms
    );
    println!(
        "  send -> stream          p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms; every item reached its recipient's stream only",
        report.p50_ms, report.p99_ms, report.max_ms
    );
    println!(
        "  API process memory      {:.0} MiB resident",
        report.api_rss_mib
    );
    Ok(())
}

/// The API process's resident memory, from /proc (0 where there is none).
fn api_rss_mib(process: &tokio::process::Child) -> f64 {
    let Some(pid) = process.id() else {
        return 0.0;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
