//! Daily rollups against hand-counted fixtures: raw rows of one day (and rows just outside it) written with SQL,
//! the day rolled up, and every count and percentile compared with what the fixture says by hand. Then
//! recomputation (directly and through the nightly job on a real worker), and the HTTP view with its range checks.
//!
//! The day is 2024-06-12 in Europe/Paris (UTC+2 then): [2024-06-11T22:00Z, 2024-06-12T22:00Z). Fixture rows sit
//! at 22:30Z on the 11th (in the Paris day, not in the UTC day) and just past either boundary (outside).

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use herald::clock::rollups::{
    self, DailyRollups, DeliveryRollup, JobRollup, RollupFilter, RollupSettings, RunRollup,
    StepRollup,
};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::common::{RunningWorker, TestDb, job, options, settings, spawn_app, wait_until};

const DAY: &str = "2024-06-12";

fn day() -> NaiveDate {
    NaiveDate::parse_from_str(DAY, "%Y-%m-%d").expect("day")
}

fn paris() -> RollupSettings {
    RollupSettings {
        timezone: "Europe/Paris".into(),
        ..RollupSettings::default()
    }
}

/// An instant `ms` milliseconds after 2024-06-11T22:30Z (half an hour into the Paris day).
fn t(ms: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-06-11T22:30:00Z")
        .expect("base")
        .with_timezone(&Utc)
        + chrono::Duration::milliseconds(ms)
}

/// Just before the day starts, and just after it ends.
fn before_day() -> DateTime<Utc> {
    t(-30 * 60 * 1000 - 1)
}

fn after_day() -> DateTime<Utc> {
    t(23 * 3600 * 1000 + 30 * 60 * 1000)
}

const HOUR: i64 = 3600 * 1000;

type At = Option<DateTime<Utc>>;
/// (queue, kind, outcome, attempts, due at, claimed at, finished at)
type HistoryRow<'a> = (&'a str, &'a str, &'a str, i32, At, At, DateTime<Utc>);
/// (run, node, status, attempts, started at, finished at)
type StepRow<'a> = (i64, &'a str, &'a str, i32, At, At);
/// (run, recipient, channel, provider, status, workflow, triggered at, created at, accepted at)
type DeliveryRow<'a> = (
    i64,
    &'a str,
    &'a str,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    At,
    DateTime<Utc>,
    At,
);

/// A finished job in history: (queue, kind, outcome, attempts, due at, claimed at, finished at). Its id is far from
/// those the queue gives real jobs.
async fn history(pool: &PgPool, row: HistoryRow<'_>) {
    let (queue, kind, outcome, attempt, run_at, claimed_at, finished_at) = row;
    sqlx::query(
        "INSERT INTO herald_job_history (job_id, queue, kind, payload, priority, outcome, attempt, max_attempts, \
         errors, created_at, claimed_at, finished_at, run_at) \
         VALUES ((SELECT count(*) + 1000000 FROM herald_job_history), $1, $2, '{}', 0, $3, $4, 5, '[]', \
                 coalesce($5, $7 - interval '1 hour'), $6, $7, $5)",
    )
    .bind(queue)
    .bind(kind)
    .bind(outcome)
    .bind(attempt)
    .bind(run_at)
    .bind(claimed_at)
    .bind(finished_at)
    .execute(pool)
    .await
    .expect("history row");
}

/// A run of `welcome` v1: (status, created at, finished at). Returns its id.
async fn run(
    pool: &PgPool,
    status: &str,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO herald_runs (workflow, version, status, context, created_at, finished_at) \
         VALUES ('welcome', 1, $1, '{}', $2, $3) RETURNING id",
    )
    .bind(status)
    .bind(created_at)
    .bind(finished_at)
    .fetch_one(pool)
    .await
    .expect("run")
}

/// A step: (run, node, status, attempts, started at, finished at).
async fn step(pool: &PgPool, row: StepRow<'_>) {
    let (run, node, status, attempts, started_at, finished_at) = row;
    sqlx::query(
        "INSERT INTO herald_run_steps (run_id, epoch, node_id, status, attempts, started_at, finished_at) \
         VALUES ($1, 1, $2, $3, $4, $5, $6)",
    )
    .bind(run)
    .bind(node)
    .bind(status)
    .bind(attempts)
    .bind(started_at)
    .bind(finished_at)
    .execute(pool)
    .await
    .expect("step");
}

