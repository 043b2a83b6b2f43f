//! herald's alerts about itself, end to end: two worker processes (one elected to evaluate), a provider's circuit
//! open on a live worker, and the Slack adapter against a fake webhook. The alert fires once and clears once.

use std::time::Duration;

use crate::common::{TestDb, scalar_i64, spawn_herald_with, wait_until};
use crate::fake_provider::{FakeProvider, Reply};

/// The texts the fake received, in order.
fn texts(fake: &FakeProvider) -> Vec<String> {
    fake.requests()
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_provider_down_alert_fires_once_and_clears_once_through_slack() {
    let db = TestDb::new().await;
    let slack = FakeProvider::start(Reply::text(200, "ok")).await;
    let webhook = format!("{}/services/T/B/alerts", slack.url());
    let env = [
        ("HERALD_CHANNELS__SINK", "providers"),
        ("HERALD_CHANNELS__CHAINS__CHAT", "[\"slack\"]"),
        ("HERALD_PROVIDERS__SLACK__WEBHOOKS__OPS", webhook.as_str()),
        ("HERALD_ALERTS__TO", "ops"),
        ("HERALD_ALERTS__EVERY_SECS", "1"),
        ("HERALD_ALERTS__CIRCUIT_OPEN_FOR_SECS", "2"),
    ];
    let mut workers: Vec<_> = (0..2)
        .map(|_| spawn_herald_with(&db.url, &["worker", "--queues", "quiet:1"], &env))
        .collect();
    wait_until(
        Duration::from_secs(30),
        "both workers to register",
        || async { scalar_i64(&db.pool, "SELECT count(*) FROM herald_workers").await == 2 },
    )
    .await;

    // SendGrid's circuit opens on one live worker (as its breaker would record it).
    sqlx::query(
        "INSERT INTO herald_provider_circuits (provider, worker_id, state, consecutive_failures, last_error) \
         SELECT 'sendgrid', id, 'open', 5, 'HTTP 503' FROM herald_workers LIMIT 1",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    wait_until(Duration::from_secs(20), "the alert to fire", || async {
        slack.request_count() >= 1
    })
    .await;
    // Held for its two seconds first, then sent once, and not again while it keeps firing: four more
    // evaluations (one a second, by whichever worker leads) must add nothing. An absence has no event to wait for,
    // so this one watches a fixed window.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fired = texts(&slack);
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(
        fired[0].contains("[herald] FIRING: provider_down sendgrid")
            && fired[0].contains("HTTP 503"),
        "{fired:?}"
    );

    sqlx::query("UPDATE herald_provider_circuits SET state = 'closed' WHERE provider = 'sendgrid'")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "the alert to clear", || async {
        slack.request_count() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await; // four more evaluations, as above
    let all = texts(&slack);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all[1].contains("[herald] RESOLVED: provider_down sendgrid"),
        "{all:?}"
    );
    assert_eq!(
        scalar_i64(
            &db.pool,
            "SELECT count(*) FROM herald_alerts WHERE state = 'resolved' AND notified"
        )
        .await,
        1
    );
    for worker in &mut workers {
        worker.kill().await.unwrap();
    }
}

/// The alert state machine driven by hand: a recording channel, and the published depth of one queue, `reports`.
struct Evaluator {
    db: TestDb,
    settings: herald::alerts::AlertSettings,
    recorder: std::sync::Arc<crate::common::flows::Recorder>,
    channels: herald::channels::Channels,
}

impl Evaluator {
    async fn new() -> Self {
        let recorder = std::sync::Arc::new(crate::common::flows::Recorder::default());
        let mut settings = crate::common::settings().alerts;
        settings.to = "ops".into();
        settings.oldest_available = Duration::from_secs(300);
        Self {
            db: TestDb::new().await,
            settings,
            channels: herald::channels::Channels::uniform(recorder.clone()),
            recorder,
        }
    }

    /// Publishes `reports` with `available` jobs, its oldest due ten minutes ago (`behind`) or just now.
    async fn reports(&self, available: i64, behind: bool) {
        sqlx::query(
            "INSERT INTO herald_queue_stats (queue, available, scheduled, running, oldest_available_at, \
             computed_at, computed_by, last_seen_at) \
             VALUES ('reports', $1, 0, 0, now() - CASE WHEN $2 THEN interval '10 minutes' ELSE interval '0' END, \
                     now(), 'test:1', now()) \
             ON CONFLICT (queue) DO UPDATE SET available = excluded.available, \
                 oldest_available_at = excluded.oldest_available_at",
        )
        .bind(available)
        .bind(behind)
        .execute(&self.db.pool)
        .await
        .unwrap();
    }

    /// One pass: the conditions that hold, then the transitions and sends; the notifications sent.
    async fn evaluate(&self) -> Vec<(String, String, String)> {
        let holding = herald::alerts::conditions(&self.db.pool, &self.settings).await;
        assert!(holding.unread.is_empty(), "{:?}", holding.unread);
        herald::alerts::evaluate(&self.db.pool, &self.channels, &self.settings, &holding)
            .await
            .unwrap()
    }

    /// The subjects of the messages sent, in order.
    fn subjects(&self) -> Vec<String> {
        self.recorder
            .to("ops")
            .iter()
            .map(|m| m.content["subject"].clone())
            .collect()
    }
}

fn sent(state: &str) -> [(String, String, String); 1] {
    [("queue_behind".into(), "reports".into(), state.into())]
}

/// The state machine on its own, with a recording channel: a queue behind fires at once (no hold), stays quiet
/// while it keeps firing (but for one reminder per period), retries a notification the channel refused, and clears
/// once.
#[tokio::test]
async fn a_queue_behind_alert_fires_once_retries_a_refused_send_and_clears_once() {
    use crate::common::flows::Behaviour;

    let alerts = Evaluator::new().await;
    alerts.reports(42, true).await;

    alerts.recorder.behave("ops", Behaviour::FailTimes(1));
    assert!(
        alerts.evaluate().await.is_empty(),
        "the channel refused the first send"
    );
    assert_eq!(alerts.evaluate().await, sent("firing"));
    assert!(
        alerts.evaluate().await.is_empty(),
        "still firing: nothing new to say"
    );
    let listed = herald::alerts::list(&alerts.db.pool).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].state.as_str(), listed[0].notified),
        ("firing", true)
    );
    let messages = alerts.recorder.to("ops");
    assert_eq!(messages.len(), 1);
    assert!(messages[0].content["subject"].contains("FIRING: queue_behind reports"));
    assert!(messages[0].content["body"].contains("42 jobs available"));

    // Still firing when the reminder period (4 h by default) has passed since it was announced: one reminder.
    assert_eq!(alerts.settings.remind_every, Duration::from_secs(4 * 3600));
    sqlx::query("UPDATE herald_alerts SET sent_at = now() - interval '5 hours'")
        .execute(&alerts.db.pool)
        .await
        .unwrap();
    assert_eq!(alerts.evaluate().await, sent("reminder"));
    assert!(alerts.evaluate().await.is_empty(), "reminded once");
    assert!(alerts.subjects()[1].contains("STILL FIRING: queue_behind reports"));

    alerts.reports(42, false).await;
    assert_eq!(alerts.evaluate().await, sent("resolved"));
    assert!(alerts.evaluate().await.is_empty());
    assert_eq!(alerts.recorder.to("ops").len(), 3);
}

