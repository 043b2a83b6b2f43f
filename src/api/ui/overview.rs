//! The overview: the fleet's last hour of traffic, every queue (with pause and resume), the live workers, the
//! providers' circuits, the bridge's lag, the clock's last runs and firing alerts. Read through
//! `crate::status::read` (what `herald status` prints) and `queue::admin::throughput`; refreshed every 5 seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::Response;
use tokio::sync::Mutex;

use super::chart::{self, Series};
use super::html::{ago, encode, esc, esc_short, table, time_or_dash};
use super::{ApiState, Session, failure, page};
use crate::api::error::ApiError;
use crate::queue::admin::{self, QueueStats};
use crate::status::{self, FleetStatus};

/// Minutes of traffic the chart shows.
const CHART_MINUTES: i32 = 60;

/// How long one read of the fleet serves every open overview of this API process.
const SHARED_FOR: Duration = Duration::from_secs(5);

/// Longest the fleet's reads may take before the overview gives up (the lock they hold keeps other tabs waiting).
const READ_LIMIT: Duration = Duration::from_secs(10);

/// What the overview reads.
struct Snapshot {
    fleet: FleetStatus,
    /// `None`: the hour was too big to count within its budget.
    traffic: Option<Vec<admin::Minute>>,
}

/// The overview's reads are the dashboard's heaviest (every queue's depth, an hour of history), and each open tab
/// asks again every 5 s: one process reads at most once per [`SHARED_FOR`], however many tabs are open, and
/// concurrent tabs wait for the one read in flight rather than starting their own. An action that changes what
/// the overview shows (pause, resume) makes the next read fresh.
#[derive(Default)]
pub struct OverviewCache {
    slot: Mutex<Option<(Instant, u64, Arc<Snapshot>)>>,
    /// Bumped by [`OverviewCache::forget`]; a snapshot read before the bump is not served.
    generation: AtomicU64,
}

impl OverviewCache {
    async fn get(&self, pool: &sqlx::PgPool) -> Result<Arc<Snapshot>, ApiError> {
        let mut slot = self.slot.lock().await;
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((at, read_in, snapshot)) = slot.as_ref()
            && *read_in == generation
            && at.elapsed() < SHARED_FOR
        {
            return Ok(snapshot.clone());
        }
        // Bounded, as `herald status` is: a table locked elsewhere must not hold every waiting tab behind this one.
        let fleet = tokio::time::timeout(READ_LIMIT, status::read(pool))
            .await
            .map_err(|_| {
                ApiError::unavailable("the database did not answer the overview's reads in 10 s")
            })?
            .map_err(|error| match error {
                status::StatusError::Queue(error) => ApiError::from(error),
                status::StatusError::Database(error) => ApiError::from(error),
            })?;
        let traffic = admin::throughput(pool, CHART_MINUTES).await?;
        let snapshot = Arc::new(Snapshot { fleet, traffic });
        *slot = Some((Instant::now(), generation, snapshot.clone()));
        Ok(snapshot)
    }