/// A delivery: (run, recipient, channel, provider, status, workflow, triggered at, created at, accepted at).
async fn delivery(pool: &PgPool, row: DeliveryRow<'_>) {
    let (
        run,
        recipient,
        channel,
        provider,
        status,
        workflow,
        triggered_at,
        created_at,
        accepted_at,
    ) = row;
    // The history as the channel layer writes it: `sending`, then `sent` when the provider accepted, then the
    // callback's status.
    let mut entries = vec![json!({ "status": "sending", "at": created_at, "source": "send" })];
    if let Some(at) = accepted_at {
        entries.push(json!({ "status": "sent", "at": at, "source": "send" }));
    }
    if status != "sent" {
        entries.push(json!({ "status": status, "at": created_at + chrono::Duration::hours(1), "source": "callback" }));
    }
    sqlx::query(
        "INSERT INTO herald_deliveries (run_id, node_id, recipient, channel, status, provider, history, workflow, \
         triggered_at, created_at) VALUES ($1, 'mail', $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(run)
    .bind(recipient)
    .bind(channel)
    .bind(status)
    .bind(provider)
    .bind(Value::Array(entries))
    .bind(workflow)
    .bind(triggered_at)
    .bind(created_at)
    .execute(pool)
    .await
    .expect("delivery");
}

/// The fixture day. The expected numbers in [`expected`] are counted from this by hand.
async fn fixtures(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO herald_workflows (name, version, definition, digest, source) VALUES ('welcome', 1, \
         '{\"name\": \"welcome\", \"version\": 1, \"nodes\": [{\"id\": \"start\", \"kind\": \"trigger\"}, \
           {\"id\": \"mail\", \"kind\": \"action\"}, {\"id\": \"pause\", \"kind\": \"delay\"}]}', 'x', 'test')",
    )
    .execute(pool)
    .await
    .expect("workflow");

    // Jobs. mail/send: pickups 100, 200, 300 (retried: 3 attempts), 400 ms (dead after 5 attempts); one cancelled
    // before any claim; one finished before history kept run_at (counted, no pickup); one outside either side.
    let due = t(0);
    let claimed = |ms: i64| Some(due + chrono::Duration::milliseconds(ms));
    for row in [
        (
            "mail",
            "send",
            "completed",
            1,
            Some(due),
            claimed(100),
            t(1000),
        ),
        (
            "mail",
            "send",
            "completed",
            1,
            Some(due),
            claimed(200),
            t(2000),
        ),
        (
            "mail",
            "send",
            "completed",
            3,
            Some(due),
            claimed(300),
            t(3000),
        ),
        ("mail", "send", "dead", 5, Some(due), claimed(400), t(4000)),
        ("mail", "send", "cancelled", 0, Some(due), None, t(5000)),
        ("mail", "send", "completed", 1, None, claimed(0), t(6000)),
        (
            "mail",
            "send",
            "completed",
            1,
            Some(due),
            claimed(9),
            before_day(),
        ),
        (
            "mail",
            "send",
            "completed",
            1,
            Some(due),
            claimed(9),
            after_day(),
        ),
        (
            "default",
            "report",
            "completed",
            2,
            Some(due),
            claimed(50),
            t(20 * HOUR),
        ),
    ] {
        history(pool, row).await;
    }

    // Runs: started in the day r1, r2, r3, r4 (running), r6 (cancelled after the day); completed in the day r1
    // (2 s), r2 (4 s) and r5 (started the day before, 4 h); failed r3.
    let r1 = run(pool, "completed", t(0), Some(t(2000))).await;
    let r2 = run(pool, "completed", t(HOUR), Some(t(HOUR + 4000))).await;
    let r3 = run(pool, "failed", t(2 * HOUR), Some(t(2 * HOUR + 100))).await;
    let r4 = run(pool, "running", t(3 * HOUR), None).await;
    let r5 = run(pool, "completed", t(-4 * HOUR), Some(t(0))).await;
    let r6 = run(pool, "cancelled", t(4 * HOUR), Some(after_day())).await;

    // Steps finished in the day: trigger r1 (10 ms), r2 (30 ms); action r1 (500 ms, 2 attempts), r3 failed
    // (100 ms); delay r2 (1 h); a node the definition lacks (unknown). Not counted: r4's pending action, r6's
    // step finished after the day, r5's trigger finished before it.
    for row in [
        (r1, "start", "completed", 1, Some(t(0)), Some(t(10))),
        (
            r2,
            "start",
            "completed",
            1,
            Some(t(HOUR)),
            Some(t(HOUR + 30)),
        ),
        (r1, "mail", "completed", 2, Some(t(1000)), Some(t(1500))),
        (
            r3,
            "mail",
            "failed",
            3,
            Some(t(2 * HOUR)),
            Some(t(2 * HOUR + 100)),
        ),
        (
            r2,
            "pause",
            "completed",
            1,
            Some(t(HOUR)),
            Some(t(2 * HOUR)),
        ),
        (r2, "gone", "completed", 1, Some(t(HOUR)), Some(t(HOUR + 7))),
        (r4, "mail", "pending", 0, None, None),
        (r6, "mail", "cancelled", 0, None, Some(after_day())),
        (
            r5,
            "start",
            "completed",
            1,
            Some(t(-4 * HOUR)),
            Some(before_day()),
        ),
    ] {
        step(pool, row).await;
    }

    // Deliveries created in the day. email/ses: delivered (accepted 1 s after the trigger), sent (2 s), bounced
    // (3 s), failed (never accepted), unknown (never accepted); email with no provider: suppressed; sms/twilio:
    // delivered (500 ms); one made before deliveries recorded their workflow. Not counted: one created after the
    // day.
    let w = Some("welcome");
    for row in [
        (
            r1,
            "a",
            "email",
            Some("ses"),
            "delivered",
            w,
            Some(t(0)),
            t(10),
            Some(t(1000)),
        ),
        (
            r2,
            "b",
            "email",
            Some("ses"),
            "sent",
            w,
            Some(t(HOUR)),
            t(HOUR + 10),
            Some(t(HOUR + 2000)),
        ),
        (
            r3,
            "c",
            "email",
            Some("ses"),
            "bounced",
            w,
            Some(t(2 * HOUR)),
            t(2 * HOUR + 10),
            Some(t(2 * HOUR + 3000)),
        ),
        (
            r4,
            "d",
            "email",
            Some("ses"),
            "failed",
            w,
            Some(t(3 * HOUR)),
            t(3 * HOUR + 10),
            None,
        ),
        (
            r4,
            "e",
            "email",
            Some("ses"),
            "unknown",
            w,
            Some(t(3 * HOUR)),
            t(3 * HOUR + 20),
            None,
        ),
        (
            r4,
            "f",
            "email",
            None,
            "suppressed",
            w,
            Some(t(3 * HOUR)),
            t(3 * HOUR + 30),
            None,
        ),
        (
            r1,
            "g",
            "sms",
            Some("twilio"),
            "delivered",
            w,
            Some(t(0)),
            t(20),
            Some(t(500)),
        ),
        (
            r5,
            "h",
            "email",
            Some("ses"),
            "sent",
            None,
            None,
            t(40),
            Some(t(60)),
        ),
        (
            r6,
            "i",
            "email",
            Some("ses"),
            "sent",
            w,
            Some(t(4 * HOUR)),
            after_day(),
            Some(after_day()),
        ),
    ] {
        delivery(pool, row).await;
    }
}