/// A RESOLVED that could not be sent is sent before the alert may fire again: the operator never sees FIRING,
/// FIRING without the RESOLVED between them.
#[tokio::test]
async fn an_unsent_resolve_goes_out_before_the_alert_fires_again() {
    use crate::common::flows::Behaviour;

    let alerts = Evaluator::new().await;
    alerts.reports(7, true).await;
    alerts.evaluate().await;
    alerts.reports(7, false).await;
    alerts.recorder.behave("ops", Behaviour::FailTimes(1));
    assert!(
        alerts.evaluate().await.is_empty(),
        "the RESOLVED was refused"
    );
    alerts.reports(7, true).await;
    // Behind again: the pending RESOLVED goes out first; the new episode starts on the next evaluation.
    assert_eq!(alerts.evaluate().await, sent("resolved"));
    assert_eq!(alerts.evaluate().await, sent("firing"));
    let subjects = alerts.subjects();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    assert!(
        subjects[0].contains("FIRING")
            && subjects[1].contains("RESOLVED")
            && subjects[2].contains("FIRING")
    );
}

/// The rules read from other modules' tables: a queue dead-lettering more than `dead_letters_per_minute`, a Kafka
/// partition whose recorded end is more than `bridge_lag_messages` past its stored offset, and a schedule whose
/// tick could not fire or whose job is failing. Each fires once and clears once.
#[tokio::test]
async fn dead_letters_a_bridge_behind_and_a_failing_clock_job_fire_and_clear() {
    let alerts = Evaluator::new().await;
    let pool = &alerts.db.pool;
    assert_eq!(alerts.settings.dead_letters_per_minute, 10);
    assert_eq!(alerts.settings.bridge_lag_messages, 10_000);
    let run = |sql: &'static str| async move {
        sqlx::query(sql).execute(pool).await.unwrap();
    };
    // Ten in the last minute is not more than ten; the eleventh fires.
    let dead = "INSERT INTO herald_dead_letters (job_id, queue, kind, payload, priority, attempt, max_attempts, \
                timeout_ms, errors, reason, created_at) \
                SELECT i, 'mail', 'send', '{}', 0, 3, 3, 1000, '[]', 'boom', now() FROM generate_series(1, 10) i";
    run(dead).await;
    assert!(alerts.evaluate().await.is_empty());
    run("INSERT INTO herald_dead_letters (job_id, queue, kind, payload, priority, attempt, max_attempts, \
         timeout_ms, errors, reason, created_at) VALUES (11, 'mail', 'send', '{}', 0, 3, 3, 1000, '[]', 'boom', now())")
        .await;
    let fired = alerts.evaluate().await;
    assert_eq!(
        fired,
        [("dead_letters".into(), "mail".into(), "firing".into())]
    );
    assert!(alerts.subjects()[0].contains("FIRING: dead_letters mail"));
    // Once firing it holds down to half the threshold: six in the last minute keep it firing.
    run(
        "UPDATE herald_dead_letters SET failed_at = now() - interval '2 minutes' WHERE job_id <= 5",
    )
    .await;
    assert!(
        alerts.evaluate().await.is_empty(),
        "still firing at 6 a minute"
    );

    run(
        "INSERT INTO herald_bridge_offsets (group_id, topic, partition, next_offset, end_offset) \
         VALUES ('herald', 'orders', 3, 100, 20100)",
    )
    .await;
    let fired = alerts.evaluate().await;
    assert_eq!(
        fired,
        [(
            "bridge_behind".into(),
            "herald/orders/3".into(),
            "firing".into()
        )]
    );

    run("INSERT INTO herald_schedules (name, last_tick, last_error) VALUES ('nightly', now(), 'no workflow named x')")
        .await;
    let fired = alerts.evaluate().await;
    assert_eq!(
        fired,
        [("clock_failing".into(), "nightly".into(), "firing".into())]
    );
    assert!(alerts.recorder.to("ops")[2].content["body"].contains("no workflow named x"));

    // A tick that fired a job which then fails (and retries) is failing too; one whose job is still fine is not.
    let mut conn = pool.acquire().await.unwrap();
    let job = herald::queue::enqueue(
        &mut conn,
        &crate::common::defaults(),
        crate::common::job(
            "herald.maintenance",
            "herald.retention",
            serde_json::json!({}),
        ),
    )
    .await
    .unwrap()
    .id();
    drop(conn);
    sqlx::query("INSERT INTO herald_schedules (name, last_tick, last_job_id) VALUES ('retention', now(), $1)")
        .bind(job)
        .execute(pool)
        .await
        .unwrap();
    assert!(alerts.evaluate().await.is_empty(), "its job has not failed");
    // Snoozed (retention leaves old rows for its next pass, as `JobError::Snooze` records it): no failure.
    sqlx::query(
        "UPDATE herald_jobs SET errors = '[{\"attempt\": 1, \"kind\": \"snoozed\", \
         \"message\": \"old rows left after days_per_run or max_run\"}]' WHERE id = $1",
    )
    .bind(job)
    .execute(pool)
    .await
    .unwrap();
    assert!(alerts.evaluate().await.is_empty(), "a snooze is no failure");
    sqlx::query(
        "UPDATE herald_jobs SET attempt = 1, errors = '[{\"attempt\": 1, \"kind\": \"error\", \
         \"message\": \"archive: S3 said 503\"}]' WHERE id = $1",
    )
    .bind(job)
    .execute(pool)
    .await
    .unwrap();
    let fired = alerts.evaluate().await;
    assert_eq!(
        fired,
        [("clock_failing".into(), "retention".into(), "firing".into())]
    );
    assert!(alerts.recorder.to("ops")[3].content["body"].contains("S3 said 503"));

    // A rule whose table cannot be read this time is no proof its problem ended: its alerts keep firing, and the
    // other rules are still judged.
    run("ALTER TABLE herald_schedules RENAME TO herald_schedules_away").await;
    let holding = herald::alerts::conditions(pool, &alerts.settings).await;
    assert_eq!(holding.unread, ["clock_failing"]);
    assert!(holding.conditions.iter().any(|c| c.rule == "dead_letters"));
    assert!(
        herald::alerts::evaluate(pool, &alerts.channels, &alerts.settings, &holding)
            .await
            .unwrap()
            .is_empty(),
        "nothing resolved"
    );
    let firing = herald::alerts::list(pool).await.unwrap();
    assert_eq!(
        firing
            .iter()
            .filter(|a| a.rule == "clock_failing" && a.state == "firing")
            .count(),
        2
    );
    run("ALTER TABLE herald_schedules_away RENAME TO herald_schedules").await;

    // Every condition ends: each alert clears once.
    run("UPDATE herald_dead_letters SET failed_at = now() - interval '2 minutes'").await;
    run("UPDATE herald_bridge_offsets SET next_offset = 20000").await;
    run("UPDATE herald_schedules SET last_error = NULL, last_job_id = NULL").await;
    let mut cleared = alerts.evaluate().await;
    cleared.sort();
    assert_eq!(
        cleared,
        [
            (
                "bridge_behind".into(),
                "herald/orders/3".into(),
                "resolved".into()
            ),
            ("clock_failing".into(), "nightly".into(), "resolved".into()),
            (
                "clock_failing".into(),
                "retention".into(),
                "resolved".into()
            ),
            ("dead_letters".into(), "mail".into(), "resolved".into()),
        ]
    );
    assert!(alerts.evaluate().await.is_empty());
}
