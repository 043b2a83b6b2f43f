//! Schedules driven by an injected time (`Ticker::fire_due(now)`), so no test waits for a real minute.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald::clock::schedules::{MissedPolicy, Schedule, ScheduleSettings, Ticker};
use herald::workflow::Engine;
use sqlx::postgres::PgPoolOptions;

use crate::common::flows::Flow;
use crate::common::{TestDb, defaults, scalar_i64, settings, spawn_app_with};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test time")
        .with_timezone(&Utc)
}

fn job_schedule(name: &str, cron: &str, timezone: &str, missed: MissedPolicy) -> Schedule {
    let settings = ScheduleSettings {
        name: name.to_string(),
        cron: cron.to_string(),
        timezone: timezone.to_string(),
        missed,
        workflow: None,
        kind: Some("test.tick".to_string()),
        queue: Some("default".to_string()),
        payload: Some(serde_json::json!({ "from": name })),
    };
    Schedule::from_settings(&settings).expect("valid schedule")
}

fn engine_on(pool: &sqlx::PgPool) -> Arc<Engine> {
    herald::app::App::on_pool(settings(), pool.clone())
        .expect("engine")
        .engine
}

/// A ticker with its own pool (its own connections), as a separate clock process would have.
async fn clock(db: &TestDb, schedules: Vec<Schedule>) -> Ticker {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .expect("clock pool");
    let engine = engine_on(&pool);
    Ticker::new(pool, schedules, defaults(), engine, Duration::from_secs(60))
}

async fn jobs_of_kind(db: &TestDb) -> i64 {
    scalar_i64(
        &db.pool,
        "SELECT count(*) FROM herald_jobs WHERE kind = 'test.tick'",
    )
    .await
}