/// PostgreSQL's `percentile_cont` over sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let position = (sorted.len() - 1) as f64 * p;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

fn p3(sorted: &[f64]) -> [Option<f64>; 3] {
    [0.5, 0.95, 0.99].map(|p| Some(percentile(sorted, p)))
}

/// What the fixture day must roll up to, counted by hand from [`fixtures`].
fn expected() -> (
    Vec<JobRollup>,
    Vec<RunRollup>,
    Vec<StepRollup>,
    Vec<DeliveryRollup>,
) {
    let day = day();
    let [pickup_p50_ms, pickup_p95_ms, pickup_p99_ms] = p3(&[100.0, 200.0, 300.0, 400.0]);
    let [report_p50, report_p95, report_p99] = p3(&[50.0]);
    let jobs = vec![
        JobRollup {
            day,
            queue: "default".into(),
            kind: "report".into(),
            executed: 1,
            completed: 1,
            dead: 0,
            cancelled: 0,
            retried: 1,
            attempts: 2,
            pickup_p50_ms: report_p50,
            pickup_p95_ms: report_p95,
            pickup_p99_ms: report_p99,
        },
        JobRollup {
            day,
            queue: "mail".into(),
            kind: "send".into(),
            executed: 5,
            completed: 4,
            dead: 1,
            cancelled: 1,
            retried: 2,
            attempts: 1 + 1 + 3 + 5 + 1,
            pickup_p50_ms,
            pickup_p95_ms,
            pickup_p99_ms,
        },
    ];
    let [duration_p50_ms, duration_p95_ms, duration_p99_ms] =
        p3(&[2000.0, 4000.0, 4.0 * HOUR as f64]);
    let runs = vec![RunRollup {
        day,
        workflow: "welcome".into(),
        started: 5,
        completed: 3,
        failed: 1,
        cancelled: 0,
        duration_p50_ms,
        duration_p95_ms,
        duration_p99_ms,
    }];
    let step = |node_kind: &str, completed, failed, retried, durations: &[f64]| {
        let [duration_p50_ms, duration_p95_ms, duration_p99_ms] = p3(durations);
        StepRollup {
            day,
            workflow: "welcome".into(),
            node_kind: node_kind.into(),
            completed,
            failed,
            cancelled: 0,
            retried,
            duration_p50_ms,
            duration_p95_ms,
            duration_p99_ms,
        }
    };
    let steps = vec![
        step("action", 1, 1, 2, &[100.0, 500.0]),
        step("delay", 1, 0, 0, &[HOUR as f64]),
        step("trigger", 2, 0, 0, &[10.0, 30.0]),
        step("unknown", 1, 0, 0, &[7.0]),
    ];
    let none = [None, None, None];
    let delivery = |workflow: &str,
                    channel: &str,
                    provider: &str,
                    counts: [i64; 10],
                    accept: [Option<f64>; 3]| DeliveryRollup {
        day,
        workflow: workflow.into(),
        channel: channel.into(),
        provider: provider.into(),
        deliveries: counts[0],
        accepted: counts[1],
        queued: counts[2],
        sending: counts[3],
        sent: counts[4],
        delivered: counts[5],
        bounced: counts[6],
        failed: counts[7],
        suppressed: counts[8],
        unknown: counts[9],
        accept_p50_ms: accept[0],
        accept_p95_ms: accept[1],
        accept_p99_ms: accept[2],
    };
    //                 total accepted queued sending sent delivered bounced failed suppressed unknown
    let deliveries = vec![
        delivery("", "email", "ses", [1, 1, 0, 0, 1, 0, 0, 0, 0, 0], none),
        delivery("welcome", "email", "", [1, 0, 0, 0, 0, 0, 0, 0, 1, 0], none),
        delivery(
            "welcome",
            "email",
            "ses",
            [5, 3, 0, 0, 1, 1, 1, 1, 0, 1],
            p3(&[1000.0, 2000.0, 3000.0]),
        ),
        delivery(
            "welcome",
            "sms",
            "twilio",
            [1, 1, 0, 0, 0, 1, 0, 0, 0, 0],
            p3(&[500.0]),
        ),
    ];
    (jobs, runs, steps, deliveries)
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-6,
        (None, None) => true,
        _ => false,
    }
}