    /// The next overview reads the fleet again.
    pub(super) fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

pub(super) async fn overview(State(state): State<ApiState>, Session(caller): Session) -> Response {
    let snapshot = match state.overview.get(&state.pool).await {
        Ok(snapshot) => snapshot,
        Err(error) => return failure(Some(&caller), error),
    };
    let fleet = &snapshot.fleet;
    let traffic = snapshot.traffic.as_ref();
    let now = fleet.at;

    let throughput = match traffic {
        Some(minutes) => {
            let labels: Vec<String> = minutes
                .iter()
                .map(|m| m.at.format("%H:%M").to_string())
                .collect();
            let per_second = |f: fn(&admin::Minute) -> i64| -> Vec<f64> {
                minutes.iter().map(|m| f(m) as f64 / 60.0).collect()
            };
            let series = [
                Series {
                    name: "enqueued".into(),
                    values: per_second(|m| m.enqueued),
                    colour: None,
                },
                Series {
                    name: "completed".into(),
                    values: per_second(|m| m.completed),
                    colour: Some(chart::GOOD),
                },
                Series {
                    name: "failed (dead-lettered)".into(),
                    values: per_second(|m| m.failed),
                    colour: Some(chart::BAD),
                },
            ];
            // The current minute is still filling: the last whole minute is the one to quote.
            let last = minutes.iter().rev().nth(1);
            let summary = last.map_or(String::new(), |m| {
                format!(
                    r#"<p id="rates">Last whole minute: <strong>{:.1}/s</strong> enqueued, <strong>{:.1}/s</strong> completed, <strong>{:.2}/s</strong> failed.</p>"#,
                    m.enqueued as f64 / 60.0,
                    m.completed as f64 / 60.0,
                    m.failed as f64 / 60.0
                )
            });
            format!(
                "{summary}{}",
                chart::lines(
                    "throughput",
                    "Jobs per second, last hour",
                    &labels,
                    &series,
                    "/s"
                )
            )
        }
        None => r#"<p class="warn">The last hour held too many jobs to count within the overview's budget (2 s); see the metrics instead.</p>"#.to_string(),
    };

    // Every queue a live worker serves is listed, empty or not (an empty queue is news too), after those with jobs.
    let empty: Vec<(QueueStats, i64)> = fleet
        .workers
        .iter()
        .flat_map(|(worker, _)| worker.queues.iter())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|name| !fleet.queues.iter().any(|(q, _)| &q.name == *name))
        .map(|name| {
            let idle = QueueStats {
                name: name.clone(),
                paused: false,
                available: 0,
                running: 0,
                scheduled: 0,
                oldest_age_secs: None,
            };
            (idle, 0)
        })
        .collect();
    let mut queues = String::new();
    for (queue, per_minute) in fleet.queues.iter().chain(&empty) {
        let actions = if caller.admin {
            let (action, label) = if queue.paused {
                ("resume", "Resume")
            } else {
                ("pause", "Pause")
            };
            format!(
                r#"<form method="post" action="/ui/queues/{path}/{action}" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" data-queue="{name}">{label}</button></form>"#,
                path = encode(&queue.name),
                name = esc(&queue.name),
                csrf = esc(&caller.csrf),
            )
        } else {
            String::new()
        };
        queues.push_str(&format!(
            r#"<tr data-queue="{name}"><td><a href="/ui/queues/{path}">{name}</a></td><td class="n depth">{available}</td><td class="n">{running}</td><td class="n wide">{scheduled}</td><td class="n">{oldest}</td><td class="n wide">{rate:.1}</td><td class="state">{paused}</td><td>{actions}</td></tr>"#,
            name = esc(&queue.name),
            path = encode(&queue.name),
            available = queue.available,
            running = queue.running,
            scheduled = queue.scheduled,
            oldest = queue
                .oldest_age_secs
                .map_or("–".to_string(), |s| format!("{s:.0} s")),
            rate = *per_minute as f64 / 60.0,
            paused = if queue.paused {
                r#"<span class="paused">paused</span>"#
            } else {
                "running"
            },
        ));
    }

    let mut workers = String::new();
    for (worker, held) in &fleet.workers {
        workers.push_str(&format!(
            r#"<tr><td>{host}</td><td class="n">{pid}</td><td>{queues}</td><td class="n">{held}</td><td class="n wide">{concurrency}</td><td>{heartbeat}</td><td class="wide">{started}</td></tr>"#,
            host = esc(&worker.hostname),
            pid = worker.pid,
            queues = esc(&worker.queues.join(", ")),
            concurrency = worker.concurrency,
            heartbeat = ago(now, worker.heartbeat_at),
            started = ago(now, worker.started_at),
        ));
    }

    let mut circuits = String::new();
    for circuit in &fleet.circuits {
        let state = circuit.state.as_str();
        let class = if state == "closed" { "good" } else { "bad" };
        circuits.push_str(&format!(
            r#"<tr><td>{provider}</td><td class="{class}">{state}</td><td class="n">{failures}</td><td>{until}</td><td>{error}</td><td class="wide">{worker}</td><td>{updated}</td></tr>"#,
            provider = esc(&circuit.provider),
            failures = circuit.consecutive_failures,
            until = time_or_dash(circuit.open_until),
            error = esc_short(circuit.last_error.as_deref().unwrap_or(""), 160),
            worker = esc(&circuit.worker_id.to_string()[..8]),
            updated = ago(now, circuit.updated_at),
        ));
    }