#[tokio::test]
async fn three_clocks_fire_each_tick_exactly_once() {
    let db = TestDb::new().await;
    let every_minute = || job_schedule("minutely", "* * * * *", "UTC", MissedPolicy::Skip);
    let clocks = [
        clock(&db, vec![every_minute()]).await,
        clock(&db, vec![every_minute()]).await,
        clock(&db, vec![every_minute()]).await,
    ];
    let start = at("2026-06-01T12:00:00Z");
    // Each clock looks several times a minute, at slightly different moments, all at once.
    let mut fired_total = 0;
    for step in 0..(30 * 4) {
        let now = start + chrono::Duration::seconds(step * 15);
        let looks = clocks.iter().enumerate().map(|(i, c)| {
            let skew = chrono::Duration::milliseconds(i as i64 * 700);
            c.fire_due(now + skew)
        });
        for fired in futures::future::join_all(looks).await {
            fired_total += fired.expect("fire").len();
        }
    }
    // Ticks 12:01 .. 12:29 (the first look, at 12:00:00, is where the schedule starts).
    let expected = 29;
    assert_eq!(fired_total, expected, "fired ticks reported by the clocks");
    assert_eq!(jobs_of_kind(&db).await, expected as i64, "jobs enqueued");
    let distinct_keys = scalar_i64(
        &db.pool,
        "SELECT count(DISTINCT idempotency_key) FROM herald_jobs WHERE kind = 'test.tick'",
    )
    .await;
    assert_eq!(distinct_keys, expected as i64);
    let first_key: String = sqlx::query_scalar(
        "SELECT idempotency_key FROM herald_jobs WHERE kind = 'test.tick' ORDER BY id LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("first job");
    assert_eq!(first_key, "clock:minutely:2026-06-01T12:01:00Z");
}

#[tokio::test]
async fn missed_ticks_are_skipped_or_run_once_by_policy() {
    let db = TestDb::new().await;
    let skip = job_schedule("hourly-skip", "0 * * * *", "UTC", MissedPolicy::Skip);
    let once = job_schedule("hourly-once", "0 * * * *", "UTC", MissedPolicy::RunOnce);
    let ticker = clock(&db, vec![skip, once]).await;
    assert!(
        ticker
            .fire_due(at("2026-06-01T00:10:00Z"))
            .await
            .expect("look")
            .is_empty()
    );
    // Every clock was down from 00:10 to 05:30: the ticks of 01:00 .. 05:00 were missed.
    let fired = ticker
        .fire_due(at("2026-06-01T05:30:00Z"))
        .await
        .expect("look");
    assert_eq!(
        fired.len(),
        1,
        "only the run_once schedule fires: {fired:?}"
    );
    assert_eq!(fired[0].schedule, "hourly-once");
    assert_eq!(fired[0].tick, at("2026-06-01T05:00:00Z"));
    let passed_over: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, passed_over FROM herald_schedules ORDER BY name")
            .fetch_all(&db.pool)
            .await
            .expect("progress");
    assert_eq!(
        passed_over,
        vec![
            ("hourly-once".to_string(), 4),
            ("hourly-skip".to_string(), 5)
        ]
    );
    // Back on time: the next tick fires under both policies, once.
    let fired = ticker
        .fire_due(at("2026-06-01T06:00:05Z"))
        .await
        .expect("look");
    assert_eq!(fired.len(), 2);
    assert!(
        ticker
            .fire_due(at("2026-06-01T06:00:30Z"))
            .await
            .expect("look")
            .is_empty()
    );
    assert_eq!(jobs_of_kind(&db).await, 3);
}

#[tokio::test]
async fn a_spring_forward_day_runs_a_0230_schedule_once_and_a_fall_back_day_once() {
    let db = TestDb::new().await;
    let schedule = job_schedule(
        "paris-0230",
        "30 2 * * *",
        "Europe/Paris",
        MissedPolicy::Skip,
    );
    let ticker = clock(&db, vec![schedule]).await;
    // Look every five minutes through both days on which Paris changes its clocks (2026-03-29, 2026-10-25).
    for (from, to) in [
        ("2026-03-28T22:00:00Z", "2026-03-29T22:00:00Z"),
        ("2026-10-24T21:00:00Z", "2026-10-25T23:00:00Z"),
    ] {
        let (mut now, to) = (at(from), at(to));
        while now <= to {
            ticker.fire_due(now).await.expect("look");
            now += chrono::Duration::minutes(5);
        }
    }
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM herald_jobs WHERE kind = 'test.tick' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("jobs");
    assert_eq!(
        keys,
        vec![
            // 02:30 did not exist: it ran at 03:00 CEST, right after the jump.
            "clock:paris-0230:2026-03-29T01:00:00Z",
            // 02:30 happened twice: it ran at the first, 02:30 CEST.
            "clock:paris-0230:2026-10-25T00:30:00Z",
        ]
    );
}

const DIGEST: &str = r#"
name: daily_digest
version: 1
nodes:
  - id: start
    kind: trigger
    fields:
      audience: { type: string }
"#;

#[tokio::test]
async fn a_workflow_schedule_starts_runs_and_pausing_passes_ticks_over() {
    let flow = Flow::without_worker(&[DIGEST]).await;
    let settings = ScheduleSettings {
        name: "digest".to_string(),
        cron: "0 8 * * *".to_string(),
        timezone: "Europe/Paris".to_string(),
        missed: MissedPolicy::RunOnce,
        workflow: Some("daily_digest".to_string()),
        kind: None,
        queue: None,
        payload: Some(serde_json::json!({ "audience": "all" })),
    };
    let schedules = vec![Schedule::from_settings(&settings).expect("schedule")];
    let ticker = Ticker::new(
        flow.db.pool.clone(),
        schedules.clone(),
        defaults(),
        flow.engine.clone(),
        Duration::from_secs(60),
    );
    ticker
        .fire_due(at("2026-06-01T05:00:00Z"))
        .await
        .expect("look");
    // 08:00 in Paris in June is 06:00 UTC.
    let fired = ticker
        .fire_due(at("2026-06-01T06:00:01Z"))
        .await
        .expect("look");
    assert_eq!(fired.len(), 1);
    let run_id = fired[0].run_id.expect("a run");
    let run = flow.run(run_id).await;
    assert_eq!(run.workflow, "daily_digest");

    let views = herald::clock::schedules::list(
        &flow.db.pool,
        &flow.engine,
        &schedules,
        at("2026-06-01T07:00:00Z"),
    )
    .await
    .expect("list");
    assert_eq!(views[0].last_run_id, Some(run_id));
    assert_eq!(views[0].next_tick, Some(at("2026-06-02T06:00:00Z")));
    assert!(views[0].last_outcome.is_some());

    // Paused over the next two days (even with run_once): nothing fires, and resuming fires nothing old.
    herald::clock::schedules::set_paused(
        &flow.db.pool,
        &herald::audit::Actor::cli(),
        &schedules,
        "digest",
        true,
    )
    .await
    .expect("pause");
    assert!(
        ticker
            .fire_due(at("2026-06-02T06:00:02Z"))
            .await
            .expect("look")
            .is_empty()
    );
    assert!(
        ticker
            .fire_due(at("2026-06-03T06:00:02Z"))
            .await
            .expect("look")
            .is_empty()
    );
    herald::clock::schedules::set_paused(
        &flow.db.pool,
        &herald::audit::Actor::cli(),
        &schedules,
        "digest",
        false,
    )
    .await
    .expect("resume");
    assert!(
        ticker
            .fire_due(at("2026-06-03T07:00:00Z"))
            .await
            .expect("look")
            .is_empty()
    );
    let fired = ticker
        .fire_due(at("2026-06-04T06:00:02Z"))
        .await
        .expect("look");
    assert_eq!(fired.len(), 1);
    let runs = scalar_i64(&flow.db.pool, "SELECT count(*) FROM herald_runs").await;
    assert_eq!(runs, 2);
    let unknown = herald::clock::schedules::set_paused(
        &flow.db.pool,
        &herald::audit::Actor::cli(),
        &schedules,
        "nope",
        true,
    )
    .await;
    assert!(unknown.is_err());
}

#[tokio::test]
async fn the_api_lists_schedules_and_pauses_them() {
    let app = spawn_app_with(|settings| {
        settings.clock.schedules.push(ScheduleSettings {
            name: "nightly-report".to_string(),
            cron: "0 2 * * *".to_string(),
            timezone: "UTC".to_string(),
            missed: MissedPolicy::Skip,
            workflow: None,
            kind: Some("report.build".to_string()),
            queue: None,
            payload: None,
        });
    })
    .await;
    let key = &app.admin_key;
    let list = app.get_json("/v1/schedules", key).await;
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["herald.retention", "herald.rollup", "nightly-report"]
    );
    assert_eq!(list[2]["destination"], "default/report.build");
    assert!(list[2]["next_tick"].is_string());

    let paused = app
        .post("/v1/schedules/nightly-report/pause", key)
        .send()
        .await
        .expect("pause");
    assert_eq!(paused.status(), 200);
    let list = app.get_json("/v1/schedules", key).await;
    assert_eq!(list[2]["paused"], true);
    let missing = app
        .post("/v1/schedules/nope/pause", key)
        .send()
        .await
        .expect("pause");
    assert_eq!(missing.status(), 404);
}