/// Percentiles compared to 1e-6 ms (floating-point interpolation), everything else exactly.
fn assert_rollups(got: &DailyRollups) {
    let (jobs, runs, steps, deliveries) = expected();
    assert_eq!(got.jobs.len(), jobs.len(), "jobs: {:#?}", got.jobs);
    for (g, e) in got.jobs.iter().zip(&jobs) {
        let exact = |r: &JobRollup| {
            (
                r.day,
                r.queue.clone(),
                r.kind.clone(),
                r.executed,
                r.completed,
                r.dead,
                r.cancelled,
            )
        };
        assert_eq!(exact(g), exact(e));
        assert_eq!(
            (g.retried, g.attempts),
            (e.retried, e.attempts),
            "{}",
            e.queue
        );
        assert!(
            close(g.pickup_p50_ms, e.pickup_p50_ms)
                && close(g.pickup_p95_ms, e.pickup_p95_ms)
                && close(g.pickup_p99_ms, e.pickup_p99_ms),
            "pickup of {}: {g:?} vs {e:?}",
            e.queue
        );
    }
    assert_eq!(got.runs.len(), runs.len(), "runs: {:#?}", got.runs);
    for (g, e) in got.runs.iter().zip(&runs) {
        let exact = |r: &RunRollup| {
            (
                r.day,
                r.workflow.clone(),
                r.started,
                r.completed,
                r.failed,
                r.cancelled,
            )
        };
        assert_eq!(exact(g), exact(e));
        assert!(
            close(g.duration_p50_ms, e.duration_p50_ms)
                && close(g.duration_p95_ms, e.duration_p95_ms)
                && close(g.duration_p99_ms, e.duration_p99_ms),
            "{g:?} vs {e:?}"
        );
    }
    assert_eq!(got.steps.len(), steps.len(), "steps: {:#?}", got.steps);
    for (g, e) in got.steps.iter().zip(&steps) {
        let exact = |r: &StepRollup| {
            (
                r.day,
                r.workflow.clone(),
                r.node_kind.clone(),
                r.completed,
                r.failed,
                r.cancelled,
                r.retried,
            )
        };
        assert_eq!(exact(g), exact(e));
        assert!(
            close(g.duration_p50_ms, e.duration_p50_ms)
                && close(g.duration_p95_ms, e.duration_p95_ms)
                && close(g.duration_p99_ms, e.duration_p99_ms),
            "{g:?} vs {e:?}"
        );
    }
    assert_eq!(
        got.deliveries.len(),
        deliveries.len(),
        "deliveries: {:#?}",
        got.deliveries
    );
    for (g, e) in got.deliveries.iter().zip(&deliveries) {
        let counts = |r: &DeliveryRollup| {
            (
                r.day,
                r.workflow.clone(),
                r.channel.clone(),
                r.provider.clone(),
                [
                    r.deliveries,
                    r.accepted,
                    r.queued,
                    r.sending,
                    r.sent,
                    r.delivered,
                    r.bounced,
                    r.failed,
                    r.suppressed,
                    r.unknown,
                ],
            )
        };
        assert_eq!(counts(g), counts(e));
        assert!(
            close(g.accept_p50_ms, e.accept_p50_ms)
                && close(g.accept_p95_ms, e.accept_p95_ms)
                && close(g.accept_p99_ms, e.accept_p99_ms),
            "{g:?} vs {e:?}"
        );
    }
}