    let mut bridge = String::new();
    for offset in &fleet.bridge {
        bridge.push_str(&format!(
            r#"<tr><td>{group}</td><td>{topic}</td><td class="n">{partition}</td><td class="n">{next}</td><td class="n">{lag}</td><td class="n">{idle:.0} s</td></tr>"#,
            group = esc(&offset.group_id),
            topic = esc(&offset.topic),
            partition = offset.partition,
            next = offset.next_offset.map_or("–".to_string(), |o| o.to_string()),
            lag = offset.lag.map_or("–".to_string(), |l| l.to_string()),
            idle = offset.idle_secs,
        ));
    }

    let mut clock = String::new();
    for tick in &fleet.schedules {
        clock.push_str(&format!(
            r#"<tr><td>{name}</td><td>{state}</td><td>{fired}</td><td>{tick}</td><td>{error}</td></tr>"#,
            name = esc(&tick.name),
            state = if tick.paused {
                r#"<span class="paused">paused</span>"#
            } else {
                "active"
            },
            fired = tick
                .last_fired_at
                .map_or("never".to_string(), |at| ago(now, at)),
            tick = ago(now, tick.last_tick),
            error = tick.last_error.as_deref().map_or(String::new(), |e| format!(
                r#"<span class="bad">{}</span>"#,
                esc_short(e, 160)
            )),
        ));
    }

    let mut alerts = String::new();
    for alert in fleet.alerts.iter().filter(|a| a.state != "resolved") {
        alerts.push_str(&format!(
            r#"<tr><td class="{class}">{state}</td><td>{rule}</td><td>{subject}</td><td>{summary}</td><td>{since}</td></tr>"#,
            class = if alert.state == "firing" { "bad" } else { "warn" },
            state = esc(&alert.state),
            rule = esc(&alert.rule),
            subject = esc(&alert.subject),
            summary = esc_short(&alert.summary, 200),
            since = ago(now, alert.since),
        ));
    }
    let alerts = if alerts.is_empty() {
        String::new()
    } else {
        format!(
            "<h2>Alerts</h2>{}",
            table(
                "alerts",
                &["State", "Rule", "Subject", "Summary", "Since"],
                &alerts,
                ""
            )
        )
    };

    let body = format!(
        r#"<meta http-equiv="refresh" content="5">{alerts}<h2>Throughput</h2>{throughput}<h2>Queues</h2>{queues}<h2>Workers ({worker_count})</h2>{workers}<h2>Provider circuits</h2>{circuits}<h2>Bridge</h2>{bridge}<h2>Clock</h2>{clock}<p>Updated {updated} UTC, every 5 s.</p>"#,
        queues = table(
            "queues",
            &[
                "Queue",
                "#Ready",
                "#Running",
                "~#Scheduled",
                "#Oldest ready",
                "~#Done/s",
                "State",
                ""
            ],
            &queues,
            "No queue has jobs yet."
        ),
        worker_count = fleet.workers.len(),
        workers = table(
            "workers",
            &[
                "Host",
                "#Pid",
                "Queues",
                "#In flight",
                "~#Concurrency",
                "Heartbeat",
                "~Started"
            ],
            &workers,
            "No live worker."
        ),
        circuits = table(
            "circuits",
            &[
                "Provider",
                "State",
                "#Failures",
                "Open until",
                "Last error",
                "~Worker",
                "Updated"
            ],
            &circuits,
            "No provider call recorded yet."
        ),
        bridge = table(
            "bridge",
            &[
                "Group",
                "Topic",
                "#Partition",
                "#Next offset",
                "#Lag",
                "#Idle"
            ],
            &bridge,
            "No bridge has stored an offset."
        ),
        clock = table(
            "clock",
            &["Schedule", "State", "Last fired", "Last tick", "Last error"],
            &clock,
            "No schedule has ticked yet."
        ),
        updated = now.format("%H:%M:%S"),
    );
    page("Overview", Some(&caller), &body)
}