/// The clock role as operators run it: a `herald clock` process serves its probes and metrics, and counts the
/// ticks it fires of a schedule from the settings (every second here).
#[tokio::test]
async fn a_clock_process_serves_metrics_that_count_its_ticks() {
    let db = TestDb::new().await;
    let address = format!("127.0.0.1:{}", crate::common::free_port());
    let schedules = r#"[{name="every-second",cron="* * * * * *",kind="herald.noop",queue="ticks",missed="skip"}]"#;
    let mut clock = crate::common::spawn_herald_with(
        &db.url,
        &["clock"],
        &[
            ("HERALD_METRICS__LISTEN", address.as_str()),
            ("HERALD_CLOCK__SCHEDULES", schedules),
            ("HERALD_CLOCK__POLL_SECS", "1"),
        ],
    );
    let labels = [("schedule", "every-second"), ("outcome", "fired")];
    let counted =
        |body: &str| crate::common::metric_sample(body, "herald_clock_ticks_total", &labels);
    crate::common::wait_until(
        Duration::from_secs(30),
        "the clock to count two ticks fired",
        || async { counted(&crate::common::scrape(&address).await) >= 2.0 },
    )
    .await;
    // The count matches the jobs the ticks enqueued. It follows each tick's commit, and a tick fires every
    // second, so read the jobs on both sides of one scrape: before <= counted + 1 (a tick committed, not yet
    // counted) and counted <= after.
    let ticks = "SELECT count(*) FROM herald_jobs WHERE queue = 'ticks'";
    let before = scalar_i64(&db.pool, ticks).await as f64;
    let fired = counted(&crate::common::scrape(&address).await);
    let after = scalar_i64(&db.pool, ticks).await as f64;
    assert!(
        before <= fired + 1.0 && fired <= after,
        "{before} <= {fired} + 1, {fired} <= {after}"
    );
    for probe in ["/healthz", "/readyz"] {
        let answer = reqwest::get(format!("http://{address}{probe}"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{probe}");
    }
    clock.kill().await.unwrap();
}