fn the_day() -> RollupFilter {
    RollupFilter::new(day(), day(), None, None, None).expect("filter")
}

/// Every rollup row of every table, as text, in key order: what "identical rows" compares.
async fn stored_rows(pool: &PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for (table, order) in [
        ("herald_rollup_jobs", "day, queue, kind"),
        ("herald_rollup_runs", "day, workflow"),
        ("herald_rollup_steps", "day, workflow, node_kind"),
        (
            "herald_rollup_deliveries",
            "day, workflow, channel, provider",
        ),
    ] {
        let sql = format!("SELECT t::text FROM {table} t ORDER BY {order}");
        let mut found: Vec<String> = sqlx::query_scalar(&sql)
            .fetch_all(pool)
            .await
            .expect("rows");
        rows.push(format!("{table}: {}", found.len()));
        rows.append(&mut found);
    }
    rows
}

#[tokio::test]
async fn rollups_equal_hand_counted_fixtures() {
    let db = TestDb::new().await;
    fixtures(&db.pool).await;
    let rebuilt = rollups::rebuild(&db.pool, &paris(), day())
        .await
        .expect("rebuild");
    assert_eq!(
        (rebuilt.starts_at.to_rfc3339(), rebuilt.ends_at.to_rfc3339()),
        (
            "2024-06-11T22:00:00+00:00".to_string(),
            "2024-06-12T22:00:00+00:00".to_string()
        )
    );
    assert_eq!(
        (
            rebuilt.jobs,
            rebuilt.runs,
            rebuilt.steps,
            rebuilt.deliveries
        ),
        (2, 1, 4, 4)
    );
    let shown = rollups::show(&db.pool, &the_day()).await.expect("show");
    assert_rollups(&shown);
    assert_eq!(shown.days.len(), 1);
    assert_eq!(shown.days[0].timezone, "Europe/Paris");
    assert!(!shown.truncated);

    // The same raw rows under UTC days: the 22:30Z rows of the 11th fall on the 11th, not the 12th, with the one
    // at 21:59:59.999Z that the Paris day left out.
    let utc = RollupSettings::default();
    let previous = day().pred_opt().expect("day before");
    rollups::rebuild(&db.pool, &utc, previous)
        .await
        .expect("rebuild UTC");
    let filter = RollupFilter::new(previous, previous, None, None, None).expect("filter");
    let shown = rollups::show(&db.pool, &filter).await.expect("show");
    let mail = shown
        .jobs
        .iter()
        .find(|j| j.queue == "mail")
        .expect("mail jobs on the 11th UTC");
    assert_eq!((mail.completed, mail.dead, mail.cancelled), (5, 1, 1));
}

#[tokio::test]
async fn recomputing_a_day_gives_identical_rows_and_follows_the_raw_rows() {
    let db = TestDb::new().await;
    fixtures(&db.pool).await;
    rollups::rebuild(&db.pool, &paris(), day())
        .await
        .expect("first");
    let first = stored_rows(&db.pool).await;
    rollups::rebuild(&db.pool, &paris(), day())
        .await
        .expect("second");
    assert_eq!(
        stored_rows(&db.pool).await,
        first,
        "a recomputed day changed"
    );
    // Through the command as well, over a range that includes the day.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["rollup", "--from", "2024-06-11", "--to", "2024-06-13"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", &db.url)
        .env("HERALD_ENV", "test")
        .env("HERALD_CLOCK__ROLLUPS__TIMEZONE", "Europe/Paris")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("herald rollup");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report.as_array().map(Vec::len), Some(3));
    assert_eq!(report[1]["day"], DAY);
    assert_eq!(report[1]["jobs"], 2);
    let rows = stored_rows(&db.pool).await;
    let of_day: Vec<&String> = rows.iter().filter(|r| r.contains(DAY)).collect();
    let first_of_day: Vec<&String> = first.iter().filter(|r| r.contains(DAY)).collect();
    assert_eq!(
        of_day, first_of_day,
        "the command computed the day differently"
    );

    // A raw row added later: the recomputed day counts it, once (no row of the first computation is left).
    run(&db.pool, "failed", t(5 * HOUR), Some(t(6 * HOUR))).await;
    rollups::rebuild(&db.pool, &paris(), day())
        .await
        .expect("third");
    let shown = rollups::show(&db.pool, &the_day()).await.expect("show");
    assert_eq!(shown.runs.len(), 1);
    assert_eq!((shown.runs[0].started, shown.runs[0].failed), (6, 2));
}

#[tokio::test]
async fn the_nightly_job_rolls_up_the_previous_local_day_and_drops_old_days() {
    let db = TestDb::new().await;
    fixtures(&db.pool).await;
    let mut clock = settings().clock;
    clock.rollups = RollupSettings {
        keep_days: 30,
        ..paris()
    };
    // A day older than keep_days before the rolled-up day: the job removes it.
    let old = NaiveDate::from_ymd_opt(2024, 5, 1).expect("old day");
    rollups::rebuild(&db.pool, &clock.rollups, old)
        .await
        .expect("old");

    let worker = RunningWorker::start(
        &db.pool,
        options(&[(clock.queue.as_str(), 1)]),
        herald::clock::maintenance_handlers(&db.pool, &clock),
    );
    // 00:15 in Paris on June 13 is 22:15 UTC on June 12: the job rolls up June 12.
    let id = db
        .enqueue(vec![job(
            clock.queue.as_str(),
            herald::clock::ROLLUP_KIND,
            json!({ "tick": "2024-06-12T22:15:00Z" }),
        )])
        .await[0];
    let pool = db.pool.clone();
    wait_until(Duration::from_secs(30), "the rollup job completes", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT outcome FROM herald_job_history WHERE job_id = $1",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
            .expect("history")
            .is_some()
        }
    })
    .await;
    worker.stop().await;
    let outcome: String =
        sqlx::query_scalar("SELECT outcome FROM herald_job_history WHERE job_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .expect("outcome");
    assert_eq!(outcome, "completed");
    assert_rollups(&rollups::show(&db.pool, &the_day()).await.expect("show"));
    let days: Vec<NaiveDate> =
        sqlx::query_scalar("SELECT day FROM herald_rollup_days ORDER BY day")
            .fetch_all(&db.pool)
            .await
            .expect("days");
    assert_eq!(
        days,
        vec![day()],
        "the old day is removed, the rolled-up day kept"
    );
}

#[tokio::test]
async fn the_api_answers_the_rollups_and_refuses_bad_ranges() {
    let app = spawn_app().await;
    fixtures(&app.db.pool).await;
    rollups::rebuild(&app.db.pool, &paris(), day())
        .await
        .expect("rebuild");
    let key = &app.read_key;

    let response = app
        .get(&format!("/v1/analytics/daily?from={DAY}&to={DAY}"), key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    // The HTTP answer is the stored rollups, field for field.
    let stored = rollups::show(&app.db.pool, &the_day()).await.expect("show");
    assert_rollups(&stored);
    assert_eq!(body, serde_json::to_value(&stored).expect("json"));
    assert_eq!(body["jobs"][1]["dead"], 1);
    assert_eq!(body["deliveries"][2]["bounced"], 1);

    // Filters: a workflow leaves jobs out; a channel or provider leaves out all but deliveries.
    let by_workflow = app
        .get_json(
            &format!("/v1/analytics/daily?from={DAY}&to={DAY}&workflow=welcome"),
            key,
        )
        .await;
    assert_eq!(by_workflow["jobs"], json!([]));
    assert_eq!(by_workflow["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(by_workflow["deliveries"].as_array().map(Vec::len), Some(3));
    let by_channel = app
        .get_json(
            &format!("/v1/analytics/daily?from={DAY}&to={DAY}&channel=sms&provider=twilio"),
            key,
        )
        .await;
    assert_eq!(by_channel["runs"], json!([]));
    assert_eq!(by_channel["deliveries"].as_array().map(Vec::len), Some(1));
    assert_eq!(by_channel["deliveries"][0]["delivered"], 1);
    // A range with no computed day: empty, and `days` says none is computed.
    let empty = app
        .get_json("/v1/analytics/daily?from=2024-01-01&to=2024-01-31", key)
        .await;
    assert_eq!(empty["days"], json!([]));

    for (query, field) in [
        ("from=2024-06-13&to=2024-06-12", "to"),
        ("from=2024-01-01&to=2025-01-01", "to"), // 367 days
        ("from=2024-06-32&to=2024-07-01", "from"),
        ("from=2024-06-12", "to"),
    ] {
        let response = app
            .get(&format!("/v1/analytics/daily?{query}"), key)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{query}"
        );
        let problem: Value = response.json().await.expect("problem");
        assert_eq!(problem["errors"][0]["field"], field, "{query}: {problem}");
    }
    // 366 days (a leap year) is allowed.
    let year = app
        .get("/v1/analytics/daily?from=2024-01-01&to=2024-12-31", key)
        .send()
        .await
        .expect("request");
    assert_eq!(year.status(), 200);
    // An unknown parameter, a filter PostgreSQL could not even compare (NUL), a filter too long to be a name.
    let long = format!("workflow={}", "w".repeat(201));
    for query in ["queue=mail", "workflow=a%00b", long.as_str()] {
        let response = app
            .get(
                &format!("/v1/analytics/daily?from={DAY}&to={DAY}&{query}"),
                key,
            )
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400, "{query}");
    }
    let anonymous = app
        .client
        .get(app.url(&format!("/v1/analytics/daily?from={DAY}&to={DAY}")))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), 401);
}

/// The owners' write paths feed the rollups: a real worker's history rows carry `run_at` (pickup latency), and
/// the engine's deliveries carry their workflow and trigger time (per-workflow counts, trigger -> accept).
#[tokio::test]
async fn real_runs_roll_up_with_their_workflow_and_latencies() {
    use crate::common::flows::{Flow, example};
    let flow = Flow::start(&[&example("welcome.yaml")]).await;
    let plain = flow
        .trigger(
            "welcome",
            json!({ "user_id": "u1", "email": "u1@example.com" }),
        )
        .await;
    let texted = flow
        .trigger(
            "welcome",
            json!({ "user_id": "u2", "email": "u2@example.com", "phone": "+15550100", "sms_opt_in": true }),
        )
        .await;
    flow.finished(plain, "completed").await;
    flow.finished(texted, "completed").await;
    flow.queue_drained().await;
    let pool = flow.db.pool.clone();

    // Today in UTC, and yesterday in case the runs straddled midnight.
    let today = Utc::now().date_naive();
    let yesterday = today.pred_opt().expect("yesterday");
    let utc = RollupSettings::default();
    rollups::rebuild_range(&pool, &utc, yesterday, today)
        .await
        .expect("rebuild");
    let shown = rollups::show(
        &pool,
        &RollupFilter::new(yesterday, today, None, None, None).expect("filter"),
    )
    .await
    .expect("show");

    let started: i64 = shown.runs.iter().map(|r| r.started).sum();
    let completed: i64 = shown.runs.iter().map(|r| r.completed).sum();
    assert_eq!((started, completed), (2, 2), "{:#?}", shown.runs);
    let steps = |kind: &str| -> i64 {
        shown
            .steps
            .iter()
            .filter(|s| s.workflow == "welcome" && s.node_kind == kind)
            .map(|s| s.completed)
            .sum()
    };
    // Two triggers, three sends (two emails, one text), two `wants_sms` conditions.
    assert_eq!(
        (steps("trigger"), steps("action"), steps("condition")),
        (2, 3, 2),
        "{:#?}",
        shown.steps
    );
    let sent = |channel: &str| -> (i64, i64) {
        let rows: Vec<&DeliveryRollup> = shown
            .deliveries
            .iter()
            .filter(|d| d.workflow == "welcome" && d.channel == channel && d.provider == "recorder")
            .collect();
        assert!(
            rows.iter()
                .all(|d| d.accept_p50_ms.is_some_and(|ms| ms >= 0.0)),
            "trigger -> accept latency of {channel}: {rows:#?}"
        );
        (
            rows.iter().map(|d| d.deliveries).sum(),
            rows.iter().map(|d| d.accepted).sum(),
        )
    };
    assert_eq!(sent("email"), (2, 2), "{:#?}", shown.deliveries);
    assert_eq!(sent("sms"), (1, 1), "{:#?}", shown.deliveries);
    let node_jobs: Vec<&JobRollup> = shown
        .jobs
        .iter()
        .filter(|j| j.kind == "herald.workflow.node")
        .collect();
    let executed: i64 = node_jobs.iter().map(|j| j.executed).sum();
    // Runs start past their trigger, and the `wants_sms` conditions run inline where their runs are (see
    // `workflow/inline.rs`): one node job per send.
    assert_eq!(executed, 3, "one node job per action: {node_jobs:#?}");
    assert!(
        node_jobs
            .iter()
            .all(|j| j.pickup_p50_ms.is_some_and(|ms| ms >= 0.0)),
        "pickup latency from history's run_at: {node_jobs:#?}"
    );
    flow.stop().await;
}
